//! The fleet upgrade orchestrator: one task that drives the active plan's rollout.
//!
//! The rules live in `skoala_plan::Rollout` (a pure state machine); this module owns the I/O
//! around it. On every relevant change — a task result, step progress, an inventory, an agent
//! connecting or leaving, a tick of the (possibly driven) clock for windows — it:
//!
//! 1. records results into the rollout,
//! 2. steps the rollout against a fresh [`fleet::Snapshot`],
//! 3. persists the rollout together with the events of the change (one transaction), and
//! 4. only then sends the work: every `Running` target not yet delivered on its agent's
//!    *current* session gets its `Task` (again). A crash between 3 and 4 re-sends rather than
//!    forgets; a reconnect re-sends too. The operation ids are deterministic and the executor
//!    is idempotent per id, so a duplicate is harmless (invariant 2).
//!
//! The control plane's own `skoala` is upgraded in-process with the executor
//! ([`dispatch::ControlPlaneRunner`]).

pub mod charts;
pub mod check;
pub mod dispatch;
pub mod fleet;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::SignedDuration;
use skoala_plan::profile::SKOALA;
use skoala_plan::validate::{ChartSource, DEFAULT_EXPECTED_DURATION};
use skoala_plan::{Clock, Plan, Rollout, Target, TargetState, UpgradePlan, validate};
use skoala_proto::v1::{
    CoordinatorMessage, PlanStatus, TaskResult, agent_message::Body, coordinator_message,
};
use skoala_upgrade::Helm;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;

use crate::clock::now_ms;
use crate::control_plane::ControlPlane;
use crate::data_dir::DataDir;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::plans::TASK_RESULT;
use crate::store::{PlanEventRecord, PlanRecord, Store, StoreError};
use dispatch::ControlPlaneRunner;
use fleet::{CONTROL_PLANE, FleetCache, Snapshot};

/// How often the rollout is stepped with no other change (windows open and close).
const TICK: Duration = Duration::from_secs(1);

/// How long the mean upgrade time from the event history is reused. Computing it scans every
/// plan event; once per step that held the store for milliseconds per step during a
/// 1,000-cluster rollout (BENCHMARKS.md), and the history only grows. A mean that is seconds
/// old is just as good for deciding whether an upgrade fits in a window.
const EXPECTED_REFRESH: Duration = Duration::from_secs(10);

/// Something for the orchestrator from an agent session or the control-plane runner.
pub enum Input {
    Agent {
        cluster_id: String,
        body: Body,
    },
    ControlPlane(Body),
    /// A relay plan's charts are ready (prepared again after a coordinator restart).
    Charts {
        plan: String,
        charts: charts::PlanCharts,
    },
}

/// The plan being carried out.
struct Active {
    plan: Plan,
    rollout: Rollout,
    /// The rollout JSON as last persisted: work is sent only when memory equals the store.
    saved: String,
    /// A relay plan's charts (`None` for a repo plan, or while they are being prepared after
    /// a restart: its tasks wait for them).
    charts: Option<charts::PlanCharts>,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    /// Operation id → the agent session it was sent on.
    delivered: HashMap<String, u64>,
    /// Control-plane operation running in this process.
    cp_running: Option<String>,
    /// Operation id → when it was sent (real time, ms), for durations.
    sent_ms: HashMap<String, i64>,
    /// When the rollout was last stepped: progress-only rounds skip the step, but never for
    /// longer than a [`TICK`] (windows and deadlines are judged on the step).
    stepped: Option<std::time::Instant>,
}

/// What the orchestrator works with, handed in by `server`.
pub struct Parts<S> {
    pub store: S,
    /// Live sessions: who is connected, their inventories, where tasks go.
    pub sessions: Arc<Sessions>,
    /// The control plane's own inventory watch (`None`: no control-plane cluster).
    pub control_plane: Option<Arc<ControlPlane>>,
    /// How to upgrade the control plane (`None`: no `--kubeconfig`, plans are refused).
    pub runner: Option<ControlPlaneRunner>,
    /// Relayed charts and the control plane's backups live there.
    pub data_dir: DataDir,
    /// Executor step durations and task results are counted as they arrive.
    pub metrics: Arc<Metrics>,
    /// "Now" for windows and deadlines (a file in tests, `serve --clock-file`).
    pub clock: Arc<dyn Clock>,
    /// Bound on one `helm upgrade --wait` in a working cluster.
    pub helm_timeout: Duration,
}

