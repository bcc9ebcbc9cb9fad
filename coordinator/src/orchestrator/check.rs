//! `skoalactl plan check`: the executor's preflight on every cluster a plan selects, and on the
//! control plane, before (or while) the plan runs.
//!
//! Preflight is read-only ([`skoala_upgrade::Executor::preflight`]: the release is deployed,
//! helm works, the RBAC is there, the chart version can be fetched and its CRDs pass a
//! server-side dry run). Working clusters run it as a `TASK_KIND_PREFLIGHT` task down their
//! session; the control plane runs it here, on a thread of its own like the control plane's
//! upgrades ([`super::dispatch::ControlPlaneRunner`]).
//!
//! A check must never disturb a running plan:
//!
//! - its operation ids are `preflight_<plan>_<nonce>.<target>` ([`OperationId::Preflight`]): an
//!   underscore can never appear in a plan name (DNS-1123), so they never equal a rollout's
//!   `<plan>.<target>.<kind>-<n>`, and the executor's per-operation idempotency never confuses
//!   the two;
//! - its answers are taken out of the agents' message flow by [`Checks::take`] before the
//!   orchestrator sees them, so they are neither recorded into the rollout nor written to the
//!   plan's event log (late answers, after the deadline, are dropped the same way);
//! - it reads the fleet snapshot but never the orchestrator's state lock.
//!
//! Offline is not failed: a cluster with no session is reported `offline` at once and not
//! waited for. A connected cluster that does not answer within the deadline is `noAnswer`. A
//! cluster the active plan is upgrading (or rolling back) right now is reported `upgrading`
//! and not asked: its release is `pending-*` by design, which preflight would call a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use skoala_plan::validate::ChartSource as PlanSource;
use skoala_plan::{ClusterRelease, OperationId, Plan, Target, TargetState};
use skoala_proto::v1::{
    self as pb, CoordinatorMessage, PreflightResult, TaskKind, TaskOutcome, TaskResult,
    agent_message::Body, coordinator_message,
};
use skoala_upgrade::{Executor, Helm, Operation, ProgressEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::charts;
use super::dispatch::{self, ControlPlaneRunner};
use super::fleet::{CONTROL_PLANE, Snapshot};
use super::{Error, Orchestrator, Result};
use crate::clock::now_ms;
use skoala_store::Store;

/// Default time to wait for the clusters' answers.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest deadline a caller may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(1800);

/// Whether `operation_id` belongs to a check rather than a plan.
pub fn is_check(operation_id: &str) -> bool {
    OperationId::is_preflight(operation_id)
}

/// Whether the check operation `operation_id` (`<stem>.<target>`) was addressed to
/// `cluster_id`: a cluster answers only its own checks, never another's.
pub fn addressed_to(operation_id: &str, cluster_id: &str) -> bool {
    is_check(operation_id)
        && operation_id
            .parse::<OperationId>()
            .is_ok_and(|id| matches!(id.target(), Target::Worker(c) if c == cluster_id))
}

/// The checks waiting for agents' answers, by operation id.
#[derive(Default)]
pub struct Checks {
    waiting: Mutex<HashMap<String, oneshot::Sender<TaskResult>>>,
    seq: AtomicU64,
}

impl Checks {
    /// Takes an agent's task message if it belongs to a check: `true` means it was consumed
    /// (delivered to the waiting check, or dropped because nobody waits any more) and must not
    /// reach the rollout.
    pub fn take(&self, cluster_id: &str, body: &Body) -> bool {
        let op = match body {
            Body::TaskResult(r) => &r.operation_id,
            Body::StepProgress(p) => &p.operation_id,
            Body::TaskAccepted(a) => &a.operation_id,
            _ => return false,
        };
        if !is_check(op) {
            return false;
        }
        if !addressed_to(op, cluster_id) {
            // The session refuses these first; this keeps a check's answer its cluster's own.
            tracing::warn!(cluster = cluster_id, operation = %op, "answer to another cluster's check; dropped");
            return true;
        }
        if let Body::TaskResult(r) = body {
            match self.lock().remove(op) {
                Some(waiter) => {
                    let _ = waiter.send(r.clone());
                }
                None => {
                    tracing::debug!(cluster = cluster_id, operation = %op, "preflight answer after its deadline; dropped")
                }
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<TaskResult>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh nonce for the operation ids of one check.
    fn nonce(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", now_ms())
    }

    fn wait_for(&self, op: &str) -> oneshot::Receiver<TaskResult> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(op.to_string(), tx);
        rx
    }

    fn forget(&self, op: &str) {
        self.lock().remove(op);
    }
}

/// How one cluster's preflight ended.
#[derive(Debug)]
enum Answer {
    Passed(String),
    Failed {
        step: String,
        message: String,
    },
    /// Asked, no answer before the deadline.
    Silent,
}

impl Answer {
    fn from_result(r: &TaskResult) -> Answer {
        match TaskOutcome::try_from(r.outcome) {
            Ok(TaskOutcome::Succeeded) => Answer::Passed(r.message.clone()),
            _ => Answer::Failed {
                step: r.failed_step.clone(),
                message: r.message.clone(),
            },
        }
    }
}

/// One row before its answer: who, and what we know of them without asking.
struct Row {
    target: String,
    name: String,
    role: &'static str,
    reachable: bool,
    version: String,
    status: String,
}

impl Row {
    /// The row of a cluster as the fleet view has it.
    fn of(cluster: &ClusterRelease, role: &'static str) -> Row {
        let release = cluster.release.as_ref();
        Row {
            target: cluster.cluster_id.clone(),
            name: cluster.name.clone(),
            role,
            reachable: cluster.connected,
            version: release.map(|r| r.chart_version.clone()).unwrap_or_default(),
            status: release.map(|r| r.status.to_string()).unwrap_or_default(),
        }
    }
}

/// One check in progress: its plan, where its rows go, and the answers it waits for.
struct Run<'a> {
    plan: &'a Plan,
    started: Instant,
    deadline: Duration,
    out: mpsc::Sender<PreflightResult>,
    waiting: JoinSet<(Row, Answer)>,
    /// Makes the check's operation ids its own ([`Run::operation_id`]).
    nonce: String,
    /// Targets the active plan is upgrading now ([`busy`]): not asked.
    busy: HashMap<String, String>,
    /// The plan's charts (`None` for a repo plan), or why they cannot be had.
    charts: Result<Option<charts::PlanCharts>, String>,
}

impl Run<'_> {
    /// The id of this check's operation on `target`.
    fn operation_id(&self, target: Target) -> String {
        OperationId::preflight(&self.plan.name, &self.nonce, target).to_string()
    }

    /// Sends a row whose result is known without asking.
    async fn report(&self, row: Row, result: &str, step: &str, message: String) {
        let r = self.result(row, result, step.to_string(), message);
        let _ = self.out.send(r).await;
    }

    /// Waits (in the background, until the deadline) for `row`'s answer on `rx`.
    fn wait(&mut self, row: Row, rx: oneshot::Receiver<TaskResult>) {
        self.waiting.spawn(answer_within(row, rx, self.deadline));
    }

    fn result(&self, row: Row, result: &str, step: String, message: String) -> PreflightResult {
        PreflightResult {
            target: row.target,
            name: row.name,
            role: row.role.to_string(),
            reachable: row.reachable,
            current_version: row.version,
            current_status: row.status,
            result: result.to_string(),
            step,
            message,
            duration_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            plan: self.plan.name.clone(),
            version: self.plan.version.clone(),
        }
    }

    /// Sends each answer as it arrives, until all are in or the caller went away.
    async fn collect(mut self) {
        loop {
            let joined = tokio::select! {
                j = self.waiting.join_next() => j,
                // The caller went away: stop waiting (dropping the set ends the waits).
                () = self.out.closed() => return,
            };
            let Some(joined) = joined else {
                return;
            };
            let Ok((row, answer)) = joined else {
                continue; // a waiting task cannot panic; nothing to report if it did
            };
            let (result, step, message) = match answer {
                Answer::Passed(m) => ("passed", String::new(), m),
                Answer::Failed { step, message } => ("failed", step, message),
                Answer::Silent => (
                    "noAnswer",
                    String::new(),
                    "connected, but no answer before the deadline (is the agent busy or stuck?)"
                        .to_string(),
                ),
            };
            let r = self.result(row, result, step, message);
            if self.out.send(r).await.is_err() {
                return;
            }
        }
    }
}

impl<S: Store> Orchestrator<S> {
    /// Runs a fleet-wide preflight of `plan` and sends one result per cluster to `out` as each
    /// is known: offline clusters first, then answers in the order they arrive.
    pub async fn check(
        &self,
        plan: &Plan,
        deadline: Duration,
        out: mpsc::Sender<PreflightResult>,
    ) -> Result<()> {
        let started = Instant::now();
        let snap = self.snapshot(Some(plan)).await?;
        // Where the charts come from, as for the upgrade itself: a repo plan's clusters fetch
        // from the repository; a relay plan's charts are pulled once by the coordinator (the
        // cache answers when apply already did) and named by digest.
        let charts = match plan.chart_source {
            PlanSource::Repo => Ok(None),
            PlanSource::Relay => self.relay_charts(plan).await.map(Some),
        };
        let mut run = Run {
            plan,
            started,
            deadline,
            out,
            waiting: JoinSet::new(),
            nonce: self.checks.nonce(),
            busy: busy(&self.store).await,
            charts,
        };
        self.check_control_plane(&mut run, &snap).await;
        let asked = self.ask_workers(&mut run, &snap).await;
        tracing::info!(plan = %plan.name, asked = asked.len(), "preflight check sent");
        run.collect().await;
        for op in asked {
            self.checks.forget(&op);
        }
        Ok(())
    }

    /// The control plane's row: its preflight runs here, in-process.
    async fn check_control_plane(&self, run: &mut Run<'_>, snap: &Snapshot) {
        let row = Row::of(&snap.view.control_plane, "control-plane");
        if let Some(why) = run.busy.get(CONTROL_PLANE) {
            return run.report(row, "upgrading", "", why.clone()).await;
        }
        let Some(runner) = &self.runner else {
            let why = Error::NoControlPlane.to_string();
            return run.report(row, "failed", "preflight", why).await;
        };
        let source = match &run.charts {
            Ok(c) => charts::control_plane_source(run.plan, c.as_ref()),
            Err(why) => return run.report(row, "failed", "chart", why.clone()).await,
        };
        let mut spec = dispatch::control_plane_spec(run.plan, self.helm_timeout);
        if let Some(source) = source {
            spec.source = source;
        }
        let rx = control_plane_preflight(runner, spec, run.operation_id(Target::ControlPlane));
        run.wait(row, rx);
    }

    /// Sends the preflight task to every selected, connected worker, by name; reports the
    /// others at once. Returns the operation ids asked.
    async fn ask_workers(&self, run: &mut Run<'_>, snap: &Snapshot) -> Vec<String> {
        let plan = run.plan;
        let mut workers: Vec<_> = snap
            .view
            .workers
            .iter()
            .filter(|w| plan.selects(&w.release.name, &w.release.cluster_id, &w.labels))
            .collect();
        workers.sort_by(|a, b| a.release.name.cmp(&b.release.name));
        let mut asked = Vec::new();
        for w in workers {
            let id = w.release.cluster_id.clone();
            let mut row = Row::of(&w.release, "worker");
            let outlet = self.sessions.outlet(&id).filter(|_| w.release.connected);
            let Some(outlet) = outlet else {
                let why = "no session: not asked (offline is not failed)";
                run.report(row, "offline", "", why.into()).await;
                continue;
            };
            if let Some(why) = run.busy.get(&id) {
                run.report(row, "upgrading", "", why.clone()).await;
                continue;
            }
            let source = match &run.charts {
                Ok(c) => charts::worker_source(plan, c.as_ref()),
                Err(why) => {
                    run.report(row, "failed", "chart", why.clone()).await;
                    continue;
                }
            };
            let op = run.operation_id(Target::Worker(id.clone()));
            let task = preflight_task(plan, source, &op, self.helm_timeout, run.deadline);
            let rx = self.checks.wait_for(&op);
            let msg = CoordinatorMessage {
                body: Some(coordinator_message::Body::Task(task)),
            };
            if outlet.tx.send(Ok(msg)).await.is_err() {
                self.checks.forget(&op);
                row.reachable = false;
                let why = "the session ended as the check was sent";
                run.report(row, "offline", "", why.into()).await;
                continue;
            }
            asked.push(op);
            run.wait(row, rx);
        }
        asked
    }

    /// A relay plan's charts, pulled into (or found in) the relay cache, with apply's bounds.
    async fn relay_charts(&self, plan: &Plan) -> Result<charts::PlanCharts, String> {
        let runner = self.runner.as_ref().ok_or(
            "the coordinator has no control-plane cluster and no helm to pull the charts with",
        )?;
        let helm = Helm::detect(&runner.helm, &runner.kubeconfig)
            .await
            .map_err(|e| format!("helm: {e}"))?;
        charts::prepare(&helm, &self.data_dir, plan)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Targets the active plan is upgrading or rolling back right now, with a sentence for each.
/// Read from the store (saved before anything is sent), not from the orchestrator's state, so
/// a check never waits on, or holds up, the rollout.
async fn busy(store: &impl Store) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let active = match store.plans().await {
        Ok(plans) => plans.into_iter().find(|p| p.active),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the active plan for a check");
            None
        }
    };
    let Some(active) = active else {
        return out;
    };
    let Ok(rollout) = super::saved::joined(&active.name, &active.rollout) else {
        return out;
    };
    let targets = std::iter::once((CONTROL_PLANE, &rollout.control_plane))
        .chain(rollout.workers.iter().map(|(id, p)| (id.as_str(), p)));
    for (id, progress) in targets {
        let why = match &progress.state {
            TargetState::Running { operation_id, .. } => {
                format!("plan {} is upgrading it now ({operation_id})", active.name)
            }
            TargetState::RollingBack { operation_id, .. } => {
                format!(
                    "plan {} is rolling it back now ({operation_id})",
                    active.name
                )
            }
            _ => continue,
        };
        out.insert(id.to_string(), why);
    }
    out
}

/// The worker's task, as the rollout would send it, but of kind PREFLIGHT and with a start
/// deadline no later than the check's.
fn preflight_task(
    plan: &Plan,
    source: Option<pb::chart_source::Source>,
    op: &str,
    helm_timeout: Duration,
    deadline: Duration,
) -> pb::Task {
    let mut task = dispatch::worker_task(plan, op, None, helm_timeout);
    task.kind = TaskKind::Preflight as i32;
    task.start_deadline_unix = jiff::Timestamp::now().as_second()
        + i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX / 2);
    if let Some(source) = source {
        dispatch::set_source(&mut task, source);
    }
    task
}

