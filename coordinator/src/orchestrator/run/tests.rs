//! The loop without processes: a temporary SQLite store, the real session registry with
//! connected workers, a fixed control-plane view, a clock that moves only when told, and a
//! dispatcher that records what it is handed, reading the store (on a connection of its own)
//! at that very moment.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use prost::Message;
use skoala_plan::{ManualClock, Plan, Rollout};
use skoala_proto::v1::{
    Cluster, ClusterIdentity, CoordinatorMessage, Inventory, ReleaseInventory, Task, TaskOutcome,
};
use tokio::sync::mpsc;
use tonic::Status;

use super::*;
use crate::backups::Backups;
use crate::control_plane::ControlPlane;
use crate::data_dir::DataDir;
use crate::metrics::Metrics;
use crate::orchestrator::dispatch::Dispatch;
use crate::orchestrator::{Parts, Verb};
use crate::sessions::{LiveAgent, Sessions};
use skoala_plan::TargetPhase;
use skoala_store::sqlite::SqliteStore;
use skoala_store::sqlite::fixtures::{registration, token};
use skoala_store::{
    ClusterState, IdentityStore, PlanRecord, PlanStore, RolloutRecord, TargetRecord,
};

const PLAN: &str = "apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {name: p}
spec:
  version: 0.19.2
  requireApproval: none
  strategy: {canary: 0, maxConcurrency: 2}
";
const CP_UPGRADE: &str = "p.control-plane.upgrade-1";

/// One operation handed to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    target: String,
    operation_id: String,
    /// Whether the store's rollout had it in flight when it was handed over (invariant 2).
    stored_first: bool,
}

/// The fake dispatcher: every agent is reachable on its current session, the control plane
/// runs nothing; both record.
struct Recorder {
    db: PathBuf,
    sessions: Arc<Sessions>,
    sent: Mutex<Vec<Sent>>,
}

impl Recorder {
    fn record(&self, target: &str, operation_id: &str) {
        let stored_first = stored_rollout(&self.db)
            .in_flight()
            .iter()
            .any(|op| op.operation_id() == operation_id);
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sent {
                target: target.to_string(),
                operation_id: operation_id.to_string(),
                stored_first,
            });
    }

    /// What was handed over since the last call.
    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Dispatch for Recorder {
    fn session(&self, cluster: &str) -> Option<u64> {
        self.sessions.session(cluster)
    }

    fn send(&self, cluster: &str, _session: u64, task: Task) -> bool {
        self.record(cluster, &task.operation_id);
        true
    }

    fn control_plane(
        &self,
        _plan: &Plan,
        _source: skoala_upgrade::ChartSource,
        operation_id: &str,
        _rollback_to: Option<i32>,
        _inbox: &mpsc::UnboundedSender<Input>,
    ) -> bool {
        self.record(CONTROL_PLANE, operation_id);
        true
    }
}

/// The active plan's rollout as the store has it, read on a connection of its own and joined
/// as a restarted coordinator would join it.
fn stored_rollout(db: &Path) -> Rollout {
    let c = rusqlite::Connection::open(db).expect("a second connection");
    let (plan, head): (String, String) = c
        .query_row("SELECT name, head FROM plans WHERE active = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("the active plan");
    let mut st = c
        .prepare("SELECT cluster_id, ord, phase, progress FROM rollout_targets WHERE plan = ?1")
        .expect("select");
    let targets = st
        .query_map([&plan], |r| {
            let phase: String = r.get(2)?;
            Ok(TargetRecord {
                cluster_id: r.get(0)?,
                order: r.get(1)?,
                phase: TargetPhase::parse(&phase).expect("a phase"),
                progress: r.get(3)?,
            })
        })
        .expect("targets")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    crate::orchestrator::saved::joined(&plan, &RolloutRecord { head, targets }).expect("a rollout")
}

/// Makes the store refuse (or accept again) every rollout write, head or target, as a full
/// disk would.
fn refuse_rollout_writes(db: &Path, refuse: bool) {
    let c = rusqlite::Connection::open(db).expect("a second connection");
    let sql = if refuse {
        "CREATE TRIGGER refuse_head BEFORE UPDATE OF head ON plans
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
         CREATE TRIGGER refuse_new BEFORE INSERT ON rollout_targets
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
         CREATE TRIGGER refuse_changed BEFORE UPDATE ON rollout_targets
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
    } else {
        "DROP TRIGGER refuse_head; DROP TRIGGER refuse_new; DROP TRIGGER refuse_changed;"
    };
    c.execute_batch(sql).expect("trigger");
}

/// Records, in a table `written`, every part of a rollout the store writes, in order: `head`
/// or the cluster id.
fn log_rollout_writes(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("a second connection");
    c.execute_batch(
        "CREATE TABLE written (n INTEGER PRIMARY KEY AUTOINCREMENT, part TEXT NOT NULL);
         CREATE TRIGGER log_head AFTER UPDATE OF head ON plans
         BEGIN INSERT INTO written (part) VALUES ('head'); END;
         CREATE TRIGGER log_new AFTER INSERT ON rollout_targets
         BEGIN INSERT INTO written (part) VALUES (NEW.cluster_id); END;
         CREATE TRIGGER log_changed AFTER UPDATE ON rollout_targets
         BEGIN INSERT INTO written (part) VALUES (NEW.cluster_id); END;",
    )
    .expect("triggers");
}

/// What [`log_rollout_writes`] recorded since the last call.
fn written(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).expect("a second connection");
    let mut st = c
        .prepare("SELECT part FROM written ORDER BY n")
        .expect("select");
    let parts = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<Vec<String>, _>>()
        .expect("rows");
    c.execute("DELETE FROM written", []).expect("delete");
    parts
}

