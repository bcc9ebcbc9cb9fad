//! Rust types to *structural* OpenAPI schemas, the only kind the API server accepts for a CRD.
//!
//! schemars emits JSON Schema; kube's own transforms (the ones `#[derive(CustomResource)]`
//! applies) hoist enum variants and turn `Option` into `nullable`. What is left is ours: a
//! `format` the API server does not know (`uint32`) is dropped, `maxConcurrency` (an untagged
//! int-or-string) becomes `x-kubernetes-int-or-string`, the spec's objects keep unknown fields,
//! and every string, list and map gets an upper bound, without which the CEL rules' estimated
//! cost exceeds the API server's budget and it refuses the CRD.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use schemars::transform::RestrictFormats;
use serde_json::{Map, Value};

/// The `format`s the API server validates; any other is at best ignored (newer servers warn).
const KNOWN_FORMATS: [&str; 7] = [
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
];

/// Upper bounds for one schema: a default per kind of node, and exceptions by path.
///
/// Paths are written from the schema's root: `.strategy.canary` for a property, `[]` for a
/// list's items, `{}` for a map's values (`.windows{}.days[]`).
pub(crate) struct Bounds {
    /// `maxLength` of a string without one.
    pub string: i64,
    /// `maxItems` of a list without one.
    pub list: i64,
    /// `maxProperties` of a map without one.
    pub map: i64,
    /// Exceptions: the path, and `maxLength`, `maxItems` or `maxProperties` there.
    pub at: &'static [(&'static str, i64)],
}

/// The schema of `T` as kube-derive would make it, as JSON, before our post-processing.
pub(crate) fn generate<T: JsonSchema>() -> Value {
    let mut formats = RestrictFormats::default();
    formats.infer_from_meta_schema = false;
    formats.allowed_formats = KNOWN_FORMATS.iter().map(|f| (*f).into()).collect();
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .with_transform(formats)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(root) = schema.as_object_mut() {
        // The type's name is noise in `kubectl explain`; the field's description says more.
        root.remove("title");
    }
    schema
}

/// Calls `f` with every schema node and its path (see [`Bounds`]), parents before children.
pub(crate) fn visit(
    node: &mut Value,
    path: &str,
    f: &mut impl FnMut(&str, &mut Map<String, Value>),
) {
    let Some(object) = node.as_object_mut() else {
        return;
    };
    f(path, object);
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for (name, child) in properties.iter_mut() {
            visit(child, &format!("{path}.{name}"), f);
        }
    }
    if let Some(items) = object.get_mut("items") {
        visit(items, &format!("{path}[]"), f);
    }
    if let Some(values) = object.get_mut("additionalProperties") {
        visit(values, &format!("{path}{{}}"), f);
    }
}

/// Gives every string, list and map node an upper bound, from `bounds`. Panics when an
/// exception's path names no node: a renamed field must not silently lose its bound.
pub(crate) fn bound(schema: &mut Value, bounds: &Bounds) {
    let mut unused: BTreeMap<&str, i64> = bounds.at.iter().copied().collect();
    visit(schema, "", &mut |path, node| {
        let exception = unused.remove(path);
        let (keyword, default) = match node.get("type").and_then(Value::as_str) {
            Some("string") => ("maxLength", bounds.string),
            Some("array") => ("maxItems", bounds.list),
            Some("object") if node.contains_key("additionalProperties") => {
                ("maxProperties", bounds.map)
            }
            _ => {
                assert!(
                    exception.is_none(),
                    "bound at {path}: not a string, list or map"
                );
                return;
            }
        };
        if let Some(limit) = exception {
            node.insert(keyword.into(), limit.into());
        } else if !node.contains_key(keyword) {
            node.insert(keyword.into(), default.into());
        }
    });
    assert!(
        unused.is_empty(),
        "bounds for paths that do not exist: {unused:?}"
    );
}

/// Makes every object with declared properties keep fields it does not declare, so a typo
/// reaches the parser that names it instead of being pruned by the API server.
pub(crate) fn preserve_unknown_fields(schema: &mut Value) {
    visit(schema, "", &mut |_, node| {
        if node.contains_key("properties") {
            node.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
    });
}

/// Replaces the node at `path` (a property path, see [`Bounds`]) with an int-or-string,
/// keeping its description: schemars spells an untagged `u32 | String` as an `anyOf` the API
/// server refuses.
pub(crate) fn int_or_string(schema: &mut Value, path: &str) {
    let mut found = false;
    visit(schema, "", &mut |at, node| {
        if at == path {
            found = true;
            let description = node.remove("description");
            let nullable = node.remove("nullable");
            node.clear();
            node.extend(description.map(|d| ("description".to_string(), d)));
            node.insert("x-kubernetes-int-or-string".into(), true.into());
            node.extend(nullable.map(|n| ("nullable".to_string(), n)));
        }
    });
    assert!(found, "no schema node at {path}");
}

/// `#[schemars(schema_with = "opaque")]`: an object whose content the schema does not
/// describe and the API server keeps as it is (a type another crate owns and may extend before
/// the CRD is updated).
pub(crate) fn opaque(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The JSON schema as the API types hold it. Panics if it does not convert: every schema
/// here is built by this module from Rust types, so a failure is a bug the unit tests catch.
pub(crate) fn props(schema: Value) -> JSONSchemaProps {
    serde_json::from_value(schema).expect("a generated schema is valid JSONSchemaProps")
}
