//! A rollout as a head and one entry per worker, so a store can keep each part in its own
//! object (design `kube-store.md` §3.3): the head in the plan's status, each worker's entry in
//! its cluster's. No object then grows with the fleet.
//!
//! [`Rollout::join`] takes back what a store holds after any crash: the head written before the
//! targets of the same round, and any subset of those targets. It never fails; what is missing
//! is what a round had not yet stored, and the rollout then redoes it (see
//! [`RolloutHead::next_order`]).
//!
//! A round's starts must not be stored before the results whose slots they take, or the stored
//! picture would show more running than `maxConcurrency`; on a store where each target is its
//! own request that is two round trips per hand-off. [`carry`] lets a start carry the result
//! it follows, so the two may land in either order: [`Rollout::join`] reads a carried result
//! in place of an entry still running the operation it ends. **Invariant:** what a new leader
//! joins never shows more running than the rollout in memory allowed, whichever subset of a
//! round's writes landed (`plan/tests/rollout.rs` checks it against random crashes).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Phase, Progress, Rollout, TargetState};
use crate::validate::{Approval, Plan};

/// Everything of a [`Rollout`] except the workers: the decisions (phase, approvals, the
/// failure budget's bookkeeping) and the control plane, which runs before any worker and so is
/// always stored before any worker entry of the same round (invariant 5).
///
/// Field names are the [`Rollout`]'s own, so the head's JSON reads like the rollout's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHead {
    pub plan: String,
    pub phase: Phase,
    pub control_plane: Progress,
    pub approved: Vec<u32>,
    pub failures_acknowledged: u32,
    pub enrolled_once: bool,
    #[serde(default)]
    pub rollback_ignores_windows: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling_back: bool,
    /// How many workers were enrolled when the head was written: the entries with an order
    /// below it are what [`Rollout::join`] expects. Fewer means a crash lost entries that
    /// were never sent anything (a newly enrolled `pending` one, or one whose start was not
    /// stored yet); the joined rollout then enrols again, which re-adds them as pending, and a
    /// start redone gets the same attempt number, hence the same operation id.
    pub next_order: u32,
}

/// One worker's progress within a plan, with its place in the enrolment order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEntry {
    pub cluster_id: String,
    /// The index in [`Rollout::workers`]: enrolment order, which decides the canaries and the
    /// waves, so the joined rollout starts clusters in the order the stored one would.
    pub order: u32,
    pub progress: Progress,
    /// Results this entry's start carries ([`carry`]); empty on every other entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carries: Vec<Carried>,
}

/// A result stored with a start rather than before it: the target whose slot the start takes,
/// the operation that ended, and the target's progress after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub cluster_id: String,
    /// The operation the result ends. It stands in only for an entry still running it: any
    /// other stored entry of that target was written after it.
    pub follows: String,
    pub progress: Progress,
}

impl Rollout {
    /// The head alone: what a store compares every round, without copying every worker.
    pub fn head(&self) -> RolloutHead {
        RolloutHead {
            plan: self.plan.clone(),
            phase: self.phase.clone(),
            control_plane: self.control_plane.clone(),
            approved: self.approved.clone(),
            failures_acknowledged: self.failures_acknowledged,
            enrolled_once: self.enrolled_once,
            rollback_ignores_windows: self.rollback_ignores_windows,
            rolling_back: self.rolling_back,
            next_order: order(self.workers.len()),
        }
    }

    /// The head and one entry per worker, `order` = the worker's index.
    pub fn split(&self) -> (RolloutHead, Vec<TargetEntry>) {
        let targets = (0..self.workers.len())
            .filter_map(|i| self.entry(i))
            .collect();
        (self.head(), targets)
    }

    /// Worker `i`'s entry as [`Rollout::split`] makes it: for a store that writes only the
    /// workers that changed.
    pub fn entry(&self, i: usize) -> Option<TargetEntry> {
        let (id, progress) = self.workers.get(i)?;
        Some(TargetEntry {
            cluster_id: id.clone(),
            order: order(i),
            progress: progress.clone(),
            carries: Vec::new(),
        })
    }

