//! The live view of connected agents, in memory only.
//!
//! Connected-or-not, last heartbeat and the latest hello are facts that change every few
//! seconds per agent and are worthless after a restart (agents reconnect and say hello again),
//! so they never touch the store. Each live session also holds the sender that closes it: a
//! cluster revoked by the operator is cut off at once, not at its next reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use skoala_proto::v1::{CoordinatorMessage, Inventory, ReleaseInventory};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// What the coordinator knows about one connected agent.
#[derive(Debug, Clone, Default)]
pub struct LiveAgent {
    /// Last message of any kind from the agent (a heartbeat, or anything that proves life).
    pub last_heartbeat_ms: i64,
    pub agent_version: String,
    pub helm_version: String,
    pub inventory: Option<Inventory>,
    /// The session's outbound stream: how the orchestrator sends tasks down to the agent.
    pub to_agent: Option<mpsc::Sender<Result<CoordinatorMessage, Status>>>,
}

/// Where to send something to a connected agent: the session (so a re-send after a
/// reconnect can tell sessions apart) and its outbound stream.
pub struct Outlet {
    pub session: u64,
    pub tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
}

struct Entry {
    session: u64,
    live: LiveAgent,
    close: Option<oneshot::Sender<Status>>,
}

/// All live sessions, keyed by cluster id.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
    /// Last heartbeat of clusters whose session ended, so `clusters` can say since when a
    /// disconnected cluster has been silent (in memory only, like every heartbeat).
    last_seen: Mutex<HashMap<String, i64>>,
    next: AtomicU64,
    /// The clusters whose live data changed since the orchestrator's fleet view last took
    /// them ([`Sessions::take_changed`]): a round redoes those, not a scan of every session.
    /// Written under [`Sessions::inner`]'s lock, after it.
    changed: Mutex<HashSet<String>>,
}

