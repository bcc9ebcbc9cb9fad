//! `UpgradePlan` (design §4.1): spec is the plan document's own [`PlanSpec`], status is what
//! the coordinator decided about it.

use std::collections::BTreeMap;

use kube::core::Object;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skoala_plan::PhaseKind;
use skoala_plan::UpgradePlan as PlanDocument;
use skoala_plan::document::PlanSpec;

use super::schema::{self, Bounds};
use super::{AGE, Column, Condition, Definition, Writer, rule};

/// An `UpgradePlan` object, its spec as the API server stored it. Not `PlanSpec`: the schema
/// keeps unknown fields so a typo reaches [`document`], and a typed spec would make reading
/// (or listing, or watching) *every* plan fail on one plan's typo.
pub type UpgradePlan = Object<Value, UpgradePlanStatus>;

/// Annotation prefixes that belong to tools, not to the plan: the coordinator's own verbs and
/// what kubectl and GitOps tools record about their apply.
const FOREIGN_ANNOTATIONS: [&str; 3] = [
    "fleet.skoala.io/",
    "kubectl.kubernetes.io/",
    "argocd.argoproj.io/",
];

/// The plan document an object holds, parsed by the plan crate's own parser, exactly as
/// `skoalactl plan apply -f` parses a file: a field the plan crate does not know is refused
/// naming it. The document is `{apiVersion, kind, metadata: {name, labels, annotations
/// without the tools' ones}, spec}` (design §4.1).
pub fn document(object: &UpgradePlan) -> Result<PlanDocument, serde_yaml::Error> {
    let meta = &object.metadata;
    let mut metadata = serde_json::json!({ "name": meta.name });
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = serde_json::json!(labels);
    }
    let annotations: BTreeMap<&String, &String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| {
            !FOREIGN_ANNOTATIONS.iter().any(|p| key.starts_with(p))
                && !key
                    .split_once('/')
                    .is_some_and(|(p, _)| p.ends_with(".fluxcd.io"))
        })
        .collect();
    if !annotations.is_empty() {
        metadata["annotations"] = serde_json::json!(annotations);
    }
    let document = serde_json::json!({
        "apiVersion": skoala_plan::document::API_VERSION,
        "kind": skoala_plan::document::KIND,
        "metadata": metadata,
        "spec": object.spec,
    });
    // JSON is YAML: one parser for both paths.
    PlanDocument::from_yaml(&document.to_string())
}

/// `status` of an `UpgradePlan`, written only by the leader, only through `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePlanStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The leader that wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
    /// Set once, when the plan is accepted; from then on its spec cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Accepted>,
    /// Whether this is the fleet's active plan.
    #[serde(default)]
    pub active: bool,
    /// The rollout's phase; absent while the plan is queued or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "phase_name")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<PhaseKind>,
    /// Why the plan is paused, degraded or failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// The highest stage started (0 = the canaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// How many selected clusters are in each state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// What the plan waits for (windows, approval), in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub waiting: String,
    /// The most recent failures, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub failures: Vec<Failure>,
    /// Running sums of the upgrades this plan finished, for the expected duration of the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// What the leader has done about the plan's control annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// The rollout's head as the plan crate serialises it. Opaque to the schema: a field the
    /// plan crate adds must not be pruned by a CRD that was not updated yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::opaque")]
    pub rollout: Option<Value>,
    /// `Accepted`, `Reconciling`, `Stalled`, `Ready` (kstatus), and the coordinator's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition<PlanCondition>>,
}

/// `status.accepted`: when the plan was accepted, and which generation of its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The `metadata.generation` accepted.
    pub generation: i64,
    /// When.
    pub at: jiff::Timestamp,
}

/// `status.counts`: the selected clusters by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Every selected cluster.
    pub total: u32,
    /// Not started yet.
    pub pending: u32,
    /// Not connected.
    pub offline: u32,
    /// Upgrading now.
    pub running: u32,
    /// On the target version.
    pub succeeded: u32,
    /// Failed, not rolled back.
    pub failed: u32,
    /// Returning to their previous revision after a failure.
    pub rolling_back: u32,
    /// Failed, then rolled back.
    pub rolled_back: u32,
    /// Returned to their previous revision by `plan rollback`.
    pub reverted: u32,
}

