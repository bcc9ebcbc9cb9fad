//! Values backups uploaded by agents (DESIGN.md invariant 1): stored in the data dir before the
//! agent may start `helm upgrade`, never overwritten, readable only by the coordinator.
//!
//! ```text
//! DIR/backups/<cluster id>/<release>/<generation>-<operation id>.yaml   the values (0600)
//! ```
//!
//! Folders are 0700 and files 0600: values hold passwords. A file is created once and never
//! replaced: the same upload again (a re-delivered operation re-sends its backup) is
//! acknowledged as stored; different bytes under the same name are refused and the first copy
//! stays. The agent waits for the acknowledgement ([`BackupStored`]) before it upgrades, so an
//! unstored backup means no upgrade.
//!
//! Values hold every cluster's secrets in plain text, so they are not kept forever: [`prune`]
//! keeps the newest generations of each cluster's release (the retention sweep, and after every
//! upload, so no flood of generations fills the disk between sweeps).
//!
//! [`Backups`] is where they go: these files on the SQLite store, immutable Secrets on the kube
//! store ([`skoala_kubestore::secrets::BackupSecrets`], design §2.2 *Backups*), so a backup an
//! agent uploaded survives the leader's node. Both keep the same rules: checked before storing
//! (size, digest, names), never overwritten, the same bytes again acknowledged, the newest
//! generations kept.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use skoala_kubestore::secrets::{BackupKey, BackupSecrets};
use skoala_proto::v1::{BackupStored, BackupUpload};

use crate::data_dir::DataDir;

/// Largest values file accepted (the Secret it came from is capped at 1 MiB by the API server).
pub const MAX_VALUES: usize = 1024 * 1024;

/// Where the backup of `upload` for `cluster_id` is stored; `Err` if a name is not safe as a
/// path component (they come from the agent).
pub fn path_for(dir: &DataDir, cluster_id: &str, upload: &BackupUpload) -> Result<PathBuf, String> {
    check_names(cluster_id, upload)?;
    Ok(dir
        .root()
        .join("backups")
        .join(cluster_id)
        .join(&upload.release)
        .join(format!(
            "{}-{}.yaml",
            upload.generation, upload.operation_id
        )))
}

fn safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The executor's upload hook for the coordinator's own upgrades (the control plane's `skoala`,
/// run in-process): each backup is stored here, as `cluster_id`'s, before the upgrade starts,
/// exactly like an agent's upload. Plug it in with
/// `Executor::new(..).with_backup_upload(backups::local_upload(backups, "control-plane", op, release))`.
pub fn local_upload(
    backups: Backups,
    cluster_id: impl Into<String>,
    operation_id: impl Into<String>,
    release: impl Into<String>,
) -> skoala_upgrade::BackupUpload {
    let (cluster_id, operation_id, release) =
        (cluster_id.into(), operation_id.into(), release.into());
    std::sync::Arc::new(move |backup: skoala_upgrade::Backup| {
        let upload = BackupUpload {
            operation_id: operation_id.clone(),
            release: release.clone(),
            revision: 0,
            values_yaml: backup.values,
            sha256: backup.sha256,
            generation: i32::try_from(backup.generation).unwrap_or(i32::MAX),
        };
        let (backups, cluster_id) = (backups.clone(), cluster_id.clone());
        Box::pin(async move {
            let ack = backups.store(&cluster_id, &upload).await;
            if ack.error.is_empty() {
                Ok(())
            } else {
                Err(ack.error)
            }
        })
    })
}

/// Where values backups are kept: chosen with the store (`serve --store`).
#[derive(Debug, Clone)]
pub enum Backups {
    /// Files in the data dir (`--store sqlite`).
    Files(DataDir),
    /// Immutable Secrets in the coordinator's namespace (`--store kube`).
    Secrets(BackupSecrets),
}

impl Backups {
    /// Stores `upload` for `cluster_id` and says how it went, as the answer for the agent.
    /// Never overwrites; never logs or returns the values.
    pub async fn store(&self, cluster_id: &str, upload: &BackupUpload) -> BackupStored {
        let stored = match self {
            Backups::Files(dir) => {
                let (dir, id, upload) = (dir.clone(), cluster_id.to_string(), upload.clone());
                tokio::task::spawn_blocking(move || store_inner(&dir, &id, &upload))
                    .await
                    .unwrap_or_else(|e| Err(format!("storing the backup: {e}")))
            }
            Backups::Secrets(secrets) => store_secret(secrets, cluster_id, upload).await,
        };
        acknowledge(cluster_id, upload, stored)
    }

    /// Keeps the newest `keep` generations of `cluster_id`'s `release` (after an upload to
    /// it); returns how many backups were deleted. Best effort: failures are logged and left to
    /// the sweep.
    pub async fn prune_release(&self, cluster_id: &str, release: &str, keep: usize) -> usize {
        match self {
            Backups::Files(dir) => {
                let (dir, id, release) = (dir.clone(), cluster_id.to_string(), release.to_string());
                tokio::task::spawn_blocking(move || prune_release(&dir, &id, &release, keep))
                    .await
                    .unwrap_or_default()
            }
            Backups::Secrets(secrets) => secrets
                .prune_release(cluster_id, release, keep)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(cluster_id, release, error = %e, "cannot prune old backups");
                    0
                }),
        }
    }

    /// Keeps the newest `keep` generations of every cluster's release backups (the retention
    /// sweep); returns how many were deleted.
    pub async fn prune(&self, keep: usize) -> usize {
        match self {
            Backups::Files(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || prune(&dir, keep))
                    .await
                    .unwrap_or_default()
            }
            Backups::Secrets(secrets) => secrets.prune(keep).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "retention: cannot prune old backups");
                0
            }),
        }
    }
}

