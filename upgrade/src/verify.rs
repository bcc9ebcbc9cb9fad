//! Is the release what we wanted? Deployed at the expected chart version, its workloads
//! rolled out and ready, and the image tags the ones we set.
//!
//! The release state is read natively from Helm's release Secrets ([`crate::inventory`]), the
//! computed values and the manifest from `helm get`, and the workloads from the API. The live
//! workloads must run the images helm rendered (so nobody changed them behind helm's back) and
//! every expected tag must appear among them. Custom resources of the chart's own CRDs must
//! hold every field the chart rendered: an API server silently *prunes* fields its CRD does
//! not declare (unless the client asked for strict validation, which helm 4 does and helm 3
//! does not), so with helm 3 an upgrade that skipped the CRDs "succeeds" with a gutted
//! resource. This check turns that into a verify failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::Api;

use crate::helm::{QUICK, RunHelm};
use crate::inventory::{self, TrackedRelease};

/// What the release should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub release: String,
    pub namespace: String,
    pub chart_version: String,
    /// Dotted value key → expected tag.
    pub tags: BTreeMap<String, String>,
    /// Kinds defined by the chart's CRDs, whose objects are checked for pruned fields.
    pub custom_kinds: Vec<CustomKind>,
}

/// A kind a chart CRD defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomKind {
    pub group: String,
    pub kind: String,
    pub plural: String,
}

impl CustomKind {
    /// The kinds of `crds`.
    pub fn of(crds: &[crate::crds::ChartCrd]) -> Vec<CustomKind> {
        crds.iter()
            .map(|c| CustomKind {
                group: c.crd.spec.group.clone(),
                kind: c.crd.spec.names.kind.clone(),
                plural: c.crd.spec.names.plural.clone(),
            })
            .collect()
    }
}

/// A workload from the release manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Container images (init containers included), in order.
    pub images: Vec<String>,
}

/// Why a release is not (yet) what was expected.
#[derive(Debug)]
pub struct Unhealthy {
    pub reason: String,
    /// Waiting will not help (wrong version, wrong images, pruned fields): stop polling.
    pub permanent: bool,
}

impl From<String> for Unhealthy {
    fn from(reason: String) -> Self {
        Unhealthy {
            reason,
            permanent: false,
        }
    }
}

impl From<&str> for Unhealthy {
    fn from(reason: &str) -> Self {
        reason.to_string().into()
    }
}

fn permanent(reason: String) -> Unhealthy {
    Unhealthy {
        reason,
        permanent: true,
    }
}

