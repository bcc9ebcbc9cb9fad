//! API errors and the `Status` bodies real API servers send for them.
//!
//! client-go decides what an error *is* from `reason` and `code` (`IsNotFound`, `IsConflict`,
//! `IsAlreadyExists` ...) and kube-rs decodes the same body into `kube::Error::Api`, so every
//! failure leaves the server as a `Status` object, never as plain text.

use serde_json::{Value, json};

/// A failed API request: HTTP code, Kubernetes `reason`, message and optional details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// `resource` is the plural name, `group` may be empty (core).
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(group, resource, name)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(group, resource, name)
    }

    /// A write based on a stale `resourceVersion` (optimistic concurrency).
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(group, resource, name)
    }

    /// 422: the object fails validation. `kind` is the object's kind. `why` is
    /// `<field>: <what>`; like a real server's, the details carry it as a cause, which is what
    /// kubectl prints after `The <Kind> "<name>" is invalid:`.
    pub fn invalid(group: &str, kind: &str, name: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind}.{group} \"{name}\" is invalid: {why}")
                .replace(". \"", " \"")
                .replace(".\"", "\""),
        )
        .with_details(group, kind, name);
        let (field, message) = why.split_once(": ").unwrap_or(("", why.as_str()));
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!([{
                "reason": "FieldValueInvalid",
                "message": message,
                "field": field,
            }]);
        }
        e
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// An error injected through the fault API: the code is chosen by the test.
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            404 => "NotFound",
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        Self::new(code, reason, format!("injected fault ({code})"))
    }

    /// The `Status` object for this error.
    pub fn status_body(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// The `Status` body of a successful delete.
pub fn success_status(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({ "name": name, "kind": resource, "uid": uid });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_a_status_with_reason_and_details() {
        let b = ApiError::not_found("apps", "deployments", "web").status_body();
        assert_eq!(b["kind"], "Status");
        assert_eq!(b["reason"], "NotFound");
        assert_eq!(b["code"], 404);
        assert_eq!(b["message"], "deployments.apps \"web\" not found");
        assert_eq!(b["details"]["group"], "apps");
    }

    #[test]
    fn invalid_message_for_core_group_has_no_dangling_dot() {
        let e = ApiError::invalid("", "Secret", "s", "data: too big");
        assert_eq!(e.message, "Secret \"s\" is invalid: data: too big");
        assert_eq!(e.code, 422);
    }
}
