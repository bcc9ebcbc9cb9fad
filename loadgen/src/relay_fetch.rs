//! `skoala-loadgen relay-fetch`: times relayed chart transfers, coordinator → one agent, for
//! the HTTP/2 window benchmark (`scripts/bench-h2.sh`).
//!
//! Everything on the path is the real one: the agent registers with a join token, holds a
//! real session ([`skoala_agent::session::run`] over [`skoala_agent::transport`], with the
//! HTTP/2 settings under test), and fetches each chart through its real chart cache
//! ([`skoala_agent::tasks::TaskRunner::fetch_chart`]: `ChartRequest` on the session, the
//! coordinator's `relay::answer` streams 256 KiB `ChartChunk`s, the cache checks offsets,
//! size and digest and writes the file). Only the charts are synthetic: random bytes of the
//! asked sizes (a chart archive is gzip, so incompressible like these), placed where the
//! coordinator serves relayed charts from (`relay::by_digest` in its data dir), so no chart
//! repository and no plan are needed.
//!
//! Prints one line per transfer, `relay-fetch bytes=B round=R ms=T`, then exits.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use sha2::{Digest as _, Sha256};
use skoala_agent::metrics::Metrics;
use skoala_agent::register;
use skoala_agent::session::{self, SessionParams};
use skoala_agent::tasks::TaskRunner;
use skoala_agent::transport::CoordinatorAddr;
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::relay;
use skoala_proto::v1::ClusterIdentity;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::fake;

/// How long the session may take to come up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// What to fetch and how often.
pub struct Fetch {
    pub addr: CoordinatorAddr,
    pub token: String,
    /// The coordinator's data dir, where the synthetic charts are placed.
    pub data_dir: DataDir,
    /// Chart sizes in bytes.
    pub sizes: Vec<u64>,
    /// Transfers per size.
    pub rounds: u32,
}

/// Runs the transfers; each one's time goes to stdout.
pub async fn run(f: Fetch) -> anyhow::Result<()> {
    let charts: Vec<(String, u64)> = f
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| place_chart(&f.data_dir, size, i as u64 + 1))
        .collect::<anyhow::Result<_>>()?;

    let identity = ClusterIdentity {
        cluster_id: uuid::Uuid::new_v4().to_string(),
        name: "relay-fetch".into(),
        labels: Default::default(),
    };
    let creds = register::register(&f.addr, &f.token, &identity, skoala_agent::AGENT_VERSION)
        .await
        .context("registering the fetching agent")?;
    let cache = tempfile::tempdir().context("creating a chart cache dir")?;
    // Tasks never come; the runner is only here for its chart cache and outbox.
    let (runner, outbox) = TaskRunner::custom(Arc::new(|_, _| async {}.boxed()));
    let runner = runner.with_chart_cache(cache.path());
    let (_inventory, inventory_rx) = watch::channel(vec![fake::release("0.19.0", 1)]);
    let mut params = SessionParams {
        identity,
        agent_version: format!("{}-sim", skoala_agent::AGENT_VERSION),
        helm_version: "v4.1.4-sim".into(),
        heartbeat: Duration::from_secs(10),
        inventory: inventory_rx,
        credentials: Arc::new(Mutex::new(creds)),
        store: None,
        tasks: runner.clone(),
        outbox,
        metrics: Arc::new(Metrics::default()),
    };

    let shutdown = CancellationToken::new();
    let (up_tx, up_rx) = oneshot::channel();
    let mut up_tx = Some(up_tx);
    let mut on_connected = move || {
        if let Some(tx) = up_tx.take() {
            let _ = tx.send(());
        }
    };
    let session = session::run(&f.addr, &mut params, &shutdown, &mut on_connected);
    let transfers = async {
        tokio::time::timeout(CONNECT_DEADLINE, up_rx)
            .await
            .context("the session did not come up in time")?
            .context("the session ended before it was up")?;
        for (sha256, size) in &charts {
            for round in 1..=f.rounds {
                // A cached chart is not fetched again.
                let _ = std::fs::remove_file(cache.path().join(format!("{sha256}.tgz")));
                let t0 = Instant::now();
                runner
                    .fetch_chart(sha256, *size)
                    .await
                    .map_err(|why| anyhow::anyhow!("fetching {size} bytes: {why}"))?;
                println!(
                    "relay-fetch bytes={size} round={round} ms={:.1}",
                    t0.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
        anyhow::Ok(())
    };
    tokio::pin!(session);
    let result = tokio::select! {
        r = transfers => r,
        r = &mut session => Err(match r {
            Ok(()) => anyhow::anyhow!("the session ended"),
            Err(e) => anyhow::Error::new(e).context("the session broke"),
        }),
    };
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
    result
}

/// Writes `size` pseudo-random bytes where the coordinator serves relayed charts from;
/// returns (sha256, size).
fn place_chart(dir: &DataDir, size: u64, seed: u64) -> anyhow::Result<(String, u64)> {
    let bytes = noise(size as usize, seed);
    let sha256 = hex(&Sha256::digest(&bytes));
    let path = relay::by_digest(dir, &sha256);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write(&path, &bytes)?;
    Ok((sha256, size))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Incompressible filler (xorshift64), different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
