//! `skoala-demo`: the local fleet demo behind `scripts/demo.sh`.
//!
//! Starts, on this machine only: an emulated control-plane cluster and five emulated working
//! clusters, a local chart repository with the test charts, a real coordinator on its embedded
//! SQLite store (with the control plane's kubeconfig), and one real agent per working cluster.
//! Installs `skoala` and `skoala-init` 0.19.0 with the real helm, shows the fleet as an operator
//! sees it, then upgrades it with a plan when the coordinator supports plans.
//!
//! Every child process dies with this process (Ctrl-C included): nothing is left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::fleet::{Agent, AgentOptions, Coordinator, CoordinatorOptions, prepare_cluster};
use skoala_e2e::tools::{tool, workspace_root};

const WORKERS: usize = 5;
const FROM: &str = "0.19.0";
const TO: &str = "0.19.2";

struct Args {
    keep_running: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut keep_running = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep-running" => keep_running = true,
            "-h" | "--help" => {
                println!(
                    "skoala-demo: a local fleet (1 control plane + {WORKERS} working clusters, emulated) \
                     upgraded from {FROM} to {TO}.\n\n\
                     Usage: scripts/demo.sh [--keep-running]\n\n\
                     --keep-running  leave the fleet up at the end and print the commands to explore it;\n\
                     \x20               Ctrl-C stops everything."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Args { keep_running })
}

/// Prints a step with the time since the demo started.
struct Narrator(Instant);

impl Narrator {
    fn say(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

async fn helm_install(
    home: &HelmHome,
    kubeconfig: &Path,
    release: &str,
    version: &str,
) -> anyhow::Result<()> {
    let chart = format!("skoala/{release}");
    home.run(
        &tool("helm"),
        Some(kubeconfig),
        &[
            "install",
            release,
            &chart,
            "--version",
            version,
            "-n",
            "skoala-system",
            "--create-namespace",
            "--wait",
        ],
    )
    .await
    .map(|_| ())
    .with_context(|| format!("helm install {release} {version}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let n = Narrator(Instant::now());

    n.say("starting a chart repository with the skoala test charts");
    let repo = skoala_sim::chart_repo::serve(
        &workspace_root().join("tests/charts"),
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the chart repository")?;
    let home = HelmHome::new()?;
    home.run(&tool("helm"), None, &["repo", "add", "skoala", &repo.url()])
        .await?;

    n.say(&format!(
        "starting 1 emulated control-plane cluster and {WORKERS} emulated working clusters"
    ));
    let control_plane =
        skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("control-plane")).await?;
    let workers = skoala_sim::start_clusters(WORKERS, "work").await?;

    n.say(&format!("installing skoala {FROM} in the control plane and skoala-init {FROM} in every working cluster"));
    helm_install(&home, control_plane.kubeconfig_path(), "skoala", FROM).await?;
    for w in &workers {
        helm_install(&home, w.kubeconfig_path(), "skoala-init", FROM).await?;
    }

    n.say("starting the coordinator (embedded SQLite store) and one agent per working cluster");
    let coordinator = Coordinator::start_with(CoordinatorOptions {
        metrics: true,
        kubeconfig: Some(control_plane.kubeconfig_path().to_path_buf()),
        ..Default::default()
    })
    .await?;
    let ctl = coordinator.ctl();
    let token = ctl.token(WORKERS as u32, "1h").await?;
    let mut agents = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        prepare_cluster(w).await?;
        let env = if i % 2 == 0 { "prod" } else { "staging" };
        let opts = AgentOptions::named(w.name())
            .label("env", env)
            .label("demo", "true");
        agents.push(Agent::start(&coordinator, w, Some(&token), opts)?);
    }
    coordinator
        .wait_connected(WORKERS, Duration::from_secs(120))
        .await
        .context("waiting for every agent to connect")?;
    n.say("every agent dialled out, registered with the join token, and reported its release:");
    println!();
    println!("{}", ctl.ok(&["clusters"]).await?);

    if args.keep_running {
        print_exploration(
            &coordinator.admin_config(),
            control_plane.kubeconfig_path(),
            &workers,
        );
        n.say("the fleet keeps running; press Ctrl-C to stop everything");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        n.say("stopping");
    }
    drop(agents);
    n.say("done");
    Ok(())
}

fn print_exploration(admin: &Path, cp_kubeconfig: &Path, workers: &[skoala_sim::Cluster]) {
    let bin = workspace_root().join("target/debug");
    let tools = workspace_root().join(".tools/bin");
    let first: PathBuf = workers
        .first()
        .map(|w| w.kubeconfig_path().to_path_buf())
        .unwrap_or_default();
    println!("Explore the running fleet from another terminal:\n");
    println!("  export PATH={}:{}:$PATH", bin.display(), tools.display());
    println!("  export SKOALA_CONFIG={}", admin.display());
    println!("  skoalactl clusters");
    println!("  skoalactl audit");
    println!(
        "  kubectl --kubeconfig {} get deploy -n skoala-system",
        first.display()
    );
    println!(
        "  helm --kubeconfig {} history skoala-init -n skoala-system",
        first.display()
    );
    println!(
        "  helm --kubeconfig {} status skoala -n skoala-system",
        cp_kubeconfig.display()
    );
    println!();
}
