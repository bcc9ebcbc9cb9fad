//! `skoalactl plan ...`, `skew` and `events`: fleet upgrade plans through the admin API.

use std::io::IsTerminal;
use std::process::ExitCode;

use serde::Serialize;
use skoala_plan::PhaseKind;
use skoala_proto::v1::{
    ApplyPlanRequest, GetSkewRequest, ListPlansRequest, PlanEvent, PlanRef, PlanStatus,
    WatchEventsRequest,
};
use skoala_support::names;

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, dash, time_ms};

/// One cluster of a plan as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    pub target: String,
    pub name: String,
    pub state: String,
    pub stage: Option<u32>,
    pub connected: bool,
    pub attempts: u32,
    pub operation_id: String,
    pub message: String,
}

/// A plan as printed (`-o json|yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub name: String,
    pub version: String,
    pub phase: String,
    pub reason: String,
    pub active: bool,
    pub created: Option<String>,
    pub updated: Option<String>,
    pub targets: Vec<TargetView>,
    pub document: String,
}

fn view(p: PlanStatus) -> PlanView {
    PlanView {
        targets: p
            .targets
            .into_iter()
            .map(|t| TargetView {
                stage: u32::try_from(t.stage).ok(),
                target: t.target,
                name: t.name,
                state: t.state,
                connected: t.connected,
                attempts: t.attempts,
                operation_id: t.operation_id,
                message: t.message,
            })
            .collect(),
        name: p.name,
        version: p.version,
        phase: p.phase,
        reason: p.reason,
        active: p.active,
        created: time_ms(p.created_unix_ms),
        updated: time_ms(p.updated_unix_ms),
        document: p.document,
    }
}

/// A target's stage in words. The control plane is recorded as stage 0 too, but it is never a
/// canary: it goes first, alone.
fn stage(target: &str, s: Option<u32>) -> String {
    match s {
        _ if target == "control-plane" => "first".into(),
        None => "-".into(),
        Some(0) => "canary".into(),
        Some(n) => format!("wave {n}"),
    }
}

fn print_plan(p: PlanView, format: Format) -> anyhow::Result<()> {
    if output::structured(format, &p)? {
        return Ok(());
    }
    println!("plan {} → {}: {}", p.name, p.version, p.phase);
    if !p.reason.is_empty() {
        println!("  {}", p.reason);
    }
    let rows: Vec<Vec<String>> = p
        .targets
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                stage(&t.target, t.stage),
                t.state.clone(),
                if t.connected { "yes" } else { "no" }.into(),
                dash(&t.message),
            ]
        })
        .collect();
    output::table(
        &["CLUSTER", "STAGE", "STATE", "CONNECTED", "MESSAGE"],
        &rows,
    );
    Ok(())
}

pub async fn apply(admin: &mut Admin, document: String, force: bool) -> anyhow::Result<()> {
    let status = admin
        .client
        .apply_plan(ApplyPlanRequest { document, force })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    println!(
        "plan {} applied: {} → {} (skoalactl plan watch {})",
        status.name, status.phase, status.version, status.name
    );
    Ok(())
}

pub async fn list(admin: &mut Admin, format: Format) -> anyhow::Result<()> {
    let plans: Vec<PlanView> = admin
        .client
        .list_plans(ListPlansRequest {})
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner()
        .plans
        .into_iter()
        .map(view)
        .collect();
    if output::structured(format, &plans)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            let done = p.targets.iter().filter(|t| t.state == "succeeded").count();
            vec![
                p.name.clone(),
                p.version.clone(),
                p.phase.clone(),
                format!("{done}/{}", p.targets.len()),
                if p.active { "yes" } else { "no" }.into(),
                dash(&p.reason),
            ]
        })
        .collect();
    output::table(
        &["NAME", "VERSION", "PHASE", "DONE", "ACTIVE", "REASON"],
        &rows,
    );
    Ok(())
}

pub async fn get(admin: &mut Admin, name: String, format: Format) -> anyhow::Result<()> {
    let status = admin
        .client
        .get_plan(PlanRef { name, force: false })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    print_plan(view(status), format)
}

