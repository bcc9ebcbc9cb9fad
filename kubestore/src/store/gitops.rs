//! Plans as objects (design §4.4–§4.5): what the leader's GitOps reconciler reads of every
//! `UpgradePlan` in the namespace, and the status it writes about objects the coordinator did
//! not create. Plain records out, so no kube type reaches the orchestrator.

use std::collections::BTreeMap;

use kube::api::{Api, ListParams, Patch, PatchParams};
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
    /// `metadata.resourceVersion`, the precondition of a finalizer change.
    pub resource_version: String,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
    /// Every annotation, the verbs' included.
    pub annotations: BTreeMap<String, String>,
    /// The plan document it holds, as `skoalactl plan apply -f` would send it, or why it holds
    /// none (a field the plan crate does not know, a wrong type).
    pub document: Result<String, String>,
    /// The `Accepted` condition the leader wrote, if any.
    pub verdict: Option<Verdict>,
    /// `status.control`: the control annotations the leader handled last.
    pub observed: Observed,
}

/// The `Accepted` condition of an object, as last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)` accepted, `Some(false)` refused, `None` not decided yet (queued).
    pub accepted: Option<bool>,
    /// Its reason (`Queued`, `InvalidSpec`, …).
    pub reason: String,
    /// The `metadata.generation` it judged: a refusal is not retried until the spec moves
    /// past it.
    pub generation: Option<i64>,
    /// When it was written.
    pub at: jiff::Timestamp,
}

/// What the leader decided about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Accepted: it is a stored plan now.
    Accepted,
    /// Waiting for the active plan to finish (design §4.5, *Busy*).
    Queued {
        /// The active plan.
        behind: String,
    },
    /// Not accepted, and why.
    Refused(Refusal),
}

/// Why an object was not accepted: `Accepted=False` with this reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The condition's reason.
    pub reason: RefusalReason,
    /// For humans: the same text `skoalactl plan apply` would print.
    pub message: String,
}

/// The `reason` of an `Accepted=False` condition (design §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The document does not parse or validate, or an annotation read at acceptance is
    /// malformed.
    InvalidSpec,
    /// The selector matches no cluster.
    NothingSelected,
    /// The fleet is skewed and the plan is not forced.
    Skewed,
    /// The chart repository does not answer, or has no chart at the version.
    ChartsUnavailable,
    /// The coordinator has no control plane to upgrade first.
    NoControlPlane,
    /// A plan of that name was accepted before: names are never reused.
    NameReused,
    /// Refused for another reason; the message says which.
    Refused,
}

