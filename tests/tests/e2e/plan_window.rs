//! Windows are law (DESIGN.md invariant 4), end to end with a driven clock: the window closes
//! while the canary's upgrade is in flight; the canary finishes, nothing new starts, and the
//! plan completes when the clock moves into the next window. A `plan check` while the canary is
//! in flight shows it as upgrading and disturbs nothing. An operator's `plan watch` on a
//! terminal (a real pty) shows the waves filling, the wait between windows, and the end.
//!
//! The same with the clock jumping *backwards* to before the window opened (the canary
//! finishes, nothing new starts until the clock is inside the window again).
//!
//! The canary is held in flight deterministically: its emulated API server is frozen (requests
//! wait, as with an API server that hangs) before the plan starts, the clock moves past the
//! window's end, and only then is the server resumed. So the result that lets the rollout
//! consider the next wave is always judged after the close.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView, sent_to, target};
use skoala_e2e::pty::{Pty, strip_ansi};
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Saturday 2026-11-28 02:00 in Shanghai (UTC+8, no DST): the window opens.
const OPENS: &str = "2026-11-27T18:00:00Z";
/// Saturday 04:30 in Shanghai: the window (02:00-04:00) has closed.
const CLOSED: &str = "2026-11-27T20:30:00Z";
/// The next Saturday, 02:00 in Shanghai: the next window.
const NEXT: &str = "2026-12-04T18:00:00Z";
/// Saturday 02:10 in Shanghai: inside the window.
const INSIDE: &str = "2026-11-27T18:10:00Z";
/// Saturday 01:00 in Shanghai: the same night, before the window opens.
const BEFORE: &str = "2026-11-27T17:00:00Z";
/// Saturday 02:20 in Shanghai: inside the window again.
const INSIDE_AGAIN: &str = "2026-11-27T18:20:00Z";

/// Three workers with the clock at `now`; the canary's API server frozen; plan `name` applied:
/// 0.19.2 in the Saturday 02:00-04:00 Shanghai window, a canary, then waves of two.
async fn with_the_canary_held(now: &str, name: &str) -> anyhow::Result<PlanFleet> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        clock: Some(now.into()),
        ..Default::default()
    })
    .await?;
    // Workers are enrolled by name, so the canary is work-1: hold its API server.
    let canary = &pf.fleet.clusters[0];
    assert_eq!(canary.name(), "work-1");
    canary.faults().freeze();
    let yaml = pf.plan_yaml(
        name,
        "0.19.2",
        "window: {days: [Sat], startTime: \"02:00\", endTime: \"04:00\", timeZone: Asia/Shanghai}\n\
         strategy: {canary: 1, maxConcurrency: 2}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    Ok(pf)
}

/// Waits until the canary (work-1) of plan `name` is in `state`; returns the plan.
async fn canary_is(pf: &PlanFleet, name: &str, state: &str) -> anyhow::Result<Value> {
    wait::until(
        &format!("the canary work-1 {state}"),
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan(name).await.ok()?;
            (target(&p, "work-1").ok()?["state"] == state).then_some(p)
        },
    )
    .await
}

/// After the canary finished with the window shut: the plan waits, says why (`reason`), and
/// has started nothing for `waiting` (no attempt, no task sent, no helm upgrade). Returns the
/// id of the plan's last event so far.
async fn waits_for_its_window(
    pf: &PlanFleet,
    name: &str,
    waiting: &[&str],
    reason: &str,
) -> anyhow::Result<i64> {
    // The canary's new inventory makes one more step after its result: wait for it too.
    wait::until(
        "the canary reported at 0.19.2",
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
    // (A cluster that starts instead ends the wait at once, and fails below.)
    let plan = wait::until("the plan to say why it waits", PLAN_TIMEOUT, || async {
        let p = pf.plan(name).await.ok()?;
        let started = waiting
            .iter()
            .any(|w| target(&p, w).is_ok_and(|t| t["state"] != "pending"));
        (started || p["reason"].as_str()?.starts_with("waiting:")).then_some(p)
    })
    .await?;
    let events = pf.events(name).await?;
    for w in waiting {
        let t = target(&plan, w)?;
        assert_eq!(t["state"], "pending", "{w} must not start: {t:#}");
        assert_eq!(t["attempts"], 0, "{t:#}");
        assert_eq!(pf.history(w).await?.len(), 1, "{w}: no helm upgrade");
        assert_eq!(sent_to(&events, w).len(), 0, "{w}: {events:#?}");
    }
    assert_eq!(
        plan["phase"], "workers",
        "waiting for the window, not finished: {plan:#}"
    );
    assert_eq!(plan["reason"], reason, "{plan:#}");
    Ok(events
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0))
}

