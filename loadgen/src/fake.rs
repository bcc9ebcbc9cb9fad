//! What a simulated agent pretends about its cluster: a synthetic `skoala-init` release, and
//! upgrades that take a fixed time and always succeed.
//!
//! Like the executor's operation record, a simulated cluster remembers the operations it
//! finished: a re-delivered one (the coordinator re-sends what it has no result for, e.g.
//! after a restart) gets its recorded result again and is not run a second time. Only work
//! actually run is noted in the receipts and counted as accepted; re-deliveries are counted
//! as `tasks_repeated`.
//!
//! The messages are the real ones (`TaskAccepted` from the runner, then `StepProgress` for the
//! executor's steps, the values backup, a `TaskResult` with the release as it is afterwards,
//! and the changed inventory), so the coordinator cannot tell a simulated agent from a real one
//! except by how fast and how reliably its clusters upgrade.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use sha2::{Digest as _, Sha256};
use skoala_agent::tasks::CustomRun;
use skoala_proto::v1::agent_message::Body;
use skoala_proto::v1::{BackupUpload, StepPhase, StepProgress, TaskOutcome, TaskResult};
use skoala_upgrade::inventory::ReleaseInfo;
use tokio::sync::watch;

use super::receipts::{self, Receipts};
use super::stats::{self, Stats};

/// The executor's steps, in order, and each one's share of the upgrade time (per mille).
const STEPS: [(&str, u32); 5] = [
    ("preflight", 50),
    ("backup", 50),
    ("crds", 100),
    ("upgrade", 600),
    ("verify", 200),
];

/// Image-tag keys of `skoala-init` (before 0.20).
const TAG_KEYS: [&str; 3] = [
    "nacos-operator.image.tag",
    "skoala-agent.image.tag",
    "sentinel-operator.image.tag",
];

/// A deployed `skoala-init` at `version`, revision `revision`.
pub fn release(version: &str, revision: i32) -> ReleaseInfo {
    ReleaseInfo {
        release: "skoala-init".into(),
        namespace: "skoala-system".into(),
        chart_name: "skoala-init".into(),
        chart_version: version.into(),
        app_version: version.into(),
        revision,
        status: skoala_upgrade::ReleaseStatus::Deployed,
        image_tags: TAG_KEYS
            .iter()
            .map(|k| (k.to_string(), format!("v{version}")))
            .collect::<BTreeMap<_, _>>(),
        updated: Some(jiff::Timestamp::now()),
    }
}

