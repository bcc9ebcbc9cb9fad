//! The agent's Prometheus metrics: a handful of counters and gauges, served as plain text on
//! `GET /metrics` by a tiny HTTP/1.1 responder.
//!
//! Off unless `--metrics-listen ADDR` (or `SKOALA_METRICS_LISTEN`) is given: an agent accepts
//! no inbound connection it was not asked to. The Helm chart turns it on (port 9091) for the
//! pod network only; `docs/operating.md` lists the families and the alerts to build on them.
//!
//! Deliberately no HTTP framework: the endpoint answers one fixed path for a scraper every few
//! seconds, and the agent's memory at rest matters on thousands of clusters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skoala_proto::v1::{Task, TaskKind, TaskOutcome, agent_message};
use skoala_support::prometheus::{Kind, Writer};
use skoala_support::time::now_unix;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything the agent counts. Cheap to update from anywhere (atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// 1 while a session is up (`skoala_agent_connected`).
    pub connected: AtomicU64,
    /// Sessions the coordinator accepted; reconnects are this minus one.
    pub sessions_established: AtomicU64,
    /// Failed connection attempts and broken sessions.
    pub session_failures: AtomicU64,
    /// Heartbeats sent, answers to pings included.
    pub heartbeats_sent: AtomicU64,
    /// Inventory messages sent after a change or on request.
    pub inventory_updates_sent: AtomicU64,
    /// Client certificates renewed over the session.
    pub certificate_renewals: AtomicU64,
    /// When the certificate in use expires, Unix seconds: an alert fires well before.
    pub certificate_not_after: AtomicI64,
    /// Tasks accepted and started.
    pub tasks_accepted: AtomicU64,
    /// Tasks refused before anything changed (no helm, bad spec, busy release).
    pub tasks_refused: AtomicU64,
    /// When an inventory last went out (in a hello or an update), Unix seconds.
    pub inventory_sent_unix: AtomicI64,
    /// Operation id → task kind, from the task's arrival until its result went out.
    kinds: Mutex<HashMap<String, &'static str>>,
    /// (kind, outcome) → results sent.
    results: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// At most this many operations are remembered between task and result (a coordinator sends
/// one at a time per release; the bound only guards against a misbehaving one).
const MAX_KINDS: usize = 64;

fn kind_label(kind: i32) -> &'static str {
    match TaskKind::try_from(kind) {
        Ok(TaskKind::Upgrade) => "upgrade",
        Ok(TaskKind::Rollback) => "rollback",
        Ok(TaskKind::Preflight) => "preflight",
        _ => "unknown",
    }
}

