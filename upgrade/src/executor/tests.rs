//! The executor's steps and driver against a fake helm and a fake API ([`super::fake`]).

use std::sync::Arc;

use futures::FutureExt as _;
use skoala_plan::ReleaseStatus;
use tokio::sync::mpsc;

use super::fake::{FakeCluster, FakeHelm, Revision, Shared, World, chart_archive};
use super::run::Run;
use super::steps::{CrdsDone, Moment};
use super::{BackupUpload, Mode, Operation, execute};
use crate::record::{OperationRecord, RecordPhase};
use crate::report::{Outcome, Phase, ProgressEvent, Report, Step, StepOutcome};
use crate::spec::{ChartSource, CrdPolicy, ReleaseSpec};

use Step::{Backup, Chart, Crds, Preflight, Recover, Rollback, Upgrade, Verify};
use StepOutcome::{Failed, Skipped, Succeeded};

const OP: &str = "p.c1.upgrade-1";

/// A release at 0.19.0 to be upgraded to 0.19.2 from a delivered archive.
struct Case {
    world: Shared,
    cluster: FakeCluster,
    helm: FakeHelm,
    spec: ReleaseSpec,
    upload: Option<BackupUpload>,
    _charts: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let world = World::deployed("0.19.0");
        let charts = tempfile::tempdir().expect("tempdir");
        let (path, sha256) = chart_archive(charts.path(), "skoala-init", "0.19.2");
        let mut spec = ReleaseSpec::new(
            "skoala-init",
            "skoala-system",
            ChartSource::Archive { path, sha256 },
            "0.19.2",
        );
        spec.image_tag_keys = vec!["skoala-agent.image.tag".into()];
        spec.delete_jobs = vec!["gateway-api-admission".into()];
        Case {
            cluster: FakeCluster(world.clone()),
            helm: FakeHelm::new(&world),
            world,
            spec,
            upload: None,
            _charts: charts,
        }
    }

    /// Uploads journal `upload <generation>`, or fail with `error`.
    fn upload(mut self, error: Option<&'static str>) -> Case {
        let world = self.world.clone();
        self.upload = Some(Arc::new(move |backup: crate::Backup| {
            let world = world.clone();
            async move {
                match error {
                    Some(e) => Err(e.to_string()),
                    None => {
                        world
                            .lock()
                            .journal
                            .push(format!("upload {}", backup.generation));
                        Ok(())
                    }
                }
            }
            .boxed()
        }));
        self
    }

    async fn run_as(&self, op: &str, mode: Mode) -> (Report, Vec<ProgressEvent>) {
        let (tx, mut rx) = mpsc::channel(256);
        let op = Operation::new(op);
        let upload = self.upload.clone();
        let report = execute(&self.cluster, &self.helm, upload, &op, &self.spec, mode, tx)
            .await
            .expect("a report");
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (report, events)
    }

    async fn run(&self) -> Report {
        self.run_as(OP, Mode::Upgrade).await.0
    }

    fn journal(&self) -> Vec<String> {
        self.world.lock().journal.clone()
    }

    /// `entry` is in the journal, before `later`.
    fn before(&self, entry: &str, later: &str) {
        let w = self.world.lock();
        let (a, b) = (w.at(entry), w.at(later));
        assert!(
            a.is_some() && b.is_some() && a < b,
            "{entry} before {later}: {:?}",
            w.journal
        );
    }
}

fn steps(report: &Report) -> Vec<(Step, StepOutcome)> {
    report.steps.iter().map(|s| (s.step, s.outcome)).collect()
}

/// The operation ended `outcome` at `step`.
fn ended(report: &Report, outcome: Outcome, step: Step) {
    let at = (report.outcome, report.failed_step);
    assert_eq!(at, (outcome, Some(step)), "{}", report.message);
}

