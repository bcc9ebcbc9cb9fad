//! Issue 2, "Done when": the real helm 3.17 and 4.1 against one emulated cluster and the local
//! chart repository.
//!
//! - the documented manual procedure (DESIGN.md steps 1–5) verbatim, with the documented
//!   pre-upgrade step (delete the immutable gateway-api-admission Jobs);
//! - `--wait` succeeds when workloads become ready and times out for a `broken` image;
//!   `helm rollback`, `helm history -o json`, `helm status -o json`;
//! - the 0.20.0 upgrade needs its CRDs re-applied first.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;
use skoala_e2e::charts::{HelmHome, image_tag_args, start_repo};
use skoala_e2e::sim::{
    delete_admission_jobs, deployment_images, kubectl, stdout_json, try_kubectl,
};
use skoala_e2e::tools::helm_versions;
use skoala_sim::{Cluster, ClusterConfig};

const NS: &str = "skoala-system";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_procedure_runs_verbatim_with_both_helms() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let url = repo.url();
    for (label, helm) in helm_versions() {
        let cluster = Cluster::start(ClusterConfig::new(format!("procedure-{label}"))).await?;
        let kc = cluster.kubeconfig_path();
        let home = HelmHome::new()?;
        // The starting point: skoala-init 0.19.0 with a value the operator customised.
        home.install_from_repo(
            &helm,
            kc,
            &url,
            "skoala-init",
            "0.19.0",
            &[
                "--set",
                "skoala-agent.logLevel=debug",
                "--wait",
                "--timeout",
                "60s",
            ],
        )
        .await
        .context(label)?;

        // 1. back up the values
        let values = home
            .run(&helm, Some(kc), &["-n", NS, "get", "values", "skoala-init"])
            .await?;
        let backup = home.path().join("skoala-init.yaml");
        std::fs::write(&backup, &values.stdout)?;
        let text = String::from_utf8_lossy(&values.stdout);
        assert!(
            text.contains("logLevel: debug"),
            "{label}: backup lacks the custom value: {text}"
        );
        // 2. + 3.
        home.run(&helm, None, &["repo", "add", "skoala", &url])
            .await?;
        home.run(&helm, None, &["repo", "update"]).await?;
        // Pre-upgrade step of the later docs.
        delete_admission_jobs(kc).await?;
        // 4. the upgrade, verbatim
        let backup_path = backup.display().to_string();
        let mut args: Vec<String> = [
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            NS,
            "skoala-init",
            "skoala/skoala-init",
            "--version=0.19.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(image_tag_args("0.19.2"));
        args.extend(["-f".to_string(), backup_path]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        home.run(&helm, Some(kc), &args).await.context(label)?;
        // 5. re-apply the CRDs the chart ships
        apply_chart_crds(&home, &helm, kc, "0.19.2").await?;

        // The result, as an operator would check it.
        let deploys = stdout_json(&kubectl(kc, &["get", "deploy", "-n", NS, "-o", "json"]).await?)?;
        let images = deployment_images(&deploys);
        for name in ["nacos-operator", "skoala-agent", "sentinel-operator"] {
            let image = images
                .iter()
                .find(|(d, _)| d == name)
                .map(|(_, i)| i.as_str())
                .with_context(|| format!("{label}: no deployment {name} in {images:?}"))?;
            assert!(image.ends_with(":v0.19.2"), "{label}: {name} runs {image}");
        }
        let agent = deploys["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["metadata"]["name"] == "skoala-agent")
            .context("skoala-agent deployment")?;
        let env = &agent["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "LOG_LEVEL" && e["value"] == "debug"),
            "{label}: the custom value did not survive: {env}"
        );
        let logs = kubectl(kc, &["logs", "-n", NS, "deploy/skoala-agent"]).await?;
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains("skoala-agent:v0.19.2"),
            "{label}: kubectl logs reaches the new pod"
        );
        // What an operator sees with plain `kubectl get`: server-side printed columns.
        let table = kubectl(kc, &["get", "deploy", "-n", NS]).await?;
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(
            table.contains("READY") && table.contains("skoala-agent") && table.contains("1/1"),
            "{label}: {table}"
        );
        let status = helm_json(
            &home,
            &helm,
            kc,
            &["status", "skoala-init", "-n", NS, "-o", "json"],
        )
        .await?;
        assert_eq!(status["info"]["status"], "deployed", "{label}");
        let history = helm_json(
            &home,
            &helm,
            kc,
            &["history", "skoala-init", "-n", NS, "-o", "json"],
        )
        .await?;
        let last = history
            .as_array()
            .and_then(|h| h.last())
            .context("history")?;
        assert_eq!(last["chart"], "skoala-init-0.19.2", "{label}: {history}");
        assert_eq!(last["status"], "deployed", "{label}: {history}");
    }
    Ok(())
}

async fn helm_json(
    home: &HelmHome,
    helm: &Path,
    kc: &Path,
    args: &[&str],
) -> anyhow::Result<Value> {
    stdout_json(&home.run(helm, Some(kc), args).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_for_a_broken_image_and_rollback_recovers() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let url = repo.url();
    for (label, helm) in helm_versions() {
        let cluster = Cluster::start(ClusterConfig::new(format!("wait-{label}"))).await?;
        let kc = cluster.kubeconfig_path();
        let home = HelmHome::new()?;
        home.run(&helm, None, &["repo", "add", "skoala", &url])
            .await?;
        let install = [
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            NS,
            "skoala-init",
            "skoala/skoala-init",
            "--version=0.19.0",
            "--wait",
            "--timeout",
            "60s",
        ];
        home.run(&helm, Some(kc), &install).await.context(label)?;
        let deploys = stdout_json(&kubectl(kc, &["get", "deploy", "-n", NS, "-o", "json"]).await?)?;
        for d in deploys["items"].as_array().into_iter().flatten() {
            assert_eq!(
                d["status"]["readyReplicas"], d["spec"]["replicas"],
                "{label}: --wait returned before {} was ready",
                d["metadata"]["name"]
            );
        }

        // An image that can never be pulled: --wait must time out and the release fail.
        let broken = [
            "upgrade",
            "-n",
            NS,
            "skoala-init",
            "skoala/skoala-init",
            "--version=0.19.0",
            "--reuse-values",
            "--set",
            "skoala-agent.image.tag=broken",
            "--wait",
            "--timeout",
            "4s",
        ];
        let out = home.try_run(&helm, Some(kc), &broken).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{label}: --wait succeeded with a broken image"
        );
        assert!(
            stderr.contains("context deadline exceeded") || stderr.contains("not ready"),
            "{label}: unexpected failure: {stderr}"
        );

        home.run(
            &helm,
            Some(kc),
            &[
                "rollback",
                "skoala-init",
                "1",
                "-n",
                NS,
                "--wait",
                "--timeout",
                "60s",
            ],
        )
        .await
        .context(label)?;
        let history = helm_json(
            &home,
            &helm,
            kc,
            &["history", "skoala-init", "-n", NS, "-o", "json"],
        )
        .await?;
        let states: Vec<(i64, String)> = history
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["revision"].as_i64().unwrap_or(0),
                    r["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(
            states,
            vec![
                (1, "superseded".to_string()),
                (2, "failed".to_string()),
                (3, "deployed".to_string())
            ],
            "{label}: history {history}"
        );
        let status = helm_json(
            &home,
            &helm,
            kc,
            &["status", "skoala-init", "-n", NS, "-o", "json"],
        )
        .await?;
        assert_eq!(status["version"], 3, "{label}");
        assert_eq!(status["info"]["status"], "deployed", "{label}");
        let agent = stdout_json(
            &kubectl(
                kc,
                &["get", "deploy", "skoala-agent", "-n", NS, "-o", "json"],
            )
            .await?,
        )?;
        let image = agent["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default();
        assert!(
            image.ends_with(":v0.19.0"),
            "{label}: rollback left {image}"
        );
    }
    Ok(())
}

/// The ContourDeployment object skoala-init 0.20.0 renders.
/// Step 5 of the procedure: pulls `skoala/skoala-init` at `version` and applies the CRDs it
/// ships server-side, as the docs tell an operator to.
async fn apply_chart_crds(
    home: &HelmHome,
    helm: &Path,
    kc: &Path,
    version: &str,
) -> anyhow::Result<()> {
    let pulled = home.path().join("pulled");
    home.run(
        helm,
        None,
        &[
            "pull",
            "skoala/skoala-init",
            &format!("--version={version}"),
            "--untar",
            "--untardir",
            &pulled.display().to_string(),
        ],
    )
    .await?;
    let crds = pulled.join("skoala-init/charts/contour-provisioner/crds");
    kubectl(
        kc,
        &["apply", "--server-side", "-f", &crds.display().to_string()],
    )
    .await?;
    Ok(())
}

async fn contour_deployment(kc: &Path) -> anyhow::Result<Value> {
    let out = kubectl(kc, &["get", "contourdeployments", "-n", NS, "-o", "json"]).await?;
    let list = stdout_json(&out)?;
    list["items"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .context("no ContourDeployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_to_0_20_0_needs_the_crds_first() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let url = repo.url();
    for (label, helm) in helm_versions() {
        for apply_crds_first in [false, true] {
            let cluster = Cluster::start(ClusterConfig::new(format!(
                "crds-{label}-{apply_crds_first}"
            )))
            .await?;
            let kc = cluster.kubeconfig_path();
            let home = HelmHome::new()?;
            home.run(&helm, None, &["repo", "add", "skoala", &url])
                .await?;
            let base = [
                "upgrade",
                "--install",
                "--create-namespace",
                "-n",
                NS,
                "skoala-init",
                "skoala/skoala-init",
            ];
            let mut install = base.to_vec();
            install.push("--version=0.19.2");
            home.run(&helm, Some(kc), &install).await.context(label)?;
            delete_admission_jobs(kc).await?;
            if apply_crds_first {
                apply_chart_crds(&home, &helm, kc, "0.20.0").await?;
            }
            let mut upgrade = base.to_vec();
            upgrade.extend(["--version=0.20.0", "--reuse-values"]);
            let tags = image_tag_args("0.20.0");
            upgrade.extend(tags.iter().map(String::as_str));
            let out = home.try_run(&helm, Some(kc), &upgrade).await?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if apply_crds_first {
                assert!(
                    out.status.success(),
                    "{label}: upgrade after the CRD step failed: {stderr}"
                );
                let cd = contour_deployment(kc).await?;
                assert!(
                    cd["spec"]["envoy"]["logLevel"].is_string(),
                    "{label}: logLevel missing although the CRD has it: {cd}"
                );
                continue;
            }
            // Without the CRD step the new field is unknown to the cluster. Helm 4 applies
            // with fieldValidation=Strict, so the API server rejects the object and the
            // upgrade fails. Helm 3 sends no fieldValidation: like a real API server, the
            // emulator prunes the unknown field and warns, so the upgrade "succeeds" without
            // the setting.
            assert!(
                stderr.contains("spec.envoy.logLevel"),
                "{label}: no mention of the unknown field: {stderr}"
            );
            if label == "helm4" {
                assert!(
                    !out.status.success(),
                    "{label}: upgrade without CRDs succeeded"
                );
            } else {
                let cd = contour_deployment(kc).await?;
                assert!(
                    cd["spec"]["envoy"].get("logLevel").is_none(),
                    "{label}: the old CRD kept an unknown field: {cd}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_crds_client_side_and_server_side() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("kubectl-crds")).await?;
    let kc = cluster.kubeconfig_path();
    let charts = skoala_e2e::charts::charts_dir();
    let old = charts.join("overlays/skoala-init-0.19/charts/contour-provisioner/crds");
    let new = charts.join("skoala-init/charts/contour-provisioner/crds");
    let name = "contourdeployments.projectcontour.io";
    let has_log_level = |crd: &Value| {
        !crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["envoy"]["properties"]["logLevel"]
            .is_null()
    };
    // Client-side: create, then a three-way patch to the 0.20.0 schema.
    kubectl(kc, &["apply", "-f", &old.display().to_string()]).await?;
    let crd = stdout_json(&kubectl(kc, &["get", "crd", name, "-o", "json"]).await?)?;
    assert!(!has_log_level(&crd));
    assert!(
        crd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "client-side apply records its configuration"
    );
    kubectl(kc, &["apply", "-f", &new.display().to_string()]).await?;
    let crd = stdout_json(&kubectl(kc, &["get", "crd", name, "-o", "json"]).await?)?;
    assert!(
        has_log_level(&crd),
        "client-side apply did not update the schema"
    );
    // Server-side, as skoala-fleet does it: back to the old schema and forward again.
    for (dir, want) in [(&old, false), (&new, true)] {
        kubectl(
            kc,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                &dir.display().to_string(),
            ],
        )
        .await?;
        let crd = stdout_json(&kubectl(kc, &["get", "crd", name, "-o", "json"]).await?)?;
        assert_eq!(
            has_log_level(&crd),
            want,
            "server-side apply of {}",
            dir.display()
        );
    }
    let can = kubectl(
        kc,
        &["auth", "can-i", "create", "deployments", "-n", "extra"],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    // `kubectl create` sends protobuf bodies for built-in kinds.
    kubectl(kc, &["create", "namespace", "extra"]).await?;
    kubectl(kc, &["create", "serviceaccount", "robot", "-n", "extra"]).await?;
    kubectl(
        kc,
        &[
            "create",
            "secret",
            "generic",
            "s",
            "-n",
            "extra",
            "--from-literal=k=v",
        ],
    )
    .await?;
    kubectl(
        kc,
        &[
            "create",
            "configmap",
            "c",
            "-n",
            "extra",
            "--from-literal=k=v",
        ],
    )
    .await?;
    // The type is served: an object using the new field is accepted.
    let cr = cluster_file(
        &cluster,
        "cd.yaml",
        "apiVersion: projectcontour.io/v1alpha1\nkind: ContourDeployment\nmetadata: {name: gw, namespace: default}\nspec: {envoy: {replicas: 1, logLevel: debug}}\n",
    )?;
    kubectl(kc, &["apply", "--server-side", "-f", &cr]).await?;
    let out = try_kubectl(
        kc,
        &[
            "get",
            "contourdeployment",
            "gw",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.envoy.logLevel}",
        ],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "debug");
    Ok(())
}

/// Writes a file next to the cluster's kubeconfig and returns its path.
fn cluster_file(cluster: &Cluster, name: &str, content: &str) -> anyhow::Result<String> {
    let dir = cluster
        .kubeconfig_path()
        .parent()
        .context("kubeconfig has a folder")?;
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.display().to_string())
}
