//! Running the coordinator's tasks with the upgrade executor (`skoala_upgrade::Executor`).
//!
//! A task arrives on the session; the agent answers at once (`TaskAccepted`, or a `TaskResult`
//! REFUSED when it cannot even start) and runs the executor in the background. Progress,
//! the values backup and the result go into an outbox that outlives sessions, so a task keeps
//! running across a reconnect and its messages leave on whichever session is up.
//!
//! Delivery is at least once: the coordinator re-sends a task it has no result for, and a
//! re-delivered operation id is harmless — while it runs it is ignored here, and afterwards the
//! executor's operation record makes a re-run report the recorded outcome instead of upgrading
//! again.
//!
//! Kinds: UPGRADE ([`Executor::run`]), ROLLBACK ([`Executor::rollback`], to
//! `rollback_to_revision` or the previous deployed revision) and PREFLIGHT
//! ([`Executor::preflight`]: SUCCEEDED or REFUSED with the reason; changes nothing). A relayed
//! chart is fetched over the session first ([`crate::relay`]).
//!
//! The values backup (invariant 1) is uploaded the moment the executor has stored it in the
//! cluster, and the executor waits for the coordinator's `BackupStored` before any CRD or
//! `helm upgrade` step: no acknowledgement within [`BACKUP_ACK_TIMEOUT`], or a refusal, fails
//! the operation with nothing changed but the backup Secret.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skoala_proto::v1::{
    self as pb, BackupStored, BackupUpload, ChartChunk, Task, TaskAccepted, TaskKind, TaskOutcome,
    TaskResult, agent_message::Body,
};
use skoala_upgrade::inventory::{self, TrackedRelease};
use skoala_upgrade::record::{RecordPhase, RecordStore};
use skoala_upgrade::{
    Backup, ChartSource, CrdPolicy, Executor, Helm, Operation, ProgressEvent, ReleaseSpec,
};
use tokio::sync::{mpsc, oneshot};

use crate::relay::ChartCache;

/// How long the executor waits for the coordinator to confirm a values backup is stored before
/// it gives up on the operation (nothing changed but the backup Secret in the cluster).
pub const BACKUP_ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the Hello waits for the operation records ([`TaskRunner::unfinished`]): one GET
/// per tracked release, which a healthy API server answers in milliseconds.
pub const RECORDS_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many messages may wait for a session. Progress is small and tasks are rare; if the
/// coordinator is away this long, the oldest progress is what matters least.
const OUTBOX: usize = 256;

/// Default bound for `helm upgrade --wait` when the task gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the executor needs: the cluster (as a kube config: each task builds its own client on
/// its own thread) and helm.
#[derive(Clone)]
pub struct ExecutorParts {
    /// How to reach this cluster's API server.
    pub kube: kube::Config,
    /// The helm binary, its major version detected once.
    pub helm: Helm,
}