/// approve, pause, resume, abort, rollback.
pub async fn verb(admin: &mut Admin, verb: &str, name: String, force: bool) -> anyhow::Result<()> {
    let req = PlanRef { name, force };
    let c = &mut admin.client;
    let result = match verb {
        "approve" => c.approve_plan(req).await,
        "pause" => c.pause_plan(req).await,
        "resume" => c.resume_plan(req).await,
        "abort" => c.abort_plan(req).await,
        _ => c.rollback_plan(req).await,
    };
    let status = result
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    println!("plan {}: {}", status.name, status.phase);
    if !status.reason.is_empty() {
        println!("  {}", status.reason);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SkewView {
    control_plane_version: String,
    clusters: Vec<SkewedView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SkewedView {
    name: String,
    cluster_id: String,
    connected: bool,
    reasons: Vec<String>,
}

/// `skew`: exit 1 when any cluster is skewed.
pub async fn skew(admin: &mut Admin, format: Format) -> anyhow::Result<ExitCode> {
    let r = admin
        .client
        .get_skew(GetSkewRequest {})
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let v = SkewView {
        control_plane_version: r.control_plane_version,
        clusters: r
            .clusters
            .into_iter()
            .map(|c| SkewedView {
                name: c.name,
                cluster_id: c.cluster_id,
                connected: c.connected,
                reasons: c.reasons,
            })
            .collect(),
    };
    let clean = v.clusters.is_empty();
    if !output::structured(format, &v)? {
        if clean {
            println!(
                "no skew: every cluster runs {}",
                dash(&v.control_plane_version)
            );
        } else {
            let n = v.clusters.len();
            println!(
                "control plane: {}; {n} {} skewed",
                dash(&v.control_plane_version),
                if n == 1 { "cluster" } else { "clusters" }
            );
            let rows: Vec<Vec<String>> = v
                .clusters
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        if c.connected { "yes" } else { "no" }.into(),
                        c.reasons.join("; "),
                    ]
                })
                .collect();
            output::table(&["CLUSTER", "CONNECTED", "WHY"], &rows);
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One event as a line: time, who, what.
fn line(e: &PlanEvent) -> String {
    let at = jiff::Timestamp::from_millisecond(e.at_unix_ms)
        .map(|t| t.strftime("%H:%M:%S").to_string())
        .unwrap_or_default();
    let who = if e.target_name.is_empty() {
        format!("plan {}", e.plan)
    } else {
        e.target_name.clone()
    };
    let secs = |ms: i64| format!("{:.1}s", ms as f64 / 1000.0);
    let mut out = match e.kind.as_str() {
        "step" => {
            let mut s = format!("{at} {who}: step {} {}", e.step, e.state);
            if e.duration_ms > 0 {
                s.push_str(&format!(" ({})", secs(e.duration_ms)));
            }
            s
        }
        "task.sent" => format!("{at} {who}: task sent ({})", e.operation_id),
        "task.result" => {
            let mut s = format!("{at} {who}: {}", e.state);
            if !e.step.is_empty() {
                s.push_str(&format!(" at step {}", e.step));
            }
            if e.duration_ms > 0 {
                s.push_str(&format!(" after {}", secs(e.duration_ms)));
            }
            s
        }
        "target" => format!("{at} {who}: {}", e.state),
        "plan.applied" => format!("{at} plan {}: applied", e.plan),
        // Phase changes and operators' verbs (plan.paused, plan.aborted, ...): the new phase.
        kind if kind.starts_with("plan.") => format!("{at} plan {}: {}", e.plan, e.state),
        kind => format!("{at} plan {}: {kind} ({})", e.plan, e.state),
    };
    if !e.message.is_empty() && (e.kind != "step" || e.state == "failed") {
        out.push_str(&format!(": {}", e.message));
    }
    out
}

/// Whether `plan watch` has nothing more to wait for: the plan's phase is finished.
pub(crate) fn settled(e: &PlanEvent, plan: &str) -> bool {
    e.plan == plan
        && e.kind.starts_with("plan.")
        && e.kind != "plan.applied"
        && e.state.parse().is_ok_and(PhaseKind::is_finished)
}

/// `events [--follow] [--plan NAME]` and `plan watch NAME`.
pub async fn events(
    admin: &mut Admin,
    plan: String,
    follow: bool,
    until_settled: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut stream = admin
        .client
        .watch_events(WatchEventsRequest {
            plan: plan.clone(),
            after_id: 0,
            follow,
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    while let Some(e) = stream
        .message()
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
    {
        match format {
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "id": e.id, "at": time_ms(e.at_unix_ms), "plan": e.plan, "kind": e.kind,
                    "target": e.target, "targetName": e.target_name,
                    "operationId": e.operation_id, "step": e.step, "state": e.state,
                    "message": e.message, "durationMs": e.duration_ms,
                })
            ),
            _ if tty && e.kind == "plan.phase" => {
                println!("\x1b[1m{}\x1b[0m", names::printable(&line(&e)))
            }
            _ => println!("{}", names::printable(&line(&e))),
        }
        if until_settled && settled(&e, &plan) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_read_as_the_rollout_runs_them() {
        assert_eq!(stage("control-plane", Some(0)), "first");
        assert_eq!(stage("uid-1", Some(0)), "canary");
        assert_eq!(stage("uid-2", Some(3)), "wave 3");
        assert_eq!(stage("uid-3", None), "-");
    }

    #[test]
    fn a_failed_step_shows_cluster_step_and_message() {
        let e = PlanEvent {
            at_unix_ms: 1_700_000_000_000,
            plan: "p".into(),
            kind: "step".into(),
            target_name: "work-3".into(),
            step: "upgrade".into(),
            state: "failed".into(),
            message: "helm upgrade timed out".into(),
            duration_ms: 1500,
            ..Default::default()
        };
        let l = line(&e);
        assert!(
            l.contains("work-3: step upgrade failed (1.5s): helm upgrade timed out"),
            "{l}"
        );
    }
}
