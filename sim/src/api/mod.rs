//! The Kubernetes API surface: routing of one authenticated request to discovery, OpenAPI or
//! the generic resource handlers.
//!
//! There is no handler per type: a URL names `(group, version, plural, namespace, name,
//! subresource)`, the [`Registry`](crate::registry::Registry) says whether that type exists, and
//! the generic verbs in [`handlers`] work on JSON objects in the [`Store`](crate::store::Store).
//! Type-specific behaviour is limited to defaulting and validation ([`object`]) and to the
//! controllers (`crate::controllers`).

pub mod builtin_fields;
pub mod discovery;
pub mod handlers;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod schema;
pub mod selector;
pub mod table;
pub mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::registry::{Registry, ResourceType};
use crate::store::Store;
use selector::{FieldSelector, LabelSelector};

/// Response body: a full JSON document, or a watch stream.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// A JSON response with the given status code.
pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full_body(bytes))
        .unwrap_or_else(|_| Response::new(full_body(Bytes::new())))
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status_body())
}

/// Behaviour knobs that the controllers read.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// How long after creation a workload's pods become ready.
    pub readiness_delay: Duration,
    /// A container image containing this string never becomes ready (like an image that
    /// cannot be pulled).
    pub never_ready_image: String,
}

/// Everything one emulated cluster's API needs; shared by all connections.
pub struct ApiState {
    pub name: String,
    pub store: Store,
    pub registry: Registry,
    pub behaviour: Behaviour,
    /// The server's own URL, for discovery's `serverAddressByClientCIDRs`.
    pub server_address: Mutex<String>,
    /// Last configuration applied per `(uid, fieldManager)`, for server-side apply.
    pub applied: Mutex<HashMap<(String, String), Value>>,
}

impl ApiState {
    pub fn new(name: &str, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(ApiState {
            name: name.into(),
            store: Store::new(),
            registry: Registry::new(),
            behaviour,
            server_address: Mutex::new(String::new()),
            applied: Mutex::new(HashMap::new()),
        })
    }
}

/// The request's `fieldValidation` directive and the warnings the server collects for it
/// (sent back as `Warning` headers, which client-go prints).
#[derive(Debug, Default)]
pub struct FieldValidation {
    /// `Strict`: unknown fields fail the request.
    pub strict: bool,
    /// `Ignore`: unknown fields are dropped without a warning (`Warn`, the default, warns).
    pub ignore: bool,
    pub warnings: Mutex<Vec<String>>,
}

impl FieldValidation {
    /// From the request's `fieldValidation` query parameter.
    pub fn from_query(value: Option<&str>) -> Self {
        FieldValidation {
            strict: value == Some("Strict"),
            ignore: value == Some("Ignore"),
            warnings: Default::default(),
        }
    }

    /// Reports a dropped unknown field, unless the request asked to ignore them.
    pub fn unknown_field(&self, path: &str) {
        if !self.ignore {
            self.warn(format!("unknown field \"{path}\""));
        }
    }

    pub fn warn(&self, w: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
    }
}

/// One request, body already read.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: String,
    /// The `Accept` header (kubectl asks for server-side printed Tables).
    pub accept: String,
    pub body: Bytes,
    /// Cancelled when the fault injector cuts connections (ends watch streams).
    pub cut: tokio_util::sync::CancellationToken,
    pub validation: FieldValidation,
}

impl Req {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.q(key), Some("true" | "1"))
    }

    /// The `labelSelector` and `fieldSelector` of a list or watch.
    pub fn selectors(&self) -> ApiResult<(LabelSelector, FieldSelector)> {
        Ok((
            LabelSelector::parse(self.q("labelSelector").unwrap_or(""))?,
            FieldSelector::parse(self.q("fieldSelector").unwrap_or(""))?,
        ))
    }
}

/// Decodes `a=b&c=d` with percent-decoding.
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a resource URL addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` or `/apis/G/V/...` into a [`Target`]. `Ok(None)` means "not a resource
/// URL" (discovery paths); unknown types are 404.
fn parse_target(state: &ApiState, segs: &[&str]) -> Result<Option<(Target, bool)>, ApiError> {
    let (group, version, mut rest) = match segs {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    // Legacy `/watch/` URLs: same as `?watch=true`.
    let mut watch = false;
    if rest.first() == Some(&"watch") {
        watch = true;
        rest = &rest[1..];
    }
    let not_found = || ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    };
    let lookup = |plural: &str| state.registry.lookup(group, version, plural);
    let (rt, namespace, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if lookup(plural).is_some_and(|t| t.namespaced) => {
            let rt = lookup(plural).ok_or_else(not_found)?;
            match tail {
                [] => (rt, Some(ns.to_string()), None, None),
                [name] => (rt, Some(ns.to_string()), Some(name.to_string()), None),
                [name, sub] => (
                    rt,
                    Some(ns.to_string()),
                    Some(name.to_string()),
                    Some(sub.to_string()),
                ),
                _ => return Err(not_found()),
            }
        }
        [plural] => (lookup(plural).ok_or_else(not_found)?, None, None, None),
        [plural, name] => (
            lookup(plural).ok_or_else(not_found)?,
            None,
            Some(name.to_string()),
            None,
        ),
        [plural, name, sub] => (
            lookup(plural).ok_or_else(not_found)?,
            None,
            Some(name.to_string()),
            Some(sub.to_string()),
        ),
        _ => return Err(not_found()),
    };
    if name.is_some() && rt.namespaced && namespace.is_none() {
        return Err(not_found());
    }
    if let Some(s) = &sub
        && !(s == "status" && rt.status
            || s == "scale" && rt.scale
            || s == "finalize"
            || s == "log" && rt.group.is_empty() && rt.plural == "pods")
    {
        return Err(not_found());
    }
    Ok(Some((
        Target {
            rt,
            namespace,
            name,
            subresource: sub,
        },
        watch,
    )))
}

/// Serves one authenticated API request.
pub async fn serve(state: &Arc<ApiState>, req: Req) -> Response<Body> {
    let req = Arc::new(req);
    let mut resp = match route(state, &req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let warnings = std::mem::take(
        &mut *req
            .validation
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    for w in warnings {
        let value = format!("299 - {:?}", w);
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

async fn route(state: &Arc<ApiState>, req: &Req) -> Result<Response<Body>, ApiError> {
    let path = req.path.trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] => {
            return Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full_body("ok"))
                .unwrap_or_else(|_| Response::new(full_body("ok"))));
        }
        ["version"] => return Ok(json_response(200, &discovery::version())),
        ["openapi", "v3"] => return Ok(json_response(200, &openapi::index(state))),
        ["openapi", "v3", rest @ ..] => {
            let doc = openapi::group_version_doc(state, rest)
                .ok_or_else(|| ApiError::not_found("", "openapi", &rest.join("/")))?;
            return Ok(json_response(200, &doc));
        }
        ["openapi", ..] => {
            // No /openapi/v2: clients that see /openapi/v3 never need it.
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: None,
            });
        }
        _ => {}
    }
    if let Some(doc) = discovery::serve(state, &segs) {
        return Ok(json_response(200, &doc));
    }
    let Some((target, legacy_watch)) = parse_target(state, &segs)? else {
        return Err(ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        });
    };
    handlers::dispatch(state, req, target, legacy_watch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=owner%3Dhelm%2Cname%3Dx&watch=true&a+b=c",
        ));
        assert_eq!(q["labelSelector"], "owner=helm,name=x");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["a b"], "c");
    }
}
