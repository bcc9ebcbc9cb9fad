//! `skoala-loadgen`: many simulated agents in one process, for scale benchmarks and the load
//! smoke test.
//!
//! A crate of its own because it links the agent's session code and the coordinator's TLS,
//! data-dir and relay code: kept out of the emulator (`skoala-sim`), it leaves the emulator
//! independent of the product it emulates clusters for.
//!
//! Each simulated agent is a real agent session ([`skoala_agent::session::run`]): its own mTLS
//! connection, registered with a real join token (one N-use token for all), speaking the real
//! protocol (Hello, heartbeats, pings, inventory, tasks). What is simulated is the cluster: the
//! identity is a random UUID instead of a `kube-system` UID, the inventory is a synthetic
//! `skoala-init` release ([`fake`]), and tasks are "run" by a timer that reports real
//! `TaskAccepted`/`StepProgress`/`TaskResult` messages instead of running helm
//! ([`fake::upgrade`]). Counters ([`stats`]) are printed once a second on stdout, one line each,
//! for benchmark scripts and tests to read; with `--receipts FILE` the arrival time of every
//! task is written down too ([`receipts`]), for the fan-out benchmark's delivery latencies.
//!
//! `skoala-loadgen bare-server` is the baseline the benchmarks compare the coordinator with: a
//! tonic bidi-stream server with the coordinator's TLS settings that does nothing ([`bare`]),
//! except, on SIGUSR1, send one `Task` down every open stream at once (its fan-out).

#![forbid(unsafe_code)]

mod agent;
mod bare;
mod delay;
mod fake;
mod receipts;
mod relay_fetch;
mod stats;
mod streams;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use skoala_agent::proxy::ProxyConfig;
use skoala_agent::transport::{CoordinatorAddr, Http2Client};
use skoala_coordinator::http2::Http2Args;
use skoala_support::duration;
use tokio_util::sync::CancellationToken;

/// `skoala-loadgen ...`.
#[derive(Parser)]
#[command(
    name = "skoala-loadgen",
    version,
    about = "N simulated agents (real mTLS sessions, real protocol) against a coordinator; or, with \
             `bare-server`, the bare tonic baseline the benchmarks compare the coordinator with",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    bare: Option<BareCommand>,
    #[command(flatten)]
    agents: LoadArgs,
}

#[derive(Subcommand)]
enum BareCommand {
    /// The baseline: a bare tonic bidi-stream server with the coordinator's TLS settings.
    ///
    /// Uses a data dir made by `skoala-coordinator init` (same CA, same server certificate).
    /// Register signs the CSR; Session reads and drops every message and answers nothing —
    /// until SIGUSR1, which sends one `Task` (operation id `bare-fanout-K` for the K-th signal)
    /// down every open stream at once and prints `bare-server fanout K streams=N
    /// started_unix_us=T0 sent_unix_us=T1` (the fan-out baseline). Prints `bare-server
    /// listening on ADDR`; runs until SIGTERM/SIGINT.
    BareServer {
        /// The data dir of `skoala-coordinator init`.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        http2: Http2Args,
    },
    /// BENCHMARKS: a TCP forwarder adding DELAY each way (RTT = 2 × DELAY), for HTTP/2 window
    /// figures on loopback (no netem here). Prints `delay-proxy listening on ADDR`.
    #[command(hide = true)]
    DelayProxy {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Where to forward to.
        #[arg(long, value_name = "ADDR")]
        to: std::net::SocketAddr,
        /// One-way delay, e.g. 25ms for a 50 ms round trip.
        #[arg(long, value_parser = duration::parse)]
        delay: Duration,
    },
    /// BENCHMARKS: one agent fetches relayed charts of the given sizes from the coordinator
    /// over its real session and prints `relay-fetch bytes=B round=R ms=T` per transfer.
    #[command(hide = true)]
    RelayFetch {
        #[arg(long, value_name = "URL")]
        coordinator: String,
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
        #[arg(long, env = "SKOALA_TOKEN", hide_env_values = true)]
        token: String,
        /// The coordinator's data dir: the synthetic charts are placed where it serves them.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Chart sizes in bytes.
        #[arg(long, value_delimiter = ',', required = true)]
        sizes: Vec<u64>,
        /// Transfers per size.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// The agent's HTTP/2 receive window per stream, in bytes (default: the agent's).
        #[arg(long, value_name = "BYTES")]
        h2_stream_window: Option<u32>,
    },
    /// BENCHMARKS: one connection without a client certificate opens N idle streams
    /// (`Register` calls whose body never comes) and holds them.
    #[command(hide = true)]
    OpenStreams {
        #[arg(long, value_name = "URL")]
        coordinator: String,
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
        #[arg(long)]
        streams: usize,
        /// How long to hold them.
        #[arg(long, default_value = "60s", value_parser = duration::parse)]
        hold: Duration,
    },
}

