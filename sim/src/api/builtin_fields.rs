//! Unknown fields in objects of built-in kinds (Deployment, Service, ...).
//!
//! A real API server decodes a built-in object into its Go type: a field the type does not
//! have is an error under `fieldValidation=Strict` (kubectl's default and Helm 4's),
//! `strict decoding error: unknown field "spec.bogusField"`, a `Warning` under `Warn` (the
//! server's default) and silently dropped under `Ignore`. Custom resources get the same
//! treatment from their schema in [`crate::api::schema`].
//!
//! The emulator has no Go types, but `k8s-openapi` has the same ones in Rust: an object
//! round-tripped through its `k8s-openapi` type (deserialize, serialize) loses exactly the
//! fields the type does not declare, because those types ignore unknown keys. The keys present
//! before and absent after are the unknown fields. Keys, not values, are compared: a value the
//! type normalises (an empty list that serializes away, a timestamp) is still a known field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::{
    admissionregistration, apps, autoscaling, batch, coordination, core, networking, policy, rbac,
    scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;

/// One segment of a path into a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// The paths of `obj`'s fields that its built-in type (`group`/`kind`) does not declare.
///
/// `None` when the kind is not a built-in one the emulator knows, or when the object does not
/// decode into its type at all (a type error is not this check's business; the emulator
/// stays lenient there as it always was).
pub fn unknown_fields(
    group: &str,
    version: &str,
    kind: &str,
    obj: &Value,
) -> Option<Vec<Vec<Seg>>> {
    let mut typed = obj.clone();
    // The typed decoders insist on their own apiVersion and kind.
    if let Some(m) = typed.as_object_mut() {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        m.insert("apiVersion".into(), Value::String(api_version));
        m.insert("kind".into(), Value::String(kind.into()));
    }
    let after = round_trip(group, kind, &typed)??;
    let mut out = vec![];
    diff(&typed, &after, &mut vec![], &mut out);
    Some(out)
}

/// `"spec.template.spec.containers[0].bogus"`, as the real server prints a path.
pub fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Drops the field at `path` from `obj` (what the server does outside `Strict`).
pub fn remove(obj: &mut Value, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str()),
            Seg::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let (Seg::Key(k), Some(m)) = (last, cur.as_object_mut()) {
        m.remove(k);
    }
}

fn typed<T: Serialize + DeserializeOwned>(obj: &Value) -> Option<Value> {
    let t: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(t).ok()
}

/// `Some(None)`: a known kind whose object did not decode; `None`: not a built-in kind.
fn round_trip(group: &str, kind: &str, obj: &Value) -> Option<Option<Value>> {
    let v = match (group, kind) {
        ("", "Namespace") => typed::<core::v1::Namespace>(obj),
        ("", "Secret") => typed::<core::v1::Secret>(obj),
        ("", "ConfigMap") => typed::<core::v1::ConfigMap>(obj),
        ("", "Service") => typed::<core::v1::Service>(obj),
        ("", "ServiceAccount") => typed::<core::v1::ServiceAccount>(obj),
        ("", "Pod") => typed::<core::v1::Pod>(obj),
        ("", "Event") => typed::<core::v1::Event>(obj),
        ("", "Endpoints") => typed::<core::v1::Endpoints>(obj),
        ("", "PersistentVolumeClaim") => typed::<core::v1::PersistentVolumeClaim>(obj),
        ("", "PersistentVolume") => typed::<core::v1::PersistentVolume>(obj),
        ("", "Node") => typed::<core::v1::Node>(obj),
        ("", "ResourceQuota") => typed::<core::v1::ResourceQuota>(obj),
        ("", "LimitRange") => typed::<core::v1::LimitRange>(obj),
        ("apps", "Deployment") => typed::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => typed::<apps::v1::ReplicaSet>(obj),
        ("apps", "StatefulSet") => typed::<apps::v1::StatefulSet>(obj),
        ("apps", "DaemonSet") => typed::<apps::v1::DaemonSet>(obj),
        ("apps", "ControllerRevision") => typed::<apps::v1::ControllerRevision>(obj),
        ("batch", "Job") => typed::<batch::v1::Job>(obj),
        ("batch", "CronJob") => typed::<batch::v1::CronJob>(obj),
        ("policy", "PodDisruptionBudget") => typed::<policy::v1::PodDisruptionBudget>(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            typed::<autoscaling::v2::HorizontalPodAutoscaler>(obj)
        }
        ("rbac.authorization.k8s.io", "Role") => typed::<rbac::v1::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => typed::<rbac::v1::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => typed::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            typed::<rbac::v1::ClusterRoleBinding>(obj)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            typed::<apiextensions::v1::CustomResourceDefinition>(obj)
        }
        ("coordination.k8s.io", "Lease") => typed::<coordination::v1::Lease>(obj),
        ("networking.k8s.io", "Ingress") => typed::<networking::v1::Ingress>(obj),
        ("networking.k8s.io", "NetworkPolicy") => typed::<networking::v1::NetworkPolicy>(obj),
        ("networking.k8s.io", "IngressClass") => typed::<networking::v1::IngressClass>(obj),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            typed::<admissionregistration::v1::ValidatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            typed::<admissionregistration::v1::MutatingWebhookConfiguration>(obj)
        }
        ("scheduling.k8s.io", "PriorityClass") => typed::<scheduling::v1::PriorityClass>(obj),
        ("storage.k8s.io", "StorageClass") => typed::<storage::v1::StorageClass>(obj),
        _ => return None,
    };
    Some(v)
}

