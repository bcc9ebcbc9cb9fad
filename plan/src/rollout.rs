//! The rollout of one plan as a pure state machine: given the plan, the fleet as the coordinator
//! sees it now, and the results so far, which upgrades start next.
//!
//! The coordinator owns all I/O. It calls [`Rollout::step`] whenever anything changes (a result,
//! an inventory, a connection, the clock); a step records what starts in the rollout itself (a
//! target `Running` or `RollingBack`, with its operation id). The coordinator persists the
//! rollout, and only *then* sends what it has in flight ([`Rollout::in_flight`]) and its agent
//! has not received yet, so a crash between the two re-sends rather than forgets (invariant 2).
//! The operation ids are deterministic, which makes a re-send harmless: the executor recognises
//! an operation it already finished.
//!
//! The order is DESIGN.md's (invariant 5): the control plane first; if it fails, no worker is
//! touched. Then the canaries, alone; a failed canary pauses the plan. Then the rest, at most
//! `maxConcurrency` at a time; more than `maxFailures` failures pause the plan. A cluster
//! starts only when it is connected and its window is open with room for the expected duration
//! (invariant 4); one that is offline is *offline*, not failed, and with `convergence: auto` it
//! is upgraded when it comes back, like a cluster that joins later. A plan is `Succeeded` only
//! when every selected cluster reports the target version, healthy; otherwise `Degraded`, with
//! the reason per cluster.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::operation::OperationId;
use crate::profile::Profile;
use crate::skew::{ClusterRelease, release_problems};
pub use crate::target::Target;
use crate::validate::{Approval, Convergence, Plan};
use crate::window::StartDecision;

mod split;
pub use split::{Carried, RolloutHead, TargetEntry, carry};

/// An operation the rollout started and has not seen finish: what the coordinator must have
/// running. The rollout as persisted is the whole truth of it, so the same list serves right
/// after a step, after an agent reconnects, and after the coordinator restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InFlight {
    Upgrade {
        target: Target,
        operation_id: String,
    },
    Rollback {
        target: Target,
        operation_id: String,
        /// The revision it returns to; `None` in rollouts stored before it was recorded (the
        /// executor then returns to the previous revision).
        to_revision: Option<i32>,
    },
}

impl InFlight {
    pub fn target(&self) -> &Target {
        match self {
            InFlight::Upgrade { target, .. } | InFlight::Rollback { target, .. } => target,
        }
    }

    pub fn operation_id(&self) -> &str {
        match self {
            InFlight::Upgrade { operation_id, .. } | InFlight::Rollback { operation_id, .. } => {
                operation_id
            }
        }
    }

    /// The one of `target` in `state`, if it is in flight.
    pub fn of(target: Target, state: &TargetState) -> Option<InFlight> {
        match state {
            TargetState::Running { operation_id, .. } => Some(InFlight::Upgrade {
                target,
                operation_id: operation_id.clone(),
            }),
            TargetState::RollingBack {
                operation_id,
                to_revision,
                ..
            } => Some(InFlight::Rollback {
                target,
                operation_id: operation_id.clone(),
                to_revision: *to_revision,
            }),
            _ => None,
        }
    }
}

/// Where the plan as a whole stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// Upgrading `skoala` in the control plane (or waiting for its window).
    ControlPlane,
    /// Waiting for `skoalactl plan approve` before stage `stage` (0 = the canaries).
    AwaitingApproval {
        stage: u32,
    },
    /// Upgrading working clusters (or waiting for their windows).
    Workers,
    /// Stopped starting new upgrades; in-flight ones finish.
    Paused {
        reason: String,
        /// Who paused it, which decides what may lift the pause (see [`PauseOrigin`]).
        #[serde(default)]
        origin: PauseOrigin,
    },
    /// Every selected cluster is on the target version, healthy.
    Succeeded,
    /// Done with what it could do; some clusters are not on the target version. With
    /// `convergence: auto` the plan keeps upgrading them as they come back.
    Degraded {
        reason: String,
    },
    /// The control plane could not be upgraded; no worker was touched.
    Failed {
        reason: String,
    },
    Aborted,
    /// `plan rollback`: workers first, then the control plane.
    RollingBack,
    RolledBack,
}

/// Who or what paused a plan. `skoalactl plan resume` (and the `fleet.skoala.io/resume`
/// annotation) lifts any pause and acknowledges the failures so far; the level annotation
/// `fleet.skoala.io/paused` only lifts the pauses a human asked for, so that a manifest in git
/// saying `paused: "false"` never overrides the failure budget or a failed canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PauseOrigin {
    /// `skoalactl plan pause`. The default for rollouts stored before the origin was: lifting
    /// such a pause as an operator's is safe, because lifting one does not acknowledge failures,
    /// so a pause that was really the budget's or a canary's comes back at the next step.
    #[default]
    Operator,
    /// More clusters failed than `maxFailures` allows.
    Budget,
    /// A canary failed.
    Canary,
    /// The `fleet.skoala.io/paused: "true"` annotation on the plan's object.
    Annotation,
}

