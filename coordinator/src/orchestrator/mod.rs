//! The fleet upgrade orchestrator: one task that drives the active plan's rollout, and the
//! plan side of the admin API.
//!
//! The rules live in `skoala_plan::Rollout` (a pure state machine); this module owns the I/O
//! around it. On every relevant change — a task result, step progress, an inventory, an agent
//! connecting or leaving, a tick of the (possibly driven) clock for windows — the loop:
//!
//! 1. records results into the rollout,
//! 2. steps the rollout against a fresh [`fleet::Snapshot`],
//! 3. persists what changed, per part (`saved.rs`): the head if it changed, then the clusters
//!    whose entry changed and start nothing, then those entering `running` or `rollingBack`
//!    (each on its own), then the round's events, and
//! 4. only then sends the work: every operation in flight (`Rollout::in_flight`) whose own
//!    entry the store holds and that is not yet delivered on its agent's *current* session
//!    gets its `Task` (again); a start goes out as soon as its own entry is stored, while the
//!    round's other starts are still being written. A crash between 3 and 4 re-sends rather
//!    than forgets; a reconnect re-sends too. The operation ids are deterministic and the executor is
//!    idempotent per id, so a duplicate is harmless (invariant 2). An operation whose write
//!    fails is not sent: it goes out with the next round that stores it.
//!
//! The control plane's own `skoala` is upgraded in-process with the executor
//! ([`dispatch::ControlPlaneRunner`]).
//!
//! # Layout
//!
//! - `run.rs`: the loop (load, rounds, persist, send), unit-tested with fakes in
//!   `run/tests.rs`;
//! - `saved.rs`: the rollout's parts as stored, and what a round must write;
//! - `admin.rs`: apply, the operator's verbs and the reads `skoalactl` makes, returning
//!   [`Error`] (`error.rs`), which the admin API maps to gRPC codes;
//! - [`check`]: `skoalactl plan check`, the fleet-wide preflight;
//! - `retain.rs`: retention, the sweep that deletes old audit entries, events, certificate
//!   records, relayed charts and values backups ([`Retention`]);
//! - `assigned.rs`: the operations each working cluster was given and has not finished, which
//!   are all its agent may report on ([`Orchestrator::sent_to`]);
//! - [`dispatch`]: how work reaches its target (`Dispatch`: a task down a session, a run of
//!   the control-plane runner); [`charts`]: a plan's charts, checked or
//!   relayed; [`fleet`]: the fleet view, kept between rounds; [`status`]: states in words, and
//!   the events of a step.

mod admin;
mod assigned;
pub mod charts;
pub mod check;
mod control;
pub mod dispatch;
mod error;
pub mod fleet;
mod retain;
mod run;
mod saved;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::SignedDuration;
use skoala_plan::validate::DEFAULT_EXPECTED_DURATION;
use skoala_plan::{Clock, Plan, Rollout};
use skoala_proto::v1::agent_message::Body;
use tokio::sync::{Notify, mpsc, watch};

use crate::backups::Backups;
use crate::control_plane::ControlPlane;
use crate::data_dir::DataDir;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
pub use admin::Verb;
use dispatch::{ControlPlaneRunner, Dispatch};
pub use error::{Error, Result};
use fleet::{FleetCache, Snapshot};
pub use retain::Retention;
use skoala_store::{Store, StoreError};

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
    /// The rollout's parts as last stored: a round writes what differs, and an operation is
    /// sent only once its own part is stored.
    saved: saved::Saved,
    /// A relay plan's charts (`None` for a repo plan, or while they are being prepared after
    /// a restart: its tasks wait for them).
    charts: Option<charts::PlanCharts>,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    delivery: Delivery,
    /// When the rollout was last stepped: progress-only rounds skip the step, but never for
    /// longer than a [`TICK`] (windows and deadlines are judged on the step).
    stepped: Option<std::time::Instant>,
}

