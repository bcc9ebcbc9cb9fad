//! `helm upgrade --install --version` from the test chart repository into an emulated cluster,
//! with the real helm 3 and 4: the documented manual procedure, including the pre-upgrade step
//! (deleting the immutable gateway-api-admission Jobs) that the emulator makes necessary.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{DeleteParams, PropagationPolicy};
use skoala_e2e::charts::{HelmHome, start_repo};
use skoala_e2e::tools::helm_versions;
use skoala_e2e::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_install_from_the_repository_with_both_helms() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let cluster =
            skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new(format!("charts-{label}")))
                .await
                .context("start the emulated cluster")?;
        let kc = cluster.kubeconfig_path();
        let home = HelmHome::new()?;
        home.run(&helm, None, &["repo", "add", "skoala", &repo.url()])
            .await?;
        home.run(&helm, None, &["repo", "update"]).await?;
        let base = [
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            "skoala-system",
            "skoala-init",
            "skoala/skoala-init",
            "--wait",
            "--timeout",
            "60s",
        ];
        let mut install = base.to_vec();
        install.extend([
            "--version",
            "0.19.0",
            "--set",
            "skoala-agent.logLevel=debug",
        ]);
        home.run(&helm, Some(kc), &install).await.context(label)?;
        let mut upgrade = base.to_vec();
        upgrade.extend([
            "--version",
            "0.19.2",
            "--reuse-values",
            "--set",
            "nacos-operator.image.tag=v0.19.2",
            "--set",
            "skoala-agent.image.tag=v0.19.2",
            "--set",
            "sentinel-operator.image.tag=v0.19.2",
        ]);
        // The gateway-api-admission Jobs are immutable: without the documented pre-upgrade
        // step, the upgrade fails, as with a real API server.
        let out = home.try_run(&helm, Some(kc), &upgrade).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("field is immutable"),
            "{label}: {stderr}"
        );
        let client = cluster.client().await?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), "skoala-system");
        for job in ["gateway-api-admission", "gateway-api-admission-patch"] {
            let background = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            jobs.delete(job, &background)
                .await
                .context("delete the Job")?;
        }
        wait::until("Jobs deleted", Duration::from_secs(30), || {
            let jobs = jobs.clone();
            async move {
                jobs.get_opt("gateway-api-admission")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        })
        .await?;
        home.run(&helm, Some(kc), &upgrade).await.context(label)?;

        let deployments: Api<Deployment> = Api::namespaced(client, "skoala-system");
        let agent = wait::until("skoala-agent at v0.19.2", Duration::from_secs(30), || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("skoala-agent").await.ok()?;
                let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
                (c.image.as_deref() == Some("release.daocloud.io/skoala/skoala-agent:v0.19.2"))
                    .then_some(d)
            }
        })
        .await?;
        let env = agent
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            env.iter()
                .any(|e| e.name == "LOG_LEVEL" && e.value.as_deref() == Some("debug")),
            "{label}: the custom value survived"
        );
    }
    Ok(())
}
