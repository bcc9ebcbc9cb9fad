//! `skoalactl plan check` against a real fleet (coordinator with its control plane, three
//! agents, real helm): the executor's preflight on every selected cluster and on the control
//! plane, as a table and as JSON.
//!
//! - healthy fleet, a plan that is applied but waiting for its window (driven clock): exit 0,
//!   every cluster listed as passed with its current version; the plan is not disturbed (same
//!   phase, nothing sent, nothing in its event log);
//! - a relay plan document: the agents preflight the chart the coordinator relays;
//! - one agent stopped, a document that is not applied (`-f`): the cluster is listed offline,
//!   not failed, and the check still exits 0; nothing is stored;
//! - a release left `failed` by an operator's manual `helm upgrade`: exit 1, the table names
//!   the cluster, the preflight step and helm's status.

use std::time::Duration;

use serde_json::Value;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::tools::tool;
use skoala_e2e::wait;

/// Wednesday noon: the plan's Saturday window is closed, so an applied plan waits.
const WEDNESDAY: &str = "2026-11-25T12:00:00Z";
const WINDOW: &str = "window: {days: [Sat], startTime: \"02:00\", endTime: \"04:00\", timeZone: UTC}\nstrategy: {canary: 1, maxConcurrency: 2}";

fn rows(check: &Value) -> Vec<Value> {
    check["clusters"].as_array().cloned().unwrap_or_default()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_check_lists_every_cluster_and_fails_only_on_reachable_failures() -> anyhow::Result<()>
{
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        clock: Some(WEDNESDAY.into()),
        // work-3's v0.19.2 images never become ready: an operator's manual upgrade fails.
        broken: vec![3],
        ..Default::default()
    })
    .await?;
    let ctl = pf.ctl();

    // --- a stored plan, waiting for its window; every cluster healthy -----------------------
    let applied = pf
        .apply(&pf.plan_yaml("check-me", "0.19.2", WINDOW))
        .await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let before = pf.plan("check-me").await?;

    let timer = std::time::Instant::now();
    let out = ctl
        .run(&[
            "plan",
            "check",
            "check-me",
            "--timeout",
            "90s",
            "-o",
            "json",
        ])
        .await?;
    println!(
        "plan check, control plane + 3 workers: {:?}",
        timer.elapsed()
    );
    assert!(
        out.success,
        "healthy fleet: exit 0\n{}\n{}",
        out.stdout, out.stderr
    );
    let check: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(check["plan"], "check-me");
    assert_eq!(check["version"], "0.19.2");
    assert_eq!(check["ready"], true);
    let all = rows(&check);
    assert_eq!(all.len(), 4, "control plane + 3 workers: {all:#?}");
    for r in &all {
        assert_eq!(r["result"], "passed", "{r:#}");
        assert_eq!(r["reachable"], true, "{r:#}");
        assert_eq!(r["currentVersion"], "0.19.0", "{r:#}");
    }
    assert_eq!(row(&all, "control-plane")["role"], "control-plane");
    assert_eq!(row(&all, "work-1")["role"], "worker");
    assert!(
        row(&all, "work-2")["message"]
            .as_str()
            .is_some_and(|m| m.contains("skoala-init 0.19.2")),
        "what was checked: {all:#?}"
    );

    // The plan did not notice: same phase and targets, nothing sent, no check in its log.
    let after = pf.plan("check-me").await?;
    assert_eq!(after["phase"], before["phase"], "{after:#}");
    assert_eq!(after["targets"], before["targets"], "{after:#}");
    let events = ctl
        .ok(&["events", "--plan", "check-me", "-o", "json"])
        .await?;
    for line in events.lines() {
        let e: Value = serde_json::from_str(line)?;
        assert!(
            !["task.sent", "task.result", "step"].contains(&e["kind"].as_str().unwrap_or("")),
            "a check is not plan work: {e:#}"
        );
        assert!(!line.contains("preflight_"), "{line}");
    }

    // --- a relay plan: the coordinator pulls the charts, the agents get them by digest -------
    let relay = tempfile::NamedTempFile::new()?;
    let doc = pf
        .plan_yaml("relayed", "0.19.2", "")
        .replace("chartSource: repo", "chartSource: relay");
    std::fs::write(relay.path(), doc)?;
    let path = relay.path().to_str().expect("utf-8 temp path");
    let out = ctl
        .run(&["plan", "check", "-f", path, "-o", "json"])
        .await?;
    assert!(out.success, "relay: exit 0\n{}\n{}", out.stdout, out.stderr);
    let check: Value = serde_json::from_str(&out.stdout)?;
    for r in rows(&check) {
        assert_eq!(r["result"], "passed", "{r:#}");
    }

    // --- one agent stopped; a document that is not applied ----------------------------------
    pf.fleet.agents[1].kill();
    ctl.wait_connected("work-2", false).await?;
    let doc = tempfile::NamedTempFile::new()?;
    std::fs::write(doc.path(), pf.plan_yaml("not-applied", "0.19.2", ""))?;
    let path = doc.path().to_str().expect("utf-8 temp path");
    let out = ctl
        .run(&["plan", "check", "-f", path, "-o", "json"])
        .await?;
    assert!(
        out.success,
        "offline is not failed: exit 0\n{}\n{}",
        out.stdout, out.stderr
    );
    let check: Value = serde_json::from_str(&out.stdout)?;
    let all = rows(&check);
    assert_eq!(all.len(), 4, "{all:#?}");
    let w2 = row(&all, "work-2");
    assert_eq!(w2["result"], "offline", "{w2:#}");
    assert_eq!(w2["reachable"], false, "{w2:#}");
    assert_eq!(w2["currentVersion"], "0.19.0", "last known version: {w2:#}");
    for name in ["control-plane", "work-1", "work-3"] {
        assert_eq!(row(&all, name)["result"], "passed", "{all:#?}");
    }
    let stored = ctl.run(&["plan", "get", "not-applied"]).await?;
    assert!(!stored.success, "checking a document does not store it");

    // --- a release an operator's manual upgrade left failed ----------------------------------
    let home = HelmHome::new()?;
    let manual = home
        .try_run(
            &tool("helm"),
            Some(&pf.kubeconfig("work-3")?),
            &[
                "upgrade",
                "-n",
                "skoala-system",
                "skoala-init",
                "skoala-init",
                "--repo",
                &pf.repo.url(),
                "--version",
                "0.19.2",
                "--wait",
                "--timeout",
                "5s",
            ],
        )
        .await?;
    assert!(
        !manual.status.success(),
        "the manual upgrade fails on work-3 (images never ready)"
    );
    wait::until(
        "work-3's release reported failed",
        Duration::from_secs(60),
        || async {
            let all = pf.releases().await.ok()?;
            all.iter()
                .any(|(n, r)| n == "work-3" && r["status"] == "failed")
                .then_some(())
        },
    )
    .await?;

    let out = ctl.run(&["plan", "check", "check-me"]).await?;
    assert!(
        !out.success,
        "a reachable cluster failed: exit 1\n{}",
        out.stdout
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("work-3"))
        .unwrap_or_else(|| panic!("no work-3 line in:\n{}", out.stdout));
    for want in [
        "worker",
        "yes",
        "(failed)",
        "failed",
        "step preflight",
        "not deployed",
    ] {
        assert!(line.contains(want), "{want:?} in {line:?}");
    }
    let w2 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("work-2"))
        .unwrap_or_default();
    assert!(w2.contains("offline"), "{w2:?}");
    assert!(
        out.stdout.contains("NOT ready: work-3"),
        "the verdict names only the failed cluster:\n{}",
        out.stdout
    );
    Ok(())
}