/// Stores `upload` for `cluster_id` in the data dir `dir` and says how it went, as the answer
/// for the agent. Never overwrites; never logs or returns the values.
pub fn store(dir: &DataDir, cluster_id: &str, upload: &BackupUpload) -> BackupStored {
    acknowledge(cluster_id, upload, store_inner(dir, cluster_id, upload))
}

/// The answer for the agent, logged.
fn acknowledge(
    cluster_id: &str,
    upload: &BackupUpload,
    stored: Result<(), String>,
) -> BackupStored {
    let mut ack = BackupStored {
        operation_id: upload.operation_id.clone(),
        generation: upload.generation,
        sha256: upload.sha256.clone(),
        error: String::new(),
    };
    if let Err(e) = stored {
        tracing::error!(cluster_id, operation = %upload.operation_id, release = %upload.release,
            generation = upload.generation, error = %e, "backup not stored");
        ack.error = e;
    } else {
        tracing::info!(cluster_id, operation = %upload.operation_id, release = %upload.release,
            generation = upload.generation, sha256 = %upload.sha256, "backup stored");
    }
    ack
}

/// What every store refuses before storing anything: too large, damaged, or
/// [`check_names`].
fn check(cluster_id: &str, upload: &BackupUpload) -> Result<(), String> {
    if upload.values_yaml.len() > MAX_VALUES {
        return Err(format!(
            "the backup is {} bytes; at most {MAX_VALUES} are accepted",
            upload.values_yaml.len()
        ));
    }
    let actual = hex::encode(Sha256::digest(&upload.values_yaml));
    if !actual.eq_ignore_ascii_case(&upload.sha256) {
        return Err(format!(
            "the backup's sha256 is {actual}, but the upload says {}: damaged on the way",
            upload.sha256
        ));
    }
    check_names(cluster_id, upload)
}

/// Refuses names that are not safe as path components (they come from the agent) and
/// generations below 1.
fn check_names(cluster_id: &str, upload: &BackupUpload) -> Result<(), String> {
    for (what, s) in [
        ("cluster id", cluster_id),
        ("release", upload.release.as_str()),
        ("operation id", upload.operation_id.as_str()),
    ] {
        if !safe(s) {
            return Err(format!(
                "the backup's {what} is not a safe name (1-128 of [A-Za-z0-9._-], not starting with '.')"
            ));
        }
    }
    if upload.generation < 1 {
        return Err(format!(
            "the backup has generation {}; generations start at 1",
            upload.generation
        ));
    }
    Ok(())
}

async fn store_secret(
    secrets: &BackupSecrets,
    cluster_id: &str,
    upload: &BackupUpload,
) -> Result<(), String> {
    check(cluster_id, upload)?;
    let key = BackupKey {
        cluster_id: cluster_id.to_string(),
        release: upload.release.clone(),
        generation: i64::from(upload.generation),
        operation_id: upload.operation_id.clone(),
    };
    let sha256 = upload.sha256.to_ascii_lowercase();
    secrets
        .put(&key, &upload.values_yaml, &sha256)
        .await
        .map(|_| ())
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

fn store_inner(dir: &DataDir, cluster_id: &str, upload: &BackupUpload) -> Result<(), String> {
    check(cluster_id, upload)?;
    let path = path_for(dir, cluster_id, upload)?;
    let folder = path.parent().ok_or("backup path has no folder")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    // Write under a temporary name and link it into place: the final name appears complete or
    // not at all, and `hard_link` fails rather than replace an existing backup.
    let tmp = temp_path(&path);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&upload.values_yaml)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            // The new directory entry must survive a crash too.
            if let Ok(d) = std::fs::File::open(folder) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = std::fs::read(&path)
                .map_err(|e| format!("cannot read the existing {}: {e}", path.display()))?;
            if existing == upload.values_yaml {
                Ok(()) // the same backup again (re-delivery): already stored
            } else {
                Err(format!(
                    "{} already holds a different backup; it is never overwritten",
                    path.display()
                ))
            }
        }
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