impl PauseOrigin {
    /// Whether a human asked for the pause, so that a human's "not paused" lifts it.
    pub fn is_requested(self) -> bool {
        matches!(self, PauseOrigin::Operator | PauseOrigin::Annotation)
    }

    /// Who paused, for messages (`the failure budget`).
    pub fn describe(self) -> &'static str {
        match self {
            PauseOrigin::Operator => "an operator",
            PauseOrigin::Budget => "the failure budget",
            PauseOrigin::Canary => "a failed canary",
            PauseOrigin::Annotation => "the fleet.skoala.io/paused annotation",
        }
    }
}

/// A [`Phase`] without its details: the one vocabulary of phase names, as the store (the
/// serde tag of [`Phase`]), the admin API, the event log, the metrics and `skoalactl` spell
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseKind {
    ControlPlane,
    AwaitingApproval,
    Workers,
    Paused,
    Succeeded,
    Degraded,
    Failed,
    Aborted,
    RollingBack,
    RolledBack,
}

impl PhaseKind {
    /// Every phase, in the order a rollout meets them.
    pub const ALL: [PhaseKind; 10] = [
        PhaseKind::ControlPlane,
        PhaseKind::AwaitingApproval,
        PhaseKind::Workers,
        PhaseKind::Paused,
        PhaseKind::Succeeded,
        PhaseKind::Degraded,
        PhaseKind::Failed,
        PhaseKind::Aborted,
        PhaseKind::RollingBack,
        PhaseKind::RolledBack,
    ];

    /// The name on the wire and in the store (`controlPlane`, `awaitingApproval`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::ControlPlane => "controlPlane",
            PhaseKind::AwaitingApproval => "awaitingApproval",
            PhaseKind::Workers => "workers",
            PhaseKind::Paused => "paused",
            PhaseKind::Succeeded => "succeeded",
            PhaseKind::Degraded => "degraded",
            PhaseKind::Failed => "failed",
            PhaseKind::Aborted => "aborted",
            PhaseKind::RollingBack => "rollingBack",
            PhaseKind::RolledBack => "rolledBack",
        }
    }

    /// The phase in words, for messages (`upgrading the control plane`).
    pub fn describe(self) -> &'static str {
        match self {
            PhaseKind::ControlPlane => "upgrading the control plane",
            PhaseKind::AwaitingApproval => "awaiting approval",
            PhaseKind::Workers => "upgrading workers",
            PhaseKind::Paused => "paused",
            PhaseKind::Succeeded => "succeeded",
            PhaseKind::Degraded => "degraded",
            PhaseKind::Failed => "failed",
            PhaseKind::Aborted => "aborted",
            PhaseKind::RollingBack => "rolling back",
            PhaseKind::RolledBack => "rolled back",
        }
    }

    /// Finished: the rollout did what it could, or was stopped. A new plan may take the place
    /// of a finished one, and `skoalactl plan watch` stops waiting. `succeeded` and `degraded`
    /// are finished but not [terminal](PhaseKind::is_terminal): with `convergence: auto` they
    /// still upgrade clusters that return or join, until superseded.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            PhaseKind::Succeeded
                | PhaseKind::Degraded
                | PhaseKind::Failed
                | PhaseKind::Aborted
                | PhaseKind::RolledBack
        )
    }

    /// Terminal: no action will ever come from the rollout again, so it can be neither paused
    /// nor aborted. A subset of [finished](PhaseKind::is_finished).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PhaseKind::Failed | PhaseKind::Aborted | PhaseKind::RolledBack
        )
    }
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PhaseKind {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhaseKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.into()))
    }
}

/// A text that names no phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a plan phase")]
pub struct UnknownPhase(pub String);

impl Phase {
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::ControlPlane => PhaseKind::ControlPlane,
            Phase::AwaitingApproval { .. } => PhaseKind::AwaitingApproval,
            Phase::Workers => PhaseKind::Workers,
            Phase::Paused { .. } => PhaseKind::Paused,
            Phase::Succeeded => PhaseKind::Succeeded,
            Phase::Degraded { .. } => PhaseKind::Degraded,
            Phase::Failed { .. } => PhaseKind::Failed,
            Phase::Aborted => PhaseKind::Aborted,
            Phase::RollingBack => PhaseKind::RollingBack,
            Phase::RolledBack => PhaseKind::RolledBack,
        }
    }

    /// [`PhaseKind::as_str`] of this phase.
    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }

    /// [`PhaseKind::is_finished`] of this phase.
    pub fn is_finished(&self) -> bool {
        self.kind().is_finished()
    }

    /// [`PhaseKind::is_terminal`] of this phase.
    pub fn is_terminal(&self) -> bool {
        self.kind().is_terminal()
    }

    /// Why the plan stopped or fell short (paused, degraded, failed), as the phase records it.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Phase::Paused { reason, .. }
            | Phase::Degraded { reason }
            | Phase::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    /// What an operator must do for the plan to go on, in words; the one spelling every surface
    /// (the admin API, the event log, an `UpgradePlan`'s `status.waiting`) shows.
    pub fn awaiting(&self) -> Option<String> {
        match self {
            Phase::AwaitingApproval { stage: 0 } => {
                Some("approve the canaries: skoalactl plan approve".into())
            }
            Phase::AwaitingApproval { stage } => {
                Some(format!("approve wave {stage}: skoalactl plan approve"))
            }
            _ => None,
        }
    }
}

