//! Plans from `kubectl apply` and GitOps tools (design §4.4–§4.5), on the kube store: the
//! leader reads every `UpgradePlan` in its namespace and
//!
//! - accepts an object that is not a stored plan through the same path as `skoalactl plan
//!   apply` (validation, selection, skew unless `fleet.skoala.io/force: "true"`, charts), or
//!   writes why not into its status (`Accepted=False`), not retried until its spec changes
//!   (but for refusals [`RefusalReason::retried`] says depend on something else); an object waits while another plan runs
//!   (`Accepted=Unknown`, `Queued`), and is tried again when it finished;
//! - applies the control annotations of the active plan (`paused`, `resume`,
//!   `approved-stage`, `abort`, `rollback`) through the orchestrator's transitions, storing
//!   what it handled in `status.control`;
//! - keeps the finalizer `fleet.skoala.io/in-flight` on a stored plan's object while the plan
//!   can still start or finish work, and aborts the plan when its object is deleted: the
//!   object stays `Terminating` until the running upgrades ended.
//!
//! The objects are listed every [`INTERVAL`] rather than watched: one list of a handful of
//! plans is cheap, and a list also re-evaluates a pre-approval after the plan reached its
//! stage, which a watch on the object alone would not.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use skoala_kubestore::store::{
    AnnotateError, IN_FLIGHT_FINALIZER, Judgement, KubeStore, PlanObject, Refusal, RefusalReason,
    admin_manager,
};
use skoala_plan::control;
use skoala_store::StoreError;

use crate::context::Context;
use crate::orchestrator::{Error, Verb};
use crate::store::AnyStore;

/// How often the plan objects are read.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// How long a refusal that [`RefusalReason::retried`] stands before the object is tried
/// again with the same spec.
const RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// Who the audit log names for what an object asked.
const ACTOR: &str = "kubernetes";

/// Runs while the process leads: the store refuses writes once the term ended, and the
/// process exits then.
pub async fn run(ctx: Arc<Context<AnyStore>>, store: KubeStore) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Refused annotations already logged: evaluated every tick, logged once.
    let mut logged = HashSet::new();
    loop {
        tick.tick().await;
        if let Err(e) = reconcile(&ctx, &store, &mut logged).await {
            tracing::warn!(error = %e, "cannot read the UpgradePlan objects; trying again");
        }
    }
}

async fn reconcile(
    ctx: &Context<AnyStore>,
    store: &KubeStore,
    logged: &mut HashSet<(String, String)>,
) -> Result<(), StoreError> {
    let recorded = ctx.orchestrator.verbs_recorded();
    for object in store.plan_objects().await? {
        if store.is_stored_plan(&object.name) {
            if object.deleting {
                deleted(ctx, &object).await;
            } else {
                control(ctx, store, &object, recorded, logged).await;
            }
            finalize(ctx, store, &object).await;
        } else if !object.deleting {
            accept(ctx, store, &object).await;
        }
    }
    Ok(())
}

