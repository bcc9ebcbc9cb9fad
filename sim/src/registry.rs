//! The resource registry: which resource types the emulated cluster serves.
//!
//! One table drives routing, discovery (`/api`, `/apis/...`) and the OpenAPI documents, so a
//! type is either fully served or not at all. Built-in types are fixed; CustomResourceDefinitions
//! add and remove types at runtime (see [`Registry::sync_crd`]).

use std::sync::RwLock;

use serde_json::Value;

/// One served resource type at one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    pub version: String,
    /// Plural resource name as it appears in URLs (`deployments`).
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether the type has a `/status` subresource (then writes to the main resource keep
    /// the stored status, and `/status` writes change only status).
    pub status: bool,
    /// Whether the type has a `/scale` subresource.
    pub scale: bool,
    /// Create-only "virtual" types such as SelfSubjectAccessReview.
    pub create_only: bool,
    /// For CRD-defined types: the CRD's name and the version's OpenAPI schema.
    pub crd: Option<CrdInfo>,
    /// Whether this version is the storage/preferred version of the group.
    pub preferred: bool,
}

/// What a CRD contributed to a resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdInfo {
    pub name: String,
    /// `openAPIV3Schema` of this version (may be `Null`).
    pub schema: Value,
    /// `additionalPrinterColumns` of this version (may be `Null`).
    pub printer_columns: Value,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        status,
    }
}

const NS: bool = true;
const CLUSTER: bool = false;

/// The built-in types. Workloads have a status subresource, as in a real cluster, because
/// Helm 4's kstatus wait compares `metadata.generation` with `status.observedGeneration`.
const BUILTINS: &[Builtin] = &[
    b("", "v1", "namespaces", "Namespace", CLUSTER, &["ns"], true),
    b("", "v1", "secrets", "Secret", NS, &[], false),
    b("", "v1", "configmaps", "ConfigMap", NS, &["cm"], false),
    b("", "v1", "services", "Service", NS, &["svc"], true),
    b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        NS,
        &["sa"],
        false,
    ),
    b("", "v1", "pods", "Pod", NS, &["po"], true),
    b("", "v1", "events", "Event", NS, &["ev"], false),
    b("", "v1", "endpoints", "Endpoints", NS, &["ep"], false),
    b(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        NS,
        &["pvc"],
        true,
    ),
    b(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        CLUSTER,
        &["pv"],
        true,
    ),
    b("", "v1", "nodes", "Node", CLUSTER, &["no"], true),
    b(
        "",
        "v1",
        "resourcequotas",
        "ResourceQuota",
        NS,
        &["quota"],
        true,
    ),
    b(
        "",
        "v1",
        "limitranges",
        "LimitRange",
        NS,
        &["limits"],
        false,
    ),
    b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        NS,
        &["deploy"],
        true,
    ),
    b("apps", "v1", "replicasets", "ReplicaSet", NS, &["rs"], true),
    b(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        NS,
        &["sts"],
        true,
    ),
    b("apps", "v1", "daemonsets", "DaemonSet", NS, &["ds"], true),
    b(
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        NS,
        &[],
        false,
    ),
    b("batch", "v1", "jobs", "Job", NS, &[], true),
    b("batch", "v1", "cronjobs", "CronJob", NS, &["cj"], true),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        NS,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        NS,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        CLUSTER,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        CLUSTER,
        &[],
        false,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        CLUSTER,
        &["crd", "crds"],
        true,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        NS,
        &[],
        false,
    ),
    b(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        NS,
        &["pdb"],
        true,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        NS,
        &["ing"],
        true,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        NS,
        &["netpol"],
        false,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "IngressClass",
        CLUSTER,
        &[],
        false,
    ),
    b(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        NS,
        &["hpa"],
        true,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        CLUSTER,
        &[],
        false,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        CLUSTER,
        &[],
        false,
    ),
    b(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        CLUSTER,
        &["pc"],
        false,
    ),
    b(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        CLUSTER,
        &["sc"],
        false,
    ),
];

/// Create-only review types (`authorization.k8s.io`): the server answers, nothing is stored.
const REVIEWS: &[(&str, &str, bool)] = &[
    (
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        CLUSTER,
    ),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview", CLUSTER),
    ("subjectaccessreviews", "SubjectAccessReview", CLUSTER),
    ("localsubjectaccessreviews", "LocalSubjectAccessReview", NS),
];

/// Kinds that `kubectl get all` covers.
const CATEGORY_ALL: &[&str] = &[
    "pods",
    "services",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
    "horizontalpodautoscalers",
];