/// Why an operator's verb does not apply to the rollout as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("nothing to approve: the plan is {}", .0.describe())]
    NothingToApprove(PhaseKind),
    #[error("cannot pause: the plan is {}", .0.describe())]
    CannotPause(PhaseKind),
    #[error("cannot resume: the plan is {}, not paused", .0.describe())]
    NotPaused(PhaseKind),
    #[error("cannot abort: the plan is {}", .0.describe())]
    CannotAbort(PhaseKind),
    #[error("the plan is already rolled back or rolling back")]
    AlreadyRollingBack,
    #[error("upgrades are still running: pause the plan and wait for them to finish")]
    StillRunning,
    #[error("the plan was paused by {}: only an explicit resume, which acknowledges the failures, lifts it", .0.describe())]
    NeedsResume(PauseOrigin),
}

/// One cluster's progress within the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum TargetState {
    Pending,
    Running {
        operation_id: String,
        started: Timestamp,
    },
    /// Upgraded by this plan (or found already on the target version).
    Succeeded {
        revision_before: Option<i32>,
    },
    Failed {
        message: String,
    },
    /// Failed, then rolled back to its previous revision and verified.
    RolledBack {
        message: String,
    },
    RollingBack {
        operation_id: String,
        started: Timestamp,
        /// The revision it returns to, kept here so a coordinator restarted mid-rollback
        /// re-sends the same rollback (`None` only in rollouts stored before it was recorded:
        /// the executor then returns to the previous revision).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_revision: Option<i32>,
    },
    /// Returned to its previous revision by `plan rollback`.
    Reverted,
}

/// Which [`TargetState`] a target is in, without its details: what stores show (a printer
/// column, a field selector, a column of their own) and order writes by, spelled as the
/// state's serde tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum TargetPhase {
    /// Not started.
    Pending,
    /// Upgrading.
    Running,
    /// Upgraded.
    Succeeded,
    /// Failed.
    Failed,
    /// Failed, then rolled back.
    RolledBack,
    /// Returning to its previous revision.
    RollingBack,
    /// Returned to its previous revision by `plan rollback`.
    Reverted,
}

impl TargetPhase {
    /// Every phase, for parsing and tests.
    pub const ALL: [TargetPhase; 7] = [
        TargetPhase::Pending,
        TargetPhase::Running,
        TargetPhase::Succeeded,
        TargetPhase::Failed,
        TargetPhase::RolledBack,
        TargetPhase::RollingBack,
        TargetPhase::Reverted,
    ];

    /// The phase as [`TargetState`]'s serde tag spells it, which is also how stores write it.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetPhase::Pending => "pending",
            TargetPhase::Running => "running",
            TargetPhase::Succeeded => "succeeded",
            TargetPhase::Failed => "failed",
            TargetPhase::RolledBack => "rolledBack",
            TargetPhase::RollingBack => "rollingBack",
            TargetPhase::Reverted => "reverted",
        }
    }

    /// The phase spelled `s` by [`TargetPhase::as_str`].
    pub fn parse(s: &str) -> Option<TargetPhase> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether a target in this phase has an operation its agent may be running: a target
    /// entering it is stored only after the round's other targets (design `kube-store.md`
    /// §3.3), so a crash never leaves more stored as running than the rollout allowed.
    pub fn is_starting(self) -> bool {
        matches!(self, TargetPhase::Running | TargetPhase::RollingBack)
    }
}

impl From<&TargetState> for TargetPhase {
    fn from(state: &TargetState) -> Self {
        match state {
            TargetState::Pending => TargetPhase::Pending,
            TargetState::Running { .. } => TargetPhase::Running,
            TargetState::Succeeded { .. } => TargetPhase::Succeeded,
            TargetState::Failed { .. } => TargetPhase::Failed,
            TargetState::RolledBack { .. } => TargetPhase::RolledBack,
            TargetState::RollingBack { .. } => TargetPhase::RollingBack,
            TargetState::Reverted => TargetPhase::Reverted,
        }
    }
}

/// Per-target bookkeeping kept with the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub state: TargetState,
    /// Upgrade attempts so far (part of the operation id).
    pub attempts: u32,
    /// The stage it started in: 0 = canary, k = wave k. `None` before it starts.
    pub stage: Option<u32>,
}

impl Progress {
    /// The operation it is running (an upgrade or a rollback), if any.
    pub fn operation_id(&self) -> Option<&str> {
        match &self.state {
            TargetState::Running { operation_id, .. }
            | TargetState::RollingBack { operation_id, .. } => Some(operation_id),
            _ => None,
        }
    }

    fn pending() -> Self {
        Progress {
            state: TargetState::Pending,
            attempts: 0,
            stage: None,
        }
    }
}

