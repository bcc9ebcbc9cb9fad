//! Fleet state on the control-plane cluster's API server (issue 15; the design is
//! `docs/design/kube-store.md`).
//!
//! # Layout
//!
//! - [`crd`]: the fleet's CustomResourceDefinitions (`UpgradePlan`, `FleetCluster`,
//!   `FleetLog`), generated from the Rust types of their spec and status, and those types.
//!   `crds.yaml` next to this crate is [`crd::crds_yaml`], checked in so it can be reviewed
//!   and applied without building anything (a test fails when it drifts);
//! - [`log`]: the audit log and the plans' events as `FleetLog` segments — their encoding,
//!   ids, sealing, reads and retention, and the group-committing stream writer;
//! - [`lease`]: leader election on a Lease, and the fence every write checks (§5.1, §5.3);
//! - [`pod`]: the leader's label on its own Pod, which the agents' Service selects;
//! - [`secrets`]: the PKI Secret and values backups as immutable Secrets (files, not records);
//! - [`store`]: [`store::KubeStore`], the backend of `skoala-store`'s traits on these objects;
//! - [`write`](mod@write): writes to the API server — one lane per object (at most one request in flight,
//!   what queues behind it merged into one), served by urgency under one rate budget.
//!
//! **Invariant:** this crate never depends on `skoala-proto`, `tonic` or `skoala-coordinator`.
//! It speaks Kubernetes and the plan crate's own types; the coordinator adapts.

#![forbid(unsafe_code)]

pub mod crd;
pub mod lease;
pub mod log;
pub mod pod;
pub mod secrets;
pub mod store;
pub mod write;