impl RefusalReason {
    /// Every reason.
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::InvalidSpec,
        RefusalReason::NothingSelected,
        RefusalReason::Skewed,
        RefusalReason::ChartsUnavailable,
        RefusalReason::NoControlPlane,
        RefusalReason::NameReused,
        RefusalReason::Refused,
    ];

    /// As written in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::InvalidSpec => "InvalidSpec",
            RefusalReason::NothingSelected => "NothingSelected",
            RefusalReason::Skewed => "Skewed",
            RefusalReason::ChartsUnavailable => "ChartsUnavailable",
            RefusalReason::NoControlPlane => "NoControlPlane",
            RefusalReason::NameReused => "NameReused",
            RefusalReason::Refused => "Refused",
        }
    }

    /// The reason a condition read back names, if it is one of these.
    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    /// Whether the refusal depends on something outside the plan (the chart repository, the
    /// coordinator's helm and control plane), so the same spec is worth trying again later.
    pub fn retried(self) -> bool {
        matches!(
            self,
            RefusalReason::ChartsUnavailable | RefusalReason::NoControlPlane
        )
    }
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
    let verdict = status
        .conditions
        .iter()
        .find(|c| c.type_ == PlanCondition::Accepted)
        .map(|c| Verdict {
            accepted: match c.status {
                ConditionStatus::True => Some(true),
                ConditionStatus::False => Some(false),
                ConditionStatus::Unknown => None,
            },
            reason: c.reason.clone(),
            generation: c.observed_generation,
            at: c.last_transition_time,
        });
    let control = status.control.unwrap_or_default();
    Some(PlanObject {
        generation: object.metadata.generation.unwrap_or_default(),
        deleting: object.metadata.deletion_timestamp.is_some(),
        resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
        finalizers: object.metadata.finalizers.clone().unwrap_or_default(),
        annotations: object.metadata.annotations.clone().unwrap_or_default(),
        document: crd::document(&object)
            .map(|d| d.to_yaml())
            .map_err(|e| format!("invalid plan document: {e}")),
        verdict,
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

/// Writes the `Accepted` condition for `generation` of plan `name`.
pub(super) async fn judge(
    shared: &Shared,
    name: &str,
    generation: i64,
    judgement: &Judgement,
) -> Result<(), StoreError> {
    let (status, reason, message) = match judgement {
        Judgement::Accepted => (
            ConditionStatus::True,
            "Accepted",
            "accepted; the rollout is in status.phase".to_string(),
        ),
        Judgement::Queued { behind } => (
            ConditionStatus::Unknown,
            "Queued",
            format!("waiting for plan {behind} to finish; one plan at a time"),
        ),
        Judgement::Refused(r) => (ConditionStatus::False, r.reason.as_str(), r.message.clone()),
    };
    let condition = json!({
        "type": PlanCondition::Accepted,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": jiff::Timestamp::now(),
        "reason": reason,
        "message": cut(&message, 1024),
    });
    let patch = json!({ "status": {
        "observedGeneration": generation,
        "conditions": [condition],
    }});
    shared.patch(status_key(name), Class::Durable, patch).await
}

/// The finalizer on a plan's object while its rollout can still start or finish work
/// (design §4.5): deleting the object then aborts the plan, and the object goes once nothing
/// is in flight.
pub const IN_FLIGHT_FINALIZER: &str = "fleet.skoala.io/in-flight";

/// Adds or removes [`IN_FLIGHT_FINALIZER`] on `object`, keeping every other finalizer; the
/// object's `resourceVersion` is the precondition, so a finalizer another controller added
/// meanwhile is never lost (a conflict is an error: the caller reads again).
pub(super) async fn hold(
    shared: &Shared,
    object: &PlanObject,
    held: bool,
) -> Result<(), StoreError> {
    let mut finalizers: Vec<&str> = object
        .finalizers
        .iter()
        .map(String::as_str)
        .filter(|f| *f != IN_FLIGHT_FINALIZER)
        .collect();
    if held {
        finalizers.push(IN_FLIGHT_FINALIZER);
    }
    let api: Api<UpgradePlan> = Kind::UpgradePlan.api(shared.client.clone(), &shared.namespace);
    let patch = json!({ "metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.resource_version,
    }});
    api.patch(&object.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
        .map_err(|e| {
            api_error(
                format!("writing the finalizers of upgrade plan {}", object.name),
                e,
            )
        })
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

/// Why an operator's verb could not be written on its plan's object.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// Another field manager owns the annotation with another value (a GitOps tool, `kubectl
    /// annotate`): the API server refused the apply rather than take it over.
    #[error("{annotation} on upgrade plan {plan} is managed by {manager}")]
    Managed {
        /// The plan's name.
        plan: String,
        /// The annotation the verb writes.
        annotation: String,
        /// The manager the API server named.
        manager: String,
    },
    /// Reading or writing the object failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The field manager of the coordinator's own writes for operator `operator` (design §4.4).
pub fn admin_manager(operator: &str) -> String {
    format!("{ADMIN_MANAGER_PREFIX}{operator}")
}

/// What every [`admin_manager`] starts with: a conflict with another operator's verb is not a
/// conflict with git, so it is taken over.
const ADMIN_MANAGER_PREFIX: &str = "skoala-coordinator/admin/";

/// Sets `set` on plan `name`'s object with server-side apply as `manager`. The apply carries
/// every control annotation the object has now besides: a manager's apply drops the fields it
/// applied before and leaves out, and an earlier verb's annotation must stay. Another manager
/// owning one of them with another value is a conflict ([`AnnotateError::Managed`]) unless
/// `force`; another operator's earlier verb is never one. `false` when the object is gone
/// (a finished plan's, deleted): nothing is left to contradict the verb.
pub(super) async fn annotate(
    shared: &Shared,
    name: &str,
    manager: &str,
    set: &BTreeMap<String, String>,
    force: bool,
) -> Result<bool, AnnotateError> {
    let api: Api<UpgradePlan> = Kind::UpgradePlan.api(shared.client.clone(), &shared.namespace);
    let current = match api.get(name).await {
        Ok(current) => current,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(api_error(format!("reading upgrade plan {name}"), e).into()),
    };
    let mut annotations: BTreeMap<String, String> = current
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| skoala_plan::control::ANNOTATIONS.contains(&k.as_str()))
        .collect();
    annotations.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    let resource = Kind::UpgradePlan.api_resource();
    let patch = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": name, "annotations": annotations },
    });
    let apply = |force: bool| {
        let mut params = PatchParams::apply(manager);
        params.force = force;
        let api = api.clone();
        let patch = patch.clone();
        async move { api.patch(name, &params, &Patch::Apply(patch)).await }
    };
    let conflict = match apply(force).await {
        Ok(_) => return Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => e,
        Err(e) => return Err(api_error(format!("annotating upgrade plan {name}"), e).into()),
    };
    let managers = conflicting_managers(&conflict.message);
    if !managers.is_empty() && managers.iter().all(|m| m.starts_with(ADMIN_MANAGER_PREFIX)) {
        return apply(true)
            .await
            .map(|_| true)
            .map_err(|e| api_error(format!("annotating upgrade plan {name}"), e).into());
    }
    Err(AnnotateError::Managed {
        plan: name.to_string(),
        annotation: set.keys().next().cloned().unwrap_or_default(),
        manager: if managers.is_empty() {
            conflict.message
        } else {
            managers.join(", ")
        },
    })
}