/// A task runner whose upgrades take `time`, succeed, and move `inventory` to the new version.
/// Each task run is noted in `receipts` the moment the session hands it over; a finished
/// operation delivered again is answered from memory (see the module docs).
pub fn upgrade(
    time: Duration,
    inventory: Arc<watch::Sender<Vec<ReleaseInfo>>>,
    stats: Arc<Stats>,
    receipts: Receipts,
) -> CustomRun {
    // The operation record: finished operations and their results.
    let finished: Arc<Mutex<HashMap<String, TaskResult>>> = Arc::default();
    Arc::new(move |task, outbox| {
        let recorded = finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&task.operation_id)
            .cloned();
        if let Some(result) = recorded {
            stats::inc(&stats.tasks_repeated);
            return async move {
                let _ = outbox.send(Body::TaskResult(result)).await;
            }
            .boxed();
        }
        // Here, not in the future below: the runner calls this as the message is handled,
        // while the future is first polled only after the scheduler gets to it.
        receipts.record(receipts::now_us(), &task.operation_id);
        stats::inc(&stats.tasks_accepted);
        let (inventory, stats, finished) = (inventory.clone(), stats.clone(), finished.clone());
        async move {
            let id = task.operation_id.clone();
            let version = task
                .release
                .as_ref()
                .map(|r| r.version.clone())
                .unwrap_or_default();
            let before = inventory.borrow().first().cloned();
            let revision_before = before.as_ref().map(|r| r.revision).unwrap_or(0);
            let progress = |step: &str, phase: StepPhase, took: Duration| {
                Body::StepProgress(StepProgress {
                    operation_id: id.clone(),
                    step: step.into(),
                    phase: phase as i32,
                    at_unix_ms: jiff::Timestamp::now().as_millisecond(),
                    duration_ms: took.as_millis() as i64,
                    ..StepProgress::default()
                })
            };
            for (step, share) in STEPS {
                let took = time * share / 1000;
                // A full outbox (coordinator away) drops progress, as the real runner does.
                let _ = outbox.try_send(progress(step, StepPhase::Started, Duration::ZERO));
                tokio::time::sleep(took).await;
                let _ = outbox.try_send(progress(step, StepPhase::Succeeded, took));
                if step == "backup" {
                    let values = format!("# simulated values of {}\n", task.operation_id);
                    let _ = outbox
                        .send(Body::BackupUpload(BackupUpload {
                            operation_id: id.clone(),
                            release: "skoala-init".into(),
                            revision: revision_before,
                            sha256: hex::encode(Sha256::digest(values.as_bytes())),
                            values_yaml: values.into_bytes(),
                            generation: revision_before.max(1),
                        }))
                        .await;
                }
            }
            let after = release(&version, revision_before + 1);
            let result = TaskResult {
                operation_id: id.clone(),
                outcome: TaskOutcome::Succeeded as i32,
                message: "simulated upgrade".into(),
                revision_before,
                release_after: skoala_upgrade::wire::inventory(std::slice::from_ref(&after))
                    .releases
                    .pop(),
                ..TaskResult::default()
            };
            inventory.send_replace(vec![after]);
            finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, result.clone());
            let _ = outbox.send(Body::TaskResult(result)).await;
            stats::inc(&stats.tasks_succeeded);
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skoala_proto::v1::{ReleaseSpec, Task};
    use tokio::sync::mpsc;

    /// A runner with 2 s upgrades from `from`, its inventory and its counters.
    fn runner(from: &str) -> (CustomRun, watch::Receiver<Vec<ReleaseInfo>>, Arc<Stats>) {
        let (inventory, watched) = watch::channel(vec![release(from, 1)]);
        let stats = Arc::new(Stats::default());
        let run = upgrade(
            Duration::from_secs(2),
            Arc::new(inventory),
            stats.clone(),
            Receipts::off(),
        );
        (run, watched, stats)
    }

    /// An upgrade to 0.19.2.
    fn task(operation_id: &str) -> Task {
        Task {
            operation_id: operation_id.into(),
            release: Some(ReleaseSpec {
                version: "0.19.2".into(),
                ..ReleaseSpec::default()
            }),
            ..Task::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_upgrade_reports_like_the_executor_and_moves_the_inventory() {
        let (run, watched, stats) = runner("0.18.0");
        let (tx, mut rx) = mpsc::channel(64);
        let task = task("op-1");
        let started = tokio::time::Instant::now();
        run(task, tx).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "takes --upgrade-time"
        );

        let mut seen = Vec::new();
        while let Ok(body) = rx.try_recv() {
            seen.push(body);
        }
        let steps: Vec<String> = seen
            .iter()
            .filter_map(|b| match b {
                Body::StepProgress(p) if p.phase == StepPhase::Succeeded as i32 => {
                    Some(p.step.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(steps, ["preflight", "backup", "crds", "upgrade", "verify"]);
        let backup_at = seen
            .iter()
            .position(|b| matches!(b, Body::BackupUpload(_)))
            .expect("a backup is uploaded");
        let upgrade_at = seen
            .iter()
            .position(|b| matches!(b, Body::StepProgress(p) if p.step == "upgrade"))
            .expect("upgrade progress");
        assert!(
            backup_at < upgrade_at,
            "the backup goes out before the upgrade starts"
        );
        let Some(Body::TaskResult(result)) = seen.last() else {
            panic!("the last message is the result: {seen:?}");
        };
        assert_eq!(result.outcome, TaskOutcome::Succeeded as i32);
        assert_eq!(result.revision_before, 1);
        let after = result.release_after.as_ref().expect("release after");
        assert_eq!(
            (after.chart_version.as_str(), after.revision),
            ("0.19.2", 2)
        );
        assert_eq!(watched.borrow()[0].chart_version, "0.19.2");
        assert_eq!(
            stats
                .tasks_succeeded
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_operation_delivered_again_gets_its_result_and_is_not_run_again() {
        let (run, watched, stats) = runner("0.19.0");
        let task = task("plan.c.upgrade-1");
        let (tx, mut rx) = mpsc::channel(64);
        run(task.clone(), tx).await;
        let mut first = None;
        while let Ok(body) = rx.try_recv() {
            if let Body::TaskResult(r) = body {
                first = Some(r);
            }
        }
        let first = first.expect("the first delivery's result");

        let (tx, mut rx) = mpsc::channel(64);
        let started = tokio::time::Instant::now();
        run(task, tx).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing is run again");
        let Ok(Body::TaskResult(again)) = rx.try_recv() else {
            panic!("the recorded result is reported again");
        };
        assert_eq!(again, first);
        assert!(rx.try_recv().is_err(), "no progress for work not done");
        assert_eq!(watched.borrow()[0].revision, 2, "upgraded once");
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count(&stats.tasks_accepted), 1);
        assert_eq!(count(&stats.tasks_succeeded), 1);
        assert_eq!(count(&stats.tasks_repeated), 1);
    }
}
