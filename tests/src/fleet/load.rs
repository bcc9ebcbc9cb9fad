//! `skoala-loadgen` as a process: N simulated agents (real mTLS sessions, the real protocol,
//! simulated clusters) against a test's coordinator, and its once-a-second status line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;

use super::{Coordinator, die_with_parent};
use crate::tools::our_bin;

/// The load generator process; killed when dropped.
pub struct Load {
    child: Child,
    /// Its latest `load ...` status line.
    status: Arc<Mutex<String>>,
}

impl Load {
    /// Starts `agents` simulated agents registering with `token` (which needs that many uses),
    /// with more `skoala-loadgen` flags in `extra`.
    pub fn start(
        coordinator: &Coordinator,
        token: &str,
        agents: usize,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(our_bin("skoala-loadgen"));
        cmd.args(["--coordinator", &coordinator.endpoint(), "--ca-file"])
            .arg(coordinator.ca_file())
            .args(["--agents", &agents.to_string()])
            // Two source addresses, so the spreading path is exercised too.
            .args(["--source-addrs", "127.0.0.2,127.0.0.3"])
            // Short backoff: a coordinator restart should not wait out 30 s delays.
            .args(["--max-backoff", "2s", "--heartbeat", "2s"])
            // Bounded even if the test dies without dropping us.
            .args(["--duration", "600s"])
            .args(extra)
            .env("SKOALA_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("spawning skoala-loadgen")?;
        let stdout = child.stdout.take().context("load stdout")?;
        let status = Arc::new(Mutex::new(String::new()));
        let latest = status.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("load ") {
                    *latest.lock().unwrap_or_else(PoisonError::into_inner) = line;
                }
            }
        });
        Ok(Self { child, status })
    }

    /// A counter from the latest status line, e.g. `stat("connected")`.
    pub fn stat(&self, key: &str) -> Option<u64> {
        self.line()
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    /// The latest status line, for failure messages.
    pub fn line(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
