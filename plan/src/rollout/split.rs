//! A rollout as a head and one entry per worker, so a store can keep each part in its own
//! object (design `kube-store.md` §3.3): the head in the plan's status, each worker's entry in
//! its cluster's. No object then grows with the fleet.
//!
//! [`Rollout::join`] takes back what a store holds after any crash: the head written before the
//! targets of the same round, and any subset of those targets. It never fails; what is missing
//! is what a round had not yet stored, and the rollout then redoes it (see
//! [`RolloutHead::next_order`]).

use serde::{Deserialize, Serialize};

use super::{Phase, Progress, Rollout};

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
    /// manual`), appending the missing clusters as pending.
    pub fn join(head: RolloutHead, mut targets: Vec<TargetEntry>) -> Rollout {
        targets.sort_by(|a, b| {
            (a.order, a.cluster_id.as_str()).cmp(&(b.order, b.cluster_id.as_str()))
        });
        let mut seen = std::collections::HashSet::new();
        targets.retain(|t| seen.insert(t.cluster_id.clone()));
        let complete = targets.len() >= head.next_order as usize;
        Rollout {
            plan: head.plan,
            phase: head.phase,
            control_plane: head.control_plane,
            workers: targets
                .into_iter()
                .map(|t| (t.cluster_id, t.progress))
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
