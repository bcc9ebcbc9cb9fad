//! What the API server does to an object on its way into the store: decoding the body,
//! identity and namespace checks, defaulting, validation, `generation`, status rules.
//!
//! Defaults matter more than they look: Helm 3's readiness checks dereference fields such as
//! `spec.replicas`, `spec.strategy.rollingUpdate.maxUnavailable` and `spec.backoffLimit`
//! without nil checks, because a real API server always sets them.

use serde_json::{Map, Value, json};

use crate::api::{ApiState, FieldValidation, Req, Target, builtin_fields, protobuf, schema};
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::store::meta_mut;
use crate::util;

/// Decodes a create/update body (JSON, YAML or protobuf).
pub fn decode_body(req: &Req) -> ApiResult<Value> {
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    let v = match ct {
        "application/vnd.kubernetes.protobuf" => protobuf::decode(&req.body)?,
        "application/yaml" => serde_yaml::from_slice::<Value>(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?,
        "application/json" | "" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

/// The object as it leaves the server for a request at `rt`'s version.
pub fn output(rt: &ResourceType, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

/// Types whose objects carry `metadata.generation` (those with a spec, and custom resources).
fn has_generation(rt: &ResourceType, obj: &Value) -> bool {
    rt.crd.is_some() || obj.get("spec").is_some()
}

/// Everything that is not metadata or status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// Checks and fills identity fields of an incoming object.
fn identity(target: &Target, obj: &mut Value, create: bool) -> ApiResult<()> {
    let rt = &target.rt;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    let meta = meta_mut(obj);
    // Namespace: the URL's wins; a different one in the body is an error.
    if rt.namespaced {
        let url_ns = target.namespace.clone().unwrap_or_default();
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    // Name: from the URL, the body, or generateName.
    let body_name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let name = match (&target.name, body_name) {
        (Some(url), Some(body)) if *url != body => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
        (Some(url), _) => url.clone(),
        (None, Some(body)) => body,
        (None, None) => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if create && !prefix.is_empty() => {
                format!("{prefix}{}", util::random_suffix(5))
            }
            _ => {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        },
    };
    if let Some(why) = invalid_name(rt, &name) {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            &name,
            format!("metadata.name: Invalid value: {name:?}: {why}"),
        ));
    }
    meta.insert("name".into(), json!(name));
    // Server-owned fields a client cannot set.
    meta.remove("selfLink");
    if create {
        meta.remove("deletionTimestamp");
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    Ok(())
}

/// A namespaced object can only be written into an existing namespace. Call this *outside*
/// a store write (it reads the store).
pub fn check_namespace(state: &ApiState, target: &Target) -> ApiResult<()> {
    if target.rt.namespaced {
        let ns = target.namespace.as_deref().unwrap_or_default();
        if state.store.get("", "namespaces", "", ns).is_none() {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
    }
    Ok(())
}

/// Why `name` is not a valid name for `rt`, if it is not: RFC 1123 labels for namespaces and
/// services, RFC 1123 subdomains for most other types (RBAC names may also hold `:`).
fn invalid_name(rt: &ResourceType, name: &str) -> Option<String> {
    let label = matches!(rt.plural.as_str(), "namespaces" | "services");
    let rbac = rt.group == "rbac.authorization.k8s.io";
    let max = if label { 63 } else { 253 };
    if name.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    if rbac {
        return (name.contains('/') || name.contains('%'))
            .then(|| "may not contain '/' or '%'".to_string());
    }
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label);
    let edges_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !edges_ok {
        let what = if label { "label" } else { "subdomain" };
        return Some(format!(
            "a lowercase RFC 1123 {what} must consist of lower case alphanumeric characters, '-'{} and must start and end with an alphanumeric character",
            if label { "" } else { " or '.'" }
        ));
    }
    None
}

/// Objects in etcd are limited to about 1.5 MiB; Secrets and ConfigMaps to 1 MiB of data.
const MAX_DATA_BYTES: usize = 1024 * 1024;

fn data_too_long(obj: &Value) -> bool {
    let size = |v: &Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum::<usize>()
            })
            .unwrap_or(0)
    };
    // Secret data is base64 in JSON: count decoded bytes.
    let data = if obj["kind"] == "Secret" {
        size(&obj["data"]) * 3 / 4
    } else {
        size(&obj["data"])
    };
    data + size(&obj["binaryData"]) * 3 / 4 > MAX_DATA_BYTES
}

pub fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Prepares a new object for the store.
pub fn prepare_create(
    target: &Target,
    mut obj: Value,
    validation: &FieldValidation,
) -> ApiResult<Value> {
    identity(target, &mut obj, true)?;
    // A custom resource with a status subresource is created without status: status is
    // written only through `/status` (checked against a real server by `sim_parity`).
    if target.rt.crd.is_some()
        && target.rt.status
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    validate_fields(target, &mut obj, None, validation)?;
    defaults(&target.rt, &mut obj, None);
    if has_generation(&target.rt, &obj) {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    }
    validate(&target.rt, &obj, None)?;
    Ok(obj)
}

/// Prepares an update of `old` to `new` on the main resource (not `/status`).
pub fn prepare_update(
    target: &Target,
    old: &Value,
    mut new: Value,
    validation: &FieldValidation,
) -> ApiResult<Value> {
    identity(target, &mut new, false)?;
    check_resource_version(&target.rt, old, &new)?;
    check_new_finalizers(&target.rt, old, &new)?;
    validate_fields(target, &mut new, Some(old), validation)?;
    // With a status subresource, writes to the main resource cannot change status.
    if target.rt.status {
        let obj = new.as_object_mut().expect("identity() made it an object");
        match old.get("status") {
            Some(s) => obj.insert("status".into(), s.clone()),
            None => obj.remove("status"),
        };
    }
    // metadata fields only the server sets.
    for k in ["deletionTimestamp", "generation", "managedFields"] {
        let meta = meta_mut(&mut new);
        match old["metadata"].get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    defaults(&target.rt, &mut new, Some(old));
    if has_generation(&target.rt, &new) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let g = if spec_part(old) != spec_part(&new) {
            g + 1
        } else {
            g
        };
        meta_mut(&mut new).insert("generation".into(), json!(g));
    }
    validate(&target.rt, &new, Some(old))?;
    Ok(new)
}

/// Prepares a `/status` write: only `status` is taken from `new`. A custom resource's status
/// is validated and pruned against its schema, as the main resource is.
pub fn prepare_status_update(
    target: &Target,
    old: &Value,
    new: &Value,
    validation: &FieldValidation,
) -> ApiResult<Value> {
    check_resource_version(&target.rt, old, new)?;
    let mut out = old.clone();
    if let Some(m) = out.as_object_mut() {
        match new.get("status") {
            Some(s) => m.insert("status".into(), s.clone()),
            None => m.remove("status"),
        };
    }
    if target.rt.crd.is_some() {
        validate_fields(target, &mut out, Some(old), validation)?;
    }
    Ok(out)
}

/// A custom resource cannot be replaced without a `resourceVersion` (its strategy does not
/// allow unconditional updates); patches are applied to the current object, so they can.
pub fn require_resource_version(target: &Target, body: &Value) -> ApiResult<()> {
    let rt = &target.rt;
    if rt.crd.is_some()
        && body["metadata"]["resourceVersion"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.plural,
            target.name.as_deref().unwrap_or_default(),
            "metadata.resourceVersion: Invalid value: 0: must be specified for an update",
        ));
    }
    Ok(())
}

