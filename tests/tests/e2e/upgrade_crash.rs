//! SIGKILL mid-upgrade, helm 3 and 4: the `skoala-upgrade` process (and its helm child, as
//! when a pod dies) is killed while helm waits for the new pods, leaving the release
//! `pending-upgrade`; running the same operation again recovers the release (rollback to the
//! revision before), retries once, and ends at the target version, reusing the first
//! attempt's backup.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::{helm_versions, our_bin};
use skoala_e2e::wait;
use skoala_upgrade::{
    Outcome, Phase, ReleaseSpec, ReleaseStatus, Step, StepOutcome, backup, record,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upgrade_is_recovered_by_the_next_run() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let bin = our_bin("skoala-upgrade");
    for (label, helm) in helm_versions() {
        // Slow readiness keeps helm in its wait long enough to be killed there.
        let config = skoala_sim::ClusterConfig::new(format!("crash-{label}"))
            .readiness_delay(Duration::from_secs(3));
        let fx = UpgradeFixture::start(label, &helm, config).await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;

        let mut child = tokio::process::Command::new(&bin)
            .args(["--kubeconfig"])
            .arg(fx.cluster.kubeconfig_path())
            .arg("--helm")
            .arg(&helm)
            .args(["--operation-id", "op-crash", "--release", "skoala-init"])
            .args(["--version", "0.19.2", "--repo-url", &repo.url()])
            .args(["--timeout-secs", "60"])
            // Its own process group, so the kill takes helm with it, as a dying pod would.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start skoala-upgrade")?;
        let pgid = child.id().context("child pid")?;

        wait::until(
            "the release to be pending-upgrade",
            Duration::from_secs(60),
            || async {
                let info = fx.release("skoala-init").await.ok()?;
                (info.status == ReleaseStatus::PendingUpgrade).then_some(())
            },
        )
        .await?;
        let killed = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status()
            .await?;
        assert!(killed.success(), "kill the process group");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        assert!(!status.success(), "{label}: the run was killed");
        let stuck = fx.release("skoala-init").await?;
        assert_eq!(
            stuck.status,
            ReleaseStatus::PendingUpgrade,
            "{label}: helm died mid-upgrade"
        );

        // The same operation again.
        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
        let (report, events) = fx.run("op-crash", &spec).await?;
        assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
        assert!(report.recovered, "{label}");
        assert_eq!(
            report.revision_before,
            Some(before.revision),
            "{label}: before = before the first attempt"
        );
        assert_eq!(report.version_after.as_deref(), Some("0.19.2"));
        let recover = events
            .iter()
            .find(|e| e.step == Step::Recover && e.phase == Phase::Finished)
            .context("a recover step")?;
        assert_eq!(
            recover.outcome,
            Some(StepOutcome::Succeeded),
            "{label}: {}",
            recover.message
        );
        let after = fx.release("skoala-init").await?;
        assert_eq!(
            (after.chart_version.as_str(), after.status.as_str()),
            ("0.19.2", "deployed")
        );
        assert_eq!(
            fx.image("skoala-agent").await?,
            "release.daocloud.io/skoala/skoala-agent:v0.19.2"
        );
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );
        // One backup: the first attempt's, reused.
        let backups = backup::list(&fx.client, "skoala-system", "skoala-init").await?;
        assert_eq!(backups.len(), 1, "{label}");
        assert_eq!(report.backup.as_ref(), Some(&backups[0].backup));

        // The binary, re-run with the same operation id: done already, exit code 0.
        let out = tokio::process::Command::new(&bin)
            .arg("--kubeconfig")
            .arg(fx.cluster.kubeconfig_path())
            .arg("--helm")
            .arg(&helm)
            .args([
                "--operation-id",
                "op-crash",
                "--version",
                "0.19.2",
                "--repo-url",
                &repo.url(),
            ])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{label}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("outcome: succeeded"), "{label}: {stdout}");
        assert_eq!(
            fx.release("skoala-init").await?.revision,
            after.revision,
            "{label}: nothing redone"
        );
    }
    Ok(())
}

/// The process died after helm finished but before the record said so: the re-run verifies
/// the release and reports success without a second upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_helm_finished_is_not_upgraded_twice() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let (label, helm) = helm_versions()[0].clone();
    let fx =
        UpgradeFixture::start(label, &helm, skoala_sim::ClusterConfig::new("crash-after")).await?;
    fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
        .await?;
    let before = fx.release("skoala-init").await?;
    // What an interrupted run leaves: its record `running` ...
    let mut records = record::RecordStore::new(&fx.client, "skoala-system", "skoala-init");
    records
        .save(&record::OperationRecord {
            operation_id: "op-done".into(),
            phase: record::RecordPhase::Running,
            target_version: "0.19.2".into(),
            attempt: 1,
            revision_before: Some(before.revision),
            version_before: Some(before.chart_version.clone()),
            backup_generation: None,
            message: String::new(),
        })
        .await?;
    // ... and the upgrade it ran, complete.
    let values = "nacos-operator: {image: {tag: v0.19.2}}\nskoala-agent: {image: {tag: v0.19.2}}\nsentinel-operator: {image: {tag: v0.19.2}}\n";
    fx.delete_admission_jobs().await?;
    fx.install(&repo, "skoala-init", "0.19.2", values).await?;
    let upgraded = fx.release("skoala-init").await?;

    let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
    let (report, _) = fx.run("op-done", &spec).await?;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:#?}");
    assert!(
        report.message.contains("already upgraded"),
        "{}",
        report.message
    );
    assert_eq!(
        fx.release("skoala-init").await?.revision,
        upgraded.revision,
        "no second upgrade"
    );
    let rec = records.load().await?.expect("record");
    assert_eq!(rec.phase, record::RecordPhase::Succeeded);
    Ok(())
}
