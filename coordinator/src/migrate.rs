//! `skoala-coordinator migrate`: moves a fleet from one store to the other without any agent
//! joining again (design §6). The CA, server credential and `admin.yaml` move verbatim, so
//! agents still trust the endpoint and their certificates still chain to the fleet CA; their
//! serials, the tokens' uses, plans, events and audit move with their ids
//! ([`skoala_store::Migrate`]), so cursors and operation ids keep their meaning.
//!
//! The order: the source is made quiet first (SQLite: a write lock held for the whole copy;
//! kube: the leader Lease, taken as `migrate-…`, so no replica leads meanwhile), then read as
//! one snapshot; a plan with operations in flight is refused unless allowed; the target must
//! hold no fleet. Then the PKI, the values backups, and the records, whose import reads every
//! class back before its commit point (kube: the state ConfigMap; SQLite: the one
//! transaction), and on SQLite the store file, written as `store.db.migrating`, is renamed into
//! place last. A target left half-written by a failure is refused by the next run: empty it
//! (delete the namespace's fleet objects, or the data dir's files) and run again.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use sha2::Digest as _;
use skoala_kubestore::lease::{self, Elector, Leadership};
use skoala_kubestore::secrets::{BackupSecrets, Created};
use skoala_kubestore::store::{KubeStore, Options as KubeOptions};
use skoala_store::sqlite::{SqliteStore, WriteHold};
use skoala_store::{Counts, Migrate, Snapshot};

use crate::data_dir::DataDir;
use crate::pki_store::{Pki, PkiStore};

/// One end of a migration: `sqlite:DIR` or `kube:NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A data dir (`serve --store sqlite --data-dir DIR`).
    Sqlite(PathBuf),
    /// A namespace of the control-plane cluster (`serve --store kube --namespace NS`).
    Kube(String),
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("sqlite", dir)) if !dir.is_empty() => Ok(Place::Sqlite(dir.into())),
            Some(("kube", ns)) if !ns.is_empty() => Ok(Place::Kube(ns.into())),
            _ => Err(format!(
                "{s:?} is neither sqlite:DATA_DIR nor kube:NAMESPACE"
            )),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Sqlite(dir) => write!(f, "sqlite:{}", dir.display()),
            Place::Kube(ns) => write!(f, "kube:{ns}"),
        }
    }
}

/// What `migrate` is asked to do.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Where the fleet is.
    pub from: Place,
    /// Where it goes: holds no fleet yet.
    pub to: Place,
    /// Kubeconfig of the control-plane cluster (either end on kube).
    pub kubeconfig: Option<PathBuf>,
    /// Migrate a plan whose operations are in flight (the new coordinator sends them again,
    /// under the same operation ids).
    pub allow_in_flight: bool,
}

/// What a migration moved, for its report.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The records read from the source.
    pub read: Counts,
    /// The records a store opened on the target reads.
    pub found: Counts,
    /// Values backups copied.
    pub backups: usize,
}

/// A store opened for a migration, and what keeps it quiet.
struct Opened {
    store: Store,
    pki: PkiStore,
    backups: BackupPlace,
    /// The write lock or the Lease, let go by [`Opened::close`].
    quiet: Quiet,
}

impl Opened {
    /// Lets go of what kept the store quiet: the Lease is handed back at once, so the
    /// coordinator scaled up next leads without waiting for it to expire.
    async fn close(self) {
        let Opened { store, quiet, .. } = self;
        drop(store);
        if let Quiet::Lease(leadership, _) = quiet
            && let Err(e) = leadership.release().await
        {
            tracing::warn!(error = %e, "releasing the leader Lease failed; it expires by itself");
        }
    }
}

/// The store at `place` opened anew (under the Lease `quiet` holds, on kube): what a
/// coordinator started there reads.
async fn reopen(quiet: &Quiet, place: &Place) -> anyhow::Result<Store> {
    Ok(match (quiet, place) {
        (Quiet::Lease(leadership, client), Place::Kube(namespace)) => {
            let options = KubeOptions {
                namespace: namespace.clone(),
                ..KubeOptions::default()
            };
            Store::Kube(
                KubeStore::open(client.clone(), options, leadership.fence())
                    .await
                    .with_context(|| format!("loading the fleet from namespace {namespace}"))?,
            )
        }
        (_, Place::Sqlite(dir)) => Store::Sqlite(
            SqliteStore::open(&DataDir::new(dir).store()).context("opening the migrated store")?,
        ),
        (_, Place::Kube(namespace)) => bail!("namespace {namespace} was opened without its Lease"),
    })
}

