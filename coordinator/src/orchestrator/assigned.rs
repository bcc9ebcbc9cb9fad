//! Which operations each working cluster has been given and not finished: what its agent may
//! speak about.
//!
//! An agent certificate is held in a cluster we do not control, so its messages are claims.
//! Step progress, task results and backup uploads name an operation; the session hands them on
//! only when the operation is one of the active plan's in flight *for that cluster*. Anything
//! else — another cluster's operation, a made-up one, one already finished — is dropped before
//! it reaches the rollout, the store or `plan watch` (the session audits it).
//!
//! The set is rebuilt from the operations the store holds in flight whenever a round stored a
//! part (and when a plan is loaded or applied), so it is the persisted truth: after a
//! coordinator restart an agent may still report the operation it was running, because the
//! stored rollout has it in flight.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use skoala_plan::{InFlight, Target};

/// Operation ids in flight, by working cluster.
#[derive(Default)]
pub struct Assigned {
    by_cluster: Mutex<HashMap<String, HashSet<String>>>,
}

impl Assigned {
    /// Replaces the set with the workers' operations among `in_flight`.
    pub fn replace(&self, in_flight: impl IntoIterator<Item = InFlight>) {
        let mut next: HashMap<String, HashSet<String>> = HashMap::new();
        for op in in_flight {
            if let Target::Worker(cluster) = op.target() {
                next.entry(cluster.clone())
                    .or_default()
                    .insert(op.operation_id().to_string());
            }
        }
        *self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// Adds the workers' operations among `stored`, stored since the set was last replaced.
    pub fn add(&self, stored: &[InFlight]) {
        let mut by_cluster = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for op in stored {
            if let Target::Worker(cluster) = op.target() {
                by_cluster
                    .entry(cluster.clone())
                    .or_default()
                    .insert(op.operation_id().to_string());
            }
        }
    }

    /// Whether `operation_id` is in flight for `cluster_id`.
    pub fn holds(&self, cluster_id: &str, operation_id: &str) -> bool {
        self.by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster_id)
            .is_some_and(|ops| ops.contains(operation_id))
    }
}
