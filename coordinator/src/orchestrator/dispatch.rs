//! Turning operations in flight into work: a `Task` down an agent's session for a working
//! cluster, and an in-process `skoala_upgrade::Executor` run for the control plane. Either way
//! the outcome comes back to the orchestrator as a `TaskResult` (one code path for both).
//!
//! The loop decides *what* to send and *when* (after the rollout is stored, once per session);
//! [`Dispatch`] only hands it over, so the loop's tests can watch what it hands over, and when.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skoala_plan::profile::SKOALA;
use skoala_plan::{InFlight, Plan};
use skoala_proto::v1::{
    self as pb, ChartRepository, ChartSource, CoordinatorMessage, StepPhase, Task, TaskKind,
    TaskOutcome, TaskResult, agent_message::Body, coordinator_message,
};
use skoala_upgrade::{Executor, Helm, Operation, ProgressEvent};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::Input;
use super::fleet::CONTROL_PLANE;
use crate::backups::{self, Backups};
use crate::sessions::Sessions;

/// How work reaches its target.
pub trait Dispatch: Send + Sync + 'static {
    /// The session `cluster`'s agent is connected on now (`None`: offline).
    fn session(&self, cluster: &str) -> Option<u64>;

    /// Hands `task` to session `session` of `cluster` without waiting. `false` when that
    /// session has ended (the agent's next session gets the task).
    fn send(&self, cluster: &str, session: u64, task: Task) -> bool;

    /// Starts a control-plane operation in-process; its progress and exactly one result come
    /// back through `inbox`. `false` when this coordinator has no control plane to run it on.
    fn control_plane(
        &self,
        plan: &Plan,
        source: skoala_upgrade::ChartSource,
        operation_id: &str,
        rollback_to: Option<i32>,
        inbox: &mpsc::UnboundedSender<Input>,
    ) -> bool;
}

/// The coordinator's: agents' sessions, and the control-plane runner.
pub struct Dispatcher {
    pub sessions: Arc<Sessions>,
    /// `None`: no `--kubeconfig`, nothing to run the control plane's operations with.
    pub runner: Option<ControlPlaneRunner>,
}

impl Dispatch for Dispatcher {
    fn session(&self, cluster: &str) -> Option<u64> {
        self.sessions.session(cluster)
    }

