//! The `UpgradePlan` document as operators write it (YAML, Kubernetes style, kept in git).
//!
//! These types are the *shape* of the document only: every field an operator may omit is an
//! `Option` here, and [`crate::validate`] turns a document into a checked [`crate::Plan`] with
//! defaults filled in. Unknown fields are rejected so a typo (`maxConcurency`) is an error that
//! names the field, not a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "fleet.skoala.io/v1alpha1";
/// The only `kind`.
pub const KIND: &str = "UpgradePlan";

/// A whole plan document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradePlan {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// The plan's name and free-form labels.
    pub metadata: Metadata,
    /// What to upgrade to, where, when and how.
    pub spec: PlanSpec,
}

/// `metadata`: who the plan is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The plan's name (a DNS label): every command names the plan by it.
    pub name: String,
    /// Free-form labels, kept with the plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations, kept with the plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Accepted and not kept, so the manifest `kubectl apply -f` takes from git (which names
    /// its namespace) is also one `skoalactl plan apply -f` takes.
    #[serde(default, skip_serializing)]
    pub namespace: Namespace,
}

/// `metadata.namespace`: any string, thrown away. A plan lives where its coordinator is, and
/// two documents that differ only here are the same plan (re-applying one is not a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespace;

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|_| Namespace)
    }
}

/// `spec`: the fields `docs/plan-reference.md` lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    /// Chart version `X.Y.Z`; image tags default to `vX.Y.Z`.
    pub version: String,
    /// The chart repository. Absent: the vendor's ([`crate::validate::DEFAULT_REPOSITORY_URL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    /// `repo` (each cluster runs `helm repo add/update`) or `relay` (the coordinator fetches the
    /// chart once and streams it to agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_source: Option<String>,
    /// The default maintenance window. Absent: no window, upgrades may start at any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Further named windows, chosen per cluster by the label named in `windowLabel`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub windows: BTreeMap<String, WindowSpec>,
    /// The cluster label whose value names the window in `windows` that the cluster uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_label: Option<String>,
    /// Canaries, concurrency, failure budget, rollback. Absent: the defaults of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// `none`, `beforeWorkers` or `beforeEachWave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<String>,
    /// `auto` (offline or late-joining clusters are upgraded in their next window) or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<String>,
    /// How long one cluster's upgrade is expected to take when there is no history yet, e.g.
    /// `10m`. Used to decide whether an upgrade still fits in the open window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_duration: Option<String>,
    /// Which working clusters the plan covers. Absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<ClusterSelector>,
}

/// `spec.repository`: where the charts come from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repository {
    /// The name `helm repo add` gives it (`skoala`).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The sha256 of each chart archive (`skoala`, `skoala-init`) at the plan's version, as
    /// `sha256:<hex>` or `<hex>`: every executor refuses an archive that differs, before it
    /// changes anything. Required for a repository over plain `http://`, whose answers anyone
    /// on the path could change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

/// A maintenance window: either a cron `schedule` with a `duration`, or `days` with a
/// `startTime` and `endTime`; always in an IANA `timeZone`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    /// Five-field cron expression (minute hour day-of-month month day-of-week), e.g.
    /// `0 2 * * SAT`, in `timeZone` wall-clock time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How long the window stays open after each `schedule` occurrence, e.g. `4h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Days of the week (`Mon` … `Sun`) on which the window opens at `startTime`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// `HH:MM` wall-clock time the window opens on each of `days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// `HH:MM` wall-clock time it closes; at or before `startTime` means the next day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// IANA time zone, e.g. `Asia/Shanghai`. Defaults to `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// `spec.strategy`: how fast, and how much failure is tolerated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// How many clusters are upgraded alone first. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// How many clusters at once after the canaries: a number or a percentage (`10%`) of the
    /// selected clusters. Default 10%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<IntOrPercent>,
    /// The plan pauses when more than this many clusters have failed. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Roll a failed cluster back to its previous revision. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_on_failure: Option<bool>,
}

/// `10` or `"10%"`, as in Kubernetes' `IntOrString`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A count.
    Int(u32),
    /// A percentage such as `10%` (checked by [`crate::validate`]).
    Str(String),
}

/// `spec.clusters`: which working clusters the plan covers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSelector {
    /// Only clusters carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Explicit cluster names (or ids); combined with `matchLabels` by AND when both are given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl UpgradePlan {
    /// A document with the given name and version and everything else left to defaults.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        UpgradePlan {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec: PlanSpec {
                version: version.into(),
                ..PlanSpec::default()
            },
        }
    }

    /// Parses YAML (or JSON, which is YAML). Only the document's *shape* is checked here;
    /// call [`crate::validate`] for the meaning.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// The document as YAML, omitting fields left to defaults.
    pub fn to_yaml(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        serde_yaml::to_string(self).unwrap_or_default()
    }
}
