//! A TCP forwarder that delays every chunk by a fixed time each way: a long round trip on
//! loopback, for the HTTP/2 window benchmarks (this kernel has no `netem`).
//!
//! Each direction has a reader that stamps what it reads and queues it, and a writer that
//! sends each chunk once its stamp is `delay` old. The reader never waits for the writer, so
//! the link behaves like a long fat pipe: propagation delay without a bandwidth limit, with
//! as many bytes in flight as the endpoints' flow control allows. That is what the window
//! benchmark must isolate — HTTP/2's windows, not the forwarder's buffers, bound throughput.
//! The queue is still bounded ([`MAX_IN_FLIGHT`]) so a runaway sender cannot exhaust memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Most bytes queued in one direction (far above any window the benchmarks use).
const MAX_IN_FLIGHT: usize = 64 * 1024 * 1024;
const READ_BUF: usize = 64 * 1024;

/// Forwards every connection on `listen` to `to`, delaying each direction by `delay`, until
/// `stop` resolves (SIGTERM/SIGINT). Prints `delay-proxy listening on ADDR`.
pub async fn serve(
    listen: SocketAddr,
    to: SocketAddr,
    delay: Duration,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("delay-proxy listening on {}", listener.local_addr()?);
    tokio::select! {
        () = stop => Ok(()),
        () = accept_loop(listener, to, delay) => Ok(()),
    }
}

/// Accepts connections forever, each forwarded in a task of its own.
async fn accept_loop(listener: TcpListener, to: SocketAddr, delay: Duration) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = forward(client, to, delay).await {
                tracing::debug!(error = %e, "forwarded connection ended");
            }
        });
    }
}

async fn forward(client: TcpStream, to: SocketAddr, delay: Duration) -> anyhow::Result<()> {
    let server = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    // Chunks must leave when due, not when Nagle decides; the endpoints set it too.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = one_way(cr, sw, delay) => {}
        _ = one_way(sr, cw, delay) => {}
    }
    Ok(())
}

/// One direction: read, stamp, queue; the writer sends each chunk when it is due.
async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer_budget = budget.clone();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            writer_budget.add_permits(chunk.len());
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + delay;
            // `n` ≤ READ_BUF, far below u32::MAX.
            let Ok(permit) = budget.acquire_many(n as u32).await else {
                return;
            };
            permit.forget();
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    // The reader ends first on EOF; the writer then drains what is queued and shuts down.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round trip through the forwarder to an echo server takes at least twice the delay,
    /// and the bytes arrive intact and in order.
    #[tokio::test]
    async fn each_direction_is_delayed_and_bytes_arrive_in_order() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_addr = echo.local_addr().expect("echo addr");
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept");
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy_addr = proxy.local_addr().expect("proxy addr");
        let delay = Duration::from_millis(40);
        tokio::spawn(accept_loop(proxy, echo_addr, delay));

        let mut c = TcpStream::connect(proxy_addr).await.expect("connect");
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let t0 = Instant::now();
        let (mut r, mut w) = c.split();
        let write = async {
            w.write_all(&payload).await.expect("write");
        };
        let mut back = vec![0u8; payload.len()];
        let read = async {
            r.read_exact(&mut back).await.expect("read back");
        };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("the echo in time");
        assert!(
            t0.elapsed() >= 2 * delay,
            "round trip {:?} < 2 × {delay:?}",
            t0.elapsed()
        );
        assert!(back == payload, "the bytes came back changed or reordered");
    }
}
