//! The chart relay, coordinator side: fetch a chart once, stream it to agents by digest.
//!
//! With `chartSource: relay` the working clusters never talk to a chart repository: the
//! coordinator runs `helm pull` once ([`prepare`]), keeps the archive in its data dir, and the
//! task names the chart only by sha256 and size. An agent that does not have that digest
//! cached sends `ChartRequest { sha256 }`; [`answer`] streams the file back as `ChartChunk`s
//! over the same session. The agent checks offsets, size and digest, and the executor checks
//! the digest once more before anything changes — so a chunk lost, reordered or corrupted on
//! the way refuses the task instead of installing the wrong bytes.
//!
//! ```text
//! DIR/charts/<chart>-<version>.tgz      what `helm pull` wrote (the cache by name+version)
//! DIR/charts/sha256/<hex>.tgz           the same file by digest (a hard link): what agents ask for
//! ```
//!
//! Serving is stateless besides those files, so a restarted coordinator keeps serving the
//! charts of plans that were running.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skoala_proto::v1::{ChartChunk, ChartRequest, CoordinatorMessage, coordinator_message};
use skoala_upgrade::Helm;
use skoala_upgrade::helm::QUICK;
use tokio::sync::mpsc;
use tonic::Status;

use crate::data_dir::DataDir;

/// Bytes per `ChartChunk`: well under the default 4 MiB message limit, and small enough that
/// many agents fetching at once do not hold large buffers in the session channels.
pub const CHUNK: usize = 256 * 1024;

/// Largest chart we relay. Real skoala charts are a few hundred KiB; anything this large is
/// not a chart.
pub const MAX_CHART: u64 = 64 * 1024 * 1024;

/// A chart ready to be relayed: what a `RelayedChart` chart source carries, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedChart {
    /// Lower-case hex sha256 of the archive.
    pub sha256: String,
    /// Its size in bytes; the agent checks it with the digest.
    pub size: u64,
    /// Where it is in the data dir.
    pub path: PathBuf,
}

/// Why a chart could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The chart name or version could be a path (they name files in the data dir).
    #[error("chart name {0:?} or version is not valid (letters, digits, '.', '_', '-', '+')")]
    BadName(String),
    /// The charts folder could not be written or read.
    #[error("cannot prepare the chart folder {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// helm could not be run.
    #[error("helm: {0}")]
    Helm(#[from] skoala_upgrade::HelmError),
    /// `helm pull` failed: an unknown version, or an unreachable repository.
    #[error(
        "helm pull {chart} --version {version} --repo {url} failed (exit code {code:?}): {stderr}"
    )]
    Pull {
        /// The chart.
        chart: String,
        /// The version asked for.
        version: String,
        /// The repository.
        url: String,
        /// helm's exit code (`None`: killed).
        code: Option<i32>,
        /// The last lines of helm's stderr.
        stderr: String,
    },
    /// `helm pull` succeeded but left no archive where it should be.
    #[error("helm pull wrote no {0}")]
    Missing(PathBuf),
    /// The archive is larger than [`MAX_CHART`].
    #[error("{path} is {size} bytes; charts over {MAX_CHART} bytes are not relayed")]
    TooLarge {
        /// The archive.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The archive holds another chart or version than its name says.
    #[error("{path} is not the chart {chart} {version}: {reason}")]
    WrongChart {
        /// The archive.
        path: PathBuf,
        /// The chart expected.
        chart: String,
        /// The version expected.
        version: String,
        /// What differs.
        reason: String,
    },
}

fn charts_dir(dir: &DataDir) -> PathBuf {
    dir.root().join("charts")
}

