//! `skoala-coordinator`: the control-plane half of skoala-fleet.
//!
//! One TLS port serves two gRPC services: [`gateway`] (agents: `Register`, `Session`) and
//! [`admin_api`] (operators: `FleetAdmin`). Identity is mutual TLS with certificates from the
//! fleet CA ([`pki`]), checked per RPC ([`identity`]); refused connections and calls land in
//! the audit log. Durable state sits behind the [`store::Store`] trait (SQLite by default);
//! live session state stays in memory ([`sessions`]).
//!
//! Map: `init` creates the data dir ([`data_dir`], [`admin_config`]); `server` wires
//! [`tls`] (accept loop), [`http2`] (the HTTP/2 settings), the services, [`metrics`] and
//! the [`control_plane`] reader.
//!
//! # Audit log
//!
//! `skoalactl audit` shows these kinds (each entry has time, cluster id, peer and a detail that
//! never holds a secret):
//!
//! | kind | when |
//! |---|---|
//! | `token.created`, `token.revoked` | an operator managed join tokens |
//! | `cluster.registered`, `cluster.reregistered` | an agent joined (again: new key for a known cluster) |
//! | `cluster.revoked` | an operator revoked a cluster (its live session is closed) |
//! | `cluster.relabelled` | an agent reported another name or other labels in its hello |
//! | `certificate.renewed`, `certificate.renewal_refused` | renewal over the Session stream |
//! | `tls.plaintext`, `tls.handshake_failed`, `tls.bad_client_certificate` | refused before any RPC (foreign CA, expired, ...); floods are summarised |
//! | `tls.no_client_certificate` | an RPC other than Register without a client certificate |
//! | `admin.agent_certificate`, `session.admin_certificate` | a certificate used on the wrong API |
//! | `register.unknown_token`, `register.token_expired`, `register.token_used_up`, `register.token_revoked`, `register.cluster_revoked`, `register.bad_identity`, `register.bad_csr` | Register refused |
//! | `session.unknown_certificate`, `session.unknown_cluster`, `session.cluster_revoked` | Session refused |
//! | `session.identity_mismatch` | an agent message claimed another cluster; stream closed |
//! | `session.message_too_large`, `rpc.message_too_large` | a message over `--max-message-bytes` |

pub mod admin_api;
pub mod admin_config;
mod admin_plans;
pub mod backups;
pub mod clock;
pub mod context;
pub mod control_plane;
pub mod data_dir;
pub mod duration;
pub mod gateway;
pub mod http2;
pub mod identity;
pub mod init;
pub mod malloc;
pub mod metrics;
pub mod orchestrator;
pub mod oversize;
pub mod pki;
pub mod relay;
pub mod server;
mod session;
pub mod sessions;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod tokens;
