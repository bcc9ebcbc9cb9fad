//! The coordinator's Prometheus `/metrics` (`serve --metrics-listen ADDR`, plaintext HTTP),
//! and beside it `/healthz`, the liveness probe, which depends on none of it.
//!
//! Two kinds of metrics, kept apart on purpose:
//!
//! - **Events counted as they happen** ([`Metrics`]): sessions, agent messages by type,
//!   refusals, executor step durations (histogram), task results, relayed chart bytes. The
//!   rest of the coordinator calls one method per event (e.g. `ctx.metrics.session_opened()`,
//!   `ctx.metrics.executor_input(..)`), nothing more.
//! - **State computed at scrape time** ([`fleet`]): clusters by state, skew, versions in use,
//!   the active plan's progress. These are derived from the same snapshot and stored rollout
//!   that `skoalactl` shows, handed in by the server through [`Source`], so they cannot drift
//!   from the truth the way hand-maintained gauges would. One computation is reused for 20
//!   times what it cost (1-10 s), so polling `/metrics` in a loop cannot load a coordinator
//!   with thousands of agents.
//!
//! This module is a leaf: it is handed what it counts and knows nothing else of the
//! coordinator.
//!
//! Plus the standard `process_*` families ([`process`]). Every family is written with its
//! `# HELP`/`# TYPE` header even when it has no samples yet. Label values come only from
//! fixed vocabularies (no cluster ids anywhere), so the number of series does not grow with
//! the fleet. `docs/operating.md` ("Metrics and alerts") lists every family and suggests
//! alerts; `docs/grafana/skoala-fleet.json` is the dashboard.

pub mod counter;
pub mod fleet;
pub mod histogram;
pub mod process;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use skoala_proto::v1::{StepPhase, agent_message::Body};

use counter::CounterVec;
use histogram::{HistogramVec, STEP_BUCKETS};
use skoala_support::prometheus::{Kind, Writer};

/// The executor's steps (`skoala_upgrade::Step`). A step name outside this list (a newer
/// agent) is counted as `other`, so an agent cannot grow the number of series.
const STEPS: &[&str] = &[
    "recover",
    "preflight",
    "chart",
    "backup",
    "crds",
    "upgrade",
    "verify",
    "rollback",
];

/// Fleet gauges are reused for at least this long...
const FLEET_MIN_AGE: Duration = Duration::from_secs(1);
/// ...and for this many times what computing them took, so that however often `/metrics` is
/// polled (a benchmark polls in a tight loop), the gauges cost at most a twentieth of a core,
/// however long one computation takes at the fleet's size.
const FLEET_COST_FACTOR: u32 = 20;
/// ...but never longer than this: a computation slowed by a busy store (a registration storm)
/// must not freeze the gauges for minutes. Below Prometheus' usual 15 s scrape interval.
const FLEET_MAX_AGE: Duration = Duration::from_secs(10);

/// The last computed fleet gauges.
struct CachedFleet {
    at: Instant,
    took: Duration,
    gauges: fleet::FleetGauges,
}

/// Events counted as they happen; shared by the gateway, the sessions and the orchestrator.
pub struct Metrics {
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    messages: CounterVec,
    refusals: CounterVec,
    steps: HistogramVec,
    task_results: CounterVec,
    /// Chart bytes streamed to agents by the relay.
    relay_bytes_sent: AtomicU64,
    /// Audit entries the store refused (a full disk): never dropped silently.
    audit_write_failures: AtomicU64,
    /// Whether the last audit write failed: what readiness reads.
    audit_failing: std::sync::atomic::AtomicBool,
    /// Held while computing, so concurrent scrapes share one computation.
    fleet: tokio::sync::Mutex<Option<CachedFleet>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions_opened: AtomicU64::new(0),
            sessions_closed: AtomicU64::new(0),
            messages: CounterVec::new(
                "skoala_agent_messages_total",
                "Messages received from agents, by type.",
                &["type"],
            ),
            refusals: CounterVec::new(
                "skoala_refusals_total",
                "Refused connections and calls, by audit kind.",
                &["kind"],
            ),
            steps: HistogramVec::new(
                "skoala_step_duration_seconds",
                "Executor step durations (preflight, chart, backup, crds, upgrade, verify, ...), from agents' step progress (target=worker) and the coordinator's own control-plane runs (target=controlPlane).",
                &["step", "target", "outcome"],
                STEP_BUCKETS,
            ),
            task_results: CounterVec::new(
                "skoala_task_results_total",
                "Task results received (upgrades and rollbacks), by target and outcome.",
                &["target", "outcome"],
            ),
            relay_bytes_sent: AtomicU64::new(0),
            audit_write_failures: AtomicU64::new(0),
            audit_failing: std::sync::atomic::AtomicBool::new(false),
            fleet: tokio::sync::Mutex::new(None),
        }
    }
}

