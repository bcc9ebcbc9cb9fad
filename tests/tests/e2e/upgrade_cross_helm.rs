//! Releases installed by one helm major and upgraded by the other: helm 4 installs with
//! server-side apply and helm 3 with client-side three-way merges, and the executor must
//! upgrade either. Also covers the CRD policy `after`.

use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::{helm_versions, tool};
use skoala_upgrade::{CrdPolicy, Outcome, ReleaseSpec, Step, StepOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_a_release_installed_by_the_other_helm() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        // Install with the other major.
        let (other_label, other) = if label == "helm4" {
            ("helm3", tool("helm3"))
        } else {
            ("helm4", tool("helm"))
        };
        let installer = UpgradeFixture::start(
            other_label,
            &other,
            skoala_sim::ClusterConfig::new(format!("cross-{label}")),
        )
        .await?;
        installer
            .install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let exec = skoala_upgrade::Executor::new(
            installer.client.clone(),
            skoala_upgrade::Helm::detect(&helm, installer.cluster.kubeconfig_path()).await?,
        );
        let mut spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
        spec.crd_policy = CrdPolicy::After;
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let collect = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(e) = rx.recv().await {
                v.push(e);
            }
            v
        });
        let report = exec
            .run(&skoala_upgrade::Operation::new("op-cross"), &spec, tx)
            .await?;
        let events = collect.await?;
        assert_eq!(
            report.outcome,
            Outcome::Succeeded,
            "{label} upgrading {other_label}'s release: {report:#?}"
        );
        assert_eq!(
            installer.image("skoala-agent").await?,
            "release.daocloud.io/skoala/skoala-agent:v0.19.2"
        );
        assert_eq!(
            installer.env("skoala-agent", "LOG_LEVEL").await?.as_deref(),
            Some("debug")
        );
        // CRDs after the upgrade: the CRD step comes after the upgrade step.
        let order: Vec<Step> = events
            .iter()
            .filter(|e| e.outcome == Some(StepOutcome::Succeeded))
            .map(|e| e.step)
            .collect();
        let upgrade = order.iter().position(|s| *s == Step::Upgrade);
        let crds = order.iter().position(|s| *s == Step::Crds);
        assert!(upgrade < crds && upgrade.is_some(), "{label}: {order:?}");
    }
    Ok(())
}
