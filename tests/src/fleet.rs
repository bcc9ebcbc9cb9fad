//! A fleet in a test: a real `skoala-coordinator` process (init + serve in a temp data dir),
//! `skoalactl` invocations with its admin credential, and real `skoala-agent` processes against
//! emulated clusters from `skoala-sim`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use skoala_e2e::fleet::Fleet;
//! let fleet = Fleet::start(3).await?;           // coordinator + 3 clusters + 3 agents
//! fleet.wait_connected(3).await?;               // all sessions up
//! let clusters = fleet.coordinator.ctl().clusters().await?; // `skoalactl clusters -o json`
//! # Ok(()) }
//! ```
//!
//! Every process is started with `PR_SET_PDEATHSIG`, so it dies with the test even if the test
//! process is killed, and is SIGKILLed when its handle drops. Logs go to files next to the
//! process's temp dir; [`Coordinator::log`] and [`Agent::log`] read them for failure messages.
//!
//! [`raw`] builds hand-made gRPC clients (any certificate, any claim) for the refusal tests.

pub mod agent;
pub mod coordinator;
pub mod ctl;
pub mod h2raw;
pub mod load;
pub mod plans;
pub mod raw;

pub use agent::{Agent, AgentOptions, Endpoint};
pub use coordinator::{Coordinator, CoordinatorOptions, DataDirSetup};
pub use ctl::Ctl;
pub use load::Load;

use std::time::Duration;

use anyhow::Context;

/// Generous upper bound for a fleet to come up on a loaded 2-core machine.
pub const FLEET_TIMEOUT: Duration = Duration::from_secs(120);

/// A coordinator, N emulated clusters and one agent per cluster.
pub struct Fleet {
    /// The coordinator process.
    pub coordinator: Coordinator,
    /// The emulated working clusters, `work-1..=n`.
    pub clusters: Vec<skoala_sim::Cluster>,
    /// One agent process per cluster, in the same order.
    pub agents: Vec<Agent>,
}

impl Fleet {
    /// Starts a coordinator and `n` clusters with agents named `work-1..=n`, each labelled
    /// `fleet=test` and `index=<i>`, all registering with one `n`-use token.
    pub async fn start(n: usize) -> anyhow::Result<Fleet> {
        Self::start_with(
            n,
            CoordinatorOptions {
                metrics: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Like [`Fleet::start`], with coordinator flags.
    pub async fn start_with(n: usize, opts: CoordinatorOptions) -> anyhow::Result<Fleet> {
        let coordinator = Coordinator::start_with(opts).await?;
        let clusters = skoala_sim::start_clusters(n, "work")
            .await
            .context("starting emulated clusters")?;
        let token = coordinator
            .ctl()
            .token(n as u32, "1h")
            .await
            .context("creating the fleet's join token")?;
        let mut agents = Vec::with_capacity(n);
        for (i, cluster) in clusters.iter().enumerate() {
            prepare_cluster(cluster).await?;
            let opts = AgentOptions::named(cluster.name())
                .label("fleet", "test")
                .label("index", &(i + 1).to_string());
            agents.push(Agent::start(&coordinator, cluster, Some(&token), opts)?);
        }
        Ok(Fleet {
            coordinator,
            clusters,
            agents,
        })
    }

    /// Waits until `n` clusters show as connected in `skoalactl clusters`.
    pub async fn wait_connected(&self, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        self.coordinator
            .wait_connected(n, FLEET_TIMEOUT)
            .await
            .with_context(|| self.logs())
    }

    /// All agent logs and the coordinator log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- coordinator log:\n{}", self.coordinator.log());
        for a in &self.agents {
            out.push_str(&format!("\n--- agent {} log:\n{}", a.name(), a.log()));
        }
        out
    }
}

/// The agent's own namespace, where its identity Secret lives.
pub const AGENT_NAMESPACE: &str = "skoala-system";

/// Prepares an emulated cluster the way the agent's install chart would: its namespace exists.
pub async fn prepare_cluster(cluster: &skoala_sim::Cluster) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let client = cluster.client().await.context("kube client for the sim")?;
    let ns: Api<Namespace> = Api::all(client);
    let mut object = Namespace::default();
    object.metadata.name = Some(AGENT_NAMESPACE.to_string());
    match ns.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {AGENT_NAMESPACE}")),
    }
}

/// Makes a child die with the test process (Linux `PR_SET_PDEATHSIG`), even when the test
/// process is SIGKILLed and drops nothing. For a `tokio::process::Command`, pass
/// `cmd.as_std_mut()`.
pub use skoala_realkube::die_with_parent;

/// The last `max` bytes of a log file (or why it cannot be read).
pub(crate) fn tail(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