/// A temporary name next to `path` for one write. Unique per write, not only per process:
/// the same backup delivered twice at once (a re-sent operation) must not share, and remove,
/// one temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    path.with_file_name(format!(
        ".{}.{}-{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup"),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Keeps the newest `keep` generations of every cluster's release backups and deletes the rest;
/// returns how many files were deleted. Best effort: a file that cannot be deleted is logged
/// and left for the next sweep.
pub fn prune(dir: &DataDir, keep: usize) -> usize {
    let root = dir.root().join("backups");
    let mut deleted = 0;
    for cluster in subdirs(&root) {
        for release in subdirs(&cluster) {
            deleted += prune_folder(&release, keep);
        }
    }
    deleted
}

/// [`prune`] for one cluster's release, after an upload to it.
pub fn prune_release(dir: &DataDir, cluster_id: &str, release: &str, keep: usize) -> usize {
    if !safe(cluster_id) || !safe(release) {
        return 0;
    }
    prune_folder(
        &dir.root().join("backups").join(cluster_id).join(release),
        keep,
    )
}

/// Every backup in the data dir with its values (a migration's copy), keyed as on the kube
/// store.
pub fn list_files(dir: &DataDir) -> anyhow::Result<Vec<(BackupKey, Vec<u8>)>> {
    let mut out = Vec::new();
    for cluster in subdirs(&dir.root().join("backups")) {
        for release in subdirs(&cluster) {
            for entry in std::fs::read_dir(&release)? {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                // Temporary files of a write in progress start with a dot.
                let Some((generation, operation)) = name
                    .strip_suffix(".yaml")
                    .filter(|_| !name.starts_with('.'))
                    .and_then(|stem| stem.split_once('-'))
                else {
                    continue;
                };
                let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(String::from);
                let key = BackupKey {
                    cluster_id: name_of(&cluster).unwrap_or_default(),
                    release: name_of(&release).unwrap_or_default(),
                    generation: generation
                        .parse()
                        .with_context(|| format!("the generation of {}", path.display()))?,
                    operation_id: operation.to_string(),
                };
                let values =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.push((key, values));
            }
        }
    }
    Ok(out)
}

/// Stores backup `key` in the data dir as an agent's upload of it would be.
pub fn write_file(dir: &DataDir, key: &BackupKey, values: &[u8]) -> anyhow::Result<()> {
    let upload = BackupUpload {
        operation_id: key.operation_id.clone(),
        release: key.release.clone(),
        revision: 0,
        values_yaml: values.to_vec(),
        sha256: hex::encode(Sha256::digest(values)),
        generation: i32::try_from(key.generation)
            .with_context(|| format!("backup generation {}", key.generation))?,
    };
    store_inner(dir, &key.cluster_id, &upload).map_err(anyhow::Error::msg)
}

fn subdirs(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The generation a stored backup's name starts with (`<generation>-<operation>.yaml`).
fn generation_of(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".yaml")?;
    stem.split_once('-')?.0.parse().ok()
}

