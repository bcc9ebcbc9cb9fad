//! A fake helm and a fake Kubernetes API for the executor's unit tests, sharing one [`World`]:
//! one release's revisions, its operation record, lease and backups, the CRDs, and a journal
//! of every change in the order it happened. Faults are switched on per test.
//!
//! The fake helm reads the command lines the executor builds (`get values`, `upgrade`,
//! `rollback`, `history`), so the tests see the arguments and values files as helm would.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use skoala_plan::ReleaseStatus;

use super::cluster::{Cluster, Lock, Records};
use crate::backup::{BackupError, Stored, sha256_hex};
use crate::chart;
use crate::crds::fixtures::{CRD, tgz};
use crate::crds::{ChartCrd, CrdError};
use crate::helm::{Helm, HelmError, HelmOutput, RunHelm};
use crate::inventory::{InventoryError, ReleaseInfo, TrackedRelease};
use crate::lock::LockError;
use crate::record::OperationRecord;
use crate::report::Backup;
use crate::spec::ReleaseSpec;
use crate::verify::{Expectation, Unhealthy};

/// One revision of the release, as helm keeps it.
#[derive(Clone, Debug)]
pub(super) struct Revision {
    pub(super) chart_version: String,
    pub(super) status: ReleaseStatus,
    /// The user-supplied values, as `helm get values -o yaml` prints them.
    pub(super) values: String,
}

/// What the tests switch on.
#[derive(Default)]
pub(super) struct Faults {
    /// `helm upgrade` writes a `failed` revision and exits 1.
    pub(super) upgrade: bool,
    /// Verification fails for good (the rollback's too, if `rollback_unhealthy`).
    pub(super) unhealthy: Option<String>,
    /// ... also after a rollback.
    pub(super) rollback_unhealthy: bool,
    /// Applying CRDs (not the dry run) fails.
    pub(super) apply_crds: bool,
    /// RBAC denies these.
    pub(super) denied: Vec<String>,
}

/// Everything the fakes share.
#[derive(Default)]
pub(super) struct World {
    pub(super) revisions: Vec<Revision>,
    pub(super) record: Option<OperationRecord>,
    /// The lease's holder, if held and live.
    pub(super) lease: Option<String>,
    pub(super) backups: Vec<Stored>,
    pub(super) crds: Vec<String>,
    /// Every change, in order: `record running`, `backup 1`, `upload 1`, `crds ...`,
    /// `upgrade 0.19.2`, `rollback 1`, ...
    pub(super) journal: Vec<String>,
    /// The values files of the last `helm upgrade`, in command-line order.
    pub(super) upgrade_values: Vec<String>,
    pub(super) faults: Faults,
}

impl World {
    /// A release deployed at `version` (revision 1) with a user value `password`.
    pub(super) fn deployed(version: &str) -> Shared {
        let world = World {
            revisions: vec![Revision {
                chart_version: version.into(),
                status: ReleaseStatus::Deployed,
                values: format!(
                    "password: hunter2\nskoala-agent:\n  image:\n    tag: v{version}\n"
                ),
            }],
            ..World::default()
        };
        Shared(Arc::new(Mutex::new(world)))
    }

    fn info(&self, revision: usize, tracked: &TrackedRelease) -> Option<ReleaseInfo> {
        let r = self.revisions.get(revision.checked_sub(1)?)?;
        let values: serde_yaml::Value = serde_yaml::from_str(&r.values).ok()?;
        let image_tags = tracked
            .image_tag_keys
            .iter()
            .filter_map(|key| {
                let tag = key
                    .split('.')
                    .try_fold(&values, |v, part| v.get(part))?
                    .as_str()?;
                Some((key.clone(), tag.to_string()))
            })
            .collect();
        Some(ReleaseInfo {
            release: tracked.release.clone(),
            namespace: tracked.namespace.clone(),
            chart_name: tracked.release.clone(),
            chart_version: r.chart_version.clone(),
            app_version: r.chart_version.clone(),
            revision: revision as i32,
            status: r.status.clone(),
            image_tags,
            updated: None,
        })
    }

    /// Adds a revision; the deployed one before it is superseded.
    fn push(&mut self, revision: Revision) {
        for r in &mut self.revisions {
            if r.status.is_deployed() {
                r.status = ReleaseStatus::Superseded;
            }
        }
        self.revisions.push(revision);
    }

    pub(super) fn latest(&self) -> &Revision {
        self.revisions.last().expect("the release has a revision")
    }

    /// Where `entry` first appears in the journal.
    pub(super) fn at(&self, entry: &str) -> Option<usize> {
        self.journal.iter().position(|e| e == entry)
    }
}

/// The world, shared by the fakes and the test.
#[derive(Clone)]
pub(super) struct Shared(Arc<Mutex<World>>);

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn api_error(code: u16, message: &str) -> kube::Error {
    kube::Error::Api(Box::new(kube::core::Status {
        code,
        message: message.into(),
        ..Default::default()
    }))
}

