//! What `kubectl get upgradeplans` shows of a plan: `status.phase`, `status.stage`,
//! `status.counts` and `status.waiting`, the printer columns of design §4.1.
//!
//! They are derived from what the store holds (the rollout head and the targets' entries), so
//! they are written along with a head when there is one, and otherwise by a [`Shows`] timer at
//! most once per [`INTERVAL`] per plan: a rollout round that changes a hundred targets changes
//! the counts a hundred times, and a display must not cost a write per target.
//!
//! **Invariant:** a display write is computed and queued on its object's lane under the plan
//! part's `writing` lock, the same lock every head write holds, and the lane sends its object's
//! writes in the order they were queued, so a display computed from an older copy is never
//! stored after one computed from a newer copy. The lock is not held while the write is in
//! flight: a round's writes would wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use skoala_plan::rollout::Progress;
use skoala_plan::{RolloutHead, TargetPhase};
use tokio::time::Instant;

use super::{State, plan_key};
use crate::crd::{ClusterPlan, Counts, UpgradePlanStatus};
use crate::store::shared::Shared;
use crate::write::Class;

/// The shortest time between two display writes of one plan that ride along nothing.
pub(super) const INTERVAL: Duration = Duration::from_secs(2);
/// Failed display writes in a row after which the timer gives up until the next change: the
/// display gates nothing, and an object someone deleted would otherwise be retried for ever.
const ATTEMPTS: u32 = 5;

/// `plan`'s display fields as a status merge patch, from `head` (the head as stored, or about
/// to be) and the entries of every cluster. A head the plan crate cannot read leaves the
/// fields it decides (phase, waiting) out, so they stay as they were; the ones the targets
/// decide are still shown. The error says why the head was not read.
pub(super) fn fields(
    plan: &str,
    head: Option<&Value>,
    clusters: &HashMap<String, Vec<ClusterPlan>>,
) -> (Value, Option<serde_json::Error>) {
    let entries = || clusters.values().flatten().filter(|e| e.plan == plan);
    let mut counts = Counts::default();
    for e in entries() {
        counts.total += 1;
        let n = match e.state {
            TargetPhase::Pending => &mut counts.pending,
            TargetPhase::Running => &mut counts.running,
            TargetPhase::Succeeded => &mut counts.succeeded,
            TargetPhase::Failed => &mut counts.failed,
            TargetPhase::RollingBack => &mut counts.rolling_back,
            TargetPhase::RolledBack => &mut counts.rolled_back,
            TargetPhase::Reverted => &mut counts.reverted,
        };
        *n += 1;
    }
    // The highest stage a target started in; a progress the plan crate cannot read started
    // nothing it could name.
    let stage = entries()
        .filter_map(|e| Progress::deserialize(&e.progress).ok())
        .filter_map(|p| p.stage)
        .max();
    let mut out = Map::new();
    out.insert("counts".into(), json!(counts));
    out.insert("stage".into(), json!(stage));
    let mut unread = None;
    match head.map(RolloutHead::deserialize) {
        None => {
            out.insert("phase".into(), Value::Null);
            out.insert("waiting".into(), Value::Null);
        }
        Some(Ok(head)) => {
            out.insert("phase".into(), json!(head.phase.as_str()));
            out.insert("waiting".into(), json!(head.phase.awaiting()));
        }
        Some(Err(e)) => unread = Some(e),
    }
    (Value::Object(out), unread)
}

/// The display fields `status` holds, as [`fields`] spells them: a leader that takes over
/// writes them again only when they differ.
pub(super) fn stored(status: &UpgradePlanStatus) -> Value {
    json!({
        "counts": status.counts,
        "stage": status.stage,
        "phase": status.phase.map(|p| p.as_str()),
        "waiting": (!status.waiting.is_empty()).then_some(&status.waiting),
    })
}

/// Per plan: what its display fields hold, and when the last write of them alone went.
#[derive(Default)]
struct Shown {
    /// The fields as last stored (by a head write or by the timer); `None`: unknown.
    written: Option<Value>,
    /// When the timer last wrote them.
    last: Option<Instant>,
    /// A timer is waiting to write them.
    timer: bool,
    /// Its head was found unreadable and that was logged; logged again once it reads.
    unread_logged: bool,
}

/// The display writes of every plan.
#[derive(Clone)]
pub(super) struct Shows {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    writing: Arc<tokio::sync::Mutex<()>>,
    plans: Arc<Mutex<HashMap<String, Shown>>>,
}

impl Shows {
    /// `stored`: each plan's display fields as loaded ([`stored`]).
    pub fn new(
        shared: Arc<Shared>,
        state: Arc<Mutex<State>>,
        writing: Arc<tokio::sync::Mutex<()>>,
        stored: HashMap<String, Value>,
    ) -> Self {
        let plans = stored
            .into_iter()
            .map(|(plan, fields)| {
                let shown = Shown {
                    written: Some(fields),
                    ..Shown::default()
                };
                (plan, shown)
            })
            .collect();
        Shows {
            shared,
            state,
            writing,
            plans: Arc::new(Mutex::new(plans)),
        }
    }

    /// The fields to write along with `plan`'s head `head`, logging once when it is
    /// unreadable.
    pub fn riding(&self, plan: &str, head: Option<&Value>) -> Value {
        let (fields, unread) = {
            let st = self.state.lock().expect("lock");
            fields(plan, head, &st.clusters)
        };
        self.note(plan, unread.as_ref());
        fields
    }

    /// `fields` were stored along with a head.
    pub fn rode(&self, plan: &str, fields: Value) {
        let mut plans = self.plans.lock().expect("lock");
        plans.entry(plan.to_string()).or_default().written = Some(fields);
    }

