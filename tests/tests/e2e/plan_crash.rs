//! SIGKILL the coordinator in the middle of a plan and start it again: the plan completes from
//! its persisted rollout, and `helm history` proves every release was upgraded exactly once
//! (a re-sent task is recognised by its operation id, never run twice).

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_finishes_the_plan_upgrading_each_release_once() -> anyhow::Result<()>
{
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 4,
        ..Default::default()
    })
    .await?;
    // One at a time, so the kill lands with work done, work running and work waiting.
    let yaml = pf.plan_yaml(
        "crash",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    wait::until(
        "a worker upgraded and another sent",
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan("crash").await.ok()?;
            let t = p["targets"].as_array()?;
            let done = t.iter().filter(|t| t["state"] == "succeeded").count();
            let running = t.iter().filter(|t| t["state"] == "running").count();
            (done >= 2 && running >= 1).then_some(())
        },
    )
    .await?;
    pf.fleet.coordinator.kill();
    pf.fleet.coordinator.restart().await?;
    assert_eq!(pf.fleet.coordinator.starts(), 2);

    let plan = pf.wait_phase("crash", &["succeeded"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    for name in ["control-plane", "work-1", "work-2", "work-3", "work-4"] {
        let h = pf.history(name).await?;
        assert_eq!(h.len(), 2, "{name}: install + exactly one upgrade: {h:#?}");
        assert_eq!(h[1]["status"], "deployed", "{name}: {h:#?}");
    }
    let skew = pf.ctl().run(&["skew"]).await?;
    assert!(skew.success, "{}", skew.stdout);
    Ok(())
}
