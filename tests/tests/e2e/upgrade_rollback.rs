//! A broken image, helm 3 and 4: helm's wait fails, the executor rolls the release back to
//! 0.19.0, verifies it healthy, keeps the backup intact, and reports both the failure and the
//! rollback. No value leaks into any message.

use std::time::Duration;

use skoala_e2e::charts::{
    PASSWORD, UpgradeFixture, assert_no_leak, custom_values, repo_source, start_repo,
};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::{Outcome, ReleaseSpec, Step, backup, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_image_is_rolled_back_and_verified() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("rollback-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;

        let mut spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
        // The emulator never makes a container with a `broken` image ready.
        spec.image_tag = Some("broken".into());
        // Bounds both the failing wait and the rollback's wait: roomy enough for a loaded CI box.
        spec.timeout = Duration::from_secs(15);
        let (report, events) = fx.run("op-broken", &spec).await?;

        assert_eq!(report.outcome, Outcome::RolledBack, "{label}: {report:#?}");
        assert_eq!(report.failed_step, Some(Step::Upgrade), "{label}");
        assert!(
            report.message.contains("helm upgrade to 0.19.2 failed"),
            "{label}: {}",
            report.message
        );
        let rollback = report.rollback_message.clone().unwrap_or_default();
        assert!(
            rollback.contains(&format!("rolled back to revision {}", before.revision))
                && rollback.contains("verified healthy"),
            "{label}: {rollback}"
        );
        assert_eq!(report.version_after.as_deref(), Some("0.19.0"));

        // The cluster: back at 0.19.0, healthy, custom value intact.
        let after = fx.release("skoala-init").await?;
        assert_eq!(
            (after.chart_version.as_str(), after.status.as_str()),
            ("0.19.0", "deployed"),
            "{label}"
        );
        assert_eq!(
            fx.image("skoala-agent").await?,
            "release.daocloud.io/skoala/skoala-agent:v0.19.0"
        );
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );

        // The backup is intact and matches what the report handed over.
        let b = report.backup.clone().expect("backup");
        let stored = backup::list(&fx.client, "skoala-system", "skoala-init").await?;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].backup, b);

        // The record says how it ended; a re-delivery reports the same and changes nothing.
        let rec = record::RecordStore::new(&fx.client, "skoala-system", "skoala-init")
            .load()
            .await?
            .expect("operation record");
        assert_eq!(rec.phase, record::RecordPhase::RolledBack);
        let (again, _) = fx.run("op-broken", &spec).await?;
        assert_eq!(again.outcome, Outcome::RolledBack, "{label}");
        assert!(again.already_done);
        assert_eq!(fx.release("skoala-init").await?.revision, after.revision);

        assert_no_leak(PASSWORD, &report, &events);
    }
    Ok(())
}
