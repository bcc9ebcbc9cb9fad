//! The wire form (`skoala.fleet.v1`) of what this crate reports: step progress and release
//! inventory. Both daemons send them — the agent for `skoala-init`, the coordinator for its own
//! `skoala` — so the mapping lives here, once.

use skoala_proto::v1::{Inventory, ReleaseInventory, StepPhase, StepProgress};

use crate::inventory::ReleaseInfo;
use crate::report::{Phase, ProgressEvent, StepOutcome};

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
                status: r.status.clone(),
                image_tags: r.image_tags.clone().into_iter().collect(),
                updated_unix: r.updated.map(|t| t.as_second()).unwrap_or_default(),
            })
            .collect(),
    }
}