fn prune_folder(folder: &Path, keep: usize) -> usize {
    let Ok(rd) = std::fs::read_dir(folder) else {
        return 0;
    };
    let mut files: Vec<(i64, String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let generation = generation_of(&name)?;
            Some((generation, name, e.path()))
        })
        .collect();
    if files.len() <= keep {
        return 0;
    }
    // Newest first: the highest generation, then the name (a re-run's operation id).
    files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut deleted = 0;
    for (_, _, path) in files.into_iter().skip(keep) {
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an old backup")
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn upload(values: &[u8]) -> BackupUpload {
        BackupUpload {
            operation_id: "op-1".into(),
            release: "skoala-init".into(),
            revision: 3,
            values_yaml: values.to_vec(),
            sha256: hex::encode(Sha256::digest(values)),
            generation: 2,
        }
    }

    #[test]
    fn a_backup_is_stored_private_and_never_overwritten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let first = upload(b"password: s3cret\n");
        let ack = store(&dir, "cluster-a", &first);
        assert_eq!(ack.error, "");
        assert_eq!(
            (ack.generation, ack.sha256.as_str()),
            (2, first.sha256.as_str())
        );
        let path = path_for(&dir, "cluster-a", &first).expect("path");
        assert!(path.ends_with("backups/cluster-a/skoala-init/2-op-1.yaml"));
        assert_eq!(std::fs::read(&path).expect("read"), first.values_yaml);
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("folder")), 0o700);

        // The same upload again is fine; different bytes under the same name are refused.
        assert_eq!(store(&dir, "cluster-a", &first).error, "");
        let other = upload(b"password: other\n");
        let ack = store(&dir, "cluster-a", &other);
        assert!(ack.error.contains("never overwritten"), "{}", ack.error);
        assert!(!ack.error.contains("other\n"));
        assert_eq!(std::fs::read(&path).expect("read"), first.values_yaml);
        let leftovers = std::fs::read_dir(path.parent().expect("folder"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }

    #[test]
    fn concurrent_writes_of_one_backup_never_share_a_temporary_file() {
        let path = Path::new("/data/backups/c/skoala-init/2-op-1.yaml");
        let names: Vec<PathBuf> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..64).map(|_| temp_path(path)).collect::<Vec<_>>()))
                .collect();
            writers
                .into_iter()
                .flat_map(|w| w.join().expect("writer"))
                .collect()
        });
        let unique: std::collections::BTreeSet<&PathBuf> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "two writes shared a temporary name"
        );
        for name in &names {
            assert_eq!(
                name.parent(),
                path.parent(),
                "same folder: hard_link needs it"
            );
            let file = name.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(
                file.starts_with(".2-op-1.yaml.") && file.ends_with(".tmp"),
                "{file}"
            );
        }
    }

    #[tokio::test]
    async fn the_local_hook_stores_like_an_upload() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let hook = local_upload(
            Backups::Files(dir.clone()),
            "control-plane",
            "op-9",
            "skoala",
        );
        let values = b"hive:\n  password: x\n".to_vec();
        let backup = skoala_upgrade::Backup {
            secret: "skoala-fleet-backup-skoala-1".into(),
            generation: 1,
            sha256: hex::encode(Sha256::digest(&values)),
            values: values.clone(),
        };
        hook(backup.clone()).await.expect("stored");
        let path = tmp.path().join("backups/control-plane/skoala/1-op-9.yaml");
        assert_eq!(std::fs::read(path).expect("read"), values);
        let mut other = backup;
        other.values = b"other: 1\n".to_vec();
        other.sha256 = hex::encode(Sha256::digest(&other.values));
        assert!(hook(other).await.is_err(), "never overwritten");
    }

    #[test]
    fn damaged_or_unsafe_uploads_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        let mut damaged = upload(b"a: 1\n");
        damaged.values_yaml = b"a: 2\n".to_vec();
        assert!(store(&dir, "c", &damaged).error.contains("damaged"));
        let mut escape = upload(b"a: 1\n");
        escape.operation_id = "../../ca-key".into();
        assert!(store(&dir, "c", &escape).error.contains("operation id"));
        assert!(
            store(&dir, "..", &upload(b"a: 1\n"))
                .error
                .contains("cluster id")
        );
        let mut zero = upload(b"a: 1\n");
        zero.generation = 0;
        assert!(store(&dir, "c", &zero).error.contains("generation"));
        assert!(
            !tmp.path().join("backups/c").exists()
                || std::fs::read_dir(tmp.path().join("backups/c"))
                    .expect("ls")
                    .count()
                    == 0
        );
    }

    #[test]
    fn only_the_newest_generations_of_each_release_are_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path());
        for (cluster, generation) in [("a", 1), ("a", 2), ("a", 10), ("a", 3), ("b", 1)] {
            let mut u = upload(format!("g: {generation}\n").as_bytes());
            u.generation = generation;
            assert_eq!(store(&dir, cluster, &u).error, "");
        }
        assert_eq!(prune(&dir, 2), 2, "a's generations 1 and 2 go");
        let names = |c: &str| {
            let mut v: Vec<String> =
                std::fs::read_dir(tmp.path().join("backups").join(c).join("skoala-init"))
                    .expect("folder")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect();
            v.sort();
            v
        };
        assert_eq!(
            names("a"),
            ["10-op-1.yaml", "3-op-1.yaml"],
            "10 is newer than 3"
        );
        assert_eq!(names("b"), ["1-op-1.yaml"], "another cluster's are its own");
        assert_eq!(prune_release(&dir, "a", "skoala-init", 1), 1);
        assert_eq!(names("a"), ["10-op-1.yaml"]);
        assert_eq!(
            prune_release(&dir, "../a", "skoala-init", 0),
            0,
            "no path games"
        );
    }
}
