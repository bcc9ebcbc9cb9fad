//! What `plan apply` refuses, and why (issue 5): a selection that matches no cluster is an
//! error at creation, and a plan for a version other than the control plane's while the
//! fleet is skewed needs `--force` — the operator is told which clusters are skewed. A refused
//! plan stores nothing. `plan create ... --apply` builds and applies the same document.

use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView, install};
use skoala_e2e::sim::delete_admission_jobs;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_empty_selection_and_a_skewed_fleet_without_force() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    let ctl = pf.ctl();

    // --- a selection that matches nothing -------------------------------------------------
    let nobody = pf.plan_yaml(
        "nobody",
        "0.19.2",
        "clusters: {matchLabels: {env: nowhere}}",
    );
    let refused = pf.apply(&nobody).await?;
    assert!(!refused.success, "an empty selection must be refused");
    assert!(
        refused
            .stderr
            .contains("spec.clusters: the selection matches no registered working cluster"),
        "{}",
        refused.stderr
    );
    assert_eq!(ctl.ok(&["plan", "list", "-o", "json"]).await?.trim(), "[]");

    // --- a skewed fleet: work-1 upgraded by hand to 0.19.1 ---------------------------------
    // As the vendor's docs say: the immutable admission Jobs go first.
    let work_1 = &pf.kubeconfig("work-1")?;
    delete_admission_jobs(work_1).await?;
    install(&pf.repo, work_1, "skoala-init", "0.19.1").await?;
    skoala_e2e::wait::until("work-1 reported at 0.19.1", PLAN_TIMEOUT, || async {
        let skew = ctl.run(&["skew"]).await.ok()?;
        (!skew.success && skew.stdout.contains("work-1")).then_some(())
    })
    .await?;
    let to_0_19_2 = pf.plan_yaml("to-0-19-2", "0.19.2", "strategy: {canary: 0}");
    let refused = pf.apply(&to_0_19_2).await?;
    assert!(!refused.success, "a skewed fleet needs --force");
    for needle in ["skewed (work-1)", "0.19.2", "0.19.0", "--force"] {
        assert!(
            refused.stderr.contains(needle),
            "{needle:?} missing: {}",
            refused.stderr
        );
    }
    assert_eq!(ctl.ok(&["plan", "list", "-o", "json"]).await?.trim(), "[]");

    // With --force (built by `plan create`, applied in one go) the plan runs and converges
    // everything, the hand-upgraded cluster included.
    let url = pf.repo.url();
    let created = ctl
        .run(&[
            "plan",
            "create",
            "forced",
            "--version",
            "0.19.2",
            "--canary",
            "0",
            "--max-concurrency",
            "100%",
            "--repository-url",
            &url,
            "--apply",
            "--force",
        ])
        .await?;
    assert!(
        created.success,
        "create --apply --force: {}{}",
        created.stdout, created.stderr
    );
    let plan = pf
        .wait_phase("forced", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    assert_eq!(plan["version"], "0.19.2", "{plan:#}");
    let document = plan["document"].as_str().unwrap_or_default();
    for field in [
        "name: forced",
        "version: 0.19.2",
        "canary: 0",
        "100%",
        url.as_str(),
    ] {
        assert!(document.contains(field), "{field:?} not in:\n{document}");
    }
    let skew = ctl.run(&["skew"]).await?;
    assert!(skew.success, "no skew at the end: {}", skew.stdout);
    Ok(())
}
