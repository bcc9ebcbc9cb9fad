//! skoala-sim: emulated Kubernetes API servers that the real `helm` (3 and 4), `kubectl` and
//! kube-rs use unmodified, plus a Helm chart repository server.
//!
//! # Library API
//!
//! ```no_run
//! # async fn demo() -> Result<(), skoala_sim::SimError> {
//! // Start one emulated cluster in-process; dropping the handle stops it.
//! let cluster = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("work-1")).await?;
//! cluster.kubeconfig_path(); // kubeconfig file (server URL, CA data, bearer token), temp dir owned by the handle
//! cluster.kubeconfig_yaml(); // the same as a string
//! cluster.addr();            // SocketAddr
//! cluster.kube_system_uid(); // the cluster identity
//! let client = cluster.client().await?; // a kube::Client
//! // Fault injection: fail the next N matching requests, add latency, stop answering
//! // (drop connections) or freeze (hold requests unanswered), and resume with the same state.
//! cluster.faults().fail_next(Some("PATCH"), "/secrets", 500, 1);
//! cluster.faults().add_latency(None, "", std::time::Duration::from_millis(100));
//! cluster.faults().stop();
//! cluster.faults().resume();
//! cluster.faults().freeze();
//! cluster.faults().resume();
//! // A fleet:
//! let fleet = skoala_sim::start_clusters(3, "work").await?;
//! # Ok(()) }
//! ```
//!
//! [`ClusterConfig`] options: name, listen address (default `127.0.0.1:0`), `insecure_http`,
//! the readiness delay of workloads (default 200 ms) and the never-ready image pattern (default
//! `:broken`). The binary `skoala-sim cluster` runs the same thing as a process and exposes the
//! fault injector at `/_sim/faults` (see [`faults::FaultCommand`]).
//!
//! # Layout
//!
//! - [`cluster`]: start/stop, kubeconfig, bootstrap objects;
//! - `server`: HTTPS, bearer-token auth, fault verdicts, the admin endpoint;
//! - `api`: routing, discovery, OpenAPI, the generic verbs, patches, watches, protobuf bodies;
//! - `registry`: which types are served (built-ins + CRDs);
//! - `store`: objects, resourceVersions, the watch event log;
//! - `controllers`: Deployments/ReplicaSets/StatefulSets/DaemonSets/Jobs/Pods status;
//! - [`faults`]: fault injection;
//! - [`chart_repo`]: the Helm chart repository server.

#![forbid(unsafe_code)]

pub mod chart_repo;
pub mod cluster;
pub mod faults;

// The emulator's insides: what a test needs goes through `Cluster`, `Faults` and `chart_repo`.
mod api;
mod controllers;
mod error;
mod registry;
mod server;
mod store;
mod tls;
mod util;

pub use cluster::{Cluster, ClusterConfig, start_clusters};
pub use faults::{FaultCommand, Faults};

/// Why a cluster could not start (or a client could not be built).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address is taken or not ours.
    #[error("binding {0}: {1}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
    /// A file (kubeconfig, temporary folder) could not be written.
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The cluster's CA or serving certificate could not be made.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The objects every cluster starts with (namespaces, `kube-system`) could not be created.
    #[error("bootstrapping the cluster: {0}")]
    Bootstrap(String),
    /// A kube-rs client for the cluster could not be built.
    #[error("building a kube client: {0}")]
    Kube(String),
}