#[tokio::test]
async fn an_upgrade_runs_the_documented_steps_in_order() {
    let case = Case::new().upload(None);
    let (report, events) = case.run_as(OP, Mode::Upgrade).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert_eq!(
        steps(&report),
        [
            (Preflight, Succeeded),
            (Chart, Succeeded),
            (Backup, Succeeded),
            (Crds, Succeeded),
            (Upgrade, Succeeded),
            (Verify, Succeeded),
        ]
    );
    assert_eq!(
        case.journal(),
        [
            "record running",
            "backup 1",
            "record running",
            "upload 1",
            "crds widgets.example.io",
            "delete jobs gateway-api-admission",
            "upgrade 0.19.2",
            "record succeeded",
        ]
    );
    assert_eq!(report.version_before.as_deref(), Some("0.19.0"));
    assert_eq!(report.version_after.as_deref(), Some("0.19.2"));
    assert_eq!(
        (report.revision_before, report.revision_after),
        (Some(1), Some(2))
    );
    assert_eq!(report.message, "upgraded skoala-init from 0.19.0 to 0.19.2");
    assert!(case.world.lock().lease.is_none(), "the lock is given up");

    // Every step opens and closes, in order; the backup rides on its step's Finished event.
    let phases: Vec<(Step, Phase)> = events.iter().map(|e| (e.step, e.phase)).collect();
    let expected: Vec<(Step, Phase)> = steps(&report)
        .into_iter()
        .flat_map(|(s, _)| [(s, Phase::Started), (s, Phase::Finished)])
        .collect();
    assert_eq!(phases, expected);
    let with_backup: Vec<Step> = events
        .iter()
        .filter(|e| e.backup.is_some())
        .map(|e| e.step)
        .collect();
    assert_eq!(with_backup, [Backup]);
}

#[tokio::test]
async fn the_backup_is_stored_and_uploaded_before_the_upgrade_and_is_its_values() {
    let case = Case::new().upload(None);
    let report = case.run().await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    case.before("backup 1", "upload 1");
    case.before("upload 1", "upgrade 0.19.2");
    let backup = report.backup.expect("the backup is reported");
    let w = case.world.lock();
    assert_eq!(w.record.as_ref().and_then(|r| r.backup_generation), Some(1));
    // `-f backup -f overrides`: the stored bytes, then our tags over them.
    assert_eq!(w.upgrade_values.len(), 2);
    assert_eq!(w.upgrade_values[0].as_bytes(), backup.values);
    assert!(
        w.upgrade_values[1].contains("tag: v0.19.2"),
        "{}",
        w.upgrade_values[1]
    );
    assert!(w.latest().values.contains("password: hunter2"));
}

#[tokio::test]
async fn a_failed_upload_fails_at_the_backup_step_with_nothing_changed() {
    let case = Case::new().upload(Some("the coordinator did not confirm the backup"));
    let report = case.run().await;
    ended(&report, Outcome::Failed, Backup);
    assert_eq!(
        report.message,
        "uploading the values backup: the coordinator did not confirm the backup"
    );
    assert_eq!(
        steps(&report),
        [(Preflight, Succeeded), (Chart, Succeeded), (Backup, Failed)]
    );
    assert_eq!(
        case.journal(),
        [
            "record running",
            "backup 1",
            "record running",
            "record failed"
        ],
        "nothing but the backup and the record"
    );
    let w = case.world.lock();
    assert_eq!(w.revisions.len(), 1, "the release is untouched");
    assert!(w.crds.is_empty(), "no CRD applied");
}

#[tokio::test]
async fn a_finished_operation_run_again_changes_nothing() {
    let case = Case::new();
    let first = case.run().await;
    assert_eq!(first.outcome, Outcome::Succeeded, "{}", first.message);
    let journal = case.journal();

    let again = case.run().await;
    assert!(again.already_done);
    assert_eq!(again.outcome, Outcome::Succeeded);
    assert_eq!(steps(&again), [(Preflight, Skipped)]);
    assert_eq!(again.backup, first.backup, "the same backup is reported");
    assert_eq!(again.version_after.as_deref(), Some("0.19.2"));
    assert_eq!(case.journal(), journal, "nothing happened");
    assert!(case.world.lock().lease.is_none());
}

#[tokio::test]
async fn a_finished_operation_reports_again_while_another_holds_the_release() {
    let case = Case::new();
    assert_eq!(case.run().await.outcome, Outcome::Succeeded);
    case.world.lock().lease = Some("p.c1.rollback-1".into());
    let again = case.run().await;
    assert!(again.already_done, "{}", again.message);
    assert_eq!(again.outcome, Outcome::Succeeded);
    assert_eq!(case.world.lock().lease.as_deref(), Some("p.c1.rollback-1"));
}

