//! The scale benchmark's smoke version (issue 7): `skoala-sim load` runs 50 simulated agents —
//! real mTLS sessions registered with one real 50-use token — against a real coordinator; all
//! 50 are listed connected; after a SIGKILL and restart of the coordinator all 50 are back, and
//! no simulated agent gave up. The figures themselves come from `scripts/bench.sh`, not from
//! here.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use skoala_e2e::fleet::Coordinator;
use skoala_e2e::tools::our_bin;

const AGENTS: usize = 50;
/// Generous for a loaded 2-core CI machine; the benchmark measures the real time.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The load generator process; killed when dropped.
struct Load {
    child: Child,
    /// Its latest `load ...` status line.
    status: Arc<Mutex<String>>,
}

impl Load {
    fn start(coordinator: &Coordinator, token: &str) -> anyhow::Result<Self> {
        let mut cmd = Command::new(our_bin("skoala-sim"));
        cmd.args([
            "load",
            "--coordinator",
            &coordinator.endpoint(),
            "--ca-file",
        ])
        .arg(coordinator.ca_file())
        .args(["--agents", &AGENTS.to_string()])
        // Two source addresses, so the spreading path is exercised too.
        .args(["--source-addrs", "127.0.0.2,127.0.0.3"])
        // Short backoff: the restart below should not wait out 30 s delays.
        .args(["--max-backoff", "2s", "--heartbeat", "2s"])
        // Bounded even if this test dies without dropping us.
        .args(["--duration", "600s"])
        .env("SKOALA_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it ties the child's life to this process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("spawning skoala-sim load")?;
        let stdout = child.stdout.take().context("load stdout")?;
        let status = Arc::new(Mutex::new(String::new()));
        let latest = status.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("load ") {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
        });
        Ok(Self { child, status })
    }

    /// A counter from the latest status line.
    fn stat(&self, key: &str) -> Option<u64> {
        let line = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    fn line(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simulated_agents_connect_and_come_back_after_a_coordinator_crash() {
    let mut coordinator = Coordinator::start().await.expect("coordinator");
    let ctl = coordinator.ctl();
    let token = ctl.token(AGENTS as u32, "1h").await.expect("token");
    let load = Load::start(&coordinator, &token).expect("load generator");

    let clusters = coordinator
        .wait_connected(AGENTS, TIMEOUT)
        .await
        .expect("all simulated agents connected");
    assert_eq!(clusters.len(), AGENTS, "one cluster per simulated agent");
    let c = clusters
        .iter()
        .find(|c| c["name"] == "load-1")
        .expect("load-1 is listed");
    assert!(
        c.to_string().contains("0.18.0"),
        "the synthetic inventory is reported: {c}"
    );
    assert_eq!(
        coordinator
            .metric("skoala_agents_connected")
            .await
            .expect("metric"),
        AGENTS as f64
    );
    // The load generator sees the same 50 sessions from its side.
    skoala_e2e::wait::until("the load generator to count 50 sessions", TIMEOUT, || {
        let n = load.stat("connected");
        async move { (n == Some(AGENTS as u64)).then_some(()) }
    })
    .await
    .expect("status line");

    coordinator.kill();
    coordinator.restart().await.expect("restart");
    coordinator
        .wait_connected(AGENTS, TIMEOUT)
        .await
        .expect("all 50 back after the restart");
    skoala_e2e::wait::until("the load generator to see 100 sessions", TIMEOUT, || {
        let (sessions, connected) = (load.stat("sessions"), load.stat("connected"));
        async move {
            (sessions >= Some(2 * AGENTS as u64) && connected == Some(AGENTS as u64)).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last status: {}", load.line()));
    assert_eq!(load.stat("gave_up"), Some(0), "{}", load.line());
    assert_eq!(
        load.stat("registered"),
        Some(AGENTS as u64),
        "{}",
        load.line()
    );
}
