//! The scale benchmark's smoke version (issue 7): `skoala-loadgen` runs 50 simulated agents —
//! real mTLS sessions registered with one real 50-use token — against a real coordinator; all
//! 50 are listed connected; after a SIGKILL and restart of the coordinator all 50 are back, and
//! no simulated agent gave up. A second test runs the plan benchmarks' scenarios on 50 agents:
//! a fan-out of one task to all of them at once after an approval, then a rollout in a window
//! of 10; both must end `succeeded` with no skew. The figures themselves come from
//! `scripts/bench.sh` and `scripts/bench-plan.sh`, not from here.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use skoala_e2e::charts::start_repo;
use skoala_e2e::fleet::plans::install;
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, Ctl, die_with_parent};
use skoala_e2e::tools::{our_bin, tool};

const AGENTS: usize = 50;
/// Generous for a loaded 2-core CI machine; the benchmark measures the real time.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The load generator process; killed when dropped.
struct Load {
    child: Child,
    /// Its latest `load ...` status line.
    status: Arc<Mutex<String>>,
}

impl Load {
    fn start(coordinator: &Coordinator, token: &str) -> anyhow::Result<Self> {
        Self::start_with(coordinator, token, &[])
    }

    /// With more flags for `skoala-loadgen`.
    fn start_with(coordinator: &Coordinator, token: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(our_bin("skoala-loadgen"));
        cmd.args(["--coordinator", &coordinator.endpoint(), "--ca-file"])
            .arg(coordinator.ca_file())
            .args(["--agents", &AGENTS.to_string()])
            // Two source addresses, so the spreading path is exercised too.
            .args(["--source-addrs", "127.0.0.2,127.0.0.3"])
            // Short backoff: the restart below should not wait out 30 s delays.
            .args(["--max-backoff", "2s", "--heartbeat", "2s"])
            // Bounded even if this test dies without dropping us.
            .args(["--duration", "600s"])
            .args(extra)
            .env("SKOALA_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("spawning skoala-loadgen")?;
        let stdout = child.stdout.take().context("load stdout")?;
        let status = Arc::new(Mutex::new(String::new()));
        let latest = status.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("load ") {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
        });
        Ok(Self { child, status })
    }

