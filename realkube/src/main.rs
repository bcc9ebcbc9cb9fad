//! `skoala-realkube`: a real Kubernetes control plane on loopback, for trying the product by
//! hand the way the tests do.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use skoala_realkube::{Binaries, Options, RealCluster};

#[derive(Parser)]
#[command(
    version,
    about = "Real Kubernetes control planes on 127.0.0.1 (etcd, kube-apiserver with RBAC and \
             admission, controller-manager, scheduler, kwok fake nodes)",
    long_about = "Real Kubernetes control planes on 127.0.0.1, built from source by \
                  scripts/install-kube.sh: etcd, kube-apiserver with RBAC and the default \
                  admission plugins, kube-controller-manager, kube-scheduler, and kwok, which \
                  fakes the nodes (pods become Running and Ready without containers).\n\n\
                  The tests use the same code (skoala_realkube::RealCluster)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start one cluster, write its admin kubeconfig, and run until Ctrl-C (then stop it).
    Up {
        /// The cluster's name (kubeconfig cluster/context name, node name suffix).
        #[arg(long, default_value = "real")]
        name: String,
        /// Where to write the admin kubeconfig (system:masters: for you, not for our components).
        #[arg(long, value_name = "PATH")]
        kubeconfig_out: PathBuf,
        /// Keep the cluster's files (logs, certificates, etcd data) here instead of a
        /// temporary folder removed on exit.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Folder built by scripts/install-kube.sh [default: $SKOALA_KUBE_DIR, then .tools/kube].
        #[arg(long, value_name = "DIR", env = "SKOALA_KUBE_DIR")]
        kube_dir: Option<PathBuf>,
        /// An audit policy file for the API server; its events go as JSON lines to
        /// audit.log in the cluster's folder (scripts/bench-plan.sh counts API writes so).
        #[arg(long, value_name = "FILE")]
        audit_policy: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up {
            name,
            kubeconfig_out,
            dir,
            kube_dir,
            audit_policy,
        } => {
            let bins = match kube_dir {
                Some(d) => Binaries::at(d)?,
                None => Binaries::locate()?,
            };
            // The API server runs in the cluster's folder: a relative path would miss.
            let audit_policy = audit_policy.map(std::path::absolute).transpose()?;
            let audited = audit_policy.is_some();
            let opts = Options {
                dir,
                audit_policy,
                ..Options::default()
            };
            let cluster = RealCluster::start_with(&name, &bins, opts).await?;
            std::fs::copy(cluster.admin_kubeconfig(), &kubeconfig_out)?;
            println!(
                "cluster {name} ready at {} in {:.1} s; admin kubeconfig: {}; files: {}",
                cluster.url(),
                cluster.started_in().as_secs_f64(),
                kubeconfig_out.display(),
                cluster.dir().display()
            );
            if audited {
                println!("audit log: {}", cluster.audit_log().display());
            }
            println!("memory: {} MiB; Ctrl-C stops it", cluster.rss_bytes() >> 20);
            tokio::signal::ctrl_c().await?;
            cluster.stop().await;
            Ok(())
        }
    }
}