/// Increments a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The coordinator accepted a session (whose hello carried the inventory).
    pub fn session_up(&self) {
        self.connected.store(1, Ordering::Relaxed);
        inc(&self.sessions_established);
        self.inventory_sent_unix
            .store(now_unix(), Ordering::Relaxed);
    }

    /// A task arrived: remember its kind until its result goes out.
    pub fn task_received(&self, task: &Task) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() < MAX_KINDS || kinds.contains_key(&task.operation_id) {
            kinds.insert(task.operation_id.clone(), kind_label(task.kind));
        }
    }

    /// Counts an outgoing message.
    pub fn sent(&self, body: &agent_message::Body) {
        use agent_message::Body;
        match body {
            Body::Heartbeat(_) => inc(&self.heartbeats_sent),
            Body::Inventory(_) => {
                inc(&self.inventory_updates_sent);
                self.inventory_sent_unix
                    .store(now_unix(), Ordering::Relaxed);
            }
            Body::TaskAccepted(_) => inc(&self.tasks_accepted),
            Body::TaskResult(r) => {
                if r.outcome == TaskOutcome::Refused as i32 {
                    inc(&self.tasks_refused);
                }
                let kind = self
                    .kinds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&r.operation_id)
                    .unwrap_or("unknown");
                *self
                    .results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((kind, skoala_upgrade::wire::task_outcome_label(r.outcome)))
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut w = Writer::default();
        w.family(
            "skoala_agent_info",
            Kind::Gauge,
            "The agent's version (always 1).",
        );
        w.sample(
            "skoala_agent_info",
            &[("version", crate::AGENT_VERSION)],
            1.0,
        );
        w.single(
            "skoala_agent_connected",
            Kind::Gauge,
            "1 while a session with the coordinator is up.",
            get(&self.connected),
        );
        w.single(
            "skoala_agent_sessions_established_total",
            Kind::Counter,
            "Sessions the coordinator accepted.",
            get(&self.sessions_established),
        );
        w.single(
            "skoala_agent_session_failures_total",
            Kind::Counter,
            "Failed connection attempts and broken sessions.",
            get(&self.session_failures),
        );
        w.single(
            "skoala_agent_heartbeats_sent_total",
            Kind::Counter,
            "Heartbeats sent (including answers to pings).",
            get(&self.heartbeats_sent),
        );
        w.single(
            "skoala_agent_inventory_updates_sent_total",
            Kind::Counter,
            "Inventory messages sent after a change or on request.",
            get(&self.inventory_updates_sent),
        );
        w.single(
            "skoala_agent_certificate_renewals_total",
            Kind::Counter,
            "Client certificates renewed over the session.",
            get(&self.certificate_renewals),
        );
        w.single(
            "skoala_agent_certificate_expiry_timestamp_seconds",
            Kind::Gauge,
            "When the client certificate in use expires (Unix time).",
            self.certificate_not_after.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "skoala_agent_tasks_accepted_total",
            Kind::Counter,
            "Tasks accepted and started.",
            get(&self.tasks_accepted),
        );
        w.single(
            "skoala_agent_tasks_refused_total",
            Kind::Counter,
            "Tasks refused before changing anything.",
            get(&self.tasks_refused),
        );
        w.single(
            "skoala_agent_reconnects_total",
            Kind::Counter,
            "Sessions established after the first one since the agent started.",
            self.sessions_established
                .load(Ordering::Relaxed)
                .saturating_sub(1) as f64,
        );
        w.single(
            "skoala_agent_inventory_sent_timestamp_seconds",
            Kind::Gauge,
            "When the agent last reported its release inventory (Unix time; 0 = never).",
            self.inventory_sent_unix.load(Ordering::Relaxed) as f64,
        );
        w.family(
            "skoala_agent_tasks_total",
            Kind::Counter,
            "Task results sent, by task kind and outcome.",
        );
        for ((kind, outcome), n) in self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            w.sample(
                "skoala_agent_tasks_total",
                &[("kind", kind), ("outcome", outcome)],
                *n as f64,
            );
        }
        w.finish()
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

    #[test]
    fn tasks_by_kind_and_outcome_reconnects_and_inventory_time() {
        use skoala_proto::v1::{Inventory, TaskResult};
        let m = Metrics::default();
        m.session_up();
        m.session_up();
        let task = |op: &str, kind: TaskKind| Task {
            operation_id: op.into(),
            kind: kind as i32,
            ..Default::default()
        };
        let result = |op: &str, outcome: TaskOutcome| {
            agent_message::Body::TaskResult(TaskResult {
                operation_id: op.into(),
                outcome: outcome as i32,
                ..Default::default()
            })
        };
        m.task_received(&task("p.c.upgrade-1", TaskKind::Upgrade));
        m.task_received(&task("p.c.rollback-1", TaskKind::Rollback));
        m.sent(&result("p.c.upgrade-1", TaskOutcome::Succeeded));
        m.sent(&result("p.c.rollback-1", TaskOutcome::Refused));
        m.sent(&result("never-seen", TaskOutcome::Failed));
        m.sent(&agent_message::Body::Inventory(Inventory::default()));
        let page = m.render();
        for line in [
            "skoala_agent_tasks_total{kind=\"upgrade\",outcome=\"succeeded\"} 1",
            "skoala_agent_tasks_total{kind=\"rollback\",outcome=\"refused\"} 1",
            "skoala_agent_tasks_total{kind=\"unknown\",outcome=\"failed\"} 1",
            "skoala_agent_reconnects_total 1",
            "skoala_agent_tasks_refused_total 1",
            "skoala_agent_inventory_updates_sent_total 1",
        ] {
            assert!(page.contains(&format!("\n{line}\n")), "{line} in:\n{page}");
        }
        let sent = m.inventory_sent_unix.load(Ordering::Relaxed);
        assert!((now_unix() - sent).abs() < 5, "{sent}");
        assert!(
            m.kinds.lock().expect("lock").is_empty(),
            "results forget kinds"
        );
    }

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
        assert!(page.contains("# TYPE skoala_agent_tasks_total counter"));
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        server.await.expect("server ends on shutdown");
    }
}