/// Runs a task in place of the upgrade executor: it gets the task and the outbox, and must put
/// the task's progress and exactly one `TaskResult` into the outbox. The load generator uses
/// this for simulated upgrades; the real agent never does.
pub type CustomRun =
    Arc<dyn Fn(Task, mpsc::Sender<Body>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Accepts tasks and runs them; see the module docs.
#[derive(Clone)]
pub struct TaskRunner {
    /// `Err(why)`: this agent cannot run tasks (no helm, ...); every task is refused with it.
    executor: Result<ExecutorParts, String>,
    /// Replaces the executor when set (see [`CustomRun`]).
    custom: Option<CustomRun>,
    outbox: mpsc::Sender<Body>,
    running: Arc<Mutex<BTreeSet<String>>>,
    /// For reading operation records (see [`TaskRunner::unfinished`]); `None` in load tests.
    records: Option<(kube::Client, Vec<TrackedRelease>)>,
    /// Relayed charts, by digest.
    charts: Arc<ChartCache>,
    /// Backups uploaded and not yet acknowledged: (operation id, generation) → the upload and
    /// the waiting executor. Kept so a new session can send them again: the coordinator may
    /// have died between storing one and confirming it. Bounded by the running tasks (each
    /// waits for one acknowledgement at a time, and removes its entry when it stops waiting).
    acks: Arc<Mutex<PendingAcks>>,
}

/// Uploaded backups awaiting `BackupStored`, by (operation id, generation).
type PendingAcks = HashMap<(String, i32), PendingAck>;

/// One upload awaiting `BackupStored`: what to send again, and who waits for the answer.
struct PendingAck {
    upload: BackupUpload,
    waiter: oneshot::Sender<Result<(), String>>,
}

/// What a task asks for, checked: the executor's spec and the kind's extras.
#[derive(Debug)]
pub struct Planned {
    /// Upgrade, rollback or preflight.
    pub kind: TaskKind,
    /// The release, chart source, version and values, validated.
    pub spec: ReleaseSpec,
    /// A relayed chart to fetch first: (sha256, size). The spec's source is then an archive
    /// whose path is filled in once the chart is in the cache.
    pub relay: Option<(String, u64)>,
    /// ROLLBACK: the revision to return to (`None`: the previous deployed one).
    pub rollback_to: Option<i32>,
}

impl TaskRunner {
    /// A runner and the receiving end of its outbox (for the session to drain). `records`
    /// names the cluster and the releases whose operation records Hello reports.
    pub fn new(
        executor: Result<ExecutorParts, String>,
        records: Option<(kube::Client, Vec<TrackedRelease>)>,
    ) -> (Self, mpsc::Receiver<Body>) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        (
            Self {
                executor,
                custom: None,
                outbox,
                running: Arc::default(),
                records,
                charts: ChartCache::new(ChartCache::default_dir()),
                acks: Arc::default(),
            },
            rx,
        )
    }

    /// Keeps relayed charts in `dir` instead of [`ChartCache::default_dir`].
    pub fn with_chart_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.charts = ChartCache::new(dir);
        self
    }

    /// Digests of the relayed charts this agent has cached (for Hello).
    pub fn cached_charts(&self) -> Vec<String> {
        self.charts.cached()
    }

    /// A new session is up: ask again for relayed charts whose transfer the last one cut, and
    /// send again the backups not yet confirmed (the coordinator confirms an identical repeat).
    pub fn resume_transfers(&self) {
        self.charts.resume(&self.outbox);
        let pending: Vec<BackupUpload> = self
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| p.upload.clone())
            .collect();
        for upload in pending {
            tracing::info!(operation = %upload.operation_id, generation = upload.generation, "values backup not confirmed yet; sending it again");
            let _ = self.outbox.try_send(Body::BackupUpload(upload));
        }
    }

    /// A piece of a relayed chart arrived on the session.
    pub fn chart_chunk(&self, chunk: ChartChunk) {
        self.charts.chunk(chunk);
    }

    /// Fetches a relayed chart into the cache (or finds it there), exactly as a task does before
    /// it runs; the HTTP/2 window benchmark (`skoala-loadgen relay-fetch`) times this path.
    pub async fn fetch_chart(&self, sha256: &str, size: u64) -> Result<PathBuf, String> {
        self.charts.get(sha256, size, &self.outbox).await
    }

    /// The coordinator says whether it stored an uploaded backup.
    pub fn backup_stored(&self, ack: BackupStored) {
        let waiter = self
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ack.operation_id.clone(), ack.generation));
        match waiter {
            Some(PendingAck { waiter: w, .. }) => {
                let _ = w.send(if ack.error.is_empty() {
                    Ok(())
                } else {
                    Err(format!("the coordinator did not store it: {}", ack.error))
                });
            }
            None => {
                tracing::debug!(operation = %ack.operation_id, "backup acknowledgement nobody waits for")
            }
        }
    }

    /// A runner whose tasks are run by `run` instead of the executor, on the caller's tokio
    /// runtime. Acceptance and re-delivery work as for the executor.
    pub fn custom(run: CustomRun) -> (Self, mpsc::Receiver<Body>) {
        let (mut runner, rx) = Self::new(Err("custom runner".into()), None);
        runner.custom = Some(run);
        (runner, rx)
    }

    /// Operations recorded in the cluster as still running that this process is not running:
    /// a previous agent died mid-task. Hello lists them so the coordinator re-sends them, and
    /// the executor then recovers the release (invariant 2: never left stuck).
    ///
    /// Read within [`RECORDS_READ_TIMEOUT`]: the Hello waits for this list, so a hung API
    /// server would otherwise keep the agent from reconnecting at all. Past the deadline the
    /// list holds what was read by then, and a warning says so.
    pub async fn unfinished(&self) -> Vec<String> {
        self.unfinished_within(RECORDS_READ_TIMEOUT).await
    }

    async fn unfinished_within(&self, deadline: Duration) -> Vec<String> {
        let mut out = Vec::new();
        if tokio::time::timeout(deadline, self.read_unfinished(&mut out))
            .await
            .is_err()
        {
            tracing::warn!(
                listed = out.len(),
                "the operation records could not all be read within {deadline:?} (API server slow or hung); the Hello lists only the unfinished operations read by then"
            );
        }
        out
    }

    /// Appends to `out` as each record is read, so a deadline keeps what was found.
    async fn read_unfinished(&self, out: &mut Vec<String>) {
        let Some((client, tracked)) = &self.records else {
            return;
        };
        for t in tracked {
            let mut store = RecordStore::new(client, &t.namespace, &t.release);
            match store.load().await {
                Ok(Some(r)) if r.phase == RecordPhase::Running => {
                    if !self.lock().contains(&r.operation_id) {
                        out.push(r.operation_id);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(release = %t.release, error = %e, "cannot read the operation record");
                }
            }
        }
    }

    /// Handles a task; returns the immediate answer, if any.
    pub fn accept(&self, task: Task) -> Option<Body> {
        let id = task.operation_id.clone();
        if id.is_empty() {
            return Some(refused(&task, "the task has no operation id"));
        }
        if self.lock().contains(&id) {
            tracing::info!(operation = %id, "task re-delivered while running; ignoring the copy");
            return None;
        }
        if let Some(run) = &self.custom {
            self.lock().insert(id.clone());
            let accepted = Body::TaskAccepted(TaskAccepted {
                operation_id: id.clone(),
            });
            let work = run(task, self.outbox.clone());
            let this = self.clone();
            tokio::spawn(async move {
                work.await;
                this.lock().remove(&id);
            });
            return Some(accepted);
        }
        let executor = match &self.executor {
            Ok(parts) => parts.clone(),
            Err(why) => return Some(refused(&task, why)),
        };
        if task.start_deadline_unix > 0
            && jiff::Timestamp::now().as_second() > task.start_deadline_unix
        {
            return Some(refused(
                &task,
                "the task's start deadline has passed; not starting it",
            ));
        }
        let planned = match plan(&task) {
            Ok(p) => p,
            Err(why) => return Some(refused(&task, &why)),
        };
        self.lock().insert(id.clone());
        tracing::info!(operation = %id, kind = planned.kind.as_str_name(), release = %planned.spec.release,
            version = %planned.spec.version, "task accepted");
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("task-{id}"))
            .spawn(move || {
                this.run(executor, id.clone(), planned);
                this.lock().remove(&id);
            });
        if let Err(e) = spawned {
            self.lock().remove(&task.operation_id);
            return Some(refused(&task, &format!("cannot start a task thread: {e}")));
        }
        Some(Body::TaskAccepted(TaskAccepted {
            operation_id: task.operation_id,
        }))
    }

    /// Runs one task on its own thread with its own single-threaded runtime and kube client.
    ///
    /// Upgrades are rare and long (minutes of `helm upgrade --wait`); a thread of their own
    /// keeps them off the session's runtime and does not require the executor's future to be
    /// `Send`. The kube client is built here so its connections belong to this runtime.
    fn run(&self, parts: ExecutorParts, id: String, planned: Planned) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = self.outbox.blocking_send(Body::TaskResult(TaskResult {
                    operation_id: id,
                    outcome: TaskOutcome::Failed as i32,
                    message: format!("cannot start a runtime for the task: {e}"),
                    ..TaskResult::default()
                }));
                return;
            }
        };
        runtime.block_on(self.execute(parts, id, planned));
    }

    async fn execute(&self, parts: ExecutorParts, id: String, planned: Planned) {
        let Planned {
            kind,
            mut spec,
            relay,
            rollback_to,
        } = planned;
        if let Some((sha256, size)) = relay {
            match self.charts.get(&sha256, size, &self.outbox).await {
                Ok(path) => spec.source = ChartSource::Archive { path, sha256 },
                Err(why) => {
                    tracing::warn!(operation = %id, reason = %why, "refusing the task: no usable relayed chart");
                    let _ = self
                        .outbox
                        .send(Body::TaskResult(TaskResult {
                            operation_id: id,
                            outcome: TaskOutcome::Refused as i32,
                            failed_step: "chart".into(),
                            message: why,
                            ..TaskResult::default()
                        }))
                        .await;
                    return;
                }
            }
        }
        let client = match kube::Client::try_from(parts.kube) {
            Ok(c) => c,
            Err(e) => {
                let _ = self
                    .outbox
                    .send(Body::TaskResult(TaskResult {
                        operation_id: id,
                        outcome: TaskOutcome::Failed as i32,
                        message: format!("cannot build a kubernetes client: {e}"),
                        ..TaskResult::default()
                    }))
                    .await;
                return;
            }
        };
        let executor =
            Executor::new(client.clone(), parts.helm).with_backup_upload(self.uploader(&id, &spec));
        let (progress, mut events) = mpsc::channel::<ProgressEvent>(64);
        let outbox = self.outbox.clone();
        let forward = async move {
            while let Some(event) = events.recv().await {
                // A full outbox (coordinator away for long) drops progress, never results.
                let _ = outbox.try_send(Body::StepProgress(skoala_upgrade::wire::step_progress(
                    &event,
                )));
            }
        };
        let operation = Operation::new(&id);
        let work = async {
            match kind {
                TaskKind::Preflight => executor.preflight(&operation, &spec, progress).await,
                TaskKind::Rollback => {
                    executor
                        .rollback(&operation, &spec, rollback_to, progress)
                        .await
                }
                _ => executor.run(&operation, &spec, progress).await,
            }
        };
        let (result, ()) = tokio::join!(work, forward);
        let result_msg = match result {
            Ok(report) => {
                tracing::info!(operation = %id, outcome = report.outcome.as_str(), "task finished");
                TaskResult {
                    release_after: release_after(&client, &spec).await,
                    ..skoala_upgrade::wire::task_result(&report)
                }
            }
            Err(e) => {
                tracing::error!(operation = %id, error = %e, "task could not run");
                TaskResult {
                    operation_id: id.clone(),
                    outcome: TaskOutcome::Failed as i32,
                    message: e.to_string(),
                    ..TaskResult::default()
                }
            }
        };
        let _ = self.outbox.send(Body::TaskResult(result_msg)).await;
    }

    /// The executor's backup upload: send the backup, wait for the coordinator to store it.
    fn uploader(&self, id: &str, spec: &ReleaseSpec) -> skoala_upgrade::BackupUpload {
        let (outbox, acks) = (self.outbox.clone(), self.acks.clone());
        let (id, release) = (id.to_string(), spec.release.clone());
        Arc::new(move |backup: Backup| {
            let (outbox, acks, id, release) =
                (outbox.clone(), acks.clone(), id.clone(), release.clone());
            Box::pin(async move {
                let generation = i32::try_from(backup.generation).unwrap_or(i32::MAX);
                let (waiter, rx) = oneshot::channel();
                let upload = BackupUpload {
                    operation_id: id.clone(),
                    release,
                    revision: 0,
                    values_yaml: backup.values,
                    sha256: backup.sha256,
                    generation,
                };
                acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    (id.clone(), generation),
                    PendingAck {
                        upload: upload.clone(),
                        waiter,
                    },
                );
                if outbox.send(Body::BackupUpload(upload)).await.is_err() {
                    return Err("the agent is shutting down".to_string());
                }
                tracing::info!(operation = %id, generation, "values backup sent; waiting for the coordinator to store it");
                let result = match tokio::time::timeout(BACKUP_ACK_TIMEOUT, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err("the acknowledgement was lost".to_string()),
                    Err(_) => Err(format!(
                        "the coordinator did not confirm storing it within {BACKUP_ACK_TIMEOUT:?}"
                    )),
                };
                acks.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(id, generation));
                result
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The release as it is now, for the result (the coordinator's view of "one version").
async fn release_after(client: &kube::Client, spec: &ReleaseSpec) -> Option<pb::ReleaseInventory> {
    let tracked = TrackedRelease {
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        image_tag_keys: spec.image_tag_keys.clone(),
    };
    match inventory::read_release(client, &tracked).await {
        Ok(Some(info)) => skoala_upgrade::wire::inventory(&[info]).releases.pop(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the release after the task");
            None
        }
    }
}

fn refused(task: &Task, why: &str) -> Body {
    tracing::warn!(operation = %task.operation_id, reason = why, "refusing a task");
    Body::TaskResult(TaskResult {
        operation_id: task.operation_id.clone(),
        outcome: TaskOutcome::Refused as i32,
        message: why.to_string(),
        ..TaskResult::default()
    })
}

/// Checks a task and turns it into the executor's terms; `Err` says why this agent cannot run
/// it. A rollback needs neither chart source nor version (it returns to a recorded revision).
pub fn plan(task: &Task) -> Result<Planned, String> {
    let kind = match TaskKind::try_from(task.kind) {
        Ok(k @ (TaskKind::Upgrade | TaskKind::Preflight | TaskKind::Rollback)) => k,
        Ok(other) => {
            return Err(format!(
                "task kind {} is not supported by this agent",
                other.as_str_name()
            ));
        }
        Err(_) => return Err(format!("unknown task kind {}", task.kind)),
    };
    let r = task.release.as_ref().ok_or("the task names no release")?;
    let mut relay = None;
    let source = match r.source.as_ref().and_then(|s| s.source.as_ref()) {
        Some(pb::chart_source::Source::Repository(repo)) => ChartSource::Repository {
            name: repo.name.clone(),
            url: repo.url.clone(),
        },
        Some(pb::chart_source::Source::Relay(chart)) => {
            relay = Some((chart.sha256.clone(), chart.size));
            // The path is known once the chart is in the cache (TaskRunner::execute).
            ChartSource::Archive {
                path: PathBuf::new(),
                sha256: chart.sha256.clone(),
            }
        }
        // Never used by a rollback (validate_names ignores it).
        None if kind == TaskKind::Rollback => ChartSource::Repository {
            name: "unused".into(),
            url: "http://unused.invalid".into(),
        },
        None => return Err("the task names no chart source".into()),
    };
    if kind == TaskKind::Rollback {
        relay = None;
    }
    // skoala-init gets the documented defaults (its tag keys per version, the immutable Jobs);
    // whatever the task names explicitly wins.
    let mut spec = if r.release == "skoala-init" && r.namespace == "skoala-system" {
        ReleaseSpec::skoala_init(source, &r.version)
    } else {
        ReleaseSpec::new(&r.release, &r.namespace, source, &r.version)
    };
    if !r.chart_name.is_empty() {
        spec.chart = r.chart_name.clone();
    }
    if !r.image_tag_keys.is_empty() {
        spec.image_tag_keys = r.image_tag_keys.clone();
    }
    if !r.delete_jobs.is_empty() {
        spec.delete_jobs = r.delete_jobs.clone();
    }
    spec.extra_values = set_values(&r.set_values)?;
    spec.crd_policy = match pb::CrdPolicy::try_from(r.crd_policy) {
        Ok(pb::CrdPolicy::Unspecified | pb::CrdPolicy::BeforeUpgrade) => CrdPolicy::Before,
        Ok(pb::CrdPolicy::AfterUpgrade) => CrdPolicy::After,
        Ok(pb::CrdPolicy::Skip) => CrdPolicy::Skip,
        Err(_) => return Err(format!("unknown CRD policy {}", r.crd_policy)),
    };
    spec.rollback_on_failure = !r.keep_failed_release;
    spec.chart_sha256 = (!r.chart_sha256.is_empty()).then(|| r.chart_sha256.to_ascii_lowercase());
    spec.timeout = match r.timeout_seconds {
        s if s > 0 => Duration::from_secs(s as u64),
        _ => DEFAULT_TIMEOUT,
    };
    // Never quote the spec in errors: set_values may hold secrets.
    if kind == TaskKind::Rollback {
        spec.validate_names().map_err(|e| e.to_string())?;
    } else {
        spec.validate().map_err(|e| e.to_string())?;
    }
    Ok(Planned {
        kind,
        spec,
        relay,
        rollback_to: (task.rollback_to_revision > 0).then_some(task.rollback_to_revision),
    })
}

/// `--set`-style dotted keys into a nested YAML mapping (`a.b=c` → `{a: {b: c}}`), as strings.
fn set_values(values: &HashMap<String, String>) -> Result<Option<serde_yaml::Mapping>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut root = serde_yaml::Mapping::new();
    let mut keys: Vec<&String> = values.keys().collect();
    keys.sort();
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("set value key {key:?} has an empty part"));
        }
        let mut at = &mut root;
        for part in &parts[..parts.len() - 1] {
            let entry = at
                .entry(serde_yaml::Value::from(*part))
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            at = entry
                .as_mapping_mut()
                .ok_or_else(|| format!("set value key {key:?} conflicts with another key"))?;
        }
        let leaf = serde_yaml::Value::from(parts[parts.len() - 1]);
        if at.contains_key(&leaf) {
            return Err(format!("set value key {key:?} conflicts with another key"));
        }
        at.insert(leaf, serde_yaml::Value::String(values[key].clone()));
    }
    Ok(Some(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that accepts connections and never answers (kube's own read timeout is
    /// minutes): the Hello's list must still come within its deadline, empty.
    #[tokio::test]
    async fn unfinished_operations_are_listed_within_a_deadline_when_the_api_server_hangs() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let config = kube::Config::new(url.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let tracked = TrackedRelease {
            release: "skoala-init".into(),
            namespace: "skoala-system".into(),
            image_tag_keys: Vec::new(),
        };
        let (runner, _outbox) =
            TaskRunner::new(Err("no helm".into()), Some((client, vec![tracked])));

        let listed = tokio::time::timeout(
            Duration::from_secs(20),
            runner.unfinished_within(Duration::from_millis(300)),
        )
        .await
        .expect("the list came within the deadline, not after kube's read timeout");
        assert!(listed.is_empty(), "{listed:?}");
        held.abort();
    }

    fn task(kind: TaskKind, source: Option<pb::chart_source::Source>) -> Task {
        Task {
            operation_id: "op-1".into(),
            kind: kind as i32,
            release: Some(pb::ReleaseSpec {
                release: "skoala-init".into(),
                namespace: "skoala-system".into(),
                chart_name: "skoala-init".into(),
                version: "0.19.2".into(),
                source: Some(pb::ChartSource { source }),
                set_values: HashMap::from([
                    ("global.imageRegistry".into(), "registry.local".into()),
                    ("db.password".into(), "hunter2".into()),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The coordinator may die between storing a backup and confirming it: the next session
    /// sends the unconfirmed upload again, and its confirmation reaches the waiting executor.
    #[tokio::test]
    async fn an_unconfirmed_backup_is_sent_again_on_a_new_session() {
        let cache = tempfile::tempdir().expect("tempdir");
        let (runner, mut outbox) = TaskRunner::new(Err("no helm".into()), None);
        let runner = runner.with_chart_cache(cache.path());
        let spec = plan(&task(TaskKind::Upgrade, repo())).expect("plan").spec;
        let upload = runner.uploader("op-1", &spec);
        let waiting = tokio::spawn(upload(Backup {
            secret: "skoala-init-values-1".into(),
            generation: 1,
            sha256: "ab".repeat(32),
            values: b"a: 1\n".to_vec(),
        }));
        let Some(Body::BackupUpload(first)) = outbox.recv().await else {
            panic!("the upload was not sent");
        };

        runner.resume_transfers();
        let again = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
        let Ok(Some(Body::BackupUpload(again))) = again else {
            panic!("the unconfirmed upload was not sent again");
        };
        assert_eq!(again, first);

        runner.backup_stored(BackupStored {
            operation_id: "op-1".into(),
            generation: 1,
            sha256: first.sha256.clone(),
            error: String::new(),
        });
        let stored = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the executor got the confirmation")
            .expect("task");
        assert_eq!(stored, Ok(()));
        runner.resume_transfers();
        assert!(
            outbox.try_recv().is_err(),
            "a confirmed upload is not sent again"
        );
    }

    fn repo() -> Option<pb::chart_source::Source> {
        Some(pb::chart_source::Source::Repository(pb::ChartRepository {
            name: "skoala".into(),
            url: "https://release.daocloud.io/chartrepo/skoala".into(),
        }))
    }

    #[test]
    fn an_upgrade_task_becomes_the_documented_spec() {
        let spec = plan(&task(TaskKind::Upgrade, repo())).expect("spec").spec;
        assert_eq!(spec.release, "skoala-init");
        assert_eq!(spec.version, "0.19.2");
        assert_eq!(spec.tag(), "v0.19.2");
        assert_eq!(
            spec.image_tag_keys.len(),
            3,
            "seata-operator only from 0.20"
        );
        assert_eq!(spec.delete_jobs.len(), 2, "the documented pre-upgrade step");
        assert_eq!(spec.crd_policy, CrdPolicy::Before);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        let values = serde_yaml::to_string(&spec.extra_values).expect("yaml");
        assert!(values.contains("imageRegistry: registry.local"), "{values}");
        assert!(values.contains("password: hunter2"), "{values}");
        assert!(
            spec.rollback_on_failure,
            "unset, a failed upgrade rolls back"
        );
        let mut keep = task(TaskKind::Upgrade, repo());
        keep.release.as_mut().expect("release").keep_failed_release = true;
        assert!(!plan(&keep).expect("spec").spec.rollback_on_failure);
        assert_eq!(spec.chart_sha256, None, "unset: not pinned");
        let mut pinned = task(TaskKind::Upgrade, repo());
        pinned.release.as_mut().expect("release").chart_sha256 = "AB".repeat(32);
        assert_eq!(
            plan(&pinned).expect("spec").spec.chart_sha256,
            Some("ab".repeat(32)),
            "the plan's pin reaches the executor"
        );
        pinned.release.as_mut().expect("release").chart_sha256 = "not-a-digest".into();
        assert!(plan(&pinned).is_err(), "a malformed pin is refused");
    }

    #[test]
    fn unsupported_tasks_are_refused_with_a_reason_and_no_values() {
        for (t, want) in [
            (task(TaskKind::Unspecified, repo()), "TASK_KIND_UNSPECIFIED"),
            (task(TaskKind::Upgrade, None), "no chart source"),
            (task(TaskKind::Preflight, None), "no chart source"),
        ] {
            let err = plan(&t).expect_err("refused");
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn relayed_rollback_and_preflight_tasks_are_planned() {
        let digest = "ab".repeat(32);
        let relay = Some(pb::chart_source::Source::Relay(pb::RelayedChart {
            sha256: digest.clone(),
            size: 1234,
        }));
        let p = plan(&task(TaskKind::Upgrade, relay)).expect("relay");
        assert_eq!(p.relay, Some((digest.clone(), 1234)));
        assert!(matches!(&p.spec.source, ChartSource::Archive { sha256, .. } if *sha256 == digest));

        let mut rollback = task(TaskKind::Rollback, None);
        rollback.rollback_to_revision = 3;
        if let Some(r) = rollback.release.as_mut() {
            r.version.clear();
        }
        let p = plan(&rollback).expect("rollback needs no source or version");
        assert_eq!(
            (p.kind, p.rollback_to, p.relay),
            (TaskKind::Rollback, Some(3), None)
        );
        let p = plan(&task(TaskKind::Rollback, repo())).expect("rollback");
        assert_eq!(
            p.rollback_to, None,
            "0 means the previous deployed revision"
        );

        let p = plan(&task(TaskKind::Preflight, repo())).expect("preflight");
        assert_eq!(p.kind, TaskKind::Preflight);
    }

    #[test]
    fn conflicting_set_values_are_refused() {
        let values = HashMap::from([
            ("a.b".to_string(), "1".to_string()),
            ("a".into(), "2".into()),
        ]);
        assert!(set_values(&values).is_err());
    }
}