fn target_label(control_plane: bool) -> &'static str {
    if control_plane {
        "controlPlane"
    } else {
        "worker"
    }
}

impl Metrics {
    pub fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self) {
        self.sessions_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message(&self, kind: &'static str) {
        self.messages.inc(&[kind]);
    }

    pub fn refusal(&self, kind: &str) {
        self.refusals.inc(&[kind]);
    }

    /// Counts `n` chart bytes streamed to an agent by the relay.
    pub fn relay_bytes_sent(&self, n: usize) {
        self.relay_bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An audit entry could not be written.
    pub fn audit_write_failed(&self) {
        self.audit_write_failures.fetch_add(1, Ordering::Relaxed);
        self.audit_failing.store(true, Ordering::Relaxed);
    }

    /// An audit entry was written: the audit log works (again).
    pub fn audit_written(&self) {
        self.audit_failing.store(false, Ordering::Relaxed);
    }

    /// Whether the last audit write failed (for a readiness check: a coordinator that cannot
    /// keep its audit log should not be taking traffic unnoticed).
    pub fn audit_failing(&self) -> bool {
        self.audit_failing.load(Ordering::Relaxed)
    }

    /// An executor message as the orchestrator receives it, from an agent or from the
    /// coordinator's own control-plane run: finished steps feed the duration histogram,
    /// results the outcome counter. Other messages are ignored.
    pub fn executor_input(&self, control_plane: bool, body: &Body) {
        let target = target_label(control_plane);
        match body {
            Body::StepProgress(p) => {
                let outcome = match StepPhase::try_from(p.phase) {
                    Ok(StepPhase::Succeeded) => "succeeded",
                    Ok(StepPhase::Failed) => "failed",
                    // Started has no duration yet; skipped steps took no time.
                    _ => return,
                };
                let step = STEPS
                    .iter()
                    .find(|s| **s == p.step)
                    .copied()
                    .unwrap_or("other");
                self.steps.observe(
                    &[step, target, outcome],
                    p.duration_ms.max(0) as f64 / 1000.0,
                );
            }
            Body::TaskResult(r) => self
                .task_results
                .inc(&[target, skoala_upgrade::wire::task_outcome_label(r.outcome)]),
            _ => {}
        }
    }

    /// The event counters (everything but the scrape-time gauges).
    pub fn render_counters(&self, w: &mut Writer, connected: usize) {
        w.single(
            "skoala_agents_connected",
            Kind::Gauge,
            "Agents with a live session.",
            connected as f64,
        );
        w.single(
            "skoala_sessions_opened_total",
            Kind::Counter,
            "Agent sessions accepted.",
            self.sessions_opened.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "skoala_sessions_closed_total",
            Kind::Counter,
            "Agent sessions ended, for any reason.",
            self.sessions_closed.load(Ordering::Relaxed) as f64,
        );
        self.messages.render(w);
        self.refusals.render(w);
        self.steps.render(w);
        self.task_results.render(w);
        w.single(
            "skoala_relay_bytes_sent_total",
            Kind::Counter,
            "Chart bytes streamed to agents by the chart relay.",
            self.relay_bytes_sent.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "skoala_audit_write_failures_total",
            Kind::Counter,
            "Audit entries the store could not write (a full disk); each is also logged.",
            self.audit_write_failures.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "skoala_audit_log_writable",
            Kind::Gauge,
            "1 when the last audit write succeeded, 0 when it failed.",
            if self.audit_failing() { 0.0 } else { 1.0 },
        );
    }
}

/// What a scrape reads besides its own counters, from whoever serves `/metrics`.
pub trait Source: Send + Sync + 'static {
    /// Why the fleet state could not be read.
    type Error: std::fmt::Display;

    /// The event counters.
    fn metrics(&self) -> &Metrics;
    /// Agents with a live session now.
    fn connected(&self) -> usize;
    /// The fleet and the active plans, as `skoalactl` shows them now.
    fn fleet(&self) -> impl Future<Output = Result<fleet::FleetState, Self::Error>> + Send;
}

