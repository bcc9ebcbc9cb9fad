//! Measures how long N agents take to be connected again after the coordinator is SIGKILLed
//! and restarted, and the agents' resident memory at rest. A measurement, not a test: it
//! prints figures and asserts nothing about time.
//!
//! ```sh
//! cargo run -p skoala-e2e --example reconnect_storm -- 50          # --max-backoff 2s, no outage
//! cargo run -p skoala-e2e --example reconnect_storm -- 50 30s 20s  # default backoff, 20 s outage
//! ```
//!
//! Every agent is a real `skoala-agent` process with its own emulated cluster (all clusters are
//! served from this process by `skoala-sim`).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::Context;
use skoala_e2e::fleet::{Agent, AgentOptions, Coordinator, prepare_cluster};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let max_backoff = args.next().unwrap_or_else(|| "2s".into());
    // How long the coordinator stays dead before it is restarted.
    let downtime = args
        .next()
        .map(|d| skoala_support::duration::parse(&d))
        .transpose()?
        .unwrap_or(Duration::ZERO);
    let timeout = Duration::from_secs(600);

    let mut coordinator = Coordinator::start().await?;
    let clusters = skoala_sim::start_clusters(n, "storm").await?;
    let token = coordinator.ctl().token(n as u32, "1h").await?;
    let mut agents = Vec::with_capacity(n);
    let started = Instant::now();
    for cluster in &clusters {
        prepare_cluster(cluster).await?;
        let mut opts = AgentOptions::named(cluster.name());
        opts.max_backoff = Some(max_backoff.clone());
        agents.push(Agent::start(&coordinator, cluster, Some(&token), opts)?);
    }
    coordinator.wait_connected(n, timeout).await?;
    println!(
        "{n} agents registered and connected in {:.2?} (first start, includes process start)",
        started.elapsed()
    );

    // Let them settle, then read their memory at rest.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut rss: Vec<u64> = agents
        .iter()
        .filter_map(|a| a.pid())
        .filter_map(rss_kib)
        .collect();
    rss.sort_unstable();
    if !rss.is_empty() {
        println!(
            "agent RSS at rest: median {} KiB, max {} KiB (n={})",
            rss[rss.len() / 2],
            rss[rss.len() - 1],
            rss.len()
        );
    }
    if let Some(kib) = coordinator.pid().and_then(rss_kib) {
        println!("coordinator RSS with {n} sessions: {kib} KiB");
    }

    coordinator.kill();
    // Deliberate: this is the outage being simulated, not a wait for a condition.
    tokio::time::sleep(downtime).await;
    let restarted = Instant::now();
    coordinator.restart().await?;
    let listening = restarted.elapsed();
    coordinator
        .wait_connected(n, timeout)
        .await
        .context("agents did not all come back")?;
    println!(
        "coordinator SIGKILL, {downtime:?} down, restart: listening after {listening:.2?}, all {n} agents connected again after {:.2?} (agent --max-backoff {max_backoff})",
        restarted.elapsed()
    );
    Ok(())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
