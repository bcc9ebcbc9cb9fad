//! Issue 7's metrics, end to end: a real coordinator, two agents and a plan from 0.19.0 to
//! 0.19.2. The coordinator's `/metrics` (parsed strictly, without promtool) shows the fleet
//! before the plan, the plan's progress and phase, skew 0 at the end, step-duration histograms
//! with counts for every step of every cluster, task results by outcome, and no cluster id in
//! any label. An agent's own `/metrics` shows its session, its task and its reconnect after a
//! coordinator restart. Every metric name the Grafana dashboard queries is one of these
//! scrapes' families.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use skoala_e2e::fleet::Coordinator;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::wait;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(120);
const PLAN: &str = "metrics-0-19-2";

/// One sample of a scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: family name → type, and every sample.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// The sum over every sample named `name` with `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether a query for series `name` reads a family of this scrape.
    fn exposes(&self, name: &str) -> bool {
        self.types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|sfx| {
                name.strip_suffix(sfx)
                    .is_some_and(|b| self.types.get(b).map(String::as_str) == Some("histogram"))
            })
    }
}

/// Parses the text format strictly: a `# TYPE` before its samples, valid names, labels and
/// values, counters named `_total`, no duplicate series.
fn parse(text: &str) -> anyhow::Result<Scrape> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut scrape = Scrape::default();
    let mut seen = HashSet::new();
    for (no, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", no + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').with_context(at)?;
            ensure!(valid_name(name), "bad family name, {}", at());
            ensure!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}, {}",
                at()
            );
            ensure!(
                kind != "counter" || name.ends_with("_total"),
                "counter not named _total, {}",
                at()
            );
            ensure!(
                scrape.types.insert(name.into(), kind.into()).is_none(),
                "family declared twice, {}",
                at()
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# ") {
            continue;
        }
        // name{labels} value
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => bail!("no value, {}", at()),
        };
        ensure!(valid_name(name), "bad metric name, {}", at());
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = l.split_once("=\"").with_context(at)?;
                ensure!(valid_name(key), "bad label name {key:?}, {}", at());
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bail!("bad escape, {}", at()),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value, {}", at()),
                    }
                };
                ensure!(
                    labels.insert(key.to_string(), value).is_none(),
                    "label twice, {}",
                    at()
                );
                l = &after[end + 1..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let value = match rest.trim() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().with_context(|| format!("bad value, {}", at()))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (scrape.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        ensure!(
            scrape.types.contains_key(family),
            "sample before its # TYPE, {}",
            at()
        );
        ensure!(
            seen.insert(format!("{name}{labels:?}")),
            "duplicate series, {}",
            at()
        );
        scrape.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(scrape)
}

/// Every histogram series: `le` ascending, cumulative counts, `+Inf` equal to `_count`.
fn check_histograms(s: &Scrape) -> anyhow::Result<()> {
    for (family, _) in s.types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for b in s.samples.iter().filter(|x| x.name == bucket) {
            let mut key = b.labels.clone();
            let le = key.remove("le").context("bucket without le")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            series.entry(key).or_default().push((le, b.value));
        }
        for (key, buckets) in series {
            ensure!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{key:?}: buckets not ascending and cumulative: {buckets:?}"
            );
            let (last_le, last) = *buckets.last().context("no buckets")?;
            ensure!(last_le == f64::INFINITY, "{family}{key:?}: no +Inf");
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = s
                .value(&format!("{family}_count"), &labels)
                .context("no _count")?;
            ensure!(
                count == last,
                "{family}{key:?}: +Inf {last} != _count {count}"
            );
            ensure!(
                s.value(&format!("{family}_sum"), &labels).is_some(),
                "{family}{key:?}: no _sum"
            );
        }
    }
    Ok(())
}

/// GET /metrics over plain HTTP/1.1; checks the status and content type, returns the body.
async fn get(addr: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Ok(body.to_string())
}

async fn coordinator_scrape(c: &Coordinator) -> anyhow::Result<(String, Scrape)> {
    let url = c.metrics_url().context("coordinator without metrics")?;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let body = get(addr).await?;
    let parsed = parse(&body)?;
    Ok((body, parsed))
}

