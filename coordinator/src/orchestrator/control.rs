//! The operator's verbs as annotations on a plan's object (design §4.4): what
//! `skoala_plan::control::requested` asks of the active plan, applied through the same
//! transitions as `skoalactl`'s verbs, so both produce the same events.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use skoala_plan::control::{self, Observed};
use skoala_plan::{PauseOrigin, Phase};

use super::{Orchestrator, Result, status};
use skoala_store::{PlanEventRecord, Store};

/// What the annotations did to the active plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Controlled {
    /// The events of the verbs applied (`plan.paused`, …), in order.
    pub applied: Vec<String>,
    /// Annotations that asked for nothing, and why.
    pub refused: Vec<String>,
    /// What to store as handled (`status.control`).
    pub observed: Observed,
}

/// The event kind and message of a verb asked for by an annotation.
fn event(verb: &control::Verb) -> (&'static str, String) {
    match verb {
        control::Verb::Pause { reason } => ("plan.paused", reason.clone()),
        control::Verb::Unpause => (
            "plan.resumed",
            format!("resumed: {} lifted", control::PAUSED),
        ),
        control::Verb::Resume { nonce } => (
            "plan.resumed",
            format!("resumed by {} {nonce:?}", control::RESUME),
        ),
        control::Verb::Approve { through } => (
            "plan.approved",
            format!(
                "stages up to {through} approved by {}",
                control::APPROVED_STAGE
            ),
        ),
        control::Verb::PreApprove { through } => (
            "plan.preapproved",
            format!(
                "stages up to {through} approved in advance by {}",
                control::APPROVED_STAGE
            ),
        ),
        control::Verb::Abort => (
            "plan.aborted",
            "aborted; running upgrades finish, nothing new starts".into(),
        ),
        control::Verb::Rollback => (
            "plan.rollback",
            "rolling back: workers first, then the control plane".into(),
        ),
    }
}

impl<S: Store> Orchestrator<S> {
    /// Whether plan `name` can still start or finish work: the active plan, not finished or
    /// with operations in flight. Its object must not go away meanwhile.
    pub async fn holds_work(&self, name: &str) -> bool {
        let st = self.state.lock().await;
        st.active.as_ref().is_some_and(|a| {
            a.plan.name == name
                && (!a.rollout.phase.is_finished() || !a.rollout.in_flight().is_empty())
        })
    }

    /// The active plan while it is not finished: another plan waits for it.
    pub async fn running(&self) -> Option<String> {
        let st = self.state.lock().await;
        st.active
            .as_ref()
            .filter(|a| !a.rollout.phase.is_finished())
            .map(|a| a.plan.name.clone())
    }

    /// How many operators' verbs were recorded on their plans' objects so far: read before
    /// reading the objects, and handed to [`Orchestrator::control`].
    pub fn verbs_recorded(&self) -> u64 {
        self.verbs_recorded.load(Ordering::SeqCst)
    }

    /// Applies what `annotations` ask of plan `name` when it is the active plan, given what
    /// was handled before (`observed`); `None` when it is not the active plan, or when an
    /// operator's verb was recorded since the object was read (`recorded`, from
    /// [`Orchestrator::verbs_recorded`]): its annotations are older than the verb, and would
    /// undo it. The verbs take effect once stored with their events, as `skoalactl`'s do;
    /// evaluating again after they did asks for nothing, so this may run as often as the
    /// caller likes.
    pub async fn control(
        &self,
        name: &str,
        annotations: &BTreeMap<String, String>,
        observed: &Observed,
        recorded: u64,
    ) -> Result<Option<Controlled>> {
        let mut st = self.state.lock().await;
        if self.verbs_recorded() != recorded {
            return Ok(None);
        }
        let Some(active) = st.active.as_mut().filter(|a| a.plan.name == name) else {
            return Ok(None);
        };
        let mut requested = control::requested(annotations, &active.rollout.head(), observed);
        // An operator's pause stored on SQLite, or before verbs were written on the object,
        // has no annotation: an absent one must not lift it; an explicit `"false"` still does.
        let operator_paused = matches!(
            active.rollout.phase,
            Phase::Paused {
                origin: PauseOrigin::Operator,
                ..
            }
        );
        if operator_paused && !annotations.contains_key(control::PAUSED) {
            requested.verbs.retain(|v| *v != control::Verb::Unpause);
        }
        let mut out = Controlled {
            refused: requested.refused.iter().map(ToString::to_string).collect(),
            observed: requested.observed,
            applied: Vec::new(),
        };
        if requested.verbs.is_empty() {
            return Ok(Some(out));
        }
        let mut rollout = active.rollout.clone();
        let mut events = Vec::new();
        for verb in &requested.verbs {
            // The verbs were checked on the head alone; the whole rollout may still refuse one
            // (a rollback while workers run).
            if let Err(e) = verb.apply(&mut rollout) {
                out.refused.push(format!("{}: {e}", verb.annotation()));
                continue;
            }
            let (kind, message) = event(verb);
            let (phase, _) = status::phase(&rollout.phase);
            events.push(PlanEventRecord {
                plan: name.to_string(),
                kind: kind.into(),
                state: phase.into(),
                message,
                ..Default::default()
            });
            out.applied.push(kind.to_string());
        }
        if !events.is_empty() {
            self.commit(active, rollout, events).await?;
            tracing::info!(plan = name, verbs = ?out.applied, "plan annotations applied");
            drop(st);
            self.poke();
        }
        Ok(Some(out))
    }
}