fn builtin_types() -> Vec<ResourceType> {
    let mut out: Vec<ResourceType> = BUILTINS
        .iter()
        .map(|t| ResourceType {
            group: t.group.into(),
            version: t.version.into(),
            plural: t.plural.into(),
            singular: t.kind.to_lowercase(),
            kind: t.kind.into(),
            namespaced: t.namespaced,
            short_names: t.short.iter().map(|s| s.to_string()).collect(),
            categories: if CATEGORY_ALL.contains(&t.plural) {
                vec!["all".into()]
            } else {
                vec![]
            },
            status: t.status,
            scale: matches!(t.plural, "deployments" | "replicasets" | "statefulsets"),
            create_only: false,
            crd: None,
            preferred: true,
        })
        .collect();
    for (plural, kind, namespaced) in REVIEWS {
        out.push(ResourceType {
            group: "authorization.k8s.io".into(),
            version: "v1".into(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            namespaced: *namespaced,
            short_names: vec![],
            categories: vec![],
            status: false,
            scale: false,
            create_only: true,
            crd: None,
            preferred: true,
        });
    }
    out
}

/// The set of served types; cheap to read, changed only by CRD writes.
pub struct Registry {
    types: RwLock<Vec<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            types: RwLock::new(builtin_types()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ResourceType>> {
        // A panic while holding the lock cannot leave the Vec half-written (we only replace
        // whole entries), so a poisoned lock is still safe to read.
        self.types.read().unwrap_or_else(|e| e.into_inner())
    }

    /// All served types (a snapshot).
    pub fn all(&self) -> Vec<ResourceType> {
        self.read().clone()
    }

    /// The type served at `group/version` under the plural name `plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Whether `group/version` is served at all.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.read()
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// Adds, replaces or (when `crd` is `None`) removes the types defined by the CRD `name`.
    ///
    /// Returns the accepted names on success, or a validation message when the CRD would
    /// shadow a built-in type.
    pub fn sync_crd(&self, name: &str, crd: Option<&Value>) -> Result<(), String> {
        let new_types = match crd {
            Some(crd) => crd_types(name, crd)?,
            None => vec![],
        };
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        for t in &new_types {
            if types
                .iter()
                .any(|o| o.crd.is_none() && o.group == t.group && o.plural == t.plural)
            {
                return Err(format!(
                    "spec.names.plural: {}.{} is served by a built-in type",
                    t.plural, t.group
                ));
            }
        }
        types.retain(|t| t.crd.as_ref().is_none_or(|c| c.name != name));
        types.extend(new_types);
        Ok(())
    }
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types a CRD object defines (one per served version).
fn crd_types(name: &str, crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().ok_or("spec.group: Required value")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural: Required value")?;
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind: Required value")?;
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let singular = names["singular"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"]
        .as_array()
        .ok_or("spec.versions: Required value")?;
    // The storage version is the preferred one, as in discovery of a real server.
    let storage = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .or_else(|| versions.first())
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut out = vec![];
    for v in versions {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let version = v["name"]
            .as_str()
            .ok_or("spec.versions[].name: Required value")?;
        out.push(ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            namespaced,
            short_names: str_list(&names["shortNames"]),
            categories: str_list(&names["categories"]),
            status: v["subresources"].get("status").is_some(),
            scale: v["subresources"].get("scale").is_some(),
            create_only: false,
            crd: Some(CrdInfo {
                name: name.into(),
                schema: v["schema"]["openAPIV3Schema"].clone(),
                printer_columns: v["additionalPrinterColumns"].clone(),
            }),
            preferred: version == storage,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_adds_and_removes_types() {
        let r = Registry::new();
        assert!(r.lookup("example.com", "v1", "widgets").is_none());
        r.sync_crd("widgets.example.com", Some(&crd()))
            .expect("valid");
        let t = r.lookup("example.com", "v1", "widgets").expect("served");
        assert!(t.status && t.namespaced && t.preferred);
        assert_eq!(t.kind, "Widget");
        assert!(
            !r.lookup("example.com", "v1beta1", "widgets")
                .expect("served")
                .preferred
        );
        r.sync_crd("widgets.example.com", None).expect("remove");
        assert!(!r.has_group_version("example.com", "v1"));
    }

    #[test]
    fn crd_name_must_match_names() {
        let r = Registry::new();
        assert!(r.sync_crd("gadgets.example.com", Some(&crd())).is_err());
    }

    #[test]
    fn builtins_are_served() {
        let r = Registry::new();
        assert!(
            r.lookup("apps", "v1", "deployments")
                .expect("deployments")
                .status
        );
        assert!(!r.lookup("", "v1", "namespaces").expect("ns").namespaced);
        assert!(
            r.lookup("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
                .expect("ssar")
                .create_only
        );
    }
}