/// Where the chart with `sha256` is served from (benchmarks place synthetic charts there).
pub fn by_digest(dir: &DataDir, sha256: &str) -> PathBuf {
    charts_dir(dir).join("sha256").join(format!("{sha256}.tgz"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Deletes relayed charts that no plan uses any more: every archive in the relay cache (by
/// name and by digest) not modified since `older_than` and not the same file as one of
/// `in_use` (a hard link shares the file). Returns how many were deleted; best effort.
pub fn prune(dir: &DataDir, in_use: &[PathBuf], older_than: std::time::SystemTime) -> usize {
    use std::os::unix::fs::MetadataExt;
    let keep: Vec<(u64, u64)> = in_use
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let folder = charts_dir(dir);
    let mut deleted = 0;
    for sub in [folder.clone(), folder.join("sha256")] {
        let Ok(rd) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in rd.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().is_ok_and(|m| m < older_than);
            let is_chart = meta.is_file() && path.extension().is_some_and(|e| e == "tgz");
            if !is_chart || !old || keep.contains(&(meta.dev(), meta.ino())) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an old relayed chart")
                }
            }
        }
    }
    deleted
}

/// A chart or version name that is safe as a file name part and as a helm argument.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// A lower-case hex sha256.
pub fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Makes `chart` `version` from the repository at `url` available for relaying: `helm pull`
/// into `DIR/charts` unless it is already there. A cached file is re-read and must still be a
/// packaged `chart` at `version` (a truncated or swapped file is pulled again, never relayed).
pub async fn prepare(
    url: &str,
    chart: &str,
    version: &str,
    helm: &Helm,
    dir: &DataDir,
) -> Result<RelayedChart, RelayError> {
    for name in [chart, version] {
        if !valid_name(name) {
            return Err(RelayError::BadName(name.to_string()));
        }
    }
    let folder = charts_dir(dir);
    std::fs::create_dir_all(folder.join("sha256")).map_err(io(&folder))?;
    let path = folder.join(format!("{chart}-{version}.tgz"));
    if path.exists() {
        match check(&path, chart, version) {
            Ok(relayed) => return index(dir, relayed),
            Err(e) => {
                tracing::warn!(error = %e, "the cached chart is unusable; pulling it again");
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    // Pull into a private folder first, so a half-written file never sits at the cache path.
    let session = helm.session()?;
    let dest = session.work_dir().join("pull");
    std::fs::create_dir_all(&dest).map_err(io(&dest))?;
    let args: Vec<OsString> = [
        "pull",
        chart,
        "--repo",
        url,
        "--version",
        version,
        "-d",
        &dest.to_string_lossy(),
    ]
    .iter()
    .map(Into::into)
    .collect();
    let out = session.run(&args, QUICK).await?;
    if !out.success() {
        let stderr = &out.stderr;
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(RelayError::Pull {
            chart: chart.into(),
            version: version.into(),
            url: url.into(),
            code: out.code,
            stderr: tail,
        });
    }
    let pulled = dest.join(format!("{chart}-{version}.tgz"));
    if !pulled.exists() {
        return Err(RelayError::Missing(pulled));
    }
    let relayed = check(&pulled, chart, version)?;
    // Copy (the session folder may be on another file system), then rename into place.
    let tmp = folder.join(format!(".{chart}-{version}.tgz.tmp"));
    std::fs::copy(&pulled, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    tracing::info!(chart, version, sha256 = %relayed.sha256, size = relayed.size, "chart ready for relaying");
    index(
        dir,
        RelayedChart {
            path: path.clone(),
            ..relayed
        },
    )
}

/// Reads `path` and checks it is a packaged `chart` `version` of an acceptable size.
fn check(path: &Path, chart: &str, version: &str) -> Result<RelayedChart, RelayError> {
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    if size > MAX_CHART {
        return Err(RelayError::TooLarge {
            path: path.into(),
            size,
        });
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let wrong = |reason: String| RelayError::WrongChart {
        path: path.into(),
        chart: chart.into(),
        version: version.into(),
        reason,
    };
    let (name, v) = skoala_upgrade::chart::metadata(&bytes).map_err(wrong)?;
    if name != chart || v != version {
        return Err(wrong(format!("its Chart.yaml says {name} {v}")));
    }
    Ok(RelayedChart {
        sha256: sha256_hex(&bytes),
        size: bytes.len() as u64,
        path: path.into(),
    })
}

/// Makes the chart findable by digest (a hard link; a copy where links are not possible).
fn index(dir: &DataDir, relayed: RelayedChart) -> Result<RelayedChart, RelayError> {
    let link = by_digest(dir, &relayed.sha256);
    if !link.exists() {
        let tmp = link.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&relayed.path, &tmp).is_err() {
            std::fs::copy(&relayed.path, &tmp).map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &link).map_err(io(&link))?;
    }
    Ok(relayed)
}

/// The bytes of the chart with `sha256`, re-checked against the digest; `Err` is the reason
/// told to the agent.
pub fn load(dir: &DataDir, sha256: &str) -> Result<Vec<u8>, String> {
    if !valid_digest(sha256) {
        return Err("the requested chart digest is not a lower-case hex sha256".into());
    }
    let path = by_digest(dir, sha256);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the coordinator has no chart with sha256 {sha256} (was it prepared for a plan?)"
            ));
        }
        Err(e) => return Err(format!("the coordinator cannot read chart {sha256}: {e}")),
    };
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(format!(
            "the coordinator's copy of chart {sha256} is damaged (sha256 {actual}); re-prepare it"
        ));
    }
    Ok(bytes)
}