    fn send(&self, cluster: &str, session: u64, task: Task) -> bool {
        let Some(outlet) = self
            .sessions
            .outlet(cluster)
            .filter(|o| o.session == session)
        else {
            return false;
        };
        let msg = CoordinatorMessage {
            body: Some(coordinator_message::Body::Task(task)),
        };
        // Never await one session: an agent whose 32 slots are full (a slow reader) would
        // hold up every task after it in the round. Its task waits for a slot on its own; if
        // that session ends first, the next session has another id and gets the task again.
        match outlet.tx.try_send(Ok(msg)) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                let tx = outlet.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn control_plane(
        &self,
        plan: &Plan,
        source: skoala_upgrade::ChartSource,
        operation_id: &str,
        rollback_to: Option<i32>,
        inbox: &mpsc::UnboundedSender<Input>,
    ) -> bool {
        let Some(runner) = &self.runner else {
            return false;
        };
        runner.spawn(
            plan,
            source,
            operation_id.to_string(),
            rollback_to,
            inbox.clone(),
        );
        true
    }
}

/// What the executor is asked to do for `op`: `None` upgrades, `Some(revision)` rolls back to
/// it (0: the previous revision).
pub fn rollback_to(op: &InFlight) -> Option<i32> {
    match op {
        InFlight::Upgrade { .. } => None,
        InFlight::Rollback { to_revision, .. } => Some(to_revision.unwrap_or(0)),
    }
}

/// An agent refuses to *start* a task delivered later than this after it was sent (a stale
/// re-delivery long after the window closed). Real time: the agent has no driven clock.
const START_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// The task for a working cluster's `skoala-init`.
pub fn worker_task(
    plan: &Plan,
    operation_id: &str,
    rollback_to: Option<i32>,
    helm_timeout: Duration,
) -> Task {
    let w = &SKOALA.worker;
    // The plan's repository; for a relay plan the caller puts the relayed chart in its place
    // ([`set_source`] with `super::charts::worker_source`).
    let source = pb::chart_source::Source::Repository(ChartRepository {
        name: plan.repository_name.clone(),
        url: plan.repository_url.clone(),
    });
    Task {
        operation_id: operation_id.to_string(),
        kind: if rollback_to.is_some() {
            TaskKind::Rollback
        } else {
            TaskKind::Upgrade
        } as i32,
        release: Some(pb::ReleaseSpec {
            release: w.release.into(),
            namespace: w.namespace.into(),
            chart_name: w.chart.into(),
            version: plan.version.clone(),
            source: Some(ChartSource {
                source: Some(source),
            }),
            image_tag_keys: w.image_tag_keys.iter().map(|k| k.to_string()).collect(),
            delete_jobs: w.delete_jobs.iter().map(|k| k.to_string()).collect(),
            timeout_seconds: i32::try_from(helm_timeout.as_secs()).unwrap_or(i32::MAX),
            keep_failed_release: !plan.rollback_on_failure,
            chart_sha256: plan.chart_digest(w.chart).unwrap_or_default(),
            ..Default::default()
        }),
        start_deadline_unix: jiff::Timestamp::now().as_second() + START_DEADLINE.as_secs() as i64,
        rollback_to_revision: rollback_to.unwrap_or_default(),
    }
}

/// Where `task`'s agent gets the chart: the plan's repository, or the relayed archive by digest.
pub fn set_source(task: &mut Task, source: pb::chart_source::Source) {
    if let Some(release) = task.release.as_mut() {
        release.source = Some(ChartSource {
            source: Some(source),
        });
    }
}

/// The executor's spec for the control plane's `skoala`.
pub(super) fn control_plane_spec(
    plan: &Plan,
    helm_timeout: Duration,
) -> skoala_upgrade::ReleaseSpec {
    let cp = &SKOALA.control_plane;
    let mut spec = skoala_upgrade::ReleaseSpec::new(
        cp.release,
        cp.namespace,
        skoala_upgrade::ChartSource::Repository {
            name: plan.repository_name.clone(),
            url: plan.repository_url.clone(),
        },
        plan.version.clone(),
    );
    spec.chart = cp.chart.to_string();
    spec.image_tag_keys = cp.image_tag_keys.iter().map(|k| k.to_string()).collect();
    spec.delete_jobs = cp.delete_jobs.iter().map(|k| k.to_string()).collect();
    spec.timeout = helm_timeout;
    spec.rollback_on_failure = plan.rollback_on_failure;
    spec.chart_sha256 = plan.chart_digest(cp.chart);
    spec
}

/// Where the control plane is and which helm upgrades it.
#[derive(Debug, Clone)]
pub struct ControlPlaneRunner {
    pub helm: PathBuf,
    pub kubeconfig: PathBuf,
    /// Bound on one `helm upgrade --wait` (and on its rollback).
    pub helm_timeout: Duration,
    /// Where the control plane's values backups are stored, like an agent's uploads.
    pub backups: Backups,
}

impl ControlPlaneRunner {
    /// Runs one control-plane operation on its own thread (the executor's future is not
    /// `Send`, and a long `helm upgrade --wait` must not occupy the server's runtime). Progress
    /// and exactly one result go to `inbox`. `source`: the plan's repository, or the relayed
    /// archive (`super::charts::control_plane_source`).
    pub fn spawn(
        &self,
        plan: &Plan,
        source: skoala_upgrade::ChartSource,
        operation_id: String,
        rollback_to: Option<i32>,
        inbox: mpsc::UnboundedSender<Input>,
    ) {
        let mut spec = control_plane_spec(plan, self.helm_timeout);
        spec.source = source;
        let this = self.clone();
        let name = format!("control-plane-{operation_id}");
        let fail_inbox = inbox.clone();
        let op = operation_id.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(this.run(&operation_id, &spec, rollback_to, &inbox)),
                Err(e) => failed(&operation_id, format!("cannot start a runtime: {e}")),
            };
            let _ = inbox.send(Input::ControlPlane(Body::TaskResult(result)));
        });
        if let Err(e) = spawned {
            let _ = fail_inbox.send(Input::ControlPlane(Body::TaskResult(failed(
                &op,
                format!("cannot start a thread for the control-plane upgrade: {e}"),
            ))));
        }
    }

    async fn run(
        &self,
        operation_id: &str,
        spec: &skoala_upgrade::ReleaseSpec,
        rollback_to: Option<i32>,
        inbox: &mpsc::UnboundedSender<Input>,
    ) -> TaskResult {
        let client = match client(&self.kubeconfig).await {
            Ok(c) => c,
            Err(e) => return failed(operation_id, format!("control-plane cluster: {e:#}")),
        };
        let helm = match Helm::detect(&self.helm, &self.kubeconfig).await {
            Ok(h) => h,
            Err(e) => return failed(operation_id, format!("helm: {e}")),
        };
        // No upgrade without a stored backup: the same rule as for an agent's upload.
        let executor = Executor::new(client, helm).with_backup_upload(backups::local_upload(
            self.backups.clone(),
            CONTROL_PLANE,
            operation_id,
            &spec.release,
        ));
        let (tx, mut rx) = mpsc::channel::<ProgressEvent>(64);
        let forward = async {
            while let Some(e) = rx.recv().await {
                let _ = inbox.send(Input::ControlPlane(Body::StepProgress(
                    skoala_upgrade::wire::step_progress(&e),
                )));
            }
        };
        let op = Operation::new(operation_id);
        let run = async {
            match rollback_to {
                Some(rev) => {
                    executor
                        .rollback(&op, spec, (rev > 0).then_some(rev), tx)
                        .await
                }
                None => executor.run(&op, spec, tx).await,
            }
        };
        let (report, ()) = tokio::join!(run, forward);
        match report {
            Ok(r) => skoala_upgrade::wire::task_result(&r),
            Err(e) => failed(operation_id, e.to_string()),
        }
    }
}

