//! The network edge: what a peer may cost the coordinator before it has proved who it is.
//!
//! The TLS port is open to anyone (agents register without a certificate, and the chart puts
//! the port behind a LoadBalancer), so every resource a peer can make the coordinator hold is
//! bounded here, in the spirit of kube-apiserver's and Envoy's limits:
//!
//! - [`conns`]: how many connections exist at all (`--max-connections`), how many handshakes
//!   run at once and for how long (`--max-concurrent-handshakes`, `--tls-handshake-timeout`),
//!   and what a connection *without* a client certificate may hold: a share per peer IP and
//!   in total, and a lifetime (it only needs one `Register`).
//! - [`calls`]: per call, a byte bound on `Register` requests (kilobytes, not the 4 MiB the
//!   Session stream needs), a deadline on every request body but the Session stream's, and
//!   at most a couple of calls in flight on a connection without a certificate.
//!
//! What was refused is counted in `skoala_refusals_total` and audited, floods summarised
//! ([`crate::throttle`]). docs/security.md, *The network edge*, lists each limit with its test.

pub mod calls;
pub mod conns;

use std::time::Duration;

/// The edge's limits; [`EdgeSettings::default`] is what `serve` uses without flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Connections open at once, of every kind. Over it the accept loop waits (the kernel's
    /// backlog holds the rest): above the largest fleet measured (10,000 agents), below what
    /// the pod's memory limit and the open-files limit allow.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; over it the accept loop waits. A handshake costs a
    /// CPU-bound signature, so more at once only queue behind each other.
    pub max_concurrent_handshakes: usize,
    /// A peer that has not finished its handshake in this long is dropped; a connection
    /// without a certificate that finds no place under its caps waits as long again.
    pub handshake_timeout: Duration,
    /// Connections without a client certificate, in total; more wait for a place for up to
    /// `handshake_timeout`, then are closed.
    pub max_unauthenticated: usize,
    /// Connections without a client certificate from one IP address; more wait likewise.
    pub max_unauthenticated_per_ip: usize,
    /// A connection without a client certificate is closed after this long: `Register` is its
    /// only use, and one call takes milliseconds.
    pub unauthenticated_lifetime: Duration,
    /// Calls in flight on one connection without a client certificate; more are answered
    /// `RESOURCE_EXHAUSTED` at once, before their body is read.
    pub unauthenticated_streams: usize,
    /// The largest `Register` request body, in bytes.
    pub register_max_bytes: usize,
    /// Every request body but the Session stream's must have arrived within this long.
    pub body_timeout: Duration,
}

/// 64 KiB bounds a `Register` request with room to spare: a CSR is under 2 KiB (RSA 4096 in
/// PEM), a token under 100 bytes, a name a DNS label, and even 64 Kubernetes labels at their
/// longest (317-byte keys, 63-byte values) stay under 25 KiB.
pub const REGISTER_MAX_BYTES: usize = 64 * 1024;

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_concurrent_handshakes: 1_024,
            handshake_timeout: Duration::from_secs(10),
            max_unauthenticated: 1_024,
            max_unauthenticated_per_ip: 256,
            unauthenticated_lifetime: Duration::from_secs(60),
            unauthenticated_streams: 2,
            register_max_bytes: REGISTER_MAX_BYTES,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// The flags of `serve` that set [`EdgeSettings`] (listed in `--help`; docs/operating.md).
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Most connections open at once (agents, operators, anyone); over it new connections wait
    /// in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = EdgeSettings::default().max_connections)]
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once; over it new connections wait.
    #[arg(long, value_name = "N", default_value_t = EdgeSettings::default().max_concurrent_handshakes)]
    pub max_concurrent_handshakes: usize,
    /// A client that has not completed its TLS handshake in this long is disconnected.
    #[arg(long, value_name = "DURATION", value_parser = skoala_support::duration::parse, default_value = "10s")]
    pub tls_handshake_timeout: std::time::Duration,
    /// Most connections without a client certificate (joining agents) at once; more wait up
    /// to --tls-handshake-timeout for a place, then are closed.
    #[arg(long, value_name = "N", default_value_t = EdgeSettings::default().max_unauthenticated)]
    pub max_unauthenticated_connections: usize,
    /// Most connections without a client certificate from one IP address at once; more wait
    /// likewise.
    #[arg(long, value_name = "N", default_value_t = EdgeSettings::default().max_unauthenticated_per_ip)]
    pub max_unauthenticated_connections_per_ip: usize,
    /// A connection without a client certificate is closed after this long.
    #[arg(long, value_name = "DURATION", value_parser = skoala_support::duration::parse, default_value = "60s")]
    pub unauthenticated_connection_lifetime: std::time::Duration,
    /// Most calls in flight on one connection without a client certificate.
    #[arg(long, value_name = "N", default_value_t = EdgeSettings::default().unauthenticated_streams)]
    pub unauthenticated_max_streams: usize,
    /// Largest Register request, in bytes (the Session stream and the admin API are bounded by
    /// --max-message-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = REGISTER_MAX_BYTES)]
    pub register_max_bytes: usize,
    /// Every request body but an agent's Session stream must arrive within this long.
    #[arg(long, value_name = "DURATION", value_parser = skoala_support::duration::parse, default_value = "10s")]
    pub request_body_timeout: std::time::Duration,
}

impl EdgeArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> EdgeSettings {
        EdgeSettings {
            max_connections: self.max_connections.max(1),
            max_concurrent_handshakes: self.max_concurrent_handshakes.max(1),
            handshake_timeout: self.tls_handshake_timeout,
            max_unauthenticated: self.max_unauthenticated_connections,
            max_unauthenticated_per_ip: self.max_unauthenticated_connections_per_ip,
            unauthenticated_lifetime: self.unauthenticated_connection_lifetime,
            unauthenticated_streams: self.unauthenticated_max_streams,
            register_max_bytes: self.register_max_bytes,
            body_timeout: self.request_body_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    #[test]
    fn no_flags_are_the_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        assert_eq!(cli.edge.settings(), EdgeSettings::default());
    }

    #[test]
    fn flags_override() {
        let cli = Cli::try_parse_from([
            "x",
            "--register-max-bytes",
            "1024",
            "--tls-handshake-timeout",
            "2s",
            "--max-unauthenticated-connections-per-ip",
            "3",
        ])
        .expect("parse");
        let s = cli.edge.settings();
        assert_eq!(s.register_max_bytes, 1024);
        assert_eq!(s.handshake_timeout, Duration::from_secs(2));
        assert_eq!(s.max_unauthenticated_per_ip, 3);
    }
}
