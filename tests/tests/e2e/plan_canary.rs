//! A broken canary: the target version's images never become ready in `work-1` (an emulator
//! property of that cluster), so its upgrade fails and the executor rolls it back. The plan
//! pauses with no other worker touched (their helm history is the install alone), the canary is
//! back on 0.19.0 and healthy, `plan get` names the cluster, the step and helm's message, and an
//! operator's abort ends the plan.

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_canary_pauses_the_plan_and_is_rolled_back() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        broken: vec![1],
        helm_timeout: "15s".into(),
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "canary",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 2}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let plan = pf.wait_phase("canary", &["paused"], PLAN_TIMEOUT).await?;
    assert!(
        plan["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("canary"),
        "{plan:#}"
    );
    let targets = plan["targets"].as_array().expect("targets");
    let by_name = |n: &str| {
        targets
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {plan:#}"))
            .clone()
    };
    assert_eq!(by_name("control-plane")["state"], "succeeded", "{plan:#}");
    let canary = by_name("work-1");
    assert_eq!(canary["state"], "rolledBack", "{canary:#}");
    assert_eq!(canary["stage"], 0, "{canary:#}");
    let message = canary["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("step "),
        "the failed step is named: {message}"
    );
    for n in ["work-2", "work-3"] {
        let t = by_name(n);
        assert_eq!(t["state"], "pending", "{n} untouched: {t:#}");
        assert_eq!(t["attempts"], 0, "{n}: {t:#}");
        let h = pf.history(n).await?;
        assert_eq!(h.len(), 1, "{n}: only the install in helm history: {h:#?}");
    }

    // The canary: back on 0.19.0, deployed (helm: install, failed upgrade, rollback).
    let h = pf.history("work-1").await?;
    let last = h.last().expect("history");
    assert_eq!(last["chart"], "skoala-init-0.19.0", "{h:#?}");
    assert_eq!(last["status"], "deployed", "{h:#?}");
    assert!(h.len() >= 3, "install, upgrade, rollback: {h:#?}");

    // The table shows the same failure.
    let table = pf.ctl().ok(&["plan", "get", "canary"]).await?;
    assert!(
        table.contains("work-1") && table.contains("rolledBack"),
        "{table}"
    );

    // Resuming is the operator's call; aborting ends the plan.
    pf.ctl().ok(&["plan", "abort", "canary"]).await?;
    let plan = pf.plan("canary").await?;
    assert_eq!(plan["phase"], "aborted", "{plan:#}");
    let events = pf.ctl().ok(&["events", "--plan", "canary"]).await?;
    assert!(events.contains("work-1: step"), "{events}");
    assert!(events.contains("plan canary: aborted"), "{events}");
    Ok(())
}

/// `rollbackOnFailure: false` travels from the plan to the agent: the broken canary is left
/// failed for an operator to inspect (no rollback in helm history), and the plan still pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rollback_on_failure_off_the_failed_canary_is_left_failed() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        broken: vec![1],
        helm_timeout: "15s".into(),
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "keep",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 2, rollbackOnFailure: false}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let plan = pf.wait_phase("keep", &["paused"], PLAN_TIMEOUT).await?;
    let canary = plan["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "work-1")
        .unwrap_or_else(|| panic!("work-1 in {plan:#}"))
        .clone();
    assert_eq!(canary["state"], "failed", "{canary:#}");
    let h = pf.history("work-1").await?;
    let last = h.last().expect("history");
    assert_eq!(
        last["chart"], "skoala-init-0.19.2",
        "left at the target: {h:#?}"
    );
    assert_eq!(last["status"], "failed", "{h:#?}");
    assert_eq!(
        h.len(),
        2,
        "install and the failed upgrade, no rollback: {h:#?}"
    );
    let h = pf.history("work-2").await?;
    assert_eq!(h.len(), 1, "work-2 untouched: {h:#?}");
    Ok(())
}
