//! `FleetCluster` (design §4.2): one per working cluster, named by its id. The operator owns
//! the spec (name, labels); what the coordinator learned, including every security-relevant
//! fact (certificates, revocation, token uses), is in status, which the operator role cannot
//! write.

use std::collections::BTreeMap;

use kube::core::Object;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skoala_plan::{ReleaseStatus, TargetPhase};
use skoala_support::names;

use super::schema::{self, Bounds};
use super::{AGE, Column, Condition, Definition, Writer};

/// A `FleetCluster` object.
pub type FleetCluster = Object<FleetClusterSpec, FleetClusterStatus>;

/// `spec`: who the cluster is, as the operator names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetClusterSpec {
    /// The cluster's unique name (`skoalactl cluster rename`).
    pub name: String,
    /// Its labels, which plans select on (`skoalactl cluster label`); mirrored into
    /// `metadata.labels` for `kubectl get -l`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `status`: what the coordinator learned about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetClusterStatus {
    /// The leader that wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
    /// How and when it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// When it was cut off (`skoalactl cluster revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<jiff::Timestamp>,
    /// Its certificate records, the current one first; retention drops expired ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub certificates: Vec<CertificateRecord>,
    /// The agent's own versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    /// The last inventory the agent sent (`skoala.fleet.v1.Inventory`, protobuf, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262_144), extend("format" = "byte"))]
    pub inventory: Option<String>,
    /// The `skoala` release in the cluster, from the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// A name and labels the agent was restarted with; the operator decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed: Option<Proposed>,
    /// Whether its agent is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// Its progress in the most recent plans, most recent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub plans: Vec<ClusterPlan>,
    /// `Revoked`, `IdentityProposed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition<ClusterCondition>>,
}

/// `status.registration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// When the agent first registered.
    pub registered_at: jiff::Timestamp,
    /// The join token of its last registration: registering again with it (the answer was
    /// lost) spends no use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub token_id: Option<String>,
    /// The join tokens this cluster spent a use of, once per use (joining again with a token
    /// used before spends another): a token's remaining uses are derived from these lists, so
    /// redeeming a token writes only this object (design §3.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub tokens_used: Vec<String>,
}

/// One certificate issued to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    /// Its serial number, hex.
    #[schemars(length(max = 64))]
    pub serial: String,
    /// When it was issued.
    pub issued_at: jiff::Timestamp,
    /// When it expires.
    pub not_after: jiff::Timestamp,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<jiff::Timestamp>,
    /// When a session first used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_session_at: Option<jiff::Timestamp>,
}

/// `status.agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// The agent's version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub agent_version: String,
    /// The helm it runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub helm_version: String,
}

/// `status.release`: the `skoala` release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// Its chart version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub chart_version: String,
    /// Helm's status of its current revision (`deployed`, `pending-upgrade`, ...).
    #[schemars(with = "String", length(max = 64))]
    pub status: ReleaseStatus,
    /// Its current revision.
    pub revision: i32,
}

/// `status.proposed`: an identity the agent asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Proposed {
    /// The name asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The labels asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `status.connection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// Connected or not.
    pub state: ConnectionState,
    /// Since when.
    pub since: jiff::Timestamp,
}

/// Whether a cluster's agent has a session with the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConnectionState {
    /// It has.
    Online,
    /// It has not (written only once it stayed away past the agent timeout).
    Offline,
}

/// One entry of `status.plans`: the cluster's progress in one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    /// The plan's name.
    #[schemars(length(max = 63))]
    pub plan: String,
    /// Its place in the plan's enrolment order (decides canaries and stages).
    pub order: u32,
    /// `progress.state`, spelled for the printer column and field selectors.
    pub state: TargetPhase,
    /// The plan crate's `Progress` as it serialises it; opaque for the same reason as an
    /// `UpgradePlan`'s `status.rollout`.
    #[schemars(schema_with = "schema::opaque")]
    pub progress: Value,
}

/// The condition types of a `FleetCluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClusterCondition {
    /// Its certificates no longer work.
    Revoked,
    /// Its agent proposes another name or labels.
    IdentityProposed,
}

/// Kubernetes' longest label value, which cluster labels share (`names::label`).
const LABEL_VALUE: i64 = 63;
const NAME: i64 = names::MAX_NAME_LEN as i64;
const LABELS: i64 = names::MAX_LABELS as i64;

pub(super) fn definition() -> Definition {
    let mut spec = schema::generate::<FleetClusterSpec>();
    schema::bound(
        &mut spec,
        &Bounds {
            string: NAME,
            list: 64,
            map: LABELS,
            at: &[(".labels{}", LABEL_VALUE)],
        },
    );
    let mut status = schema::generate::<FleetClusterStatus>();
    schema::bound(
        &mut status,
        &Bounds {
            string: NAME,
            list: 64,
            map: LABELS,
            at: &[(".proposed.labels{}", LABEL_VALUE)],
        },
    );
    Definition {
        spec,
        status: Some(status),
        rules: Vec::new(),
        columns: vec![
            Column("CLUSTER", "string", ".spec.name", false),
            Column("CONNECTED", "string", ".status.connection.state", false),
            Column("VERSION", "string", ".status.release.chartVersion", false),
            Column("RELEASE", "string", ".status.release.status", false),
            Column("PLAN", "string", ".status.plans[0].plan", false),
            Column("PLAN-STATE", "string", ".status.plans[0].state", false),
            Column("AGENT", "string", ".status.agent.agentVersion", true),
            Column("PROPOSED", "string", ".status.proposed.name", true),
            Column("SINCE", "date", ".status.connection.since", true),
            AGE,
        ],
    }
}