/// N simulated agents against one coordinator.
#[derive(Args)]
struct LoadArgs {
    /// The coordinator, e.g. https://127.0.0.1:7443.
    #[arg(long, value_name = "URL", required = true)]
    coordinator: Option<String>,
    /// The fleet CA certificate (the coordinator's data dir has it as ca.pem).
    #[arg(long, value_name = "FILE", required = true)]
    ca_file: Option<PathBuf>,
    /// A join token with at least --agents uses (`skoalactl token create --uses N`).
    #[arg(long, env = "SKOALA_TOKEN", hide_env_values = true, required = true)]
    token: Option<String>,
    /// How many agents.
    #[arg(long, required = true)]
    agents: Option<usize>,
    /// Loopback source addresses to spread the connections over, round robin (one address has
    /// ~28,000 ephemeral ports towards one destination), e.g. 127.0.0.2,127.0.0.3.
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    source_addrs: Vec<IpAddr>,
    /// Interval between each agent's heartbeats.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    heartbeat: Duration,
    /// How long a simulated upgrade takes.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    upgrade_time: Duration,
    /// The `skoala-init` chart version every simulated cluster starts with (a plan upgrades
    /// it; the test charts have 0.19.0, 0.19.1, 0.19.2 and 0.20.0).
    #[arg(long, default_value = "0.18.0")]
    initial_version: String,
    /// Write `<unix µs> <operation id>` to FILE for every task an agent receives and runs
    /// (fan-out delivery latency: receipt time minus the time the task was sent, on one
    /// clock); a finished operation delivered again is not run, nor written down.
    #[arg(long, value_name = "FILE")]
    receipts: Option<PathBuf>,
    /// A label every simulated cluster carries besides `skoala.io/simulated=true`
    /// (repeatable), e.g. to select some of several generators' agents in a plan.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Cluster names are PREFIX-1 ... PREFIX-N.
    #[arg(long, default_value = "load")]
    name_prefix: String,
    /// Longest wait between reconnect attempts (the real agent's default).
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    max_backoff: Duration,
    /// Start at most this many agents per second (0: all at once).
    #[arg(long, default_value_t = 0)]
    start_rate: u32,
    /// Stop after this long (default: run until SIGTERM/SIGINT). Bounds benchmark runs.
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,
    /// BENCHMARKS ONLY: `off` turns the agents' HTTP/2 keepalive pings off.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"], hide = true)]
    h2_keepalive: String,
    /// BENCHMARKS ONLY: the agents' HTTP/2 receive window per stream, in bytes.
    #[arg(long, value_name = "BYTES", hide = true)]
    h2_stream_window: Option<u32>,
}

impl LoadArgs {
    /// The agents' HTTP/2 client settings: the real agent's, but for the hidden sweep flags.
    fn http2(&self) -> Http2Client {
        let mut h2 = Http2Client::default();
        if self.h2_keepalive == "off" {
            h2.keepalive = None;
        }
        if let Some(w) = self.h2_stream_window {
            h2.stream_window = w;
        }
        h2
    }
}

