//! Unknown fields in built-in kinds, as a real API server treats them: kubectl (whose default
//! is `--validate=strict`) and Helm 4 send `fieldValidation=Strict` and get the decoder's error;
//! Helm 3 sends nothing, so the server's default (`Warn`) drops the field. A chart with a typo
//! must fail in the emulator the way it fails on a cluster — and so must the install charts'
//! dry run in `product_charts_install.rs`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::sim::{kubectl, stdout_json, try_kubectl};
use skoala_e2e::tools::{tool, workspace_root};
use skoala_sim::{Cluster, ClusterConfig};

const BOGUS_ERROR: &str = "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.bogusField\"";

fn deployment_yaml(name: &str, typo: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  {typo}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
"
    )
}

fn write(dir: &Path, name: &str, content: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_strict_warn_and_ignore_like_a_real_server() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("validation-kubectl")).await?;
    let kc = cluster.kubeconfig_path();
    let dir = tempfile::tempdir()?;
    let file = write(
        dir.path(),
        "d.yaml",
        &deployment_yaml("web", "bogusField: true"),
    )?;

    // Strict (kubectl's default): the decoder's error, nothing created.
    for extra in [&["--dry-run=server"][..], &[][..], &["--server-side"][..]] {
        let mut args = vec!["apply", "-f", &file];
        args.extend(extra);
        let out = try_kubectl(kc, &args).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl {args:?} accepted a typo");
        assert!(err.contains(BOGUS_ERROR), "kubectl {args:?}: {err}");
    }
    let out = try_kubectl(kc, &["get", "deployment", "web", "-n", "default"]).await?;
    assert!(!out.status.success(), "a rejected apply created the object");

    // Warn: accepted, a warning, the field dropped.
    let out = kubectl(kc, &["apply", "--validate=warn", "-f", &file]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field \"spec.bogusField\""),
        "no warning: {err}"
    );
    let stored = stdout_json(&kubectl(kc, &["get", "deployment", "web", "-o", "json"]).await?)?;
    assert!(stored["spec"].get("bogusField").is_none(), "{stored}");
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    // Ignore: accepted silently (an update this time: the patched result is checked too).
    let other = write(
        dir.path(),
        "d2.yaml",
        &deployment_yaml("web", "replicas: 2\n  bogusField: true"),
    )?;
    let out = kubectl(kc, &["apply", "--validate=false", "-f", &other]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("unknown field"), "Ignore warned: {err}");
    let stored = stdout_json(&kubectl(kc, &["get", "deployment", "web", "-o", "json"]).await?)?;
    assert_eq!(stored["spec"]["replicas"], 2);
    assert!(stored["spec"].get("bogusField").is_none(), "{stored}");

    // A strict update of the existing object is refused as well.
    let out = try_kubectl(kc, &["apply", "-f", &other]).await?;
    assert!(!out.status.success(), "a strict update accepted a typo");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(BOGUS_ERROR),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_refuses_a_chart_with_a_typo_and_helm3_drops_the_field() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("validation-helm")).await?;
    let kc = cluster.kubeconfig_path();
    let home = HelmHome::new()?;
    let chart = home.path().join("typo");
    write(
        &chart,
        "Chart.yaml",
        "apiVersion: v2\nname: typo\nversion: 0.1.0\n",
    )?;
    write(
        &chart,
        "templates/deployment.yaml",
        &deployment_yaml("typo", "bogusField: true"),
    )?;
    let chart = chart.display().to_string();

    let out = home
        .try_run(
            &tool("helm"),
            Some(kc),
            &["install", "four", &chart, "--namespace", "default"],
        )
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "helm 4 installed a chart with a typo"
    );
    assert!(
        err.contains("strict decoding error: unknown field \"spec.bogusField\""),
        "{err}"
    );

    home.run(
        &tool("helm3"),
        Some(kc),
        &["install", "three", &chart, "--namespace", "default"],
    )
    .await
    .context("helm 3 sends no fieldValidation: the server's default drops the field")?;
    let stored = stdout_json(&kubectl(kc, &["get", "deployment", "typo", "-o", "json"]).await?)?;
    assert!(stored["spec"].get("bogusField").is_none(), "{stored}");
    assert_eq!(
        stored["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "three"
    );
    Ok(())
}

/// `product_charts_install.rs` renders the install charts and dry-runs them with kubectl: that check
/// now catches a typo in a template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_charts_dry_run_catches_a_typo() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("validation-install")).await?;
    let kc = cluster.kubeconfig_path();
    kubectl(kc, &["create", "namespace", "skoala-fleet"]).await?;
    let home = HelmHome::new()?;
    let copy: PathBuf = home.path().join("skoala-fleet-agent");
    copy_dir(&workspace_root().join("charts/skoala-fleet-agent"), &copy)?;
    let template = copy.join("templates/deployment.yaml");
    let text = std::fs::read_to_string(&template)?;
    let typo = text.replacen("      serviceAccountName:", "      serviceAcountName:", 1);
    anyhow::ensure!(
        typo != text,
        "the agent chart's Deployment names its ServiceAccount"
    );
    std::fs::write(&template, typo)?;

    let path = copy.display().to_string();
    let rendered = home
        .run(
            &tool("helm"),
            None,
            &[
                "template",
                "fleet",
                &path,
                "--namespace",
                "skoala-fleet",
                "--set",
                "coordinator.url=https://fleet.example.com:7443",
                "--set",
                "coordinator.caBundle=x",
                "--set",
                "joinToken.value=skt_example",
            ],
        )
        .await?;
    let file = write(
        home.path(),
        "agent.yaml",
        &String::from_utf8_lossy(&rendered.stdout),
    )?;
    let out = try_kubectl(kc, &["apply", "--dry-run=server", "-f", &file]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dry run accepted a typo");
    assert!(
        err.contains("unknown field \"spec.template.spec.serviceAcountName\""),
        "{err}"
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
