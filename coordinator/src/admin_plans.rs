//! The plan half of `FleetAdmin`: apply, list, get, the operator's verbs, skew, the event
//! stream and the fleet-wide preflight check. Authorization happens in [`crate::admin_api`] before any of these run; the work is
//! the orchestrator's ([`crate::orchestrator`]).

use std::sync::Arc;
use std::time::Duration;

use skoala_plan::{UpgradePlan, validate};
use skoala_proto::v1::{CheckPlanRequest, PlanEvent, PreflightResult, SkewReport, SkewedCluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::context::Context;
use crate::orchestrator::check::{DEFAULT_DEADLINE, MAX_DEADLINE};
use skoala_store::{PlanEventRecord, Store};

/// Events read from the store per page of a stream.
const PAGE: u32 = 500;
/// How often a following stream looks for new events when nothing woke it (a safety net).
const POLL: Duration = Duration::from_secs(2);

/// `GetSkew`.
pub async fn skew<S: Store>(ctx: &Context<S>) -> Result<SkewReport, Status> {
    let (report, snap) = ctx.orchestrator.skew().await?;
    // One pass over the fleet, not one per skewed cluster (10,000 × 10,000 when all skew).
    let connected = snap.connected_ids();
    Ok(SkewReport {
        control_plane_version: report.control_plane_version.unwrap_or_default(),
        clusters: report
            .clusters
            .into_iter()
            .map(|c| SkewedCluster {
                connected: connected.contains(c.cluster_id.as_str()),
                cluster_id: c.cluster_id,
                name: c.name,
                reasons: c.reasons.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
    })
}

fn to_proto(e: PlanEventRecord) -> PlanEvent {
    PlanEvent {
        id: e.id,
        at_unix_ms: e.at_unix_ms,
        plan: e.plan,
        kind: e.kind,
        target: e.target,
        target_name: e.target_name,
        operation_id: e.operation_id,
        step: e.step,
        state: e.state,
        message: e.message,
        duration_ms: e.duration_ms,
    }
}

/// `WatchEvents`: every event after `after_id`, then (with `follow`) new ones as they are
/// recorded, until the client goes away.
pub fn watch<S: Store>(
    ctx: Arc<Context<S>>,
    plan: String,
    mut after_id: i64,
    follow: bool,
) -> ReceiverStream<Result<PlanEvent, Status>> {
    let (tx, rx) = mpsc::channel(64);
    let mut wake = ctx.orchestrator.events();
    tokio::spawn(async move {
        loop {
            let page = match ctx.store.plan_events(plan.clone(), after_id, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "the coordinator's store is unavailable: {e}"
                        ))))
                        .await;
                    return;
                }
            };
            let full = page.len() as u32 == PAGE;
            for e in page {
                after_id = e.id;
                if tx.send(Ok(to_proto(e))).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if !follow {
                return;
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// `CheckPlan`: resolves the plan (stored by name, or a document), then streams the
/// orchestrator's preflight results. Errors in the request are answered before the stream.
pub async fn check<S: Store>(
    ctx: Arc<Context<S>>,
    req: CheckPlanRequest,
) -> Result<ReceiverStream<Result<PreflightResult, Status>>, Status> {
    let text = match (req.name.is_empty(), req.document.is_empty()) {
        (false, true) => {
            let plans = ctx.store.plans().await.map_err(|e| {
                Status::unavailable(format!("the coordinator's store is unavailable: {e}"))
            })?;
            plans
                .into_iter()
                .find(|p| p.name == req.name)
                .map(|p| p.document)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no plan named {:?} (to check a document that is not applied, pass it with -f)",
                        req.name
                    ))
                })?
        }
        (true, false) => req.document,
        _ => {
            return Err(Status::invalid_argument(
                "give either a plan name or a plan document, not both",
            ));
        }
    };
    let doc = UpgradePlan::from_yaml(&text)
        .map_err(|e| Status::invalid_argument(format!("invalid plan document: {e}")))?;
    let plan = validate(&doc).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let deadline = match req.timeout_seconds {
        0 => DEFAULT_DEADLINE,
        s => Duration::from_secs(u64::from(s)).min(MAX_DEADLINE),
    };
    let (results, mut rx) = mpsc::channel(64);
    let (tx, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        // The check ends when this forwarder stops reading (the caller went away).
        let forward = async {
            while let Some(r) = rx.recv().await {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        };
        let (checked, ()) = tokio::join!(ctx.orchestrator.check(&plan, deadline, results), forward);
        if let Err(e) = checked {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    Ok(ReceiverStream::new(stream))
}
