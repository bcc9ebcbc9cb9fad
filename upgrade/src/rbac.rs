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
    // The release lock is created by name; the chart grants the rest on that name only.
    ("coordination.k8s.io", "leases", &["create"]),
];

/// Asked only of a release whose immutable Jobs are deleted before the upgrade
/// ([`crate::ReleaseSpec::delete_jobs`]): skoala's chart has none, and its coordinator is not
/// granted Jobs.
const JOBS: (&str, &str, &[&str]) = ("batch", "jobs", &["get", "list", "create", "delete"]);

/// The release lock's verbs, asked for its name ([`crate::lock::lease_name`]): a Role may limit
/// them with `resourceNames`, and a nameless question would then be denied.
const LOCK_VERBS: &[&str] = &["get", "update", "delete"];

/// Cluster-scoped, when CRDs are applied.
const CRDS: (&str, &str, &[&str]) = (
    "apiextensions.k8s.io",
    "customresourcedefinitions",
    &["get", "create", "patch"],
);

/// One question to the API server: may I `verb` `group/resource` (named `name`) in `namespace`?
type Check<'a> = (Option<&'a str>, &'a str, &'a str, &'a str, Option<&'a str>);

/// Every denied permission, as `verb group/resource`; empty when all are allowed.
pub async fn missing(
    client: &kube::Client,
    spec: &crate::ReleaseSpec,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let namespace = spec.namespace.as_str();
    let with_crds = spec.crd_policy != crate::spec::CrdPolicy::Skip;
    let lock = crate::lock::lease_name(&spec.release);
    let mut checks: Vec<Check<'_>> = Vec::new();
    let jobs = (!spec.delete_jobs.is_empty()).then_some(&JOBS);
    for (group, resource, verbs) in NAMESPACED.iter().chain(jobs) {
        for verb in *verbs {
            checks.push((Some(namespace), group, resource, verb, None));
        }
    }
    for verb in LOCK_VERBS {
        checks.push((
            Some(namespace),
            "coordination.k8s.io",
            "leases",
            verb,
            Some(&lock),
        ));
    }
    if with_crds {
        for verb in CRDS.2 {
            checks.push((None, CRDS.0, CRDS.1, verb, None));
        }
    }
    let mut denied = Vec::new();
    for (ns, group, resource, verb, name) in checks {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: ns.map(String::from),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    name: name.map(String::from),
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
