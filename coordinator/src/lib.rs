//! `skoala-coordinator`: the control-plane half of skoala-fleet.
//!
//! One TLS port serves two gRPC services: `gateway` (agents: `Register`, `Session`) and
//! `admin_api` (operators: `FleetAdmin`). Identity is mutual TLS with certificates from the
//! fleet CA ([`pki`]), checked per RPC (`identity`); refused connections and calls land in the
//! audit log. Durable state sits behind [`skoala_store::Store`] (SQLite by default); live
//! session state stays in memory (`sessions`). Plans are carried out by the `orchestrator`.
//!
//! # Layout
//!
//! Dependencies between the modules point one way (the testkit's `layering` test fails on an
//! import cycle):
//!
//! - at the bottom, what everything else builds on: `clock` (time), `sessions`,
//!   `control_plane` (the watch of the coordinator's own cluster), [`data_dir`], [`pki`],
//!   [`pki_store`] (where the CA and server credential are kept),
//!   `tokens`, `throttle`, `quota` (what one agent may cost), `identity`, [`relay`] and
//!   [`backups`]; `metrics` is a leaf that is
//!   handed what it counts;
//! - above them, `orchestrator`: the plans, which owns its store handle, the sessions and the
//!   control-plane runner rather than reaching for a shared context;
//! - on top, the handlers: `context` (what they share, and the audit log), `gateway` and
//!   `session` (agents), `admin_api` and `admin_plans` (operators), [`tls`] (the accept loop),
//!   [`edge`] (what a peer may cost: connection caps, per-call limits), and [`server`], which
//!   builds all of it (`init` creates the data dir first, [`data_dir`], and `admin.yaml` with
//!   [`skoala_support::admin_config`]; [`http2`] holds the HTTP/2 settings); beside it,
//!   [`migrate`] moves a stopped fleet from one store to the other.
//!
//! Only the modules the binaries, the load generator and the end-to-end tests use are public.
//!
//! # Audit log
//!
//! `skoalactl audit` shows these kinds (each entry has time, cluster id, peer and a detail that
//! never holds a secret). Entries older than `--retain-audit` (90 days) are deleted by the
//! retention sweep (`orchestrator::Retention`); a failed write is logged and counted, never
//! silent:
//!
//! | kind | when |
//! |---|---|
//! | `token.created`, `token.revoked` | an operator managed join tokens |
//! | `cluster.registered`, `cluster.reregistered` | an agent joined (again: new key for a known cluster) |
//! | `cluster.revoked` | an operator revoked a cluster (its live session is closed) |
//! | `cluster.rejoin_allowed` | an operator let a cluster that lost its key register again (its certificates are revoked) |
//! | `cluster.relabelled` | an operator changed a cluster's labels or name (`skoalactl cluster label\|rename`) |
//! | `cluster.identity_proposed`, `cluster.relabel_refused` | an agent asked for another name or other labels in its hello: recorded as its proposal, not applied (refused and not recorded: invalid) |
//! | `certificate.renewed`, `certificate.renewal_refused` | renewal over the Session stream |
//! | `tls.plaintext`, `tls.handshake_failed`, `tls.bad_client_certificate`, `tls.handshake_timeout` | refused before any RPC (foreign CA, expired, no handshake within `--tls-handshake-timeout`, ...) |
//! | `tls.connection_limit` | a connection without a client certificate over `--max-unauthenticated-connections[-per-ip]` that found no place within `--tls-handshake-timeout`; closed |
//! | `tls.no_client_certificate` | an RPC other than Register without a client certificate |
//! | `admin.created`, `admin.revoked` | an operator created or revoked an admin identity |
//! | `admin.unknown_certificate`, `admin.certificate_revoked` | an admin certificate not recorded for an operator, or revoked |
//! | `admin.agent_certificate`, `session.admin_certificate` | a certificate used on the wrong API |
//! | `register.unknown_token`, `register.token_expired`, `register.token_used_up`, `register.token_revoked`, `register.cluster_revoked`, `register.bad_identity`, `register.name_taken`, `register.bad_csr` | Register refused |
//! | `register.takeover_refused` | Register for a cluster whose certificate is live, without that certificate |
//! | `session.unknown_certificate`, `session.certificate_revoked`, `session.unknown_cluster`, `session.cluster_revoked` | Session refused |
//! | `session.identity_mismatch` | an agent message claimed another cluster; stream closed |
//! | `session.unexpected_operation` | progress, a result or a backup for an operation never sent to that cluster (or finished); dropped (first per session) |
//! | `session.quota_exceeded` | a message over the agent's quotas (`quota`); dropped (first per session) |
//! | `session.dropped` | a session ended having dropped more than one message: the count per kind |
//! | `session.flood` | a session dropped more than the hard limit; closed |
//! | `session.message_too_large`, `rpc.message_too_large` | a message over `--max-message-bytes` (a Register request: over `--register-max-bytes`) |
//! | `rpc.body_timeout` | a request body not complete within `--request-body-timeout` |
//! | `rpc.too_many_streams` | a call over `--unauthenticated-max-streams` on a connection without a client certificate |
//!
//! Every refusal is counted in `skoala_refusals_total{kind}`; the log line and the audit entry
//! of each kind are written for the first 20 a minute, then summarised (`throttle`).

// The API the binaries, the load generator and the end-to-end tests use; everything else is
// the coordinator's own.
pub mod backups;
pub mod data_dir;
pub mod edge;
pub mod http2;
pub mod init;
pub mod malloc;
pub mod migrate;
pub mod pki;
pub mod pki_store;
pub mod relay;
pub mod server;
pub mod tls;

pub use context::Settings;
pub use orchestrator::Retention;

mod admin_api;
mod admin_plans;
mod clock;
mod context;
mod control_plane;
mod gateway;
mod gitops;
mod identity;
mod metrics;
mod orchestrator;
mod quota;
mod session;
mod sessions;
mod store;
mod throttle;
mod tokens;
