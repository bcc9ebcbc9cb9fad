//! `skoala-coordinator`: the control-plane half of skoala-fleet.
//!
//! One TLS port serves two gRPC services: [`gateway`] (agents: `Register`, `Session`) and
//! [`admin_api`] (operators: `FleetAdmin`). Identity is mutual TLS with certificates from the
//! fleet CA ([`pki`]), checked per RPC ([`identity`]); refused connections and calls land in
//! the audit log. Durable state sits behind the [`store::Store`] trait (SQLite by default);
//! live session state stays in memory ([`sessions`]).
//!
//! Map: `init` creates the data dir ([`data_dir`], [`admin_config`]); `server` wires
//! [`tls`] (accept loop), the services, [`metrics`] and the [`control_plane`] reader.

pub mod admin_api;
pub mod admin_config;
pub mod context;
pub mod control_plane;
pub mod data_dir;
pub mod duration;
pub mod gateway;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod oversize;
pub mod pki;
pub mod server;
mod session;
pub mod sessions;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod tokens;
