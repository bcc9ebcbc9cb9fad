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

/// A private helm home (config, cache, data, repositories) in a temporary folder.
pub struct HelmHome {
    dir: tempfile::TempDir,
}

impl HelmHome {
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
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env(
                "HELM_REPOSITORY_CONFIG",
                home.join("config/repositories.yaml"),
            )
            .env("HELM_REPOSITORY_CACHE", home.join("cache/repository"))
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
