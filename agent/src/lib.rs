//! `skoala-agent`: the fleet agent that runs in every working cluster.
//!
//! Working clusters sit behind firewalls, so the agent always dials *out*: it registers once with
//! a join token and a CSR ([`register`], keys in [`credentials`]), keeps the resulting key and
//! certificate in a Secret in its own namespace ([`identity_store`]), then holds one long-lived
//! mTLS gRPC stream to the coordinator ([`session`]), reconnecting with backoff ([`agent`]),
//! through an HTTP CONNECT proxy if `HTTPS_PROXY` says so ([`proxy`], [`transport`]). Its
//! identity is the UID of its cluster's `kube-system` namespace; its inventory (the
//! `skoala-init` release) is read natively from Helm's release Secrets by
//! `skoala_upgrade::inventory`. Tasks from the coordinator run with the upgrade executor
//! ([`tasks`]), relayed charts come over the session ([`relay`]); a few counters are served on `/metrics` ([`metrics`]).
//!
//! The binary (`src/main.rs`) only parses flags; everything else is here so tests and the load
//! generator can run agents in-process: build an [`AgentConfig`] and call [`run`], or drive a
//! single [`session::run`] with your own [`session::SessionParams`].

#![forbid(unsafe_code)]

pub mod agent;
pub mod credentials;
pub mod identity_store;
pub mod metrics;
pub mod proxy;
pub mod register;
pub mod relay;
pub mod session;
pub mod tasks;
pub mod transport;

pub use agent::{AgentConfig, AgentError, run};

/// The agent's version, reported in Register and Hello and on `/metrics`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
