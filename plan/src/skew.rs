//! Skew (DESIGN.md invariant 3, "one version"): any difference between a working cluster's
//! `skoala-init` and the control plane's `skoala`, a release that is failed or pending, or image
//! tags that do not match the release's version.
//!
//! Computed from the last inventory each cluster reported, so an offline cluster is judged on
//! what it last said and is marked offline, never silently left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::release_status::ReleaseStatus;

/// What one cluster's release looks like, as far as skew is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReleaseState {
    pub chart_version: String,
    pub status: ReleaseStatus,
    /// Image-tag value key → tag.
    pub image_tags: BTreeMap<String, String>,
}

/// One cluster as the skew check sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRelease {
    pub cluster_id: String,
    pub name: String,
    pub connected: bool,
    /// `None`: the release is not installed (or the cluster never reported).
    pub release: Option<ReleaseState>,
}

/// Why a cluster is skewed. Several can hold at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SkewReason {
    /// The release's chart version differs from the control plane's.
    Version { expected: String, actual: String },
    /// The release is not `deployed`.
    Status { status: ReleaseStatus },
    /// An image tag does not match `v<chart version>`.
    ImageTag {
        key: String,
        expected: String,
        actual: String,
    },
    /// The release is not installed, or the cluster never reported an inventory.
    Missing,
    /// The cluster is not connected; its last known state is shown.
    Offline,
    /// The control plane itself has no healthy `skoala` to compare with.
    ControlPlane { detail: String },
}

impl std::fmt::Display for SkewReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkewReason::Version { expected, actual } => {
                write!(f, "version {actual}, control plane has {expected}")
            }
            SkewReason::Status { status } => write!(f, "release is {status}"),
            SkewReason::ImageTag {
                key,
                expected,
                actual,
            } => {
                write!(f, "{key} is {actual:?}, expected {expected:?}")
            }
            SkewReason::Missing => write!(f, "release not installed or never reported"),
            SkewReason::Offline => write!(f, "agent offline (last known state shown)"),
            SkewReason::ControlPlane { detail } => write!(f, "control plane: {detail}"),
        }
    }
}

/// A skewed cluster and every reason it is skewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skewed {
    pub cluster_id: String,
    pub name: String,
    pub reasons: Vec<SkewReason>,
}

/// The fleet's skew: empty `clusters` means one version everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkewReport {
    /// The control plane's `skoala` chart version, if known.
    pub control_plane_version: Option<String>,
    pub clusters: Vec<Skewed>,
}

