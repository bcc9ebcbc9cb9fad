//! The coordinator installed from its chart into a real control-plane cluster runs plans with
//! its ServiceAccount's rights alone (the in-cluster kubeconfig, no `--kubeconfig`), and a real
//! agent installed from its chart runs the full upgrade of `skoala-init` twice: 0.19.0 → 0.19.2,
//! then 0.20.0, whose custom resource needs its new CRD first. Helm 3 here, in both "images";
//! the mixed fleet runs helm 4.

use std::time::Duration;

use skoala_e2e::fleet::plans::PlanView;
use skoala_e2e::real::fleet::{RealFleet, RealFleetOptions};
use skoala_e2e::real::{FINISHED, Helm};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_coordinator_and_a_chart_installed_agent_upgrade_twice_with_helm3()
-> anyhow::Result<()> {
    let fleet = RealFleet::start(RealFleetOptions {
        coordinator_helm: Helm::V3,
        real_workers: vec![Helm::V3],
        ..Default::default()
    })
    .await?;
    // The coordinator runs as its pod would: no kubeconfig flag, the ServiceAccount mounted.
    let log = fleet.coordinator.pod.log();
    assert!(!log.contains("--kubeconfig"), "{log}");

    let applied = fleet
        .apply(&fleet.plan_yaml("to-0-19-2", "0.19.2", "strategy: {canary: 0}"))
        .await?;
    assert!(
        applied.success,
        "apply: {}{}",
        applied.stdout, applied.stderr
    );
    let plan = fleet
        .wait_phase("to-0-19-2", &FINISHED, PLAN_TIMEOUT)
        .await?;
    assert_eq!(plan["phase"], "succeeded", "{plan:#}\n{}", fleet.logs());
    fleet.assert_upgraded_once_to("0.19.2").await?;

    let applied = fleet
        .apply(&fleet.plan_yaml("to-0-20-0", "0.20.0", "strategy: {canary: 0}"))
        .await?;
    assert!(
        applied.success,
        "apply: {}{}",
        applied.stdout, applied.stderr
    );
    let plan = fleet
        .wait_phase("to-0-20-0", &FINISHED, PLAN_TIMEOUT)
        .await?;
    assert_eq!(plan["phase"], "succeeded", "{plan:#}\n{}", fleet.logs());
    let skew = fleet.ctl().run(&["skew"]).await?;
    assert!(skew.success, "skew: {}{}", skew.stdout, skew.stderr);
    for name in fleet.cluster_names() {
        let h = fleet.history(&name).await?;
        assert_eq!(h.len(), 3, "{name}: install + two upgrades: {h:#?}");
        let chart = h[2]["chart"].as_str().unwrap_or_default();
        assert!(chart.ends_with("-0.20.0"), "{name}: {h:#?}");
        assert_eq!(h[2]["status"], "deployed", "{name}: {h:#?}");
    }
    // The 0.20.0 CRD was applied (with the agent's rights) before the release that needs it.
    let crd = fleet.real[0]
        .cluster
        .kubectl(&[
            "get",
            "crd",
            "contourdeployments.projectcontour.io",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.envoy.properties.logLevel.type}",
        ])
        .await?;
    assert_eq!(crd, "string", "the new CRD field exists");
    // Backups of both releases are in the coordinator's data volume, one per upgrade.
    let backups = fleet.coordinator.data_dir().join("backups");
    let count = walk(&backups);
    assert!(
        count >= 4,
        "two backups per cluster in {}: {count}",
        backups.display()
    );
    Ok(())
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}