enum Store {
    Sqlite(SqliteStore),
    Kube(KubeStore),
}

impl Store {
    async fn export(&self) -> Result<Snapshot, skoala_store::StoreError> {
        match self {
            Store::Sqlite(s) => s.export().await,
            Store::Kube(s) => s.export().await,
        }
    }

    async fn import(&self, snapshot: Snapshot) -> Result<(), skoala_store::StoreError> {
        match self {
            Store::Sqlite(s) => s.import(snapshot).await,
            Store::Kube(s) => s.import(snapshot).await,
        }
    }
}

enum BackupPlace {
    Files(DataDir),
    Secrets(BackupSecrets),
}

enum Quiet {
    Lock(#[allow(dead_code, reason = "held, not read")] WriteHold),
    Lease(Leadership, kube::Client),
    None,
}

/// Runs a migration; see the module doc.
pub async fn run(opts: MigrateOptions) -> anyhow::Result<Migrated> {
    if opts.from == opts.to {
        bail!("--from and --to are the same place ({})", opts.from);
    }
    let source = open_source(&opts).await?;
    let moved = copy(&opts, &source).await;
    // Whatever happened: the Lease is handed back at once rather than left to expire.
    source.close().await;
    moved
}

/// The migration once the source is quiet.
async fn copy(opts: &MigrateOptions, source: &Opened) -> anyhow::Result<Migrated> {
    let snapshot = source
        .store
        .export()
        .await
        .with_context(|| format!("reading the fleet from {}", opts.from))?;
    let in_flight = snapshot.in_flight();
    if !in_flight.is_empty() && !opts.allow_in_flight {
        let (plan, cluster) = &in_flight[0];
        bail!(
            "plan {plan} has {} operation(s) in flight (cluster {cluster} first); pause it \
             first (`skoalactl plan pause {plan}`), wait until nothing runs, and migrate again \
             — or pass --allow-in-flight: the new coordinator then sends them again",
            in_flight.len()
        );
    }
    let pki = source
        .pki
        .load()
        .await
        .with_context(|| format!("reading the PKI from {}", opts.from))?;
    let read = snapshot.counts();
    eprintln!("read from {}: {read}", opts.from);

    let target = open_target(opts).await?;
    let written = write(opts, source, &target, snapshot, &pki).await;
    let found = match (&written, &opts.to) {
        (Err(_), _) => {
            target.close().await;
            None
        }
        (Ok(_), Place::Sqlite(dir)) => {
            let dir = DataDir::new(dir);
            let Opened { store, .. } = target;
            if let Store::Sqlite(s) = &store {
                s.checkpoint()
                    .await
                    .context("completing the migrated store")?;
            }
            drop(store);
            let path = migrating(&dir);
            // Empty after the checkpoint; they must not be taken for another file's.
            for log in [wal(&path, "-wal"), wal(&path, "-shm")] {
                let _ = std::fs::remove_file(log);
            }
            std::fs::rename(&path, dir.store()).with_context(|| {
                format!("moving the store into place at {}", dir.store().display())
            })?;
            Some(read_back(&Quiet::None, &opts.to).await)
        }
        (Ok(_), Place::Kube(_)) => {
            let found = read_back(&target.quiet, &opts.to).await;
            target.close().await;
            Some(found)
        }
    };
    let backups = written?;
    let found = found.context("read back")??;
    Ok(Migrated {
        read,
        found,
        backups,
    })
}

/// Writes the PKI, the backups and the records into the empty target; returns how many
/// backups.
async fn write(
    opts: &MigrateOptions,
    source: &Opened,
    target: &Opened,
    snapshot: Snapshot,
    pki: &Pki,
) -> anyhow::Result<usize> {
    check_empty(target, &opts.to).await?;
    put_pki(&target.pki, pki, &opts.to).await?;
    let backups = copy_backups(&source.backups, &target.backups)
        .await
        .with_context(|| format!("copying values backups to {}", opts.to))?;
    target
        .store
        .import(snapshot)
        .await
        .with_context(|| format!("writing the fleet into {}", opts.to))?;
    Ok(backups)
}

/// The file a migration into a data dir writes the store to, renamed to `store.db` last.
fn migrating(dir: &DataDir) -> PathBuf {
    dir.root().join("store.db.migrating")
}

async fn open_source(opts: &MigrateOptions) -> anyhow::Result<Opened> {
    match &opts.from {
        Place::Sqlite(dir) => {
            let dir = DataDir::new(dir);
            crate::init::recover(&dir)?;
            let path = dir.store();
            if !path.exists() {
                bail!("{} does not exist: no fleet to migrate", path.display());
            }
            let quiet = SqliteStore::hold_writes(&path).with_context(|| {
                format!(
                    "locking {} against writes (stop the coordinator that serves it first)",
                    path.display()
                )
            })?;
            let store = SqliteStore::open(&path)
                .with_context(|| format!("opening the store {}", path.display()))?;
            Ok(Opened {
                store: Store::Sqlite(store),
                pki: PkiStore::DataDir(dir.clone()),
                backups: BackupPlace::Files(dir),
                quiet: Quiet::Lock(quiet),
            })
        }
        Place::Kube(namespace) => open_kube(opts, namespace).await,
    }
}

async fn open_target(opts: &MigrateOptions) -> anyhow::Result<Opened> {
    match &opts.to {
        Place::Sqlite(dir) => {
            let dir = DataDir::new(dir);
            std::fs::create_dir_all(dir.root())
                .with_context(|| format!("creating data dir {}", dir.root().display()))?;
            crate::init::recover(&dir)?;
            if dir.store().exists() {
                bail!(
                    "{} exists: the target must hold no fleet",
                    dir.store().display()
                );
            }
            // What an earlier run that failed before its rename left.
            let path = migrating(&dir);
            for stale in [path.clone(), wal(&path, "-wal"), wal(&path, "-shm")] {
                match std::fs::remove_file(&stale) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", stale.display()));
                    }
                }
            }
            let store = SqliteStore::open(&path)
                .with_context(|| format!("creating the store {}", path.display()))?;
            Ok(Opened {
                store: Store::Sqlite(store),
                pki: PkiStore::DataDir(dir.clone()),
                backups: BackupPlace::Files(dir),
                quiet: Quiet::None,
            })
        }
        Place::Kube(namespace) => open_kube(opts, namespace).await,
    }
}

