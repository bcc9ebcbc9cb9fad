//! The coordinator's one TLS port, accepted by hand so every refused connection is audited.
//!
//! tonic's built-in TLS hides handshake failures; here the accept loop sees them and writes
//! an audit entry for plaintext clients, certificates from another CA, expired certificates and
//! other handshake errors. Client certificates are optional at this layer (Register has none);
//! the handlers enforce them per RPC. The resulting `TlsStream<TcpStream>` is what tonic's
//! `peer_certs()` reads, so the handlers see the verified chain. Floods of refusals are
//! summarised rather than written one by one ([`crate::throttle`]). What a connection may cost
//! before and after its handshake is bounded by [`crate::edge::conns`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::context::Context;
use crate::edge::EdgeSettings;
use crate::edge::conns::{Caps, Guarded};
use skoala_store::Store;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A certificate or key in the data dir is not PEM.
    #[error("cannot parse {what}: {source}")]
    Pem {
        /// Which file's contents.
        what: &'static str,
        /// The PEM parser's reason.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server configuration: our certificate, client certificates optional but verified
/// against the fleet CA when presented, HTTP/2 only.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|source| TlsConfigError::Pem {
            what: "the CA certificate",
            source,
        })?;
        roots.add(cert)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            what: "the server certificate",
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| {
        TlsConfigError::Pem {
            what: "the server key",
            source,
        }
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections on `listener` forever, handshaking each in its own task; yields the
/// established TLS streams for tonic's `serve_with_incoming`, each carrying its place in the
/// connection caps ([`crate::edge::conns`]).
pub(crate) fn incoming<S: Store>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    edge: EdgeSettings,
    ctx: Arc<Context<S>>,
) -> ReceiverStream<Result<Guarded<TlsStream<TcpStream>>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let caps = Caps::new(&edge);
    tokio::spawn(async move {
        loop {
            // Wait for a place first: over the caps, new peers wait in the kernel's backlog
            // instead of costing a task and a TLS state each.
            let (mut permit, handshaking) = caps.admit().await;
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let ctx = ctx.clone();
            let caps = caps.clone();
            tokio::spawn(async move {
                let shaken =
                    tokio::time::timeout(edge.handshake_timeout, handshake(acceptor, tcp, remote))
                        .await;
                drop(handshaking);
                let peer = remote.to_string();
                match shaken {
                    Ok(Ok(tls)) => {
                        let certified = tls.get_ref().1.peer_certificates().is_some();
                        let lifetime = if certified {
                            None
                        } else {
                            let admitted = caps
                                .unauthenticated(&mut permit, remote.ip(), edge.handshake_timeout)
                                .await;
                            if let Err(over) = admitted {
                                let detail = format!("connection closed: {over}");
                                ctx.refused("tls.connection_limit", "", &peer, detail).await;
                                return;
                            }
                            Some(edge.unauthenticated_lifetime)
                        };
                        let _ = tx.send(Ok(Guarded::new(tls, permit, lifetime))).await;
                    }
                    Ok(Err(refused)) => {
                        ctx.refused(refused.kind, "", &peer, refused.detail).await;
                    }
                    Err(_) => {
                        let detail = format!(
                            "TLS handshake not complete after {:?} (--tls-handshake-timeout)",
                            edge.handshake_timeout
                        );
                        ctx.refused("tls.handshake_timeout", "", &peer, detail)
                            .await;
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection refused before any RPC.
struct Refused {
    kind: &'static str,
    detail: String,
}

async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    remote: SocketAddr,
) -> Result<TlsStream<TcpStream>, Refused> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(|e| Refused {
        kind: "tls.handshake_failed",
        detail: format!("reading from {remote}: {e}"),
    })?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        // Say it in words for curl and browsers; a gRPC client reports a protocol error.
        let _ = tcp
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n\
                  skoala-coordinator speaks TLS only on this port: use https:// and the fleet CA\n",
            )
            .await;
        let _ = tcp.shutdown().await;
        return Err(Refused {
            kind: "tls.plaintext",
            detail: "plaintext connection refused: this port requires TLS".into(),
        });
    }
    match acceptor.accept(tcp).into_fallible().await {
        Ok(tls) => Ok(tls),
        Err((e, mut tcp)) => {
            linger_for_alert(&mut tcp).await;
            Err(classify(e))
        }
    }
}

/// After a refused handshake rustls has written its alert (e.g. "unknown CA", "certificate
/// expired"). With TLS 1.3 the client already sent data it believes is fine; closing with that
/// data unread would make the kernel answer with a reset that can destroy the alert before the
/// client reads it, leaving it with a bare "connection closed". So: send FIN after the alert,
/// then drain what the client still sends, briefly, before closing.
async fn linger_for_alert(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn classify(e: std::io::Error) -> Refused {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => Refused {
            kind: "tls.bad_client_certificate",
            detail: format!("client certificate refused: {why:?}{}", hint(why)),
        },
        _ => Refused {
            kind: "tls.handshake_failed",
            detail: format!("TLS handshake failed: {e}"),
        },
    }
}

/// What a certificate error usually means, for the operator reading the audit log.
fn hint(why: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as E;
    match why {
        E::UnknownIssuer => " (not issued by this fleet's CA)",
        E::BadSignature => {
            " (signature does not verify against this fleet's CA: another fleet's certificate?)"
        }
        E::Expired | E::ExpiredContext { .. } => {
            " (expired: the agent missed its renewal, or the clock is wrong)"
        }
        E::NotValidYet | E::NotValidYetContext { .. } => " (not valid yet: check the clocks)",
        _ => "",
    }
}
