//! Issue 5's main path: one control plane and six working clusters go from 0.19.0 to 0.19.2
//! through a plan (`chartSource: repo`): the real coordinator upgrades its own `skoala` with
//! helm, then sends tasks down the agents' sessions (canary, then waves of 3); `skoalactl skew`
//! exits 0 at the end, every release carries the new tags, `helm history` shows exactly one
//! upgrade per release, and `plan watch` printed a line per cluster step.

use std::time::{Duration, Instant};

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_workers_go_to_0_19_2_with_no_skew_left() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 6,
        ..Default::default()
    })
    .await?;
    let ctl = pf.ctl();
    let skew = ctl.run(&["skew"]).await?;
    assert!(skew.success, "one version before the plan: {}", skew.stdout);

    let yaml = pf.plan_yaml(
        "to-0-19-2",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 3, maxFailures: 0}",
    );
    let started = Instant::now();
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let watch = tokio::spawn(ctl.command(&["plan", "watch", "to-0-19-2"]).output());
    let plan = pf
        .wait_phase("to-0-19-2", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    let elapsed = started.elapsed();
    println!("six-cluster plan wall time (control plane + 6 workers): {elapsed:?}");

    // Every target succeeded, in stages: 1 canary, then waves of at most 3.
    let targets = plan["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 7, "{plan:#}");
    for t in targets {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "each cluster upgraded once: {t:#}");
    }
    let stage_of = |s: Option<u64>| {
        targets
            .iter()
            .filter(|t| t["stage"].as_u64() == s && t["target"] != "control-plane")
            .count()
    };
    assert_eq!(stage_of(Some(0)), 1, "one canary: {plan:#}");
    assert_eq!(stage_of(Some(1)), 3, "first wave of 3: {plan:#}");
    assert_eq!(stage_of(Some(2)), 2, "second wave: {plan:#}");

    // No skew; every release on the new version and tags; helm's own records: exactly one
    // upgrade per release.
    pf.assert_upgraded_once_to("0.19.2").await?;

    // `plan watch` ended with the plan and showed every cluster's steps.
    let watch = tokio::time::timeout(Duration::from_secs(60), watch).await???;
    let out = String::from_utf8_lossy(&watch.stdout);
    assert!(
        watch.status.success(),
        "watch: {out}\n{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    for name in ["control-plane", "work-1", "work-6"] {
        assert!(
            out.contains(&format!("{name}: step upgrade succeeded")),
            "{name} in:\n{out}"
        );
    }
    assert!(out.contains("plan to-0-19-2: succeeded"), "{out}");

    // A plan for the same version again is refused while this one is the record? No: a
    // finished plan may be superseded. A plan with the same name and another document is not.
    let other = pf.plan_yaml("to-0-19-2", "0.19.1", "");
    let again = pf.apply(&other).await?;
    assert!(!again.success, "same name, other document");
    assert!(
        again.stderr.contains("different document"),
        "{}",
        again.stderr
    );
    Ok(())
}