pub(super) async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn failed(operation_id: &str, message: String) -> TaskResult {
    TaskResult {
        operation_id: operation_id.to_string(),
        outcome: TaskOutcome::Failed as i32,
        message,
        ..Default::default()
    }
}

/// `StepPhase` in words for events.
pub fn step_phase(p: i32) -> &'static str {
    match StepPhase::try_from(p) {
        Ok(StepPhase::Started) => "started",
        Ok(StepPhase::Succeeded) => "succeeded",
        Ok(StepPhase::Failed) => "failed",
        Ok(StepPhase::Skipped) => "skipped",
        _ => "unknown",
    }
}

/// The plan's view of a result: `None` for outcomes that are not an end (CANCELLED is not
/// sent by this coordinator; treat anything unknown as a failure).
pub fn outcome(r: &TaskResult) -> (skoala_plan::Outcome, &'static str) {
    let message = describe(r);
    match TaskOutcome::try_from(r.outcome) {
        Ok(TaskOutcome::Succeeded) => (
            skoala_plan::Outcome::Succeeded {
                revision_before: (r.revision_before > 0).then_some(r.revision_before),
            },
            "succeeded",
        ),
        Ok(TaskOutcome::RolledBack) => (skoala_plan::Outcome::RolledBack { message }, "rolledBack"),
        Ok(TaskOutcome::RollbackFailed) => {
            (skoala_plan::Outcome::Failed { message }, "rollbackFailed")
        }
        Ok(TaskOutcome::Refused) => (skoala_plan::Outcome::Failed { message }, "refused"),
        _ => (skoala_plan::Outcome::Failed { message }, "failed"),
    }
}

/// "step upgrade: <helm's redacted message>; rollback: <...>".
fn describe(r: &TaskResult) -> String {
    let mut out = String::new();
    if !r.failed_step.is_empty() {
        out.push_str(&format!("step {}: ", r.failed_step));
    }
    out.push_str(&r.message);
    if !r.rollback_message.is_empty() {
        out.push_str(&format!("; rollback: {}", r.rollback_message));
    }
    out
}
