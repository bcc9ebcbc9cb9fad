//! The state of one run and what every step shares: progress events and the report, the
//! operation record, the idempotency check and the release lock.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::mpsc;

use super::cluster::{Cluster, Records as _};
use super::{BackupUpload, ExecError, Halt, Mode};
use crate::helm::{HelmOutput, RunHelm};
use crate::inventory::{ReleaseInfo, TrackedRelease};
use crate::record::{OperationRecord, RecordPhase};
use crate::redact::Redactor;
use crate::report::{Outcome, Phase, ProgressEvent, Report, Step, StepOutcome, StepTiming};
use crate::spec::ReleaseSpec;
use crate::verify::{CustomKind, Expectation};

/// Lines and bytes of helm's stderr kept in events and reports.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;

/// One operation on one release, from the first step to the report.
pub(super) struct Run<'a, C: Cluster, H: RunHelm> {
    pub(super) cluster: &'a C,
    pub(super) helm: &'a H,
    pub(super) spec: &'a ReleaseSpec,
    progress: mpsc::Sender<ProgressEvent>,
    /// Knows the release's values (from the spec, then the backup), so no message leaks one.
    pub(super) redactor: Redactor,
    records: C::Records,
    /// The record as this run last wrote it (or found it).
    pub(super) record: Option<OperationRecord>,
    pub(super) report: Report,
    /// Image tags before the upgrade (what a rollback must restore).
    pub(super) tags_before: BTreeMap<String, String>,
    /// The kinds of the target chart's CRDs (verified for pruned fields).
    pub(super) custom_kinds: Vec<CustomKind>,
    /// The release lock, held from after the idempotency check to the end of the run.
    pub(super) lock: Option<C::Lock>,
    pub(super) upload: Option<BackupUpload>,
    pub(super) mode: Mode,
}

/// How a step ended, for [`Run::finish`].
pub(super) struct Done<'h> {
    pub(super) outcome: StepOutcome,
    pub(super) message: String,
    pub(super) helm: Option<&'h HelmOutput>,
}

impl Done<'_> {
    pub(super) fn ok(message: impl Into<String>) -> Self {
        Self::new(StepOutcome::Succeeded, message)
    }

    pub(super) fn failed(message: impl Into<String>) -> Self {
        Self::new(StepOutcome::Failed, message)
    }

    pub(super) fn skipped(message: impl Into<String>) -> Self {
        Self::new(StepOutcome::Skipped, message)
    }

    fn new(outcome: StepOutcome, message: impl Into<String>) -> Self {
        Done {
            outcome,
            message: message.into(),
            helm: None,
        }
    }
}