impl SkewReport {
    pub fn is_clean(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// Problems of one release on its own: not deployed, or tags that do not follow its version.
pub(crate) fn release_problems(r: &ReleaseState, tag_keys: &[&str]) -> Vec<SkewReason> {
    let mut out = Vec::new();
    if !r.status.is_deployed() {
        out.push(SkewReason::Status {
            status: r.status.clone(),
        });
    }
    let expected = format!("v{}", r.chart_version);
    for key in tag_keys {
        // A key the chart does not carry (seata-operator before 0.20) is not skew, nor is an
        // empty tag: the chart's own default (its appVersion) applies, as on a fresh install.
        if let Some(actual) = r.image_tags.get(*key)
            && !actual.is_empty()
            && actual != &expected
        {
            out.push(SkewReason::ImageTag {
                key: key.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
    }
    out
}

/// Computes the skew of `workers` against the control plane's release.
///
/// `cp_tag_keys` and `worker_tag_keys` are the profile's image-tag value keys.
pub fn skew(
    control_plane: &ClusterRelease,
    cp_tag_keys: &[&str],
    workers: &[ClusterRelease],
    worker_tag_keys: &[&str],
) -> SkewReport {
    let mut clusters = Vec::new();
    let cp_version = control_plane
        .release
        .as_ref()
        .map(|r| r.chart_version.clone());

    let mut cp_reasons = match &control_plane.release {
        Some(r) => release_problems(r, cp_tag_keys),
        None => vec![SkewReason::Missing],
    };
    if !control_plane.connected {
        cp_reasons.push(SkewReason::Offline);
    }
    if !cp_reasons.is_empty() {
        clusters.push(Skewed {
            cluster_id: control_plane.cluster_id.clone(),
            name: control_plane.name.clone(),
            reasons: cp_reasons,
        });
    }

    for w in workers {
        let mut reasons = match (&w.release, &cp_version) {
            (None, _) => vec![SkewReason::Missing],
            (Some(r), expected) => {
                let mut v = Vec::new();
                match expected {
                    Some(e) if e != &r.chart_version => v.push(SkewReason::Version {
                        expected: e.clone(),
                        actual: r.chart_version.clone(),
                    }),
                    Some(_) => {}
                    None => v.push(SkewReason::ControlPlane {
                        detail: "no skoala release to compare with".into(),
                    }),
                }
                v.extend(release_problems(r, worker_tag_keys));
                v
            }
        };
        // Offline alone is not skew; offline *and* behind is, and says so.
        if !reasons.is_empty() && !w.connected {
            reasons.push(SkewReason::Offline);
        }
        if !reasons.is_empty() {
            clusters.push(Skewed {
                cluster_id: w.cluster_id.clone(),
                name: w.name.clone(),
                reasons,
            });
        }
    }
    SkewReport {
        control_plane_version: cp_version,
        clusters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::SKOALA;

    fn release(version: &str, status: &str, tag: &str) -> ReleaseState {
        ReleaseState {
            chart_version: version.into(),
            status: status.into(),
            image_tags: SKOALA.worker.image_tag_keys[..3]
                .iter()
                .chain(SKOALA.control_plane.image_tag_keys)
                .map(|k| (k.to_string(), tag.to_string()))
                .collect(),
        }
    }

    fn cluster(name: &str, connected: bool, r: Option<ReleaseState>) -> ClusterRelease {
        ClusterRelease {
            cluster_id: format!("uid-{name}"),
            name: name.into(),
            connected,
            release: r,
        }
    }

    fn report(cp: ClusterRelease, workers: &[ClusterRelease]) -> SkewReport {
        skew(
            &cp,
            SKOALA.control_plane.image_tag_keys,
            workers,
            SKOALA.worker.image_tag_keys,
        )
    }

    #[test]
    fn one_version_everywhere_is_clean() {
        let cp = cluster("cp", true, Some(release("0.19.2", "deployed", "v0.19.2")));
        let w = [cluster(
            "a",
            true,
            Some(release("0.19.2", "deployed", "v0.19.2")),
        )];
        assert!(report(cp, &w).is_clean());
    }

    #[test]
    fn each_kind_of_skew_is_named() {
        let cp = cluster("cp", true, Some(release("0.19.2", "deployed", "v0.19.2")));
        let workers = [
            cluster(
                "behind",
                true,
                Some(release("0.19.0", "deployed", "v0.19.0")),
            ),
            cluster("failed", true, Some(release("0.19.2", "failed", "v0.19.2"))),
            cluster("tags", true, Some(release("0.19.2", "deployed", "v0.19.1"))),
            cluster("none", true, None),
            cluster(
                "offline-behind",
                false,
                Some(release("0.19.0", "deployed", "v0.19.0")),
            ),
            cluster(
                "offline-current",
                false,
                Some(release("0.19.2", "deployed", "v0.19.2")),
            ),
        ];
        let r = report(cp, &workers);
        let by_name: BTreeMap<&str, &Vec<SkewReason>> = r
            .clusters
            .iter()
            .map(|s| (s.name.as_str(), &s.reasons))
            .collect();
        assert_eq!(by_name.len(), 5, "{r:?}");
        assert!(matches!(by_name["behind"][0], SkewReason::Version { .. }));
        assert_eq!(
            by_name["failed"][0],
            SkewReason::Status {
                status: "failed".into()
            }
        );
        assert!(matches!(by_name["tags"][0], SkewReason::ImageTag { .. }));
        assert_eq!(by_name["tags"].len(), 3, "one reason per mismatched tag");
        assert_eq!(by_name["none"], &vec![SkewReason::Missing]);
        assert_eq!(by_name["offline-behind"].last(), Some(&SkewReason::Offline));
        assert!(
            !by_name.contains_key("offline-current"),
            "offline but current is not skew"
        );
    }

    #[test]
    fn an_empty_tag_is_the_charts_default_not_skew() {
        let cp = cluster("cp", true, Some(release("0.19.0", "deployed", "")));
        let w = [cluster("a", true, Some(release("0.19.0", "deployed", "")))];
        assert!(report(cp, &w).is_clean());
    }

    #[test]
    fn a_pending_control_plane_is_skew_too() {
        let cp = cluster(
            "cp",
            true,
            Some(release("0.19.2", "pending-upgrade", "v0.19.2")),
        );
        let r = report(cp, &[]);
        assert_eq!(
            r.clusters[0].reasons,
            vec![SkewReason::Status {
                status: "pending-upgrade".into()
            }]
        );
    }
}