/// What a crash in the middle of `helm upgrade` leaves: our record `running`, our backup, the
/// release `pending-upgrade` at the target, and a lease that expired with its holder.
fn crashed(case: &Case) {
    let mut w = case.world.lock();
    let values = w.latest().values.clone();
    w.revisions[0].status = ReleaseStatus::Superseded;
    w.revisions.push(Revision {
        chart_version: "0.19.2".into(),
        status: ReleaseStatus::PendingUpgrade,
        values,
    });
    let before = w.revisions[0].values.as_bytes().to_vec();
    w.backups.push(crate::backup::Stored {
        backup: crate::Backup {
            secret: crate::backup::secret_name("skoala-init", 1),
            generation: 1,
            sha256: crate::backup::sha256_hex(&before),
            values: before,
        },
        operation_id: OP.into(),
        chart_version: "0.19.0".into(),
    });
    w.record = Some(OperationRecord {
        operation_id: OP.into(),
        phase: RecordPhase::Running,
        target_version: "0.19.2".into(),
        attempt: 1,
        revision_before: Some(1),
        version_before: Some("0.19.0".into()),
        backup_generation: Some(1),
        message: String::new(),
    });
}

#[tokio::test]
async fn a_pending_release_without_a_live_lock_is_rolled_back_and_retried_once() {
    let case = Case::new();
    crashed(&case);
    let report = case.run().await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert!(report.recovered);
    assert_eq!(
        steps(&report),
        [
            (Preflight, Failed),
            (Recover, Succeeded),
            (Preflight, Succeeded),
            (Chart, Succeeded),
            (Backup, Succeeded),
            (Crds, Succeeded),
            (Upgrade, Succeeded),
            (Verify, Succeeded),
        ]
    );
    let journal = case.journal();
    assert_eq!(
        journal.iter().filter(|e| e.starts_with("upgrade")).count(),
        1,
        "retried once: {journal:?}"
    );
    case.before("rollback 1", "upgrade 0.19.2");
    assert!(
        !journal.iter().any(|e| e.starts_with("backup")),
        "the first attempt's backup is reused: {journal:?}"
    );
    assert_eq!(report.backup.map(|b| b.generation), Some(1));
    let w = case.world.lock();
    let record = w.record.as_ref().expect("record");
    assert_eq!((record.attempt, record.phase), (2, RecordPhase::Succeeded));
    assert_eq!(report.version_before.as_deref(), Some("0.19.0"));
}

#[tokio::test]
async fn a_pending_release_under_a_live_lock_is_left_alone() {
    let case = Case::new();
    crashed(&case);
    case.world.lock().lease = Some("p.c1.upgrade-2".into());
    let report = case.run().await;
    ended(&report, Outcome::Refused, Preflight);
    assert!(
        report.message.contains("holds release lock"),
        "{}",
        report.message
    );
    assert!(case.journal().is_empty(), "{:?}", case.journal());
    assert_eq!(case.world.lock().lease.as_deref(), Some("p.c1.upgrade-2"));
}

#[tokio::test]
async fn a_failed_verify_rolls_the_release_back() {
    let case = Case::new();
    let why = "Deployment skoala-system/agent is not ready";
    case.world.lock().faults.unhealthy = Some(why.into());
    let report = case.run().await;
    ended(&report, Outcome::RolledBack, Verify);
    assert_eq!(report.message, why);
    assert_eq!(
        steps(&report)[4..],
        [
            (Upgrade, Succeeded),
            (Verify, Failed),
            (Rollback, Succeeded)
        ]
    );
    case.before("upgrade 0.19.2", "rollback 1");
    let w = case.world.lock();
    assert_eq!(w.latest().chart_version, "0.19.0");
    assert_eq!(
        w.record.as_ref().map(|r| r.phase),
        Some(RecordPhase::RolledBack)
    );
    assert_eq!(report.version_after.as_deref(), Some("0.19.0"));
}