/// Shared between the orchestrator task, the sessions and the admin API.
pub struct Orchestrator<S> {
    store: S,
    sessions: Arc<Sessions>,
    control_plane: Option<Arc<ControlPlane>>,
    data_dir: DataDir,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Bound on one `helm upgrade --wait` in a working cluster.
    helm_timeout: Duration,
    runner: Option<ControlPlaneRunner>,
    state: tokio::sync::Mutex<State>,
    /// The fleet as of the last round. Lock order: `state` before `fleet`; callers other than
    /// the loop take `fleet` alone and copy what they need.
    fleet: tokio::sync::Mutex<FleetCache>,
    wake: Notify,
    inbox: mpsc::UnboundedSender<Input>,
    inbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Input>>>,
    last_event: watch::Sender<i64>,
    /// The mean upgrade time (ms) and when it was read from the store.
    mean_upgrade: Mutex<Option<(std::time::Instant, Option<i64>)>>,
    /// Preflight checks waiting for agents' answers (`skoalactl plan check`).
    checks: check::Checks,
}

/// Where one round's time went, logged with its `tasks sent` line (`round="refresh=1ms
/// step=40ms persist=62ms send=20ms"`): a slow fan-out names its slow part without a profiler.
struct Laps {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        Laps {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, took)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{what}={}ms", took.as_millis())?;
        }
        Ok(())
    }
}

fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error in the orchestrator");
    Status::unavailable(format!("the coordinator's store is unavailable: {e}"))
}

impl Input {
    /// Progress only (a step's progress, a task accepted): it changes no rollout state, so a
    /// round made of these alone records the events and steps nothing.
    fn is_progress(&self) -> bool {
        matches!(
            self,
            Input::Agent {
                body: Body::StepProgress(_) | Body::TaskAccepted(_),
                ..
            } | Input::ControlPlane(Body::StepProgress(_) | Body::TaskAccepted(_))
        )
    }
}

impl<S: Store> Orchestrator<S> {
    pub fn new(parts: Parts<S>) -> Arc<Self> {
        let (inbox, rx) = mpsc::unbounded_channel();
        Arc::new(Orchestrator {
            store: parts.store,
            sessions: parts.sessions,
            control_plane: parts.control_plane,
            data_dir: parts.data_dir,
            metrics: parts.metrics,
            clock: parts.clock,
            helm_timeout: parts.helm_timeout,
            runner: parts.runner,
            state: Default::default(),
            fleet: Default::default(),
            wake: Notify::new(),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
            last_event: watch::channel(0).0,
            mean_upgrade: Mutex::new(None),
            checks: Default::default(),
        })
    }

