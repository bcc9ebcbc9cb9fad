//! Fleet state on the control-plane cluster's API server (issue 15; the design is
//! `docs/design/kube-store.md`).
//!
//! # Layout
//!
//! Filled as the pieces land; each module has one job and its own error type.
//!
//! - [`lease`]: leader election on a Lease, and the fence every write checks (§5.1, §5.3).
//!
//! **Invariant:** this crate never depends on `skoala-proto`, `tonic` or `skoala-coordinator`.
//! It speaks Kubernetes and the plan crate's own types; the coordinator adapts.

#![forbid(unsafe_code)]

pub mod lease;