/// An object being deleted may lose finalizers but not gain any: otherwise its deletion could
/// be held forever by whoever keeps adding them.
fn check_new_finalizers(rt: &ResourceType, old: &Value, new: &Value) -> ApiResult<()> {
    if old["metadata"]["deletionTimestamp"].is_null() {
        return Ok(());
    }
    let list = |o: &Value| -> Vec<String> {
        o["metadata"]["finalizers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = list(old);
    let added: Vec<String> = list(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|f| format!("{f:?}"))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    // The real server's words, Go's `%#v` of a string slice included.
    Err(ApiError::invalid(
        &rt.group,
        &rt.kind,
        &name_of(old),
        format!(
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
            added.join(", ")
        ),
    ))
}

/// Optimistic concurrency: a write that names a resourceVersion must name the current one.
fn check_resource_version(rt: &ResourceType, old: &Value, new: &Value) -> ApiResult<()> {
    let want = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !want.is_empty() && want != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
        return Err(ApiError::conflict(&rt.group, &rt.plural, &name_of(old)));
    }
    Ok(())
}

/// Unknown fields: a custom resource's against its CRD schema, a built-in object's against
/// its type; rejected, or dropped with or without a warning, as `fieldValidation` says.
fn validate_fields(
    target: &Target,
    obj: &mut Value,
    old: Option<&Value>,
    validation: &FieldValidation,
) -> ApiResult<()> {
    let rt = &target.rt;
    if let Some(crd) = &rt.crd {
        let pruned =
            schema::validate_and_prune(&crd.schema, obj, validation.strict).map_err(|why| {
                if why.starts_with("strict decoding error") {
                    // As for built-in kinds: the decoder refuses (400) before validation.
                    ApiError::bad_request(format!(
                        "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}",
                        kind = rt.kind,
                        version = rt.version,
                    ))
                } else {
                    ApiError::invalid(&rt.group, &rt.kind, &name_of(obj), why)
                }
            })?;
        for path in pruned {
            validation.unknown_field(&path);
        }
        return Ok(());
    }
    let Some(mut unknown) = builtin_fields::unknown_fields(&rt.group, &rt.version, &rt.kind, obj)
    else {
        return Ok(());
    };
    // On an update only what the request adds counts: fields already stored (a status field
    // the emulator's controllers write that k8s-openapi lacks) are the server's, not the
    // client's, and a real server never stores unknown fields anyway.
    if let Some(before) =
        old.and_then(|o| builtin_fields::unknown_fields(&rt.group, &rt.version, &rt.kind, o))
    {
        unknown.retain(|p| !before.contains(p));
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = unknown.iter().map(|p| builtin_fields::display(p)).collect();
    if validation.strict {
        // The real server's decoder error (400, not 422: it fails before validation).
        let list: Vec<String> = paths
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            list.join(", "),
            kind = rt.kind,
            version = rt.version,
        )));
    }
    for (p, shown) in unknown.iter().zip(&paths) {
        builtin_fields::remove(obj, p);
        validation.unknown_field(shown);
    }
    Ok(())
}

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.into(), v);
    }
}

