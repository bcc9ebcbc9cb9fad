//! A fleet on real control planes, as users run it: a real control-plane cluster with `skoala`
//! and the coordinator installed from its chart, real working clusters with `skoala-init` and
//! the agent installed from its chart, and optionally emulated working clusters beside them
//! (agents as local processes), all at one version.

use std::path::{Path, PathBuf};

use anyhow::Context;
use skoala_realkube::RealCluster;

use super::{AgentInstall, Helm, InstalledAgent, InstalledCoordinator, RELEASE_NAMESPACE, helm};
use crate::charts::{ChartRepo, start_repo};
use crate::fleet::plans::{PlanView, install};
use crate::fleet::{Agent, AgentOptions, Ctl, Endpoint, prepare_cluster};

/// How the fleet is built.
#[derive(Clone, Debug)]
pub struct RealFleetOptions {
    /// The helm in the coordinator's "image".
    pub coordinator_helm: Helm,
    /// One real working cluster per entry, its agent carrying that helm.
    pub real_workers: Vec<Helm>,
    /// Emulated working clusters.
    pub sim_workers: usize,
    /// The version installed everywhere first.
    pub from: String,
    /// Where the coordinator keeps the fleet (`store.type` of its chart).
    pub store: Store,
    /// How long after an upgrade the emulated workers' workloads become ready (the
    /// emulator's default otherwise): a slower `helm upgrade --wait` there.
    pub sim_readiness_delay: Option<std::time::Duration>,
}

/// The coordinator chart's `store.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Store {
    /// One replica on a SQLite file (the chart's default).
    #[default]
    Sqlite,
    /// The fleet on the control-plane cluster's API server: two replicas, one leading
    /// ([`InstalledCoordinator::install_kube`]).
    Kube,
}

impl Default for RealFleetOptions {
    fn default() -> Self {
        RealFleetOptions {
            coordinator_helm: Helm::V4,
            real_workers: vec![Helm::V4],
            sim_workers: 0,
            from: "0.19.0".into(),
            store: Store::Sqlite,
            sim_readiness_delay: None,
        }
    }
}

/// A real working cluster and its agent's pod.
pub struct RealWorker {
    /// `real-<i>`: the cluster name its agent reports.
    pub name: String,
    /// The real control plane.
    pub cluster: RealCluster,
    /// The agent chart installed into it, and its pod.
    pub agent: InstalledAgent,
}

/// The whole fleet. Working clusters are named `real-<i>` and `sim-<i>`, labelled `fleet=test`.
pub struct RealFleet {
    /// The test chart repository plans install from.
    pub repo: ChartRepo,
    /// The control-plane cluster, where the coordinator chart is installed.
    pub control_plane: RealCluster,
    /// The coordinator chart and its pod.
    pub coordinator: InstalledCoordinator,
    /// The real working clusters.
    pub real: Vec<RealWorker>,
    /// Emulated working clusters beside them, with agent processes.
    pub sim: Vec<(skoala_sim::Cluster, Agent)>,
    scratch: tempfile::TempDir,
}

