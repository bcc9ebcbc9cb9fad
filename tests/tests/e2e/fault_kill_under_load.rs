//! SIGKILL of the coordinator under load: a plan rolls out over two real agents (real helm on
//! emulated clusters) and a few hundred simulated agents (`skoala-loadgen`: real sessions, the
//! real protocol, simulated clusters) all taking tasks, and the coordinator is killed in the
//! middle of the rollout and started again on the same data dir.
//!
//! Nothing may be lost or done twice: every agent, real and simulated, comes back; the plan
//! completes from its persisted rollout with one attempt per cluster; helm's history shows
//! every real release upgraded exactly once; every simulated cluster ran exactly one operation
//! once (a finished operation delivered again is answered from the load generator's operation
//! record, as the executor does, and counted as a repeat); every values backup reads back.
//!
//! One real worker is held in flight across the kill: its emulated API server is frozen before
//! the plan starts (its task hangs in preflight, as against an API server that stopped
//! answering) and resumed once the coordinator is dead, so its values backup waits for the
//! restarted coordinator, which sends the operation again while it runs: every run covers the
//! re-send of an operation still running.

use std::collections::BTreeMap;
use std::time::Duration;

use skoala_e2e::fleet::Load;
use skoala_e2e::fleet::plans::{
    PlanFleet, PlanFleetOptions, PlanView, read_backups, sent_to, target,
};
use skoala_e2e::wait;

/// Simulated agents: enough to put hundreds of sessions and tasks on the coordinator, few
/// enough for a 2-core CI runner.
const SIMULATED: usize = 200;
/// Generous for a loaded 2-core machine; the test takes well under a minute warm.
const TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_under_load_loses_no_agent_and_runs_each_operation_once()
-> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    let ctl = pf.ctl();
    let token = ctl.token(SIMULATED as u32, "1h").await?;
    let receipts = pf.fleet.coordinator.scratch().join("receipts");
    let receipts_arg = receipts.to_str().expect("utf-8 path").to_string();
    // Named after the real workers (`work-*`), so the canary and the first wave are real.
    let load = Load::start(
        &pf.fleet.coordinator,
        &token,
        SIMULATED,
        &[
            "--name-prefix",
            "zsim",
            "--initial-version",
            "0.19.0",
            "--upgrade-time",
            "1s",
            "--receipts",
            &receipts_arg,
        ],
    )?;
    let all = 2 + SIMULATED;
    pf.fleet
        .coordinator
        .wait_connected(all, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; load: {}", load.line()))?;

    // work-1 is the canary; work-2 hangs in the first wave until resumed below.
    let held = &pf.fleet.clusters[1];
    assert_eq!(held.name(), "work-2");
    held.faults().freeze();
    let yaml = pf.plan_yaml(
        "load",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 20, maxFailures: 0}",
    );
    pf.apply_when_ready(&yaml, TIMEOUT).await?;

    let at_kill = wait::until(
        "simulated clusters upgraded, others in flight, work-2 held",
        TIMEOUT,
        || async {
            let p = pf.plan("load").await.ok()?;
            let t = p["targets"].as_array()?;
            let done = t.iter().filter(|t| t["state"] == "succeeded").count();
            let running = t.iter().filter(|t| t["state"] == "running").count();
            (target(&p, "work-2").ok()?["state"] == "running" && done >= 40 && running >= 10)
                .then_some(p)
        },
    )
    .await?;
    pf.fleet.coordinator.kill();
    // work-2 goes on while the coordinator is down; its values backup waits for a session.
    held.faults().resume();
    pf.fleet.coordinator.restart().await?;

    // Every agent comes back: the real ones, and each simulated one (its second session).
    pf.fleet
        .coordinator
        .wait_connected(all, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; load: {}", load.line()))?;
    wait::until("every simulated agent back", TIMEOUT, || {
        let (sessions, connected) = (load.stat("sessions"), load.stat("connected"));
        async move {
            (sessions >= Some(2 * SIMULATED as u64) && connected == Some(SIMULATED as u64))
                .then_some(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}; load: {}", load.line()))?;
    assert_eq!(load.stat("gave_up"), Some(0), "{}", load.line());

    let plan = pf.wait_phase("load", &["succeeded"], TIMEOUT).await?;
    let targets = plan["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1 + all, "{plan:#}");
    for t in targets {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "one operation per cluster: {t:#}");
    }
    // The restarted coordinator sent work-2's operation again, the same one: still running
    // there (it could not store its backup without a coordinator), so the agent ignored it.
    let events = pf.events("load").await?;
    let ops: Vec<&str> = sent_to(&events, "work-2")
        .iter()
        .filter_map(|e| e["operationId"].as_str())
        .collect();
    assert_eq!(
        ops.len(),
        2,
        "sent, then sent again after the restart: {ops:?}"
    );
    assert_eq!(ops[0], ops[1], "one operation, never a new one");
    pf.assert_upgraded_once_to("0.19.2").await?;
    pf.assert_consistent_with_clusters(&plan).await?;

    // Each simulated cluster ran exactly one operation, once.
    let text = std::fs::read_to_string(&receipts)?;
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        let (_, op) = line.split_once(' ').expect("`<µs> <operation id>`");
        *runs.entry(op).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "operations run twice: {twice:?}");
    assert_eq!(runs.len(), SIMULATED, "one operation per simulated cluster");
    wait::until("the load generator to count every upgrade", TIMEOUT, || {
        let n = load.stat("tasks_succeeded");
        async move { (n == Some(SIMULATED as u64)).then_some(()) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}; load: {}", load.line()))?;
    assert_eq!(
        load.stat("tasks_accepted"),
        Some(SIMULATED as u64),
        "{}",
        load.line()
    );

    // Every stored values backup reads back, the real workers' among them. A simulated
    // cluster does not wait for `BackupStored` as the executor does, so an upload of one in
    // flight at the kill may have died with the connection: at most those are missing.
    let count = |state: &str| {
        at_kill["targets"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["state"] == state).count())
    };
    let data_dir = pf.fleet.coordinator.data_dir();
    let backups = read_backups(&data_dir)?;
    assert!(
        backups + count("running") >= all,
        "{backups} backups stored for {all} workers"
    );
    for c in &pf.fleet.clusters {
        let dir = data_dir
            .join("backups")
            .join(c.kube_system_uid())
            .join("skoala-init");
        assert!(
            std::fs::read_dir(&dir)?.next().is_some(),
            "{}: its backup is stored",
            c.name()
        );
    }
    eprintln!(
        "killed with {} succeeded and {} running; repeats answered from the operation record: \
         {}",
        count("succeeded"),
        count("running"),
        load.stat("tasks_repeated").unwrap_or_default()
    );
    Ok(())
}
