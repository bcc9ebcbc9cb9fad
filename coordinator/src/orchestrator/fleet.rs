//! The fleet as the rollout sees it: each working cluster's `skoala-init` from its live session
//! (or, when offline, the last inventory it reported, from the store), and the control plane's
//! `skoala` from the coordinator's own watch. The same snapshot answers `skoalactl skew`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use prost::Message;
use skoala_plan::profile::{ReleaseProfile, SKOALA};
use skoala_plan::{ClusterRelease, FleetView, ReleaseState, SkewReport, WorkerView};
use skoala_proto::v1::{Inventory, ReleaseInventory};

use crate::control_plane::ControlPlane;
use crate::sessions::Sessions;
use skoala_store::{ReleaseSummary, Store, StoreError};

/// The id the control plane has in plans and events.
pub const CONTROL_PLANE: &str = skoala_plan::Target::CONTROL_PLANE;

/// A fleet view plus the names of its clusters (events and statuses show names).
#[derive(Clone)]
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

    /// The ids of every connected cluster (the control plane's too), in one pass.
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

/// The release `profile` names among `releases`.
fn find<'a>(
    releases: &'a [ReleaseInventory],
    profile: &ReleaseProfile,
) -> Option<&'a ReleaseInventory> {
    releases
        .iter()
        .find(|r| r.release == profile.release && r.namespace == profile.namespace)
}

/// A working cluster's `skoala-init` as its inventory shows it, for the store to show without
/// decoding the inventory.
pub fn release_summary(inventory: &Inventory) -> Option<ReleaseSummary> {
    find(&inventory.releases, &SKOALA.worker).map(|r| ReleaseSummary {
        chart_version: r.chart_version.clone(),
        status: r.status.as_str().into(),
        revision: r.revision,
    })
}