/// The managers an apply conflict names: `Apply failed with 1 conflict: conflict with
/// "kubectl-annotate" using fleet.skoala.io/v1: .metadata.annotations.…`.
fn conflicting_managers(message: &str) -> Vec<String> {
    let mut out: Vec<String> = message
        .split(" with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    out.dedup();
    out
}

/// Records in `status.control` what an operator's verb already did, so the annotation it
/// wrote asks for nothing more (a resume token handled, stages approved): only the fields
/// given are written.
pub(super) async fn note(
    shared: &Shared,
    name: &str,
    observed: &Observed,
) -> Result<(), StoreError> {
    let mut control = serde_json::Map::new();
    if let Some(resume) = &observed.observed_resume {
        control.insert("observedResume".into(), json!(resume));
    }
    if let Some(through) = observed.approved_through {
        control.insert("approvedThrough".into(), json!(through));
    }
    if control.is_empty() {
        return Ok(());
    }
    let patch = json!({ "status": { "control": control } });
    shared.patch(status_key(name), Class::Durable, patch).await
}

#[cfg(test)]
mod tests {
    use super::conflicting_managers;

    #[test]
    fn an_apply_conflict_names_each_manager_once() {
        let one = "Apply failed with 1 conflict: conflict with \"kubectl-annotate\" using \
                   fleet.skoala.io/v1: .metadata.annotations.fleet.skoala.io/paused";
        assert_eq!(conflicting_managers(one), ["kubectl-annotate"]);
        let two = "Apply failed with 2 conflicts: conflicts with \"argocd-controller\":\n- \
                   .metadata.annotations.a\nconflicts with \"kubectl-client-side-apply\" using v1:\n- .b";
        assert_eq!(
            conflicting_managers(two),
            ["argocd-controller", "kubectl-client-side-apply"]
        );
        assert!(conflicting_managers("the object has been modified").is_empty());
    }
}