fn obj_at<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let m = v.as_object_mut().expect("callers pass objects");
    let e = m.entry(key).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().expect("object")
}

/// Per-kind defaults of a real API server (the ones clients rely on).
fn defaults(rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
    let name = name_of(obj);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            let spec = obj_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut)
                && s.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("RollingUpdate")
                    == "RollingUpdate"
            {
                s.insert("type".into(), json!("RollingUpdate"));
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
            }
        }
        ("apps", "StatefulSet") => {
            let spec = obj_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if let Some(s) = spec
                .get_mut("updateStrategy")
                .and_then(Value::as_object_mut)
                && s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            {
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    set_default(ru, "partition", json!(0));
                }
            }
        }
        ("apps", "DaemonSet") => {
            let spec = obj_at(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if let Some(s) = spec
                .get_mut("updateStrategy")
                .and_then(Value::as_object_mut)
                && s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            {
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    set_default(ru, "maxUnavailable", json!(1));
                    set_default(ru, "maxSurge", json!(0));
                }
            }
        }
        ("apps", "ReplicaSet") => {
            set_default(obj_at(obj, "spec"), "replicas", json!(1));
        }
        ("batch", "Job") => {
            let spec = obj_at(obj, "spec");
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
        }
        ("", "Service") => {
            let old_ip = old.and_then(|o| o["spec"]["clusterIP"].as_str().map(String::from));
            let spec = obj_at(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let external_name = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
            if !external_name {
                let ip = spec
                    .get("clusterIP")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .or(old_ip)
                    .unwrap_or_else(|| {
                        let b = util::random_bytes(2);
                        format!("10.96.{}.{}", b[0], b[1].max(2))
                    });
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            let lb = spec.get("type").and_then(Value::as_str) == Some("LoadBalancer");
            if lb && obj["status"]["loadBalancer"]["ingress"].is_null() {
                obj_at(obj, "status").insert(
                    "loadBalancer".into(),
                    json!({"ingress": [{"ip": "127.0.0.1"}]}),
                );
            }
        }
        ("", "Namespace") => {
            let meta = meta_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            set_default(obj_at(obj, "spec"), "finalizers", json!(["kubernetes"]));
            let status = obj_at(obj, "status");
            set_default(status, "phase", json!("Active"));
        }
        ("", "Secret") => {
            let m = obj.as_object_mut().expect("object");
            set_default(m, "type", json!("Opaque"));
            if let Some(Value::Object(sd)) = m.remove("stringData") {
                use base64::Engine;
                let data = m.entry("data").or_insert_with(|| json!({}));
                if let Some(d) = data.as_object_mut() {
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or_default();
                        d.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj_at(obj, "status"), "phase", json!("Bound"));
        }
        ("", "Pod") => {
            set_default(obj_at(obj, "status"), "phase", json!("Pending"));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let names = obj["spec"]["names"].clone();
            let mut accepted = names.clone();
            if let Some(a) = accepted.as_object_mut() {
                let kind = a
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase();
                set_default(a, "singular", json!(kind));
                set_default(
                    a,
                    "listKind",
                    json!(format!(
                        "{}List",
                        names["kind"].as_str().unwrap_or_default()
                    )),
                );
            }
            let stored: Vec<Value> = obj["spec"]["versions"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .filter(|v| v["storage"].as_bool() == Some(true))
                        .map(|v| v["name"].clone())
                        .collect()
                })
                .unwrap_or_default();
            let now = util::now();
            let status = obj_at(obj, "status");
            status.insert("acceptedNames".into(), accepted);
            status.insert("storedVersions".into(), json!(stored));
            status.insert(
                "conditions".into(),
                json!([
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": now}
                ]),
            );
        }
        _ => {}
    }
}