/// Deleting a plan's object aborts the plan (design §4.5): nothing new starts, running
/// upgrades finish, and the finalizer keeps the object until they did.
async fn deleted(ctx: &Context<AnyStore>, object: &PlanObject) {
    if ctx.orchestrator.running().await.as_deref() != Some(object.name.as_str()) {
        return;
    }
    match ctx.orchestrator.transition(&object.name, Verb::Abort).await {
        Ok(status) => {
            ctx.audit(
                "plan.aborted",
                "",
                ACTOR,
                format!(
                    "plan {} is now {}: its object was deleted",
                    object.name, status.phase
                ),
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(plan = %object.name, error = %e, "cannot abort the plan whose object was deleted; trying again");
        }
    }
}

/// Keeps [`IN_FLIGHT_FINALIZER`] on a stored plan's object exactly while the plan holds work.
async fn finalize(ctx: &Context<AnyStore>, store: &KubeStore, object: &PlanObject) {
    let held = object.finalizers.iter().any(|f| f == IN_FLIGHT_FINALIZER);
    // A terminating object takes no new finalizer: only taking it off applies.
    let wanted = ctx.orchestrator.holds_work(&object.name).await;
    if held == wanted || (wanted && object.deleting) {
        return;
    }
    if let Err(e) = store.hold_plan_object(object, wanted).await {
        tracing::info!(plan = %object.name, error = %e, "cannot change the plan object's finalizer; trying again");
    }
}

/// The condition reason of a refused apply (design §4.5).
fn reason(e: &Error) -> RefusalReason {
    match e {
        Error::Document(_) | Error::Invalid(_) | Error::Immutable(_) => RefusalReason::InvalidSpec,
        Error::NothingSelected => RefusalReason::NothingSelected,
        Error::Skewed { .. } => RefusalReason::Skewed,
        Error::Helm { .. } | Error::Charts(_) => RefusalReason::ChartsUnavailable,
        Error::NoControlPlane => RefusalReason::NoControlPlane,
        _ => RefusalReason::Refused,
    }
}

/// Accepts `object` as a plan, or records why not.
async fn accept(ctx: &Context<AnyStore>, store: &KubeStore, object: &PlanObject) {
    let judged = object
        .verdict
        .as_ref()
        .filter(|v| v.generation == Some(object.generation));
    if judged.is_some_and(|v| {
        v.accepted == Some(false)
            && !(RefusalReason::parse(&v.reason).is_some_and(RefusalReason::retried)
                && jiff::Timestamp::now().duration_since(v.at) >= RETRY)
    }) {
        return;
    }
    let refusal = if store.is_registered_plan(&object.name) {
        Refusal {
            reason: RefusalReason::NameReused,
            message: format!(
                "plan names are never reused: a plan named {} was accepted and deleted before; \
                 give this plan a new name",
                object.name
            ),
        }
    } else {
        let text = match &object.document {
            Ok(text) => text,
            Err(message) => {
                return refuse(store, object, RefusalReason::InvalidSpec, message.clone()).await;
            }
        };
        let force = match control::force(&object.annotations) {
            Ok(force) => force,
            Err(e) => {
                return refuse(store, object, RefusalReason::InvalidSpec, e.to_string()).await;
            }
        };
        if let Some(behind) = ctx.orchestrator.running().await {
            if judged.is_none_or(|v| v.reason != "Queued") {
                tracing::info!(plan = %object.name, %behind, "plan object queued behind the active plan");
                judge(store, object, Judgement::Queued { behind }).await;
            }
            return;
        }
        match ctx.orchestrator.apply_new(text, force).await {
            // Stored meanwhile by `skoalactl plan apply`, which created this object.
            Ok((_, false)) => return,
            Ok((status, true)) => {
                let forced = if force { " (forced)" } else { "" };
                ctx.audit(
                    "plan.applied",
                    "",
                    ACTOR,
                    format!("plan {} to {}{forced}", status.name, status.version),
                )
                .await;
                return judge(store, object, Judgement::Accepted).await;
            }
            // Busy: another apply won the race; queued. Store: tried again next time.
            Err(e @ (Error::Busy { .. } | Error::Store(_))) => {
                tracing::info!(plan = %object.name, error = %e, "plan object not applied yet");
                return;
            }
            Err(e) => Refusal {
                reason: reason(&e),
                message: e.to_string(),
            },
        }
    };
    refuse(store, object, refusal.reason, refusal.message).await;
}

async fn refuse(store: &KubeStore, object: &PlanObject, reason: RefusalReason, message: String) {
    tracing::warn!(plan = %object.name, generation = object.generation, reason = reason.as_str(), %message, "plan object refused");
    judge(
        store,
        object,
        Judgement::Refused(Refusal { reason, message }),
    )
    .await;
}

/// Writes `judgement` into the object's status; a failure is logged: a refusal not recorded
/// is judged again next time, and the rest is only shown.
async fn judge(store: &KubeStore, object: &PlanObject, judgement: Judgement) {
    if let Err(e) = store
        .judge_plan_object(&object.name, object.generation, &judgement)
        .await
    {
        tracing::warn!(plan = %object.name, error = %e, "cannot record the decision in the plan's status");
    }
}

/// Applies the control annotations of `object`, a stored plan, when it is the active one.
async fn control(
    ctx: &Context<AnyStore>,
    store: &KubeStore,
    object: &PlanObject,
    recorded: u64,
    logged: &mut HashSet<(String, String)>,
) {
    let done = match ctx
        .orchestrator
        .control(
            &object.name,
            &object.annotations,
            &object.observed,
            recorded,
        )
        .await
    {
        Ok(Some(done)) => done,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(plan = %object.name, error = %e, "cannot apply the plan's annotations; trying again");
            return;
        }
    };
    for kind in &done.applied {
        ctx.audit(
            kind,
            "",
            ACTOR,
            format!("plan {} by its annotations", object.name),
        )
        .await;
    }
    for refused in done.refused {
        if logged.insert((object.name.clone(), refused.clone())) {
            tracing::warn!(plan = %object.name, %refused, "plan annotation refused");
        }
    }
    // Only what this pass handled: the rest may have been written since the object was read,
    // by an operator's verb (`record_verb`).
    let handled = control::Observed {
        observed_resume: done
            .observed
            .observed_resume
            .filter(|r| object.observed.observed_resume.as_ref() != Some(r)),
        approved_through: done
            .observed
            .approved_through
            .filter(|a| object.observed.approved_through != Some(*a)),
    };
    if let Err(e) = store.note_plan_control(&object.name, &handled).await {
        tracing::warn!(plan = %object.name, error = %e, "cannot store the handled annotations");
    }
}