    /// Where the fleet view is read from.
    fn sources(&self) -> fleet::Sources<'_, S> {
        fleet::Sources {
            store: &self.store,
            sessions: &self.sessions,
            control_plane: self.control_plane.as_deref(),
        }
    }

    /// Something changed (a connection, an inventory): step soon.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// A task message from an agent (accepted, progress, result).
    pub fn agent_message(&self, cluster_id: &str, body: Body) {
        // A preflight check's answer is the check's, never the rollout's.
        if self.checks.take(cluster_id, &body) {
            return;
        }
        let _ = self.inbox.send(Input::Agent {
            cluster_id: cluster_id.to_string(),
            body,
        });
    }

    /// Fires with the id of the newest event whenever events are recorded.
    pub fn events(&self) -> watch::Receiver<i64> {
        self.last_event.subscribe()
    }

    /// Runs until the process ends: loads the active plan, then steps on every change.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self
            .inbox_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            tracing::error!("the orchestrator is already running");
            return;
        };
        if let Err(e) = self.load().await {
            tracing::error!(error = %e, "cannot load the active plan; plans are stopped until restart");
            return;
        }
        let mut inputs = Vec::new();
        loop {
            tokio::select! {
                Some(i) = rx.recv() => inputs.push(i),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            while let Ok(i) = rx.try_recv() {
                inputs.push(i);
            }
            self.tick(std::mem::take(&mut inputs)).await;
        }
    }

    async fn load(&self) -> anyhow::Result<()> {
        let Some(record) = self.store.plans().await?.into_iter().find(|p| p.active) else {
            return Ok(());
        };
        let doc = UpgradePlan::from_yaml(&record.document)?;
        let plan = validate(&doc)?;
        let rollout: Rollout = serde_json::from_str(&record.rollout)?;
        tracing::info!(plan = %plan.name, "resuming the active plan");
        if plan.chart_source == ChartSource::Relay {
            self.prepare_charts_later(plan.clone(), self.data_dir.clone());
        }
        self.state.lock().await.active = Some(Active {
            plan,
            rollout,
            saved: record.rollout,
            charts: None,
        });
        Ok(())
    }

    /// After a restart: prepares a relay plan's charts again (the data dir's cache answers
    /// without the network), retrying with a growing pause if even that fails (the cache was
    /// removed and the repository is gone), and hands them to the loop.
    fn prepare_charts_later(&self, plan: Plan, dir: DataDir) {
        let Some(runner) = self.runner.clone() else {
            return;
        };
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(5);
            loop {
                let prepared = match Helm::detect(&runner.helm, &runner.kubeconfig).await {
                    Ok(helm) => charts::prepare(&helm, &dir, &plan)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("helm: {e}")),
                };
                match prepared {
                    Ok(charts) => {
                        let _ = inbox.send(Input::Charts {
                            plan: plan.name.clone(),
                            charts,
                        });
                        return;
                    }
                    Err(error) => {
                        tracing::error!(plan = %plan.name, %error, retry_in = ?pause, "cannot prepare the plan's relayed charts; its upgrades wait for them");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(300));
                    }
                }
            }
        });
    }

    /// Checks (repo) or prepares (relay) `plan`'s charts with the coordinator's helm.
    async fn charts(&self, plan: &Plan) -> Result<Option<charts::PlanCharts>, Status> {
        let Some(runner) = &self.runner else {
            return Ok(None);
        };
        let helm = Helm::detect(&runner.helm, &runner.kubeconfig)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "the coordinator cannot run helm ({}) to check the plan's charts: {e}",
                    runner.helm.display()
                ))
            })?;
        Ok(charts::ready(&helm, &self.data_dir, plan).await?)
    }

    async fn expected(&self, plan: &Plan) -> SignedDuration {
        let cached = *self
            .mean_upgrade
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mean = match cached {
            Some((at, mean)) if at.elapsed() < EXPECTED_REFRESH => mean,
            _ => {
                // A store error is not cached: the next step asks again.
                let mean = self.store.mean_upgrade_ms().await;
                if let Ok(m) = mean {
                    *self
                        .mean_upgrade
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Some((std::time::Instant::now(), m));
                }
                mean.ok().flatten()
            }
        };
        match mean {
            Some(ms) if ms > 0 => SignedDuration::from_millis(ms),
            _ => plan.expected_duration.unwrap_or(DEFAULT_EXPECTED_DURATION),
        }
    }

    /// A copy of the fleet as it is now, for callers outside the loop.
    pub(crate) async fn snapshot(&self, plan: Option<&Plan>) -> Result<Snapshot, StoreError> {
        let expected = self.expected_or_default(plan).await;
        let mut fleet = self.fleet.lock().await;
        Ok(fleet
            .refresh(&self.sources(), self.clock.now(), expected)
            .await?
            .clone())
    }

    async fn expected_or_default(&self, plan: Option<&Plan>) -> SignedDuration {
        match plan {
            Some(p) => self.expected(p).await,
            None => DEFAULT_EXPECTED_DURATION,
        }
    }

    /// One round: record inputs, step, persist, send.
    ///
    /// A round of progress alone (the agents' `TaskAccepted` and `StepProgress`, 20,000 of
    /// them right after a 10,000-cluster fan-out) only records its events, all of the round's
    /// in one transaction: re-reading the whole fleet and stepping the rollout for them
    /// changes nothing and took the CPU the fan-out's deliveries needed (BENCHMARKS.md).
    async fn tick(&self, inputs: Vec<Input>) {
        let mut st = self.state.lock().await;
        let mut events = Vec::new();
        let recently_stepped = st.stepped.is_some_and(|at| at.elapsed() < TICK);
        if recently_stepped && !inputs.is_empty() && inputs.iter().all(Input::is_progress) {
            for input in inputs {
                self.take_input(&mut st, input, &mut events);
            }
            let fleet = self.fleet.lock().await;
            for e in &mut events {
                e.target_name = match fleet.last() {
                    Some(snap) => snap.name_of(&e.target),
                    None => e.target.clone(),
                };
            }
            drop(fleet);
            self.append(events).await;
            return;
        }
        let mut laps = Laps::start();
        // Before the results are recorded: their state changes are events too.
        let before = st.active.as_ref().map(|a| a.rollout.clone());
        for input in inputs {
            self.take_input(&mut st, input, &mut events);
        }
        let plan = st.active.as_ref().map(|a| a.plan.clone());
        let expected = self.expected_or_default(plan.as_ref()).await;
        laps.lap("inputs");
        let mut fleet = self.fleet.lock().await;
        let snap = match fleet
            .refresh(&self.sources(), self.clock.now(), expected)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fleet; not stepping the plan");
                return;
            }
        };
        laps.lap("refresh");
        for e in &mut events {
            e.target_name = snap.name_of(&e.target);
        }
        st.stepped = Some(std::time::Instant::now());
        let Some(active) = st.active.as_mut() else {
            self.append(events).await;
            return;
        };
        let before = before.unwrap_or_else(|| active.rollout.clone());
        // What runs now, and a rollback's revision, is in the rollout itself: `send` reads it
        // from there once it is persisted (so it survives a restart), not from the actions.
        let _ = active.rollout.step(&active.plan, &SKOALA, &snap.view);
        laps.lap("step");
        events.extend(status::diff(&before, &active.rollout, snap));
        laps.lap("diff");
        if let Err(e) = self.persist(active, events).await {
            tracing::error!(error = %e, plan = %active.plan.name, "cannot persist the rollout; sending nothing until it is stored");
            return;
        }
        laps.lap("persist");
        self.send(&mut st, snap, laps).await;
    }

    /// Saves the rollout (if changed) with `events`, then tells watchers.
    async fn persist(
        &self,
        active: &mut Active,
        events: Vec<PlanEventRecord>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&active.rollout)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialize the rollout: {e}")))?;
        if json == active.saved && events.is_empty() {
            return Ok(());
        }
        let last = self
            .store
            .save_rollout(active.plan.name.clone(), json.clone(), events)
            .await?;
        active.saved = json;
        if last > 0 {
            self.last_event.send_replace(last);
        }
        Ok(())
    }

    async fn append(&self, events: Vec<PlanEventRecord>) {
        if events.is_empty() {
            return;
        }
        match self.store.append_plan_events(events).await {
            Ok(last) => {
                self.last_event.send_replace(last);
            }
            Err(e) => tracing::error!(error = %e, "cannot record plan events"),
        }
    }

    /// Records one input into the rollout and the event list.
    fn take_input(&self, st: &mut State, input: Input, events: &mut Vec<PlanEventRecord>) {
        let (target, body) = match input {
            Input::Agent { cluster_id, body } => (Target::Worker(cluster_id), body),
            Input::ControlPlane(body) => (Target::ControlPlane, body),
            Input::Charts { plan, charts } => {
                if let Some(a) = st.active.as_mut().filter(|a| a.plan.name == plan) {
                    tracing::info!(plan = %plan, charts = %charts.describe(&a.plan.version), "relayed charts ready");
                    a.charts = Some(charts);
                }
                return;
            }
        };
        let target_id = match &target {
            Target::ControlPlane => CONTROL_PLANE.to_string(),
            Target::Worker(id) => id.clone(),
        };
        self.metrics
            .executor_input(target == Target::ControlPlane, &body);
        match body {
            Body::StepProgress(p) => events.push(PlanEventRecord {
                plan: plan_of(&p.operation_id),
                kind: "step".into(),
                target: target_id,
                operation_id: p.operation_id,
                step: p.step,
                state: dispatch::step_phase(p.phase).into(),
                message: p.message,
                duration_ms: p.duration_ms,
                ..Default::default()
            }),
            Body::TaskResult(r) => {
                if target == Target::ControlPlane {
                    st.cp_running = None;
                }
                if let (Target::Worker(id), Some(release)) = (&target, r.release_after.clone()) {
                    self.sessions.set_release(id, release);
                }
                let started = st.sent_ms.remove(&r.operation_id);
                st.delivered.remove(&r.operation_id);
                let (outcome, state) = dispatch::outcome(&r);
                let recorded = st
                    .active
                    .as_mut()
                    .is_some_and(|a| a.rollout.record(&target, &r.operation_id, outcome));
                events.push(result_event(&r, target_id, state, started, recorded));
            }
            Body::TaskAccepted(a) => {
                tracing::debug!(operation = %a.operation_id, "task accepted");
            }
            _ => {}
        }
    }

    /// Sends every running operation that has not reached its agent's current session.
    async fn send(&self, st: &mut State, snap: &Snapshot, mut laps: Laps) {
        let Some(active) = st.active.as_ref() else {
            return;
        };
        let plan = active.plan.clone();
        let charts = active.charts.clone();
        let mut sent = Vec::new();
        for (target, op, rollback_to) in running(&active.rollout) {
            match &target {
                Target::ControlPlane => {
                    if st.cp_running.as_deref() == Some(op.as_str()) {
                        continue;
                    }
                    let Some(runner) = &self.runner else {
                        continue;
                    };
                    let Some(source) = charts::control_plane_source(&plan, charts.as_ref()) else {
                        continue; // a relay plan's charts are being prepared
                    };
                    runner.spawn(&plan, source, op.clone(), rollback_to, self.inbox.clone());
                    st.cp_running = Some(op.clone());
                    sent.push((CONTROL_PLANE.to_string(), op));
                }
                Target::Worker(id) => {
                    let Some(outlet) = self.sessions.outlet(id) else {
                        continue; // offline: sent when it comes back
                    };
                    if st.delivered.get(&op) == Some(&outlet.session) {
                        continue;
                    }
                    let Some(source) = charts::worker_source(&plan, charts.as_ref()) else {
                        continue; // a relay plan's charts are being prepared
                    };
                    let mut task =
                        dispatch::worker_task(&plan, &op, rollback_to, self.helm_timeout);
                    dispatch::set_source(&mut task, source);
                    let msg = CoordinatorMessage {
                        body: Some(coordinator_message::Body::Task(task)),
                    };
                    // Never await one session: an agent whose 32 slots are full (a slow
                    // reader) would hold up every task after it in this loop. Its task
                    // waits for a slot on its own; if that session ends first, the next
                    // session has another id and gets the task again.
                    match outlet.tx.try_send(Ok(msg)) {
                        Ok(()) => {}
                        Err(TrySendError::Full(msg)) => {
                            let tx = outlet.tx.clone();
                            tokio::spawn(async move {
                                let _ = tx.send(msg).await;
                            });
                        }
                        Err(TrySendError::Closed(_)) => {
                            continue; // the session just ended; the next one gets it
                        }
                    }
                    st.delivered.insert(op.clone(), outlet.session);
                    sent.push((id.clone(), op));
                }
            }
        }
        // One line per round, not per task: 10,000 lines after a fan-out cost the CPU the
        // deliveries needed. Each task is still an event (`skoalactl events`) and a debug line.
        // scripts/bench-plan.sh times the hand-off by this line (written after the loop).
        if let Some((target, op)) = sent.first() {
            laps.lap("send");
            tracing::info!(plan = %plan.name, tasks = sent.len(), first_target = %target, first_operation = %op, round = %laps, "tasks sent");
        }
        let mut events = Vec::new();
        for (target, op) in sent {
            st.sent_ms.entry(op.clone()).or_insert_with(now_ms);
            tracing::debug!(plan = %plan.name, target = %target, operation = %op, "task sent");
            events.push(PlanEventRecord {
                plan: plan.name.clone(),
                kind: "task.sent".into(),
                target_name: snap.name_of(&target),
                target,
                operation_id: op,
                ..Default::default()
            });
        }
        self.append(events).await;
    }

    // ---- the admin API's side ----

    /// `ApplyPlan`: validates, checks the fleet, and makes the plan the active one.
    pub async fn apply(&self, text: &str, force: bool) -> Result<PlanStatus, Status> {
        let doc = UpgradePlan::from_yaml(text)
            .map_err(|e| Status::invalid_argument(format!("invalid plan document: {e}")))?;
        let plan = validate(&doc).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.runner.is_none() {
            return Err(Status::failed_precondition(
                "the coordinator has no control-plane cluster (serve --kubeconfig): a plan upgrades it first",
            ));
        }
        let snap = self.snapshot(Some(&plan)).await.map_err(internal)?;
        let selected = snap
            .view
            .workers
            .iter()
            .filter(|w| plan.selects(&w.release.name, &w.release.cluster_id, &w.labels))
            .count();
        if selected == 0 {
            return Err(Status::invalid_argument(
                "spec.clusters: the selection matches no registered working cluster",
            ));
        }
        let skew = snap.skew();
        if !skew.is_clean()
            && skew.control_plane_version.as_deref() != Some(plan.version.as_str())
            && !force
        {
            let names: Vec<String> = skew.clusters.iter().map(|c| c.name.clone()).collect();
            return Err(Status::failed_precondition(format!(
                "the fleet is skewed ({}) and the plan targets {} rather than the control plane's {}: converge first, or apply with --force",
                names.join(", "),
                plan.version,
                skew.control_plane_version.as_deref().unwrap_or("(none)")
            )));
        }

        // The charts, before anything is stored: an unknown version or an unreachable
        // repository is refused now, naming the chart, the version and the URL. Re-applying a
        // stored plan changes nothing, so it is not checked again.
        let stored = self.store.plans().await.map_err(internal)?;
        let charts = if stored.iter().any(|p| p.name == plan.name) {
            None
        } else {
            self.charts(&plan).await?
        };

        let mut st = self.state.lock().await;
        if let Some(a) = &st.active
            && a.plan.name != plan.name
            && !status::finished(&a.rollout.phase)
        {
            let (phase, _) = status::phase(&a.rollout.phase);
            return Err(Status::failed_precondition(format!(
                "plan {} is still active ({phase}); one plan at a time: wait for it, or `skoalactl plan abort {}`",
                a.plan.name, a.plan.name
            )));
        }
        let existing = self.store.plans().await.map_err(internal)?;
        if let Some(old) = existing.iter().find(|p| p.name == plan.name) {
            let same = UpgradePlan::from_yaml(&old.document).ok().as_ref() == Some(&doc);
            if !same {
                return Err(Status::already_exists(format!(
                    "plan {} exists with a different document; plans are immutable, apply it under a new name",
                    plan.name
                )));
            }
            let rollout: Rollout = serde_json::from_str(&old.rollout)
                .map_err(|e| internal(StoreError::Corrupt(e.to_string())))?;
            return Ok(status::plan_status(old, &plan.version, &rollout, &snap));
        }
        let rollout = Rollout::new(&plan);
        let json = serde_json::to_string(&rollout)
            .map_err(|e| internal(StoreError::Corrupt(e.to_string())))?;
        let now = now_ms();
        let record = PlanRecord {
            name: plan.name.clone(),
            document: text.to_string(),
            rollout: json.clone(),
            active: true,
            created_ms: now,
            updated_ms: now,
        };
        self.store
            .put_plan(record.clone())
            .await
            .map_err(internal)?;
        let event = PlanEventRecord {
            plan: plan.name.clone(),
            kind: "plan.applied".into(),
            state: "controlPlane".into(),
            message: match &charts {
                Some(c) => format!(
                    "{selected} working clusters selected, version {}; relaying {}",
                    plan.version,
                    c.describe(&plan.version)
                ),
                None => format!(
                    "{} working clusters selected, version {}",
                    selected, plan.version
                ),
            },
            ..Default::default()
        };
        if let Ok(last) = self
            .store
            .save_rollout(plan.name.clone(), json.clone(), vec![event])
            .await
        {
            self.last_event.send_replace(last);
        }
        tracing::info!(plan = %plan.name, version = %plan.version, selected, "plan applied");
        let status = status::plan_status(&record, &plan.version, &rollout, &snap);
        st.active = Some(Active {
            plan,
            rollout,
            saved: json,
            charts,
        });
        drop(st);
        self.poke();
        Ok(status)
    }

    /// Approve, pause, resume, abort or roll back the active plan `name`.
    pub async fn transition(&self, name: &str, verb: Verb) -> Result<PlanStatus, Status> {
        let mut st = self.state.lock().await;
        let Some(active) = st.active.as_mut().filter(|a| a.plan.name == name) else {
            return Err(self.not_active(name).await);
        };
        let done = match verb {
            Verb::Approve => active
                .rollout
                .approve()
                .map(|stage| format!("stage {stage} approved")),
            Verb::Pause => active
                .rollout
                .pause("paused by an operator")
                .map(|()| "paused by an operator; running upgrades finish".into()),
            Verb::Resume => active.rollout.resume().map(|()| "resumed".into()),
            Verb::Abort => active
                .rollout
                .abort()
                .map(|()| "aborted; running upgrades finish, nothing new starts".into()),
            Verb::Rollback => active
                .rollout
                .start_rollback(true)
                .map(|()| "rolling back: workers first, then the control plane".into()),
        }
        .map_err(Status::failed_precondition)?;
        let (phase, _) = status::phase(&active.rollout.phase);
        let event = PlanEventRecord {
            plan: name.to_string(),
            kind: format!("plan.{}", verb.as_str()),
            state: phase.into(),
            message: done,
            ..Default::default()
        };
        self.persist(active, vec![event]).await.map_err(internal)?;
        tracing::info!(plan = name, verb = verb.as_str(), "plan transition");
        drop(st);
        self.poke();
        // Let the round the verb started go first: tokio runs the task just woken from this
        // worker's LIFO slot, which no other worker may steal, only once this one yields, and
        // the status below copies the fleet view before its first await. Without the yield an
        // approval's fan-out to 10,000 clusters waited ~55 ms for the reply (BENCHMARKS.md).
        tokio::task::yield_now().await;
        self.status(name).await
    }

    async fn not_active(&self, name: &str) -> Status {
        match self.store.plans().await {
            Ok(all) if all.iter().any(|p| p.name == name) => Status::failed_precondition(format!(
                "plan {name} is not the active plan (a newer plan superseded it)"
            )),
            Ok(_) => Status::not_found(format!("no plan named {name:?}")),
            Err(e) => internal(e),
        }
    }

    /// Every plan, oldest first.
    pub async fn list(&self) -> Result<Vec<PlanStatus>, Status> {
        let snap = self.snapshot(None).await.map_err(internal)?;
        let records = self.store.plans().await.map_err(internal)?;
        Ok(records
            .iter()
            .filter_map(|r| stored_status(r, &snap))
            .collect())
    }

    /// One plan.
    pub async fn status(&self, name: &str) -> Result<PlanStatus, Status> {
        let snap = self.snapshot(None).await.map_err(internal)?;
        let records = self.store.plans().await.map_err(internal)?;
        let record = records
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Status::not_found(format!("no plan named {name:?}")))?;
        stored_status(record, &snap).ok_or_else(|| {
            Status::internal(format!(
                "plan {name} is stored in a form this coordinator cannot read"
            ))
        })
    }

    /// The fleet view now and the statuses of the active plans as stored: what the metrics'
    /// scrape-time gauges are computed from, the same `skoalactl` shows.
    pub async fn fleet_and_active_plans(&self) -> Result<(Snapshot, Vec<PlanStatus>), StoreError> {
        let snap = self.snapshot(None).await?;
        let active = self
            .store
            .plans()
            .await?
            .iter()
            .filter(|r| r.active)
            .filter_map(|r| stored_status(r, &snap))
            .collect();
        Ok((snap, active))
    }

    /// The fleet's skew right now.
    pub async fn skew(&self) -> Result<(skoala_plan::SkewReport, Snapshot), Status> {
        let snap = self.snapshot(None).await.map_err(internal)?;
        Ok((snap.skew(), snap))
    }
}