/// The outcome of one operation, as the executor reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded { revision_before: Option<i32> },
    Failed { message: String },
    RolledBack { message: String },
}

/// A working cluster as the coordinator sees it right now.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub release: ClusterRelease,
    pub labels: BTreeMap<String, String>,
}

/// The fleet as the coordinator sees it right now.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub now: Timestamp,
    /// Expected duration of one upgrade (from history, else the plan's, else 10 min).
    pub expected: SignedDuration,
    pub control_plane: ClusterRelease,
    pub workers: Vec<WorkerView>,
}

/// The persisted state of one plan's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub plan: String,
    pub phase: Phase,
    pub control_plane: Progress,
    /// Working clusters by id, in the order they were enrolled.
    pub workers: Vec<(String, Progress)>,
    /// Stages the operator approved.
    pub approved: Vec<u32>,
    /// Failures the operator has seen and resumed past; the budget applies to new ones.
    pub failures_acknowledged: u32,
    /// Whether clusters are still being enrolled (always with `convergence: auto`).
    pub enrolled_once: bool,
    /// For a rollback: also roll back clusters whose window is closed.
    #[serde(default)]
    pub rollback_ignores_windows: bool,
    /// Whether the plan is being rolled back: a pause in the middle of a rollback resumes
    /// the rollback, never the upgrade (which would upgrade the clusters not reached yet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling_back: bool,
}

impl Rollout {
    pub fn new(plan: &Plan) -> Self {
        Rollout {
            plan: plan.name.clone(),
            phase: Phase::ControlPlane,
            control_plane: Progress::pending(),
            workers: Vec::new(),
            approved: Vec::new(),
            failures_acknowledged: 0,
            enrolled_once: false,
            rollback_ignores_windows: false,
            rolling_back: false,
        }
    }

    fn worker_mut(&mut self, id: &str) -> Option<&mut Progress> {
        self.workers
            .iter_mut()
            .find(|(w, _)| w == id)
            .map(|(_, p)| p)
    }