#[tokio::test]
async fn with_rollback_on_failure_off_a_failed_upgrade_is_left_for_an_operator() {
    for fault in ["upgrade", "verify"] {
        let mut case = Case::new();
        case.spec.rollback_on_failure = false;
        {
            let mut w = case.world.lock();
            match fault {
                "upgrade" => w.faults.upgrade = true,
                _ => {
                    w.faults.unhealthy = Some("Deployment skoala-system/agent is not ready".into())
                }
            }
        }
        let report = case.run().await;
        let step = if fault == "upgrade" { Upgrade } else { Verify };
        ended(&report, Outcome::Failed, step);
        assert!(
            !steps(&report).iter().any(|(s, _)| *s == Rollback),
            "{fault}: {:?}",
            steps(&report)
        );
        assert!(
            !case.journal().iter().any(|e| e.starts_with("rollback")),
            "{fault}: {:?}",
            case.journal()
        );
        let kept = report.rollback_message.as_deref().unwrap_or_default();
        assert!(kept.contains("rollbackOnFailure: false"), "{fault}: {kept}");
        assert_eq!(
            case.world.lock().record.as_ref().map(|r| r.phase),
            Some(RecordPhase::Failed),
            "{fault}"
        );
    }
}

#[tokio::test]
async fn a_rollback_that_does_not_verify_needs_a_human() {
    let case = Case::new();
    {
        let mut w = case.world.lock();
        w.faults.unhealthy = Some("pods crash".into());
        w.faults.rollback_unhealthy = true;
    }
    let report = case.run().await;
    ended(&report, Outcome::RollbackFailed, Verify);
    let rollback = report.rollback_message.expect("rollback message");
    assert!(
        rollback.starts_with("rolled back to revision 1, but"),
        "{rollback}"
    );
    let w = case.world.lock();
    assert_eq!(
        w.record.as_ref().map(|r| r.phase),
        Some(RecordPhase::RollbackFailed)
    );
}

#[tokio::test]
async fn a_failed_helm_upgrade_is_rolled_back_and_its_stderr_redacted() {
    let case = Case::new();
    case.world.lock().faults.upgrade = true;
    let (report, events) = case.run_as(OP, Mode::Upgrade).await;
    ended(&report, Outcome::RolledBack, Upgrade);
    assert!(
        report
            .message
            .starts_with("helm upgrade to 0.19.2 failed (exit code 1)"),
        "{}",
        report.message
    );
    for text in events
        .iter()
        .flat_map(|e| [Some(&e.message), e.stderr_tail.as_ref()])
        .flatten()
        .chain([&report.message])
    {
        assert!(!text.contains("hunter2"), "a value leaked: {text}");
    }
    assert!(
        report.message.contains(crate::redact::MASK),
        "{}",
        report.message
    );
    case.before("upgrade 0.19.2", "rollback 1");
}

#[tokio::test]
async fn crds_are_applied_when_the_policy_says() {
    for (policy, order) in [
        (
            CrdPolicy::Before,
            ["crds widgets.example.io", "upgrade 0.19.2"],
        ),
        (
            CrdPolicy::After,
            ["upgrade 0.19.2", "crds widgets.example.io"],
        ),
    ] {
        let mut case = Case::new();
        case.spec.crd_policy = policy;
        let report = case.run().await;
        assert_eq!(
            report.outcome,
            Outcome::Succeeded,
            "{policy:?}: {}",
            report.message
        );
        case.before(order[0], order[1]);
    }
    let mut case = Case::new();
    case.spec.crd_policy = CrdPolicy::Skip;
    let report = case.run().await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert_eq!(
        steps(&report)[3..5],
        [(Crds, Skipped), (Upgrade, Succeeded)]
    );
    assert!(case.world.lock().crds.is_empty());
}

#[tokio::test]
async fn a_crd_that_does_not_apply_before_the_upgrade_changes_nothing_else() {
    let case = Case::new();
    case.world.lock().faults.apply_crds = true;
    let report = case.run().await;
    ended(&report, Outcome::Failed, Crds);
    assert!(!case.journal().iter().any(|e| e.starts_with("upgrade")));
    assert_eq!(case.world.lock().revisions.len(), 1);
}

#[tokio::test]
async fn the_crd_step_acts_at_the_moment_its_policy_names() {
    for (policy, before, after) in [
        (
            CrdPolicy::Before,
            CrdsDone::Applied(vec!["widgets.example.io".into()]),
            CrdsDone::NotNow,
        ),
        (
            CrdPolicy::After,
            CrdsDone::NotNow,
            CrdsDone::Applied(vec!["widgets.example.io".into()]),
        ),
        (CrdPolicy::Skip, CrdsDone::Skipped, CrdsDone::NotNow),
    ] {
        let mut case = Case::new();
        case.spec.crd_policy = policy;
        let (tx, _rx) = mpsc::channel(64);
        let mut run = Run::new(
            &case.cluster,
            &case.helm,
            &case.spec,
            OP,
            Mode::Upgrade,
            None,
            tx,
        );
        let chart = run.chart().await.expect("the chart");
        assert_eq!(chart.crds.len(), 1);
        let now = run.crds(&chart, Moment::BeforeUpgrade).await;
        assert_eq!(now.expect("applies"), before, "{policy:?}");
        let later = run.crds(&chart, Moment::AfterUpgrade).await;
        assert_eq!(later.expect("applies"), after, "{policy:?}");
    }
}

