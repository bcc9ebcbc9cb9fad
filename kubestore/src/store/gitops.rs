//! Plans as objects (design §4.4–§4.5): what the leader's GitOps reconciler reads of every
//! `UpgradePlan` in the namespace, and the status it writes about objects the coordinator did
//! not create. Plain records out, so no kube type reaches the orchestrator.

use std::collections::BTreeMap;

use kube::api::{Api, ListParams};
use serde_json::json;
use skoala_plan::control::Observed;
use skoala_store::StoreError;

use super::shared::{Key, KindKey, Shared, Target, api_error};
use crate::crd::{self, ConditionStatus, Kind, PlanCondition, UpgradePlan};
use crate::write::Class;

/// An `UpgradePlan` object as the reconciler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanObject {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`: moves when the spec changes (and once when deletion starts).
    pub generation: i64,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub deleting: bool,
    /// Every annotation, the verbs' included.
    pub annotations: BTreeMap<String, String>,
    /// The plan document it holds, as `skoalactl plan apply -f` would send it, or why it holds
    /// none (a field the plan crate does not know, a wrong type).
    pub document: Result<String, String>,
    /// The generation a refusal was written for (`Accepted=False`): not retried until the
    /// spec moves past it.
    pub refused_generation: Option<i64>,
    /// `status.control`: the control annotations the leader handled last.
    pub observed: Observed,
}

/// Why an object was not accepted: `Accepted=False` with this reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A CamelCase word (`InvalidSpec`, `NameReused`, …).
    pub reason: &'static str,
    /// For humans: the same text `skoalactl plan apply` would print.
    pub message: String,
}

fn status_key(name: &str) -> Key {
    Key {
        kind: KindKey::UpgradePlan,
        name: name.to_string(),
        target: Target::Status,
    }
}

fn plan_object(object: UpgradePlan) -> Option<PlanObject> {
    let name = object.metadata.name.clone()?;
    let status = object.status.clone().unwrap_or_default();
    let refused_generation = status
        .conditions
        .iter()
        .find(|c| c.type_ == PlanCondition::Accepted && c.status == ConditionStatus::False)
        .and_then(|c| c.observed_generation);
    let control = status.control.unwrap_or_default();
    Some(PlanObject {
        generation: object.metadata.generation.unwrap_or_default(),
        deleting: object.metadata.deletion_timestamp.is_some(),
        annotations: object.metadata.annotations.clone().unwrap_or_default(),
        document: crd::document(&object)
            .map(|d| d.to_yaml())
            .map_err(|e| format!("invalid plan document: {e}")),
        refused_generation,
        observed: Observed {
            observed_resume: control.observed_resume,
            approved_through: control.approved_through,
        },
        name,
    })
}

/// Every `UpgradePlan` in the namespace, read from the API server now.
pub(super) async fn list(shared: &Shared) -> Result<Vec<PlanObject>, StoreError> {
    let api: Api<UpgradePlan> = Kind::UpgradePlan.api(shared.client.clone(), &shared.namespace);
    let objects = api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("listing upgrade plans", e))?;
    Ok(objects.items.into_iter().filter_map(plan_object).collect())
}

/// Writes `Accepted=False` for `generation` of plan `name`. Only for objects that are not
/// stored plans: a stored plan's conditions are the plan part's.
pub(super) async fn refuse(
    shared: &Shared,
    name: &str,
    generation: i64,
    refusal: &Refusal,
) -> Result<(), StoreError> {
    let condition = json!({
        "type": PlanCondition::Accepted,
        "status": ConditionStatus::False,
        "observedGeneration": generation,
        "lastTransitionTime": jiff::Timestamp::now(),
        "reason": refusal.reason,
        "message": cut(&refusal.message, 1024),
    });
    let patch = json!({ "status": {
        "observedGeneration": generation,
        "conditions": [condition],
    }});
    shared.patch(status_key(name), Class::Durable, patch).await
}

/// Stores what the leader handled of plan `name`'s control annotations (`status.control`).
pub(super) async fn observe(
    shared: &Shared,
    name: &str,
    observed: &Observed,
) -> Result<(), StoreError> {
    let patch = json!({ "status": { "control": {
        "observedResume": observed.observed_resume,
        "approvedThrough": observed.approved_through,
    }}});
    shared.patch(status_key(name), Class::Durable, patch).await
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
