//! Putting a release back: recovering one a crashed attempt left `pending-*`, and rolling
//! back a failed upgrade. Both run `helm rollback --wait` to the revision before the
//! operation, after deleting the immutable Jobs (a failed upgrade may have recreated them from
//! the new chart); a rollback is then verified like an upgrade, against the old version and
//! tags.

use skoala_plan::ReleaseStatus;

use super::cluster::Cluster;
use super::run::{Done, Run};
use super::{Halt, args};
use crate::helm::{HelmError, HelmOutput, QUICK, RunHelm, timeout_flag};
use crate::inventory::ReleaseInfo;
use crate::record::{OperationRecord, RecordPhase};
use crate::report::{Outcome, Step, StepOutcome};
use crate::verify::{self, Expectation};

impl<C: Cluster, H: RunHelm> Run<'_, C, H> {
    /// Rolls a release left `pending-*`/`failed` by a crashed attempt back to the revision
    /// before it ([`Step::Recover`]); the run goes on only if that worked.
    pub(super) async fn recover(
        &mut self,
        info: &ReleaseInfo,
        record: &OperationRecord,
    ) -> Result<(), Halt> {
        let t = self.start(Step::Recover).await;
        self.report.recovered = true;
        let target = match record.revision_before {
            Some(r) => Some(r),
            None => self.last_deployed_revision(info.revision).await,
        };
        let Some(target) = target else {
            let msg = format!(
                "release {} is {} and no earlier deployed revision is known: a human must \
                 roll it back",
                self.spec.release, info.status
            );
            let m = self.finish(Step::Recover, t, Done::failed(msg)).await;
            self.report.outcome = Outcome::RollbackFailed;
            self.report.failed_step = Some(Step::Recover);
            self.report.message = m;
            return Err(Halt::Reported);
        };
        let out = self.helm_rollback(target).await;
        let (ok, helm_out, msg) = match out {
            Ok(out) if out.success() => {
                (true, Some(out), format!("rolled back to revision {target}"))
            }
            Ok(out) => (
                false,
                Some(out),
                format!("helm rollback to revision {target} failed"),
            ),
            Err(e) => (
                false,
                None,
                format!("helm rollback to revision {target}: {e}"),
            ),
        };
        let done = Done {
            outcome: if ok {
                StepOutcome::Succeeded
            } else {
                StepOutcome::Failed
            },
            message: msg,
            helm: helm_out.as_ref(),
        };
        let m = self.finish(Step::Recover, t, done).await;
        if !ok {
            self.report.outcome = Outcome::RollbackFailed;
            self.report.failed_step = Some(Step::Recover);
            self.report.message = m;
            self.close_record(RecordPhase::RollbackFailed).await;
            return Err(Halt::Reported);
        }
        Ok(())
    }

    /// The newest revision below `latest` that was deployed (now `deployed` or `superseded`).
    pub(super) async fn last_deployed_revision(&self, latest: i32) -> Option<i32> {
        let out = self
            .helm
            .run(
                &args(&[
                    "history",
                    &self.spec.release,
                    "-n",
                    &self.spec.namespace,
                    "-o",
                    "json",
                ]),
                QUICK,
            )
            .await
            .ok()?;
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        entries
            .iter()
            .filter_map(|e| {
                let rev = e.get("revision")?.as_i64()? as i32;
                let status = ReleaseStatus::parse(e.get("status")?.as_str()?);
                (rev < latest && status.was_deployed()).then_some(rev)
            })
            .max()
    }

    /// `helm rollback` to `revision`, after deleting the spec's Jobs: a failed upgrade may
    /// already have recreated them from the new chart, and their pod templates are immutable.
    pub(super) async fn helm_rollback(&self, revision: i32) -> Result<HelmOutput, RollbackError> {
        self.cluster
            .delete_jobs(&self.spec.namespace, &self.spec.delete_jobs)
            .await
            .map_err(RollbackError::Jobs)?;
        let mut a = args(&[
            "rollback",
            &self.spec.release,
            &revision.to_string(),
            "-n",
            &self.spec.namespace,
        ]);
        a.extend(self.helm.helm().wait_flags());
        a.push(timeout_flag(self.spec.timeout));
        Ok(self.helm.run(&a, self.spec.timeout).await?)
    }

    /// Waits until the rolled-back release matches `expect` and is healthy, and records the
    /// revision and version it ended on whatever the outcome.
    pub(super) async fn verify_rolled_back(&mut self, expect: &Expectation) -> Result<(), String> {
        let (cluster, helm) = (self.cluster, self.helm);
        let verified = verify::poll(self.spec.timeout, || cluster.health(helm, expect)).await;
        let after = self.read_release().await.ok().flatten();
        self.report.revision_after = after.as_ref().map(|i| i.revision);
        self.report.version_after = after.map(|i| i.chart_version);
        verified
    }

    /// The upgrade started and something failed: roll back to the revision before, verify.
    /// Ends the operation (`RolledBack` or `RollbackFailed`).
    /// With [`crate::ReleaseSpec::rollback_on_failure`] off, the release is left as it is instead
    /// (`Failed`), and the report says so.
    pub(super) async fn roll_back(&mut self, failed: Step, message: String) -> Halt {
        self.report.failed_step = Some(failed);
        self.report.message = message;
        if !self.spec.rollback_on_failure {
            self.report.rollback_message = Some(format!(
                "not rolled back (rollbackOnFailure: false): {} is left as helm left it; \
                 `helm history -n {} {}` shows it, `skoalactl plan rollback` returns it",
                self.spec.release, self.spec.namespace, self.spec.release
            ));
            self.report.outcome = Outcome::Failed;
            self.close_record(RecordPhase::Failed).await;
            return Halt::Reported;
        }
        let t = self.start(Step::Rollback).await;
        let Some(target) = self.report.revision_before else {
            let m = self
                .finish(
                    Step::Rollback,
                    t,
                    Done::failed("no revision to roll back to"),
                )
                .await;
            self.report.rollback_message = Some(m);
            self.report.outcome = Outcome::RollbackFailed;
            self.close_record(RecordPhase::RollbackFailed).await;
            return Halt::Reported;
        };
        let out = self.helm_rollback(target).await;
        let failure = rollback_failure(target, &out);
        if let Some(msg) = failure {
            let done = Done {
                outcome: StepOutcome::Failed,
                message: msg,
                helm: out.as_ref().ok(),
            };
            let m = self.finish(Step::Rollback, t, done).await;
            self.report.rollback_message = Some(m);
            self.report.outcome = Outcome::RollbackFailed;
            self.close_record(RecordPhase::RollbackFailed).await;
            return Halt::Reported;
        }
        let expect = Expectation {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            chart_version: self.report.version_before.clone().unwrap_or_default(),
            tags: self.tags_before.clone(),
            custom_kinds: self.custom_kinds.clone(),
        };
        match self.verify_rolled_back(&expect).await {
            Ok(()) => {
                let m = self
                    .finish(
                        Step::Rollback,
                        t,
                        Done::ok(format!(
                            "rolled back to revision {target} (chart {}), verified healthy",
                            expect.chart_version
                        )),
                    )
                    .await;
                self.report.rollback_message = Some(m);
                self.report.outcome = Outcome::RolledBack;
                self.close_record(RecordPhase::RolledBack).await;
            }
            Err(reason) => {
                let m = self
                    .finish(
                        Step::Rollback,
                        t,
                        Done::failed(format!("rolled back to revision {target}, but {reason}")),
                    )
                    .await;
                self.report.rollback_message = Some(m);
                self.report.outcome = Outcome::RollbackFailed;
                self.close_record(RecordPhase::RollbackFailed).await;
            }
        }
        Halt::Reported
    }
}

/// What went wrong with a `helm rollback` to `target`, if anything.
pub(super) fn rollback_failure(
    target: i32,
    out: &Result<HelmOutput, RollbackError>,
) -> Option<String> {
    match out {
        Ok(o) if o.success() => None,
        Ok(o) => Some(format!(
            "helm rollback to revision {target} failed ({})",
            o.exit()
        )),
        Err(e) => Some(format!("helm rollback to revision {target}: {e}")),
    }
}

/// Why `helm rollback` could not run.
#[derive(Debug, thiserror::Error)]
pub(super) enum RollbackError {
    #[error("{0}")]
    Jobs(String),
    #[error(transparent)]
    Helm(#[from] HelmError),
}
