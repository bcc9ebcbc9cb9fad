//! A minimal Prometheus `/metrics` endpoint: agents connected, sessions opened and closed,
//! agent messages by type, refusals by kind. Plain atomics and a hand-written text exposition;
//! a later issue grows this (plans, skew).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::sessions::Sessions;

/// Counters, shared by the gateway and the admin API.
#[derive(Default)]
pub struct Metrics {
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    messages: Mutex<BTreeMap<&'static str, u64>>,
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
    }
    pub fn session_closed(&self) {
        self.sessions_closed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn message(&self, kind: &'static str) {
        *self
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
    pub fn refusal(&self, kind: &str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, connected: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP skoala_agents_connected Agents with a live session.\n# TYPE skoala_agents_connected gauge\nskoala_agents_connected {connected}"
        );
        let _ = writeln!(
            out,
            "# HELP skoala_sessions_opened_total Agent sessions accepted.\n# TYPE skoala_sessions_opened_total counter\nskoala_sessions_opened_total {}",
            self.sessions_opened.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP skoala_sessions_closed_total Agent sessions ended, for any reason.\n# TYPE skoala_sessions_closed_total counter\nskoala_sessions_closed_total {}",
            self.sessions_closed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP skoala_agent_messages_total Messages received from agents, by type.\n# TYPE skoala_agent_messages_total counter"
        );
        for (kind, n) in self
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "skoala_agent_messages_total{{type=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP skoala_refusals_total Refused connections and calls, by audit kind.\n# TYPE skoala_refusals_total counter"
        );
        for (kind, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "skoala_refusals_total{{kind=\"{kind}\"}} {n}");
        }
        out
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state((metrics, sessions));
    axum::serve(listener, app).await
}

async fn render(State((metrics, sessions)): State<(Arc<Metrics>, Arc<Sessions>)>) -> String {
    metrics.render(sessions.connected())
}
