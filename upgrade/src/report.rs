//! What an operation tells its caller: progress events while it runs, a report at the end.
//!
//! Both are built to be shown to operators and shipped over the wire as they are: every
//! message in them has been redacted (see [`crate::redact`]); the only values they carry are
//! the backup bytes, which are the point of [`Backup`] and are kept out of `Debug`.

use std::time::Duration;

/// The steps of an upgrade, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Recovering a release left `pending-*` by a crashed earlier attempt (rollback to the
    /// last deployed revision). Only runs when needed.
    Recover,
    /// helm version, release state, RBAC. Changes nothing.
    Preflight,
    /// Fetching the chart (repository) or verifying it (relayed `.tgz`), extracting its CRDs
    /// and dry-running them. Changes nothing in the cluster.
    Chart,
    /// `helm get values`, stored as a new backup Secret generation.
    Backup,
    /// Server-side apply of the chart's CRDs (before or after the upgrade, per policy).
    Crds,
    /// Deleting the immutable Jobs, then `helm upgrade --install ... --wait`.
    Upgrade,
    /// The release is deployed at the target version, workloads ready, image tags right.
    Verify,
    /// After a failure once the upgrade started: `helm rollback` and verify.
    Rollback,
}

impl Step {
    /// The step's name in events, metrics labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Recover => "recover",
            Step::Preflight => "preflight",
            Step::Chart => "chart",
            Step::Backup => "backup",
            Step::Crds => "crds",
            Step::Upgrade => "upgrade",
            Step::Verify => "verify",
            Step::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// It did what it is for.
    Succeeded,
    /// It failed; the operation stops (and rolls back once the upgrade started).
    Failed,
    /// It had nothing to do (no CRDs, nothing to recover, the policy says so).
    Skipped,
}

/// Whether an event opens or closes a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The step began.
    Started,
    /// The step ended (the event carries its outcome and duration).
    Finished,
}

/// One progress event. A step emits `Started`, then `Finished` with its outcome.
#[derive(Clone, Debug)]
pub struct ProgressEvent {
    /// The operation it belongs to.
    pub operation_id: String,
    /// Which step.
    pub step: Step,
    /// Begin or end.
    pub phase: Phase,
    /// When the event happened.
    pub at: jiff::Timestamp,
    /// `Finished` only: how long the step took.
    pub duration: Option<Duration>,
    /// `Finished` only.
    pub outcome: Option<StepOutcome>,
    /// The exit code of the step's main helm command, if it ran one.
    pub helm_exit_code: Option<i32>,
    /// The last lines of that command's stderr, redacted.
    pub stderr_tail: Option<String>,
    /// What happened, redacted.
    pub message: String,
    /// The `Finished` event of a successful backup step only: the backup just stored, so a
    /// caller can upload it before the upgrade starts (see also
    /// [`crate::Executor::with_backup_upload`], which makes that upload a condition).
    pub backup: Option<Backup>,
}

/// How the operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The release is deployed at the target version and verified healthy.
    Succeeded,
    /// Failed before the upgrade started: nothing was changed (except the backup and the
    /// operation record). Or failed after it with [`crate::ReleaseSpec::rollback_on_failure`]
    /// off: the release is left as helm left it.
    Failed,
    /// The upgrade failed; the release was rolled back and verified healthy.
    RolledBack,
    /// The upgrade failed and so did the rollback: a human is needed.
    RollbackFailed,
    /// Refused before anything changed (invalid spec, release missing or not deployed, chart
    /// checksum mismatch, chart not found, RBAC, another operation in flight).
    Refused,
}

impl Outcome {
    /// The outcome's name in events, metrics labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
            Outcome::Refused => "refused",
        }
    }
}

/// A values backup: what `helm get values -o yaml` printed before the upgrade.
#[derive(Clone, PartialEq, Eq)]
pub struct Backup {
    /// The Secret holding it, in the release namespace.
    pub secret: String,
    /// Its generation (1, 2, ...); never reused for a release.
    pub generation: u32,
    /// Lower-case hex sha256 of `values`.
    pub sha256: String,
    /// The values (YAML). May hold secrets: upload it, never print it.
    pub values: Vec<u8>,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("secret", &self.secret)
            .field("generation", &self.generation)
            .field("sha256", &self.sha256)
            .field("values", &format_args!("<{} bytes>", self.values.len()))
            .finish()
    }
}

/// How long one step took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepTiming {
    /// Which step.
    pub step: Step,
    /// How it ended.
    pub outcome: StepOutcome,
    /// How long it took.
    pub duration: Duration,
}

/// The end of an operation.
#[derive(Clone, Debug)]
pub struct Report {
    /// The operation.
    pub operation_id: String,
    /// The Helm release it was about.
    pub release: String,
    /// The release's namespace.
    pub namespace: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The step that failed (for every outcome but `Succeeded`).
    pub failed_step: Option<Step>,
    /// What happened, redacted. For `RolledBack`/`RollbackFailed`: the original failure.
    pub message: String,
    /// For `RolledBack`/`RollbackFailed`: how the rollback went, redacted.
    pub rollback_message: Option<String>,
    /// The release revision and chart version before and after.
    pub revision_before: Option<i32>,
    /// See `revision_before`.
    pub revision_after: Option<i32>,
    /// See `revision_before`.
    pub version_before: Option<String>,
    /// See `revision_before`.
    pub version_after: Option<String>,
    /// The values backup taken (or reused when the operation is retried).
    pub backup: Option<Backup>,
    /// The operation had already succeeded: nothing was done.
    pub already_done: bool,
    /// A release left `pending-*` by an earlier attempt was recovered first.
    pub recovered: bool,
    /// The helm that ran (`v4.1.4`).
    pub helm_version: String,
    /// Each finished step, in order.
    pub steps: Vec<StepTiming>,
}
