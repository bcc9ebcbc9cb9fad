//! The executor with exactly the agent chart's rights, on a real cluster, helm 3 and 4: the
//! upgrade (backup, CRDs, the immutable Jobs, `helm upgrade --wait` on real Deployments and a
//! Job, verify) keeps a customised value; a broken image fails helm's wait on a real rollout and
//! is rolled back and verified; a SIGKILL of the executor and its helm mid-upgrade leaves
//! `pending-upgrade`, which the same operation recovers.
//!
//! This is the agent's own code path (`skoala_upgrade::Executor`, and the `skoala-upgrade`
//! binary for the kill) with the ServiceAccount token the agent's pod gets: under the old chart
//! (no `leases` in the agent's Role) every one of these refused at the lock.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use skoala_e2e::charts::{PASSWORD, custom_values, repo_source, run_operation, start_repo};
use skoala_e2e::real::{self, FLEET_NAMESPACE, Helm, RELEASE_NAMESPACE};
use skoala_e2e::tools::our_bin;
use skoala_e2e::wait;
use skoala_upgrade::inventory::{TrackedRelease, read_release};
use skoala_upgrade::{Outcome, ReleaseSpec, ReleaseStatus, Step, backup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agents_rights_helm4_upgrades_rolls_back_and_recovers() -> anyhow::Result<()> {
    story(Helm::V4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agents_rights_helm3_upgrades_rolls_back_and_recovers() -> anyhow::Result<()> {
    story(Helm::V3).await
}

async fn story(h: Helm) -> anyhow::Result<()> {
    let label = h.label();
    let repo = start_repo().await?;
    let cluster = real::cluster(&format!("upgrade-{label}")).await?;
    real::namespace(&cluster, RELEASE_NAMESPACE, &[]).await?;
    // The operator's install of skoala-init, with a customised value and a password.
    let values = cluster.dir().join("values.yaml");
    std::fs::write(&values, custom_values())?;
    let url = repo.url();
    real::helm(
        &cluster,
        h,
        &[
            "install",
            "skoala-init",
            "skoala-init",
            "--repo",
            &url,
            "--version",
            "0.19.0",
            "-n",
            RELEASE_NAMESPACE,
            "-f",
            values.to_str().context("utf-8")?,
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await?;
    // The agent's chart, for its ServiceAccount and RBAC (its pod is not needed here).
    let chart = real::product_chart("skoala-fleet-agent");
    let mut install = vec![
        "install",
        "skoala-fleet-agent",
        chart.to_str().context("utf-8")?,
        "-n",
        FLEET_NAMESPACE,
        "--create-namespace",
    ];
    install.extend(real::PLACEHOLDER_AGENT_VALUES);
    real::helm(&cluster, Helm::V4, &install).await?;
    let kubeconfig = cluster
        .service_account_kubeconfig(FLEET_NAMESPACE, "skoala-fleet-agent")
        .await?;
    let client = skoala_e2e::real::client(&kubeconfig).await?;
    let helm = skoala_upgrade::Helm::detect(h.path(), &kubeconfig).await?;
    let executor = skoala_upgrade::Executor::new(client.clone(), helm);
    let release = || async {
        read_release(&client, &TrackedRelease::skoala_init())
            .await?
            .context("skoala-init is installed")
    };

    // 1. The upgrade, with the agent's rights only.
    let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
    let (report, events) = run_operation(&executor, "op-up", &spec).await?;
    assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
    for e in &events {
        assert!(!e.message.contains(PASSWORD), "{label}: leaked in {e:?}");
    }
    let after = release().await?;
    assert_eq!(
        (after.chart_version.as_str(), after.status.as_str()),
        ("0.19.2", "deployed"),
        "{label}"
    );
    let level = cluster
        .kubectl(&[
            "-n",
            RELEASE_NAMESPACE,
            "get",
            "deployment",
            "skoala-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"LOG_LEVEL\")].value}",
        ])
        .await?;
    assert_eq!(level, "debug", "{label}: the customised value survived");
    // A real rollout: the new ReplicaSet's pods are Ready (kwok), the old ones gone.
    cluster
        .kubectl(&[
            "-n",
            RELEASE_NAMESPACE,
            "rollout",
            "status",
            "deployment/skoala-agent",
            "--timeout=60s",
        ])
        .await?;
    let backups = backup::list(&client, RELEASE_NAMESPACE, "skoala-init").await?;
    assert_eq!(backups.len(), 1, "{label}: one backup before the upgrade");

    // 2. A broken image: helm's wait fails on the real rollout; rolled back and verified.
    let mut broken = ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0");
    broken.image_tag = Some("broken".into());
    broken.timeout = Duration::from_secs(10);
    let (report, _) = run_operation(&executor, "op-broken", &broken).await?;
    assert_eq!(report.outcome, Outcome::RolledBack, "{label}: {report:#?}");
    assert_eq!(report.failed_step, Some(Step::Upgrade), "{label}");
    let back = release().await?;
    assert_eq!(
        (back.chart_version.as_str(), back.status.as_str()),
        ("0.19.2", "deployed"),
        "{label}: back where it was"
    );

    // 3. SIGKILL of the executor and its helm while helm waits for pods that never get ready.
    let mut child = tokio::process::Command::new(our_bin("skoala-upgrade"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--helm")
        .arg(h.path())
        .args(["--operation-id", "op-crash", "--release", "skoala-init"])
        .args([
            "--version",
            "0.20.0",
            "--repo-url",
            &url,
            "--image-tag",
            "broken",
        ])
        .args(["--timeout-secs", "120"])
        .env_remove("KUBECONFIG")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pgid = child.id().context("pid")?;
    wait::until(
        "the release to be pending-upgrade",
        Duration::from_secs(90),
        || async { (release().await.ok()?.status == ReleaseStatus::PendingUpgrade).then_some(()) },
    )
    .await?;
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .await?;
    assert!(killed.success(), "kill the process group");
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert_eq!(
        release().await?.status,
        ReleaseStatus::PendingUpgrade,
        "{label}: stuck"
    );

    // The same operation again: the stale pending release is rolled back (its lock is not
    // renewed any more), the upgrade retried once, fails on the broken image again, and the
    // release ends deployed and healthy where it was.
    let mut crash = ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0");
    crash.image_tag = Some("broken".into());
    crash.timeout = Duration::from_secs(10);
    let (report, _) = run_operation(&executor, "op-crash", &crash).await?;
    assert!(report.recovered, "{label}: {report:#?}");
    let end = release().await?;
    assert_eq!(
        (end.chart_version.as_str(), end.status.as_str()),
        ("0.19.2", "deployed"),
        "{label}: recovered: {report:#?}"
    );
    // And a good upgrade still goes through afterwards.
    let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0");
    let (report, _) = run_operation(&executor, "op-final", &spec).await?;
    assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
    Ok(())
}