/// Waits until the coordinator's scrape satisfies `ok`; the last scrape is in the error.
async fn wait_scrape(
    c: &Coordinator,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Scrape) -> bool,
) -> anyhow::Result<Scrape> {
    let last = std::sync::Mutex::new(String::new());
    let r = wait::until(what, timeout, || async {
        let (text, s) = coordinator_scrape(c).await.ok()?;
        if let Ok(mut l) = last.lock() {
            *l = text;
        }
        ok(&s).then_some(s)
    })
    .await;
    match r {
        Ok(s) => Ok(s),
        Err(e) => bail!(
            "{e:#}\nlast scrape:\n{}\n{}",
            last.lock().map(|l| l.clone()).unwrap_or_default(),
            c.log()
        ),
    }
}

/// The agent's metrics address, from the newest "metrics on" line of its log.
fn agent_metrics_addr(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("skoala-agent metrics on http://"))
        .map(|a| a.trim().trim_end_matches("/metrics").to_string())
}

async fn wait_agent(
    log: impl Fn() -> String,
    what: &str,
    ok: impl Fn(&Scrape) -> bool,
) -> anyhow::Result<Scrape> {
    wait::until(what, TIMEOUT, || async {
        let addr = agent_metrics_addr(&log())?;
        let s = parse(&get(&addr).await.ok()?).ok()?;
        ok(&s).then_some(s)
    })
    .await
    .with_context(|| format!("agent log:\n{}", log()))
}

