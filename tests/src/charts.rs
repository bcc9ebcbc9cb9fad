//! The test charts (`tests/charts/`), a chart repository serving them, and helm run in an
//! isolated home.
//!
//! Every test that runs helm directly uses a [`HelmHome`]: private `HELM_*` folders, so tests
//! running in parallel (and the developer's `~/.config/helm`) never share repositories.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::Context as _;
pub use skoala_sim::chart_repo::{ChartRepo, PackagedChart};

/// `tests/charts/`.
pub fn charts_dir() -> PathBuf {
    crate::tools::workspace_root().join("tests/charts")
}

/// Every chart version the repository serves: `(chart, version)`.
pub const VERSIONS: [(&str, &str); 8] = [
    ("skoala", "0.19.0"),
    ("skoala", "0.19.1"),
    ("skoala", "0.19.2"),
    ("skoala", "0.20.0"),
    ("skoala-init", "0.19.0"),
    ("skoala-init", "0.19.1"),
    ("skoala-init", "0.19.2"),
    ("skoala-init", "0.20.0"),
];

/// Starts a chart repository with the test charts on a free loopback port.
pub async fn start_repo() -> anyhow::Result<ChartRepo> {
    skoala_sim::chart_repo::serve(&charts_dir(), "127.0.0.1:0".parse()?)
        .await
        .context("starting the test chart repository")
}

/// `{skoala: <sha256>, skoala-init: <sha256>}`: the plan's `spec.repository.digests` for
/// `version` in `repo`, which serves over plain http (so a plan must pin them). A version the
/// repository lacks gets a well-formed digest of zeros, so the plan reaches the coordinator's
/// own check (which names the missing version).
pub fn digests_yaml(repo: &ChartRepo, version: &str) -> String {
    let digest = |chart: &str| {
        repo.chart(chart, version)
            .map(|c| c.digest.clone())
            .unwrap_or_else(|| "0".repeat(64))
    };
    format!(
        "{{skoala: {}, skoala-init: {}}}",
        digest("skoala"),
        digest("skoala-init")
    )
}

/// A private helm home (config, cache, data, repositories) in a temporary folder.
pub struct HelmHome {
    dir: tempfile::TempDir,
}