fn wal(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The kube store in `namespace`, opened under the leader Lease, taken as `migrate-<host>`:
/// a coordinator replica that still runs keeps it, and this waits until it is let go.
async fn open_kube(opts: &MigrateOptions, namespace: &str) -> anyhow::Result<Opened> {
    let client = crate::control_plane::connect(opts.kubeconfig.clone()).await?;
    let who = format!("migrate-{}", crate::server::host_name());
    let elector = Elector::new(
        client.clone(),
        lease::Config::new(namespace.to_string(), lease::identity(&who)),
    )?;
    eprintln!(
        "taking the leader Lease {namespace}/{} (waits while a coordinator leads: scale it to 0)",
        lease::LEASE_NAME
    );
    let leadership = elector
        .acquire()
        .await
        .with_context(|| format!("taking the leader Lease {namespace}/{}", lease::LEASE_NAME))?;
    let options = KubeOptions {
        namespace: namespace.to_string(),
        ..KubeOptions::default()
    };
    let store = KubeStore::open(client.clone(), options, leadership.fence())
        .await
        .with_context(|| format!("loading the fleet from namespace {namespace}"))?;
    Ok(Opened {
        store: Store::Kube(store),
        pki: PkiStore::Secret {
            client: client.clone(),
            namespace: namespace.to_string(),
        },
        backups: BackupPlace::Secrets(BackupSecrets::new(
            client.clone(),
            namespace.to_string(),
            leadership.fence(),
        )),
        quiet: Quiet::Lease(leadership, client),
    })
}

/// Refuses a target that holds fleet records (its store's export is not empty); a PKI there
/// is checked by [`put_pki`].
async fn check_empty(target: &Opened, to: &Place) -> anyhow::Result<()> {
    if let Store::Kube(store) = &target.store
        && let Some(what) = store
            .holds_records()
            .await
            .with_context(|| format!("reading {to}"))?
    {
        bail!("{to} is not empty ({what}); migrate only into an empty store");
    }
    let there = target
        .store
        .export()
        .await
        .with_context(|| format!("reading {to}"))?
        .counts();
    if there != Counts::default() {
        bail!("{to} already holds a fleet ({there}); migrate only into an empty store");
    }
    Ok(())
}

/// Writes the PKI to the target; one already there is accepted only when it is this very PKI
/// (a run that failed after it), since any other CA would orphan every agent's certificate.
async fn put_pki(home: &PkiStore, pki: &Pki, to: &Place) -> anyhow::Result<()> {
    let same = |there: &Pki| there.files() == pki.files();
    match home {
        PkiStore::DataDir(dir) => {
            if dir.ca_cert().exists() {
                let there = home.load().await?;
                if !same(&there) {
                    bail!(
                        "{} holds another fleet CA; the target must hold no fleet",
                        dir.root().display()
                    );
                }
                return Ok(());
            }
            crate::init::publish_pki(dir, pki)
        }
        PkiStore::Secret { client, namespace } => {
            match skoala_kubestore::secrets::create_pki(client, namespace, &pki.files()).await? {
                Created::Created => Ok(()),
                Created::AlreadyExists => {
                    let there = home.load().await?;
                    if !same(&there) {
                        bail!(
                            "{to} holds another fleet CA (Secret {namespace}/{}); the target \
                             must hold no fleet",
                            skoala_kubestore::secrets::PKI_SECRET
                        );
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Copies every values backup; returns how many.
async fn copy_backups(from: &BackupPlace, to: &BackupPlace) -> anyhow::Result<usize> {
    let all = match from {
        BackupPlace::Files(dir) => crate::backups::list_files(dir)?,
        BackupPlace::Secrets(secrets) => secrets.list().await?,
    };
    for (key, values) in &all {
        match to {
            BackupPlace::Files(dir) => crate::backups::write_file(dir, key, values)?,
            BackupPlace::Secrets(secrets) => {
                let sha = hex::encode(sha2::Sha256::digest(values));
                secrets
                    .put(key, values, &sha)
                    .await
                    .with_context(|| format!("storing backup {}", key.secret_name()))?;
            }
        }
    }
    Ok(all.len())
}

/// The counts a store opened anew on the target reads: what a coordinator started there sees.
async fn read_back(quiet: &Quiet, to: &Place) -> anyhow::Result<Counts> {
    Ok(reopen(quiet, to)
        .await?
        .export()
        .await
        .with_context(|| format!("reading {to} back"))?
        .counts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skoala_store::fixtures::{registration, token};
    use skoala_store::{
        IdentityStore, PlanRecord, PlanStore, RolloutRecord, TargetRecord, sqlite::SqliteStore,
    };

    #[test]
    fn a_place_is_a_store_and_where() {
        assert_eq!(
            "sqlite:/data".parse::<Place>(),
            Ok(Place::Sqlite("/data".into()))
        );
        assert_eq!(
            "kube:skoala-fleet".parse::<Place>(),
            Ok(Place::Kube("skoala-fleet".into()))
        );
        for bad in ["/data", "kube:", "etcd:x", ""] {
            assert!(bad.parse::<Place>().is_err(), "{bad}");
        }
    }

    /// A data dir `init` made, whose store holds a registered cluster, a values backup, and
    /// plan `p` with cluster `c1` in `phase`.
    async fn fleet(phase: skoala_plan::TargetPhase) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        crate::init::run(
            &dir,
            &crate::init::InitOptions {
                sans: Vec::new(),
                endpoint: None,
                overwrite_ca: false,
                if_missing: false,
                ca_ttl: std::time::Duration::from_secs(86_400),
                server_ttl: std::time::Duration::from_secs(86_400),
                admin_ttl: std::time::Duration::from_secs(86_400),
            },
        )
        .expect("init");
        let store = SqliteStore::open(&dir.store()).expect("store");
        let t = token(1);
        store.insert_token(t.clone()).await.expect("token");
        store
            .register(registration(&t, "c1", "01"))
            .await
            .expect("register");
        let plan = PlanRecord {
            name: "p".into(),
            document: "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: p}\nspec: {version: 1.2.3}\n".into(),
            rollout: RolloutRecord {
                head: "{}".into(),
                targets: vec![TargetRecord {
                    cluster_id: "c1".into(),
                    order: 0,
                    phase,
                    progress: "{}".into(),
                }],
            },
            active: true,
            created_ms: 1,
            updated_ms: 1,
        };
        store.put_plan(plan, Vec::new()).await.expect("plan");
        let key = skoala_kubestore::secrets::BackupKey {
            cluster_id: "c1".into(),
            release: "skoala-init".into(),
            generation: 3,
            operation_id: "p.c1.upgrade-1".into(),
        };
        crate::backups::write_file(&dir, &key, b"password: s3cret\n").expect("backup");
        tmp
    }

    fn between(from: &tempfile::TempDir, to: &std::path::Path) -> MigrateOptions {
        MigrateOptions {
            from: Place::Sqlite(from.path().into()),
            to: Place::Sqlite(to.into()),
            kubeconfig: None,
            allow_in_flight: false,
        }
    }

    /// The files of a data dir, with their contents.
    fn files(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    out.push((p, bytes));
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_data_dir_moves_whole_pki_backups_and_records() {
        let source = fleet(skoala_plan::TargetPhase::Succeeded).await;
        let to = tempfile::tempdir().expect("tempdir");
        let done = run(between(&source, to.path())).await.expect("migrate");
        assert_eq!(done.read, done.found);
        assert_eq!(
            (done.found.clusters, done.found.plans, done.backups),
            (1, 1, 1)
        );
        let target = DataDir::new(to.path());
        for name in [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "admin.yaml",
        ] {
            assert_eq!(
                std::fs::read(target.root().join(name)).expect(name),
                std::fs::read(source.path().join(name)).expect(name),
                "{name} moves verbatim"
            );
        }
        assert!(
            !migrating(&target).exists(),
            "the store was renamed into place"
        );
        assert_eq!(
            crate::backups::list_files(&target).expect("backups").len(),
            1
        );
    }

    #[tokio::test]
    async fn an_in_flight_plan_is_refused_unless_allowed_and_nothing_is_written() {
        let source = fleet(skoala_plan::TargetPhase::Running).await;
        let to = tempfile::tempdir().expect("tempdir");
        let refused = run(between(&source, to.path()))
            .await
            .expect_err("in flight");
        let why = format!("{refused:#}");
        assert!(
            why.contains("plan p has 1 operation(s) in flight") && why.contains("pause"),
            "{why}"
        );
        assert!(
            files(to.path()).is_empty(),
            "nothing written: {:?}",
            files(to.path())
        );
        let allowed = MigrateOptions {
            allow_in_flight: true,
            ..between(&source, to.path())
        };
        run(allowed).await.expect("allowed");
    }

    #[tokio::test]
    async fn a_target_that_holds_a_fleet_is_refused_and_neither_side_changes() {
        let source = fleet(skoala_plan::TargetPhase::Succeeded).await;
        let other = fleet(skoala_plan::TargetPhase::Succeeded).await;
        let (before_source, before_other) = (files(source.path()), files(other.path()));
        let refused = run(between(&source, other.path()))
            .await
            .expect_err("a fleet is there");
        assert!(
            format!("{refused:#}").contains("the target must hold no fleet"),
            "{refused:#}"
        );
        assert_eq!(files(other.path()), before_other, "the target is as it was");
        let after: Vec<_> = files(source.path())
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains("store.db"))
            .collect();
        let before: Vec<_> = before_source
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains("store.db"))
            .collect();
        assert_eq!(
            after, before,
            "the source's PKI and backups are as they were"
        );
        let store = SqliteStore::open(&DataDir::new(source.path()).store()).expect("open");
        assert_eq!(store.export().await.expect("export").counts().clusters, 1);
    }
}