/// Type-specific validation, including immutable fields on update.
fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let name = name_of(obj);
    let immutable = |field: &str, why: &str| {
        ApiError::invalid(
            &rt.group,
            &rt.kind,
            &name,
            format!("{field}: Invalid value: {why}: field is immutable"),
        )
    };
    match (rt.group.as_str(), rt.kind.as_str(), old) {
        ("batch", "Job", Some(old)) => {
            if old["spec"]["template"] != obj["spec"]["template"] {
                return Err(immutable("spec.template", "core.PodTemplateSpec{...}"));
            }
            if !old["spec"]["selector"].is_null()
                && old["spec"]["selector"] != obj["spec"]["selector"]
            {
                return Err(immutable("spec.selector", "v1.LabelSelector{...}"));
            }
        }
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet", Some(old))
            if old["spec"]["selector"] != obj["spec"]["selector"] =>
        {
            return Err(immutable("spec.selector", "v1.LabelSelector{...}"));
        }
        ("", "Secret" | "ConfigMap", Some(old))
            if old["immutable"].as_bool() == Some(true)
                && (old["data"] != obj["data"] || old["binaryData"] != obj["binaryData"]) =>
        {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                "data: Forbidden: field is immutable when `immutable` is set",
            ));
        }
        _ => {}
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Secret" | "ConfigMap") if data_too_long(obj) => {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                format!("data: Too long: must have at most {MAX_DATA_BYTES} bytes"),
            ));
        }
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            let sel = crate::api::selector::LabelSelector::from_json(&obj["spec"]["selector"]);
            if obj["spec"]["selector"].is_null() {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    &name,
                    "spec.selector: Required value",
                ));
            }
            if !sel.matches_labels(&obj["spec"]["template"]["metadata"]["labels"]) {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    &name,
                    "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`",
                ));
            }
            check_containers(rt, &name, &obj["spec"]["template"]["spec"])?;
        }
        ("", "Pod") => check_containers(rt, &name, &obj["spec"])?,
        _ => {}
    }
    Ok(())
}

fn check_containers(rt: &ResourceType, name: &str, pod_spec: &Value) -> ApiResult<()> {
    let containers = pod_spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if containers.is_empty() {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            name,
            "spec.template.spec.containers: Required value",
        ));
    }
    for (i, c) in containers.iter().enumerate() {
        if c["image"].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                name,
                format!("spec.template.spec.containers[{i}].image: Required value"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn names_follow_rfc_1123() {
        let r = Registry::new();
        let ns = r.lookup("", "v1", "namespaces").expect("ns");
        let cm = r.lookup("", "v1", "configmaps").expect("cm");
        let role = r
            .lookup("rbac.authorization.k8s.io", "v1", "clusterroles")
            .expect("clusterroles");
        assert!(invalid_name(&ns, "skoala-system").is_none());
        assert!(invalid_name(&ns, "a.b").is_some());
        assert!(invalid_name(&cm, "sh.helm.release.v1.skoala-init.v1").is_none());
        assert!(invalid_name(&cm, "Upper").is_some());
        assert!(invalid_name(&cm, "-x").is_some());
        assert!(invalid_name(&role, "system:controller:x").is_none());
    }

    #[test]
    fn secrets_over_one_mebibyte_are_too_long() {
        let big = "A".repeat(1_500_000);
        assert!(data_too_long(
            &json!({"kind": "Secret", "data": {"release": big}})
        ));
        assert!(!data_too_long(
            &json!({"kind": "Secret", "data": {"release": "SGk="}})
        ));
    }
}