impl HelmHome {
    /// A fresh, empty home in a temporary folder (deleted on drop).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("helm-home-").tempdir()?,
        })
    }

    /// A scratch folder inside the home.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `helm` command using this home (and `kubeconfig`, if given).
    pub fn command(&self, helm: &Path, kubeconfig: Option<&Path>) -> tokio::process::Command {
        let home = self.dir.path();
        let mut cmd = tokio::process::Command::new(helm);
        skoala_upgrade::helm::isolate_home(&mut cmd, home)
            .env_remove("HELM_DRIVER")
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        if let Some(kc) = kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        cmd
    }

    /// Runs helm with `args`; fails (with helm's stderr) unless it exits 0.
    pub async fn run(
        &self,
        helm: &Path,
        kubeconfig: Option<&Path>,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let out = self.try_run(helm, kubeconfig, args).await?;
        anyhow::ensure!(
            out.status.success(),
            "helm {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// `helm install <chart> <chart> --repo <repo_url> --version <version> -n skoala-system
    /// --create-namespace <extra>`: a release installed by hand from the repository, as an
    /// operator did before skoala-fleet. Fails (with helm's stderr) unless helm exits 0.
    pub async fn install_from_repo(
        &self,
        helm: &Path,
        kubeconfig: &Path,
        repo_url: &str,
        chart: &str,
        version: &str,
        extra: &[&str],
    ) -> anyhow::Result<Output> {
        let mut args = vec![
            "install",
            chart,
            chart,
            "--repo",
            repo_url,
            "--version",
            version,
            "-n",
            "skoala-system",
            "--create-namespace",
        ];
        args.extend(extra);
        self.run(helm, Some(kubeconfig), &args).await
    }

    /// Runs helm with `args` and returns whatever happened.
    pub async fn try_run(
        &self,
        helm: &Path,
        kubeconfig: Option<&Path>,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        self.command(helm, kubeconfig)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {} {}", helm.display(), args.join(" ")))
    }
}

/// `--set <subchart>.image.tag=v<version>` for the skoala-init subcharts whose image tag
/// follows the chart version: what the documented manual upgrade passes.
pub fn image_tag_args(version: &str) -> Vec<String> {
    ["nacos-operator", "skoala-agent", "sentinel-operator"]
        .iter()
        .flat_map(|c| ["--set".to_string(), format!("{c}.image.tag=v{version}")])
        .collect()
}

/// A password set as a release value in upgrade tests: it must never appear in any event,
/// report message or log.
pub const PASSWORD: &str = "s3cr3t-P4ssw0rd-do-not-leak";

/// The values an operator set when installing skoala-init: a customised log level (which
/// must survive every upgrade) and a password.
pub fn custom_values() -> String {
    format!("skoala-agent:\n  logLevel: debug\n  auth:\n    password: {PASSWORD}\n")
}

/// One emulated cluster, a helm, and an executor for them: what every upgrade test starts from.
pub struct UpgradeFixture {
    /// `helm4` or `helm3`.
    pub label: &'static str,
    /// The helm binary of that major.
    pub helm: PathBuf,
    /// The emulated cluster.
    pub cluster: skoala_sim::Cluster,
    /// A kube client for it, for the test's own checks.
    pub client: kube::Client,
    /// The executor under test, for this cluster and helm.
    pub executor: skoala_upgrade::Executor,
    /// The helm home the test's own helm commands use.
    pub home: HelmHome,
}

impl UpgradeFixture {
    /// Starts the cluster `config` describes, with an executor using `helm` (`label` names it
    /// in messages).
    pub async fn start(
        label: &'static str,
        helm: &Path,
        config: skoala_sim::ClusterConfig,
    ) -> anyhow::Result<Self> {
        let cluster = skoala_sim::Cluster::start(config)
            .await
            .context("starting the emulated cluster")?;
        let client = cluster.client().await?;
        let detected = skoala_upgrade::Helm::detect(helm, cluster.kubeconfig_path()).await?;
        Ok(Self {
            label,
            helm: helm.to_path_buf(),
            executor: skoala_upgrade::Executor::new(client.clone(), detected),
            client,
            cluster,
            home: HelmHome::new()?,
        })
    }

    /// Installs `chart` `version` from `repo` into `skoala-system` the way an operator did,
    /// with `values` (YAML), and waits for it.
    pub async fn install(
        &self,
        repo: &ChartRepo,
        chart: &str,
        version: &str,
        values: &str,
    ) -> anyhow::Result<()> {
        let values_file = self
            .home
            .path()
            .join(format!("{chart}-install-values.yaml"));
        std::fs::write(&values_file, values)?;
        let url = repo.url();
        self.home
            .run(
                &self.helm,
                Some(self.cluster.kubeconfig_path()),
                &[
                    "upgrade",
                    "--install",
                    "--create-namespace",
                    "-n",
                    "skoala-system",
                    chart,
                    chart,
                    "--repo",
                    &url,
                    "--version",
                    version,
                    "-f",
                    values_file.to_str().context("utf-8 path")?,
                    "--wait",
                    "--timeout",
                    "60s",
                ],
            )
            .await
            .with_context(|| format!("{}: installing {chart} {version}", self.label))?;
        Ok(())
    }

    /// The documented pre-upgrade step for a manual upgrade: delete the immutable
    /// gateway-api-admission Jobs, and wait until they are gone.
    pub async fn delete_admission_jobs(&self) -> anyhow::Result<()> {
        crate::sim::delete_admission_jobs(self.cluster.kubeconfig_path()).await
    }

    /// Runs one operation and collects its progress events.
    pub async fn run(
        &self,
        operation: &str,
        spec: &skoala_upgrade::ReleaseSpec,
    ) -> anyhow::Result<(skoala_upgrade::Report, Vec<skoala_upgrade::ProgressEvent>)> {
        run_operation(&self.executor, operation, spec)
            .await
            .with_context(|| format!("{}: operation {operation}", self.label))
    }

    /// The latest revision of `release` in `skoala-system`, read from Helm's records.
    pub async fn release(
        &self,
        release: &str,
    ) -> anyhow::Result<skoala_upgrade::inventory::ReleaseInfo> {
        let tracked = match release {
            "skoala" => skoala_upgrade::inventory::TrackedRelease::skoala(),
            _ => skoala_upgrade::inventory::TrackedRelease::skoala_init(),
        };
        skoala_upgrade::inventory::read_release(&self.client, &tracked)
            .await?
            .with_context(|| format!("release {release} is not installed"))
    }

    /// The image of a Deployment's first container in `skoala-system`.
    pub async fn image(&self, deployment: &str) -> anyhow::Result<String> {
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client.clone(), "skoala-system");
        let d = api.get(deployment).await?;
        d.spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next())
            .and_then(|c| c.image)
            .context("deployment without an image")
    }

    /// The value of an environment variable of a Deployment's first container.
    pub async fn env(&self, deployment: &str, name: &str) -> anyhow::Result<Option<String>> {
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client.clone(), "skoala-system");
        let d = api.get(deployment).await?;
        Ok(d.spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next())
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value))
    }
}

/// Runs one operation with `executor` and collects its progress events.
pub async fn run_operation(
    executor: &skoala_upgrade::Executor,
    operation: &str,
    spec: &skoala_upgrade::ReleaseSpec,
) -> anyhow::Result<(skoala_upgrade::Report, Vec<skoala_upgrade::ProgressEvent>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    });
    let report = executor
        .run(&skoala_upgrade::Operation::new(operation), spec, tx)
        .await?;
    let events = collector.await?;
    Ok((report, events))
}

/// The repository as a chart source for the executor.
pub fn repo_source(repo: &ChartRepo) -> skoala_upgrade::ChartSource {
    skoala_upgrade::ChartSource::Repository {
        name: "skoala".into(),
        url: repo.url(),
    }
}

/// Asserts that nothing in a report or its events contains `secret`.
pub fn assert_no_leak(
    secret: &str,
    report: &skoala_upgrade::Report,
    events: &[skoala_upgrade::ProgressEvent],
) {
    let mut texts = vec![report.message.clone()];
    texts.extend(report.rollback_message.clone());
    for e in events {
        texts.push(e.message.clone());
        texts.extend(e.stderr_tail.clone());
    }
    for t in texts {
        assert!(!t.contains(secret), "a value leaked into {t:?}");
    }
    assert!(
        !format!("{report:?}").contains(secret),
        "a value leaked into the report's Debug"
    );
}