impl<'a, C: Cluster, H: RunHelm> Run<'a, C, H> {
    pub(super) fn new(
        cluster: &'a C,
        helm: &'a H,
        spec: &'a ReleaseSpec,
        operation_id: &str,
        mode: Mode,
        upload: Option<BackupUpload>,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Self {
        let mut redactor = Redactor::default();
        redactor.add_yaml(
            &serde_yaml::Value::Mapping(spec.extra_values.clone().unwrap_or_default()),
            &[spec.tag()],
        );
        Run {
            cluster,
            helm,
            spec,
            progress,
            redactor,
            records: cluster.records(&spec.namespace, &spec.release),
            record: None,
            report: Report {
                operation_id: operation_id.into(),
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
                helm_version: helm.helm().version().to_string(),
                steps: Vec::new(),
            },
            tags_before: BTreeMap::new(),
            custom_kinds: Vec::new(),
            lock: None,
            upload,
            mode,
        }
    }

    pub(super) fn op_id(&self) -> &str {
        &self.report.operation_id
    }

    pub(super) fn tracked(&self) -> TrackedRelease {
        TrackedRelease {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            image_tag_keys: self.spec.image_tag_keys.clone(),
        }
    }

    /// The release at the spec's version with the spec's image tags.
    pub(super) fn target_expectation(&self, custom_kinds: Vec<CustomKind>) -> Expectation {
        Expectation {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            chart_version: self.spec.version.clone(),
            tags: self
                .spec
                .image_tag_keys
                .iter()
                .map(|k| (k.clone(), self.spec.tag()))
                .collect(),
            custom_kinds,
        }
    }

    async fn emit(&self, event: ProgressEvent) {
        // A caller that stopped listening does not stop the upgrade.
        let _ = self.progress.send(event).await;
    }

    pub(super) async fn start(&self, step: Step) -> Instant {
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
    pub(super) async fn finish(&mut self, step: Step, started: Instant, done: Done<'_>) -> String {
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
    pub(super) async fn refuse(&mut self, step: Step, started: Instant, done: Done<'_>) -> Halt {
        let message = self.finish(step, started, done).await;
        self.report.outcome = Outcome::Refused;
        self.report.failed_step = Some(step);
        self.report.message = message;
        Halt::Reported
    }

    /// A failure that changed nothing in the release (before the upgrade started).
    pub(super) async fn fail_unchanged(&mut self, step: Step, message: String) -> Halt {
        self.report.outcome = Outcome::Failed;
        self.report.failed_step = Some(step);
        self.report.message = message;
        self.close_record(RecordPhase::Failed).await;
        Halt::Reported
    }

    pub(super) async fn read_release(&self) -> Result<Option<ReleaseInfo>, String> {
        self.cluster
            .release(&self.tracked())
            .await
            .map_err(|e| format!("reading release {}: {e}", self.spec.release))
    }

    /// The release's latest revision, or the run is refused: it is not installed, or cannot
    /// be read.
    pub(super) async fn installed_release(&mut self, t: Instant) -> Result<ReleaseInfo, Halt> {
        match self.read_release().await {
            Ok(Some(info)) => Ok(info),
            Ok(None) => {
                let msg = format!(
                    "release {} is not installed in namespace {}",
                    self.spec.release, self.spec.namespace
                );
                Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await)
            }
            Err(e) => Err(self.refuse(Step::Preflight, t, Done::failed(e)).await),
        }
    }

    pub(super) async fn save_record(&mut self, record: OperationRecord) -> Result<(), ExecError> {
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

    /// The first write of an operation: its record, `running`, towards `target_version`. An
    /// `earlier` attempt of the same operation keeps its backup, and counts.
    pub(super) async fn open_record(
        &mut self,
        earlier: Option<&OperationRecord>,
        target_version: &str,
    ) -> Result<(), ExecError> {
        let record = OperationRecord {
            operation_id: self.report.operation_id.clone(),
            phase: RecordPhase::Running,
            target_version: target_version.into(),
            attempt: earlier.map_or(1, |r| r.attempt + 1),
            revision_before: self.report.revision_before,
            version_before: self.report.version_before.clone(),
            backup_generation: earlier.and_then(|r| r.backup_generation),
            message: String::new(),
        };
        self.save_record(record).await
    }

    /// Updates the record's phase and message; a failure here is logged, not fatal: the
    /// cluster state is what it is, and the report says so.
    pub(super) async fn close_record(&mut self, phase: RecordPhase) {
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

    /// Idempotency and the release lock, as upgrades and rollbacks both need them: an
    /// operation whose record is already final reports that outcome again; otherwise the lock
    /// is taken (or the operation refused: another one holds it) and the release's record is
    /// re-read under the lock into `self.record`. Returns this operation's own record, if an
    /// earlier attempt left one.
    pub(super) async fn claim_release(
        &mut self,
        t: Instant,
    ) -> Result<Option<OperationRecord>, Halt> {
        let (_, ours) = self.load_record().await?;
        if let Some(rec) = ours.filter(|r| r.phase != RecordPhase::Running) {
            return Err(self.already_done(rec, t).await);
        }
        let (ns, release) = (&self.spec.namespace, &self.spec.release);
        match self
            .cluster
            .lock(ns, release, &self.report.operation_id)
            .await
        {
            Ok(lock) => self.lock = Some(lock),
            Err(e) => {
                return Err(self
                    .refuse(Step::Preflight, t, Done::failed(e.to_string()))
                    .await);
            }
        }
        let (found, ours) = self.load_record().await?;
        if let Some(rec) = ours.clone().filter(|r| r.phase != RecordPhase::Running) {
            return Err(self.already_done(rec, t).await);
        }
        self.record = found;
        Ok(ours)
    }

    /// The operation id is recorded as finished: report that again, change nothing.
    async fn already_done(&mut self, rec: OperationRecord, t: Instant) -> Halt {
        let info = self.read_release().await.ok().flatten();
        self.report.already_done = true;
        self.report.revision_before = rec.revision_before;
        self.report.version_before = rec.version_before.clone();
        self.report.revision_after = info.as_ref().map(|i| i.revision);
        self.report.version_after = info.as_ref().map(|i| i.chart_version.clone());
        self.report.backup = self.backup_generation(rec.backup_generation).await;
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
        Halt::Reported
    }

    /// The stored backup of generation `generation`, if it is still kept and readable.
    pub(super) async fn backup_generation(
        &self,
        generation: Option<u32>,
    ) -> Option<crate::report::Backup> {
        let g = generation?;
        self.cluster
            .backups(&self.spec.namespace, &self.spec.release)
            .await
            .ok()?
            .into_iter()
            .find(|s| s.backup.generation == g)
            .map(|s| s.backup)
    }
}
