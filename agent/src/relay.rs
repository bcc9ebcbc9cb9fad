//! The chart relay, agent side: relayed charts cached by digest, fetched over the session.
//!
//! A task whose chart source is `RelayedChart { sha256, size }` needs that exact archive. If
//! the cache folder has `<sha256>.tgz` with that digest, it is used as it is; otherwise the
//! agent sends `ChartRequest { sha256 }` and assembles the coordinator's `ChartChunk`s: each
//! chunk must start where the previous one ended, the total must not exceed (and must end at)
//! the announced size, and the whole must hash to the digest. Only then is the file written
//! (under a temporary name, then renamed) and handed to the executor, which checks the digest
//! once more before anything changes. Any mismatch refuses the task; nothing is half-used.
//!
//! Several tasks waiting for the same digest share one transfer. Hello lists the cached
//! digests so a coordinator can skip the transfer entirely.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use skoala_proto::v1::{ChartChunk, ChartRequest, agent_message::Body};
use tokio::sync::{mpsc, oneshot};

/// How long a transfer may take before the task is refused. Charts are small; a session that
/// breaks mid-transfer is the usual reason to hit this, and the coordinator re-sends the task.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Largest chart accepted (the coordinator relays at most this much too).
pub const MAX_CHART: u64 = 64 * 1024 * 1024;

/// Charts kept in the cache; older ones (by modification time) are removed when a new one is
/// stored, so an agent that lives through many versions does not fill its volume.
pub const KEEP: usize = 4;

type Waiter = oneshot::Sender<Result<PathBuf, String>>;

/// One transfer in progress.
struct Assembly {
    size: u64,
    bytes: Vec<u8>,
    waiters: Vec<Waiter>,
}

/// The cache folder and the transfers in flight.
pub struct ChartCache {
    dir: PathBuf,
    inflight: Mutex<HashMap<String, Assembly>>,
}

