//! Offline is not failed: an agent that is down during the plan leaves its cluster pending and
//! offline; the plan ends `degraded` naming it, `skew` reports it (offline, behind). When the
//! agent comes back (convergence: auto, no window) the cluster is upgraded and the skew is gone.

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_cluster_is_degraded_then_upgraded_when_it_returns() -> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        ..Default::default()
    })
    .await?;
    pf.fleet.agents[1].kill();
    let ctl = pf.ctl();
    ctl.wait_connected("work-2", false).await?;

    let yaml = pf.plan_yaml(
        "offline",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 2}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let plan = pf
        .wait_phase("offline", &["degraded"], PLAN_TIMEOUT)
        .await?;
    let reason = plan["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("offline: work-2"), "{reason}");
    let w2 = plan["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "work-2")
        .expect("work-2")
        .clone();
    assert_eq!(w2["state"], "pending", "offline, not failed: {w2:#}");
    assert_eq!(w2["connected"], false, "{w2:#}");

    let skew = ctl.run(&["skew", "-o", "json"]).await?;
    assert!(!skew.success, "work-2 is behind: exit 1");
    let report: serde_json::Value = serde_json::from_str(&skew.stdout)?;
    let skewed = report["clusters"].as_array().expect("clusters");
    assert_eq!(skewed.len(), 1, "{report:#}");
    assert_eq!(skewed[0]["name"], "work-2");
    let reasons = skewed[0]["reasons"].to_string();
    assert!(
        reasons.contains("offline") && reasons.contains("0.19.0"),
        "{reasons}"
    );

    pf.fleet.agents[1].restart()?;
    let plan = pf
        .wait_phase("offline", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    let skew = ctl.run(&["skew"]).await?;
    assert!(skew.success, "no skew once work-2 is back: {}", skew.stdout);
    Ok(())
}
