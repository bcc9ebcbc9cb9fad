//! 0.19.0 → 0.19.2 with the executor, helm 3 and 4: tags updated, the operator's custom value
//! still there, the backup Secret present with a matching checksum, every step reported, no
//! value in any message, and a re-run of the same operation is a no-op. Also the control
//! plane's `skoala` release, and the offline variant (relayed `.tgz`, `global.imageRegistry`).

use skoala_e2e::charts::{
    PASSWORD, UpgradeFixture, assert_no_leak, custom_values, repo_source, start_repo,
};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::{Outcome, Phase, ReleaseSpec, Step, StepOutcome, backup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_0_19_0_to_0_19_2_keeps_custom_values_and_backs_up() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("basic-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;

        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
        let (report, events) = fx.run("op-basic", &spec).await?;
        assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
        assert_eq!(report.version_before.as_deref(), Some("0.19.0"));
        assert_eq!(report.version_after.as_deref(), Some("0.19.2"));
        assert_eq!(report.revision_before, Some(before.revision));
        assert!(report.revision_after > report.revision_before);

        // Tags and the custom value.
        for d in ["nacos-operator", "skoala-agent", "sentinel-operator"] {
            assert_eq!(
                fx.image(d).await?,
                format!("release.daocloud.io/skoala/{d}:v0.19.2"),
                "{label}"
            );
        }
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug"),
            "{label}: custom value survived"
        );

        // The backup: in the cluster, checksum matching, holding the operator's values.
        let b = report.backup.clone().expect("a backup");
        let stored = backup::list(&fx.client, "skoala-system", "skoala-init").await?;
        let found = stored
            .iter()
            .find(|s| s.backup.secret == b.secret)
            .expect("backup Secret stored");
        assert_eq!(found.backup.sha256, b.sha256);
        assert_eq!(backup::sha256_hex(&found.backup.values), b.sha256);
        assert_eq!(found.operation_id, "op-basic");
        let values: serde_yaml::Value = serde_yaml::from_slice(&b.values)?;
        assert_eq!(values["skoala-agent"]["logLevel"].as_str(), Some("debug"));

        // Every step started and finished, in order.
        let finished: Vec<(Step, StepOutcome)> = events
            .iter()
            .filter(|e| e.phase == Phase::Finished)
            .map(|e| (e.step, e.outcome.expect("finished events carry an outcome")))
            .collect();
        assert_eq!(
            finished,
            [
                (Step::Preflight, StepOutcome::Succeeded),
                (Step::Chart, StepOutcome::Succeeded),
                (Step::Backup, StepOutcome::Succeeded),
                (Step::Crds, StepOutcome::Succeeded),
                (Step::Upgrade, StepOutcome::Succeeded),
                (Step::Verify, StepOutcome::Succeeded),
            ],
            "{label}"
        );
        assert_eq!(
            events.iter().filter(|e| e.phase == Phase::Started).count(),
            finished.len()
        );
        let upgrade = events
            .iter()
            .find(|e| e.step == Step::Upgrade && e.phase == Phase::Finished)
            .expect("upgrade finished");
        assert_eq!(upgrade.helm_exit_code, Some(0), "{label}");
        assert_no_leak(PASSWORD, &report, &events);
        eprintln!("{label} ({}) step durations:", report.helm_version);
        for s in &report.steps {
            eprintln!(
                "  {:<10} {:>8.3}s",
                s.step.as_str(),
                s.duration.as_secs_f64()
            );
        }

        // The same operation again: nothing to do, nothing done.
        let (again, _) = fx.run("op-basic", &spec).await?;
        assert_eq!(again.outcome, Outcome::Succeeded, "{label}: {again:#?}");
        assert!(again.already_done, "{label}");
        assert_eq!(
            fx.release("skoala-init").await?.revision,
            report.revision_after.expect("revision")
        );
        assert_eq!(
            backup::list(&fx.client, "skoala-system", "skoala-init")
                .await?
                .len(),
            1,
            "{label}: no second backup"
        );
    }
    Ok(())
}

/// The control plane's `skoala` release: hive and sesame tags follow the version, the
/// operator's value and the database password survive, the password never leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_the_control_plane_release() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("skoala-{label}")),
        )
        .await?;
        let values = format!("hive:\n  logLevel: warn\n  database:\n    password: {PASSWORD}\n");
        fx.install(&repo, "skoala", "0.19.0", &values).await?;
        let spec = ReleaseSpec::skoala(repo_source(&repo), "0.19.2");
        let (report, events) = fx.run("op-skoala", &spec).await?;
        assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
        for d in ["hive", "sesame"] {
            assert_eq!(
                fx.image(d).await?,
                format!("release.daocloud.io/skoala/{d}:v0.19.2"),
                "{label}"
            );
        }
        assert_eq!(fx.env("hive", "LOG_LEVEL").await?.as_deref(), Some("warn"));
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(fx.client.clone(), "skoala-system");
        let db = secrets.get("hive-database").await?;
        assert_eq!(
            db.data.expect("data")["password"].0,
            PASSWORD.as_bytes(),
            "{label}"
        );
        assert_no_leak(PASSWORD, &report, &events);
    }
    Ok(())
}

/// The offline variant: the chart relayed as a `.tgz` (checked against its sha256) and every
/// image pointed at a local registry through `global.imageRegistry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_upgrade_with_a_relayed_chart_and_a_local_registry() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let dir = tempfile::tempdir()?;
    let tgz = repo.write_tgz("skoala-init", "0.19.2", dir.path())?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("offline-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let source = skoala_upgrade::ChartSource::Archive {
            path: tgz.clone(),
            sha256: backup::sha256_hex(&std::fs::read(&tgz)?),
        };
        let mut spec = ReleaseSpec::skoala_init(source, "0.19.2");
        spec.extra_values = Some(serde_yaml::from_str(
            "global:\n  imageRegistry: registry.local:5000\n",
        )?);
        let (report, _) = fx.run("op-offline", &spec).await?;
        assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
        assert_eq!(
            fx.image("skoala-agent").await?,
            "registry.local:5000/skoala/skoala-agent:v0.19.2",
            "{label}"
        );
        assert_eq!(
            fx.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );
    }
    Ok(())
}
