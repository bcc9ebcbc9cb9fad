//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Helm's release storage (the Secrets and ConfigMaps drivers) builds its clientset with
//! protobuf as the content type and does not fall back to JSON on 415, so the emulator must read
//! these bodies: the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose `raw` field is the
//! encoded object. Secrets and ConfigMaps (and Namespaces, ServiceAccounts and
//! SelfSubjectAccessReviews, which `kubectl create` and `kubectl auth can-i` send as protobuf) are decoded with the `k8s-pb` types and turned into the
//! same JSON a JSON client would have sent; responses are always JSON, which clients accept.
//! Other kinds get 415.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_pb::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf body lacks the k8s\\0 prefix"))?;
    let unknown = Unknown::decode(rest)
        .map_err(|e| ApiError::bad_request(format!("invalid runtime.Unknown envelope: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_else(|| "v1".into());
    let raw = unknown.raw.unwrap_or_default();
    let bad =
        |e: prost::DecodeError| ApiError::bad_request(format!("invalid {kind} protobuf: {e}"));
    let mut obj = match kind.as_str() {
        "Secret" => secret_json(Secret::decode(raw.as_slice()).map_err(bad)?),
        "ConfigMap" => config_map_json(ConfigMap::decode(raw.as_slice()).map_err(bad)?),
        "Namespace" => {
            let ns = Namespace::decode(raw.as_slice()).map_err(bad)?;
            let mut out = Map::new();
            out.insert(
                "metadata".into(),
                meta_json(ns.metadata.unwrap_or_default()),
            );
            let finalizers = ns.spec.map(|s| s.finalizers).unwrap_or_default();
            if !finalizers.is_empty() {
                out.insert("spec".into(), json!({ "finalizers": finalizers }));
            }
            out
        }
        "SelfSubjectAccessReview" => {
            let r = k8s_pb::api::authorization::v1::SelfSubjectAccessReview::decode(raw.as_slice())
                .map_err(bad)?;
            let spec = r.spec.unwrap_or_default();
            let mut out = Map::new();
            out.insert("metadata".into(), meta_json(r.metadata.unwrap_or_default()));
            let mut spec_json = Map::new();
            if let Some(a) = spec.resource_attributes {
                let mut attrs = Map::new();
                for (k, v) in [
                    ("namespace", a.namespace),
                    ("verb", a.verb),
                    ("group", a.group),
                    ("version", a.version),
                    ("resource", a.resource),
                    ("subresource", a.subresource),
                    ("name", a.name),
                ] {
                    if let Some(v) = v.filter(|v| !v.is_empty()) {
                        attrs.insert(k.into(), json!(v));
                    }
                }
                spec_json.insert("resourceAttributes".into(), Value::Object(attrs));
            }
            if let Some(a) = spec.non_resource_attributes {
                spec_json.insert(
                    "nonResourceAttributes".into(),
                    json!({"path": a.path.unwrap_or_default(), "verb": a.verb.unwrap_or_default()}),
                );
            }
            out.insert("spec".into(), Value::Object(spec_json));
            out
        }
        "ServiceAccount" => {
            let sa = ServiceAccount::decode(raw.as_slice()).map_err(bad)?;
            let mut out = Map::new();
            out.insert(
                "metadata".into(),
                meta_json(sa.metadata.unwrap_or_default()),
            );
            if let Some(a) = sa.automount_service_account_token {
                out.insert("automountServiceAccountToken".into(), json!(a));
            }
            let pull: Vec<Value> = sa
                .image_pull_secrets
                .into_iter()
                .map(|r| json!({ "name": r.name.unwrap_or_default() }))
                .collect();
            if !pull.is_empty() {
                out.insert("imagePullSecrets".into(), json!(pull));
            }
            out
        }
        other => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf for kind {other:?} (decoded kinds: Secret, ConfigMap, Namespace, ServiceAccount, SelfSubjectAccessReview)"
            )));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn b64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn string_map(m: BTreeMap<String, String>) -> Value {
    Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect())
}

