//! Rollback as an operation of its own ([`crate::Executor::rollback`]): what `skoalactl plan
//! rollback` and a failed canary's cleanup ask for, as opposed to the automatic rollback of a
//! failed upgrade ([`super::recovery`]).
//!
//! It follows the upgrade's discipline: validation and the idempotency check, the release lock,
//! the operation record before the first change, a values backup (uploaded when configured)
//! before `helm rollback`, and verification afterwards against the target revision's own chart
//! version and image tags.

use skoala_plan::ReleaseStatus;

use crate::ExecError;
use crate::inventory::{self, ReleaseInfo};
use crate::record::{OperationRecord, RecordPhase};
use crate::report::{Outcome, Step, StepOutcome};
use crate::verify::Expectation;

use super::recovery::rollback_failure;
use super::{Claim, Done, Run};

impl Run<'_> {
    /// The whole rollback operation; sets the report's outcome.
    pub(super) async fn go_rollback(&mut self, revision: Option<i32>) -> Result<(), ExecError> {
        // --- preflight: validation, idempotency, lock, release state, target -----------------
        let t = self.start(Step::Preflight).await;
        if let Err(e) = self.spec.validate_names() {
            self.refuse(Step::Preflight, t, Done::failed(e.to_string()))
                .await;
            return Ok(());
        }
        let ours = match self.claim_release(t).await? {
            Claim::Proceed { ours } => ours,
            Claim::Finished => return Ok(()),
        };
        let info = match self.read_release().await {
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
        // A failed release is exactly what one rolls back; a pending one is someone's live
        // operation (we hold the lock, so not one of ours) and is left alone.
        if !(info.status.is_deployed() || info.status == ReleaseStatus::Failed) {
            let msg = format!(
                "release {} revision {} is {}: only a deployed or failed release is rolled back",
                self.spec.release, info.revision, info.status
            );
            self.refuse(Step::Preflight, t, Done::failed(msg)).await;
            return Ok(());
        }
        // A retried attempt keeps its first attempt's "before" (the release may already be at
        // the target, or half way).
        let first = ours.as_ref();
        let before = first
            .and_then(|r| r.revision_before)
            .unwrap_or(info.revision);
        let target = match revision.filter(|r| *r > 0) {
            Some(r) => Some(r),
            None => self.last_deployed_revision(before).await,
        };
        let target = match target {
            Some(r) if r < before => r,
            Some(r) => {
                let msg = format!(
                    "revision {r} is not earlier than the current revision {before} of release {}",
                    self.spec.release
                );
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
            None => {
                let msg = format!(
                    "release {} has no earlier deployed revision to roll back to",
                    self.spec.release
                );
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
        };
        let goal = match inventory::read_revision(&self.client, &self.tracked(), target).await {
            Ok(Some(goal)) => goal,
            Ok(None) => {
                let msg = format!(
                    "revision {target} of release {} is no longer kept by helm",
                    self.spec.release
                );
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
            Err(e) => {
                let msg = format!("reading revision {target}: {e}");
                self.refuse(Step::Preflight, t, Done::failed(msg)).await;
                return Ok(());
            }
        };
        self.report.revision_before = Some(before);
        self.report.version_before = first
            .and_then(|r| r.version_before.clone())
            .or(Some(info.chart_version.clone()));
        let msg = format!(
            "release {} revision {} is {} at chart version {}; rolling back to revision {target} \
             (chart version {})",
            self.spec.release, info.revision, info.status, info.chart_version, goal.chart_version
        );
        self.finish(Step::Preflight, t, Done::ok(msg)).await;

        // --- the operation record: the first write ---------------------------------------
        let record = OperationRecord {
            operation_id: self.report.operation_id.clone(),
            phase: RecordPhase::Running,
            target_version: goal.chart_version.clone(),
            attempt: ours.as_ref().map_or(1, |r| r.attempt + 1),
            revision_before: self.report.revision_before,
            version_before: self.report.version_before.clone(),
            backup_generation: ours.as_ref().and_then(|r| r.backup_generation),
            message: String::new(),
        };
        self.save_record(record).await?;

        // --- backup -----------------------------------------------------------------------
        if self.backup_step().await.is_none() {
            return Ok(());
        }

        // --- rollback and verify ----------------------------------------------------------
        self.rollback_to(target, &goal).await;
        Ok(())
    }

    /// `helm rollback` to `target`, then verification against `goal` (that revision).
    async fn rollback_to(&mut self, target: i32, goal: &ReleaseInfo) {
        let t = self.start(Step::Rollback).await;
        let out = self.helm_rollback(target).await;
        let failure = rollback_failure(target, &out);
        if let Some(msg) = failure {
            let done = Done {
                outcome: StepOutcome::Failed,
                message: msg,
                helm: out.as_ref().ok(),
            };
            let m = self.finish(Step::Rollback, t, done).await;
            return self.rollback_failed(Step::Rollback, m).await;
        }
        self.finish(
            Step::Rollback,
            t,
            Done::ok(format!("helm rollback to revision {target} succeeded")),
        )
        .await;

        let t = self.start(Step::Verify).await;
        let expect = Expectation {
            release: self.spec.release.clone(),
            namespace: self.spec.namespace.clone(),
            chart_version: goal.chart_version.clone(),
            tags: goal
                .image_tags
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            custom_kinds: Vec::new(),
        };
        match self.verify_rolled_back(&expect).await {
            Ok(()) => {
                let msg = format!(
                    "rolled back to revision {target} (chart {}), verified healthy",
                    goal.chart_version
                );
                let m = self.finish(Step::Verify, t, Done::ok(msg)).await;
                self.report.outcome = Outcome::Succeeded;
                self.report.failed_step = None;
                self.report.message = format!(
                    "rolled back {} from {} to {}: {m}",
                    self.spec.release,
                    self.report.version_before.clone().unwrap_or_default(),
                    goal.chart_version
                );
                self.close_record(RecordPhase::Succeeded).await;
            }
            Err(reason) => {
                let m = self.finish(Step::Verify, t, Done::failed(reason)).await;
                self.rollback_failed(Step::Verify, m).await;
            }
        }
    }

    async fn rollback_failed(&mut self, step: Step, message: String) {
        self.report.outcome = Outcome::RollbackFailed;
        self.report.failed_step = Some(step);
        self.report.rollback_message = Some(message.clone());
        self.report.message = message;
        self.close_record(RecordPhase::RollbackFailed).await;
    }
}
