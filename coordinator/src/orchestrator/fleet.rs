//! The fleet as the rollout sees it: each working cluster's `skoala-init` from its live session
//! (or, when offline, the last inventory it reported, from the store), and the control plane's
//! `skoala` from the coordinator's own watch. The same snapshot answers `skoalactl skew`.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use prost::Message;
use skoala_plan::profile::{ReleaseProfile, SKOALA};
use skoala_plan::{ClusterRelease, FleetView, ReleaseState, SkewReport, WorkerView};
use skoala_proto::v1::{Inventory, ReleaseInventory};

use crate::context::Context;
use crate::store::{Store, StoreError};

/// The id the control plane has in plans and events.
pub const CONTROL_PLANE: &str = "control-plane";

/// A fleet view plus the names of its clusters (events and statuses show names).
pub struct Snapshot {
    pub view: FleetView,
    pub names: HashMap<String, String>,
}

impl Snapshot {
    pub fn name_of(&self, id: &str) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    pub fn connected(&self, id: &str) -> bool {
        if id == CONTROL_PLANE {
            return self.view.control_plane.connected;
        }
        self.view
            .workers
            .iter()
            .any(|w| w.release.cluster_id == id && w.release.connected)
    }

    /// The ids of every connected cluster (the control plane's too): one pass, for callers
    /// that ask about many clusters ([`Snapshot::connected`] scans the fleet per call).
    pub fn connected_ids(&self) -> HashSet<&str> {
        let workers = self
            .view
            .workers
            .iter()
            .filter(|w| w.release.connected)
            .map(|w| w.release.cluster_id.as_str());
        let cp = self.view.control_plane.connected.then_some(CONTROL_PLANE);
        workers.chain(cp).collect()
    }

    /// Invariant 3 over this snapshot.
    pub fn skew(&self) -> SkewReport {
        let workers: Vec<ClusterRelease> = self
            .view
            .workers
            .iter()
            .map(|w| w.release.clone())
            .collect();
        skoala_plan::skew(
            &self.view.control_plane,
            SKOALA.control_plane.image_tag_keys,
            &workers,
            SKOALA.worker.image_tag_keys,
        )
    }
}

fn release_state(releases: &[ReleaseInventory], profile: &ReleaseProfile) -> Option<ReleaseState> {
    releases
        .iter()
        .find(|r| r.release == profile.release && r.namespace == profile.namespace)
        .map(|r| ReleaseState {
            chart_version: r.chart_version.clone(),
            status: r.status.clone(),
            image_tags: r
                .image_tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
}

/// Takes a snapshot of the fleet at `now`.
pub async fn snapshot<S: Store>(
    ctx: &Context<S>,
    now: Timestamp,
    expected: SignedDuration,
) -> Result<Snapshot, StoreError> {
    let mut names = HashMap::new();
    let mut workers = Vec::new();
    for c in ctx.store.clusters().await? {
        if c.revoked_unix.is_some() {
            continue;
        }
        let live = ctx.sessions.get(&c.id);
        let inventory = match live.as_ref().and_then(|l| l.inventory.clone()) {
            Some(inv) => inv,
            None => Inventory::decode(c.state.inventory.as_slice()).unwrap_or_default(),
        };
        names.insert(c.id.clone(), c.name.clone());
        workers.push(WorkerView {
            release: ClusterRelease {
                cluster_id: c.id,
                name: c.name,
                connected: live.is_some(),
                release: release_state(&inventory.releases, &SKOALA.worker),
            },
            labels: c.labels,
        });
    }
    let cp_view = ctx.control_plane.as_ref().and_then(|cp| cp.view());
    let control_plane = ClusterRelease {
        cluster_id: CONTROL_PLANE.to_string(),
        name: CONTROL_PLANE.to_string(),
        connected: cp_view.as_ref().is_some_and(|v| v.connected),
        release: cp_view
            .as_ref()
            .and_then(|v| release_state(&v.releases, &SKOALA.control_plane)),
    };
    names.insert(CONTROL_PLANE.to_string(), CONTROL_PLANE.to_string());
    Ok(Snapshot {
        view: FleetView {
            now,
            expected,
            control_plane,
            workers,
        },
        names,
    })
}
