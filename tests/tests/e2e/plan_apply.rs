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
    // The test repository is plain http: the plan pins each chart's digest.
    let digest = |chart: &str| {
        let c = pf.repo.chart(chart, "0.19.2").expect("in the repository");
        format!("{chart}=sha256:{}", c.digest)
    };
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
            "--chart-digest",
            &digest("skoala"),
            "--chart-digest",
            &digest("skoala-init"),
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

/// Issue 14, finding 9: a repository over plain `http://` (the test repository is one) could
/// be answered by anyone on the path. A plan naming one without pinning each chart's sha256 is
/// refused at apply, naming the field; one pinning a wrong digest fails at the executor's chart
/// step, before anything in any cluster changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_repository_needs_pinned_digests_and_a_wrong_one_changes_nothing()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 1,
        ..Default::default()
    })
    .await?;
    let ctl = pf.ctl();
    let pinned = pf.plan_yaml("unpinned", "0.19.2", "strategy: {canary: 0}");
    let digests_line = pinned
        .lines()
        .find(|l| l.trim_start().starts_with("digests:"))
        .expect("plan_yaml pins the test repository's digests")
        .to_string();

    let refused = pf.apply(&pinned.replace(&digests_line, "")).await?;
    assert!(!refused.success, "an unpinned http repository is refused");
    for needle in [
        "spec.repository.digests.skoala:",
        "spec.repository.digests.skoala-init:",
        "plain http://",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle:?} missing: {}",
            refused.stderr
        );
    }
    assert_eq!(ctl.ok(&["plan", "list", "-o", "json"]).await?.trim(), "[]");

    // The control plane's chart pinned to another digest: its executor refuses the archive it
    // fetched, and the control plane failing ends the plan before any worker.
    let good = pf
        .repo
        .chart("skoala", "0.19.2")
        .expect("chart")
        .digest
        .clone();
    let wrong = "0".repeat(64);
    let applied = pf
        .apply(
            &pf.plan_yaml("wrong-digest", "0.19.2", "strategy: {canary: 0}")
                .replace(&good, &wrong),
        )
        .await?;
    assert!(applied.success, "well-formed: {}", applied.stderr);
    let plan = pf
        .wait_phase("wrong-digest", &["failed"], PLAN_TIMEOUT)
        .await?;
    let text = plan.to_string();
    assert!(
        text.contains(&format!("has sha256 {good}, but the plan pins {wrong}"))
            && text.contains("spec.repository.digests.skoala"),
        "the failure names both digests and the field: {plan:#}"
    );
    for name in pf.cluster_names() {
        let h = pf.history(&name).await?;
        assert_eq!(h.len(), 1, "{name} untouched (only its install): {h:#?}");
    }
    Ok(())
}