fn time(t: Option<Time>) -> Option<Value> {
    let secs = t?.seconds?;
    let ts = jiff::Timestamp::from_second(secs).ok()?;
    Some(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn meta_json(m: ObjectMeta) -> Value {
    let mut out = Map::new();
    // proto2 optionals arrive set-but-empty from Go clients; JSON clients omit them.
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v.filter(|v| !(v == "" || v == 0 || v.is_null())) {
            out.insert(k.into(), v);
        }
    };
    put("name", m.name.map(|v| json!(v)));
    put("generateName", m.generate_name.map(|v| json!(v)));
    put("namespace", m.namespace.map(|v| json!(v)));
    put("uid", m.uid.map(|v| json!(v)));
    put("resourceVersion", m.resource_version.map(|v| json!(v)));
    put("generation", m.generation.map(|v| json!(v)));
    put("creationTimestamp", time(m.creation_timestamp));
    put("deletionTimestamp", time(m.deletion_timestamp));
    if !m.labels.is_empty() {
        put("labels", Some(string_map(m.labels)));
    }
    if !m.annotations.is_empty() {
        put("annotations", Some(string_map(m.annotations)));
    }
    if !m.finalizers.is_empty() {
        put("finalizers", Some(json!(m.finalizers)));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| {
                json!({
                    "apiVersion": r.api_version.unwrap_or_default(),
                    "kind": r.kind.unwrap_or_default(),
                    "name": r.name.unwrap_or_default(),
                    "uid": r.uid.unwrap_or_default(),
                    "controller": r.controller.unwrap_or(false),
                    "blockOwnerDeletion": r.block_owner_deletion.unwrap_or(false),
                })
            })
            .collect();
        put("ownerReferences", Some(json!(refs)));
    }
    Value::Object(out)
}

fn secret_json(s: Secret) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("metadata".into(), meta_json(s.metadata.unwrap_or_default()));
    if !s.data.is_empty() {
        let data: Map<String, Value> = s.data.iter().map(|(k, v)| (k.clone(), b64(v))).collect();
        out.insert("data".into(), Value::Object(data));
    }
    if !s.string_data.is_empty() {
        out.insert("stringData".into(), string_map(s.string_data));
    }
    if let Some(t) = s.r#type {
        out.insert("type".into(), json!(t));
    }
    if let Some(i) = s.immutable {
        out.insert("immutable".into(), json!(i));
    }
    out
}

fn config_map_json(c: ConfigMap) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("metadata".into(), meta_json(c.metadata.unwrap_or_default()));
    if !c.data.is_empty() {
        out.insert("data".into(), string_map(c.data));
    }
    if !c.binary_data.is_empty() {
        let data: Map<String, Value> = c
            .binary_data
            .iter()
            .map(|(k, v)| (k.clone(), b64(v)))
            .collect();
        out.insert("binaryData".into(), Value::Object(data));
    }
    if let Some(i) = c.immutable {
        out.insert("immutable".into(), json!(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes an object the way client-go does, to act like Helm.
    fn encode_for_test(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn decodes_a_helm_release_secret() {
        let secret = Secret {
            metadata: Some(ObjectMeta {
                name: Some("sh.helm.release.v1.skoala-init.v1".into()),
                namespace: Some("skoala-system".into()),
                labels: [("owner".to_string(), "helm".to_string())].into(),
                ..Default::default()
            }),
            data: [("release".to_string(), b"H4sI".to_vec())].into(),
            r#type: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let body = encode_for_test("Secret", secret.encode_to_vec());
        let v = decode(&body).expect("decodes");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["labels"]["owner"], "helm");
        assert_eq!(v["data"]["release"], "SDRzSQ==");
        assert_eq!(v["type"], "helm.sh/release.v1");
    }

    #[test]
    fn decodes_a_config_map() {
        let cm = ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let v = decode(&encode_for_test("ConfigMap", cm.encode_to_vec())).expect("decodes");
        assert_eq!(v["data"]["k"], "v");
    }

    #[test]
    fn rejects_missing_magic_and_other_kinds() {
        assert_eq!(decode(b"{}").expect_err("no magic").code, 400);
        let e = decode(&encode_for_test("Pod", vec![])).expect_err("pods are not decoded");
        assert_eq!(e.code, 415);
    }
}
