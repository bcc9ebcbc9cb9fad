//! The executor: the documented manual procedure as a verified, resumable, reversible run.
//!
//! One [`Executor::run`] takes one release through the steps of ARCHITECTURE.md, one method
//! each, driven by `Run::upgrade_operation`:
//!
//! ```text
//! preflight → chart → backup → CRDs → upgrade → CRDs (policy `after`) → verify
//! ```
//!
//! and on a failure once the upgrade has started, rollback. Preflight recovers first what a
//! crashed attempt left `pending-*`. Each step emits a `Started` and a `Finished`
//! [`ProgressEvent`]; the run ends in a [`Report`]. [`Executor::preflight`] stops after the
//! chart step; [`Executor::rollback`] is its own operation (`rollback`).
//!
//! Safety properties, and where they come from:
//! - *Nothing changes before preflight and chart pass*: those steps only read (and dry-run).
//!   The first write is the operation record; the second the backup.
//! - *No upgrade without a backup*: the upgrade step takes the [`Backup`] the backup step
//!   returned, which is also the `-f` file of the upgrade.
//! - *Idempotent*: a run whose operation id is recorded as finished reports the recorded
//!   outcome again and does nothing. A run that finds its own record `running` (a crash)
//!   reuses that attempt's backup and, if the release is `pending-*`, rolls it back first.
//! - *One operation at a time per release*: a Lease ([`crate::lock`]) held by the operation
//!   id and renewed while it runs; another operation is refused, a dead holder's lease
//!   expires, so recovery never rolls back a live helm.
//! - *No value in messages*: every message passes through a [`Redactor`] that knows the
//!   release's values.
//!
//! # Layout
//!
//! The steps are in `steps`, the state they share (events, report, record, lock) in `run`,
//! rollback in `recovery` (of a failed upgrade or a crashed attempt) and `rollback` (the
//! operation). All cluster access goes through `cluster::Cluster`, all helm runs through
//! [`RunHelm`]: the product passes kube-rs and a [`crate::helm::HelmSession`], the unit tests
//! (`tests`) a fake API and a fake helm.
//!
//! [`Redactor`]: crate::redact::Redactor

mod cluster;
mod recovery;
mod rollback;
mod run;
mod steps;
mod values;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::helm::{Helm, HelmError, RunHelm};
use crate::report::{Backup, ProgressEvent, Report};
use crate::spec::ReleaseSpec;

use cluster::{Cluster, Kube, Lock as _};
use run::Run;
use steps::Moment;

/// One operation: the id the caller (coordinator, agent) gave it. Re-running the same id is
/// safe; a new id is a new upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: String,
}

impl Operation {
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }
}

/// Errors that leave the executor unable to produce a trustworthy report. Nothing has been
/// changed in the cluster when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot prepare helm: {0}")]
    Helm(#[from] HelmError),
    /// The operation record could not be read or written, so the run could not be made
    /// idempotent; nothing was changed (the record is the first write).
    #[error("operation record of release {release}: {message}")]
    Record { release: String, message: String },
}

/// Runs upgrades with one helm against one cluster.
#[derive(Clone)]
pub struct Executor {
    client: kube::Client,
    helm: Helm,
    upload: Option<BackupUpload>,
}

