//! The four PATCH flavours: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic
//! merge patch, and server-side apply.
//!
//! Strategic merge patch is what kubectl's client-side apply and Helm 3's three-way upgrade
//! send: like a merge patch, except that lists of objects with a *merge key* (containers, env,
//! ports, volumes, ...) are merged element by element instead of replaced, and `$patch`,
//! `$retainKeys`, `$setElementOrder/...` and `$deleteFromPrimitiveList/...` directives apply.
//! The merge keys are the ones the built-in types declare (`x-kubernetes-patch-merge-key`);
//! the same table feeds the OpenAPI documents (see `openapi.rs`).
//!
//! Server-side apply is approximated without a full managed-fields engine: the applied
//! configuration is merged like a strategic patch, and fields this field manager applied last
//! time but no longer applies are removed. That is the behaviour Helm 4 (which installs and
//! upgrades with `--server-side`) and `kubectl apply --server-side` observe.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The merge key of a list field, by field name (and, for `ports`, by element shape).
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists merged as sets rather than replaced.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops.0)
        .map_err(|e| ApiError::invalid("", "", "", format!("the JSON patch failed: {e}")))
}

/// Applies a strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => merge_object(t, p),
        _ => *target = strip_directives(patch),
    }
}

/// Removes `$`-directives from a value that is inserted wholesale.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = match strip_directives(&Value::Object(patch.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        return;
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (target.get_mut(field), pv.as_array())
            {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), pv) {
            (Some(Value::Object(t)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                } else {
                    merge_object(t, p);
                }
            }
            (Some(Value::Array(t)), Value::Array(p)) => merge_list(key, t, p),
            _ => {
                target.insert(key.clone(), strip_directives(pv));
            }
        }
    }
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    if merges_primitives(field) && patch.iter().all(|e| !e.is_object()) {
        for e in patch {
            if !target.contains(e) {
                target.push(e.clone());
            }
        }
        return;
    }
    let sample = patch.first().or(target.first());
    let Some(key) = merge_key(field, sample).filter(|_| sample.is_some_and(Value::is_object))
    else {
        *target = patch.iter().map(strip_directives).collect();
        return;
    };
    for pe in patch {
        let Some(pm) = pe.as_object() else { continue };
        let id = pm.get(key);
        let pos = target
            .iter()
            .position(|te| te.get(key) == id && id.is_some());
        let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(tm) = target[i].as_object_mut() {
                    merge_object(tm, pm);
                }
            }
            (None, false) => target.push(strip_directives(pe)),
        }
    }
}

/// Server-side apply: merges `applied` into `current`, then removes what `previous` (this
/// manager's last applied configuration) had and `applied` no longer has.
pub fn apply(current: &mut Value, applied: &Value, previous: Option<&Value>) {
    strategic_merge(current, applied);
    if let Some(prev) = previous {
        remove_dropped(current, prev, applied, "");
    }
}

fn remove_dropped(current: &mut Value, prev: &Value, now: &Value, field: &str) {
    match (current, prev, now) {
        (Value::Object(cur), Value::Object(p), Value::Object(n)) => {
            for (k, pv) in p {
                match n.get(k) {
                    None => {
                        // Identity fields are never dropped by apply.
                        if !matches!(k.as_str(), "apiVersion" | "kind" | "name" | "namespace") {
                            cur.remove(k);
                        }
                    }
                    Some(nv) => {
                        if let Some(cv) = cur.get_mut(k) {
                            remove_dropped(cv, pv, nv, k);
                        }
                    }
                }
            }
        }
        (Value::Array(cur), Value::Array(p), Value::Array(n)) => {
            let sample = n.first().or(p.first());
            let Some(key) =
                merge_key(field, sample).filter(|_| sample.is_some_and(Value::is_object))
            else {
                return;
            };
            for pe in p {
                let id = &pe[key];
                match n.iter().find(|ne| &ne[key] == id) {
                    None => cur.retain(|ce| &ce[key] != id),
                    Some(ne) => {
                        if let Some(ce) = cur.iter_mut().find(|ce| &ce[key] == id) {
                            remove_dropped(ce, pe, ne, field);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
             "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "b:1"}
        ]}}}})
    }

    #[test]
    fn smp_merges_containers_by_name_and_env_by_name() {
        let mut d = deploy();
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}]}]
            }}}}),
        );
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(2));
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"][0]["value"], "1");
        assert_eq!(cs[0]["env"][1]["value"], "3");
        assert_eq!(cs[1]["image"], "b:1");
        assert!(
            d["spec"]["template"]["spec"]
                .get("$setElementOrder/containers")
                .is_none()
        );
    }

    #[test]
    fn smp_delete_directive_and_null() {
        let mut d = deploy();
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "ports": null}]}}}}),
        );
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(1));
        assert!(cs[0].get("ports").is_none());
    }

    #[test]
    fn service_ports_merge_by_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        strategic_merge(
            &mut s,
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
        );
        assert_eq!(s["spec"]["ports"][1]["targetPort"], 8443);
        assert_eq!(s["spec"]["ports"][1]["name"], "https");
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let mut s = json!({"spec": {"args": ["a", "b"]}});
        strategic_merge(&mut s, &json!({"spec": {"args": ["c"]}}));
        assert_eq!(s["spec"]["args"], json!(["c"]));
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped() {
        let prev =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let now = json!({"metadata": {"labels": {"a": "1"}}, "data": {"x": "9"}});
        let mut cur = prev.clone();
        cur["data"]["z"] = json!("other manager");
        apply(&mut cur, &now, Some(&prev));
        assert_eq!(cur["data"], json!({"x": "9", "z": "other manager"}));
        assert_eq!(cur["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let mut o = json!({"a": {"b": 1}, "c": [1, 2]});
        json_patch(&mut o, &json!([{"op": "replace", "path": "/a/b", "value": 2}, {"op": "add", "path": "/c/-", "value": 3}])).expect("patch");
        assert_eq!(o, json!({"a": {"b": 2}, "c": [1, 2, 3]}));
        merge_patch(&mut o, &json!({"a": null, "d": "x"}));
        assert_eq!(o, json!({"c": [1, 2, 3], "d": "x"}));
    }
}