/// The fake Kubernetes API.
pub(super) struct FakeCluster(pub(super) Shared);

impl Cluster for FakeCluster {
    type Records = FakeRecords;
    type Lock = FakeLock;

    fn records(&self, _namespace: &str, _release: &str) -> FakeRecords {
        FakeRecords(self.0.clone())
    }

    async fn lock(
        &self,
        _namespace: &str,
        release: &str,
        holder: &str,
    ) -> Result<FakeLock, LockError> {
        let mut w = self.0.lock();
        match &w.lease {
            Some(other) if other != holder => Err(LockError::Held {
                name: format!("skoala-fleet-{release}"),
                holder: other.clone(),
                renewed: "just now".into(),
            }),
            _ => {
                w.lease = Some(holder.into());
                Ok(FakeLock {
                    world: self.0.clone(),
                    holder: holder.into(),
                })
            }
        }
    }

    async fn release(
        &self,
        tracked: &TrackedRelease,
    ) -> Result<Option<ReleaseInfo>, InventoryError> {
        let w = self.0.lock();
        Ok(w.info(w.revisions.len(), tracked))
    }

    async fn revision(
        &self,
        tracked: &TrackedRelease,
        revision: i32,
    ) -> Result<Option<ReleaseInfo>, InventoryError> {
        Ok(self.0.lock().info(revision as usize, tracked))
    }

    async fn backups(&self, _namespace: &str, _release: &str) -> Result<Vec<Stored>, BackupError> {
        Ok(self.0.lock().backups.clone())
    }

    async fn backup_of(
        &self,
        _namespace: &str,
        _release: &str,
        operation_id: &str,
    ) -> Result<Option<Backup>, BackupError> {
        let w = self.0.lock();
        let found = w
            .backups
            .iter()
            .rev()
            .find(|s| s.operation_id == operation_id);
        Ok(found.map(|s| s.backup.clone()))
    }

    async fn store_backup(
        &self,
        _namespace: &str,
        release: &str,
        operation_id: &str,
        chart_version: &str,
        values: &[u8],
    ) -> Result<Backup, BackupError> {
        let mut w = self.0.lock();
        let generation = w.backups.last().map_or(1, |s| s.backup.generation + 1);
        let backup = Backup {
            secret: crate::backup::secret_name(release, generation),
            generation,
            sha256: sha256_hex(values),
            values: values.to_vec(),
        };
        w.backups.push(Stored {
            backup: backup.clone(),
            operation_id: operation_id.into(),
            chart_version: chart_version.into(),
        });
        w.journal.push(format!("backup {generation}"));
        Ok(backup)
    }

    async fn missing_permissions(&self, _spec: &ReleaseSpec) -> Result<Vec<String>, kube::Error> {
        Ok(self.0.lock().faults.denied.clone())
    }

    async fn apply_crds(&self, crds: &[ChartCrd], dry_run: bool) -> Result<Vec<String>, CrdError> {
        let mut w = self.0.lock();
        let names: Vec<String> = crds.iter().map(ChartCrd::name).collect();
        if dry_run {
            return Ok(names);
        }
        if w.faults.apply_crds {
            return Err(CrdError::Apply {
                name: names.first().cloned().unwrap_or_default(),
                source: api_error(422, "the CRD is invalid"),
            });
        }
        w.journal.push(format!("crds {}", names.join(",")));
        w.crds.extend(names.iter().cloned());
        Ok(names)
    }

    async fn delete_jobs(&self, _namespace: &str, names: &[String]) -> Result<(), String> {
        if !names.is_empty() {
            self.0
                .lock()
                .journal
                .push(format!("delete jobs {}", names.join(",")));
        }
        Ok(())
    }

    async fn health<H: RunHelm>(&self, _helm: &H, expect: &Expectation) -> Result<(), Unhealthy> {
        let w = self.0.lock();
        let tracked = TrackedRelease {
            release: expect.release.clone(),
            namespace: expect.namespace.clone(),
            image_tag_keys: expect.tags.keys().cloned().collect(),
        };
        let info = w
            .info(w.revisions.len(), &tracked)
            .ok_or_else(|| Unhealthy::from("the release is not installed"))?;
        let rolled_back = w.journal.iter().any(|e| e.starts_with("rollback "));
        let unhealthy = w
            .faults
            .unhealthy
            .clone()
            .filter(|_| !rolled_back || w.faults.rollback_unhealthy);
        let problem = if let Some(reason) = unhealthy {
            Some(reason)
        } else if !info.status.is_deployed() {
            Some(format!("revision {} is {}", info.revision, info.status))
        } else if info.chart_version != expect.chart_version {
            Some(format!("chart version is {}", info.chart_version))
        } else if info.image_tags != expect.tags {
            Some(format!("image tags are {:?}", info.image_tags))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(reason) => Err(Unhealthy {
                reason,
                permanent: true,
            }),
        }
    }
}