fn release_state(releases: &[ReleaseInventory], profile: &ReleaseProfile) -> Option<ReleaseState> {
    find(releases, profile).map(|r| ReleaseState {
        chart_version: r.chart_version.clone(),
        status: r.status.as_str().into(),
        image_tags: r
            .image_tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Where the fleet view is read from: the store's rows, the live sessions and the control
/// plane's own watch (`None`: this coordinator has no control-plane cluster).
pub struct Sources<'a, S> {
    pub store: &'a S,
    pub sessions: &'a Sessions,
    pub control_plane: Option<&'a ControlPlane>,
}

/// The fleet view the orchestrator keeps between rounds.
///
/// Every round that carries a result needs the fleet as it is now. Building it from scratch
/// (every stored row, every live session's inventory copied) took most of a rollout round at
/// 10,000 connected clusters, and a round follows each burst of results: a 1,000-cluster
/// rollout inside a 10,000-cluster fleet ran 9–13 % over its ideal time, against 2.5 % in a
/// fleet of 1,000 (BENCHMARKS.md). So the view is kept, and a refresh
///
/// - reads every row again only when [`Store::clusters_version`] moved (a cluster registered,
///   renamed, relabelled or revoked: rare);
/// - otherwise takes from the sessions the clusters whose session opened, closed or reported
///   since the last refresh ([`Sessions::take_changed`]), and redoes those alone: a scan of
///   every session's version cost a round at 10,000 clusters ~5 ms (BENCHMARKS.md). A cluster
///   that went offline, or has no live inventory yet, is judged on the inventory it last
///   stored, as in a full read: one row read.
///
/// **Invariant:** the only reader of [`Sessions::take_changed`] (a second would take changes
/// this one then never sees).
#[derive(Default)]
pub struct FleetCache {
    snapshot: Option<Arc<Snapshot>>,
    /// The [`Store::clusters_version`] the rows were read at.
    rows_version: u64,
    /// Cluster id → its place among the snapshot's workers.
    index: HashMap<String, usize>,
}

impl FleetCache {
    /// The fleet at `now`: refreshed as described on [`FleetCache`].
    ///
    /// The view is shared, not copied: a caller keeps it as long as it likes without holding
    /// the cache (a round through its writes, an admin read through its answer), and the next
    /// refresh copies it only if someone still does.
    pub async fn refresh<S: Store>(
        &mut self,
        src: &Sources<'_, S>,
        now: Timestamp,
        expected: SignedDuration,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let rows_version = src.store.clusters_version();
        let mut snap = match self.snapshot.take() {
            Some(kept) if rows_version == self.rows_version => {
                let mut snap = Arc::unwrap_or_clone(kept);
                if self.update(src, &mut snap).await? {
                    snap
                } else {
                    self.read_all(src, rows_version).await?
                }
            }
            _ => self.read_all(src, rows_version).await?,
        };
        snap.view.now = now;
        snap.view.expected = expected;
        snap.view.control_plane = control_plane(src);
        Ok(self.snapshot.insert(Arc::new(snap)).clone())
    }

    /// The last refresh, without refreshing: for a round that only names its events.
    pub fn last(&self) -> Option<&Snapshot> {
        self.snapshot.as_deref()
    }

    /// Every row and live session, from scratch.
    async fn read_all<S: Store>(
        &mut self,
        src: &Sources<'_, S>,
        rows_version: u64,
    ) -> Result<Snapshot, StoreError> {
        // Everything is read now: what changed before is in it.
        src.sessions.take_changed();
        let mut names = HashMap::new();
        let mut workers = Vec::new();
        let mut index = HashMap::new();
        for c in src.store.clusters().await? {
            if c.revoked_unix.is_some() {
                continue;
            }
            let (connected, release) = match live_release(src, &c.id) {
                Some(Some(release)) => (true, release),
                live => (live.is_some(), stored_release(&c.state.inventory)),
            };
            names.insert(c.id.clone(), c.name.clone());
            index.insert(c.id.clone(), workers.len());
            workers.push(WorkerView {
                release: ClusterRelease {
                    cluster_id: c.id,
                    name: c.name,
                    connected,
                    release,
                },
                labels: c.labels,
            });
        }
        names.insert(CONTROL_PLANE.to_string(), CONTROL_PLANE.to_string());
        self.rows_version = rows_version;
        self.index = index;
        Ok(Snapshot {
            view: FleetView {
                now: Timestamp::UNIX_EPOCH,
                expected: SignedDuration::ZERO,
                control_plane: control_plane(src),
                workers,
            },
            names,
        })
    }

    /// Redoes the workers whose live data changed. Returns false when a cluster's row is
    /// gone, which only a full read can reflect.
    async fn update<S: Store>(
        &mut self,
        src: &Sources<'_, S>,
        snap: &mut Snapshot,
    ) -> Result<bool, StoreError> {
        for id in src.sessions.take_changed() {
            // Not among the rows: not registered (its row would have moved the rows' version).
            let Some(&i) = self.index.get(&id) else {
                continue;
            };
            let worker = &mut snap.view.workers[i].release;
            let (connected, release) = match live_release(src, &worker.cluster_id) {
                Some(Some(release)) => (true, release),
                live => {
                    let Some(row) = src.store.cluster(worker.cluster_id.clone()).await? else {
                        return Ok(false);
                    };
                    (live.is_some(), stored_release(&row.state.inventory))
                }
            };
            worker.connected = connected;
            worker.release = release;
        }
        Ok(true)
    }
}

/// A connected cluster's release as its live inventory shows it: `None` when it is not
/// connected, `Some(None)` when it has reported no inventory yet.
fn live_release<S>(src: &Sources<'_, S>, cluster_id: &str) -> Option<Option<Option<ReleaseState>>> {
    src.sessions.peek(cluster_id, |live| {
        live.inventory
            .as_ref()
            .map(|inv| release_state(&inv.releases, &SKOALA.worker))
    })
}

/// The release of the inventory a cluster last stored (an undecodable one counts as empty).
fn stored_release(inventory: &[u8]) -> Option<ReleaseState> {
    let inventory = Inventory::decode(inventory).unwrap_or_default();
    release_state(&inventory.releases, &SKOALA.worker)
}

/// The control plane's `skoala`, from the coordinator's own watch.
fn control_plane<S>(src: &Sources<'_, S>) -> ClusterRelease {
    let cp_view = src.control_plane.and_then(|cp| cp.view());
    ClusterRelease {
        cluster_id: CONTROL_PLANE.to_string(),
        name: CONTROL_PLANE.to_string(),
        connected: cp_view.as_ref().is_some_and(|v| v.connected),
        release: cp_view
            .as_ref()
            .and_then(|v| release_state(&v.releases, &SKOALA.control_plane)),
    }
}

#[cfg(test)]
mod tests {
    use skoala_proto::v1::Inventory;

    use super::*;
    use crate::sessions::LiveAgent;
    use skoala_store::sqlite::SqliteStore;
    use skoala_store::sqlite::fixtures::{registration, token};
    use skoala_store::{ClusterState, IdentityStore};

    fn inventory(version: &str) -> Inventory {
        Inventory {
            releases: vec![ReleaseInventory {
                release: SKOALA.worker.release.into(),
                namespace: SKOALA.worker.namespace.into(),
                chart_version: version.into(),
                status: "deployed".into(),
                ..Default::default()
            }],
        }
    }

    fn live(version: Option<&str>) -> LiveAgent {
        LiveAgent {
            inventory: version.map(inventory),
            ..Default::default()
        }
    }

    /// Each worker's id, name, connected, version and labels: what the rollout reads.
    fn workers(snap: &Snapshot) -> Vec<(String, String, bool, Option<String>, String)> {
        snap.view
            .workers
            .iter()
            .map(|w| {
                let r = &w.release;
                let version = r.release.as_ref().map(|s| s.chart_version.clone());
                let labels = format!("{:?}", w.labels);
                (
                    r.cluster_id.clone(),
                    r.name.clone(),
                    r.connected,
                    version,
                    labels,
                )
            })
            .collect()
    }

    /// The kept view must always equal a view read from scratch, whatever changed in between.
    #[tokio::test]
    async fn the_kept_view_equals_a_fresh_one_after_every_kind_of_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
        let t = token(3);
        store.insert_token(t.clone()).await.expect("token");
        for (i, id) in ["c1", "c2", "c3"].iter().enumerate() {
            let r = registration(&t, id, &format!("0{i}"));
            store.register(r).await.expect("register");
            let stored = ClusterState {
                inventory: inventory("0.19.0").encode_to_vec(),
                ..Default::default()
            };
            store
                .set_cluster_state(id.to_string(), stored)
                .await
                .expect("state");
        }
        let sessions = Sessions::default();
        let src = Sources {
            store: &store,
            sessions: &sessions,
            control_plane: None,
        };
        let now = Timestamp::now();
        let mut kept = FleetCache::default();
        // Compares the kept view with a fresh one and returns the fresh one's workers.
        async fn check(
            kept: &mut FleetCache,
            src: &Sources<'_, SqliteStore>,
            now: Timestamp,
            what: &str,
        ) -> Vec<(String, String, bool, Option<String>, String)> {
            let a = workers(
                &kept
                    .refresh(src, now, SignedDuration::ZERO)
                    .await
                    .expect("kept"),
            );
            let mut fresh = FleetCache::default();
            let b = workers(
                &fresh
                    .refresh(src, now, SignedDuration::ZERO)
                    .await
                    .expect("fresh"),
            );
            assert_eq!(a, b, "after {what}");
            b
        }
        let w = check(&mut kept, &src, now, "the first read").await;
        assert!(
            w.iter().all(|w| !w.2 && w.3.as_deref() == Some("0.19.0")),
            "{w:?}"
        );

        let s1 = src.sessions.open("c1", live(Some("0.19.1")));
        let w = check(&mut kept, &src, now, "c1 connecting with an inventory").await;
        assert_eq!((w[0].2, w[0].3.as_deref()), (true, Some("0.19.1")));

        let s2 = src.sessions.open("c2", live(None));
        let w = check(&mut kept, &src, now, "c2 connecting without one").await;
        assert_eq!((w[1].2, w[1].3.as_deref()), (true, Some("0.19.0")));

        src.sessions
            .set_release("c1", inventory("0.19.2").releases[0].clone());
        let w = check(&mut kept, &src, now, "a task's release_after").await;
        assert_eq!(w[0].3.as_deref(), Some("0.19.2"));

        src.sessions.update("c2", s2.session, |l| {
            l.inventory = Some(inventory("0.19.1"))
        });
        let w = check(&mut kept, &src, now, "c2 reporting an inventory").await;
        assert_eq!(w[1].3.as_deref(), Some("0.19.1"));

        src.sessions.remove("c1", s1.session);
        let w = check(&mut kept, &src, now, "c1 leaving").await;
        assert_eq!(
            (w[0].2, w[0].3.as_deref()),
            (false, Some("0.19.0")),
            "stored inventory"
        );

        let labels = [("env".to_string(), "staging".to_string())].into();
        src.store
            .set_cluster_identity("c3".into(), "a-renamed".into(), labels)
            .await
            .expect("identity")
            .map_or(Ok(()), Err)
            .expect("the name is free");
        let w = check(&mut kept, &src, now, "c3 renamed and relabelled").await;
        assert_eq!(
            w[0].1, "a-renamed",
            "the rows' order (by name) is the store's"
        );

        src.store
            .revoke_cluster("c2".into(), 2_000)
            .await
            .expect("revoke");
        let w = check(&mut kept, &src, now, "c2 revoked").await;
        assert_eq!(w.len(), 2);
    }
}