/// The whole exposition. Counters are always current; the fleet gauges are recomputed once
/// their last computation is older than [`FLEET_COST_FACTOR`] times what it took, clamped
/// between [`FLEET_MIN_AGE`] and [`FLEET_MAX_AGE`]. A store that cannot be read leaves the
/// fleet gauges out (and says so in `skoala_fleet_state_readable`) instead of failing the
/// scrape: the counters matter most exactly when something is wrong.
pub async fn scrape(source: &impl Source) -> String {
    let metrics = source.metrics();
    let mut w = Writer::default();
    metrics.render_counters(&mut w, source.connected());
    let readable = {
        let mut cached = metrics.fleet.lock().await;
        let fresh = cached.as_ref().is_some_and(|c| {
            c.at.elapsed() < (c.took * FLEET_COST_FACTOR).clamp(FLEET_MIN_AGE, FLEET_MAX_AGE)
        });
        if !fresh {
            let start = Instant::now();
            match source.fleet().await {
                Ok(state) => {
                    let gauges = fleet::compute(&state);
                    *cached = Some(CachedFleet {
                        at: Instant::now(),
                        took: start.elapsed(),
                        gauges,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot read the fleet state");
                    *cached = None;
                }
            }
        }
        match cached.as_ref() {
            Some(c) => {
                c.gauges.render(&mut w);
                w.single(
                    "skoala_fleet_state_compute_seconds",
                    Kind::Gauge,
                    "How long the last computation of the fleet gauges took (they are reused for 20 times that, between 1 s and 10 s).",
                    c.took.as_secs_f64(),
                );
                true
            }
            None => false,
        }
    };
    w.single(
        "skoala_fleet_state_readable",
        Kind::Gauge,
        "1 if this scrape could read the fleet state (clusters, plans) from the store; the fleet gauges are missing when 0.",
        if readable { 1.0 } else { 0.0 },
    );
    leader(&mut w, true);
    process::render(&mut w);
    w.finish()
}

/// `skoala_coordinator_leader`: whether this process serves agents and runs plans. Always 1 on
/// SQLite; on the kube store, 0 while a replica stands by, so two leaders (fencing failed) or
/// none show in one query over both replicas.
fn leader(w: &mut Writer, leading: bool) {
    w.single(
        "skoala_coordinator_leader",
        Kind::Gauge,
        "1 while this replica leads (serves agents and runs plans); 0 while it stands by for the leader Lease.",
        if leading { 1.0 } else { 0.0 },
    );
}

/// What a standby answers (design §5.4): healthy and Ready, so rolling updates and
/// PodDisruptionBudgets count it, with only the leader gauge and process metrics, since it
/// holds no fleet state it could vouch for.
pub fn standby_router() -> Router {
    Router::new()
        .route("/metrics", get(standby_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
}

async fn standby_metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut w = Writer::default();
    leader(&mut w, false);
    process::render(&mut w);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        w.finish(),
    )
}

/// Serves whichever router `current` holds at each request on `listener` until the process
/// ends: the standby's until this replica leads, then the leader's, on the same port.
pub async fn serve_switching(
    listener: tokio::net::TcpListener,
    current: tokio::sync::watch::Receiver<Router>,
) -> std::io::Result<()> {
    let switch = tower::service_fn(move |request: axum::extract::Request| {
        let router = current.borrow().clone();
        async move { tower::ServiceExt::oneshot(router, request).await }
    });
    axum::serve(listener, Router::new().fallback_service(switch)).await
}

/// The leader's routes, over `source`.
pub fn leader_router<T: Source>(source: Arc<T>) -> Router {
    router(source)
}

fn router<T: Source>(source: Arc<T>) -> Router {
    Router::new()
        .route("/metrics", get(render::<T>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<T>))
        .with_state(source)
}

/// Liveness: the process and its runtime answer. It reads nothing, takes no lock and never
/// touches the store, so a scrape waiting on the fleet view, a slow disk or a flood of
/// connections does not make the kubelet restart a coordinator that is merely busy; a
/// runtime so starved that even this cannot answer is what a restart is for.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 503 while the audit log cannot be written (a full disk), so a coordinator that
/// would lose its audit trail is seen, and taken out of service, rather than serving on
/// silently. Reads one flag; no lock, no store.
async fn readyz<T: Source>(State(source): State<Arc<T>>) -> (axum::http::StatusCode, &'static str) {
    if source.metrics().audit_failing() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written\n",
        )
    } else {
        (axum::http::StatusCode::OK, "ok\n")
    }
}