/// The fake operation record (one ConfigMap).
pub(super) struct FakeRecords(Shared);

impl Records for FakeRecords {
    async fn load(&mut self) -> Result<Option<OperationRecord>, kube::Error> {
        Ok(self.0.lock().record.clone())
    }

    async fn save(&mut self, record: &OperationRecord) -> Result<(), kube::Error> {
        let mut w = self.0.lock();
        w.journal.push(format!("record {}", record.phase.as_str()));
        w.record = Some(record.clone());
        Ok(())
    }
}

/// The fake lease, held.
pub(super) struct FakeLock {
    world: Shared,
    holder: String,
}

impl Lock for FakeLock {
    async fn release(self) {
        let mut w = self.world.lock();
        if w.lease.as_deref() == Some(self.holder.as_str()) {
            w.lease = None;
        }
    }
}

/// The fake helm.
pub(super) struct FakeHelm {
    world: Shared,
    helm: Helm,
    dir: tempfile::TempDir,
}

impl FakeHelm {
    pub(super) fn new(world: &Shared) -> Self {
        FakeHelm {
            world: world.clone(),
            helm: Helm::assumed("v4.1.4"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

fn output(code: i32, stdout: impl Into<Vec<u8>>, stderr: &str) -> HelmOutput {
    HelmOutput {
        code: Some(code),
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

/// The `-f` files of a command line, read now (the executor removes them after the run).
fn values_files(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == "-f")
        .map(|w| {
            let path = Path::new(&w[1]);
            let mode = std::fs::metadata(path)
                .expect("values file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "values files are 0600: {}", w[1]);
            std::fs::read_to_string(path).expect("values file")
        })
        .collect()
}

/// Later files win, key by key, as helm merges them.
fn merge(into: &mut serde_yaml::Value, over: serde_yaml::Value) {
    match (into, over) {
        (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl RunHelm for FakeHelm {
    fn helm(&self) -> &Helm {
        &self.helm
    }

    fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn run(&self, args: &[OsString], _timeout: Duration) -> Result<HelmOutput, HelmError> {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut w = self.world.lock();
        Ok(match words.as_slice() {
            ["get", "values", ..] => output(0, w.latest().values.clone(), ""),
            [
                "upgrade",
                "--install",
                "--create-namespace",
                "-n",
                _,
                _,
                chart,
                ..,
            ] => {
                let bytes = std::fs::read(chart).expect("the chart archive");
                let (_, version) = chart::metadata(&bytes).expect("a chart");
                let files = values_files(&args);
                let mut values = serde_yaml::Value::Mapping(Default::default());
                for f in &files {
                    merge(&mut values, serde_yaml::from_str(f).expect("values YAML"));
                }
                w.upgrade_values = files;
                w.journal.push(format!("upgrade {version}"));
                let failed = w.faults.upgrade;
                w.push(Revision {
                    chart_version: version.clone(),
                    status: if failed {
                        ReleaseStatus::Failed
                    } else {
                        ReleaseStatus::Deployed
                    },
                    values: serde_yaml::to_string(&values).expect("YAML"),
                });
                if failed {
                    output(1, "", "Error: UPGRADE FAILED: password hunter2 rejected")
                } else {
                    output(0, "", "")
                }
            }
            ["rollback", _, revision, ..] => {
                let n: usize = revision.parse().expect("a revision");
                let target = w.revisions[n - 1].clone();
                w.journal.push(format!("rollback {n}"));
                w.push(Revision {
                    status: ReleaseStatus::Deployed,
                    ..target
                });
                output(0, "", "")
            }
            ["history", ..] => {
                let entries: Vec<serde_json::Value> = w
                    .revisions
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        serde_json::json!({"revision": i + 1, "status": r.status.as_str()})
                    })
                    .collect();
                output(0, serde_json::to_vec(&entries).expect("json"), "")
            }
            other => panic!("the fake helm does not know `helm {}`", other.join(" ")),
        })
    }
}

/// A packaged chart `name` at `version` with one CRD, written into `dir`; returns its path
/// and sha256.
pub(super) fn chart_archive(dir: &Path, name: &str, version: &str) -> (PathBuf, String) {
    let chart_yaml = format!("apiVersion: v2\nname: {name}\nversion: {version}\n");
    let bytes = tgz(&[
        (&format!("{name}/Chart.yaml"), chart_yaml.as_bytes()),
        (&format!("{name}/crds/widgets.yaml"), CRD.as_bytes()),
    ]);
    let path = dir.join(format!("{name}-{version}.tgz"));
    std::fs::write(&path, &bytes).expect("write the chart");
    (path, sha256_hex(&bytes))
}
