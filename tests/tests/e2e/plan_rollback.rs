//! `plan rollback` after a successful plan returns every cluster to 0.19.0 from the recorded
//! revisions — workers first, then the control plane — and `skew` exits 0 again.

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_rollback_returns_the_fleet_to_0_19_0() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml("back", "0.19.2", "strategy: {canary: 1, maxConcurrency: 2}");
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    pf.wait_phase("back", &["succeeded"], PLAN_TIMEOUT).await?;
    pf.wait_versions("0.19.2", Duration::from_secs(60)).await?;

    pf.ctl().ok(&["plan", "rollback", "back"]).await?;
    let plan = pf.wait_phase("back", &["rolledBack"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "reverted", "{t:#}");
    }
    pf.wait_versions("0.19.0", Duration::from_secs(60)).await?;
    let skew = pf.ctl().run(&["skew"]).await?;
    assert!(skew.success, "one version again: {}", skew.stdout);

    // Workers first, then the control plane (the event log's order).
    let events = pf
        .ctl()
        .ok(&["events", "--plan", "back", "-o", "json"])
        .await?;
    let reverted: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "target" && e["state"] == "reverted")
        .map(|e| e["targetName"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reverted.len(), 4, "{reverted:?} in\n{events}");
    assert_eq!(
        reverted.last().map(String::as_str),
        Some("control-plane"),
        "{reverted:?}"
    );
    Ok(())
}