fn inventory(release: &str, version: &str) -> Inventory {
    Inventory {
        releases: vec![ReleaseInventory {
            release: release.into(),
            namespace: "skoala-system".into(),
            chart_version: version.into(),
            status: "deployed".into(),
            ..Default::default()
        }],
    }
}

/// A coordinator of two connected workers at 0.19.0 and a control plane at 0.19.0, with plan
/// `p` (to 0.19.2) stored as the active one and loaded.
struct World {
    _dir: tempfile::TempDir,
    db: PathBuf,
    sessions: Arc<Sessions>,
    /// The agents' ends of their sessions, kept open.
    agents: Vec<mpsc::Receiver<Result<CoordinatorMessage, Status>>>,
    recorder: Arc<Recorder>,
    orchestrator: Arc<Orchestrator<SqliteStore>>,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("store.db");
        let store = SqliteStore::open(&db).expect("open");
        let t = token(2);
        store.insert_token(t.clone()).await.expect("token");
        for (i, id) in ["c1", "c2"].iter().enumerate() {
            let r = registration(&t, id, &format!("0{i}"));
            store.register(r).await.expect("register");
            let state = ClusterState {
                inventory: inventory("skoala-init", "0.19.0").encode_to_vec(),
                ..Default::default()
            };
            store
                .set_cluster_state(id.to_string(), state)
                .await
                .expect("state");
        }
        let doc = UpgradePlan::from_yaml(PLAN).expect("plan");
        let rollout = Rollout::new(&validate(&doc).expect("valid"));
        let record = PlanRecord {
            name: "p".into(),
            document: PLAN.into(),
            rollout: crate::orchestrator::saved::record(&rollout).expect("record"),
            active: true,
            created_ms: 1,
            updated_ms: 1,
        };
        store.put_plan(record, Vec::new()).await.expect("plan");

