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
//! # What it emulates, and what it does not
//!
//! One generic store serves every type (built-ins, and custom resources as soon as their CRD is
//! created): resource versions, `generation`, watches, optimistic concurrency, finalizers. What
//! a coordinator storing its state in custom resources relies on behaves as on a real
//! kube-apiserver, and `tests/tests/real/sim_parity.rs` runs each behaviour on both:
//!
//! - a CRD's resources are served (discovery, namespaced or cluster-scoped) once it is created;
//! - with a status subresource, a create and main-resource writes drop `status`, `/status`
//!   writes change only `status`; `generation` moves with a spec change only (not with labels,
//!   annotations, finalizers or status), `resourceVersion` with every stored change;
//! - `metadata.resourceVersion` in an update or patch body is a precondition (409 `Conflict`),
//!   and a custom resource cannot be updated (PUT) without one (422);
//! - deleting an object with finalizers sets `deletionTimestamp` (and bumps `generation`), no
//!   finalizer may be added then, and removing the last one deletes the object;
//! - schemas: unknown fields are pruned or refused, kept under
//!   `x-kubernetes-preserve-unknown-fields`, `default`s filled in, `required`, `enum` and `type`
//!   enforced, on `/status` writes too;
//! - metadata-only gets, lists and watches (`Accept: ...;as=PartialObjectMetadata[List]`).
//!
//! Not emulated: **CEL rules** (`x-kubernetes-validations`) are never evaluated, so on sim a
//! spec change to an accepted plan or to a sealed log segment is stored. Sim trusts the
//! coordinator's own checks (it ignores such changes itself); what CEL refuses is tested on a
//! real API server only (`tests/tests/real/crds.rs`). Also absent: field ownership in
//! server-side apply (never a conflict), RBAC (one all-powerful user), admission webhooks,
//! pagination, aggregated discovery; `sim/README.md` lists the rest.
//!
//! # Layout
//!
//! - [`cluster`]: start/stop, kubeconfig, bootstrap objects;
//! - `server`: HTTPS, bearer-token auth, fault verdicts, the admin endpoint;
//! - `api`: routing, discovery, OpenAPI, the generic verbs, what happens to an object on its
//!   way in (`object`: identity, status and finalizer rules, `generation`; `schema`: a custom
//!   resource's validation, pruning and defaults), patches, watches, protobuf bodies;
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
