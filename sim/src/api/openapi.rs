//! OpenAPI v3 documents: `/openapi/v3` (the index) and one document per group/version.
//!
//! Helm and kubectl read them to decide *how* to validate: when every PATCH operation carries
//! `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter they leave field
//! validation to the server; otherwise they download `/openapi/v2` as protobuf (which this
//! server does not have) and fail with "failed to download openapi".
//!
//! Built-in types deliberately have no component schemas: kubectl then computes strategic
//! merge patches from its compiled-in Go types, which carry the real patch merge keys. Custom
//! resources get their CRD's schema and no strategic-merge content type (as on a real server),
//! so kubectl uses JSON merge patch for them.

use serde_json::{Map, Value, json};

use crate::api::ApiState;
use crate::api::discovery::GIT_VERSION;
use crate::registry::{ResourceType, gv_path};
use crate::util;

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

fn op(t: &ResourceType, action: &str, id: &str, params: &[&str], body: Option<Value>) -> Value {
    let mut o = json!({
        "operationId": format!("{action}{id}"),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(t),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"content": b, "required": true});
    }
    o
}

fn schema_name(t: &ResourceType) -> String {
    let mut parts: Vec<&str> = t.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), t.version, t.kind)
}

fn paths_for(t: &ResourceType, paths: &mut Map<String, Value>) {
    let id = format!("{}{}", t.version, t.kind);
    let base = gv_path(&t.group, &t.version);
    let write_params = ["dryRun", "fieldManager", "fieldValidation"];
    let json_body = json!({"application/json": {"schema": {"type": "object"}}});
    let mut patch_types = Map::new();
    for ct in [
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ] {
        patch_types.insert(ct.into(), json!({"schema": {"type": "object"}}));
    }
    if t.crd.is_none() {
        patch_types.insert(
            "application/strategic-merge-patch+json".into(),
            json!({"schema": {"type": "object"}}),
        );
    }
    let patch_body = Value::Object(patch_types);
    let patch_params = ["dryRun", "fieldManager", "fieldValidation", "force"];
    if t.create_only {
        let coll = format!("{base}/{}", t.plural);
        paths.insert(
            coll,
            json!({"post": op(t, "post", &id, &write_params, Some(json_body))}),
        );
        return;
    }
    let (coll, item) = if t.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", t.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural),
        )
    } else {
        (
            format!("{base}/{}", t.plural),
            format!("{base}/{}/{{name}}", t.plural),
        )
    };
    paths.insert(
        coll,
        json!({
            "get": op(t, "list", &id, &["labelSelector", "fieldSelector", "watch", "resourceVersion"], None),
            "post": op(t, "post", &id, &write_params, Some(json_body.clone())),
            "delete": op(t, "deletecollection", &id, &["labelSelector"], None),
        }),
    );
    paths.insert(
        item.clone(),
        json!({
            "get": op(t, "get", &id, &[], None),
            "put": op(t, "put", &id, &write_params, Some(json_body.clone())),
            "patch": op(t, "patch", &id, &patch_params, Some(patch_body.clone())),
            "delete": op(t, "delete", &id, &["dryRun", "propagationPolicy"], None),
        }),
    );
    if t.status {
        paths.insert(
            format!("{item}/status"),
            json!({
                "get": op(t, "get", &format!("{id}Status"), &[], None),
                "put": op(t, "put", &format!("{id}Status"), &write_params, Some(json_body)),
                "patch": op(t, "patch", &format!("{id}Status"), &patch_params, Some(patch_body)),
            }),
        );
    }
    if t.namespaced {
        paths.insert(
            format!("{base}/{}", t.plural),
            json!({"get": op(t, "list", &format!("{id}ForAllNamespaces"), &["labelSelector", "fieldSelector", "watch"], None)}),
        );
    }
}

fn build(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"type": "object"}),
    );
    let mut any = false;
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        any = true;
        paths_for(t, &mut paths);
        if let Some(crd) = &t.crd {
            let mut s = if crd.schema.is_object() {
                crd.schema.clone()
            } else {
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
            };
            s["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
            schemas.insert(schema_name(t), s);
        }
    }
    if !any {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v3`: one entry per served group/version, with a hash that changes when the
/// document does (clients cache documents by that URL).
pub fn index(state: &ApiState) -> Value {
    let types = state.registry.all();
    let mut gvs: Vec<(String, String)> = types
        .iter()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for (g, v) in gvs {
        let Some(doc) = build(&types, &g, &v) else {
            continue;
        };
        let key = gv_path(&g, &v).trim_start_matches('/').to_string();
        let hash = util::short_hash(&serde_json::to_vec(&doc).unwrap_or_default());
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// The document for `/openapi/v3/api/v1` or `/openapi/v3/apis/G/V`.
pub fn group_version_doc(state: &ApiState, rest: &[&str]) -> Option<Value> {
    let (g, v) = match rest {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    build(&state.registry.all(), g, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Behaviour;
    use std::time::Duration;

    #[test]
    fn every_patch_has_gvk_and_field_validation() {
        let s = ApiState::new(
            "t",
            Behaviour {
                readiness_delay: Duration::from_millis(1),
                never_ready_image: ":broken".into(),
            },
        );
        let idx = index(&s);
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/apis/apps/v1?hash="))
        );
        let doc = group_version_doc(&s, &["api", "v1"]).expect("core doc");
        let mut patches = 0;
        for (_, item) in doc["paths"].as_object().expect("paths") {
            if let Some(p) = item.get("patch") {
                patches += 1;
                assert!(p["x-kubernetes-group-version-kind"]["kind"].is_string());
                assert!(
                    p["parameters"]
                        .as_array()
                        .expect("params")
                        .iter()
                        .any(|x| x["name"] == "fieldValidation" && x["in"] == "query")
                );
            }
        }
        assert!(patches > 5);
    }
}
