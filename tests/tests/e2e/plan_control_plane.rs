//! The control plane's upgrade fails (its new images never become ready): the executor rolls
//! `skoala` back, the plan ends `failed`, and no working cluster was touched.

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_control_plane_touches_no_worker() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        broken_control_plane: true,
        helm_timeout: "15s".into(),
        ..Default::default()
    })
    .await?;
    let applied = pf.apply(&pf.plan_yaml("cp-fails", "0.19.2", "")).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let plan = pf.wait_phase("cp-fails", &["failed"], PLAN_TIMEOUT).await?;
    let reason = plan["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no worker was touched"), "{reason}");
    for t in plan["targets"].as_array().expect("targets") {
        if t["name"] != "control-plane" {
            assert_eq!(t["state"], "pending", "{t:#}");
            assert_eq!(t["attempts"], 0, "{t:#}");
        }
    }
    for n in ["work-1", "work-2"] {
        let h = pf.history(n).await?;
        assert_eq!(h.len(), 1, "{n} untouched: {h:#?}");
    }
    let h = pf.history("control-plane").await?;
    let last = h.last().expect("history");
    assert_eq!(last["chart"], "skoala-0.19.0", "skoala rolled back: {h:#?}");
    assert_eq!(last["status"], "deployed", "{h:#?}");
    // The fleet is still one version: nothing moved.
    let skew = pf.ctl().run(&["skew"]).await?;
    assert!(skew.success, "{}", skew.stdout);
    Ok(())
}
