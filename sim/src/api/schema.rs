//! Validation and pruning of custom resources against their CRD's `openAPIV3Schema`.
//!
//! As in a real API server, fields the schema does not declare are *pruned* (dropped
//! silently) unless the request asks for `fieldValidation=Strict`, in which case they are an
//! error; `required`, `enum` and `type` are enforced always. This is what makes "the new chart
//! uses a field the old CRD does not know" visible: the field vanishes (or the request fails),
//! exactly as on a cluster whose CRDs were not re-applied before `helm upgrade`. Fields with
//! a schema `default` are filled in when absent. CEL rules (`x-kubernetes-validations`) are
//! not evaluated: see the crate doc.

use serde_json::Value;

/// Validates `obj` against `schema`; prunes unknown fields (or, when `strict`, rejects them).
///
/// Returns the paths of pruned fields (the server reports them as warnings).
pub fn validate_and_prune(
    schema: &Value,
    obj: &mut Value,
    strict: bool,
) -> Result<Vec<String>, String> {
    if !schema.is_object() {
        return Ok(vec![]);
    }
    let mut errors = vec![];
    let mut pruned = vec![];
    walk(schema, obj, "", strict, true, &mut errors, &mut pruned);
    if errors.is_empty() {
        Ok(pruned)
    } else {
        Err(errors.join(", "))
    }
}

fn type_ok(ty: &str, v: &Value, int_or_string: bool) -> bool {
    if int_or_string {
        return v.is_i64() || v.is_u64() || v.is_string();
    }
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(
    schema: &Value,
    v: &mut Value,
    path: &str,
    strict: bool,
    root: bool,
    errors: &mut Vec<String>,
    pruned: &mut Vec<String>,
) {
    if v.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(ty) = schema["type"].as_str()
        && !type_ok(ty, v, int_or_string)
    {
        errors.push(format!(
            "{path}: Invalid value: {v}: {path} in body must be of type {ty}"
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ));
    }
    match v {
        Value::Object(map) => {
            if let Some(req) = schema["required"].as_array() {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errors.push(format!("{}: Required value", join(path, r)));
                    }
                }
            }
            let props = schema["properties"].as_object();
            // Structural defaulting: a declared field with a `default` is filled in when
            // absent (the real server does this before validation, on every write).
            for (k, sub) in props.into_iter().flatten() {
                if let Some(d) = sub.get("default")
                    && !map.contains_key(k)
                {
                    map.insert(k.clone(), d.clone());
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
            let additional = &schema["additionalProperties"];
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = join(path, &k);
                if let Some(sub) = props.and_then(|p| p.get(&k)) {
                    if let Some(child) = map.get_mut(&k) {
                        walk(sub, child, &child_path, strict, false, errors, pruned);
                    }
                } else if additional.is_object() {
                    if let Some(child) = map.get_mut(&k) {
                        walk(
                            additional,
                            child,
                            &child_path,
                            strict,
                            false,
                            errors,
                            pruned,
                        );
                    }
                } else if preserve
                    || additional.as_bool() == Some(true)
                    || (props.is_none() && schema.get("type").is_none())
                {
                    // Unknown fields are allowed here.
                } else if strict {
                    errors.push(format!(
                        "strict decoding error: unknown field \"{child_path}\""
                    ));
                } else {
                    map.remove(&k);
                    pruned.push(child_path);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    strict,
                    false,
                    errors,
                    pruned,
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer"},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }}
        }})
    }

    #[test]
    fn unknown_fields_are_pruned_or_rejected() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                           "spec": {"size": 1, "newField": true, "extra": {"anything": 1}}});
        validate_and_prune(&schema(), &mut o, false).expect("valid after pruning");
        assert!(o["spec"].get("newField").is_none());
        assert_eq!(o["spec"]["extra"]["anything"], 1);
        let mut o = json!({"spec": {"size": 1, "newField": true}});
        let e = validate_and_prune(&schema(), &mut o, true).expect_err("strict");
        assert!(e.contains("unknown field \"spec.newField\""), "{e}");
    }

    #[test]
    fn an_absent_field_with_a_default_is_filled_in() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object",
            "properties": {"active": {"type": "boolean", "default": false}}}}});
        let mut o = json!({"status": {}});
        validate_and_prune(&schema, &mut o, false).expect("valid");
        assert_eq!(o["status"]["active"], false);
        let mut o = json!({"status": {"active": true}});
        validate_and_prune(&schema, &mut o, false).expect("valid");
        assert_eq!(o["status"]["active"], true);
    }

    #[test]
    fn required_enum_and_type() {
        let mut o = json!({"spec": {"mode": "c"}});
        let e = validate_and_prune(&schema(), &mut o, false).expect_err("invalid");
        assert!(e.contains("spec.size: Required value"), "{e}");
        assert!(e.contains("Unsupported value"), "{e}");
        let mut o = json!({"spec": {"size": "big"}});
        assert!(validate_and_prune(&schema(), &mut o, false).is_err());
    }
}