/// One entry of `status.failures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The cluster's id.
    #[schemars(length(max = 63))]
    pub cluster: String,
    /// The cluster's name.
    #[schemars(length(max = 253))]
    pub name: String,
    /// The upgrade step that failed.
    #[schemars(length(max = 63))]
    pub step: String,
    /// What went wrong, cut at 1 KiB.
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// `status.history`: the sums behind the mean upgrade duration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Upgrades finished.
    pub upgrades: u64,
    /// Their total duration in milliseconds.
    pub upgrade_millis: u64,
}

/// `status.control`: which control annotations the leader has handled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// The last `fleet.skoala.io/resume` value acted on (an edge, not a level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub observed_resume: Option<String>,
    /// Every stage up to this one is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_through: Option<u32>,
}

/// The condition types of an `UpgradePlan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlanCondition {
    /// The coordinator checked the spec: `True` accepted, `False` refused (the reason says
    /// why), `Unknown` queued or still checking.
    Accepted,
    /// kstatus: the plan can still start work.
    Reconciling,
    /// kstatus: the plan needs a human (paused, awaiting approval, failed, refused).
    Stalled,
    /// kstatus: succeeded.
    Ready,
    /// The spec of an accepted plan was changed; the coordinator ignores the change.
    SpecChangeIgnored,
    /// A control annotation asked for something the plan's phase does not allow.
    VerbRefused,
}

/// `status.phase` as [`PhaseKind::as_str`] spells it, the name every other surface uses.
mod phase_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use skoala_plan::PhaseKind;

    pub fn serialize<S: Serializer>(phase: &Option<PhaseKind>, s: S) -> Result<S::Ok, S::Error> {
        match phase {
            Some(p) => s.serialize_str(p.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PhaseKind>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = PhaseKind::ALL.iter().map(|p| p.as_str()).collect();
    schemars::json_schema!({"type": "string", "enum": names})
}

/// A DNS label: plan names go into operation ids (`<plan>.<cluster>.upgrade-<n>`), where a `.`
/// would break parsing them.
const NAME_RULE: &str = "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// The plan crate's check of `metadata.name`, in its words.
const NAME_MESSAGE: &str = "metadata.name must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
/// Once accepted, a plan's spec is what the rollout runs: a change must be a new plan.
const IMMUTABLE_RULE: &str =
    "!has(oldSelf.status) || !has(oldSelf.status.accepted) || self.spec == oldSelf.spec";

pub(super) fn definition() -> Definition {
    let mut spec = schema::generate::<PlanSpec>();
    schema::int_or_string(&mut spec, ".strategy.maxConcurrency");
    schema::preserve_unknown_fields(&mut spec);
    schema::bound(
        &mut spec,
        &Bounds {
            string: 256,
            list: 64,
            map: 64,
            at: &[
                // An explicit list of every cluster of a large fleet; cluster names and ids are
                // DNS labels, but a name may also be a DNS subdomain.
                (".clusters.names", 20_000),
                (".clusters.names[]", 253),
                (".repository.url", 2048),
                (".window.days", 7),
                (".windows{}.days", 7),
                (".repository.digests", 8),
            ],
        },
    );
    let mut status = schema::generate::<UpgradePlanStatus>();
    schema::bound(
        &mut status,
        &Bounds {
            string: 256,
            list: 64,
            map: 64,
            at: &[],
        },
    );
    let mut immutable = rule(
        IMMUTABLE_RULE,
        &format!("plan {}", skoala_plan::IMMUTABLE_PLAN),
    );
    immutable.message_expression = Some(format!(
        "'plan ' + self.metadata.name + ' {}'",
        skoala_plan::IMMUTABLE_PLAN
    ));
    Definition {
        spec,
        status: Some(status),
        rules: vec![rule(NAME_RULE, NAME_MESSAGE), immutable],
        columns: vec![
            Column("VERSION", "string", ".spec.version", false),
            Column("PHASE", "string", ".status.phase", false),
            Column("STAGE", "integer", ".status.stage", false),
            Column("SUCCEEDED", "integer", ".status.counts.succeeded", false),
            Column("FAILED", "integer", ".status.counts.failed", false),
            Column("TOTAL", "integer", ".status.counts.total", false),
            Column("ACTIVE", "boolean", ".status.active", true),
            Column(
                "ACCEPTED",
                "string",
                ".status.conditions[?(@.type==\"Accepted\")].status",
                true,
            ),
            Column("WAITING", "string", ".status.waiting", true),
            AGE,
        ],
    }
}