/// Every operation the rollout has running, with the revision a rollback returns to (0, "the
/// previous one", for rollouts stored before the revision was recorded).
fn running(rollout: &Rollout) -> Vec<(Target, String, Option<i32>)> {
    let one = |p: &TargetState| match p {
        TargetState::Running { operation_id, .. } => Some((operation_id.clone(), None)),
        TargetState::RollingBack {
            operation_id,
            to_revision,
            ..
        } => Some((operation_id.clone(), Some(to_revision.unwrap_or(0)))),
        _ => None,
    };
    let cp = one(&rollout.control_plane.state).map(|(op, rb)| (Target::ControlPlane, op, rb));
    let workers = rollout
        .workers
        .iter()
        .filter_map(|(id, p)| one(&p.state).map(|(op, rb)| (Target::Worker(id.clone()), op, rb)));
    cp.into_iter().chain(workers).collect()
}

/// A stored plan as the API shows it (the rollout in the store is current: it is saved
/// before anything is acted on).
fn stored_status(r: &PlanRecord, snap: &Snapshot) -> Option<PlanStatus> {
    let version = UpgradePlan::from_yaml(&r.document).ok()?.spec.version;
    let rollout: Rollout = serde_json::from_str(&r.rollout).ok()?;
    Some(status::plan_status(r, &version, &rollout, snap))
}