#[tokio::test]
async fn preflight_reads_and_writes_nothing() {
    let mut case = Case::new();
    // A pin that matches the archive passes (upper-case hex too).
    if let ChartSource::Archive { sha256, .. } = &case.spec.source {
        case.spec.chart_sha256 = Some(sha256.to_ascii_uppercase());
    }
    let (report, _) = case.run_as(OP, Mode::Preflight).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert_eq!(steps(&report), [(Preflight, Succeeded), (Chart, Succeeded)]);
    assert!(
        report
            .message
            .starts_with("preflight passed: chart skoala-init 0.19.2")
    );
    assert!(case.journal().is_empty(), "{:?}", case.journal());
    let w = case.world.lock();
    assert!(w.record.is_none() && w.lease.is_none());
}

#[tokio::test]
async fn refusals_come_before_the_first_write() {
    let mut wrong_sum = Case::new();
    if let ChartSource::Archive { sha256, .. } = &mut wrong_sum.spec.source {
        *sha256 = "0".repeat(64);
    }
    // The plan pins another digest than the archive has (a repository over plain http).
    let mut wrong_pin = Case::new();
    wrong_pin.spec.chart_sha256 = Some("1".repeat(64));
    let denied = Case::new();
    denied.world.lock().faults.denied = vec!["create core/secrets".into()];
    let missing = Case::new();
    missing.world.lock().revisions.clear();

    for (case, step, says) in [
        (wrong_sum, Chart, "expected 0000"),
        (
            wrong_pin,
            Chart,
            "but the plan pins 1111111111111111111111111111111111111111111111111111111111111111 (spec.repository.digests.skoala-init)",
        ),
        (
            denied,
            Preflight,
            "missing permissions: create core/secrets",
        ),
        (
            missing,
            Preflight,
            "is not installed in namespace skoala-system",
        ),
    ] {
        let report = case.run().await;
        ended(&report, Outcome::Refused, step);
        assert!(report.message.contains(says), "{}", report.message);
        assert!(case.journal().is_empty(), "{:?}", case.journal());
        assert!(case.world.lock().lease.is_none(), "the lock is given up");
    }
}

#[tokio::test]
async fn an_attempt_interrupted_after_helm_succeeded_is_not_repeated() {
    let case = Case::new();
    crashed(&case);
    case.world.lock().revisions[1].status = ReleaseStatus::Deployed;
    {
        // helm finished the upgrade (with our tags) before the process died.
        let mut w = case.world.lock();
        w.revisions[1].values =
            "password: hunter2\nskoala-agent:\n  image:\n    tag: v0.19.2\n".into();
    }
    let report = case.run().await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert!(
        report
            .message
            .starts_with("an interrupted attempt of this operation")
    );
    assert_eq!(steps(&report), [(Preflight, Succeeded)]);
    assert_eq!(case.journal(), ["record succeeded"]);
}

#[tokio::test]
async fn a_rollback_operation_backs_up_then_returns_to_the_earlier_revision() {
    let case = Case::new();
    assert_eq!(case.run().await.outcome, Outcome::Succeeded);
    let (report, _) = case.run_as("p.c1.rollback-1", Mode::Rollback(None)).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{}", report.message);
    assert_eq!(
        steps(&report),
        [
            (Preflight, Succeeded),
            (Backup, Succeeded),
            (Rollback, Succeeded),
            (Verify, Succeeded),
        ]
    );
    case.before("backup 2", "rollback 1");
    let w = case.world.lock();
    assert_eq!(w.latest().chart_version, "0.19.0");
    assert_eq!(report.version_after.as_deref(), Some("0.19.0"));
    assert_eq!(
        w.record.as_ref().map(|r| r.phase),
        Some(RecordPhase::Succeeded)
    );
}