    /// How many worker upgrades failed (including those rolled back).
    pub fn failures(&self) -> u32 {
        self.workers
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.state,
                    TargetState::Failed { .. } | TargetState::RolledBack { .. }
                )
            })
            .count() as u32
    }

    /// Records an operation's outcome. Results for operations that are not running (a
    /// duplicate delivery, an old attempt) are ignored and `false` is returned.
    pub fn record(&mut self, target: &Target, operation_id: &str, outcome: Outcome) -> bool {
        let progress = match target {
            Target::ControlPlane => &mut self.control_plane,
            Target::Worker(id) => match self.worker_mut(id) {
                Some(p) => p,
                None => return false,
            },
        };
        match &progress.state {
            TargetState::Running {
                operation_id: op, ..
            } if op == operation_id => {
                progress.state = match outcome {
                    Outcome::Succeeded { revision_before } => {
                        TargetState::Succeeded { revision_before }
                    }
                    Outcome::Failed { message } => TargetState::Failed { message },
                    Outcome::RolledBack { message } => TargetState::RolledBack { message },
                };
                true
            }
            TargetState::RollingBack {
                operation_id: op, ..
            } if op == operation_id => {
                progress.state = match outcome {
                    Outcome::Succeeded { .. } => TargetState::Reverted,
                    Outcome::Failed { message } | Outcome::RolledBack { message } => {
                        TargetState::Failed {
                            message: format!("rollback failed: {message}"),
                        }
                    }
                };
                true
            }
            _ => false,
        }
    }

    pub fn approve(&mut self) -> Result<u32, TransitionError> {
        match self.phase {
            Phase::AwaitingApproval { stage } => {
                self.approved.push(stage);
                self.phase = Phase::Workers;
                Ok(stage)
            }
            ref other => Err(TransitionError::NothingToApprove(other.kind())),
        }
    }

    /// Stops starting new upgrades, for `reason`, recording who asked.
    pub fn pause(&mut self, reason: &str, origin: PauseOrigin) -> Result<(), TransitionError> {
        if self.phase.is_terminal() {
            return Err(TransitionError::CannotPause(self.phase.kind()));
        }
        self.phase = Phase::Paused {
            reason: reason.to_string(),
            origin,
        };
        Ok(())
    }

    /// Resumes a paused plan, whoever paused it. Failures so far are acknowledged: the budget
    /// counts new ones.
    pub fn resume(&mut self) -> Result<(), TransitionError> {
        if !matches!(self.phase, Phase::Paused { .. }) {
            return Err(TransitionError::NotPaused(self.phase.kind()));
        }
        self.failures_acknowledged = self.failures();
        self.phase = self.unpaused_phase();
        Ok(())
    }

    /// Lifts a pause a human asked for ([`PauseOrigin::is_requested`]) and acknowledges
    /// nothing: failures past the budget, or a failed canary, that happened while it was paused
    /// pause the plan again at the next step, this time for what they are. What a level "not
    /// paused" (`fleet.skoala.io/paused: "false"`) does; [`Rollout::resume`] is the explicit
    /// resume.
    pub fn unpause(&mut self) -> Result<(), TransitionError> {
        match self.phase {
            Phase::Paused { origin, .. } if origin.is_requested() => {
                self.phase = self.unpaused_phase();
                Ok(())
            }
            Phase::Paused { origin, .. } => Err(TransitionError::NeedsResume(origin)),
            ref other => Err(TransitionError::NotPaused(other.kind())),
        }
    }

    /// Where a paused plan goes on: its rollback if one was started, else the workers once the
    /// control plane is done.
    fn unpaused_phase(&self) -> Phase {
        if self.rolling_back {
            Phase::RollingBack
        } else if matches!(self.control_plane.state, TargetState::Succeeded { .. }) {
            Phase::Workers
        } else {
            Phase::ControlPlane
        }
    }

    pub fn abort(&mut self) -> Result<(), TransitionError> {
        if self.phase.is_terminal() {
            return Err(TransitionError::CannotAbort(self.phase.kind()));
        }
        self.phase = Phase::Aborted;
        Ok(())
    }

    /// Starts returning every upgraded cluster to its previous revision: workers first, then the
    /// control plane.
    pub fn start_rollback(&mut self, ignore_windows: bool) -> Result<(), TransitionError> {
        if matches!(self.phase, Phase::RollingBack | Phase::RolledBack) {
            return Err(TransitionError::AlreadyRollingBack);
        }
        let running = self
            .workers
            .iter()
            .any(|(_, p)| matches!(p.state, TargetState::Running { .. }))
            || matches!(self.control_plane.state, TargetState::Running { .. });
        if running {
            return Err(TransitionError::StillRunning);
        }
        self.phase = Phase::RollingBack;
        self.rollback_ignores_windows = ignore_windows;
        self.rolling_back = true;
        Ok(())
    }

    /// Every operation in flight: the control plane's first, then the workers' in order.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let cp = InFlight::of(Target::ControlPlane, &self.control_plane.state);
        let workers = self
            .workers
            .iter()
            .filter_map(|(id, p)| InFlight::of(Target::Worker(id.clone()), &p.state));
        cp.into_iter().chain(workers).collect()
    }

    /// Decides what starts now and records it in the rollout (see [`Rollout::in_flight`]).
    /// Call after every change; persist; then act.
    pub fn step(&mut self, plan: &Plan, profile: &Profile, fleet: &FleetView) {
        if plan.convergence == Convergence::Auto || !self.enrolled_once {
            self.enroll(plan, fleet);
        }
        match self.phase.clone() {
            Phase::ControlPlane => self.step_control_plane(plan, profile, fleet),
            Phase::Workers | Phase::Succeeded | Phase::Degraded { .. } => {
                self.step_workers(plan, profile, fleet)
            }
            Phase::RollingBack => self.step_rollback(plan, fleet),
            Phase::AwaitingApproval { .. }
            | Phase::Paused { .. }
            | Phase::Failed { .. }
            | Phase::Aborted
            | Phase::RolledBack => {}
        }
    }

    /// Adds newly selected clusters (late joiners included) in name order.
    fn enroll(&mut self, plan: &Plan, fleet: &FleetView) {
        // A set, not a search per cluster: this runs on every step, and a linear search made
        // it quadratic (10^8 comparisons per step at 10,000 clusters).
        let known: std::collections::HashSet<&str> =
            self.workers.iter().map(|(id, _)| id.as_str()).collect();
        let mut new: Vec<&WorkerView> = fleet
            .workers
            .iter()
            .filter(|w| plan.selects(&w.release.name, &w.release.cluster_id, &w.labels))
            .filter(|w| !known.contains(w.release.cluster_id.as_str()))
            .collect();
        new.sort_by(|a, b| a.release.name.cmp(&b.release.name));
        for w in new {
            self.workers
                .push((w.release.cluster_id.clone(), Progress::pending()));
        }
        self.enrolled_once = true;
    }

    fn step_control_plane(&mut self, plan: &Plan, profile: &Profile, fleet: &FleetView) {
        match &self.control_plane.state {
            TargetState::Pending => {
                if at_target(
                    &fleet.control_plane,
                    plan,
                    profile.control_plane.image_tag_keys,
                ) {
                    self.control_plane.state = TargetState::Succeeded {
                        revision_before: None,
                    };
                    return self.after_control_plane(plan, profile, fleet);
                }
                if !fleet.control_plane.connected {
                    return;
                }
                let may_start = match &plan.window {
                    None => true,
                    Some(w) => matches!(
                        w.decide(fleet.now, fleet.expected),
                        StartDecision::Start { .. }
                    ),
                };
                if !may_start {
                    return;
                }
                self.control_plane.attempts += 1;
                let operation_id = OperationId::upgrade(
                    &self.plan,
                    Target::ControlPlane,
                    self.control_plane.attempts,
                );
                self.control_plane.state = TargetState::Running {
                    operation_id: operation_id.to_string(),
                    started: fleet.now,
                };
                self.control_plane.stage = Some(0);
            }
            TargetState::Running { .. } => {}
            TargetState::Succeeded { .. } => self.after_control_plane(plan, profile, fleet),
            TargetState::Failed { message } | TargetState::RolledBack { message } => {
                self.phase = Phase::Failed {
                    reason: format!(
                        "the control plane upgrade failed, no worker was touched: {message}"
                    ),
                };
            }
            TargetState::RollingBack { .. } | TargetState::Reverted => {}
        }
    }

    fn after_control_plane(&mut self, plan: &Plan, profile: &Profile, fleet: &FleetView) {
        self.phase = Phase::Workers;
        self.step_workers(plan, profile, fleet)
    }

    fn needs_approval(&self, plan: &Plan, stage: u32) -> bool {
        let required = match plan.require_approval {
            Approval::None => false,
            // The first worker stage: the canaries, or wave 1 when there are none.
            Approval::BeforeWorkers => stage == u32::from(plan.canary == 0),
            Approval::BeforeEachWave => true,
        };
        required && !self.approved.contains(&stage)
    }

    fn step_workers(&mut self, plan: &Plan, profile: &Profile, fleet: &FleetView) {
        let views: BTreeMap<&str, &WorkerView> = fleet
            .workers
            .iter()
            .map(|w| (w.release.cluster_id.as_str(), w))
            .collect();
        let keys = profile.worker.image_tag_keys;

        // Clusters already on the target version need no task (a late joiner on the new
        // version, or a re-run after a crash that finished the work).
        for (id, p) in &mut self.workers {
            if p.state == TargetState::Pending
                && let Some(v) = views.get(id.as_str())
                && at_target(&v.release, plan, keys)
            {
                p.state = TargetState::Succeeded {
                    revision_before: None,
                };
            }
        }

        let canary = plan.canary as usize;
        let failures = self.failures();
        let canary_failed = self.workers.iter().any(|(_, p)| {
            p.stage == Some(0)
                && matches!(
                    p.state,
                    TargetState::Failed { .. } | TargetState::RolledBack { .. }
                )
        });
        if failures > self.failures_acknowledged {
            if canary_failed && self.failures_acknowledged == 0 {
                self.phase = Phase::Paused {
                    reason: "a canary cluster failed; no other worker was started".into(),
                    origin: PauseOrigin::Canary,
                };
                return;
            }
            if failures - self.failures_acknowledged > plan.max_failures {
                self.phase = Phase::Paused {
                    reason: format!(
                        "{} clusters failed, more than maxFailures={}",
                        failures - self.failures_acknowledged,
                        plan.max_failures
                    ),
                    origin: PauseOrigin::Budget,
                };
                return;
            }
        }

        let started_canaries = self
            .workers
            .iter()
            .filter(|(_, p)| p.stage == Some(0))
            .count();
        // Failed canaries were dealt with above (pause, or acknowledged by a resume).
        let canaries_done = started_canaries >= canary.min(self.workers.len())
            && self
                .workers
                .iter()
                .filter(|(_, p)| p.stage == Some(0))
                .all(|(_, p)| !matches!(p.state, TargetState::Running { .. }));
        let concurrency = plan.max_concurrency.resolve(self.workers.len());
        let mut in_flight = self
            .workers
            .iter()
            .filter(|(_, p)| matches!(p.state, TargetState::Running { .. }))
            .count();
        let started_after_canary = self
            .workers
            .iter()
            .filter(|(_, p)| p.stage.is_some_and(|s| s > 0))
            .count();

        let mut started_now = 0;
        let mut canaries_now = 0;
        let mut next_wave_index = started_after_canary;
        let plan_name = self.plan.clone();
        for i in 0..self.workers.len() {
            if self.workers[i].1.state != TargetState::Pending {
                continue;
            }
            let id = self.workers[i].0.clone();
            let Some(view) = views.get(id.as_str()) else {
                continue;
            };
            if !view.release.connected {
                continue;
            }
            match plan.window_for(&view.labels) {
                Ok(None) => {}
                Ok(Some(w)) => {
                    if !matches!(
                        w.decide(fleet.now, fleet.expected),
                        StartDecision::Start { .. }
                    ) {
                        continue;
                    }
                }
                Err(_) => continue,
            }
            // Which stage would this start in?
            let stage = if started_canaries + canaries_now < canary {
                0
            } else {
                if !canaries_done {
                    break; // the canaries run alone
                }
                (next_wave_index / concurrency) as u32 + 1
            };
            if stage > 0 && plan.require_approval == Approval::BeforeEachWave {
                // A wave starts only when the previous one has finished.
                let prev_running = self.workers.iter().any(|(_, p)| {
                    p.stage == Some(stage - 1) && matches!(p.state, TargetState::Running { .. })
                });
                let first_of_stage = !self.workers.iter().any(|(_, p)| p.stage == Some(stage));
                if prev_running && first_of_stage {
                    break;
                }
            }
            if self.needs_approval(plan, stage) {
                if started_now == 0 && in_flight == 0 {
                    self.phase = Phase::AwaitingApproval { stage };
                }
                break;
            }
            let limit = if stage == 0 { canary } else { concurrency };
            if in_flight >= limit {
                break;
            }
            let p = &mut self.workers[i].1;
            p.attempts += 1;
            p.stage = Some(stage);
            let target = Target::Worker(id);
            let operation_id = OperationId::upgrade(&plan_name, target.clone(), p.attempts);
            p.state = TargetState::Running {
                operation_id: operation_id.to_string(),
                started: fleet.now,
            };
            in_flight += 1;
            started_now += 1;
            if stage == 0 {
                canaries_now += 1;
            } else {
                next_wave_index += 1;
            }
        }
        if matches!(self.phase, Phase::AwaitingApproval { .. }) {
            return;
        }
        self.settle(plan, keys, &views);
    }

    /// Decides Succeeded / Degraded / Workers once nothing more can start right now.
    fn settle(&mut self, plan: &Plan, keys: &[&str], views: &BTreeMap<&str, &WorkerView>) {
        let running = self
            .workers
            .iter()
            .any(|(_, p)| matches!(p.state, TargetState::Running { .. }));
        if running {
            self.phase = Phase::Workers;
            return;
        }
        let mut offline = Vec::new();
        let mut failed = Vec::new();
        let mut skewed = Vec::new();
        let mut waiting = 0;
        for (id, p) in &self.workers {
            let view = views.get(id.as_str());
            let name = view.map(|v| v.release.name.as_str()).unwrap_or(id.as_str());
            let connected = view.is_some_and(|v| v.release.connected);
            match &p.state {
                TargetState::Pending if !connected => offline.push(name.to_string()),
                TargetState::Pending => waiting += 1,
                TargetState::Failed { .. } | TargetState::RolledBack { .. } => {
                    failed.push(name.to_string())
                }
                // Reported success is not enough: the inventory must show it (invariant 3).
                TargetState::Succeeded { .. }
                    if !view.is_some_and(|v| at_target(&v.release, plan, keys)) =>
                {
                    skewed.push(name.to_string())
                }
                _ => {}
            }
        }
        self.phase = if waiting > 0 {
            // Connected clusters waiting for their window: the plan goes on in the next one.
            Phase::Workers
        } else if offline.is_empty() && failed.is_empty() && skewed.is_empty() {
            Phase::Succeeded
        } else {
            let mut parts = Vec::new();
            if !skewed.is_empty() {
                parts.push(format!(
                    "reported success but skewed: {}",
                    some_names(&skewed)
                ));
            }
            if !failed.is_empty() {
                parts.push(format!("failed: {}", some_names(&failed)));
            }
            if !offline.is_empty() {
                let then = if plan.convergence == Convergence::Auto {
                    " (upgraded in their next window when they return)"
                } else {
                    ""
                };
                parts.push(format!("offline: {}{then}", some_names(&offline)));
            }
            Phase::Degraded {
                reason: parts.join("; "),
            }
        };
    }

    fn step_rollback(&mut self, plan: &Plan, fleet: &FleetView) {
        let views: BTreeMap<&str, &WorkerView> = fleet
            .workers
            .iter()
            .map(|w| (w.release.cluster_id.as_str(), w))
            .collect();
        let concurrency = plan.max_concurrency.resolve(self.workers.len());
        let mut in_flight = self
            .workers
            .iter()
            .filter(|(_, p)| matches!(p.state, TargetState::RollingBack { .. }))
            .count();
        let plan_name = self.plan.clone();
        let ignore_windows = self.rollback_ignores_windows;
        let window_open = |labels: &BTreeMap<String, String>| {
            ignore_windows
                || match plan.window_for(labels) {
                    Ok(None) => true,
                    Ok(Some(w)) => matches!(
                        w.decide(fleet.now, fleet.expected),
                        StartDecision::Start { .. }
                    ),
                    Err(_) => false,
                }
        };
        for (id, p) in &mut self.workers {
            let TargetState::Succeeded {
                revision_before: Some(rev),
            } = p.state
            else {
                continue;
            };
            if in_flight >= concurrency {
                break;
            }
            let Some(view) = views.get(id.as_str()) else {
                continue;
            };
            if !view.release.connected || !window_open(&view.labels) {
                continue;
            }
            let target = Target::Worker(id.clone());
            let operation_id = OperationId::rollback(&plan_name, target.clone(), p.attempts);
            p.state = TargetState::RollingBack {
                operation_id: operation_id.to_string(),
                started: fleet.now,
                to_revision: Some(rev),
            };
            in_flight += 1;
        }
        let workers_left = self.workers.iter().any(|(_, p)| {
            matches!(
                p.state,
                TargetState::RollingBack { .. }
                    | TargetState::Succeeded {
                        revision_before: Some(_)
                    }
            )
        });
        if workers_left {
            return;
        }
        // Workers are back: now the control plane.
        match self.control_plane.state {
            TargetState::Succeeded {
                revision_before: Some(rev),
            } => {
                let cp_window = ignore_windows
                    || plan.window.as_ref().is_none_or(|w| {
                        matches!(
                            w.decide(fleet.now, fleet.expected),
                            StartDecision::Start { .. }
                        )
                    });
                if fleet.control_plane.connected && cp_window {
                    let operation_id = OperationId::rollback(
                        &plan_name,
                        Target::ControlPlane,
                        self.control_plane.attempts,
                    );
                    self.control_plane.state = TargetState::RollingBack {
                        operation_id: operation_id.to_string(),
                        started: fleet.now,
                        to_revision: Some(rev),
                    };
                }
            }
            TargetState::RollingBack { .. } => {}
            _ => self.phase = Phase::RolledBack,
        }
    }
}