/// The plan an operation id belongs to (`<plan>.<target>.<kind>-<attempt>`; plan names hold
/// no dot).
fn plan_of(operation_id: &str) -> String {
    operation_id
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn result_event(
    r: &TaskResult,
    target: String,
    state: &str,
    started_ms: Option<i64>,
    recorded: bool,
) -> PlanEventRecord {
    let mut message = r.message.clone();
    if !r.rollback_message.is_empty() {
        message.push_str(&format!("; rollback: {}", r.rollback_message));
    }
    if !recorded {
        message = format!("(ignored: not a running operation of the active plan) {message}");
    }
    PlanEventRecord {
        plan: plan_of(&r.operation_id),
        kind: TASK_RESULT.into(),
        target,
        operation_id: r.operation_id.clone(),
        step: r.failed_step.clone(),
        // Only upgrades that ran here count towards the history of durations.
        state: if recorded {
            state.into()
        } else {
            format!("{state}.ignored")
        },
        message,
        duration_ms: started_ms.map(|s| now_ms() - s).unwrap_or_default(),
        ..Default::default()
    }
}

/// An operator's verb on a plan.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Approve,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Approve => "approved",
            Verb::Pause => "paused",
            Verb::Resume => "resumed",
            Verb::Abort => "aborted",
            Verb::Rollback => "rollback",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(worker: TargetState) -> Rollout {
        let doc = UpgradePlan::from_yaml(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: p}\nspec: {version: 0.19.2}\n",
        )
        .expect("plan");
        let mut r = Rollout::new(&validate(&doc).expect("valid"));
        r.workers.push((
            "w1".into(),
            skoala_plan::rollout::Progress {
                state: worker,
                attempts: 1,
                stage: Some(0),
            },
        ));
        r
    }

    #[test]
    fn a_rollbacks_revision_is_read_from_the_stored_rollout() {
        let r = rollout(TargetState::RollingBack {
            operation_id: "p.w1.rollback-1".into(),
            started: jiff::Timestamp::UNIX_EPOCH,
            to_revision: Some(3),
        });
        // What a restarted coordinator reads back from the store.
        let stored: Rollout =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("read back");
        assert_eq!(
            running(&stored),
            vec![(
                Target::Worker("w1".into()),
                "p.w1.rollback-1".into(),
                Some(3)
            )]
        );
        // A rollout stored before the revision was recorded: "the previous revision".
        let old = serde_json::to_string(&r)
            .expect("json")
            .replace(",\"to_revision\":3", "");
        assert!(!old.contains("to_revision"), "{old}");
        let old: Rollout = serde_json::from_str(&old).expect("old form");
        assert_eq!(running(&old)[0].2, Some(0));
    }

    #[test]
    fn only_accepted_and_step_progress_skip_the_step() {
        use skoala_proto::v1::{StepProgress, TaskAccepted};
        let agent = |body| Input::Agent {
            cluster_id: "w1".into(),
            body,
        };
        assert!(agent(Body::StepProgress(StepProgress::default())).is_progress());
        assert!(agent(Body::TaskAccepted(TaskAccepted::default())).is_progress());
        assert!(Input::ControlPlane(Body::StepProgress(StepProgress::default())).is_progress());
        // A result changes the rollout: it must step.
        assert!(!agent(Body::TaskResult(TaskResult::default())).is_progress());
        assert!(!Input::ControlPlane(Body::TaskResult(TaskResult::default())).is_progress());
    }

    #[test]
    fn upgrades_are_running_work_without_a_revision() {
        let r = rollout(TargetState::Running {
            operation_id: "p.w1.upgrade-1".into(),
            started: jiff::Timestamp::UNIX_EPOCH,
        });
        assert_eq!(
            running(&r),
            vec![(Target::Worker("w1".into()), "p.w1.upgrade-1".into(), None)]
        );
    }
}
