//! Rollback as an operation of its own ([`crate::Executor::rollback`]): what `skoalactl plan
//! rollback` and a failed canary's cleanup ask for, as opposed to the automatic rollback of a
//! failed upgrade ([`super::recovery`]).
//!
//! It follows the upgrade's discipline: validation and the idempotency check, the release lock,
//! the operation record before the first change, a values backup (uploaded when configured)
//! before `helm rollback`, and verification afterwards against the target revision's own chart
//! version and image tags.

use skoala_plan::ReleaseStatus;

use super::Halt;
use super::cluster::Cluster;
use super::recovery::rollback_failure;
use super::run::{Done, Run};
use crate::helm::RunHelm;
use crate::inventory::ReleaseInfo;
use crate::record::{OperationRecord, RecordPhase};
use crate::report::{Outcome, Step, StepOutcome};
use crate::verify::Expectation;

/// A rollback's preflight passed: where the release returns to.
struct Returning {
    revision: i32,
    /// That revision, as helm recorded it: the version and tags verification expects.
    goal: ReleaseInfo,
    /// This operation's record from an earlier attempt, if any.
    earlier: Option<OperationRecord>,
}

impl<C: Cluster, H: RunHelm> Run<'_, C, H> {
    /// The driver of a rollback operation: preflight (validation, idempotency, lock, release
    /// state, target revision), the record, backup, rollback, verify.
    pub(super) async fn rollback_operation(&mut self, revision: Option<i32>) -> Result<(), Halt> {
        let ready = self.rollback_preflight(revision).await?;
        let version = ready.goal.chart_version.clone();
        self.open_record(ready.earlier.as_ref(), &version).await?;
        self.backup().await?;
        self.rollback_to(ready.revision, &ready.goal).await
    }

    /// Preflight of a rollback: validation, idempotency, the lock, the release's state, and
    /// the revision to return to.
    async fn rollback_preflight(&mut self, revision: Option<i32>) -> Result<Returning, Halt> {
        let t = self.start(Step::Preflight).await;
        if let Err(e) = self.spec.validate_names() {
            return Err(self
                .refuse(Step::Preflight, t, Done::failed(e.to_string()))
                .await);
        }
        let earlier = self.claim_release(t).await?;
        let info = self.installed_release(t).await?;
        // A failed release is exactly what one rolls back; a pending one is someone's live
        // operation (we hold the lock, so not one of ours) and is left alone.
        if !(info.status.is_deployed() || info.status == ReleaseStatus::Failed) {
            let msg = format!(
                "release {} revision {} is {}: only a deployed or failed release is rolled back",
                self.spec.release, info.revision, info.status
            );
            return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
        }
        // A retried attempt keeps its first attempt's "before" (the release may already be at
        // the target, or half way).
        let first = earlier.as_ref();
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
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
            }
            None => {
                let msg = format!(
                    "release {} has no earlier deployed revision to roll back to",
                    self.spec.release
                );
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
            }
        };
        let goal = match self.cluster.revision(&self.tracked(), target).await {
            Ok(Some(goal)) => goal,
            Ok(None) => {
                let msg = format!(
                    "revision {target} of release {} is no longer kept by helm",
                    self.spec.release
                );
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
            }
            Err(e) => {
                let msg = format!("reading revision {target}: {e}");
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
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
        Ok(Returning {
            revision: target,
            goal,
            earlier,
        })
    }

    /// `helm rollback` to `target`, then verification against `goal` (that revision).
    async fn rollback_to(&mut self, target: i32, goal: &ReleaseInfo) -> Result<(), Halt> {
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
            return Err(self.rollback_failed(Step::Rollback, m).await);
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
                Ok(())
            }
            Err(reason) => {
                let m = self.finish(Step::Verify, t, Done::failed(reason)).await;
                Err(self.rollback_failed(Step::Verify, m).await)
            }
        }
    }

    async fn rollback_failed(&mut self, step: Step, message: String) -> Halt {
        self.report.outcome = Outcome::RollbackFailed;
        self.report.failed_step = Some(step);
        self.report.rollback_message = Some(message.clone());
        self.report.message = message;
        self.close_record(RecordPhase::RollbackFailed).await;
        Halt::Reported
    }
}
