//! The wire form (`skoala.fleet.v1`) of what this crate reports: step progress, results and
//! release inventory. Both daemons send them — the agent for `skoala-init`, the coordinator for
//! its own `skoala` — so the mapping lives here, once.

use skoala_proto::v1::{
    Inventory, ReleaseInventory, StepPhase, StepProgress, TaskOutcome, TaskResult,
};

use crate::inventory::ReleaseInfo;
use crate::report::{Outcome, Phase, ProgressEvent, Report, StepOutcome};

/// An operation's outcome as the wire's `TaskOutcome`.
pub fn task_outcome(o: Outcome) -> TaskOutcome {
    match o {
        Outcome::Succeeded => TaskOutcome::Succeeded,
        Outcome::Failed => TaskOutcome::Failed,
        Outcome::RolledBack => TaskOutcome::RolledBack,
        Outcome::RollbackFailed => TaskOutcome::RollbackFailed,
        Outcome::Refused => TaskOutcome::Refused,
    }
}

/// A `TaskResult.outcome` as the camelCase word both daemons' metrics label it with.
pub fn task_outcome_label(outcome: i32) -> &'static str {
    match TaskOutcome::try_from(outcome) {
        Ok(TaskOutcome::Succeeded) => "succeeded",
        Ok(TaskOutcome::Failed) => "failed",
        Ok(TaskOutcome::RolledBack) => "rolledBack",
        Ok(TaskOutcome::RollbackFailed) => "rollbackFailed",
        Ok(TaskOutcome::Refused) => "refused",
        Ok(TaskOutcome::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// An executor report as a `TaskResult` (without `release_after`, which the sender reads from
/// its cluster). The messages are already redacted by the executor.
pub fn task_result(r: &Report) -> TaskResult {
    TaskResult {
        operation_id: r.operation_id.clone(),
        outcome: task_outcome(r.outcome) as i32,
        failed_step: r
            .failed_step
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        message: r.message.clone(),
        revision_before: r.revision_before.unwrap_or_default(),
        release_after: None,
        rollback_message: r.rollback_message.clone().unwrap_or_default(),
    }
}

/// An executor progress event as a `StepProgress` message. The message is already redacted by
/// the executor.
pub fn step_progress(e: &ProgressEvent) -> StepProgress {
    let phase = match (e.phase, e.outcome) {
        (Phase::Started, _) => StepPhase::Started,
        (Phase::Finished, Some(StepOutcome::Failed)) => StepPhase::Failed,
        (Phase::Finished, Some(StepOutcome::Skipped)) => StepPhase::Skipped,
        (Phase::Finished, _) => StepPhase::Succeeded,
    };
    StepProgress {
        operation_id: e.operation_id.clone(),
        step: e.step.as_str().to_string(),
        phase: phase as i32,
        at_unix_ms: e.at.as_millisecond(),
        duration_ms: e
            .duration
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default(),
        helm_exit_code: e.helm_exit_code.unwrap_or_default(),
        message: e.message.clone(),
    }
}

/// Releases as an `Inventory` message.
pub fn inventory(releases: &[ReleaseInfo]) -> Inventory {
    Inventory {
        releases: releases
            .iter()
            .map(|r| ReleaseInventory {
                release: r.release.clone(),
                namespace: r.namespace.clone(),
                chart_name: r.chart_name.clone(),
                chart_version: r.chart_version.clone(),
                app_version: r.app_version.clone(),
                revision: r.revision,
                status: r.status.to_string(),
                image_tags: r.image_tags.clone().into_iter().collect(),
                updated_unix: r.updated.map(|t| t.as_second()).unwrap_or_default(),
            })
            .collect(),
    }
}
