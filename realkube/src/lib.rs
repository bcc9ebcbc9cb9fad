//! Real Kubernetes control planes on loopback, for the tests and the demo.
//!
//! `skoala-sim` emulates an API server and authorizes every request; this crate runs the real
//! thing: etcd, kube-apiserver with RBAC and the default admission plugins (ServiceAccount,
//! PodSecurity, ...), kube-controller-manager, kube-scheduler, and kwok, which plays the kubelet
//! for fake nodes (pods become Running and Ready, Job pods Succeeded). Everything binds to
//! 127.0.0.1 and nothing dials another address: pod IPs and ClusterIPs that the cluster hands out
//! are never dialled.
//!
//! ```no_run
//! # async fn demo() -> Result<(), skoala_realkube::Error> {
//! use skoala_realkube::{Binaries, RealCluster};
//! let cluster = RealCluster::start("work-1", &Binaries::locate()?).await?;
//! // Our components never run as admin: they get what their chart's ServiceAccount gets.
//! let kubeconfig = cluster.service_account_kubeconfig("skoala-fleet", "skoala-fleet-agent").await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Binaries`] (`bins.rs`): where `scripts/install-kube.sh` put the binaries, checked.
//! - `pki.rs`: the cluster's CA, serving and client certificates, ServiceAccount signing key.
//! - `process.rs`: one child process with its log file; it dies with its parent.
//! - [`RealCluster`] (`cluster.rs`): starts the processes in order, waits on `/readyz` and a
//!   Ready node, mints kubeconfigs (admin, or a ServiceAccount's token), tears down.
//!
//! **Invariant:** the crate knows nothing of skoala-fleet. It gives a test what a user's
//! cluster gives: an API server, identities, controllers. Whatever our product needs in the
//! cluster (namespaces, RBAC, charts) the test installs the way a user would.

#![deny(unsafe_code)] // one exception: `process::die_with_parent`

mod bins;
pub mod cluster;
mod pki;
mod process;

pub use bins::Binaries;
pub use cluster::{Options, RealCluster, User, kubeconfig_yaml};
pub use process::die_with_parent;

use std::path::PathBuf;

/// What can go wrong bringing up or using a real cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries are not where `scripts/install-kube.sh` puts them.
    #[error("{what} is missing at {path}: run scripts/install-kube.sh (or set SKOALA_KUBE_DIR)")]
    Missing {
        /// Which binary.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Creating a certificate or key.
    #[error("generating {what}")]
    Pki {
        /// Which certificate or key.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A file or process operation.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
    /// A component exited before the cluster was ready; the tail of its log says why.
    #[error("{component} exited ({status}) while starting; its log ends with:\n{log_tail}")]
    Exited {
        /// `etcd`, `kube-apiserver`, ...
        component: &'static str,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A readiness condition did not hold in time.
    #[error("timed out after {seconds} s waiting for {what}{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Timeout {
        /// The condition.
        what: String,
        /// How long it was given.
        seconds: u64,
        /// The last thing seen while waiting, if anything.
        detail: Option<String>,
    },
    /// A call to the cluster's API.
    #[error("{what}")]
    Kube {
        /// The call.
        what: String,
        /// kube-rs's error.
        #[source]
        source: kube::Error,
    },
    /// A kubeconfig that kube-rs refuses.
    #[error("{what}")]
    Kubeconfig {
        /// Which kubeconfig.
        what: String,
        /// kube-rs's reason.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A command we ran (kubectl) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