/// Answers a `ChartRequest` on a session: the chart in [`CHUNK`]-sized `ChartChunk`s, or one
/// `ChartChunk` with `error` set. `sent` is told the size of each chunk as it leaves (the
/// coordinator counts them in its metrics). Returns `false` if the session went away meanwhile.
pub async fn answer(
    dir: &DataDir,
    request: &ChartRequest,
    tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
    mut sent: impl FnMut(usize),
) -> bool {
    let chunk = |c: ChartChunk| {
        Ok(CoordinatorMessage {
            body: Some(coordinator_message::Body::ChartChunk(c)),
        })
    };
    let bytes = match load(dir, &request.sha256) {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(sha256 = %request.sha256, %error, "chart request refused");
            return tx
                .send(chunk(ChartChunk {
                    sha256: request.sha256.clone(),
                    last: true,
                    error,
                    ..ChartChunk::default()
                }))
                .await
                .is_ok();
        }
    };
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(CHUNK).collect()
    };
    let n = pieces.len();
    let mut offset = 0u64;
    for (i, data) in pieces.into_iter().enumerate() {
        let msg = chunk(ChartChunk {
            sha256: request.sha256.clone(),
            offset,
            data: data.to_vec(),
            last: i + 1 == n,
            error: String::new(),
        });
        // `send` waits for room: a slow agent slows its own stream, not the coordinator.
        if tx.send(msg).await.is_err() {
            return false;
        }
        sent(data.len());
        offset += data.len() as u64;
    }
    tracing::info!(sha256 = %request.sha256, bytes = offset, chunks = n, "chart relayed");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart_tgz(name: &str, version: &str, filler: usize) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::none(),
        ));
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, data).expect("append");
        };
        add(
            &format!("{name}/Chart.yaml"),
            format!("apiVersion: v2\nname: {name}\nversion: {version}\n").as_bytes(),
        );
        // Incompressible filler, so the archive spans several chunks.
        let filler: Vec<u8> = (0..filler).map(|i| (i * 7919 % 251) as u8).collect();
        add(&format!("{name}/filler.bin"), &filler);
        tar.into_inner().expect("tar").finish().expect("gz")
    }

    fn prepared(dir: &DataDir, bytes: &[u8]) -> RelayedChart {
        std::fs::create_dir_all(charts_dir(dir).join("sha256")).expect("dirs");
        let path = charts_dir(dir).join("c-1.0.0.tgz");
        std::fs::write(&path, bytes).expect("write");
        let relayed = check(&path, "c", "1.0.0").expect("check");
        index(dir, relayed).expect("index")
    }

    #[test]
    fn charts_no_plan_uses_are_deleted_once_old() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let used = prepared(&dir, &chart_tgz("c", "1.0.0", 10));
        let path = charts_dir(&dir).join("d-2.0.0.tgz");
        std::fs::write(&path, chart_tgz("d", "2.0.0", 10)).expect("write");
        let unused = index(&dir, check(&path, "d", "2.0.0").expect("check")).expect("index");
        let now = std::time::SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(prune(&dir, &[], now - hour), 0, "nothing is old yet");
        assert_eq!(prune(&dir, std::slice::from_ref(&used.path), now + hour), 2);
        assert!(used.path.exists() && by_digest(&dir, &used.sha256).exists());
        assert!(!unused.path.exists() && !by_digest(&dir, &unused.sha256).exists());
    }

    #[tokio::test]
    async fn a_chart_is_streamed_in_order_and_reassembles_to_its_digest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let bytes = chart_tgz("c", "1.0.0", 3 * CHUNK / 2 + 10);
        let relayed = prepared(&dir, &bytes);
        assert_eq!(relayed.size, bytes.len() as u64);

        let (tx, mut rx) = mpsc::channel(4);
        let req = ChartRequest {
            sha256: relayed.sha256.clone(),
        };
        let sending = tokio::spawn({
            let dir = dir.clone();
            async move { answer(&dir, &req, &tx, |_| {}).await }
        });
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(Ok(msg)) = rx.recv().await {
            let Some(coordinator_message::Body::ChartChunk(c)) = msg.body else {
                panic!("not a chunk");
            };
            assert!(c.error.is_empty(), "{}", c.error);
            assert_eq!(c.offset, got.len() as u64);
            assert!(c.data.len() <= CHUNK);
            got.extend_from_slice(&c.data);
            chunks += 1;
            if c.last {
                break;
            }
        }
        assert!(sending.await.expect("join"));
        assert!(chunks >= 2, "{chunks} chunks");
        assert_eq!(sha256_hex(&got), relayed.sha256);
    }

    #[tokio::test]
    async fn unknown_or_damaged_digests_get_an_error_chunk() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let relayed = prepared(&dir, &chart_tgz("c", "1.0.0", 10));
        // Damage the indexed copy (a hard link: the same bytes as the cache entry).
        std::fs::write(by_digest(&dir, &relayed.sha256), b"garbage").expect("damage");
        for (digest, want) in [
            ("0".repeat(64), "has no chart"),
            (relayed.sha256.clone(), "damaged"),
            ("../../etc/passwd".to_string(), "not a lower-case hex"),
        ] {
            let (tx, mut rx) = mpsc::channel(4);
            assert!(answer(&dir, &ChartRequest { sha256: digest }, &tx, |_| {}).await);
            let Some(Ok(CoordinatorMessage {
                body: Some(coordinator_message::Body::ChartChunk(c)),
            })) = rx.recv().await
            else {
                panic!("no answer");
            };
            assert!(c.last && c.data.is_empty());
            assert!(c.error.contains(want), "{}", c.error);
        }
    }

    #[test]
    fn a_cached_chart_must_be_the_named_chart() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("c-1.0.0.tgz");
        std::fs::write(&path, chart_tgz("other", "1.0.0", 10)).expect("write");
        let e = check(&path, "c", "1.0.0").expect_err("wrong chart");
        assert!(e.to_string().contains("other 1.0.0"), "{e}");
        std::fs::write(&path, b"truncated").expect("write");
        assert!(check(&path, "c", "1.0.0").is_err());
        assert!(!valid_name("../x") && !valid_name("-x") && valid_name("0.19.2+build.1"));
    }
}
