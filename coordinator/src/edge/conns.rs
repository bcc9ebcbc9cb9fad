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
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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
    /// Woken whenever a connection without a certificate closes.
    freed: Notify,
}

#[derive(Default)]
struct Unauthenticated {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection without a client certificate was closed: no place came in time.
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
            freed: Notify::new(),
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
    /// such connections, waiting up to `wait` for a place; `Err` when none came (the caller
    /// closes it).
    ///
    /// Waiting, not refusing at once: a burst of agents joining together (one NAT address, a
    /// fleet installed at once) has paid for its handshakes, and refusing them would have them
    /// retry with more handshakes — measured, that doubled the time 2,000 agents took to join
    /// (BENCHMARKS.md, *The network edge*). A waiting connection holds only its TLS state and
    /// its place under `--max-connections`.
    pub async fn unauthenticated(
        self: &Arc<Self>,
        permit: &mut ConnPermit,
        ip: IpAddr,
        wait: Duration,
    ) -> Result<(), Over> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the attempt, so a place freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let over = match self.try_unauthenticated(permit, ip) {
                Ok(()) => return Ok(()),
                Err(over) => over,
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(over);
            }
        }
    }

    fn try_unauthenticated(
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
        drop(state);
        self.freed.notify_waiters();
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
        let no_wait = Duration::ZERO;
        let mut held = vec![];
        for ip in [a, a, b] {
            let (mut permit, _handshake) = caps.admit().await;
            caps.unauthenticated(&mut permit, ip, no_wait)
                .await
                .expect("within the caps");
            held.push(permit);
        }
        let (mut extra, _handshake) = caps.admit().await;
        assert_eq!(
            caps.unauthenticated(&mut extra, b, no_wait).await,
            Err(Over::Total(3))
        );
        drop(held.pop()); // b's
        assert_eq!(
            caps.unauthenticated(&mut extra, a, no_wait).await,
            Err(Over::PerIp(2))
        );
        caps.unauthenticated(&mut extra, b, no_wait)
            .await
            .expect("a closed connection gives its place back");
    }

    #[tokio::test]
    async fn a_connection_over_the_caps_waits_for_a_place() {
        let caps = Caps::new(&settings(1, 1));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let (mut first, _handshake) = caps.admit().await;
        caps.unauthenticated(&mut first, ip, Duration::ZERO)
            .await
            .expect("first");
        let (mut second, _handshake) = caps.admit().await;
        let waiting = {
            let caps = caps.clone();
            tokio::spawn(async move {
                caps.unauthenticated(&mut second, ip, Duration::from_secs(30))
                    .await
                    .map(|()| second)
            })
        };
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once the first closed")
            .expect("task")
            .expect("a place");
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
