//! The load generator's counters and the status line it prints once a second.
//!
//! The line is the interface for scripts and tests (`scripts/bench.sh`,
//! `tests/tests/e2e/load_smoke.rs`), so its shape is stable: `load` followed by `key=value` pairs,
//! e.g. `load agents=50 registered=50 connected=50 sessions=50 failed_attempts=0 ...`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Shared by all simulated agents.
#[derive(Debug, Default)]
pub struct Stats {
    /// Agents holding credentials.
    pub registered: AtomicU64,
    /// Agents whose session is up now.
    pub connected: AtomicU64,
    /// Sessions the coordinator accepted, in total.
    pub sessions: AtomicU64,
    /// Register or Session attempts that failed before the session was up.
    pub failed_attempts: AtomicU64,
    /// Established sessions that broke.
    pub disconnects: AtomicU64,
    /// Agents that stopped trying (registration refused): never expected.
    pub gave_up: AtomicU64,
    /// Tasks run (a re-delivery of a finished operation is not run again).
    pub tasks_accepted: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    /// Re-deliveries of finished operations, answered with the recorded result.
    pub tasks_repeated: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

impl Stats {
    /// The status line.
    pub fn line(&self, agents: usize) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "load agents={agents} registered={} connected={} sessions={} failed_attempts={} disconnects={} gave_up={} tasks_accepted={} tasks_succeeded={} tasks_repeated={}",
            g(&self.registered),
            g(&self.connected),
            g(&self.sessions),
            g(&self.failed_attempts),
            g(&self.disconnects),
            g(&self.gave_up),
            g(&self.tasks_accepted),
            g(&self.tasks_succeeded),
            g(&self.tasks_repeated),
        )
    }
}

/// Prints the status line every `every` until `shutdown`, and once more at the end.
pub async fn report(
    stats: Arc<Stats>,
    agents: usize,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => println!("{}", stats.line(agents)),
            _ = shutdown.cancelled() => break,
        }
    }
    println!("{}", stats.line(agents));
}