/// Writes operator `operator`'s verb on plan `name`'s object before it takes effect (design
/// §4.4): the annotation that asks for what the verb does, applied with the operator's own
/// field manager, and in `status.control` what the verb handled, so the reconciler asks for
/// nothing more. `approved` is the stage an approval approves. Without `force`, an annotation
/// owned by another manager (git's) refuses the verb.
pub async fn record_verb(
    store: &KubeStore,
    name: &str,
    operator: &str,
    verb: Verb,
    approved: Option<u32>,
    force: bool,
) -> Result<(), Error> {
    let mut set = BTreeMap::new();
    let mut handled = control::Observed::default();
    let what = match verb {
        Verb::Pause => {
            set.insert(control::PAUSED.to_string(), "true".to_string());
            "pause"
        }
        Verb::Resume => {
            // A resume acknowledges the failures so far: a new token, handled here.
            let token = jiff::Timestamp::now().to_string();
            set.insert(control::PAUSED.to_string(), "false".to_string());
            set.insert(control::RESUME.to_string(), token.clone());
            handled.observed_resume = Some(token);
            "pause"
        }
        Verb::Approve => {
            let stage = approved.unwrap_or_default();
            set.insert(control::APPROVED_STAGE.to_string(), stage.to_string());
            handled.approved_through = Some(stage);
            "approval"
        }
        Verb::Abort => {
            set.insert(control::ABORT.to_string(), "true".to_string());
            "abort"
        }
        Verb::Rollback => {
            set.insert(control::ROLLBACK.to_string(), "true".to_string());
            "rollback"
        }
    };
    let manager = admin_manager(operator);
    let written = store
        .annotate_plan(name, &manager, &set, force)
        .await
        .map_err(|e| match e {
            AnnotateError::Managed { manager, .. } => Error::Managed { what, manager },
            AnnotateError::Store(e) => Error::Store(e),
        })?;
    if written {
        store.note_plan_control(name, &handled).await?;
    }
    Ok(())
}
