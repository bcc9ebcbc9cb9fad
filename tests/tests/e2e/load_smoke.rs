//! The scale benchmark's smoke version (issue 7): `skoala-loadgen` runs 50 simulated agents —
//! real mTLS sessions registered with one real 50-use token — against a real coordinator; all
//! 50 are listed connected; after a SIGKILL and restart of the coordinator all 50 are back, and
//! no simulated agent gave up. A second test runs the plan benchmarks' scenarios on 50 agents:
//! a fan-out of one task to all of them at once after an approval, then a rollout in a window
//! of 10; both must end `succeeded` with no skew. The figures themselves come from
//! `scripts/bench.sh` and `scripts/bench-plan.sh`, not from here.

use std::time::Duration;

use serde_json::Value;
use skoala_e2e::charts::start_repo;
use skoala_e2e::fleet::plans::install;
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, Ctl, Load};
use skoala_e2e::tools::tool;

const AGENTS: usize = 50;
/// Generous for a loaded 2-core CI machine; the benchmark measures the real time.
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simulated_agents_connect_and_come_back_after_a_coordinator_crash() {
    let mut coordinator = Coordinator::start().await.expect("coordinator");
    let ctl = coordinator.ctl();
    let token = ctl.token(AGENTS as u32, "1h").await.expect("token");
    let load = Load::start(&coordinator, &token, AGENTS, &[]).expect("load generator");

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
    ctl.apply_when_ready(&path, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
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
    let load = Load::start(
        &coordinator,
        &token,
        AGENTS,
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
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec:\n  version: {version}\n  chartSource: repo\n  repository: {{name: skoala, url: {}, digests: {}}}\n{spec}",
            repo.url(),
            skoala_e2e::charts::digests_yaml(&repo, version)
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
