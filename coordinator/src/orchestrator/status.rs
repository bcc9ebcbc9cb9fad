//! Plan state in words: phases and target states as the API and the event log show them, and
//! the events one rollout step produced (a diff of the rollout before and after).

use skoala_plan::rollout::Progress;
use skoala_plan::waiting::waiting_reason;
use skoala_plan::{Phase, Rollout, TargetState, UpgradePlan, validate};
use skoala_proto::v1::{PlanStatus, PlanTarget};

use super::fleet::{CONTROL_PLANE, Snapshot};
use skoala_store::{PlanEventRecord, PlanRecord};

/// A phase's short name and its reason (empty when it has none).
pub fn phase(p: &Phase) -> (&'static str, String) {
    let reason = p
        .awaiting()
        .or_else(|| p.reason().map(str::to_string))
        .unwrap_or_default();
    (p.as_str(), reason)
}

/// Why a plan with nothing in flight waits (its windows, offline agents), from its document:
/// a phase without a reason of its own otherwise looks stuck.
fn waiting(record: &PlanRecord, rollout: &Rollout, snap: &Snapshot) -> Option<String> {
    let plan = validate(&UpgradePlan::from_yaml(&record.document).ok()?).ok()?;
    waiting_reason(rollout, &plan, &snap.view)
}

/// A target state's short name, operation id and message.
pub fn target_state(s: &TargetState) -> (&'static str, String, String) {
    match s {
        TargetState::Pending => ("pending", String::new(), String::new()),
        TargetState::Running { operation_id, .. } => {
            ("running", operation_id.clone(), String::new())
        }
        TargetState::Succeeded { .. } => ("succeeded", String::new(), String::new()),
        TargetState::Failed { message } => ("failed", String::new(), message.clone()),
        TargetState::RolledBack { message } => ("rolledBack", String::new(), message.clone()),
        TargetState::RollingBack { operation_id, .. } => {
            ("rollingBack", operation_id.clone(), String::new())
        }
        TargetState::Reverted => ("reverted", String::new(), String::new()),
    }
}

fn targets(r: &Rollout) -> Vec<(String, &Progress)> {
    let mut out = vec![(CONTROL_PLANE.to_string(), &r.control_plane)];
    out.extend(r.workers.iter().map(|(id, p)| (id.clone(), p)));
    out
}

/// The events between two versions of a rollout: a phase change, and each target whose state
/// changed.
pub fn diff(before: &Rollout, after: &Rollout, snap: &Snapshot) -> Vec<PlanEventRecord> {
    let mut out = Vec::new();
    let plan = after.plan.clone();
    if before.phase != after.phase {
        let (name, reason) = phase(&after.phase);
        out.push(PlanEventRecord {
            plan: plan.clone(),
            kind: "plan.phase".into(),
            state: name.into(),
            message: reason,
            ..Default::default()
        });
    }
    // By id: a linear search per target made this quadratic, 10^8 string comparisons on
    // every step of a 10,000-cluster plan (the fan-out benchmark, BENCHMARKS.md).
    let old: std::collections::HashMap<String, &Progress> = targets(before).into_iter().collect();
    for (id, p) in targets(after) {
        let was = old.get(&id).map(|p| &p.state);
        if was == Some(&p.state) {
            continue;
        }
        let (state, op, message) = target_state(&p.state);
        out.push(PlanEventRecord {
            plan: plan.clone(),
            kind: "target".into(),
            target_name: snap.name_of(&id),
            target: id,
            operation_id: op,
            state: state.into(),
            message,
            ..Default::default()
        });
    }
    out
}

/// The API's view of a plan.
pub fn plan_status(
    record: &PlanRecord,
    version: &str,
    rollout: &Rollout,
    snap: &Snapshot,
) -> PlanStatus {
    let (phase_name, mut reason) = phase(&rollout.phase);
    if reason.is_empty() {
        reason = waiting(record, rollout, snap).unwrap_or_default();
    }
    // Once, not `snap.connected(id)` per target: that searches the fleet, which made every
    // status of a 10,000-cluster plan (each `plan approve`, `plan get`) 10^8 comparisons.
    let connected: std::collections::HashSet<&str> = snap
        .view
        .workers
        .iter()
        .filter(|w| w.release.connected)
        .map(|w| w.release.cluster_id.as_str())
        .collect();
    let targets = targets(rollout)
        .into_iter()
        .map(|(id, p)| {
            let (state, op, message) = target_state(&p.state);
            PlanTarget {
                name: snap.name_of(&id),
                connected: if id == CONTROL_PLANE {
                    snap.view.control_plane.connected
                } else {
                    connected.contains(id.as_str())
                },
                target: id,
                state: state.into(),
                stage: p.stage.map(|s| s as i32).unwrap_or(-1),
                operation_id: op,
                message,
                attempts: p.attempts,
            }
        })
        .collect();
    PlanStatus {
        name: record.name.clone(),
        version: version.to_string(),
        phase: phase_name.into(),
        reason,
        document: record.document.clone(),
        targets,
        created_unix_ms: record.created_ms,
        updated_unix_ms: record.updated_ms,
        active: record.active,
    }
}