impl ChartCache {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.into(),
            inflight: Mutex::default(),
        })
    }

    /// The default folder: `$TMPDIR/skoala-agent-charts` (an emptyDir in the pod).
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join("skoala-agent-charts")
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.tgz"))
    }

    /// Digests of the charts in the cache (by file name; each is re-checked when used).
    pub fn cached(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let digest = name.strip_suffix(".tgz")?;
                valid_digest(digest).then(|| digest.to_string())
            })
            .collect();
        out.sort();
        out
    }

    /// The path of the chart with `sha256` and `size`, from the cache or fetched through
    /// `outbox`. `Err` says why the task must be refused.
    pub async fn get(
        &self,
        sha256: &str,
        size: u64,
        outbox: &mpsc::Sender<Body>,
    ) -> Result<PathBuf, String> {
        if !valid_digest(sha256) {
            return Err(format!(
                "relayed chart digest {sha256:?} is not a lower-case hex sha256"
            ));
        }
        if size == 0 || size > MAX_CHART {
            return Err(format!(
                "relayed chart size {size} is out of range (1..={MAX_CHART} bytes)"
            ));
        }
        let path = self.path(sha256);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() as u64 == size && sha256_hex(&bytes) == sha256 => {
                tracing::info!(sha256, "relayed chart found in the cache");
                return Ok(path);
            }
            Ok(_) => {
                tracing::warn!(sha256, "cached chart is damaged; fetching it again");
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut inflight = self.lock();
            match inflight.get_mut(sha256) {
                Some(a) => {
                    a.waiters.push(tx);
                    false
                }
                None => {
                    inflight.insert(
                        sha256.to_string(),
                        Assembly {
                            size,
                            bytes: Vec::with_capacity(size as usize),
                            waiters: vec![tx],
                        },
                    );
                    true
                }
            }
        };
        if first {
            tracing::info!(
                sha256,
                size,
                "requesting the relayed chart from the coordinator"
            );
            let request = Body::ChartRequest(ChartRequest {
                sha256: sha256.to_string(),
            });
            if outbox.send(request).await.is_err() {
                self.fail(sha256, "the agent is shutting down".into());
            }
        }
        match tokio::time::timeout(TRANSFER_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the chart transfer was abandoned".into()),
            Err(_) => {
                let why = format!(
                    "the relayed chart {sha256} did not arrive within {TRANSFER_TIMEOUT:?}"
                );
                self.fail(sha256, why.clone());
                Err(why)
            }
        }
    }

    /// Takes one chunk from the session.
    pub fn chunk(&self, c: ChartChunk) {
        let mut inflight = self.lock();
        let Some(a) = inflight.get_mut(&c.sha256) else {
            tracing::debug!(sha256 = %c.sha256, "ignoring a chunk of a chart nobody waits for");
            return;
        };
        let have = a.bytes.len() as u64;
        let end = c.offset + c.data.len() as u64;
        // A chunk wholly before `have` repeats what we hold: a second answer to a request that
        // was re-sent after a reconnect. Skip it; the digest check covers the whole anyway.
        let repeat = c.error.is_empty() && c.offset < have && end <= have && !c.last;
        if repeat {
            return;
        }
        let problem = if !c.error.is_empty() {
            Some(format!(
                "the coordinator cannot relay the chart: {}",
                c.error
            ))
        } else if c.offset > have {
            Some(format!(
                "relayed chart chunk at offset {} where {have} was expected",
                c.offset
            ))
        } else if end > a.size {
            Some(format!(
                "the relayed chart is larger than the announced {} bytes",
                a.size
            ))
        } else {
            None
        };
        if let Some(why) = problem {
            drop(inflight);
            return self.fail(&c.sha256, why);
        }
        let skip = (have - c.offset) as usize;
        a.bytes
            .extend_from_slice(c.data.get(skip..).unwrap_or_default());
        if !c.last {
            return;
        }
        let Some(done) = inflight.remove(&c.sha256) else {
            return;
        };
        drop(inflight);
        let result = self.store(&c.sha256, done.size, &done.bytes);
        match &result {
            Ok(_) => {
                tracing::info!(sha256 = %c.sha256, bytes = done.bytes.len(), "relayed chart received")
            }
            Err(e) => tracing::warn!(sha256 = %c.sha256, error = %e, "relayed chart refused"),
        }
        for w in done.waiters {
            let _ = w.send(result.clone());
        }
    }

    /// Checks a complete transfer and writes it to the cache.
    fn store(&self, sha256: &str, size: u64, bytes: &[u8]) -> Result<PathBuf, String> {
        if bytes.len() as u64 != size {
            return Err(format!(
                "the relayed chart ended after {} of the announced {size} bytes",
                bytes.len()
            ));
        }
        let actual = sha256_hex(bytes);
        if actual != sha256 {
            return Err(format!(
                "the relayed chart has sha256 {actual}, expected {sha256}: refusing it"
            ));
        }
        let stored = write_atomically(&self.dir, &self.path(sha256), bytes);
        if stored.is_ok() {
            self.prune(sha256);
        }
        stored.map_err(|e| {
            format!(
                "cannot cache the relayed chart in {}: {e}",
                self.dir.display()
            )
        })?;
        Ok(self.path(sha256))
    }

    /// Asks again for every chart still being received: called when a new session starts,
    /// since the chunks of the previous one stopped with it. Chunks that repeat what already
    /// arrived are skipped, so a request answered twice does no harm.
    pub fn resume(&self, outbox: &mpsc::Sender<Body>) {
        let digests: Vec<String> = self.lock().keys().cloned().collect();
        for sha256 in digests {
            tracing::info!(%sha256, "asking again for a relayed chart after reconnecting");
            let _ = outbox.try_send(Body::ChartRequest(ChartRequest { sha256 }));
        }
    }

    /// Removes all but the [`KEEP`] newest cached charts (never `keep`, just stored).
    fn prune(&self, keep: &str) {
        let mut charts: Vec<(std::time::SystemTime, PathBuf)> = self
            .cached()
            .into_iter()
            .filter(|d| d != keep)
            .filter_map(|d| {
                let path = self.path(&d);
                let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
                Some((modified, path))
            })
            .collect();
        charts.sort();
        let excess = (charts.len() + 1).saturating_sub(KEEP);
        for (_, path) in charts.into_iter().take(excess) {
            tracing::info!(path = %path.display(), "removing an old relayed chart from the cache");
            let _ = std::fs::remove_file(path);
        }
    }

    fn fail(&self, sha256: &str, why: String) {
        if let Some(a) = self.lock().remove(sha256) {
            tracing::warn!(sha256, reason = %why, "relayed chart transfer failed");
            for w in a.waiters {
                let _ = w.send(Err(why.clone()));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Assembly>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(sha: &str, offset: u64, data: &[u8], last: bool) -> ChartChunk {
        ChartChunk {
            sha256: sha.into(),
            offset,
            data: data.to_vec(),
            last,
            error: String::new(),
        }
    }

    /// Runs `get` while feeding `chunks` as soon as the request went out.
    async fn fetch(
        cache: &Arc<ChartCache>,
        sha: &str,
        size: u64,
        chunks: Vec<ChartChunk>,
    ) -> Result<PathBuf, String> {
        let (tx, mut rx) = mpsc::channel(4);
        let feeder = {
            let cache = cache.clone();
            tokio::spawn(async move {
                if let Some(Body::ChartRequest(_)) = rx.recv().await {
                    for c in chunks {
                        cache.chunk(c);
                    }
                }
            })
        };
        let got = cache.get(sha, size, &tx).await;
        drop(tx);
        let _ = feeder.await;
        got
    }

    #[tokio::test]
    async fn chunks_are_assembled_checked_and_cached() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ChartCache::new(tmp.path().join("charts"));
        let bytes = b"a chart archive, in three pieces".to_vec();
        let sha = sha256_hex(&bytes);
        let chunks = vec![
            chunk(&sha, 0, &bytes[..10], false),
            chunk(&sha, 10, &bytes[10..20], false),
            chunk(&sha, 20, &bytes[20..], true),
        ];
        let path = fetch(&cache, &sha, bytes.len() as u64, chunks)
            .await
            .expect("fetched");
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        assert_eq!(cache.cached(), vec![sha.clone()]);
        // Cached now: no request goes out.
        let (tx, mut rx) = mpsc::channel(1);
        cache
            .get(&sha, bytes.len() as u64, &tx)
            .await
            .expect("cached");
        assert!(rx.try_recv().is_err(), "no ChartRequest for a cached chart");
    }

    #[tokio::test]
    async fn a_transfer_resumed_after_a_reconnect_tolerates_repeated_chunks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ChartCache::new(tmp.path().join("charts"));
        let bytes = b"0123456789abcdefghij".to_vec();
        let sha = sha256_hex(&bytes);
        let (tx, mut rx) = mpsc::channel(8);
        let getting = {
            let (cache, sha, tx) = (cache.clone(), sha.clone(), tx.clone());
            tokio::spawn(async move { cache.get(&sha, 20, &tx).await })
        };
        assert!(matches!(rx.recv().await, Some(Body::ChartRequest(_))));
        // The first session delivers half, then dies; the new session asks again.
        cache.chunk(chunk(&sha, 0, &bytes[..10], false));
        cache.resume(&tx);
        assert!(matches!(rx.try_recv(), Ok(Body::ChartRequest(r)) if r.sha256 == sha));
        // Both answers interleave (the old request was still queued): repeats are skipped.
        cache.chunk(chunk(&sha, 0, &bytes[..10], false));
        cache.chunk(chunk(&sha, 10, &bytes[10..], true));
        let path = getting.await.expect("join").expect("assembled");
        assert_eq!(std::fs::read(path).expect("read"), bytes);
        cache.chunk(chunk(&sha, 10, &bytes[10..], true)); // late repeat: nobody waits; ignored
    }

    #[tokio::test]
    async fn the_cache_keeps_the_newest_charts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ChartCache::new(tmp.path().join("charts"));
        let mut digests = Vec::new();
        for i in 0..KEEP + 2 {
            let bytes = format!("chart number {i}").into_bytes();
            let sha = sha256_hex(&bytes);
            let n = bytes.len() as u64;
            fetch(&cache, &sha, n, vec![chunk(&sha, 0, &bytes, true)])
                .await
                .expect("fetched");
            digests.push(sha);
            assert!(cache.cached().len() <= KEEP);
        }
        let cached = cache.cached();
        assert_eq!(cached.len(), KEEP);
        assert!(
            cached.contains(digests.last().expect("last")),
            "the newest is kept"
        );
    }

    #[tokio::test]
    async fn wrong_bytes_order_or_size_are_refused_and_not_cached() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ChartCache::new(tmp.path().join("charts"));
        let bytes = b"the real chart".to_vec();
        let sha = sha256_hex(&bytes);
        let n = bytes.len() as u64;
        let corrupt = {
            let mut b = bytes.clone();
            b[0] ^= 0xff;
            b
        };
        let mut with_error = chunk(&sha, 0, &[], true);
        with_error.error = "no chart with sha256 ...".into();
        for (chunks, size, want) in [
            (vec![chunk(&sha, 0, &corrupt, true)], n, "expected"),
            (
                vec![
                    chunk(&sha, 0, &bytes[..4], false),
                    chunk(&sha, 5, &bytes[5..], true),
                ],
                n,
                "offset 5",
            ),
            (vec![chunk(&sha, 0, &bytes, true)], n - 1, "larger than"),
            (vec![chunk(&sha, 0, &bytes[..4], true)], n, "ended after 4"),
            (vec![with_error], n, "cannot relay"),
        ] {
            let err = fetch(&cache, &sha, size, chunks).await.expect_err(want);
            assert!(err.contains(want), "{err}");
            assert!(cache.cached().is_empty(), "nothing cached after: {err}");
        }
        let (tx, _rx) = mpsc::channel(1);
        assert!(cache.get("../etc", 1, &tx).await.is_err());
    }
}
