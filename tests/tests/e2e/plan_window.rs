//! Windows are law (DESIGN.md invariant 4), end to end with a driven clock: the window closes
//! while the canary's upgrade is in flight; the canary finishes, nothing new starts, and the
//! plan completes when the clock moves into the next window. A `plan check` while the canary is
//! in flight shows it as upgrading and disturbs nothing. An operator's `plan watch` on a
//! terminal (a real pty) shows the waves filling, the wait between windows, and the end.
//!
//! The canary is held in flight deterministically: its emulated API server is frozen (requests
//! wait, as with an API server that hangs) before the plan starts, the clock moves past the
//! window's end, and only then is the server resumed. So the result that lets the rollout
//! consider the next wave is always judged after the close.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::pty::{Pty, strip_ansi};
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Saturday 2026-11-28 02:00 in Shanghai (UTC+8, no DST): the window opens.
const OPENS: &str = "2026-11-27T18:00:00Z";
/// Saturday 04:30 in Shanghai: the window (02:00-04:00) has closed.
const CLOSED: &str = "2026-11-27T20:30:00Z";
/// The next Saturday, 02:00 in Shanghai: the next window.
const NEXT: &str = "2026-12-04T18:00:00Z";

fn target<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no target {name} in {plan:#}"))
}

/// The plan's events (`events --plan NAME -o json`).
async fn events(pf: &PlanFleet, plan: &str) -> anyhow::Result<Vec<Value>> {
    let out = pf
        .ctl()
        .ok(&["events", "--plan", plan, "-o", "json"])
        .await?;
    out.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn sent_to<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "task.sent" && e["targetName"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_closes_mid_plan_and_the_plan_completes_in_the_next() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        clock: Some(OPENS.into()),
        ..Default::default()
    })
    .await?;
    // Workers are enrolled by name, so the canary is work-1: hold its API server.
    let canary = &pf.fleet.clusters[0];
    assert_eq!(canary.name(), "work-1");
    canary.faults().freeze();

    let yaml = pf.plan_yaml(
        "window",
        "0.19.2",
        "window: {days: [Sat], startTime: \"02:00\", endTime: \"04:00\", timeZone: Asia/Shanghai}\n\
         strategy: {canary: 1, maxConcurrency: 2}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);

    // An operator follows the plan on a terminal the whole time.
    let ctl = pf.ctl();
    let mut pty = Pty::open()?;
    let mut watch = ctl.command(&["plan", "watch", "window"]);
    watch.stdout(pty.take_slave()?).stderr(Stdio::piped());
    let watcher = watch.spawn()?;
    drop(watch); // the parent's copy of the terminal end: the screen ends with the watcher
    let screen = tokio::spawn(pty.read_to_end());

    // The control plane is upgraded inside the window, then the canary starts (and hangs).
    let plan = wait::until("the canary work-1 running", PLAN_TIMEOUT, || async {
        let p = pf.plan("window").await.ok()?;
        (target(&p, "work-1")["state"] == "running").then_some(p)
    })
    .await?;
    assert_eq!(target(&plan, "control-plane")["state"], "succeeded");
    assert_eq!(target(&plan, "work-1")["stage"], 0, "the canary");

    // A preflight check in the middle of the plan: the canary is shown as being upgraded (not
    // asked, not failed), the others pass, and the plan does not notice (below: every cluster
    // is upgraded exactly once, by the plan's own operations).
    let check = ctl.run(&["plan", "check", "window", "-o", "json"]).await?;
    assert!(
        check.success,
        "check mid-plan: exit 0\n{}\n{}",
        check.stdout, check.stderr
    );
    let check: Value = serde_json::from_str(&check.stdout)?;
    for r in check["clusters"].as_array().expect("clusters") {
        let want = if r["name"] == "work-1" {
            "upgrading"
        } else {
            "passed"
        };
        assert_eq!(r["result"], want, "{r:#}");
    }

    // The window closes while the canary is in flight; then its cluster answers again.
    pf.set_clock(CLOSED)?;
    canary.faults().resume();

    // In-flight work finishes...
    wait::until(
        "the canary to finish after the close",
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan("window").await.ok()?;
            (target(&p, "work-1")["state"] == "succeeded").then_some(())
        },
    )
    .await?;
    // ...and nothing new starts: the step that recorded the canary's result left the others
    // pending, and so did every step since (the canary's new inventory is one more).
    wait::until(
        "work-1 reported at 0.19.2",
        Duration::from_secs(60),
        || async {
            let all = pf.releases().await.ok()?;
            all.iter()
                .any(|(n, r)| n == "work-1" && r["version"] == "0.19.2")
                .then_some(())
        },
    )
    .await?;
    // Not stuck, and it says so: what it waits for and when that opens, in the window's zone.
    let plan = wait::until("the plan to say why it waits", PLAN_TIMEOUT, || async {
        let p = pf.plan("window").await.ok()?;
        p["reason"].as_str()?.starts_with("waiting:").then_some(p)
    })
    .await?;
    assert_eq!(
        plan["phase"], "workers",
        "waiting for the next window, not finished: {plan:#}"
    );
    assert_eq!(
        plan["reason"],
        "waiting: 2 clusters for their window, next open 2026-12-05 02:00 Asia/Shanghai",
        "{plan:#}"
    );
    for name in ["work-2", "work-3"] {
        let t = target(&plan, name);
        assert_eq!(
            t["state"], "pending",
            "{name} must not start after the close: {t:#}"
        );
        assert_eq!(t["attempts"], 0, "{t:#}");
        assert_eq!(
            pf.history(name).await?.len(),
            1,
            "{name}: no helm upgrade after the close"
        );
    }
    let closed = events(&pf, "window").await?;
    assert_eq!(sent_to(&closed, "work-2").len(), 0, "{closed:#?}");
    assert_eq!(sent_to(&closed, "work-3").len(), 0, "{closed:#?}");
    let last_before_next = closed
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0);

    // The next window: the plan completes.
    pf.set_clock(NEXT)?;
    let plan = pf
        .wait_phase("window", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "each cluster upgraded once: {t:#}");
    }
    assert_eq!(target(&plan, "work-2")["stage"], 1, "wave 1: {plan:#}");
    assert_eq!(target(&plan, "work-3")["stage"], 1, "wave 1: {plan:#}");
    let all = events(&pf, "window").await?;
    for name in ["work-2", "work-3"] {
        let sent = sent_to(&all, name);
        assert_eq!(sent.len(), 1, "{name}: {sent:#?}");
        assert!(
            sent[0]["id"].as_i64().unwrap_or(0) > last_before_next,
            "{name} started only in the next window: {sent:#?}"
        );
    }
    for name in ["control-plane", "work-1", "work-2", "work-3"] {
        let h = pf.history(name).await?;
        assert_eq!(h.len(), 2, "{name}: install + exactly one upgrade: {h:#?}");
        assert_eq!(h[1]["status"], "deployed", "{name}: {h:#?}");
    }
    let skew = ctl.run(&["skew"]).await?;
    assert!(skew.success, "no skew at the end: {}", skew.stdout);

    // The terminal showed the waves filling, the wait between the windows, and the end.
    let out = tokio::time::timeout(Duration::from_secs(60), watcher.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "plan watch ends with the plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = strip_ansi(&tokio::time::timeout(Duration::from_secs(30), screen).await???);
    assert!(
        screen
            .lines()
            .any(|l| l.trim_start().starts_with("work-1") && l.contains(" running")),
        "the canary in flight on the terminal:\n{screen}"
    );
    for want in [
        // Between the windows: the canary done, two clusters waiting.
        "canary        [########################] 1/1",
        "not started   2",
        // The last picture.
        "plan window → 0.19.2: succeeded",
        "wave 1        [########################] 2/2",
    ] {
        assert!(screen.contains(want), "{want:?} on the terminal:\n{screen}");
    }
    Ok(())
}

/// The night clocks go back in Berlin (2026-10-25, 03:00 CEST → 02:00 CET), a 02:00–04:00
/// window lasts three hours: it opens at 00:00 UTC and closes at 03:00 UTC. At 02:30 UTC
/// (03:30 CET, half an hour left) the plan may start; a coordinator that took the summer
/// offset for the whole night would see 04:30 and wait a week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_across_the_fall_back_night_keeps_its_wall_clock_end() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 1,
        clock: Some("2026-10-25T02:30:00Z".into()),
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "dst",
        "0.19.2",
        "window: {days: [Sun], startTime: \"02:00\", endTime: \"04:00\", timeZone: Europe/Berlin}\n\
         expectedDuration: 10m",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let plan = pf.wait_phase("dst", &["succeeded"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    for name in ["control-plane", "work-1"] {
        assert_eq!(pf.history(name).await?.len(), 2, "{name}: one upgrade");
    }
    Ok(())
}
