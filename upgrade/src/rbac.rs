//! Can we do everything the upgrade needs? Asked of the API server with
//! SelfSubjectAccessReviews, before anything changes, so a missing permission is a clear
//! refusal instead of a half-applied upgrade.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// (API group, resource, verbs) in the release namespace.
const NAMESPACED: &[(&str, &str, &[&str])] = &[
    // Helm's release records, our backups.
    (
        "",
        "secrets",
        &["get", "list", "create", "update", "patch", "delete"],
    ),
    // Our operation record, chart ConfigMaps.
    (
        "",
        "configmaps",
        &["get", "list", "create", "update", "patch"],
    ),
    ("", "services", &["get", "create", "patch"]),
    ("", "serviceaccounts", &["get", "create", "patch"]),
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch"],
    ),
    // The immutable Jobs are deleted before the upgrade.
    ("batch", "jobs", &["get", "list", "create", "delete"]),
    // The release lock.
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "delete"],
    ),
];

/// Cluster-scoped, when CRDs are applied.
const CRDS: (&str, &str, &[&str]) = (
    "apiextensions.k8s.io",
    "customresourcedefinitions",
    &["get", "create", "patch"],
);

/// Every denied permission, as `verb group/resource`; empty when all are allowed.
pub async fn missing(
    client: &kube::Client,
    namespace: &str,
    with_crds: bool,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut checks: Vec<(Option<&str>, &str, &str, &str)> = Vec::new();
    for (group, resource, verbs) in NAMESPACED {
        for verb in *verbs {
            checks.push((Some(namespace), group, resource, verb));
        }
    }
    if with_crds {
        for verb in CRDS.2 {
            checks.push((None, CRDS.0, CRDS.1, verb));
        }
    }
    let mut denied = Vec::new();
    for (ns, group, resource, verb) in checks {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: ns.map(String::from),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            let group = if group.is_empty() { "core" } else { group };
            denied.push(format!("{verb} {group}/{resource}"));
        }
    }
    Ok(denied)
}
