//! The agent's Prometheus metrics: a handful of counters and gauges, served as plain text on
//! `GET /metrics` by a tiny HTTP/1.1 responder.
//!
//! Deliberately no HTTP framework: the endpoint answers one fixed path for a scraper every few
//! seconds, and the agent's memory at rest matters on thousands of clusters.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything the agent counts. Cheap to update from anywhere (atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    pub connected: AtomicU64,
    pub sessions_established: AtomicU64,
    pub session_failures: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub inventory_updates_sent: AtomicU64,
    pub certificate_renewals: AtomicU64,
    pub certificate_not_after: AtomicI64,
    pub tasks_accepted: AtomicU64,
    pub tasks_refused: AtomicU64,
}

/// Increments a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = format!(
            "# HELP skoala_agent_info The agent's version (always 1).\n# TYPE skoala_agent_info gauge\nskoala_agent_info{{version=\"{}\"}} 1\n",
            crate::agent::AGENT_VERSION
        );
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "skoala_agent_connected",
            "gauge",
            "1 while a session with the coordinator is up.",
            get(&self.connected).to_string(),
        );
        metric(
            "skoala_agent_sessions_established_total",
            "counter",
            "Sessions the coordinator accepted.",
            get(&self.sessions_established).to_string(),
        );
        metric(
            "skoala_agent_session_failures_total",
            "counter",
            "Failed connection attempts and broken sessions.",
            get(&self.session_failures).to_string(),
        );
        metric(
            "skoala_agent_heartbeats_sent_total",
            "counter",
            "Heartbeats sent (including answers to pings).",
            get(&self.heartbeats_sent).to_string(),
        );
        metric(
            "skoala_agent_inventory_updates_sent_total",
            "counter",
            "Inventory messages sent after a change or on request.",
            get(&self.inventory_updates_sent).to_string(),
        );
        metric(
            "skoala_agent_certificate_renewals_total",
            "counter",
            "Client certificates renewed over the session.",
            get(&self.certificate_renewals).to_string(),
        );
        metric(
            "skoala_agent_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the client certificate in use expires (Unix time).",
            self.certificate_not_after
                .load(Ordering::Relaxed)
                .to_string(),
        );
        metric(
            "skoala_agent_tasks_accepted_total",
            "counter",
            "Tasks accepted and started.",
            get(&self.tasks_accepted).to_string(),
        );
        metric(
            "skoala_agent_tasks_refused_total",
            "counter",
            "Tasks refused before changing anything.",
            get(&self.tasks_refused).to_string(),
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // One small request per connection; bounded in size and time.
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let mut parts = request.split_whitespace();
            let response = match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics")) => {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics port (a bind failure is a startup error, not a silent gap in graphs).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_text_format() {
        let metrics = Arc::new(Metrics::default());
        inc(&metrics.heartbeats_sent);
        metrics.connected.store(1, Ordering::Relaxed);
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics, shutdown.clone()));

        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let page = get("/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("\nskoala_agent_connected 1\n"), "{page}");
        assert!(
            page.contains("\nskoala_agent_heartbeats_sent_total 1\n"),
            "{page}"
        );
        assert!(page.contains("skoala_agent_info{version=\""), "{page}");
        assert!(page.contains("# TYPE skoala_agent_session_failures_total counter"));
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        server.await.expect("server ends on shutdown");
    }
}