        let sessions = Arc::new(Sessions::default());
        let recorder = Arc::new(Recorder {
            db: db.clone(),
            sessions: sessions.clone(),
            sent: Mutex::new(Vec::new()),
        });
        let control_plane = ControlPlane::showing(Cluster {
            identity: Some(ClusterIdentity {
                cluster_id: "kube-system-uid".into(),
                name: CONTROL_PLANE.into(),
                labels: Default::default(),
            }),
            control_plane: true,
            connected: true,
            releases: inventory("skoala", "0.19.0").releases,
            ..Default::default()
        });
        let orchestrator = Orchestrator::new(Parts {
            store,
            sessions: sessions.clone(),
            control_plane: Some(Arc::new(control_plane)),
            runner: None,
            dispatch: recorder.clone(),
            data_dir: DataDir::new(dir.path()),
            backups: Backups::Files(DataDir::new(dir.path())),
            metrics: Arc::new(Metrics::default()),
            clock: Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH)),
            helm_timeout: Duration::from_secs(60),
        });
        orchestrator.load().await.expect("load");
        let mut world = World {
            _dir: dir,
            db,
            sessions,
            agents: Vec::new(),
            recorder,
            orchestrator,
        };
        world.connect("c1");
        world.connect("c2");
        world
    }

    /// A coordinator started again on this world's store (the same sessions and dispatcher),
    /// its plan loaded, as after a crash or a failover.
    async fn restarted(
        &self,
        control_plane: Option<Arc<ControlPlane>>,
    ) -> Arc<Orchestrator<SqliteStore>> {
        let dir = self.db.parent().expect("dir");
        let again = Orchestrator::new(Parts {
            store: SqliteStore::open(&self.db).expect("open"),
            sessions: self.sessions.clone(),
            control_plane,
            runner: None,
            dispatch: self.recorder.clone(),
            data_dir: DataDir::new(dir),
            backups: Backups::Files(DataDir::new(dir)),
            metrics: Arc::new(Metrics::default()),
            clock: Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH)),
            helm_timeout: Duration::from_secs(60),
        });
        again.load().await.expect("load");
        again
    }

    /// Opens a (new) session for `cluster`; returns its id.
    fn connect(&mut self, cluster: &str) -> u64 {
        let (tx, rx) = mpsc::channel(32);
        self.agents.push(rx);
        let live = LiveAgent {
            inventory: Some(inventory("skoala-init", "0.19.0")),
            to_agent: Some(tx),
            ..Default::default()
        };
        self.sessions.open(cluster, live).session
    }

    fn sent(target: &str, operation_id: &str) -> Sent {
        Sent {
            target: target.into(),
            operation_id: operation_id.into(),
            stored_first: true,
        }
    }
}

fn succeeded(operation_id: &str) -> Input {
    Input::ControlPlane(Body::TaskResult(TaskResult {
        operation_id: operation_id.into(),
        outcome: TaskOutcome::Succeeded as i32,
        revision_before: 1,
        ..Default::default()
    }))
}

#[tokio::test]
async fn work_is_handed_over_only_once_the_store_has_it() {
    let mut w = World::new().await;
    let o = w.orchestrator.clone();

    o.tick(Vec::new()).await;
    assert_eq!(
        w.recorder.take(),
        [World::sent(CONTROL_PLANE, CP_UPGRADE)],
        "the control plane first, stored before it runs"
    );
    o.tick(Vec::new()).await;
    assert_eq!(
        w.recorder.take(),
        [],
        "a running operation is not started twice"
    );

    o.tick(vec![succeeded(CP_UPGRADE)]).await;
    assert_eq!(
        w.recorder.take(),
        [
            World::sent("c1", "p.c1.upgrade-1"),
            World::sent("c2", "p.c2.upgrade-1"),
        ],
        "then the workers, each stored before it is sent"
    );
    o.tick(Vec::new()).await;
    assert_eq!(
        w.recorder.take(),
        [],
        "delivered on the current session: not again"
    );

    // c1's agent reconnects: a new session has not seen its task.
    w.connect("c1");
    o.tick(Vec::new()).await;
    assert_eq!(w.recorder.take(), [World::sent("c1", "p.c1.upgrade-1")]);
}

#[tokio::test]
async fn a_round_whose_rollout_cannot_be_stored_sends_nothing() {
    let w = World::new().await;
    let o = w.orchestrator.clone();

    refuse_rollout_writes(&w.db, true);
    o.tick(Vec::new()).await;
    o.tick(Vec::new()).await;
    assert_eq!(
        w.recorder.take(),
        [],
        "stepped in memory, not stored: not sent"
    );
    assert!(stored_rollout(&w.db).in_flight().is_empty());

    // The store is back: the next round stores what was stepped, then sends it, once.
    refuse_rollout_writes(&w.db, false);
    o.tick(Vec::new()).await;
    assert_eq!(w.recorder.take(), [World::sent(CONTROL_PLANE, CP_UPGRADE)]);
    o.tick(Vec::new()).await;
    assert_eq!(w.recorder.take(), []);
}

#[tokio::test]
async fn a_verb_that_cannot_be_stored_changes_nothing() {
    let w = World::new().await;
    let o = w.orchestrator.clone();
    o.tick(Vec::new()).await;
    assert_eq!(w.recorder.take().len(), 1);

    refuse_rollout_writes(&w.db, true);
    let paused = o.transition("p", Verb::Pause).await;
    assert!(matches!(paused, Err(Error::Store(_))), "{paused:?}");
    refuse_rollout_writes(&w.db, false);

    // The control plane's result arrives: the plan goes on as if the verb never came.
    o.tick(vec![succeeded(CP_UPGRADE)]).await;
    assert_eq!(w.recorder.take().len(), 2, "both workers started");
    let stored = stored_rollout(&w.db);
    assert_eq!(
        stored.phase,
        skoala_plan::Phase::Workers,
        "{:?}",
        stored.phase
    );
}