/// How many names a phase's reason lists per kind: the reason is stored with the plan (one
/// object on the kube store, with a size limit) and read by a human, and neither wants ten
/// thousand names. The counts and `skoalactl plan get` give the rest.
pub const REASON_NAMES: usize = 20;

/// `names` joined with commas, the first [`REASON_NAMES`] of them, then `and N more`.
fn some_names(names: &[String]) -> String {
    let shown = names[..names.len().min(REASON_NAMES)].join(", ");
    match names.len().saturating_sub(REASON_NAMES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Whether a cluster already runs the plan's version, deployed, with matching tags.
fn at_target(r: &ClusterRelease, plan: &Plan, keys: &[&str]) -> bool {
    r.release.as_ref().is_some_and(|rel| {
        rel.chart_version == plan.version && release_problems(rel, keys).is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_phase_is_spelled_as_its_states_own_tag() {
        // Stores write the phase beside the state's JSON and read it back; people meet both
        // spellings in `kubectl get` and `plan get -o yaml`.
        let at = Timestamp::UNIX_EPOCH;
        let states = [
            TargetState::Pending,
            TargetState::Running {
                operation_id: "p.c.upgrade-1".into(),
                started: at,
            },
            TargetState::Succeeded {
                revision_before: None,
            },
            TargetState::Failed {
                message: "m".into(),
            },
            TargetState::RolledBack {
                message: "m".into(),
            },
            TargetState::RollingBack {
                operation_id: "p.c.rollback-1".into(),
                started: at,
                to_revision: None,
            },
            TargetState::Reverted,
        ];
        for state in &states {
            let tag = serde_json::to_value(state).expect("json")["state"].clone();
            let phase = TargetPhase::from(state);
            assert_eq!(tag, phase.as_str(), "{state:?}");
            assert_eq!(serde_json::to_value(phase).expect("json"), tag);
            assert_eq!(TargetPhase::parse(phase.as_str()), Some(phase));
        }
        assert_eq!(TargetPhase::ALL.len(), states.len(), "one phase per state");
    }

    fn with_details(kind: PhaseKind) -> Phase {
        let reason = "why".to_string();
        match kind {
            PhaseKind::ControlPlane => Phase::ControlPlane,
            PhaseKind::AwaitingApproval => Phase::AwaitingApproval { stage: 2 },
            PhaseKind::Workers => Phase::Workers,
            PhaseKind::Paused => Phase::Paused {
                reason,
                origin: PauseOrigin::Budget,
            },
            PhaseKind::Succeeded => Phase::Succeeded,
            PhaseKind::Degraded => Phase::Degraded { reason },
            PhaseKind::Failed => Phase::Failed { reason },
            PhaseKind::Aborted => Phase::Aborted,
            PhaseKind::RollingBack => Phase::RollingBack,
            PhaseKind::RolledBack => Phase::RolledBack,
        }
    }

    #[test]
    fn phase_names_are_the_stored_names() {
        for kind in PhaseKind::ALL {
            let phase = with_details(kind);
            assert_eq!(phase.kind(), kind);
            let stored = serde_json::to_value(&phase).expect("json");
            assert_eq!(stored["phase"], kind.as_str(), "{phase:?}");
            assert_eq!(kind.as_str().parse::<PhaseKind>(), Ok(kind));
        }
        assert!("rolled-back".parse::<PhaseKind>().is_err());
    }

    #[test]
    fn terminal_phases_are_finished_ones() {
        let names = |f: fn(PhaseKind) -> bool| -> Vec<&str> {
            PhaseKind::ALL
                .into_iter()
                .filter(|k| f(*k))
                .map(PhaseKind::as_str)
                .collect()
        };
        assert_eq!(
            names(PhaseKind::is_finished),
            ["succeeded", "degraded", "failed", "aborted", "rolledBack"]
        );
        assert_eq!(
            names(PhaseKind::is_terminal),
            ["failed", "aborted", "rolledBack"]
        );
    }

    #[test]
    fn transition_errors_read_as_before() {
        let cases = [
            (
                TransitionError::NothingToApprove(PhaseKind::Workers),
                "nothing to approve: the plan is upgrading workers",
            ),
            (
                TransitionError::CannotPause(PhaseKind::RolledBack),
                "cannot pause: the plan is rolled back",
            ),
            (
                TransitionError::NotPaused(PhaseKind::ControlPlane),
                "cannot resume: the plan is upgrading the control plane, not paused",
            ),
            (
                TransitionError::CannotAbort(PhaseKind::Aborted),
                "cannot abort: the plan is aborted",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }
}