/// Waits for `rx` until `deadline`.
async fn answer_within(
    row: Row,
    rx: oneshot::Receiver<TaskResult>,
    deadline: Duration,
) -> (Row, Answer) {
    let answer = match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(r)) => Answer::from_result(&r),
        // The sender was dropped: the check was forgotten (cannot happen before the deadline).
        Ok(Err(_)) | Err(_) => Answer::Silent,
    };
    (row, answer)
}

/// Runs the executor's preflight against the control plane on a thread of its own (the
/// executor's future is not `Send`); the answer comes back as a `TaskResult`.
fn control_plane_preflight(
    runner: &ControlPlaneRunner,
    spec: skoala_upgrade::ReleaseSpec,
    op: String,
) -> oneshot::Receiver<TaskResult> {
    let (tx, rx) = oneshot::channel();
    let runner = runner.clone();
    let spawned = std::thread::Builder::new()
        .name("control-plane-preflight".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(preflight_here(&runner, &op, &spec)),
                Err(e) => failed(&op, format!("cannot start a runtime: {e}")),
            };
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread for the control-plane preflight");
        // `tx` went with the closure that never ran: the receiver sees a dropped sender, which
        // reads as no answer.
    }
    rx
}

async fn preflight_here(
    runner: &ControlPlaneRunner,
    op: &str,
    spec: &skoala_upgrade::ReleaseSpec,
) -> TaskResult {
    let client = match dispatch::client(&runner.kubeconfig).await {
        Ok(c) => c,
        Err(e) => return failed(op, format!("control-plane cluster: {e:#}")),
    };
    let helm = match Helm::detect(&runner.helm, &runner.kubeconfig).await {
        Ok(h) => h,
        Err(e) => return failed(op, format!("helm: {e}")),
    };
    let executor = Executor::new(client, helm);
    // Progress is not shown by a check; drain it so the executor never waits on it.
    let (tx, mut rx) = mpsc::channel::<ProgressEvent>(64);
    let drain = async { while rx.recv().await.is_some() {} };
    let operation = Operation::new(op);
    let (report, ()) = tokio::join!(executor.preflight(&operation, spec, tx), drain);
    match report {
        Ok(r) => skoala_upgrade::wire::task_result(&r),
        Err(e) => failed(op, e.to_string()),
    }
}