#[tokio::test]
async fn an_agent_may_report_only_on_its_own_operations_in_flight() {
    let w = World::new().await;
    let o = w.orchestrator.clone();
    o.tick(Vec::new()).await;
    assert!(!o.sent_to("c1", "p.c1.upgrade-1"), "not started yet");
    o.tick(vec![succeeded(CP_UPGRADE)]).await;
    assert_eq!(w.recorder.take().len(), 3);
    assert!(o.sent_to("c1", "p.c1.upgrade-1"), "in flight for c1");
    assert!(!o.sent_to("c2", "p.c1.upgrade-1"), "c1's, not c2's");
    assert!(!o.sent_to("c1", "p.c1.upgrade-2"), "never sent");
    assert!(
        !o.sent_to("c1", CP_UPGRADE),
        "the control plane is nobody's"
    );

    // c1's result: finished, so nothing more is taken about it.
    let done = Input::Agent {
        cluster_id: "c1".into(),
        body: Body::TaskResult(TaskResult {
            operation_id: "p.c1.upgrade-1".into(),
            outcome: TaskOutcome::Failed as i32,
            ..Default::default()
        }),
    };
    o.tick(vec![done]).await;
    assert!(!o.sent_to("c1", "p.c1.upgrade-1"), "finished");
    assert!(o.sent_to("c2", "p.c2.upgrade-1"), "c2's still runs");

    // A restarted coordinator takes the stored rollout's operations as sent.
    let again = w.restarted(None).await;
    assert!(again.sent_to("c2", "p.c2.upgrade-1"));
    assert!(!again.sent_to("c1", "p.c1.upgrade-1"));
}

/// A [`World`] whose plan `p` has `n` workers (`w0000`, ...) enrolled and pending, stored
/// whole and loaded, with every later rollout write logged ([`log_rollout_writes`]).
async fn world_of(n: usize) -> World {
    let w = World::new().await;
    let doc = UpgradePlan::from_yaml(PLAN).expect("plan");
    let mut rollout = Rollout::new(&validate(&doc).expect("valid"));
    let pending = rollout.control_plane.clone();
    rollout.phase = skoala_plan::Phase::Workers;
    rollout.workers = (0..n)
        .map(|i| (format!("w{i:04}"), pending.clone()))
        .collect();
    rollout.enrolled_once = true;
    let record = PlanRecord {
        name: "p".into(),
        document: PLAN.into(),
        rollout: crate::orchestrator::saved::record(&rollout).expect("record"),
        active: true,
        created_ms: 1,
        updated_ms: 1,
    };
    let store = SqliteStore::open(&w.db).expect("open");
    store.put_plan(record, Vec::new()).await.expect("plan");
    w.orchestrator.load().await.expect("load");
    log_rollout_writes(&w.db);
    w
}

fn running(operation_id: &str) -> skoala_plan::TargetState {
    skoala_plan::TargetState::Running {
        operation_id: operation_id.into(),
        started: Timestamp::UNIX_EPOCH,
    }
}

#[tokio::test]
async fn a_round_that_changes_one_target_of_a_thousand_writes_that_target_alone() {
    let w = world_of(1000).await;
    let o = w.orchestrator.clone();
    let mut st = o.state.lock().await;
    let active = st.active.as_mut().expect("active");
    active.rollout.workers[500].1.state = skoala_plan::TargetState::Failed {
        message: "boom".into(),
    };
    o.persist(active, Vec::new(), None).await.expect("persist");
    let memory = active.rollout.clone();
    drop(st);
    assert_eq!(
        written(&w.db),
        ["w0500"],
        "one target, no head, no other target"
    );
    assert_eq!(
        stored_rollout(&w.db),
        memory,
        "and the store has the rollout"
    );
}