async fn render<T: Source>(
    State(source): State<Arc<T>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape(source.as_ref()).await,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skoala_proto::v1::{StepProgress, TaskOutcome, TaskResult};

    use super::*;

    /// Family name → type, from the `# TYPE` lines of an exposition.
    fn families(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect()
    }

    /// Every `expr` in a Grafana dashboard, with the dashboard's own variables.
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }

    /// Metric names a PromQL expression reads: ours all start with `skoala_` or `process_`,
    /// and no label name, function or keyword does.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let bytes = expr.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts_word =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if starts_word
                && (expr[i..].starts_with("skoala_") || expr[i..].starts_with("process_"))
            {
                let end = expr[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map_or(expr.len(), |n| i + n);
                out.push(expr[i..end].to_string());
                i = end;
            } else {
                i += 1;
            }
        }
        out
    }

    /// Whether `name` is a series name a family in `fams` exposes.
    fn exposed(fams: &BTreeMap<String, String>, name: &str) -> bool {
        if fams.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|base| fams.get(base))
                .is_some_and(|k| k == "histogram")
        })
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_coordinator_exposes() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana/skoala-fleet.json"))
                .expect("the dashboard is valid JSON");
        // A full exposition: counters, an empty fleet's gauges, process_*.
        let mut w = Writer::default();
        Metrics::default().render_counters(&mut w, 0);
        let empty = fleet::FleetState {
            view: skoala_plan::FleetView {
                now: jiff::Timestamp::UNIX_EPOCH,
                expected: jiff::SignedDuration::from_mins(10),
                control_plane: skoala_plan::ClusterRelease {
                    cluster_id: skoala_plan::Target::ControlPlane.to_string(),
                    name: skoala_plan::Target::ControlPlane.to_string(),
                    connected: false,
                    release: None,
                },
                workers: Vec::new(),
            },
            skew: skoala_plan::SkewReport {
                control_plane_version: None,
                clusters: Vec::new(),
            },
            active_plans: Vec::new(),
        };
        fleet::compute(&empty).render(&mut w);
        w.single("skoala_fleet_state_readable", Kind::Gauge, "x", 1.0);
        process::render(&mut w);
        let fams = families(&w.finish());

        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(all.len() > 20, "{all:?}");
        let mut checked = 0;
        for e in &all {
            // Agent panels read the agents' own endpoint: the end-to-end test checks those
            // against a real agent's scrape.
            if e.contains("$agent_job") {
                continue;
            }
            let names = metric_names(e);
            assert!(!names.is_empty(), "no metric in {e:?}");
            for n in names {
                assert!(
                    exposed(&fams, &n),
                    "{n} (in {e:?}) is not exposed: {fams:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 20);

        // Importable: one data source variable, used by every panel and query.
        let text = serde_json::to_string(&dashboard).expect("json");
        let vars = dashboard["templating"]["list"].as_array().expect("vars");
        assert!(
            vars.iter()
                .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource")
        );
        let mut uids = Vec::new();
        fn uids_of(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(ds) = m.get("datasource") {
                        out.push(ds["uid"].as_str().unwrap_or("(none)").to_string());
                    }
                    m.values().for_each(|v| uids_of(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| uids_of(v, out)),
                _ => {}
            }
        }
        uids_of(&dashboard, &mut uids);
        assert!(!uids.is_empty());
        assert!(uids.iter().all(|u| u == "${DS_PROMETHEUS}"), "{uids:?}");
        assert!(!text.contains("\"uid\":\"prometheus\""));
        // Panel ids are unique (Grafana silently drops duplicates).
        let ids: Vec<i64> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .map(|p| p["id"].as_i64().expect("id"))
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    /// A source whose fleet never comes: a scrape stuck on the fleet view's lock or the store.
    struct Stuck(Metrics);

    impl Source for Stuck {
        type Error = std::convert::Infallible;
        fn metrics(&self) -> &Metrics {
            &self.0
        }
        fn connected(&self) -> usize {
            0
        }
        async fn fleet(&self) -> Result<fleet::FleetState, Self::Error> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_standby_is_healthy_and_ready_and_says_it_does_not_lead_until_the_leaders_routes_replace_its_own()
     {
        let (routes, current) = tokio::sync::watch::channel(standby_router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_switching(listener, current));
        let fetch = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write");
            let mut out = String::new();
            stream.read_to_string(&mut out).await.expect("read");
            out
        };
        assert!(fetch("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(fetch("/healthz").await.starts_with("HTTP/1.1 200"));
        let standby = fetch("/metrics").await;
        assert!(standby.contains("skoala_coordinator_leader 0"), "{standby}");

        routes.send_modify(|r| *r = leader_router(Arc::new(Stuck(Metrics::default()))));
        // The leader's routes now answer on the same port: /metrics is the leader's (held by
        // the fake), /healthz still answers.
        let leading = tokio::time::timeout(Duration::from_millis(300), fetch("/metrics")).await;
        assert!(
            leading.is_err(),
            "the leader's /metrics is served after the switch"
        );
        assert!(fetch("/healthz").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn healthz_answers_while_metrics_is_stuck() {
        use tower::ServiceExt;
        let app = router(Arc::new(Stuck(Metrics::default())));
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let stuck = tokio::time::timeout(
            Duration::from_millis(200),
            app.clone().oneshot(get("/metrics")),
        )
        .await;
        assert!(stuck.is_err(), "the fake must hold /metrics");
        let health = tokio::time::timeout(Duration::from_secs(5), app.oneshot(get("/healthz")))
            .await
            .expect("/healthz answers at once")
            .expect("response");
        assert_eq!(health.status(), axum::http::StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_fails_while_the_audit_log_cannot_be_written() {
        use tower::ServiceExt;
        let source = Arc::new(Stuck(Metrics::default()));
        let app = router(source.clone());
        let ready = || async {
            let req = axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .expect("request");
            app.clone().oneshot(req).await.expect("response").status()
        };
        assert_eq!(ready().await, axum::http::StatusCode::OK);
        source.0.audit_write_failed();
        assert_eq!(ready().await, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        source.0.audit_written();
        assert_eq!(ready().await, axum::http::StatusCode::OK);
    }

    #[test]
    fn metric_names_in_promql() {
        assert_eq!(
            metric_names(
                "sum by (le) (rate(skoala_step_duration_seconds_bucket{job=~\"$job\"}[5m])) / process_max_fds"
            ),
            ["skoala_step_duration_seconds_bucket", "process_max_fds"]
        );
        assert!(metric_names("sum(x_skoala_y)").is_empty());
    }

    fn step(name: &str, phase: StepPhase, ms: i64) -> Body {
        Body::StepProgress(StepProgress {
            step: name.into(),
            phase: phase as i32,
            duration_ms: ms,
            ..Default::default()
        })
    }

    #[test]
    fn steps_and_results_are_counted_with_bounded_labels() {
        let m = Metrics::default();
        m.executor_input(false, &step("upgrade", StepPhase::Started, 0));
        m.executor_input(false, &step("upgrade", StepPhase::Succeeded, 2500));
        m.executor_input(false, &step("upgrade", StepPhase::Succeeded, 40));
        m.executor_input(true, &step("verify", StepPhase::Failed, 1_000));
        m.executor_input(false, &step("crds", StepPhase::Skipped, 0));
        m.executor_input(false, &step("cluster-abc-123", StepPhase::Succeeded, 1));
        m.executor_input(
            true,
            &Body::TaskResult(TaskResult {
                outcome: TaskOutcome::RolledBack as i32,
                ..Default::default()
            }),
        );
        m.relay_bytes_sent(10);
        m.audit_write_failed();
        let mut w = Writer::default();
        m.render_counters(&mut w, 3);
        let text = w.finish();
        assert!(
            text.contains("\nskoala_audit_write_failures_total 1\n"),
            "{text}"
        );
        assert!(text.contains("\nskoala_audit_log_writable 0\n"), "{text}");
        m.audit_written();
        assert!(
            !m.audit_failing(),
            "writable again after a successful write"
        );
        for line in [
            "skoala_agents_connected 3",
            "skoala_step_duration_seconds_bucket{step=\"upgrade\",target=\"worker\",outcome=\"succeeded\",le=\"0.05\"} 1",
            "skoala_step_duration_seconds_bucket{step=\"upgrade\",target=\"worker\",outcome=\"succeeded\",le=\"2.5\"} 2",
            "skoala_step_duration_seconds_bucket{step=\"upgrade\",target=\"worker\",outcome=\"succeeded\",le=\"+Inf\"} 2",
            "skoala_step_duration_seconds_sum{step=\"upgrade\",target=\"worker\",outcome=\"succeeded\"} 2.54",
            "skoala_step_duration_seconds_count{step=\"verify\",target=\"controlPlane\",outcome=\"failed\"} 1",
            "skoala_step_duration_seconds_count{step=\"other\",target=\"worker\",outcome=\"succeeded\"} 1",
            "skoala_task_results_total{target=\"controlPlane\",outcome=\"rolledBack\"} 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
        }
        assert!(!text.contains("step=\"crds\""), "skipped steps: {text}");
        assert!(!text.contains("cluster-abc"), "{text}");
        assert!(
            text.contains("\nskoala_relay_bytes_sent_total 10\n"),
            "{text}"
        );
    }
}
