//! One plan across a mixed fleet: a real control plane (coordinator from its chart), two real
//! working clusters (agents from their chart, one with helm 3, one with helm 4) and three
//! emulated ones; a canary, then waves of two. Every release ends upgraded exactly once and the
//! fleet has no skew.

use std::time::Duration;

use skoala_e2e::fleet::plans::PlanView;
use skoala_e2e::real::fleet::{RealFleet, RealFleetOptions};
use skoala_e2e::real::{FINISHED, Helm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_real_and_emulated_clusters_upgrades_each_release_once() -> anyhow::Result<()> {
    let fleet = RealFleet::start(RealFleetOptions {
        coordinator_helm: Helm::V4,
        real_workers: vec![Helm::V3, Helm::V4],
        sim_workers: 3,
        ..Default::default()
    })
    .await?;
    let applied = fleet
        .apply(&fleet.plan_yaml(
            "mixed",
            "0.19.2",
            "strategy: {canary: 1, maxConcurrency: 2}\nclusters: {matchLabels: {fleet: test}}",
        ))
        .await?;
    assert!(
        applied.success,
        "apply: {}{}",
        applied.stdout, applied.stderr
    );
    let plan = fleet
        .wait_phase("mixed", &FINISHED, Duration::from_secs(900))
        .await?;
    assert_eq!(plan["phase"], "succeeded", "{plan:#}\n{}", fleet.logs());
    let targets = plan["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 6, "control plane + 5 workers: {plan:#}");
    fleet.assert_upgraded_once_to("0.19.2").await?;
    Ok(())
}