    /// The rollout `head` and `targets` were split from, whatever order the targets come in
    /// (a store lists them by cluster, not by plan).
    ///
    /// Targets are placed by `order`, ties by cluster id: after a crash, entries renumbered by
    /// a later split may be stored next to ones that were not rewritten yet, and the result
    /// must still be one deterministic order. A cluster given twice keeps its first entry in
    /// that order. When fewer entries than [`RolloutHead::next_order`] are given, the rollout
    /// is marked not enrolled, so its next step enrols again (even with `convergence:
    /// manual`), appending the missing clusters as pending. A result another entry carries
    /// replaces an entry still running the operation it ends.
    pub fn join(head: RolloutHead, mut targets: Vec<TargetEntry>) -> Rollout {
        targets.sort_by(|a, b| {
            (a.order, a.cluster_id.as_str()).cmp(&(b.order, b.cluster_id.as_str()))
        });
        let mut seen = std::collections::HashSet::new();
        targets.retain(|t| seen.insert(t.cluster_id.clone()));
        let mut carried: HashMap<String, Carried> = targets
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.carries))
            .map(|c| (c.cluster_id.clone(), c))
            .collect();
        let complete = targets.len() >= head.next_order as usize;
        Rollout {
            plan: head.plan,
            phase: head.phase,
            control_plane: head.control_plane,
            workers: targets
                .into_iter()
                .map(|t| {
                    let progress = match carried.remove(&t.cluster_id) {
                        Some(c) if t.progress.operation_id() == Some(c.follows.as_str()) => {
                            c.progress
                        }
                        _ => t.progress,
                    };
                    (t.cluster_id, progress)
                })
                .collect(),
            approved: head.approved,
            failures_acknowledged: head.failures_acknowledged,
            enrolled_once: head.enrolled_once && complete,
            rollback_ignores_windows: head.rollback_ignores_windows,
            rolling_back: head.rolling_back,
        }
    }
}

/// An index as an order: a fleet of more than `u32::MAX` workers cannot be enrolled (each is
/// a connected agent), so saturating never happens in practice and keeps `split` total.
fn order(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Lets a round's `starting` entries be stored in any order with its `settled` ones, by giving
/// each start the result of one target whose slot it takes ([`TargetEntry::carries`]).
/// `stored` is what a new leader would join for a cluster now (its own entry, or a result
/// another stored entry carries for it).
///
/// Only starts that wait for nothing but a free slot are carried: every start an upgrade, and
/// every other changed target either pending or a stored upgrade that ended, where no start
/// waits for one of those results as a whole. Then each start that lands without the result it
/// follows brings that result with it, so the stored picture runs at most what it ran before
/// plus the starts that took a free slot, as in memory. Starts that wait for more than a slot
/// (a wave after the canaries' results; under `requireApproval: beforeEachWave`, a wave after
/// the previous one's), a rollback, or a result stored so far only as carried (its own entry
/// still to write, so its slot is already free in the picture) make `carry` attach nothing and
/// return `false`: the round must then store `settled` before `starting`, as without it. With
/// fewer results than starts, the starts left carry nothing (they take slots that were free);
/// with more, the results left are carried by none.
pub fn carry<'a>(
    plan: &Plan,
    stored: impl Fn(&str) -> Option<&'a Progress>,
    settled: &[TargetEntry],
    starting: &mut [TargetEntry],
) -> bool {
    let upgrading = |p: &Progress| matches!(p.state, TargetState::Running { .. });
    if starting.is_empty() || !starting.iter().all(|t| upgrading(&t.progress)) {
        return false;
    }
    let Some(last_start) = starting.iter().map(|t| t.progress.stage).max().flatten() else {
        return false;
    };
    let mut ended = Vec::new();
    let mut first_ended = u32::MAX;
    for t in settled {
        match stored(&t.cluster_id) {
            Some(p) if upgrading(p) => {
                let (Some(stage), Some(follows)) = (p.stage, p.operation_id()) else {
                    return false;
                };
                first_ended = first_ended.min(stage);
                ended.push(Carried {
                    cluster_id: t.cluster_id.clone(),
                    follows: follows.to_string(),
                    progress: t.progress.clone(),
                });
            }
            None if t.progress.state == TargetState::Pending => {}
            Some(p)
                if p.state == TargetState::Pending && t.progress.state == TargetState::Pending => {}
            _ => return false,
        }
    }
    // The canaries' results gate every wave: no wave may carry one.
    let canary_gate = first_ended == 0 && last_start > 0;
    // `beforeEachWave`: a wave starts once the one before it ended, all of it.
    let wave_gate = plan.require_approval == Approval::BeforeEachWave && last_start > first_ended;
    if canary_gate || wave_gate {
        return false;
    }
    for (start, result) in starting.iter_mut().zip(ended) {
        start.carries = vec![result];
    }
    true
}