/// With the window open again: the plan succeeds, each of `waited` sent its task once and only
/// after event `last_before`, and every release was upgraded exactly once.
async fn completes_in_the_window(
    pf: &PlanFleet,
    name: &str,
    waited: &[&str],
    last_before: i64,
) -> anyhow::Result<Value> {
    let plan = pf.wait_phase(name, &["succeeded"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "each cluster upgraded once: {t:#}");
    }
    let all = pf.events(name).await?;
    for w in waited {
        let sent = sent_to(&all, w);
        assert_eq!(sent.len(), 1, "{w}: {sent:#?}");
        assert!(
            sent[0]["id"].as_i64().unwrap_or(0) > last_before,
            "{w} started only with the window open: {sent:#?}"
        );
    }
    pf.assert_upgraded_once_to("0.19.2").await?;
    pf.assert_consistent_with_clusters(&plan).await?;
    Ok(plan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_closes_mid_plan_and_the_plan_completes_in_the_next() -> anyhow::Result<()> {
    let pf = with_the_canary_held(OPENS, "window").await?;
    let canary = &pf.fleet.clusters[0];

    // An operator follows the plan on a terminal the whole time.
    let ctl = pf.ctl();
    let mut pty = Pty::open()?;
    let mut watch = ctl.command(&["plan", "watch", "window"]);
    watch.stdout(pty.take_slave()?).stderr(Stdio::piped());
    let watcher = watch.spawn()?;
    drop(watch); // the parent's copy of the terminal end: the screen ends with the watcher
    let screen = tokio::spawn(pty.read_to_end());

    // The control plane is upgraded inside the window, then the canary starts (and hangs).
    let plan = canary_is(&pf, "window", "running").await?;
    assert_eq!(target(&plan, "control-plane")?["state"], "succeeded");
    assert_eq!(target(&plan, "work-1")?["stage"], 0, "the canary");

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
    canary_is(&pf, "window", "succeeded").await?;
    // ...and nothing new starts: the step that recorded the canary's result left the others
    // pending, and so did every step since.
    let last_before_next = waits_for_its_window(
        &pf,
        "window",
        &["work-2", "work-3"],
        "waiting: 2 clusters for their window, next open 2026-12-05 02:00 Asia/Shanghai",
    )
    .await?;

    // The next window: the plan completes.
    pf.set_clock(NEXT)?;
    let plan =
        completes_in_the_window(&pf, "window", &["work-2", "work-3"], last_before_next).await?;
    assert_eq!(target(&plan, "work-2")?["stage"], 1, "wave 1: {plan:#}");
    assert_eq!(target(&plan, "work-3")?["stage"], 1, "wave 1: {plan:#}");

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

/// The clock jumps backwards across the window's opening while the canary is in flight (an
/// NTP correction, a VM restored from a snapshot): the canary finishes and is recorded, nothing
/// new starts and the plan says it waits for today's window, then the clock moves into the
/// window again and the plan completes, every release upgraded once. (The forward jump past
/// the window's end is the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_jumps_back_before_the_window_and_nothing_new_starts_until_it_opens()
-> anyhow::Result<()> {
    let pf = with_the_canary_held(INSIDE, "back").await?;
    let canary = &pf.fleet.clusters[0];
    let plan = canary_is(&pf, "back", "running").await?;
    assert_eq!(target(&plan, "control-plane")?["state"], "succeeded");

    // Back to before the window opened, with the canary in flight; then it answers again.
    pf.set_clock(BEFORE)?;
    canary.faults().resume();
    canary_is(&pf, "back", "succeeded").await?;
    let last_before = waits_for_its_window(
        &pf,
        "back",
        &["work-2", "work-3"],
        "waiting: 2 clusters for their window, next open 2026-11-28 02:00 Asia/Shanghai",
    )
    .await?;

    // Forward into the window again.
    pf.set_clock(INSIDE_AGAIN)?;
    completes_in_the_window(&pf, "back", &["work-2", "work-3"], last_before).await?;
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