    /// Makes `plan`'s display follow what the store now holds: a write of its fields as soon
    /// as [`INTERVAL`] has passed since the last one, if they differ from what is shown then.
    /// Called after every write of the plan's head or targets, under the `writing` lock, so it
    /// counts nothing itself: the fields are counted over every cluster's entries, each one's
    /// progress parsed, and an orchestrator round waits for this call twice; the timer counts
    /// once per [`INTERVAL`], when it fires.
    pub fn follow(&self, plan: &str) {
        if !self.state.lock().expect("lock").plans.contains_key(plan) {
            return;
        }
        let mut plans = self.plans.lock().expect("lock");
        let shown = plans.entry(plan.to_string()).or_default();
        if shown.timer {
            return;
        }
        shown.timer = true;
        let at = shown
            .last
            .map_or_else(Instant::now, |l| (l + INTERVAL).max(Instant::now()));
        let this = self.clone();
        let plan = plan.to_string();
        tokio::spawn(async move { this.timer(plan, at).await });
    }

    /// The display fields `plan` should show now.
    fn current(&self, plan: &str) -> Value {
        let (fields, unread) = {
            let st = self.state.lock().expect("lock");
            let head = st.plans.get(plan).and_then(|p| p.head.as_ref());
            fields(plan, head, &st.clusters)
        };
        self.note(plan, unread.as_ref());
        fields
    }

    fn note(&self, plan: &str, unread: Option<&serde_json::Error>) {
        let mut plans = self.plans.lock().expect("lock");
        let shown = plans.entry(plan.to_string()).or_default();
        match unread {
            Some(e) if !shown.unread_logged => {
                shown.unread_logged = true;
                tracing::warn!(plan, error = %e, "the plan's rollout head is not one the plan crate reads; its phase is not shown");
            }
            Some(_) => {}
            None => shown.unread_logged = false,
        }
    }

    /// Writes `plan`'s display at `at`, then again every [`INTERVAL`] while it falls behind
    /// or the write failed, up to [`ATTEMPTS`] failures in a row; a deposed leader shows
    /// nothing more.
    async fn timer(self, plan: String, mut at: Instant) {
        let mut failures = 0;
        loop {
            tokio::time::sleep_until(at).await;
            let writing = self.writing.lock().await;
            let current = self.current(&plan);
            {
                let mut plans = self.plans.lock().expect("lock");
                let shown = plans.entry(plan.clone()).or_default();
                if shown.written.as_ref() == Some(&current)
                    || failures >= ATTEMPTS
                    || self.shared.check_fence().is_err()
                {
                    shown.timer = false;
                    return;
                }
            }
            // Queued under the lock, in the order it was computed, and awaited without it: the
            // object's lane keeps the order, and a round's writes do not wait for a display
            // write (the lowest class, so the last served) to come back.
            let answer = self.shared.queue(
                plan_key(&plan),
                Class::Coalesced,
                json!({ "status": current }),
            );
            drop(writing);
            let outcome = answer.await;
            let now = Instant::now();
            let mut plans = self.plans.lock().expect("lock");
            let shown = plans.entry(plan.clone()).or_default();
            shown.last = Some(now);
            match outcome {
                Ok(()) => {
                    shown.written = Some(current);
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(plan, error = %e, "cannot show the plan's progress in its status");
                }
            }
            at = now + INTERVAL;
        }
    }
}

#[cfg(test)]
mod tests {
    use skoala_plan::rollout::{Phase, Progress, TargetState};

    use super::*;

    fn entry(plan: &str, state: TargetState, stage: Option<u32>) -> ClusterPlan {
        ClusterPlan {
            plan: plan.into(),
            order: 0,
            state: TargetPhase::from(&state),
            progress: json!(Progress {
                state,
                attempts: 1,
                stage,
            }),
        }
    }

    fn head(phase: Phase) -> Value {
        json!(RolloutHead {
            plan: "p".into(),
            phase,
            control_plane: Progress {
                state: TargetState::Pending,
                attempts: 0,
                stage: None,
            },
            approved: vec![],
            failures_acknowledged: 0,
            enrolled_once: true,
            rollback_ignores_windows: false,
            rolling_back: false,
            next_order: 2,
        })
    }

    /// What a new leader loads compares equal to what it computes from the same store, so a
    /// takeover writes no display that did not change.
    #[test]
    fn the_fields_read_back_from_a_status_are_the_fields_that_were_written() {
        let clusters: HashMap<String, Vec<ClusterPlan>> = [
            (
                "w1".to_string(),
                vec![entry(
                    "p",
                    TargetState::Succeeded {
                        revision_before: None,
                    },
                    Some(1),
                )],
            ),
            (
                "w2".to_string(),
                vec![
                    entry("p", TargetState::Pending, None),
                    entry("other", TargetState::Reverted, Some(3)),
                ],
            ),
        ]
        .into();
        for phase in [
            Some(head(Phase::AwaitingApproval { stage: 2 })),
            Some(head(Phase::Workers)),
            None,
        ] {
            let (written, unread) = fields("p", phase.as_ref(), &clusters);
            assert!(unread.is_none());
            // A merge patch's `null` deletes the field.
            let mut applied = written.clone();
            applied.as_object_mut().unwrap().retain(|_, v| !v.is_null());
            let status: UpgradePlanStatus = serde_json::from_value(applied).unwrap();
            assert_eq!(stored(&status), written, "{status:?}");
        }
    }

    #[test]
    fn a_head_the_plan_crate_cannot_read_leaves_its_fields_out() {
        let (written, unread) = fields("p", Some(&json!({"phase": "later"})), &HashMap::new());
        assert!(unread.is_some());
        assert_eq!(
            written
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["counts".to_string(), "stage".to_string()])
        );
    }
}
