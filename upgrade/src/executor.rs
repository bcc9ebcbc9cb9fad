//! The executor: the documented manual procedure as a verified, resumable, reversible run.
//!
//! One [`Executor::run`] call takes one release through
//! recover (only if a crashed attempt left it `pending-*`) → preflight → chart → backup →
//! CRDs → upgrade → verify, and on a failure once the upgrade has started, rollback. Each step
//! emits a `Started` and a `Finished` [`ProgressEvent`]; the run ends in a [`Report`].
//!
//! Safety properties, and where they come from:
//! - *Nothing changes before preflight and chart pass*: those steps only read (and dry-run).
//!   The first write is the operation record; the second the backup.
//! - *No upgrade without a backup*: the upgrade step is only reached with a stored backup,
//!   which is also the `-f` file of the upgrade.
//! - *Idempotent*: a run whose operation id is recorded as finished reports the recorded
//!   outcome again and does nothing. A run that finds its own record `running` (a crash)
//!   reuses that attempt's backup and, if the release is `pending-*`, rolls it back first.
//! - *One operation at a time per release*: a Lease ([`crate::lock`]) held by the operation
//!   id and renewed while it runs; another operation is refused, a dead holder's lease
//!   expires, so recovery never rolls back a live helm.
//! - *No value in messages*: every message passes through a [`Redactor`] that knows the
//!   release's values.

mod recovery;
mod rollback;
mod values;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use skoala_plan::ReleaseStatus;
use tokio::sync::mpsc;

use crate::backup;
use crate::chart::{self, FetchedChart};
use crate::crds::{self, ChartCrd};
use crate::helm::{Helm, HelmError, HelmOutput, HelmSession, QUICK, timeout_flag};
use crate::inventory::{self, ReleaseInfo, TrackedRelease};
use crate::lock::ReleaseLock;
use crate::rbac;
use crate::record::{OperationRecord, RecordPhase, RecordStore};
use crate::redact::Redactor;
use crate::report::{Backup, Outcome, Phase, ProgressEvent, Report, Step, StepOutcome, StepTiming};
use crate::spec::{CrdPolicy, ReleaseSpec};
use crate::verify::{self, CustomKind, Expectation};

use values::{SecretFile, backup_values, overrides_yaml};

/// Lines and bytes of helm's stderr kept in events and reports.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;

/// How long deleted Jobs may take to disappear.
const JOB_DELETE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let mut run = Run {
            client: self.client.clone(),
            spec,
            session,
            progress,
            redactor: Redactor::default(),
            records: RecordStore::new(&self.client, &spec.namespace, &spec.release),
            record: None,
            report: Report {
                operation_id: operation.id.clone(),
                release: spec.release.clone(),
                namespace: spec.namespace.clone(),
                outcome: Outcome::Refused,
                failed_step: None,
                message: String::new(),
                rollback_message: None,
                revision_before: None,
                revision_after: None,
                version_before: None,
                version_after: None,
                backup: None,
                already_done: false,
                recovered: false,
                helm_version: self.helm.version().to_string(),
                steps: Vec::new(),
            },
            tags_before: BTreeMap::new(),
            custom_kinds: Vec::new(),
            lock: None,
            upload: self.upload.clone(),
            mode,
        };
        run.redactor.add_yaml(
            &serde_yaml::Value::Mapping(spec.extra_values.clone().unwrap_or_default()),
            &[spec.tag()],
        );
        let result = match mode {
            Mode::Rollback(revision) => run.go_rollback(revision).await,
            Mode::Upgrade | Mode::Preflight => run.go().await,
        };
        if let Some(lock) = run.lock.take() {
            lock.release().await;
        }
        result?;
        Ok(run.report)
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

/// The state of one run.
struct Run<'a> {
    client: kube::Client,
    spec: &'a ReleaseSpec,
    session: HelmSession,
    progress: mpsc::Sender<ProgressEvent>,
    redactor: Redactor,
    records: RecordStore,
    /// The record as this run last wrote it (or found it).
    record: Option<OperationRecord>,
    report: Report,
    /// Image tags before the upgrade (what a rollback must restore).
    tags_before: BTreeMap<String, String>,
    /// The kinds of the target chart's CRDs (verified for pruned fields).
    custom_kinds: Vec<CustomKind>,
    /// The release lock, held from after the idempotency check to the end of the run.
    lock: Option<ReleaseLock>,
    upload: Option<BackupUpload>,
    mode: Mode,
}

