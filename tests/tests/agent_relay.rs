//! The chart relay, the backup-before-upgrade handshake, and rollback/preflight tasks: the real
//! `skoala-agent` process, real helm (both majors) against emulated clusters.
//!
//! The coordinator cannot send tasks on its own yet (its orchestrator is being built), so the
//! far end of the session is a stand-in gateway, as in `agent_tasks.rs` — but it answers chart
//! requests and stores backups with the coordinator's own code (`skoala_coordinator::relay`,
//! `skoala_coordinator::backups`), in a data dir of its own. Replace it with the coordinator
//! once plans dispatch these tasks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::pki::FleetCa;
use skoala_coordinator::{backups, relay};
use skoala_e2e::charts::{PASSWORD, UpgradeFixture, custom_values, start_repo};
use skoala_e2e::tools::{helm_versions, our_bin, tool};
use skoala_e2e::{stand_in, wait};
use skoala_proto::v1::agent_gateway_server::AgentGateway;
use skoala_proto::v1::{
    AgentMessage, ChartChunk, ChartRepository, ChartSource, CoordinatorMessage, RegisterRequest,
    RegisterResponse, RelayedChart, ReleaseSpec, StepPhase, Task, TaskKind, TaskOutcome,
    TaskResult, agent_message::Body, chart_source, coordinator_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const TIMEOUT: Duration = Duration::from_secs(240);

/// What the stand-in saw, how it behaves, and how to reach the current session.
#[derive(Default)]
struct Shared {
    received: Mutex<Vec<AgentMessage>>,
    to_agent: Mutex<Option<mpsc::Sender<Result<CoordinatorMessage, Status>>>>,
    /// The stand-in's data dir (relayed charts, stored backups).
    data_dir: Mutex<Option<DataDir>>,
    /// Serve relayed charts with one byte flipped.
    corrupt: AtomicBool,
    /// Hold every backup acknowledgement until notified.
    hold_acks: AtomicBool,
    release_acks: Notify,
}

struct StandIn {
    ca: Arc<FleetCa>,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AgentGateway for StandIn {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        stand_in::register(&self.ca, request)
    }

    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        *self.shared.to_agent.lock().expect("lock") = Some(tx.clone());
        let shared = self.shared.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let cluster = msg.cluster_id.clone();
                let body = msg.body.clone();
                shared.received.lock().expect("lock").push(msg);
                let dir = shared.data_dir.lock().expect("lock").clone();
                let Some(dir) = dir else { continue };
                match body {
                    Some(Body::ChartRequest(req)) if shared.corrupt.load(Ordering::SeqCst) => {
                        let mut bytes = relay::load(&dir, &req.sha256).expect("the chart");
                        let middle = bytes.len() / 2;
                        bytes[middle] ^= 0x01;
                        let chunk = ChartChunk {
                            sha256: req.sha256,
                            offset: 0,
                            data: bytes,
                            last: true,
                            error: String::new(),
                        };
                        let _ = tx
                            .send(Ok(CoordinatorMessage {
                                body: Some(coordinator_message::Body::ChartChunk(chunk)),
                            }))
                            .await;
                    }
                    Some(Body::ChartRequest(req)) => {
                        let (dir, tx) = (dir.clone(), tx.clone());
                        tokio::spawn(async move { relay::answer(&dir, &req, &tx).await });
                    }
                    Some(Body::BackupUpload(upload)) => {
                        let ack = backups::store(&dir, &cluster, &upload);
                        let (tx, shared) = (tx.clone(), shared.clone());
                        tokio::spawn(async move {
                            if shared.hold_acks.load(Ordering::SeqCst) {
                                shared.release_acks.notified().await;
                            }
                            let _ = tx
                                .send(Ok(CoordinatorMessage {
                                    body: Some(coordinator_message::Body::BackupStored(ack)),
                                }))
                                .await;
                        });
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Shared {
    fn bodies(&self) -> Vec<Body> {
        let received = self.received.lock().expect("lock");
        received.iter().filter_map(|m| m.body.clone()).collect()
    }

    fn result_of(&self, op: &str) -> Option<TaskResult> {
        self.bodies().into_iter().find_map(|b| match b {
            Body::TaskResult(r) if r.operation_id == op => Some(r),
            _ => None,
        })
    }

    fn results_of(&self, op: &str) -> Vec<TaskResult> {
        self.bodies()
            .into_iter()
            .filter_map(|b| match b {
                Body::TaskResult(r) if r.operation_id == op => Some(r),
                _ => None,
            })
            .collect()
    }

    fn steps_of(&self, op: &str) -> Vec<(String, i32)> {
        self.bodies()
            .into_iter()
            .filter_map(|b| match b {
                Body::StepProgress(p) if p.operation_id == op => Some((p.step, p.phase)),
                _ => None,
            })
            .collect()
    }

    async fn send(&self, task: Task) {
        let tx = self
            .to_agent
            .lock()
            .expect("lock")
            .clone()
            .expect("a session is open");
        tx.send(Ok(CoordinatorMessage {
            body: Some(coordinator_message::Body::Task(task)),
        }))
        .await
        .expect("send the task");
    }
}

fn task(op: &str, kind: TaskKind, version: &str, source: Option<chart_source::Source>) -> Task {
    Task {
        operation_id: op.into(),
        kind: kind as i32,
        release: Some(ReleaseSpec {
            release: "skoala-init".into(),
            namespace: "skoala-system".into(),
            chart_name: "skoala-init".into(),
            version: version.into(),
            source: Some(ChartSource { source }),
            timeout_seconds: 120,
            ..Default::default()
        }),
        start_deadline_unix: now_unix() + 600,
        ..Default::default()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn repo_source(url: &str) -> Option<chart_source::Source> {
    Some(chart_source::Source::Repository(ChartRepository {
        name: "skoala".into(),
        url: url.into(),
    }))
}

fn relay_source(chart: &relay::RelayedChart) -> Option<chart_source::Source> {
    Some(chart_source::Source::Relay(RelayedChart {
        sha256: chart.sha256.clone(),
        size: chart.size,
    }))
}

/// An emulated cluster with skoala-init 0.19.0 installed by hand (with a password in its
/// values), the stand-in gateway, and the real agent using `helm`.
struct Setup {
    fx: UpgradeFixture,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    agent: tokio::process::Child,
    log: PathBuf,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Setup {
    async fn new(label: &'static str, helm: &std::path::Path, name: &str) -> Setup {
        let repo = start_repo().await.expect("chart repository");
        let fx = UpgradeFixture::start(label, helm, skoala_sim::ClusterConfig::new(name))
            .await
            .expect("fixture");
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await
            .expect("install 0.19.0");
        drop(repo);

        let dir = tempfile::tempdir().expect("tmp");
        let ca_file = dir.path().join("ca.pem");
        let shared = Arc::new(Shared::default());
        *shared.data_dir.lock().expect("lock") = Some(DataDir::new(dir.path().join("data")));
        let gateway = stand_in::serve(&ca_file, |ca| StandIn {
            ca,
            shared: shared.clone(),
        })
        .await
        .expect("serve the stand-in gateway");
        let (addr, serving) = (gateway.addr, gateway.task);

        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let agent = tokio::process::Command::new(our_bin("skoala-agent"))
            .arg("--coordinator")
            .arg(format!("https://{addr}"))
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--kubeconfig")
            .arg(fx.cluster.kubeconfig_path())
            .args(["--token", "stand-in-token", "--heartbeat", "1s"])
            .arg("--helm")
            .arg(helm)
            .arg("--chart-cache")
            .arg(dir.path().join("agent-charts"))
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("RUST_LOG", "info")
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the agent");
        let setup = Setup {
            fx,
            shared,
            dir,
            agent,
            log,
            serving,
        };
        wait::until("the agent's session", TIMEOUT, || async {
            setup
                .shared
                .to_agent
                .lock()
                .expect("lock")
                .is_some()
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
        setup
    }

    fn data_dir(&self) -> DataDir {
        DataDir::new(self.dir.path().join("data"))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn result(&self, op: &str) -> TaskResult {
        wait::until(&format!("the result of {op}"), TIMEOUT, || async {
            self.shared.result_of(op)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", self.agent_log()))
    }

    /// Revision numbers of the release, from Helm's release Secrets.
    async fn revisions(&self) -> Vec<i32> {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.fx.client.clone(), "skoala-system");
        let list = api
            .list(&kube::api::ListParams::default().labels("owner=helm,name=skoala-init"))
            .await
            .expect("list release secrets");
        let mut revs: Vec<i32> = list
            .items
            .iter()
            .filter_map(|s| s.metadata.labels.as_ref()?.get("version")?.parse().ok())
            .collect();
        revs.sort();
        revs
    }

    async fn backup_secrets(&self) -> usize {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.fx.client.clone(), "skoala-system");
        api.list(&kube::api::ListParams::default().labels("fleet.skoala.io/backup-of=skoala-init"))
            .await
            .expect("list backups")
            .items
            .len()
    }

    async fn finish(mut self) {
        let _ = self.agent.kill().await;
        self.serving.abort();
        assert!(
            !self.agent_log().contains(PASSWORD),
            "the password leaked into the agent log"
        );
    }
}

/// Prepares 0.19.1 for relaying the way the coordinator does (`helm pull` into its data dir),
/// then takes the repository away: the agent can only get the chart over its session.
async fn prepared_chart(setup: &Setup, version: &str) -> relay::RelayedChart {
    let repo = start_repo().await.expect("chart repository");
    let helm = skoala_upgrade::Helm::detect(tool("helm"), "")
        .await
        .expect("helm");
    let chart = relay::prepare(
        &repo.url(),
        "skoala-init",
        version,
        &helm,
        &setup.data_dir(),
    )
    .await
    .expect("prepare the relayed chart");
    drop(repo);
    chart
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_chart_upgrades_a_cluster_with_no_repository_and_the_backup_is_stored_first() {
    let setup = Setup::new("helm4", &tool("helm"), "relay-1").await;
    let chart = prepared_chart(&setup, "0.19.1").await;
    assert_eq!(chart.sha256.len(), 64);

    // Hold the backup acknowledgement: the upgrade must not start until the coordinator has
    // stored the backup.
    setup.shared.hold_acks.store(true, Ordering::SeqCst);
    setup
        .shared
        .send(task(
            "op-relay",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let upload = wait::until("the backup upload", TIMEOUT, || async {
        setup.shared.bodies().into_iter().find_map(|b| match b {
            Body::BackupUpload(u) if u.operation_id == "op-relay" => Some(u),
            _ => None,
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
    // The stored file: one per cluster/operation/generation, 0600, the values as uploaded.
    let cluster_id = setup
        .shared
        .received
        .lock()
        .expect("lock")
        .first()
        .map(|m| m.cluster_id.clone())
        .expect("a message");
    let file = backups::path_for(&setup.data_dir(), &cluster_id, &upload).expect("path");
    let bytes = std::fs::read(&file).expect("the backup is on the coordinator's disk");
    assert!(String::from_utf8_lossy(&bytes).contains(PASSWORD));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // While the acknowledgement is held, helm has not begun: only revision 1 exists.
    assert_eq!(
        setup.revisions().await,
        vec![1],
        "no upgrade before the ack"
    );
    assert!(
        !setup
            .shared
            .steps_of("op-relay")
            .contains(&("upgrade".into(), StepPhase::Started as i32)),
        "the upgrade step did not start"
    );
    // notify_one keeps a permit if the held acknowledgement is not waiting yet.
    setup.shared.hold_acks.store(false, Ordering::SeqCst);
    setup.shared.release_acks.notify_one();

    let result = setup.result("op-relay").await;
    assert_eq!(
        result.outcome,
        TaskOutcome::Succeeded as i32,
        "{result:?}\nagent log:\n{}",
        setup.agent_log()
    );
    let after = result.release_after.expect("release after");
    assert_eq!(after.chart_version, "0.19.1");
    assert_eq!(after.image_tags["skoala-agent.image.tag"], "v0.19.1");
    // Event order on the wire: chart request, backup upload, then the upgrade step.
    let bodies = setup.shared.bodies();
    let pos = |f: &dyn Fn(&Body) -> bool| bodies.iter().position(f).expect("message");
    let request = pos(&|b| matches!(b, Body::ChartRequest(r) if r.sha256 == chart.sha256));
    let backup = pos(&|b| matches!(b, Body::BackupUpload(u) if u.operation_id == "op-relay"));
    let upgrade = pos(&|b| {
        matches!(b, Body::StepProgress(p) if p.operation_id == "op-relay" && p.step == "upgrade"
            && p.phase == StepPhase::Started as i32)
    });
    assert!(
        request < backup && backup < upgrade,
        "{request} < {backup} < {upgrade}"
    );
    assert!(
        setup.agent_log().contains("relayed chart received"),
        "fetched over the session"
    );

    // Another upgrade of the same digest is served from the agent's cache (no new request),
    // and a reconnecting agent lists it in Hello — checked through the request count.
    let requests = || {
        setup
            .shared
            .bodies()
            .iter()
            .filter(|b| matches!(b, Body::ChartRequest(_)))
            .count()
    };
    assert_eq!(requests(), 1);
    setup
        .shared
        .send(task(
            "op-preflight-cached",
            TaskKind::Preflight,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let pre = setup.result("op-preflight-cached").await;
    assert_eq!(pre.outcome, TaskOutcome::Succeeded as i32, "{pre:?}");
    assert_eq!(requests(), 1, "the cached chart was not requested again");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_unknown_relayed_chart_is_refused_before_anything_changes() {
    let setup = Setup::new("helm4", &tool("helm"), "relay-2").await;
    let chart = prepared_chart(&setup, "0.19.1").await;

    // 1. The bytes arrive damaged (one bit flipped): the digest check refuses them.
    setup.shared.corrupt.store(true, Ordering::SeqCst);
    setup
        .shared
        .send(task(
            "op-corrupt",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let result = setup.result("op-corrupt").await;
    assert_eq!(result.outcome, TaskOutcome::Refused as i32, "{result:?}");
    assert!(result.message.contains("sha256"), "{}", result.message);
    assert_eq!(result.failed_step, "chart");

    // 2. A digest the coordinator does not have: its error reaches the operator.
    setup.shared.corrupt.store(false, Ordering::SeqCst);
    let unknown = relay::RelayedChart {
        sha256: "0".repeat(64),
        ..chart.clone()
    };
    setup
        .shared
        .send(task(
            "op-unknown",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&unknown),
        ))
        .await;
    let result = setup.result("op-unknown").await;
    assert_eq!(result.outcome, TaskOutcome::Refused as i32, "{result:?}");
    assert!(
        result.message.contains("has no chart"),
        "{}",
        result.message
    );

    // Nothing changed: one revision, no backup, no operation record, no stored backup.
    assert_eq!(setup.revisions().await, vec![1]);
    assert_eq!(setup.backup_secrets().await, 0);
    let records: kube::Api<ConfigMap> =
        kube::Api::namespaced(setup.fx.client.clone(), "skoala-system");
    assert!(
        records
            .get_opt("skoala-fleet-operation-skoala-init")
            .await
            .expect("get")
            .is_none(),
        "no operation record"
    );
    assert!(!setup.dir.path().join("data/backups").exists());
    setup.finish().await;
}

/// Upgrade (from a repository), preflight (passes; and refused for a version that does not
/// exist) and rollback tasks, with both helm majors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_preflight_tasks_with_both_helm_majors() {
    for (label, helm) in helm_versions() {
        let setup = Setup::new(label, &helm, &format!("rb-{label}")).await;
        let repo = start_repo().await.expect("chart repository");
        let url = repo.url();
        let s = &setup.shared;

        s.send(task("up", TaskKind::Upgrade, "0.19.1", repo_source(&url)))
            .await;
        let up = setup.result("up").await;
        assert_eq!(up.outcome, TaskOutcome::Succeeded as i32, "{label}: {up:?}");
        assert_eq!(setup.revisions().await, vec![1, 2], "{label}");

        // Preflight: passes for an existing version, refuses one that does not exist; writes
        // nothing either way.
        s.send(task(
            "pre-ok",
            TaskKind::Preflight,
            "0.19.2",
            repo_source(&url),
        ))
        .await;
        let pre = setup.result("pre-ok").await;
        assert_eq!(
            pre.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {pre:?}"
        );
        s.send(task(
            "pre-bad",
            TaskKind::Preflight,
            "9.9.9",
            repo_source(&url),
        ))
        .await;
        let bad = setup.result("pre-bad").await;
        assert_eq!(bad.outcome, TaskOutcome::Refused as i32, "{label}: {bad:?}");
        assert_eq!(bad.failed_step, "chart", "{label}: {bad:?}");
        assert_eq!(
            setup.revisions().await,
            vec![1, 2],
            "{label}: preflight changed nothing"
        );
        let backups_before = setup.backup_secrets().await;

        // Rollback to the previous deployed revision (0 = previous), with no chart source.
        let mut rb = task("rb", TaskKind::Rollback, "", None);
        rb.rollback_to_revision = 0;
        s.send(rb.clone()).await;
        let result = setup.result("rb").await;
        assert_eq!(
            result.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {result:?}\nagent log:\n{}",
            setup.agent_log()
        );
        let after = result.release_after.clone().expect("release after");
        assert_eq!(after.chart_version, "0.19.0", "{label}");
        assert_eq!(after.status, "deployed", "{label}");
        assert_eq!(after.revision, 3, "{label}");
        assert_eq!(result.revision_before, 2, "{label}");
        assert_eq!(
            setup.backup_secrets().await,
            backups_before + 1,
            "{label}: a backup before the rollback"
        );
        let steps = s.steps_of("rb");
        for step in ["preflight", "backup", "rollback", "verify"] {
            assert!(
                steps.contains(&(step.to_string(), StepPhase::Succeeded as i32)),
                "{label}: {step} succeeded: {steps:?}"
            );
        }
        let uploaded = s
            .bodies()
            .into_iter()
            .any(|b| matches!(b, Body::BackupUpload(u) if u.operation_id == "rb"));
        assert!(uploaded, "{label}: the rollback's backup was uploaded");

        // Re-delivery: the recorded outcome again, no new revision.
        s.send(rb).await;
        wait::until("the re-delivered rollback's result", TIMEOUT, || async {
            (s.results_of("rb").len() >= 2).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
        let again = &s.results_of("rb")[1];
        assert_eq!(
            again.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {again:?}"
        );
        assert_eq!(
            setup.revisions().await,
            vec![1, 2, 3],
            "{label}: no second rollback"
        );
        drop(repo);
        setup.finish().await;
    }
}
