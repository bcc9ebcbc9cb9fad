//! Connection caps: how many connections and handshakes exist at once, and what a connection
//! without a client certificate may hold.
//!
//! A connection holds a [`ConnPermit`] from accept to close, so the counts are of live
//! connections, not of accepts. Its stream is wrapped in [`Guarded`], which carries the permit
//! (dropped with the connection, whoever closes it) and ends a connection without a client
//! certificate at its lifetime.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::EdgeSettings;

/// The shared counters of one listener.
pub struct Caps {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    max_unauthenticated: usize,
    max_unauthenticated_per_ip: usize,
    unauthenticated: Mutex<Unauthenticated>,
}

#[derive(Default)]
struct Unauthenticated {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection without a client certificate was closed at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Over {
    /// `--max-unauthenticated-connections`.
    Total(usize),
    /// `--max-unauthenticated-connections-per-ip`.
    PerIp(usize),
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Over::Total(n) => write!(
                f,
                "{n} connections without a client certificate are open (--max-unauthenticated-connections)"
            ),
            Over::PerIp(n) => write!(
                f,
                "this address has {n} connections without a client certificate open (--max-unauthenticated-connections-per-ip)"
            ),
        }
    }
}

impl Caps {
    /// Counters for these limits.
    pub fn new(settings: &EdgeSettings) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            handshakes: Arc::new(Semaphore::new(settings.max_concurrent_handshakes)),
            max_unauthenticated: settings.max_unauthenticated,
            max_unauthenticated_per_ip: settings.max_unauthenticated_per_ip,
            unauthenticated: Mutex::default(),
        })
    }

    /// Waits until one more connection and one more handshake may start: the accept loop
    /// calls this *before* accepting, so the excess waits in the kernel's backlog.
    pub async fn admit(&self) -> (ConnPermit, OwnedSemaphorePermit) {
        // Neither semaphore is ever closed.
        let connection = self
            .connections
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let handshake = self
            .handshakes
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        (
            ConnPermit {
                _connection: connection,
                unauthenticated: None,
            },
            handshake,
        )
    }

    /// Counts `permit`'s connection, which showed no client certificate, against the caps of
    /// such connections; `Err` when it is one too many (the caller closes it).
    pub fn unauthenticated(
        self: &Arc<Self>,
        permit: &mut ConnPermit,
        ip: IpAddr,
    ) -> Result<(), Over> {
        let mut state = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if state.total >= self.max_unauthenticated {
            return Err(Over::Total(state.total));
        }
        let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_unauthenticated_per_ip {
            return Err(Over::PerIp(from_ip));
        }
        state.total += 1;
        *state.per_ip.entry(ip).or_default() += 1;
        permit.unauthenticated = Some(UnauthenticatedPermit {
            caps: self.clone(),
            ip,
        });
        Ok(())
    }

    fn release_unauthenticated(&self, ip: IpAddr) {
        let mut state = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&ip);
            }
        }
    }
}

/// One live connection's place in the counts; released on drop.
pub struct ConnPermit {
    _connection: OwnedSemaphorePermit,
    unauthenticated: Option<UnauthenticatedPermit>,
}

struct UnauthenticatedPermit {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for UnauthenticatedPermit {
    fn drop(&mut self) {
        self.caps.release_unauthenticated(self.ip);
    }
}

/// A connection's stream with its [`ConnPermit`], closed at `lifetime` if it has one.
pub struct Guarded<IO> {
    inner: IO,
    _permit: ConnPermit,
    expires: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    /// Wraps `inner`; with a `lifetime`, reads and writes fail once it has passed, which makes
    /// the HTTP/2 server close the connection.
    pub fn new(inner: IO, permit: ConnPermit, lifetime: Option<Duration>) -> Self {
        Self {
            inner,
            _permit: permit,
            expires: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.expires
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "a connection without a client certificate reached its lifetime",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The handlers read the TLS stream's connect info (peer certificates, remote address), so
/// the wrapper passes it through unchanged.
impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(total: usize, per_ip: usize) -> EdgeSettings {
        EdgeSettings {
            max_unauthenticated: total,
            max_unauthenticated_per_ip: per_ip,
            ..EdgeSettings::default()
        }
    }

    #[tokio::test]
    async fn unauthenticated_connections_are_capped_per_ip_and_in_total_until_closed() {
        let caps = Caps::new(&settings(3, 2));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut held = vec![];
        for ip in [a, a, b] {
            let (mut permit, _handshake) = caps.admit().await;
            caps.unauthenticated(&mut permit, ip)
                .expect("within the caps");
            held.push(permit);
        }
        let (mut extra, _handshake) = caps.admit().await;
        assert_eq!(caps.unauthenticated(&mut extra, b), Err(Over::Total(3)));
        drop(held.pop()); // b's
        assert_eq!(caps.unauthenticated(&mut extra, a), Err(Over::PerIp(2)));
        caps.unauthenticated(&mut extra, b)
            .expect("a closed connection gives its place back");
    }

    #[tokio::test]
    async fn admit_waits_for_a_free_connection() {
        let caps = Caps::new(&EdgeSettings {
            max_connections: 1,
            ..EdgeSettings::default()
        });
        let (first, handshake) = caps.admit().await;
        drop(handshake);
        let waiting = tokio::time::timeout(Duration::from_millis(50), caps.admit()).await;
        assert!(waiting.is_err(), "a second connection must wait");
        drop(first);
        let _admitted = tokio::time::timeout(Duration::from_secs(5), caps.admit())
            .await
            .expect("admitted once the first closed");
    }
}