/// Metric names a PromQL expression reads (ours all start with `skoala_` or `process_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let boundary = prev.is_none_or(|p| !(p.is_ascii_alphanumeric() || p == '_'));
        if boundary && (rest.starts_with("skoala_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            prev = rest[..end].chars().last();
            rest = &rest[end..];
        } else {
            prev = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(e) if k == "expr" => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_shows_in_the_metrics_and_the_dashboard_reads_only_real_metrics()
-> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;

    // work-1's agent serves its own /metrics from now on.
    pf.fleet.agents[0].add_args(&["--metrics-listen", "127.0.0.1:0"]);
    pf.fleet.agents[0].restart()?;
    wait_agent(
        || pf.fleet.agents[0].log(),
        "work-1's agent connected again",
        |s| s.value("skoala_agent_connected", &[]) == Some(1.0),
    )
    .await?;

    // Before the plan: one version, every cluster connected and idle, no plan series.
    let coordinator = &pf.fleet.coordinator;
    let before = wait_scrape(coordinator, "the fleet at 0.19.0", TIMEOUT, |s| {
        s.value("skoala_agents_connected", &[]) == Some(2.0)
            && s.value("skoala_clusters", &[("state", "connected")]) == Some(2.0)
            && s.value("skoala_control_plane_connected", &[]) == Some(1.0)
            && s.value("skoala_skewed_clusters", &[]) == Some(0.0)
    })
    .await?;
    assert_eq!(before.sum("skoala_clusters", &[]), 2.0, "one state each");
    assert_eq!(
        before.value(
            "skoala_release_versions",
            &[("release", "skoala-init"), ("version", "0.19.0")]
        ),
        Some(2.0)
    );
    assert_eq!(
        before.value(
            "skoala_release_versions",
            &[("release", "skoala"), ("version", "0.19.0")]
        ),
        Some(1.0)
    );
    assert_eq!(before.value("skoala_fleet_state_readable", &[]), Some(1.0));
    assert!(
        before
            .samples
            .iter()
            .all(|s| s.name != "skoala_plan_clusters")
    );
    assert!(
        before
            .value("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 1e6
    );
    assert!(before.value("process_open_fds", &[]).unwrap_or(0.0) > 0.0);

    // The plan: canary, then the other worker.
    let yaml = pf.plan_yaml(
        PLAN,
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1, maxFailures: 0}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);

    // The plan's series appear at once (it is stored before anything runs) and always add up
    // to its three targets.
    let during = wait_scrape(coordinator, "the plan's series", TIMEOUT, |s| {
        s.value("skoala_plan_info", &[("plan", PLAN), ("version", "0.19.2")]) == Some(1.0)
    })
    .await?;
    assert_eq!(during.sum("skoala_plan_clusters", &[("plan", PLAN)]), 3.0);
    assert_eq!(
        during.sum("skoala_plan_phase", &[("plan", PLAN)]),
        1.0,
        "exactly one phase is current"
    );

    let done = wait_scrape(coordinator, "the plan succeeded", PLAN_TIMEOUT, |s| {
        s.value(
            "skoala_plan_phase",
            &[("plan", PLAN), ("phase", "succeeded")],
        ) == Some(1.0)
    })
    .await?;
    assert_eq!(
        done.value(
            "skoala_plan_clusters",
            &[("plan", PLAN), ("state", "succeeded")]
        ),
        Some(3.0)
    );
    assert_eq!(done.sum("skoala_plan_clusters", &[("plan", PLAN)]), 3.0);
    assert_eq!(
        done.value("skoala_plan_phase", &[("plan", PLAN), ("phase", "workers")]),
        Some(0.0)
    );

    // Skew 0 at the end, everyone on 0.19.2 (inventories arrive right after the results).
    let end = wait_scrape(coordinator, "no skew on 0.19.2", TIMEOUT, |s| {
        s.value("skoala_skewed_clusters", &[]) == Some(0.0)
            && s.value(
                "skoala_release_versions",
                &[("release", "skoala-init"), ("version", "0.19.2")],
            ) == Some(2.0)
            && s.value(
                "skoala_release_versions",
                &[("release", "skoala"), ("version", "0.19.2")],
            ) == Some(1.0)
    })
    .await?;
    assert_eq!(
        end.value("skoala_clusters", &[("state", "connected")]),
        Some(2.0)
    );

    // Step histograms: every step of every upgrade counted, from agents and the control plane.
    check_histograms(&end)?;
    let count = |step: &str, target: &str| {
        end.value(
            "skoala_step_duration_seconds_count",
            &[("step", step), ("target", target), ("outcome", "succeeded")],
        )
        .unwrap_or(0.0)
    };
    for step in ["preflight", "chart", "backup", "upgrade", "verify"] {
        assert_eq!(count(step, "worker"), 2.0, "{step} on the two workers");
        assert_eq!(
            count(step, "controlPlane"),
            1.0,
            "{step} on the control plane"
        );
    }
    let upgrade_sum = end
        .value(
            "skoala_step_duration_seconds_sum",
            &[
                ("step", "upgrade"),
                ("target", "worker"),
                ("outcome", "succeeded"),
            ],
        )
        .context("upgrade _sum")?;
    assert!(upgrade_sum > 0.0, "helm upgrade --wait takes time");
    assert_eq!(
        end.value(
            "skoala_task_results_total",
            &[("target", "worker"), ("outcome", "succeeded")]
        ),
        Some(2.0)
    );
    assert_eq!(
        end.value(
            "skoala_task_results_total",
            &[("target", "controlPlane"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert!(
        end.value("skoala_agent_messages_total", &[("type", "step_progress")])
            .unwrap_or(0.0)
            >= 10.0
    );
    assert!(
        end.value("skoala_sessions_opened_total", &[])
            .unwrap_or(0.0)
            >= 3.0
    );

    // Bounded labels: no cluster id or name in any label of the coordinator's exposition.
    let (text, parsed) = coordinator_scrape(coordinator).await?;
    let values: HashSet<&str> = parsed
        .samples
        .iter()
        .flat_map(|s| s.labels.values().map(String::as_str))
        .collect();
    for c in pf.ctl().clusters().await? {
        for key in ["id", "name"] {
            let v = c[key].as_str().context("cluster field")?;
            assert!(!values.contains(v), "{key} {v} in a label:\n{text}");
        }
    }

    // The agent: its task, its session, its certificate, its last inventory.
    let agent = wait_agent(
        || pf.fleet.agents[0].log(),
        "work-1's task result",
        |s| {
            s.value(
                "skoala_agent_tasks_total",
                &[("kind", "upgrade"), ("outcome", "succeeded")],
            ) == Some(1.0)
        },
    )
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let expiry = agent
        .value("skoala_agent_certificate_expiry_timestamp_seconds", &[])
        .context("expiry")?;
    assert!(
        expiry > now + 3600.0,
        "certificate expiry {expiry}, now {now}"
    );
    let inventory = agent
        .value("skoala_agent_inventory_sent_timestamp_seconds", &[])
        .context("inventory time")?;
    assert!(
        inventory > now - 600.0 && inventory <= now + 1.0,
        "{inventory}"
    );
    assert_eq!(agent.value("skoala_agent_reconnects_total", &[]), Some(0.0));

    // A coordinator restart: the plan's progress is still there (it comes from the store), and
    // the agent counts its reconnect.
    pf.fleet.coordinator.restart().await?;
    let coordinator = &pf.fleet.coordinator;
    wait_scrape(
        coordinator,
        "the fleet back after a restart",
        TIMEOUT,
        |s| {
            s.value("skoala_agents_connected", &[]) == Some(2.0)
                && s.value("skoala_skewed_clusters", &[]) == Some(0.0)
                && s.value(
                    "skoala_plan_phase",
                    &[("plan", PLAN), ("phase", "succeeded")],
                ) == Some(1.0)
        },
    )
    .await?;
    let agent = wait_agent(
        || pf.fleet.agents[0].log(),
        "work-1 reconnected",
        |s| {
            s.value("skoala_agent_reconnects_total", &[]).unwrap_or(0.0) >= 1.0
                && s.value("skoala_agent_connected", &[]) == Some(1.0)
        },
    )
    .await?;

    // An agent gone: its cluster counts as offline (offline alone is not skew).
    pf.fleet.agents[1].kill();
    wait_scrape(coordinator, "work-2 offline", TIMEOUT, |s| {
        s.value("skoala_agents_connected", &[]) == Some(1.0)
            && s.value("skoala_clusters", &[("state", "offline")]) == Some(1.0)
            && s.value("skoala_clusters", &[("state", "connected")]) == Some(1.0)
            && s.value("skoala_skewed_clusters", &[]) == Some(0.0)
    })
    .await?;

    // The dashboard: valid JSON, and every metric it queries is a family of these scrapes
    // (agent panels against the agent's, the rest against the coordinator's).
    let (_, coordinator_now) = coordinator_scrape(coordinator).await?;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/skoala-fleet.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
    )?;
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    for e in &exprs {
        let scrape = if e.contains("$agent_job") {
            &agent
        } else {
            &coordinator_now
        };
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric in {e:?}");
        for n in names {
            assert!(
                scrape.exposes(&n),
                "the dashboard queries {n} ({e:?}), not exposed"
            );
        }
    }

    // The operator's guide names (and alerts on) only metrics that exist.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operating.md");
    let guide = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let named = metric_names(&guide);
    assert!(named.len() > 30, "{named:?}");
    for n in named {
        assert!(
            coordinator_now.exposes(&n) || agent.exposes(&n),
            "docs/operating.md names {n}, which neither daemon exposes"
        );
    }
    Ok(())
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 1\n\
              # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let s = parse(ok).expect("valid");
    assert_eq!(s.value("a_total", &[("x", "q\"\\\n")]), Some(1.0));
    check_histograms(&s).expect("consistent");
    for bad in [
        "a 1\n",                            // no TYPE
        "# TYPE a counter\na 1\n",          // counter without _total
        "# TYPE a gauge\na{x=\"1} 1\n",     // unterminated
        "# TYPE a gauge\na 1\na 2\n",       // duplicate
        "# TYPE a gauge\na x\n",            // value
        "# TYPE a gauge\n# TYPE a gauge\n", // declared twice
        "# TYPE a gauge\na{1x=\"v\"} 1\n",  // label name
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
    let inconsistent =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n";
    assert!(check_histograms(&parse(inconsistent).expect("parses")).is_err());
    assert_eq!(
        metric_names("sum(rate(skoala_x_total{job=~\"$job\"}[5m])) / process_max_fds"),
        ["skoala_x_total", "process_max_fds"]
    );
}