/// A direct connection to `url` with the agent's default HTTP/2 settings.
fn direct(url: String, ca_file: &std::path::Path) -> anyhow::Result<CoordinatorAddr> {
    let ca_pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
    Ok(CoordinatorAddr {
        url,
        ca_pem,
        proxy: ProxyConfig::direct(),
        local_addr: None,
        http2: Http2Client::default(),
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skoala_loadgen=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Cli::parse()).await
}

/// Runs until the end (signal or --duration).
async fn run(cmd: Cli) -> anyhow::Result<()> {
    let limit = skoala_support::rlimit::raise_open_files();
    let stop =
        skoala_support::shutdown::requested().context("installing SIGTERM/SIGINT handlers")?;
    match cmd.bare {
        Some(BareCommand::BareServer {
            data_dir,
            listen,
            http2,
        }) => {
            tracing::info!(?limit, "open-files limit");
            // The coordinator's process settings too, so the ratio compares code, not malloc.
            skoala_coordinator::malloc::limit_arenas();
            return bare::serve(&data_dir, listen, http2.settings(), stop).await;
        }
        Some(BareCommand::DelayProxy { listen, to, delay }) => {
            return delay::serve(listen, to, delay, stop).await;
        }
        Some(BareCommand::RelayFetch {
            coordinator,
            ca_file,
            token,
            data_dir,
            sizes,
            rounds,
            h2_stream_window,
        }) => {
            let mut addr = direct(coordinator, &ca_file)?;
            if let Some(w) = h2_stream_window {
                addr.http2.stream_window = w;
            }
            return relay_fetch::run(relay_fetch::Fetch {
                addr,
                token,
                data_dir: skoala_coordinator::data_dir::DataDir::new(data_dir),
                sizes,
                rounds,
            })
            .await;
        }
        Some(BareCommand::OpenStreams {
            coordinator,
            ca_file,
            streams,
            hold,
        }) => return streams::run(direct(coordinator, &ca_file)?, streams, hold, stop).await,
        None => {}
    }
    let a = cmd.agents;
    let http2 = a.http2();
    let (Some(url), Some(ca_file), Some(token), Some(count)) =
        (a.coordinator, a.ca_file, a.token, a.agents)
    else {
        anyhow::bail!("--coordinator, --ca-file, --token and --agents are required");
    };
    let ca_pem = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
    match limit {
        Ok(n) if (n as usize) < count + 64 => tracing::warn!(
            limit = n,
            agents = count,
            "the open-files limit is lower than the number of agents; some will fail to connect"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let addrs: Vec<CoordinatorAddr> = if a.source_addrs.is_empty() {
        vec![None]
    } else {
        a.source_addrs.iter().copied().map(Some).collect()
    }
    .into_iter()
    .map(|local_addr| CoordinatorAddr {
        url: url.clone(),
        ca_pem: ca_pem.clone(),
        proxy: ProxyConfig::direct(),
        local_addr,
        http2,
    })
    .collect();

    let (receipts, receipts_writer) = match &a.receipts {
        Some(path) => {
            let (r, w) = receipts::Receipts::to_file(path)?;
            (r, Some(w))
        }
        None => (receipts::Receipts::off(), None),
    };
    let stats = Arc::new(stats::Stats::default());
    let shutdown = CancellationToken::new();
    let settings = Arc::new(agent::Settings {
        token,
        heartbeat: a.heartbeat,
        upgrade_time: a.upgrade_time,
        initial_version: a.initial_version,
        labels: a.labels,
        max_backoff: a.max_backoff,
        receipts,
    });
    let reporter = tokio::spawn(stats::report(
        stats.clone(),
        count,
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let mut agents = tokio::task::JoinSet::new();
    let pace = (a.start_rate > 0).then(|| Duration::from_secs(1) / a.start_rate);
    for i in 0..count {
        let sim = agent::SimAgent {
            name: format!("{}-{}", a.name_prefix, i + 1),
            addr: addrs[i % addrs.len()].clone(),
            settings: settings.clone(),
            stats: stats.clone(),
        };
        agents.spawn(sim.run(shutdown.clone()));
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
    }
    let bounded = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = stop => {}
        () = bounded => tracing::info!("--duration elapsed"),
    }
    shutdown.cancel();
    // Sessions end at once on cancellation; bound it anyway.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
    let _ = reporter.await;
    // The writer ends once the last sender is gone: the settings' and the agents' copies.
    drop(settings);
    drop(agents);
    // Upgrades still running keep a sender a little longer; wait a bounded while, without a
    // blocking join (every receipt so far is flushed already).
    if let Some(w) = receipts_writer {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !w.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