/// A value a type may legitimately serialize away (an unset optional, an empty list or map).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn diff(before: &Value, after: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                path.push(Seg::Key(k.clone()));
                match a.get(k) {
                    Some(av) => diff(bv, av, path, out),
                    None if is_empty(bv) => {}
                    None => out.push(path.clone()),
                }
                path.pop();
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() == b.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                path.push(Seg::Index(i));
                diff(bv, av, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "annotations": {}, "finalizers": [],
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "managedFields": [{"manager": "helm", "operation": "Apply",
                                            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx", "env": [],
                                             "resources": {"limits": {"cpu": "500m"}}}]}
                }
            },
            "status": {"replicas": 1, "conditions": []}
        })
    }

    fn unknown(obj: &Value) -> Vec<String> {
        unknown_fields("apps", "v1", "Deployment", obj)
            .expect("a built-in kind that decodes")
            .iter()
            .map(|p| display(p))
            .collect()
    }

    #[test]
    fn a_valid_deployment_has_no_unknown_fields() {
        assert_eq!(unknown(&deployment()), Vec::<String>::new());
    }

    #[test]
    fn typos_are_found_at_any_depth_and_can_be_removed() {
        let mut d = deployment();
        d["spec"]["bogusField"] = json!(true);
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        d["metadata"]["lables"] = json!({"a": "b"});
        let mut found = unknown(&d);
        found.sort();
        assert_eq!(
            found,
            [
                "metadata.lables",
                "spec.bogusField",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
        for p in unknown_fields("apps", "v1", "Deployment", &d).expect("decodes") {
            remove(&mut d, &p);
        }
        assert_eq!(d, deployment());
    }

    #[test]
    fn free_form_maps_and_raw_json_are_not_unknown_fields() {
        let cm = json!({"metadata": {"name": "c"}, "data": {"anything": "x", "at-all": "y"}});
        assert_eq!(
            unknown_fields("", "v1", "ConfigMap", &cm).expect("decodes"),
            Vec::<Vec<Seg>>::new()
        );
        let cr =
            json!({"metadata": {"name": "r"}, "data": {"whatever": {"nested": 1}}, "revision": 1});
        assert_eq!(
            unknown_fields("apps", "v1", "ControllerRevision", &cr).expect("decodes"),
            Vec::<Vec<Seg>>::new()
        );
    }

    #[test]
    fn custom_kinds_and_undecodable_objects_are_left_alone() {
        assert!(unknown_fields("example.com", "v1", "Widget", &json!({"x": 1})).is_none());
        let bad = json!({"metadata": {"name": "web"}, "spec": {"replicas": "three"}});
        assert!(unknown_fields("apps", "v1", "Deployment", &bad).is_none());
    }
}
