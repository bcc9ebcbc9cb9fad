//! `skoala-sim`: run an emulated Kubernetes API server, or a Helm chart repository, as a
//! process (for the demo and for tests that need separate processes).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skoala-sim",
    version,
    about = "Emulated Kubernetes API servers and a Helm chart repository for skoala-fleet tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one emulated Kubernetes cluster until SIGTERM/SIGINT.
    ///
    /// Prints `listening on <url>` on stdout once ready. Fault injection for other processes:
    /// POST a JSON command to `<url>/_sim/faults` with the kubeconfig's bearer token, e.g.
    /// {"action":"fail","method":"PATCH","path":"/secrets","status":500,"count":1},
    /// {"action":"latency","path":"","millis":200}, {"action":"stop"} (drop connections),
    /// {"action":"freeze"} (hold requests unanswered), {"action":"resume"}, {"action":"clear"}.
    Cluster {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Cluster name (kubeconfig cluster/context name).
        #[arg(long)]
        name: String,
        /// Where to write the kubeconfig (mode 0600).
        #[arg(long)]
        kubeconfig_out: PathBuf,
        /// Serve plain HTTP instead of HTTPS.
        #[arg(long)]
        insecure_http: bool,
        /// Milliseconds after creation until workload pods are ready.
        #[arg(long, default_value_t = 200)]
        readiness_delay_ms: u64,
        /// Images containing this string never become ready.
        #[arg(long, default_value = ":broken")]
        never_ready_image: String,
    },
    /// Serve many emulated clusters from one process (for demos and fleet benchmarks).
    ///
    /// Writes `<dir>/<prefix>-<i>.kubeconfig` for each cluster, prints one line
    /// `cluster <name> <url> <kubeconfig>` per cluster and then `ready <count>`, and runs until
    /// SIGTERM/SIGINT.
    Fleet {
        /// How many clusters.
        #[arg(long)]
        count: usize,
        /// Cluster name prefix.
        #[arg(long, default_value = "work")]
        prefix: String,
        /// Folder for the kubeconfigs.
        #[arg(long)]
        dir: PathBuf,
        /// Milliseconds after creation until workload pods are ready.
        #[arg(long, default_value_t = 200)]
        readiness_delay_ms: u64,
    },
    /// Serve a Helm chart repository (index.yaml + .tgz) built from chart folders.
    ChartRepo {
        /// Folder holding chart source folders.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skoala_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    // Before anything is served: a SIGTERM sent as soon as the address is printed must count.
    let stop =
        skoala_support::shutdown::requested().context("installing SIGTERM/SIGINT handlers")?;
    match command {
        Command::Cluster {
            listen,
            name,
            kubeconfig_out,
            insecure_http,
            readiness_delay_ms,
            never_ready_image,
        } => {
            let config = skoala_sim::ClusterConfig::new(name)
                .listen(listen)
                .insecure_http(insecure_http)
                .readiness_delay(Duration::from_millis(readiness_delay_ms))
                .never_ready_image(never_ready_image);
            let cluster = skoala_sim::Cluster::start(config)
                .await
                .context("starting the emulated cluster")?;
            skoala_sim::cluster::write_private(&kubeconfig_out, cluster.kubeconfig_yaml())
                .with_context(|| format!("writing {}", kubeconfig_out.display()))?;
            println!("listening on {}", cluster.url());
            stop.await;
            drop(cluster);
        }
        Command::Fleet {
            count,
            prefix,
            dir,
            readiness_delay_ms,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut clusters = Vec::with_capacity(count);
            for i in 1..=count {
                let name = format!("{prefix}-{i}");
                let config = skoala_sim::ClusterConfig::new(&name)
                    .readiness_delay(Duration::from_millis(readiness_delay_ms));
                let cluster = skoala_sim::Cluster::start(config)
                    .await
                    .with_context(|| format!("starting cluster {name}"))?;
                let path = dir.join(format!("{name}.kubeconfig"));
                skoala_sim::cluster::write_private(&path, cluster.kubeconfig_yaml())
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("cluster {name} {} {}", cluster.url(), path.display());
                clusters.push(cluster);
            }
            println!("ready {count}");
            stop.await;
            drop(clusters);
        }
        Command::ChartRepo { dir, listen } => {
            let repo = skoala_sim::chart_repo::serve(&dir, listen)
                .await
                .with_context(|| format!("serving charts from {}", dir.display()))?;
            println!("listening on {}", repo.url());
            stop.await;
            drop(repo);
        }
    }
    Ok(())
}
