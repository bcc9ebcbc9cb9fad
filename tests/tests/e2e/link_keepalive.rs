//! An agent notices a coordinator that went silent without closing anything, and comes back
//! when it answers again.
//!
//! `SIGSTOP` freezes the coordinator while its kernel keeps acknowledging TCP, like a hung
//! host or a middlebox that silently dropped the flow: no FIN, no RST, writes still succeed.
//! The agent's session has no read timeout of its own, so its HTTP/2 keepalive (20 s + 10 s,
//! `agent/src/transport.rs`) is the only thing that can notice (BENCHMARKS.md, *HTTP/2
//! settings*: 28 s, and never with it off). Without it this agent would wait forever.

use std::time::{Duration, Instant};

use skoala_e2e::fleet::Fleet;
use skoala_e2e::{signal, wait};

/// Keepalive interval + timeout, plus up to one coordinator ping interval (15 s) between the
/// last frame and the stop, plus slack for a loaded machine.
const NOTICE_WITHIN: Duration = Duration::from_secs(60);
const LOST: &str = "lost the coordinator session";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_notices_a_silent_coordinator_and_comes_back() {
    // Fleet::start serves metrics; wait_connected's error carries every log.
    let fleet = Fleet::start(1).await.expect("fleet");
    fleet
        .wait_connected(1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let opened = fleet
        .coordinator
        .metric("skoala_sessions_opened_total")
        .await
        .expect("sessions opened");
    assert!(!fleet.agents[0].log().contains(LOST), "{}", fleet.logs());

    // The testkit kills the coordinator (stopped or not) on drop.
    let pid = fleet.coordinator.pid().expect("coordinator running") as i32;
    signal::send(pid, libc::SIGSTOP).expect("SIGSTOP");
    let stopped = Instant::now();
    let noticed = wait::until("the agent to notice", NOTICE_WITHIN, || async {
        fleet.agents[0].log().contains(LOST).then_some(())
    })
    .await;
    let after = stopped.elapsed();
    signal::send(pid, libc::SIGCONT).expect("SIGCONT");
    noticed.unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    // Not before the keepalive interval: nothing else ends the session early.
    assert!(
        after >= Duration::from_secs(15),
        "noticed after {after:?}, sooner than any keepalive could\n{}",
        fleet.logs()
    );

    // Once the coordinator answers again the agent opens a new session.
    wait::until("a new session", Duration::from_secs(60), || async {
        let now = fleet
            .coordinator
            .metric("skoala_sessions_opened_total")
            .await
            .ok()?;
        (now > opened).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    fleet
        .wait_connected(1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
}