/// How a step ended, for [`Run::finish`].
struct Done<'h> {
    outcome: StepOutcome,
    message: String,
    helm: Option<&'h HelmOutput>,
}

impl Done<'_> {
    fn ok(message: impl Into<String>) -> Self {
        Done {
            outcome: StepOutcome::Succeeded,
            message: message.into(),
            helm: None,
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Done {
            outcome: StepOutcome::Failed,
            message: message.into(),
            helm: None,
        }
    }
    fn skipped(message: impl Into<String>) -> Self {
        Done {
            outcome: StepOutcome::Skipped,
            message: message.into(),
            helm: None,
        }
    }
}

impl<'a> Run<'a> {
    fn op_id(&self) -> &str {
        &self.report.operation_id
    }

    fn tracked(&self) -> TrackedRelease {
        TrackedRelease {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            image_tag_keys: self.spec.image_tag_keys.clone(),
        }
    }

    async fn emit(&self, event: ProgressEvent) {
        // A caller that stopped listening does not stop the upgrade.
        let _ = self.progress.send(event).await;
    }

    async fn start(&self, step: Step) -> Instant {
        tracing::info!(operation = self.op_id(), release = %self.spec.release, %step, "step started");
        self.emit(ProgressEvent {
            operation_id: self.op_id().to_string(),
            step,
            phase: Phase::Started,
            at: jiff::Timestamp::now(),
            duration: None,
            outcome: None,
            helm_exit_code: None,
            stderr_tail: None,
            message: String::new(),
            backup: None,
        })
        .await;
        Instant::now()
    }

    /// Emits the `Finished` event and records the timing; returns the redacted message.
    async fn finish(&mut self, step: Step, started: Instant, done: Done<'_>) -> String {
        let duration = started.elapsed();
        let message = self.redactor.redact(&done.message);
        let stderr_tail = done
            .helm
            .map(|h| self.redactor.tail(&h.stderr, TAIL_LINES, TAIL_BYTES))
            .filter(|t| !t.is_empty());
        tracing::info!(
            operation = self.op_id(), release = %self.spec.release, %step,
            outcome = ?done.outcome, ?duration, %message, "step finished"
        );
        self.report.steps.push(StepTiming {
            step,
            outcome: done.outcome,
            duration,
        });
        self.emit(ProgressEvent {
            operation_id: self.op_id().to_string(),
            step,
            phase: Phase::Finished,
            at: jiff::Timestamp::now(),
            duration: Some(duration),
            outcome: Some(done.outcome),
            helm_exit_code: done.helm.and_then(|h| h.code),
            stderr_tail: stderr_tail.clone(),
            message: message.clone(),
            backup: self
                .report
                .backup
                .clone()
                .filter(|_| step == Step::Backup && done.outcome == StepOutcome::Succeeded),
        })
        .await;
        match stderr_tail {
            Some(tail) if done.outcome == StepOutcome::Failed => format!("{message}: {tail}"),
            _ => message,
        }
    }

    /// Ends the run before anything changed.
    async fn refuse(&mut self, step: Step, started: Instant, done: Done<'_>) {
        let message = self.finish(step, started, done).await;
        self.report.outcome = Outcome::Refused;
        self.report.failed_step = Some(step);
        self.report.message = message;
    }

    async fn read_release(&self) -> Result<Option<ReleaseInfo>, String> {
        inventory::read_release(&self.client, &self.tracked())
            .await
            .map_err(|e| format!("reading release {}: {e}", self.spec.release))
    }

    async fn save_record(&mut self, record: OperationRecord) -> Result<(), ExecError> {
        self.records
            .save(&record)
            .await
            .map_err(|e| ExecError::Record {
                release: self.spec.release.clone(),
                message: self.redactor.redact(&e.to_string()),
            })?;
        self.record = Some(record);
        Ok(())
    }

    /// Updates the record's phase and message; a failure here is logged, not fatal: the
    /// cluster state is what it is, and the report says so.
    async fn close_record(&mut self, phase: RecordPhase) {
        let Some(mut record) = self.record.clone() else {
            return;
        };
        record.phase = phase;
        record.message = self.report.message.clone();
        if let Err(e) = self.records.save(&record).await {
            tracing::warn!(release = %self.spec.release, error = %self.redactor.redact(&e.to_string()),
                "could not update the operation record");
        } else {
            self.record = Some(record);
        }
    }