fn failed(op: &str, message: String) -> TaskResult {
    TaskResult {
        operation_id: op.to_string(),
        outcome: TaskOutcome::Failed as i32,
        failed_step: "preflight".into(),
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skoala_proto::v1::{StepProgress, TaskAccepted};

    #[test]
    fn check_ids_never_look_like_a_plans_operations() {
        let checks = Checks::default();
        let op = |nonce: &str| OperationId::preflight("to-0-19-2", nonce, Target::ControlPlane);
        let nonce = checks.nonce();
        assert!(is_check(&op(&nonce).to_string()));
        // What the rollout sends: `<plan>.<target>.<kind>-<n>`; plan names hold no '_'.
        assert!(!is_check("to-0-19-2.control-plane.upgrade-1"));
        assert!(!is_check("preflight.abc.upgrade-1"));
        assert_ne!(
            op(&nonce),
            op(&checks.nonce()),
            "each check gets its own ids"
        );
    }

    #[test]
    fn answers_reach_their_check_and_never_the_rollout() {
        let checks = Checks::default();
        let op =
            OperationId::preflight("p", &checks.nonce(), Target::Worker("c1".into())).to_string();
        let mut rx = checks.wait_for(&op);
        let accepted = Body::TaskAccepted(TaskAccepted {
            operation_id: op.clone(),
        });
        let progress = Body::StepProgress(StepProgress {
            operation_id: op.clone(),
            ..Default::default()
        });
        assert!(checks.take("c1", &accepted));
        assert!(checks.take("c1", &progress));
        assert!(rx.try_recv().is_err(), "no result yet");
        let result = Body::TaskResult(TaskResult {
            operation_id: op.clone(),
            outcome: TaskOutcome::Succeeded as i32,
            ..Default::default()
        });
        assert!(checks.take("c1", &result));
        let got = rx.try_recv().expect("the result reached the check");
        assert!(matches!(Answer::from_result(&got), Answer::Passed(_)));
        // Late: consumed all the same.
        assert!(checks.take("c1", &result));
        // A plan's own result goes on to the orchestrator.
        let plan_result = Body::TaskResult(TaskResult {
            operation_id: "p.c1.upgrade-1".into(),
            ..Default::default()
        });
        assert!(!checks.take("c1", &plan_result));
    }

    #[test]
    fn a_cluster_cannot_answer_another_clusters_check() {
        let checks = Checks::default();
        let op =
            OperationId::preflight("p", &checks.nonce(), Target::Worker("c1".into())).to_string();
        let mut rx = checks.wait_for(&op);
        assert!(addressed_to(&op, "c1"));
        assert!(!addressed_to(&op, "c2"));
        assert!(!addressed_to("p.c1.upgrade-1", "c1"), "not a check");
        let forged = Body::TaskResult(TaskResult {
            operation_id: op.clone(),
            outcome: TaskOutcome::Succeeded as i32,
            ..Default::default()
        });
        assert!(checks.take("c2", &forged), "consumed, never the rollout's");
        assert!(rx.try_recv().is_err(), "and never the check's answer");
        assert!(checks.take("c1", &forged));
        assert!(rx.try_recv().is_ok(), "c1's own answer still counts");
    }

    #[test]
    fn a_refusal_names_its_step() {
        let r = TaskResult {
            outcome: TaskOutcome::Refused as i32,
            failed_step: "preflight".into(),
            message: "release skoala-init revision 2 is failed, not deployed".into(),
            ..Default::default()
        };
        match Answer::from_result(&r) {
            Answer::Failed { step, message } => {
                assert_eq!(step, "preflight");
                assert!(message.contains("failed, not deployed"));
            }
            other => panic!("{other:?}"),
        }
    }
}