/// `helm upgrade --install` of `chart` `version` from the repository as the cluster's admin.
pub async fn install_release(
    cluster: &RealCluster,
    repo: &ChartRepo,
    chart: &str,
    version: &str,
) -> anyhow::Result<()> {
    let url = repo.url();
    helm(
        cluster,
        Helm::V4,
        &[
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            RELEASE_NAMESPACE,
            chart,
            chart,
            "--repo",
            &url,
            "--version",
            version,
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await
    .with_context(|| format!("installing {chart} {version} into {}", cluster.name()))?;
    Ok(())
}

impl RealFleet {
    /// Starts the real clusters, installs the charts as an operator would, and starts the
    /// emulated workers.
    pub async fn start(opts: RealFleetOptions) -> anyhow::Result<RealFleet> {
        let repo = start_repo().await?;
        let scratch = tempfile::Builder::new().prefix("real-fleet-").tempdir()?;
        let control_plane = super::cluster("control-plane").await?;
        install_release(&control_plane, &repo, "skoala", &opts.from).await?;
        let coordinator = match opts.store {
            Store::Sqlite => {
                InstalledCoordinator::install(&control_plane, opts.coordinator_helm).await
            }
            Store::Kube => {
                InstalledCoordinator::install_kube(&control_plane, opts.coordinator_helm, &[]).await
            }
        }
        .with_context(|| format!("\n{}", control_plane.log_tails(800)))?;
        let ctl = coordinator.ctl();
        let total = opts.real_workers.len() + opts.sim_workers;
        let token = ctl.token(total as u32, "1h").await?;

        let mut real = Vec::new();
        for (i, h) in opts.real_workers.iter().enumerate() {
            let name = format!("real-{}", i + 1);
            let cluster = super::cluster(&name).await?;
            install_release(&cluster, &repo, "skoala-init", &opts.from).await?;
            let agent = InstalledAgent::install(
                &cluster,
                coordinator.endpoint(),
                &coordinator.ca_file(),
                &token,
                AgentInstall::new(&name, *h).label("fleet", "test"),
            )
            .await?;
            real.push(RealWorker {
                name,
                cluster,
                agent,
            });
        }
        let mut sim = Vec::new();
        for i in 1..=opts.sim_workers {
            let name = format!("sim-{i}");
            let mut config = skoala_sim::ClusterConfig::new(name.clone());
            if let Some(d) = opts.sim_readiness_delay {
                config = config.readiness_delay(d);
            }
            let cluster = skoala_sim::Cluster::start(config).await?;
            prepare_cluster(&cluster).await?;
            install(&repo, cluster.kubeconfig_path(), "skoala-init", &opts.from).await?;
            let agent = Agent::start_at(
                Endpoint {
                    url: coordinator.endpoint(),
                    ca_file: &coordinator.ca_file(),
                    log_dir: scratch.path(),
                },
                cluster.kubeconfig_path(),
                Some(&token),
                AgentOptions::named(&name).label("fleet", "test"),
            )?;
            sim.push((cluster, agent));
        }
        let fleet = RealFleet {
            repo,
            control_plane,
            coordinator,
            real,
            sim,
            scratch,
        };
        for name in fleet.cluster_names().iter().skip(1) {
            ctl.wait_connected(name, true)
                .await
                .with_context(|| fleet.logs())?;
        }
        Ok(fleet)
    }

    /// The coordinator's and every real agent's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- coordinator ---\n{}\n", self.coordinator.pod.log());
        if let Some(standby) = &self.coordinator.standby {
            out.push_str(&format!(
                "--- the other coordinator replica ---\n{}\n",
                standby.log()
            ));
        }
        for w in &self.real {
            out.push_str(&format!(
                "--- agent {} ---\n{}\n",
                w.name,
                w.agent.pod.log()
            ));
        }
        out
    }
}

impl PlanView for RealFleet {
    fn ctl(&self) -> Ctl {
        self.coordinator.ctl()
    }

    fn repo(&self) -> &ChartRepo {
        &self.repo
    }

    fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    fn coordinator_log(&self) -> String {
        self.logs()
    }

    fn cluster_names(&self) -> Vec<String> {
        let mut names = vec!["control-plane".to_string()];
        names.extend(self.real.iter().map(|w| w.name.clone()));
        names.extend(self.sim.iter().map(|(c, _)| c.name().to_string()));
        names
    }

    fn kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name == "control-plane" {
            return Ok(self.control_plane.admin_kubeconfig().to_path_buf());
        }
        if let Some(w) = self.real.iter().find(|w| w.name == name) {
            return Ok(w.cluster.admin_kubeconfig().to_path_buf());
        }
        self.sim
            .iter()
            .find(|(c, _)| c.name() == name)
            .map(|(c, _)| c.kubeconfig_path().to_path_buf())
            .with_context(|| format!("no cluster {name}"))
    }
}