    /// The release's record, and the same if it is this operation's.
    async fn load_record(
        &mut self,
    ) -> Result<(Option<OperationRecord>, Option<OperationRecord>), ExecError> {
        let found = self.records.load().await.map_err(|e| ExecError::Record {
            release: self.spec.release.clone(),
            message: self.redactor.redact(&e.to_string()),
        })?;
        let ours = found
            .clone()
            .filter(|r| r.operation_id == self.report.operation_id);
        Ok((found, ours))
    }

    async fn go(&mut self) -> Result<(), ExecError> {
        // --- validation and idempotency ---------------------------------------------------
        let t = self.start(Step::Preflight).await;
        if let Err(e) = self.spec.validate() {
            self.refuse(Step::Preflight, t, Done::failed(e.to_string()))
                .await;
            return Ok(());
        }
        if self.mode == Mode::Preflight {
            // Read-only: no record, no lock; a release that is not deployed is a refusal.
            return match self.read_release().await {
                Ok(Some(info)) if info.status.is_deployed() => {
                    self.after_release_check(info, None, t).await
                }
                Ok(other) => {
                    let msg = match other {
                        Some(i) => format!(
                            "release {} revision {} is {}, not deployed",
                            self.spec.release, i.revision, i.status
                        ),
                        None => format!(
                            "release {} is not installed in namespace {}",
                            self.spec.release, self.spec.namespace
                        ),
                    };
                    self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                    Ok(())
                }
                Err(e) => {
                    self.refuse(Step::Preflight, t, Done::failed(e)).await;
                    Ok(())
                }
            };
        }
        let ours = match self.claim_release(t).await? {
            Claim::Proceed { ours } => ours,
            Claim::Finished => return Ok(()),
        };
        let found = self.record.clone();

        // --- preflight (and recovery of a crashed attempt) ---------------------------------
        let mut info = match self.read_release().await {
            Ok(Some(info)) => info,
            Ok(None) => {
                let msg = format!(
                    "release {} is not installed in namespace {}",
                    self.spec.release, self.spec.namespace
                );
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
            Err(e) => {
                self.refuse(Step::Preflight, t, Done::failed(e)).await;
                return Ok(());
            }
        };
        // A record still `running` (ours or another operation's) under a lock we now hold
        // means that operation's process died.
        let crashed = found.clone().filter(|r| r.phase == RecordPhase::Running);
        if !info.status.is_deployed() {
            let stuck = info.status.is_pending() || info.status == ReleaseStatus::Failed;
            let Some(record) = crashed.filter(|_| stuck) else {
                let msg = format!(
                    "release {} revision {} is {}, not deployed: another operation may be in \
                     progress, or a failed one needs a human (helm history / helm rollback)",
                    self.spec.release, info.revision, info.status
                );
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            };
            // Close preflight; recovery is its own step, then preflight runs again.
            self.finish(
                Step::Preflight,
                t,
                Done::failed(format!(
                    "release {} revision {} is {} after an interrupted operation: recovering",
                    self.spec.release, info.revision, info.status
                )),
            )
            .await;
            if !self.recover(&info, &record).await {
                return Ok(());
            }
            let t2 = self.start(Step::Preflight).await;
            info = match self.read_release().await {
                Ok(Some(info)) if info.status.is_deployed() => info,
                Ok(other) => {
                    let msg = format!(
                        "after recovery the release is {}",
                        other.map_or("gone".to_string(), |i| i.status.to_string())
                    );
                    self.refuse(Step::Preflight, t2, Done::failed(msg)).await;
                    return Ok(());
                }
                Err(e) => {
                    self.refuse(Step::Preflight, t2, Done::failed(e)).await;
                    return Ok(());
                }
            };
            return self.after_release_check(info, ours, t2).await;
        }
        if let Some(rec) = &ours
            && info.chart_version == self.spec.version
            && self.interrupted_after_success(rec, &info).await
        {
            let msg = self.report.message.clone();
            self.finish(Step::Preflight, t, Done::ok(msg)).await;
            return Ok(());
        }
        self.after_release_check(info, ours, t).await
    }

    /// The process died after helm succeeded but before the record said so: if the release
    /// is at the target and verifies healthy, the operation is done (no second upgrade).
    async fn interrupted_after_success(
        &mut self,
        rec: &OperationRecord,
        info: &ReleaseInfo,
    ) -> bool {
        let expect = Expectation {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            chart_version: self.spec.version.clone(),
            tags: self
                .spec
                .image_tag_keys
                .iter()
                .map(|k| (k.clone(), self.spec.tag()))
                .collect(),
            custom_kinds: Vec::new(),
        };
        if verify::check(&self.session, &self.client, &expect)
            .await
            .is_err()
        {
            return false;
        }
        self.report.revision_before = rec.revision_before;
        self.report.version_before = rec.version_before.clone();
        self.report.revision_after = Some(info.revision);
        self.report.version_after = Some(info.chart_version.clone());
        if let Some(g) = rec.backup_generation {
            self.report.backup =
                backup::list(&self.client, &self.spec.namespace, &self.spec.release)
                    .await
                    .ok()
                    .and_then(|all| all.into_iter().find(|s| s.backup.generation == g))
                    .map(|s| s.backup);
        }
        self.report.outcome = Outcome::Succeeded;
        self.report.message = format!(
            "an interrupted attempt of this operation had already upgraded {} to {}; verified \
             healthy",
            self.spec.release, self.spec.version
        );
        self.record = Some(rec.clone());
        self.close_record(RecordPhase::Succeeded).await;
        true
    }

    /// Idempotency and the release lock, as upgrades and rollbacks both need them: an
    /// operation whose record is already final reports that outcome again; otherwise the lock
    /// is taken (or the operation refused: another one holds it) and the release's record is
    /// re-read under the lock into `self.record`.
    async fn claim_release(&mut self, t: Instant) -> Result<Claim, ExecError> {
        let (_, ours) = self.load_record().await?;
        if let Some(rec) = &ours
            && rec.phase != RecordPhase::Running
        {
            self.already_done(rec.clone(), t).await?;
            return Ok(Claim::Finished);
        }
        match ReleaseLock::acquire(
            &self.client,
            &self.spec.namespace,
            &self.spec.release,
            &self.report.operation_id,
        )
        .await
        {
            Ok(lock) => self.lock = Some(lock),
            Err(e) => {
                self.refuse(Step::Preflight, t, Done::failed(e.to_string()))
                    .await;
                return Ok(Claim::Finished);
            }
        }
        let (found, ours) = self.load_record().await?;
        if let Some(rec) = &ours
            && rec.phase != RecordPhase::Running
        {
            self.already_done(rec.clone(), t).await?;
            return Ok(Claim::Finished);
        }
        self.record = found;
        Ok(Claim::Proceed { ours })
    }

    /// The operation id is recorded as finished: report that again, change nothing.
    async fn already_done(&mut self, rec: OperationRecord, t: Instant) -> Result<(), ExecError> {
        let info = self.read_release().await.ok().flatten();
        self.report.already_done = true;
        self.report.revision_before = rec.revision_before;
        self.report.version_before = rec.version_before.clone();
        self.report.revision_after = info.as_ref().map(|i| i.revision);
        self.report.version_after = info.as_ref().map(|i| i.chart_version.clone());
        if let Some(g) = rec.backup_generation {
            self.report.backup =
                backup::list(&self.client, &self.spec.namespace, &self.spec.release)
                    .await
                    .ok()
                    .and_then(|all| all.into_iter().find(|s| s.backup.generation == g))
                    .map(|s| s.backup);
        }
        self.report.outcome = match rec.phase {
            RecordPhase::Succeeded => Outcome::Succeeded,
            RecordPhase::Failed => Outcome::Failed,
            RecordPhase::RolledBack => Outcome::RolledBack,
            RecordPhase::RollbackFailed | RecordPhase::Running => Outcome::RollbackFailed,
        };
        let still_there = info
            .as_ref()
            .is_some_and(|i| i.status.is_deployed() && i.chart_version == rec.target_version);
        if rec.phase == RecordPhase::Succeeded && !still_there {
            // Someone changed the release since; report it, do not silently redo.
            self.report.outcome = Outcome::Refused;
            self.report.failed_step = Some(Step::Preflight);
            self.report.message = format!(
                "operation {} already succeeded, but the release is no longer deployed at {}: \
                 start a new operation to upgrade it again",
                rec.operation_id, rec.target_version
            );
        } else {
            if rec.phase != RecordPhase::Succeeded {
                self.report.failed_step = Some(Step::Upgrade);
            }
            self.report.message = format!(
                "operation {} already ran ({}): nothing to do. {}",
                rec.operation_id,
                rec.phase.as_str(),
                rec.message
            );
        }
        let msg = self.report.message.clone();
        self.finish(Step::Preflight, t, Done::skipped(msg)).await;
        Ok(())
    }

    async fn after_release_check(
        &mut self,
        info: ReleaseInfo,
        ours: Option<OperationRecord>,
        t: Instant,
    ) -> Result<(), ExecError> {
        // A retried attempt keeps the "before" of its first attempt.
        let first = ours.as_ref();
        self.report.revision_before = first
            .and_then(|r| r.revision_before)
            .or(Some(info.revision));
        self.report.version_before = first
            .and_then(|r| r.version_before.clone())
            .or(Some(info.chart_version.clone()));
        self.tags_before = info
            .image_tags
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        match rbac::missing(&self.client, self.spec).await {
            Ok(denied) if denied.is_empty() => {}
            Ok(denied) => {
                let msg = format!("missing permissions: {}", denied.join(", "));
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
            Err(e) => {
                let msg = format!("checking permissions (SelfSubjectAccessReview): {e}");
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
        }
        let msg = format!(
            "helm {}; release {} revision {} deployed at chart version {}",
            self.session.helm().version(),
            self.spec.release,
            info.revision,
            info.chart_version
        );
        self.finish(Step::Preflight, t, Done::ok(msg)).await;

        // --- chart ------------------------------------------------------------------------
        let t = self.start(Step::Chart).await;
        let chart = match chart::fetch(&self.session, self.spec).await {
            Ok(c) => c,
            Err(e) => {
                let done = Done {
                    outcome: StepOutcome::Failed,
                    message: e.message.clone(),
                    helm: e.helm.as_ref(),
                };
                self.refuse(Step::Chart, t, done).await;
                return Ok(());
            }
        };
        let crds = match crds::extract(&chart.bytes) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(Step::Chart, t, Done::failed(e.to_string()))
                    .await;
                return Ok(());
            }
        };
        if self.spec.crd_policy != CrdPolicy::Skip
            && let Err(e) = crds::apply(&self.client, &crds, true).await
        {
            let msg = format!("the server would not accept the chart's CRDs (dry run): {e}");
            self.refuse(Step::Chart, t, Done::failed(msg)).await;
            return Ok(());
        }
        let msg = format!(
            "chart {} {} (sha256 {}), {} CRD(s)",
            self.spec.chart,
            self.spec.version,
            chart.sha256,
            crds.len()
        );
        self.finish(Step::Chart, t, Done::ok(msg.clone())).await;
        if self.mode == Mode::Preflight {
            self.report.outcome = Outcome::Succeeded;
            self.report.message = format!("preflight passed: {msg}");
            return Ok(());
        }

        // --- the operation record: the first write ---------------------------------------
        let record = OperationRecord {
            operation_id: self.report.operation_id.clone(),
            phase: RecordPhase::Running,
            target_version: self.spec.version.clone(),
            attempt: ours.as_ref().map_or(1, |r| r.attempt + 1),
            revision_before: self.report.revision_before,
            version_before: self.report.version_before.clone(),
            backup_generation: ours.as_ref().and_then(|r| r.backup_generation),
            message: String::new(),
        };
        self.save_record(record).await?;

        self.changing(chart, crds).await;
        Ok(())
    }

    /// Backup, CRDs, upgrade, verify; rollback on failure. Sets the report's outcome.
    async fn changing(&mut self, chart: FetchedChart, crds: Vec<ChartCrd>) {
        self.custom_kinds = CustomKind::of(&crds);
        let Some(backup) = self.backup_step().await else {
            return;
        };

        // --- CRDs before --------------------------------------------------------------------
        if self.spec.crd_policy == CrdPolicy::Before {
            let t = self.start(Step::Crds).await;
            match crds::apply(&self.client, &crds, false).await {
                Ok(names) => {
                    let msg = format!("applied {} CRD(s): {}", names.len(), names.join(", "));
                    self.finish(Step::Crds, t, Done::ok(msg)).await;
                }
                Err(e) => {
                    let m = self
                        .finish(Step::Crds, t, Done::failed(e.to_string()))
                        .await;
                    // CRDs only add: the release itself is untouched.
                    return self.fail_unchanged(Step::Crds, m).await;
                }
            }
        } else if self.spec.crd_policy == CrdPolicy::Skip {
            let t = self.start(Step::Crds).await;
            self.finish(Step::Crds, t, Done::skipped("CRD policy is skip"))
                .await;
        }

        // --- upgrade ------------------------------------------------------------------------
        let t = self.start(Step::Upgrade).await;
        if let Err(msg) = self.delete_jobs().await {
            let m = self.finish(Step::Upgrade, t, Done::failed(msg)).await;
            return self.roll_back(Step::Upgrade, m).await;
        }
        let result = self.helm_upgrade(&chart.path, &backup).await;
        match result {
            Ok(out) if out.success() => {
                let done = Done {
                    outcome: StepOutcome::Succeeded,
                    message: format!("helm upgrade to {} succeeded", self.spec.version),
                    // Exit code 0, and helm's warnings (e.g. fields the server pruned).
                    helm: Some(&out),
                };
                self.finish(Step::Upgrade, t, done).await;
            }
            Ok(out) => {
                let done = Done {
                    outcome: StepOutcome::Failed,
                    message: format!(
                        "helm upgrade to {} failed ({})",
                        self.spec.version,
                        out.exit()
                    ),
                    helm: Some(&out),
                };
                let m = self.finish(Step::Upgrade, t, done).await;
                return self.roll_back(Step::Upgrade, m).await;
            }
            Err(e) => {
                let m = self
                    .finish(Step::Upgrade, t, Done::failed(e.to_string()))
                    .await;
                return self.roll_back(Step::Upgrade, m).await;
            }
        }

        // --- CRDs after ---------------------------------------------------------------------
        if self.spec.crd_policy == CrdPolicy::After {
            let t = self.start(Step::Crds).await;
            match crds::apply(&self.client, &crds, false).await {
                Ok(names) => {
                    let msg = format!("applied {} CRD(s): {}", names.len(), names.join(", "));
                    self.finish(Step::Crds, t, Done::ok(msg)).await;
                }
                Err(e) => {
                    let m = self
                        .finish(Step::Crds, t, Done::failed(e.to_string()))
                        .await;
                    return self.roll_back(Step::Crds, m).await;
                }
            }
        }

        // --- verify -------------------------------------------------------------------------
        let t = self.start(Step::Verify).await;
        let expect = Expectation {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            chart_version: self.spec.version.clone(),
            tags: self
                .spec
                .image_tag_keys
                .iter()
                .map(|k| (k.clone(), self.spec.tag()))
                .collect(),
            custom_kinds: CustomKind::of(&crds),
        };
        if let Err(reason) =
            verify::wait_healthy(&self.session, &self.client, &expect, self.spec.timeout).await
        {
            let m = self.finish(Step::Verify, t, Done::failed(reason)).await;
            return self.roll_back(Step::Verify, m).await;
        }
        self.finish(
            Step::Verify,
            t,
            Done::ok(format!(
                "deployed at {}, workloads ready, image tags {}",
                self.spec.version,
                self.spec.tag()
            )),
        )
        .await;

        let after = self.read_release().await.ok().flatten();
        self.report.revision_after = after.as_ref().map(|i| i.revision);
        self.report.version_after = after.map(|i| i.chart_version);
        self.report.outcome = Outcome::Succeeded;
        self.report.failed_step = None;
        self.report.message = format!(
            "upgraded {} from {} to {}",
            self.spec.release,
            self.report.version_before.clone().unwrap_or_default(),
            self.spec.version
        );
        self.close_record(RecordPhase::Succeeded).await;
    }

    /// Takes (or finds) the backup, records its generation, and uploads it when an upload
    /// is configured: the `backup` step. `None` when it failed (the run is then closed as
    /// failed, nothing changed but the backup).
    async fn backup_step(&mut self) -> Option<Backup> {
        let t = self.start(Step::Backup).await;
        let backup = match self.backup().await {
            Ok(b) => b,
            Err(msg) => {
                let m = self.finish(Step::Backup, t, Done::failed(msg)).await;
                self.fail_unchanged(Step::Backup, m).await;
                return None;
            }
        };
        let msg = format!(
            "values backup generation {} in Secret {} (sha256 {})",
            backup.generation, backup.secret, backup.sha256
        );
        self.report.backup = Some(backup.clone());
        if let Some(mut rec) = self.record.clone() {
            rec.backup_generation = Some(backup.generation);
            if let Err(e) = self.save_record(rec).await {
                let m = self
                    .finish(Step::Backup, t, Done::failed(e.to_string()))
                    .await;
                self.fail_unchanged(Step::Backup, m).await;
                return None;
            }
        }
        if let Some(upload) = self.upload.clone()
            && let Err(e) = upload(backup.clone()).await
        {
            let m = self
                .finish(
                    Step::Backup,
                    t,
                    Done::failed(format!("uploading the values backup: {e}")),
                )
                .await;
            self.fail_unchanged(Step::Backup, m).await;
            return None;
        }
        self.finish(Step::Backup, t, Done::ok(msg)).await;
        Some(backup)
    }

    /// Takes the backup, or finds the one this operation took in an earlier attempt.
    async fn backup(&mut self) -> Result<Backup, String> {
        let (ns, release) = (&self.spec.namespace, &self.spec.release);
        let earlier =
            backup::find_for_operation(&self.client, ns, release, &self.report.operation_id)
                .await
                .map_err(|e| e.to_string())?;
        let backup = match earlier {
            Some(b) => b,
            None => {
                let out = self
                    .session
                    .run(
                        &args(&["get", "values", release, "-n", ns, "-o", "yaml"]),
                        QUICK,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !out.success() {
                    // stderr of `get values` could echo values on a decoding error: only the
                    // code, and the redacted tail once we know the values (we do not yet).
                    return Err(format!("helm get values exited with {:?}", out.code));
                }
                let version_before = self.report.version_before.clone().unwrap_or_default();
                backup::store(
                    &self.client,
                    ns,
                    release,
                    &self.report.operation_id,
                    &version_before,
                    &out.stdout,
                )
                .await
                .map_err(|e| e.to_string())?
            }
        };
        let values: serde_yaml::Value = serde_yaml::from_slice(&backup.values)
            .map_err(|_| format!("the values backup in {} is not YAML", backup.secret))?;
        self.redactor.add_yaml(&values, &[self.spec.tag()]);
        Ok(backup)
    }

    /// Deletes the spec's Jobs and waits until they are gone (helm must create them anew).
    async fn delete_jobs(&self) -> Result<(), String> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.spec.namespace);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        for name in &self.spec.delete_jobs {
            match api.delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(format!("deleting Job {name}: {e}")),
            }
            let deadline = Instant::now() + JOB_DELETE_TIMEOUT;
            loop {
                match api.get_opt(name).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(Some(_)) => {
                        return Err(format!(
                            "Job {name} still exists {JOB_DELETE_TIMEOUT:?} after deletion"
                        ));
                    }
                    Err(e) => return Err(format!("waiting for Job {name} to go: {e}")),
                }
            }
        }
        Ok(())
    }

    /// `helm upgrade --install` with the backup and our overrides as 0600 files, removed after.
    async fn helm_upgrade(&self, chart: &Path, backup: &Backup) -> Result<HelmOutput, HelmError> {
        let dir = self.session.work_dir();
        let backup_file = SecretFile::write(
            dir.join("backup-values.yaml"),
            &backup_values(&backup.values),
        )
        .map_err(HelmError::Home)?;
        let overrides = overrides_yaml(self.spec);
        let overrides_file =
            SecretFile::write(dir.join("override-values.yaml"), overrides.as_bytes())
                .map_err(HelmError::Home)?;
        let mut a = args(&[
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            &self.spec.namespace,
            &self.spec.release,
        ]);
        a.push(chart.into());
        // Later files win: our tags and extra values over the backup, like the documented
        // `--set ... -f backup` (where --set wins).
        a.push("-f".into());
        a.push(backup_file.path.clone().into());
        a.push("-f".into());
        a.push(overrides_file.path.clone().into());
        a.extend(self.session.helm().wait_flags());
        a.push(timeout_flag(self.spec.timeout));
        let out = self.session.run(&a, self.spec.timeout).await;
        drop(backup_file);
        drop(overrides_file);
        out
    }

    /// A failure that changed nothing in the release (before the upgrade started).
    async fn fail_unchanged(&mut self, step: Step, message: String) {
        self.report.outcome = Outcome::Failed;
        self.report.failed_step = Some(step);
        self.report.message = message;
        self.close_record(RecordPhase::Failed).await;
    }
}

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(Into::into).collect()
}

/// What [`Run::claim_release`] left the operation with.
enum Claim {
    /// Go on, holding the lock; this operation's own record, if an earlier attempt left one.
    Proceed { ours: Option<OperationRecord> },
    /// The operation has its outcome already (reported again, or refused).
    Finished,
}