/// Uploads a freshly stored backup (to the coordinator); an error fails the operation before
/// the upgrade starts. The error text is shown to operators: it must hold no values.
pub type BackupUpload =
    Arc<dyn Fn(Backup) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Executor {
    /// `client` and `helm`'s kubeconfig must point at the same cluster.
    pub fn new(client: kube::Client, helm: Helm) -> Self {
        Self {
            client,
            helm,
            upload: None,
        }
    }

    /// Makes every operation hand its backup to `upload` after storing it in the cluster and
    /// before any CRD or upgrade step; a failed upload fails the operation (nothing changed
    /// but the stored backup). This is how "no upgrade without an uploaded backup" holds.
    pub fn with_backup_upload(mut self, upload: BackupUpload) -> Self {
        self.upload = Some(upload);
        self
    }

    /// The helm this executor runs.
    pub fn helm(&self) -> &Helm {
        &self.helm
    }

    /// Runs `operation` on `spec`'s release, sending progress to `progress` (a closed channel
    /// is fine: events are then dropped). See the module docs for the steps.
    pub async fn run(
        &self,
        operation: &Operation,
        spec: &ReleaseSpec,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Report, ExecError> {
        self.run_mode(operation, spec, Mode::Upgrade, progress)
            .await
    }

    /// The checks of [`Executor::run`] and nothing else: the preflight step (spec, release
    /// deployed, helm, RBAC) and the chart step (fetch or verify the chart, dry-run its CRDs).
    /// Writes nothing — no operation record, no lock, no backup — so it may run any time, even
    /// while another operation holds the release. The outcome is `Succeeded` or `Refused`
    /// (with the failed step and why).
    pub async fn preflight(
        &self,
        operation: &Operation,
        spec: &ReleaseSpec,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Report, ExecError> {
        self.run_mode(operation, spec, Mode::Preflight, progress)
            .await
    }

    /// Returns `spec`'s release to `revision` (`None`: the newest earlier revision that was
    /// deployed) as an operation of its own, with the same guarantees as an upgrade: the
    /// operation record makes a re-delivery report the recorded outcome, the release lock
    /// keeps other operations out, and the values are backed up (and uploaded) before
    /// anything changes. Steps: preflight, backup, rollback (`helm rollback --wait`, after
    /// deleting `spec.delete_jobs`), verify (deployed at the target revision's chart version
    /// and image tags, workloads ready). Only the release, namespace, tag keys, Jobs and
    /// timeout of `spec` are used. `Succeeded` means rolled back and verified;
    /// `RollbackFailed` needs a human.
    pub async fn rollback(
        &self,
        operation: &Operation,
        spec: &ReleaseSpec,
        revision: Option<i32>,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Report, ExecError> {
        self.run_mode(operation, spec, Mode::Rollback(revision), progress)
            .await
    }

    async fn run_mode(
        &self,
        operation: &Operation,
        spec: &ReleaseSpec,
        mode: Mode,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Report, ExecError> {
        let session = self.helm.session()?;
        let cluster = Kube {
            client: self.client.clone(),
        };
        let upload = self.upload.clone();
        execute(&cluster, &session, upload, operation, spec, mode, progress).await
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Upgrade,
    /// Preflight and chart steps only; writes nothing.
    Preflight,
    /// Roll back to this revision (`None`: the previous deployed one).
    Rollback(Option<i32>),
}

/// Why a run stopped before its last step.
#[derive(Debug)]
enum Halt {
    /// The operation ended and the report says how: refused, failed, rolled back, or found
    /// done already.
    Reported,
    /// No trustworthy report could be made.
    Error(ExecError),
}

impl From<ExecError> for Halt {
    fn from(e: ExecError) -> Self {
        Halt::Error(e)
    }
}

/// Runs one operation against `cluster` with `helm`: what [`Executor`] does with the real
/// ones, and the unit tests with fakes.
async fn execute<C: Cluster, H: RunHelm>(
    cluster: &C,
    helm: &H,
    upload: Option<BackupUpload>,
    operation: &Operation,
    spec: &ReleaseSpec,
    mode: Mode,
    progress: mpsc::Sender<ProgressEvent>,
) -> Result<Report, ExecError> {
    let mut run = Run::new(cluster, helm, spec, &operation.id, mode, upload, progress);
    let result = match mode {
        Mode::Rollback(revision) => run.rollback_operation(revision).await,
        Mode::Upgrade | Mode::Preflight => run.upgrade_operation().await,
    };
    if let Some(lock) = run.lock.take() {
        lock.release().await;
    }
    match result {
        Ok(()) | Err(Halt::Reported) => Ok(run.report),
        Err(Halt::Error(e)) => Err(e),
    }
}

impl<C: Cluster, H: RunHelm> Run<'_, C, H> {
    /// The driver of an upgrade (and of a preflight, which stops after the chart step). Each
    /// step returns what the next one needs, or [`Halt`] once the report says how it ended.
    async fn upgrade_operation(&mut self) -> Result<(), Halt> {
        let ready = self.preflight().await?;
        let chart = self.chart().await?;
        if self.mode == Mode::Preflight {
            self.preflight_passed(&chart);
            return Ok(());
        }
        let version = self.spec.version.clone();
        self.open_record(ready.earlier.as_ref(), &version).await?;
        let backup = self.backup().await?;
        self.crds(&chart, Moment::BeforeUpgrade).await?;
        self.upgrade(&chart, &backup).await?;
        self.crds(&chart, Moment::AfterUpgrade).await?;
        let verified = self.verify().await?;
        self.succeeded(verified).await;
        Ok(())
    }
}

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(Into::into).collect()
}
