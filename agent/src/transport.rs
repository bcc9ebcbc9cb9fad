//! Opening gRPC channels to the coordinator: TLS (server verified against the fleet CA), the
//! client certificate once we have one, the proxy-aware connector, and HTTP/2 keepalives.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credentials::Credentials;
use crate::proxy::{Connector, ProxyConfig};

/// Bounds TCP connect + proxy CONNECT + TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// HTTP/2 pings detect a dead path (a proxy or NAT that silently dropped us) even when no
/// application message is due. Well under typical 60 s idle timeouts of middleboxes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the coordinator is and how to reach it.
#[derive(Debug, Clone)]
pub struct CoordinatorAddr {
    /// `https://host:port`.
    pub url: String,
    /// PEM bundle the coordinator's server certificate must chain to (`--ca-file`).
    pub ca_pem: String,
    pub proxy: ProxyConfig,
    /// Source address for direct connections; `None` lets the kernel choose (the load
    /// generator sets it to spread connections over loopback addresses).
    pub local_addr: Option<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("coordinator URL {url:?}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("coordinator URL {0:?} must start with https:// (the link is always TLS)")]
    NotHttps(String),
    #[error("connect to the coordinator at {url}: {detail}")]
    Connect { url: String, detail: String },
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
    let endpoint = Endpoint::from_shared(addr.url.clone())
        .map_err(url_err)?
        .tls_config(tls)
        .map_err(url_err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
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