/// A handle for one session: its id and the receiver that fires when it must close.
pub struct Opened {
    pub session: u64,
    pub closed: oneshot::Receiver<Status>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark(&self, cluster_id: &str) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster_id.to_string());
    }

    /// The clusters whose live data changed (a session opened, closed, reported, a release
    /// replaced) since the last call, and forgets them. **Invariant:** one reader, the
    /// orchestrator's fleet view, which takes them before it reads their data, so a change
    /// made meanwhile is in the next call.
    pub fn take_changed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Registers a new session for `cluster_id`. An older session of the same cluster (the
    /// agent reconnected before the coordinator noticed the old connection died) is closed.
    pub fn open(&self, cluster_id: &str, live: LiveAgent) -> Opened {
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let mut map = self.lock();
        let old = map.insert(
            cluster_id.to_string(),
            Entry {
                session,
                live,
                close: Some(tx),
            },
        );
        self.mark(cluster_id);
        drop(map);
        if let Some(mut old) = old
            && let Some(close) = old.close.take()
        {
            let _ = close.send(Status::aborted(
                "replaced by a newer session of the same cluster",
            ));
        }
        Opened {
            session,
            closed: rx,
        }
    }

    /// Removes the session, unless a newer one replaced it already.
    pub fn remove(&self, cluster_id: &str, session: u64) {
        let mut map = self.lock();
        if map.get(cluster_id).is_some_and(|e| e.session == session)
            && let Some(e) = map.remove(cluster_id)
        {
            self.mark(cluster_id);
            self.remember(cluster_id, &e);
        }
    }

    fn remember(&self, cluster_id: &str, e: &Entry) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster_id.to_string(), e.live.last_heartbeat_ms);
    }

    /// When a disconnected cluster was last heard from (since this coordinator started).
    pub fn last_seen(&self, cluster_id: &str) -> Option<i64> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster_id)
            .copied()
    }

    /// Records that the session `session` of `cluster_id` was heard from at `now_ms` (no-op if
    /// it was replaced). Unlike [`Sessions::update`] this marks nothing changed: the time is
    /// no part of the fleet view, and a round redoes every cluster marked, which at 10,000
    /// agents would be hundreds of heartbeats' worth each round.
    pub fn heard(&self, cluster_id: &str, session: u64, now_ms: i64) {
        if let Some(e) = self.lock().get_mut(cluster_id)
            && e.session == session
        {
            e.live.last_heartbeat_ms = now_ms;
        }
    }

    /// Updates the live data of a session (no-op if it was replaced).
    pub fn update(&self, cluster_id: &str, session: u64, f: impl FnOnce(&mut LiveAgent)) {
        if let Some(e) = self.lock().get_mut(cluster_id)
            && e.session == session
        {
            f(&mut e.live);
            self.mark(cluster_id);
        }
    }

    /// Closes the live session of `cluster_id` with `status`. Returns whether there was one.
    pub fn kick(&self, cluster_id: &str, status: Status) -> bool {
        let mut map = self.lock();
        let entry = map.remove(cluster_id);
        if entry.is_some() {
            self.mark(cluster_id);
        }
        drop(map);
        match entry {
            Some(mut e) => {
                self.remember(cluster_id, &e);
                if let Some(close) = e.close.take() {
                    let _ = close.send(status);
                }
                true
            }
            None => false,
        }
    }

    /// Closes every session (shutdown).
    pub fn kick_all(&self, status: &Status) {
        let mut map = self.lock();
        for id in map.keys() {
            self.mark(id);
        }
        let all: Vec<Entry> = map.drain().map(|(_, e)| e).collect();
        drop(map);
        for mut e in all {
            if let Some(close) = e.close.take() {
                let _ = close.send(status.clone());
            }
        }
    }

    /// The live data of one cluster, if connected.
    pub fn get(&self, cluster_id: &str) -> Option<LiveAgent> {
        self.lock().get(cluster_id).map(|e| e.live.clone())
    }

    /// `f` of one cluster's live data, if connected: for callers that need a part of it (a
    /// whole [`LiveAgent`] is a copy of its inventory, 10,000 of them a noticeable cost).
    pub fn peek<T>(&self, cluster_id: &str, f: impl FnOnce(&LiveAgent) -> T) -> Option<T> {
        self.lock().get(cluster_id).map(|e| f(&e.live))
    }

    /// The current session of `cluster_id`, if connected (and able to receive).
    pub fn session(&self, cluster_id: &str) -> Option<u64> {
        let map = self.lock();
        map.get(cluster_id)
            .filter(|e| e.live.to_agent.is_some())
            .map(|e| e.session)
    }

    /// The current session of `cluster_id` and its outbound stream, if connected.
    pub fn outlet(&self, cluster_id: &str) -> Option<Outlet> {
        let map = self.lock();
        let e = map.get(cluster_id)?;
        Some(Outlet {
            session: e.session,
            tx: e.live.to_agent.clone()?,
        })
    }

    /// Replaces one release in the live inventory of `cluster_id` (a task's `release_after`),
    /// so the orchestrator judges the result on the release as the executor left it rather
    /// than on an inventory that may lag behind.
    pub fn set_release(&self, cluster_id: &str, release: ReleaseInventory) {
        if let Some(e) = self.lock().get_mut(cluster_id) {
            let inv = e.live.inventory.get_or_insert_with(Inventory::default);
            inv.releases
                .retain(|r| !(r.release == release.release && r.namespace == release.namespace));
            inv.releases.push(release);
            self.mark(cluster_id);
        }
    }

    /// How many agents are connected.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_session_replaces_and_closes_the_older() {
        let s = Sessions::default();
        let mut first = s.open("c1", LiveAgent::default());
        let second = s.open("c1", LiveAgent::default());
        assert!(first.closed.try_recv().is_ok(), "old session told to close");
        s.remove("c1", first.session);
        assert_eq!(s.connected(), 1, "removing the old one keeps the new one");
        assert!(s.kick("c1", Status::permission_denied("revoked")));
        assert_eq!(s.connected(), 0);
        assert!(
            s.last_seen("c1").is_some(),
            "a kicked cluster is remembered"
        );
        drop(second);
    }

    #[test]
    fn a_heartbeat_is_recorded_without_marking_the_cluster_changed_for_the_fleet_view() {
        let s = Sessions::default();
        let opened = s.open("c1", LiveAgent::default());
        assert!(
            s.take_changed().contains("c1"),
            "a session opened is a change"
        );
        s.heard("c1", opened.session, 42);
        assert!(
            s.take_changed().is_empty(),
            "a heartbeat changes nothing the view reads"
        );
        assert_eq!(s.peek("c1", |l| l.last_heartbeat_ms), Some(42));
        s.update("c1", opened.session, |l| l.helm_version = "v3.17.0".into());
        assert!(s.take_changed().contains("c1"), "an update does");
        assert!(s.take_changed().is_empty(), "and is taken once");
        s.remove("c1", opened.session);
        assert!(s.take_changed().contains("c1"), "so is a session closing");
    }
}
