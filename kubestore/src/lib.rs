//! Fleet state on the control-plane cluster's API server (issue 15; the design is
//! `docs/design/kube-store.md`).
//!
//! # Layout
//!
//! Filled as the pieces land; each module has one job and its own error type.
//!
//! - [`write`]: writes to the API server — one lane per object (at most one request in flight,
//!   what queues behind it merged into one), served by urgency under one rate budget.
//!
//! **Invariant:** this crate never depends on `skoala-proto`, `tonic` or `skoala-coordinator`.
//! It speaks Kubernetes and the plan crate's own types; the coordinator adapts.

#![forbid(unsafe_code)]

pub mod write;