    /// A counter from the latest status line.
    fn stat(&self, key: &str) -> Option<u64> {
        let line = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    fn line(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simulated_agents_connect_and_come_back_after_a_coordinator_crash() {
    let mut coordinator = Coordinator::start().await.expect("coordinator");
    let ctl = coordinator.ctl();
    let token = ctl.token(AGENTS as u32, "1h").await.expect("token");
    let load = Load::start(&coordinator, &token).expect("load generator");

    let clusters = coordinator
        .wait_connected(AGENTS, TIMEOUT)
        .await
        .expect("all simulated agents connected");
    assert_eq!(clusters.len(), AGENTS, "one cluster per simulated agent");
    let c = clusters
        .iter()
        .find(|c| c["name"] == "load-1")
        .expect("load-1 is listed");
    assert!(
        c.to_string().contains("0.18.0"),
        "the synthetic inventory is reported: {c}"
    );
    assert_eq!(
        coordinator
            .metric("skoala_agents_connected")
            .await
            .expect("metric"),
        AGENTS as f64
    );
    // The load generator sees the same 50 sessions from its side.
    skoala_e2e::wait::until("the load generator to count 50 sessions", TIMEOUT, || {
        let n = load.stat("connected");
        async move { (n == Some(AGENTS as u64)).then_some(()) }
    })
    .await
    .expect("status line");

    coordinator.kill();
    coordinator.restart().await.expect("restart");
    coordinator
        .wait_connected(AGENTS, TIMEOUT)
        .await
        .expect("all 50 back after the restart");
    skoala_e2e::wait::until("the load generator to see 100 sessions", TIMEOUT, || {
        let (sessions, connected) = (load.stat("sessions"), load.stat("connected"));
        async move {
            (sessions >= Some(2 * AGENTS as u64) && connected == Some(AGENTS as u64)).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last status: {}", load.line()));
    assert_eq!(load.stat("gave_up"), Some(0), "{}", load.line());
    assert_eq!(
        load.stat("registered"),
        Some(AGENTS as u64),
        "{}",
        load.line()
    );
}

/// Applies `yaml` (retried while the coordinator has not yet read every inventory: an apply
/// before that is refused as skewed or selecting nothing).
async fn apply(ctl: &Ctl, dir: &std::path::Path, name: &str, yaml: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing the plan");
    let path = path.to_str().expect("utf-8 path").to_string();
    let last = Mutex::new(String::new());
    let applied = skoala_e2e::wait::until(&format!("plan {name} applied"), TIMEOUT, || async {
        let out = ctl.run(&["plan", "apply", "-f", &path]).await.ok()?;
        let ok = out.success;
        *last.lock().unwrap_or_else(|e| e.into_inner()) = out.stderr;
        ok.then_some(())
    })
    .await;
    if let Err(e) = applied {
        let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        panic!("{e}; last refusal: {last}");
    }
}

/// Waits until plan `name` is in `phase`; returns `plan get -o json`.
async fn wait_phase(ctl: &Ctl, name: &str, phase: &str) -> Value {
    skoala_e2e::wait::until(&format!("plan {name} {phase}"), TIMEOUT, || async {
        let p = ctl.json(&["plan", "get", name]).await.ok()?;
        (p["phase"] == phase).then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The worker targets of a plan (the control plane left out).
fn workers(plan: &Value) -> Vec<&Value> {
    plan["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["target"] != "control-plane")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_fans_out_to_fifty_simulated_agents_then_rolls_out_ten_at_a_time() {
    // A real control plane: an emulated cluster with `skoala` installed by helm from the test
    // chart repository, upgraded by the coordinator with the real helm.
    let repo = start_repo().await.expect("chart repository");
    let control_plane = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("control-plane"))
        .await
        .expect("control-plane cluster");
    install(&repo, control_plane.kubeconfig_path(), "skoala", "0.19.0")
        .await
        .expect("skoala 0.19.0 in the control plane");
    let coordinator = Coordinator::start_with(CoordinatorOptions {
        metrics: true,
        kubeconfig: Some(control_plane.kubeconfig_path().to_path_buf()),
        helm: Some(tool("helm")),
        helm_timeout: Some("60s".into()),
        ..Default::default()
    })
    .await
    .expect("coordinator");
    let ctl = coordinator.ctl();
    let token = ctl.token(AGENTS as u32, "1h").await.expect("token");
    let receipts = coordinator.scratch().join("receipts");
    let receipts_arg = receipts.to_str().expect("utf-8 path").to_string();
    let load = Load::start_with(
        &coordinator,
        &token,
        &[
            "--initial-version",
            "0.19.0",
            "--upgrade-time",
            "500ms",
            "--receipts",
            &receipts_arg,
        ],
    )
    .expect("load generator");
    coordinator
        .wait_connected(AGENTS, TIMEOUT)
        .await
        .expect("all simulated agents connected");
    let plan = |name: &str, version: &str, spec: &str| {
        format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec:\n  version: {version}\n  chartSource: repo\n  repository: {{name: skoala, url: {}}}\n{spec}",
            repo.url()
        )
    };

    // Fan-out: the control plane first, then nothing until the approval, then all 50 at once.
    let fanout = plan(
        "fanout",
        "0.19.1",
        "  requireApproval: beforeWorkers\n  strategy: {canary: 0, maxConcurrency: 100%, maxFailures: 0}\n",
    );
    apply(&ctl, coordinator.scratch(), "fanout", &fanout).await;
    wait_phase(&ctl, "fanout", "awaitingApproval").await;
    assert_eq!(
        load.stat("tasks_accepted"),
        Some(0),
        "no worker task before the approval: {}",
        load.line()
    );
    ctl.ok(&["plan", "approve", "fanout"])
        .await
        .expect("approve");
    let done = wait_phase(&ctl, "fanout", "succeeded").await;
    let targets = workers(&done);
    assert_eq!(targets.len(), AGENTS, "{done:#}");
    for t in &targets {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["stage"], 1, "every worker in the one wave: {t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    // Each agent noted its task's arrival once (the benchmark's latency data).
    let text = std::fs::read_to_string(&receipts).expect("receipts file");
    let mut ops: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, op)| op))
        .collect();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), AGENTS, "one receipt per agent:\n{text}");
    assert!(ops.iter().all(|op| op.starts_with("fanout.")), "{text}");

    // Rollout: at most 10 at a time, each new one as soon as a slot frees up.
    let rollout = plan(
        "rollout",
        "0.19.2",
        "  strategy: {canary: 0, maxConcurrency: 10, maxFailures: 0}\n",
    );
    apply(&ctl, coordinator.scratch(), "rollout", &rollout).await;
    let done = wait_phase(&ctl, "rollout", "succeeded").await;
    let targets = workers(&done);
    assert_eq!(targets.len(), AGENTS, "{done:#}");
    for stage in 1..=5 {
        let n = targets.iter().filter(|t| t["stage"] == stage).count();
        assert_eq!(n, 10, "ten clusters counted in stage {stage}: {done:#}");
    }
    assert!(
        targets.iter().all(|t| t["state"] == "succeeded"),
        "{done:#}"
    );
    let skew = ctl.run(&["skew"]).await.expect("skew");
    assert!(skew.success, "no skew after both plans: {}", skew.stdout);
    // The load generator counts the same 100 upgrades (its status line is a second behind).
    skoala_e2e::wait::until("the load generator to count 100 upgrades", TIMEOUT, || {
        let n = load.stat("tasks_succeeded");
        async move { (n == Some(2 * AGENTS as u64)).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last status: {}", load.line()));
}