/// Polls `check` (a [`check`] pass) until it passes, fails permanently, or `timeout` passes;
/// the error is the last reason.
pub async fn poll<F, Fut>(timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Unhealthy>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(u) if u.permanent => return Err(u.reason),
            Err(u) if Instant::now() >= deadline => {
                return Err(format!("not healthy after {timeout:?}: {}", u.reason));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// One verification pass. The error says what is wrong (no values).
pub async fn check(
    session: &impl RunHelm,
    client: &kube::Client,
    expect: &Expectation,
) -> Result<(), Unhealthy> {
    let tracked = TrackedRelease {
        release: expect.release.clone(),
        namespace: expect.namespace.clone(),
        image_tag_keys: expect.tags.keys().cloned().collect(),
    };
    let info = inventory::read_release(client, &tracked)
        .await
        .map_err(|e| format!("reading the release: {e}"))?
        .ok_or("the release is not installed")?;
    if !info.status.is_deployed() {
        let reason = format!(
            "revision {} is {}, not deployed",
            info.revision, info.status
        );
        return Err(if info.status.is_pending() {
            reason.into()
        } else {
            permanent(reason)
        });
    }
    if info.chart_version != expect.chart_version {
        return Err(permanent(format!(
            "chart version is {}, expected {}",
            info.chart_version, expect.chart_version
        )));
    }
    for (key, want) in &expect.tags {
        match info.image_tags.get(key) {
            Some(have) if have == want => {}
            Some(have) => {
                return Err(permanent(format!(
                    "value {key} is {have:?}, expected {want:?}"
                )));
            }
            None => return Err(permanent(format!("value {key} is not set"))),
        }
    }

    let manifest = get_manifest(session, &expect.release, &expect.namespace).await?;
    let workloads = workloads(&manifest, &expect.namespace);
    for w in &workloads {
        check_workload(client, w).await?;
    }
    check_custom_resources(client, &manifest, expect).await?;
    for (key, tag) in &expect.tags {
        let suffix = format!(":{tag}");
        if !workloads
            .iter()
            .flat_map(|w| &w.images)
            .any(|i| i.ends_with(&suffix))
        {
            return Err(permanent(format!(
                "no workload runs an image tagged {tag} (from {key})"
            )));
        }
    }
    Ok(())
}

async fn get_manifest(session: &impl RunHelm, release: &str, ns: &str) -> Result<String, String> {
    let out = session
        .run(
            &[
                "get".into(),
                "manifest".into(),
                release.into(),
                "-n".into(),
                ns.into(),
            ],
            QUICK,
        )
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        // helm's stderr for `get manifest` is about the release record, not values; still,
        // only its exit code is reported.
        return Err(format!("helm get manifest exited with {:?}", out.code));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deployments, StatefulSets and DaemonSets in a rendered manifest.
pub fn workloads(manifest: &str, default_ns: &str) -> Vec<Workload> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let Ok(v) = serde_yaml::Value::deserialize(doc) else {
            continue;
        };
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
            continue;
        }
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or(default_ns);
        let pod = v
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"));
        let mut images = Vec::new();
        for list in ["initContainers", "containers"] {
            if let Some(cs) = pod.and_then(|p| p.get(list)).and_then(|c| c.as_sequence()) {
                images.extend(
                    cs.iter()
                        .filter_map(|c| c.get("image").and_then(|i| i.as_str()))
                        .map(String::from),
                );
            }
        }
        out.push(Workload {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            images,
        });
    }
    out
}

/// Every rendered object of a chart CRD kind must exist with every rendered `spec` field.
async fn check_custom_resources(
    client: &kube::Client,
    manifest: &str,
    expect: &Expectation,
) -> Result<(), Unhealthy> {
    use kube::api::{ApiResource, DynamicObject};
    use kube::core::GroupVersionKind;
    use serde::Deserialize as _;
    if expect.custom_kinds.is_empty() {
        return Ok(());
    }
    // Parsed before the first API call: the YAML parser must not live across an await, or the
    // executor's future could not move between threads.
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|doc| serde_json::Value::deserialize(doc).ok())
        .collect();
    for rendered in documents {
        let api_version = rendered["apiVersion"].as_str().unwrap_or_default();
        let kind = rendered["kind"].as_str().unwrap_or_default();
        let Some((group, version)) = api_version.split_once('/') else {
            continue;
        };
        let Some(custom) = expect
            .custom_kinds
            .iter()
            .find(|c| c.group == group && c.kind == kind)
        else {
            continue;
        };
        let name = rendered["metadata"]["name"].as_str().unwrap_or_default();
        let ns = rendered["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&expect.namespace);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &custom.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let what = format!("{kind} {ns}/{name}");
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading {what}: {e}"))?
            .ok_or_else(|| format!("{what} does not exist"))?;
        if let Some(missing) = missing_field(&rendered["spec"], &live.data["spec"], "spec") {
            return Err(permanent(format!(
                "{what}: field {missing} was dropped by the API server, so its CRD does not \
                 declare it (were the chart's CRDs applied?)"
            )));
        }
    }
    Ok(())
}

/// The first path present in `rendered` but absent from `live` (maps only: lists and
/// scalars may be defaulted or normalised by the server).
fn missing_field(
    rendered: &serde_json::Value,
    live: &serde_json::Value,
    at: &str,
) -> Option<String> {
    let serde_json::Value::Object(want) = rendered else {
        return None;
    };
    for (key, sub) in want {
        let path = format!("{at}.{key}");
        match live.get(key) {
            None if !sub.is_null() => return Some(path),
            None => {}
            Some(have) => {
                if let Some(m) = missing_field(sub, have, &path) {
                    return Some(m);
                }
            }
        }
    }
    None
}