#[tokio::test]
async fn the_head_is_stored_first_and_a_start_after_the_rounds_other_targets() {
    let w = world_of(3).await;
    let o = w.orchestrator.clone();
    let mut st = o.state.lock().await;
    let active = st.active.as_mut().expect("active");
    // One round: the control plane's result is in the head, w0000 starts, w0001 finished.
    active.rollout.control_plane.state = skoala_plan::TargetState::Succeeded {
        revision_before: Some(1),
    };
    active.rollout.workers[0].1.state = running("p.w0000.upgrade-1");
    active.rollout.workers[1].1.state = skoala_plan::TargetState::Failed {
        message: "boom".into(),
    };

    // The finished target cannot be stored: the start is not stored either.
    let c = rusqlite::Connection::open(&w.db).expect("a second connection");
    c.execute_batch(
        "CREATE TRIGGER refuse BEFORE UPDATE ON rollout_targets WHEN NEW.cluster_id = 'w0001'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .expect("trigger");
    assert!(o.persist(active, Vec::new(), None).await.is_err());
    assert_eq!(written(&w.db), ["head"]);
    let stored = stored_rollout(&w.db);
    assert_eq!(stored.control_plane, active.rollout.control_plane);
    assert!(stored.in_flight().is_empty(), "{:?}", stored.in_flight());

    c.execute_batch("DROP TRIGGER refuse;").expect("drop");
    o.persist(active, Vec::new(), None).await.expect("persist");
    assert_eq!(
        written(&w.db),
        ["w0001", "w0000"],
        "the result, then the start"
    );
    assert_eq!(stored_rollout(&w.db), active.rollout);
}

#[tokio::test]
async fn a_round_that_starts_nothing_stores_its_results_before_the_head_they_lead_to() {
    let w = world_of(2).await;
    let o = w.orchestrator.clone();
    let mut st = o.state.lock().await;
    let active = st.active.as_mut().expect("active");
    let done = skoala_plan::TargetState::Succeeded {
        revision_before: Some(1),
    };
    active.rollout.control_plane.state = done.clone();
    active.rollout.workers[0].1.state = done.clone();
    o.persist(active, Vec::new(), None).await.expect("persist");
    assert_eq!(
        written(&w.db),
        ["w0000", "head"],
        "nothing starts: the head after the result"
    );

    // The last result finishes the plan.
    active.rollout.workers[1].1.state = done;
    active.rollout.phase = skoala_plan::Phase::Succeeded;
    o.persist(active, Vec::new(), None).await.expect("persist");
    assert_eq!(
        written(&w.db),
        ["w0001", "head"],
        "a reader never sees the plan succeeded beside a result not stored yet"
    );
    assert_eq!(stored_rollout(&w.db), active.rollout);
}

#[tokio::test]
async fn an_operation_stored_earlier_is_sent_even_when_this_rounds_write_fails() {
    let mut w = World::new().await;
    let o = w.orchestrator.clone();
    o.tick(Vec::new()).await;
    o.tick(vec![succeeded(CP_UPGRADE)]).await;
    assert_eq!(w.recorder.take().len(), 3);

    // c2 finishes, but its result cannot be stored; c1's agent reconnects meanwhile.
    refuse_rollout_writes(&w.db, true);
    w.connect("c1");
    let done = Input::Agent {
        cluster_id: "c2".into(),
        body: Body::TaskResult(TaskResult {
            operation_id: "p.c2.upgrade-1".into(),
            outcome: TaskOutcome::Succeeded as i32,
            ..Default::default()
        }),
    };
    o.tick(vec![done]).await;
    assert_eq!(
        w.recorder.take(),
        [World::sent("c1", "p.c1.upgrade-1")],
        "c1's operation is stored: its new session gets it whatever this round's write did"
    );
}

#[tokio::test]
async fn a_round_stored_in_part_before_a_crash_is_taken_up_again() {
    let w = World::new().await;
    let o = w.orchestrator.clone();
    o.tick(Vec::new()).await;
    assert_eq!(w.recorder.take().len(), 1);
    // The crash: the head (enrolment of two) is stored, one of its two targets is not.
    let c = rusqlite::Connection::open(&w.db).expect("a second connection");
    c.execute("DELETE FROM rollout_targets WHERE cluster_id = 'c2'", [])
        .expect("delete");
    // Only the clusters enrolled when the plan started: no later step would enrol c2 on its
    // own, only the join's "fewer entries than enrolled" can.
    let manual = PLAN.replace(
        "requireApproval: none",
        "requireApproval: none\n  convergence: manual",
    );
    c.execute("UPDATE plans SET document = ?1", [&manual])
        .expect("manual");
    assert_eq!(stored_rollout(&w.db).workers.len(), 1);

    let again = w.restarted(o.control_plane.clone()).await;
    again.tick(vec![succeeded(CP_UPGRADE)]).await;
    assert_eq!(
        w.recorder.take(),
        [
            World::sent("c1", "p.c1.upgrade-1"),
            World::sent("c2", "p.c2.upgrade-1"),
        ],
        "c2 is enrolled again and starts with its first attempt"
    );
}

/// An upgrade `operation_id` running since stage `stage`, its first attempt.
fn upgrading(operation_id: &str, stage: u32) -> skoala_plan::rollout::Progress {
    skoala_plan::rollout::Progress {
        state: running(operation_id),
        attempts: 1,
        stage: Some(stage),
    }
}

/// Target `id`'s progress as the store keeps it, read on a connection of its own.
fn stored_progress(db: &Path, id: &str) -> serde_json::Value {
    let c = rusqlite::Connection::open(db).expect("a second connection");
    let json: String = c
        .query_row(
            "SELECT progress FROM rollout_targets WHERE cluster_id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("the target");
    serde_json::from_str(&json).expect("json")
}

#[tokio::test]
async fn a_start_taking_a_finished_targets_slot_carries_its_result_and_a_new_leader_reads_it() {
    let w = world_of(4).await;
    let o = w.orchestrator.clone();
    let mut st = o.state.lock().await;
    let active = st.active.as_mut().expect("active");
    let done = skoala_plan::TargetState::Succeeded {
        revision_before: Some(1),
    };
    active.rollout.control_plane.state = done.clone();
    active.rollout.workers[0].1 = upgrading("p.w0000.upgrade-1", 1);
    active.rollout.workers[1].1 = upgrading("p.w0001.upgrade-1", 1);
    o.persist(active, Vec::new(), None).await.expect("persist");
    written(&w.db);

    // w0000 finishes and w0002 takes its slot: one write of both, the start carrying the
    // result, so it need not wait for the result's own write.
    active.rollout.workers[0].1.state = done.clone();
    active.rollout.workers[2].1 = upgrading("p.w0002.upgrade-1", 2);
    o.persist(active, Vec::new(), None).await.expect("persist");
    assert_eq!(written(&w.db), ["w0000", "w0002"]);
    let carried = &stored_progress(&w.db, "w0002")["carries"];
    assert_eq!(carried[0]["cluster_id"], "w0000", "{carried:#}");
    assert_eq!(carried[0]["follows"], "p.w0000.upgrade-1", "{carried:#}");
    assert_eq!(
        carried[0]["progress"]["state"]["state"], "succeeded",
        "{carried:#}"
    );
    let memory = active.rollout.clone();
    drop(st);

    // Suppose w0000's own write had not landed (the kube store sends them apart): the start
    // still brings the result, and a new leader reads w0000 finished, not running.
    let c = rusqlite::Connection::open(&w.db).expect("a second connection");
    let own = serde_json::to_string(&upgrading("p.w0000.upgrade-1", 1)).expect("json");
    c.execute(
        "UPDATE rollout_targets SET progress = ?1, phase = 'running' WHERE cluster_id = 'w0000'",
        [&own],
    )
    .expect("update");
    written(&w.db);
    assert_eq!(
        stored_rollout(&w.db),
        memory,
        "joined with the carried result"
    );
    let again = w.restarted(o.control_plane.clone()).await;
    assert!(!again.sent_to("w0000", "p.w0000.upgrade-1"), "finished");
    assert!(again.sent_to("w0002", "p.w0002.upgrade-1"), "running");

    // Its next round writes w0000's own entry, and a start in that round carries nothing: it
    // waits until the results are stored (w0000's slot is free in the stored picture already,
    // and a carried copy could be dropped with its carrier's next write).
    let mut st = again.state.lock().await;
    let active = st.active.as_mut().expect("active");
    active.rollout.workers[1].1.state = done;
    active.rollout.workers[3].1 = upgrading("p.w0003.upgrade-1", 2);
    again
        .persist(active, Vec::new(), None)
        .await
        .expect("persist");
    assert_eq!(written(&w.db), ["w0000", "w0001", "w0003"]);
    assert_eq!(
        stored_progress(&w.db, "w0000")["state"]["state"],
        "succeeded"
    );
    let start = stored_progress(&w.db, "w0003");
    assert!(start.get("carries").is_none(), "{start}");
}
