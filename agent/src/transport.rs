//! Opening gRPC channels to the coordinator: TLS (server verified against the fleet CA), the
//! client certificate once we have one, the proxy-aware connector, and HTTP/2 keepalives.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credentials::Credentials;
use crate::proxy::{Connector, ProxyConfig};

/// Bounds TCP connect + proxy CONNECT + TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

// The agent's HTTP/2 client settings. Each is backed by a figure in BENCHMARKS.md, section
// "HTTP/2 settings" (`scripts/bench-h2.sh`); change one only with a new figure.

/// Ping the coordinator after this long without receiving a frame from it. hyper pings only a
/// *silent* connection: the coordinator's `Ping` messages (every 15 s) keep a healthy one from
/// ever needing it, so it costs nothing. It is the agent's only way to notice a coordinator
/// that vanished without a FIN (a stopped process, a dead host, a middlebox that dropped the
/// flow): the session has no read timeout of its own, and TCP alone would wait for the
/// kernel's retransmission timeout (~15 min) or, against a stopped process whose kernel still
/// acknowledges, forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unacknowledged before the connection is closed (and the
/// agent reconnects). A dead coordinator is noticed 20–30 s after its last frame, and without
/// the keepalive never (BENCHMARKS.md, *HTTP/2 settings*, measured with `scripts/bench-h2.sh`).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive window of each stream (coordinator → agent: tasks and relayed charts). A relayed
/// chart moves at most one window per round trip, so HTTP/2's initial 64 KiB makes a large
/// chart over a slow link take many round trips; a real chart's size fits one window of
/// 1 MiB or more. hyper's client default of 2 MiB stays: a larger window saves only a
/// fraction of a second, once per upgrade of a rare large chart (BENCHMARKS.md, *HTTP/2
/// settings*, the relay sweep).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Receive window of the connection (hyper's client default).
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The agent's HTTP/2 client settings; [`Default`] is what the agent uses. The load generator
/// overrides them for `scripts/bench-h2.sh`'s sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Client {
    /// Keepalive ping interval and acknowledgement timeout; `None`: no keepalive.
    pub keepalive: Option<(Duration, Duration)>,
    /// HTTP/2 receive window per stream, in bytes: how much of a relayed chart the
    /// coordinator may send before the agent reads it.
    pub stream_window: u32,
    /// HTTP/2 receive window for the whole connection, in bytes.
    pub connection_window: u32,
}

impl Default for Http2Client {
    fn default() -> Self {
        Self {
            keepalive: Some((KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)),
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
        }
    }
}

/// Where the coordinator is and how to reach it.
#[derive(Debug, Clone)]
pub struct CoordinatorAddr {
    /// `https://host:port`.
    pub url: String,
    /// PEM bundle the coordinator's server certificate must chain to (`--ca-file`).
    pub ca_pem: String,
    /// `HTTPS_PROXY`/`NO_PROXY`: how to get out of the cluster's network.
    pub proxy: ProxyConfig,
    /// Source address for direct connections; `None` lets the kernel choose (the load
    /// generator sets it to spread connections over loopback addresses).
    pub local_addr: Option<std::net::IpAddr>,
    /// HTTP/2 settings ([`Http2Client::default`] but in benchmarks).
    pub http2: Http2Client,
}

/// Why no connection to the coordinator could be made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL does not parse as an endpoint.
    #[error("coordinator URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// The URL is not `https://`.
    #[error("coordinator URL {0:?} must start with https:// (the link is always TLS)")]
    NotHttps(String),
    /// TCP, the proxy or the TLS handshake failed.
    #[error("connect to the coordinator at {url}: {detail}")]
    Connect {
        /// The URL given.
        url: String,
        /// What failed, with the proxy's or TLS's reason.
        detail: String,
    },
}

/// Connects to the coordinator. With `client`, presents that certificate (mTLS); without, only
/// verifies the server (the Register call).
pub async fn connect(
    addr: &CoordinatorAddr,
    ca_pem: &str,
    client: Option<&Credentials>,
) -> Result<Channel, TransportError> {
    if !addr.url.starts_with("https://") {
        return Err(TransportError::NotHttps(addr.url.clone()));
    }
    let url_err = |source| TransportError::Url {
        url: addr.url.clone(),
        source,
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, c.key_pem()));
    }
    let h2 = addr.http2;
    let mut endpoint = Endpoint::from_shared(addr.url.clone())
        .map_err(url_err)?
        .tls_config(tls)
        .map_err(url_err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window.max(h2.stream_window));
    if let Some((interval, timeout)) = h2.keepalive {
        // While idle too (no stream open): a session keeps one open anyway, so this only
        // keeps the behaviour the same for a channel between two calls.
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
    }
    endpoint
        .connect_with_connector(
            Connector::new(addr.proxy.clone(), CONNECT_TIMEOUT).local_addr(addr.local_addr),
        )
        .await
        .map_err(|e| TransportError::Connect {
            url: addr.url.clone(),
            detail: error_chain(&e),
        })
}

/// An error and all its sources, `: `-joined: tonic's top-level transport errors ("transport
/// error") say nothing on their own, the cause is at the bottom.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