fn template_images(t: Option<&PodTemplateSpec>) -> Vec<String> {
    let Some(spec) = t.and_then(|t| t.spec.as_ref()) else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| c.image.clone())
        .collect()
}

async fn check_workload(client: &kube::Client, w: &Workload) -> Result<(), Unhealthy> {
    let what = format!("{} {}/{}", w.kind, w.namespace, w.name);
    let gone = || format!("{what} does not exist");
    let api_err = |e: kube::Error| format!("reading {what}: {e}");
    let (generation, observed, images, ready) = match w.kind.as_str() {
        "Deployment" => {
            let d = Api::<Deployment>::namespaced(client.clone(), &w.namespace)
                .get_opt(&w.name)
                .await
                .map_err(api_err)?
                .ok_or_else(gone)?;
            let spec = d.spec.as_ref();
            let want = spec.and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let ready = st.updated_replicas.unwrap_or(0) >= want
                && st.ready_replicas.unwrap_or(0) >= want
                && st.available_replicas.unwrap_or(0) >= want
                && st.replicas.unwrap_or(0) <= want;
            (
                d.metadata.generation,
                st.observed_generation,
                template_images(spec.map(|s| &s.template)),
                ready,
            )
        }
        "StatefulSet" => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), &w.namespace)
                .get_opt(&w.name)
                .await
                .map_err(api_err)?
                .ok_or_else(gone)?;
            let spec = s.spec.as_ref();
            let want = spec.and_then(|s| s.replicas).unwrap_or(1);
            let st = s.status.clone().unwrap_or_default();
            let ready =
                st.ready_replicas.unwrap_or(0) >= want && st.updated_replicas.unwrap_or(0) >= want;
            (
                s.metadata.generation,
                st.observed_generation,
                template_images(spec.map(|s| &s.template)),
                ready,
            )
        }
        _ => {
            let d = Api::<DaemonSet>::namespaced(client.clone(), &w.namespace)
                .get_opt(&w.name)
                .await
                .map_err(api_err)?
                .ok_or_else(gone)?;
            let st = d.status.clone().unwrap_or_default();
            let ready = st.number_ready >= st.desired_number_scheduled
                && st.updated_number_scheduled.unwrap_or(0) >= st.desired_number_scheduled;
            (
                d.metadata.generation,
                st.observed_generation,
                template_images(d.spec.as_ref().map(|s| &s.template)),
                ready,
            )
        }
    };
    if observed.unwrap_or(0) < generation.unwrap_or(0) {
        return Err(
            format!("{what}: the controller has not observed the latest change yet").into(),
        );
    }
    if images != w.images {
        return Err(permanent(format!(
            "{what} runs {images:?}, but the release rendered {:?}",
            w.images
        )));
    }
    if !ready {
        return Err(format!("{what} is not ready").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pruned_fields() {
        let rendered = serde_json::json!({"envoy": {"replicas": 2, "logLevel": "info"}, "x": null});
        let live = serde_json::json!({"envoy": {"replicas": 2}});
        assert_eq!(
            missing_field(&rendered, &live, "spec").as_deref(),
            Some("spec.envoy.logLevel")
        );
        let full = serde_json::json!({"envoy": {"replicas": 2, "logLevel": "info"}});
        assert_eq!(missing_field(&rendered, &full, "spec"), None);
    }

    #[test]
    fn finds_workloads_and_images() {
        let manifest = "---\n# Source: x/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      initContainers: [{name: i, image: r/init:v1}]\n      containers: [{name: a, image: r/a:v1}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s, namespace: other}\nspec:\n  template:\n    spec:\n      containers: [{name: s, image: r/s:v1}]\n";
        let w = workloads(manifest, "ns");
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].images, ["r/init:v1", "r/a:v1"]);
        assert_eq!(w[0].namespace, "ns");
        assert_eq!(w[1].namespace, "other");
        assert_eq!(w[1].kind, "StatefulSet");
    }
}
