//! The coordinator's durable state: what it records, the contract every backend keeps, and the
//! embedded SQLite backend.
//!
//! Only state *transitions* are written: a token created, redeemed or revoked; a cluster
//! registered, its inventory or versions changed, revoked; a certificate issued; an audit event;
//! a plan's rollout. Heartbeats and "connected" stay in the coordinator's memory — writing them
//! would turn thousands of agents into a constant write load for facts that are stale a minute
//! later. Every write a backend acknowledges is durable: a coordinator killed right after a
//! call returned still has it on restart.
//!
//! # Layout
//!
//! - `records.rs`: the records ([`TokenRecord`], [`ClusterRecord`], [`CertRecord`],
//!   [`PlanRecord`], ...), plain data;
//! - `error.rs`: [`StoreError`] (the backend failed) and [`RegisterError`] (the rules refused);
//! - `traits.rs`: the contract, by who needs what — [`IdentityStore`] (tokens, registration,
//!   clusters, certificates, admins), [`AuditLog`], [`PlanStore`], [`Retention`] — and
//!   [`Store`], all four, which the coordinator's components take; and [`Migrate`] (a
//!   [`Snapshot`] of every record out of one backend and into another), which only
//!   `skoala-coordinator migrate` uses;
//! - [`sqlite`] (feature `sqlite`, on by default): one file, `store.db`, with its migrations;
//!   it runs the whole conformance suite (`sqlite/mod.rs`'s tests), and keeps only what is
//!   SQLite's own (migrations, the schema version, the sweep's indexes, exact retention);
//! - `conformance/` (feature `conformance`): the store conformance suite, every contract of
//!   the traits as a test generic over a `conformance::Factory`, and the
//!   `conformance_tests!` macro that gives a backend the whole suite in one line;
//! - `fixtures.rs` (feature `fixtures`): the token and registration records the suite and the
//!   coordinator's tests share.
//!
//! **Invariant:** this crate knows no transport and no Kubernetes: no proto, tonic or kube
//! type appears in a record or a signature, so a backend on the API server (`skoala-kubestore`)
//! implements the same traits without the coordinator changing.

#![forbid(unsafe_code)]

mod error;
mod records;
mod traits;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

pub use error::{RegisterError, StoreError};
pub use records::*;
pub use traits::{AuditLog, IdentityStore, Migrate, PlanStore, Retention, Store};
