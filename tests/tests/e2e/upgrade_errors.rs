//! Clear errors, nothing changed or lost, helm 3 and 4: a chart version that does not exist,
//! an unreachable repository, a relayed `.tgz` with a wrong checksum, and API errors injected
//! by the emulator at the operation record, the permission check and the backup. The relay
//! path with the right checksum then upgrades. Finally an API error under helm itself, in the
//! middle of an upgrade, ends in a verified rollback.

use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::{ChartSource, Outcome, ReleaseSpec, Step, backup, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_upgrade_change_nothing() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("errors-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;
        let unchanged = |what: &'static str| {
            let fx = &fx;
            let before = before.clone();
            async move {
                let now = fx.release("skoala-init").await?;
                assert_eq!(now, before, "{label}: {what} changed the release");
                anyhow::Ok(())
            }
        };
        let nothing_written = || async {
            assert!(
                backup::list(&fx.client, "skoala-system", "skoala-init")
                    .await?
                    .is_empty()
            );
            let rec = record::RecordStore::new(&fx.client, "skoala-system", "skoala-init")
                .load()
                .await?;
            assert_eq!(rec, None, "{label}: no operation record");
            anyhow::Ok(())
        };

        // A version the repository does not have.
        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "9.9.9");
        let (r, events) = fx.run("op-missing-version", &spec).await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Refused, Some(Step::Chart)),
            "{label}: {r:#?}"
        );
        assert!(r.message.contains("9.9.9"), "{label}: {}", r.message);
        let chart_event = events
            .iter()
            .rev()
            .find(|e| e.step == Step::Chart)
            .expect("chart event");
        assert_eq!(chart_event.helm_exit_code, Some(1), "{label}");
        assert!(
            chart_event
                .stderr_tail
                .as_deref()
                .unwrap_or_default()
                .contains("9.9.9")
        );
        unchanged("a missing version").await?;
        nothing_written().await?;

        // An unreachable repository: a port that was just free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dead = ChartSource::Repository {
            name: "skoala".into(),
            url: format!("http://127.0.0.1:{port}"),
        };
        let (r, _) = fx
            .run("op-unreachable", &ReleaseSpec::skoala_init(dead, "0.19.2"))
            .await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Refused, Some(Step::Chart)),
            "{label}: {r:#?}"
        );
        assert!(
            r.message.contains(&format!("127.0.0.1:{port}")),
            "{label}: {}",
            r.message
        );
        unchanged("an unreachable repository").await?;
        nothing_written().await?;

        // A relayed chart with a wrong checksum.
        let dir = tempfile::tempdir()?;
        let tgz = repo.write_tgz("skoala-init", "0.19.2", dir.path())?;
        let wrong = ChartSource::Archive {
            path: tgz.clone(),
            sha256: "0".repeat(64),
        };
        let (r, _) = fx
            .run(
                "op-bad-checksum",
                &ReleaseSpec::skoala_init(wrong, "0.19.2"),
            )
            .await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Refused, Some(Step::Chart)),
            "{label}: {r:#?}"
        );
        assert!(
            r.message.contains("sha256") && r.message.contains("refusing"),
            "{label}: {}",
            r.message
        );
        unchanged("a wrong checksum").await?;
        nothing_written().await?;

        // API errors injected by the emulator.
        let good = ChartSource::Archive {
            path: tgz.clone(),
            sha256: repo
                .chart("skoala-init", "0.19.2")
                .expect("served")
                .digest
                .clone(),
        };
        let spec = ReleaseSpec::skoala_init(good, "0.19.2");
        fx.cluster
            .faults()
            .fail_next(Some("GET"), "/configmaps/skoala-fleet-operation-", 500, 1);
        let err = fx
            .run("op-faults", &spec)
            .await
            .expect_err("the record cannot be read");
        assert!(
            format!("{err:#}").contains("operation record"),
            "{label}: {err:#}"
        );
        unchanged("a failed record read").await?;
        nothing_written().await?;

        fx.cluster
            .faults()
            .fail_next(Some("POST"), "selfsubjectaccessreviews", 500, 1);
        let (r, _) = fx.run("op-faults", &spec).await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Refused, Some(Step::Preflight)),
            "{label}: {r:#?}"
        );
        assert!(r.message.contains("permissions"), "{label}: {}", r.message);
        unchanged("a failed permission check").await?;
        nothing_written().await?;

        fx.cluster
            .faults()
            .fail_next(Some("POST"), "/namespaces/skoala-system/secrets", 500, 1);
        let (r, _) = fx.run("op-faults", &spec).await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Failed, Some(Step::Backup)),
            "{label}: {r:#?}"
        );
        assert!(
            r.message.contains("500") || r.message.to_lowercase().contains("internal"),
            "{label}: {}",
            r.message
        );
        unchanged("a failed backup").await?;
        assert!(
            backup::list(&fx.client, "skoala-system", "skoala-init")
                .await?
                .is_empty()
        );

        // The failed operation is final for its id; a new operation goes through the relay path.
        fx.cluster.faults().clear();
        let (r, _) = fx.run("op-relay", &spec).await?;
        assert_eq!(r.outcome, Outcome::Succeeded, "{label}: {r:#?}");
        assert_eq!(fx.release("skoala-init").await?.chart_version, "0.19.2");
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );

        // An API error under helm itself, mid-upgrade: rolled back, nothing lost.
        let at_0_19_2 = fx.release("skoala-init").await?;
        fx.cluster
            .faults()
            .fail_next(Some("PATCH"), "/deployments/skoala-agent", 500, 1);
        let (r, _) = fx
            .run(
                "op-helm-fault",
                &ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0"),
            )
            .await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::RolledBack, Some(Step::Upgrade)),
            "{label}: {r:#?}"
        );
        let now = fx.release("skoala-init").await?;
        assert_eq!(
            (now.chart_version.as_str(), now.status.as_str()),
            ("0.19.2", "deployed"),
            "{label}"
        );
        assert_eq!(now.image_tags, at_0_19_2.image_tags, "{label}");
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );
        let backups = backup::list(&fx.client, "skoala-system", "skoala-init").await?;
        assert_eq!(
            backups.last().map(|b| &b.backup),
            r.backup.as_ref(),
            "{label}: the backup is stored"
        );
    }
    Ok(())
}