/// What has reached its target: an operation is handed over once per agent session (once
/// per run for the control plane). Apart from [`Active`] so that a round can hand over each
/// start while it is storing the rest.
#[derive(Default)]
struct Delivery {
    /// Operation id → the agent session it was sent on.
    delivered: HashMap<String, u64>,
    /// Control-plane operation running in this process.
    cp_running: Option<String>,
    /// Operation id → when it was sent (real time, ms), for durations.
    sent_ms: HashMap<String, i64>,
}

/// What the orchestrator works with, handed in by `server`.
pub struct Parts<S> {
    pub store: S,
    /// Live sessions: who is connected, their inventories, where tasks go.
    pub sessions: Arc<Sessions>,
    /// The control plane's own inventory watch (`None`: no control-plane cluster).
    pub control_plane: Option<Arc<ControlPlane>>,
    /// How to upgrade the control plane (`None`: no `--kubeconfig`, plans are refused); apply
    /// and check run its helm.
    pub runner: Option<ControlPlaneRunner>,
    /// Where the loop's work goes ([`dispatch::Dispatcher`]: the sessions and the runner).
    pub dispatch: Arc<dyn Dispatch>,
    /// Relayed charts live there.
    pub data_dir: DataDir,
    /// Where values backups are kept (pruned by the retention sweep).
    pub backups: Backups,
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
    backups: Backups,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Bound on one `helm upgrade --wait` in a working cluster.
    helm_timeout: Duration,
    runner: Option<ControlPlaneRunner>,
    dispatch: Arc<dyn Dispatch>,
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
    /// The active plan's operations in flight per working cluster, as last stored.
    assigned: assigned::Assigned,
    /// Held through an apply: plans are created one at a time, so what an apply read of the
    /// stored plans stays true until it stores its own. Applies are rare; one waiting for
    /// another's chart check is fine.
    applying: tokio::sync::Mutex<()>,
    /// Operators' verbs let through [`Orchestrator::transition_recorded`]'s `record` so far:
    /// the GitOps reconciler evaluates an object only if none was recorded since it read it.
    verbs_recorded: std::sync::atomic::AtomicU64,
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
            backups: parts.backups,
            metrics: parts.metrics,
            clock: parts.clock,
            helm_timeout: parts.helm_timeout,
            runner: parts.runner,
            dispatch: parts.dispatch,
            state: Default::default(),
            fleet: Default::default(),
            wake: Notify::new(),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
            last_event: watch::channel(0).0,
            mean_upgrade: Mutex::new(None),
            checks: Default::default(),
            assigned: Default::default(),
            applying: Default::default(),
            verbs_recorded: Default::default(),
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

    /// Whether `cluster_id` may report on `operation_id` (progress, a result, a backup): a check
    /// addressed to that cluster, or an operation of the active plan in flight for it. The
    /// session drops (and audits) anything else, so another cluster's operation, a made-up
    /// one or a finished one never reaches the rollout, the store or `plan watch`.
    pub fn sent_to(&self, cluster_id: &str, operation_id: &str) -> bool {
        if check::is_check(operation_id) {
            return check::addressed_to(operation_id, cluster_id);
        }
        self.assigned.holds(cluster_id, operation_id)
    }

    /// A task message from an agent (accepted, progress, result), for an operation it was
    /// sent ([`Orchestrator::sent_to`]).
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

    /// The fleet as it is now, for callers outside the loop.
    async fn snapshot(&self, plan: Option<&Plan>) -> Result<Arc<Snapshot>, StoreError> {
        let expected = self.expected_or_default(plan).await;
        let mut fleet = self.fleet.lock().await;
        fleet
            .refresh(&self.sources(), self.clock.now(), expected)
            .await
    }

    async fn expected_or_default(&self, plan: Option<&Plan>) -> SignedDuration {
        match plan {
            Some(p) => self.expected(p).await,
            None => DEFAULT_EXPECTED_DURATION,
        }
    }
}

#[cfg(test)]
mod tests {
    use skoala_proto::v1::TaskResult;

    use super::*;

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
}
