//! A stand-in for the coordinator's agent gateway, for tests that drive a real `skoala-agent`
//! with hand-written session logic: the coordinator's own CA code, real mTLS on a loopback
//! port, and the coordinator's `Register` behaviour; the test supplies the `AgentGateway`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::pki::FleetCa;
use skoala_coordinator::{backups, relay};
use skoala_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use skoala_proto::v1::{
    AgentMessage, BackupStored, BackupUpload, ChartChunk, ChartRepository, ChartRequest,
    ChartSource, CoordinatorMessage, RegisterRequest, RegisterResponse, ReleaseSpec, Task,
    TaskKind, TaskResult, agent_message::Body, chart_source, coordinator_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// A gateway being served.
pub struct Serving {
    /// Where the agent connects (`https://{addr}`).
    pub addr: SocketAddr,
    /// The server task; it ends when aborted or dropped with the runtime.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Generates a fleet CA, writes its certificate to `ca_file` (the agent's `--ca-file`), and
/// serves the gateway `make` builds around it on a loopback port, with the CA's server
/// certificate and optional client certificates (registration comes before the agent has one).
pub async fn serve<S: AgentGateway>(
    ca_file: &Path,
    make: impl FnOnce(Arc<FleetCa>) -> S,
) -> anyhow::Result<Serving> {
    let (ca, _key) = FleetCa::generate("test fleet", Duration::from_secs(3600))?;
    let server = ca.issue_server(&["127.0.0.1".into()], Duration::from_secs(3600))?;
    std::fs::write(ca_file, ca.cert_pem())
        .with_context(|| format!("writing {}", ca_file.display()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.issued.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    let service = AgentGatewayServer::new(make(Arc::new(ca)));
    let task = tokio::spawn(
        Server::builder()
            .tls_config(tls)?
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(Serving { addr, task })
}

/// The coordinator's `Register`, minus the token check: signs the agent's CSR for the cluster
/// id it claims, valid for an hour.
pub fn register(
    ca: &FleetCa,
    request: Request<RegisterRequest>,
) -> Result<Response<RegisterResponse>, Status> {
    let req = request.into_inner();
    let id = req.identity.unwrap_or_default().cluster_id;
    let issued = ca
        .sign_agent_csr(&req.csr_pem, &id, Duration::from_secs(3600))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Response::new(RegisterResponse {
        certificate_pem: issued.cert_pem,
        ca_bundle_pem: ca.cert_pem().to_string(),
        not_after_unix: issued.not_after_unix,
    }))
}

/// A gateway that records every message the agent sends and lets the test send it tasks,
/// answering as the coordinator does where it matters: backups are acknowledged (stored with
/// the coordinator's own `backups::store` when the recorder has a data dir), chart requests
/// answered with the coordinator's own `relay::answer`. The switches inject the faults a real
/// coordinator never produces on purpose: a corrupted chart, held acknowledgements.
#[derive(Default)]
pub struct Recorder {
    received: Mutex<Vec<AgentMessage>>,
    to_agent: Mutex<Option<mpsc::Sender<Result<CoordinatorMessage, Status>>>>,
    /// Where relayed charts are read from and backups stored; `None`: acknowledge backups
    /// without storing them and ignore chart requests.
    data_dir: Option<DataDir>,
    /// Serve relayed charts with one byte flipped.
    pub corrupt: AtomicBool,
    /// Hold every backup acknowledgement until `release_acks` is notified.
    pub hold_acks: AtomicBool,
    /// Releases the acknowledgements held by `hold_acks`.
    pub release_acks: Notify,
}

/// [`serve`]s a [`Recorder`]'s gateway.
pub async fn serve_recorder(
    ca_file: &Path,
    data_dir: Option<DataDir>,
) -> anyhow::Result<(Serving, Arc<Recorder>)> {
    let recorder = Arc::new(Recorder {
        data_dir,
        ..Recorder::default()
    });
    let serving = serve(ca_file, |ca| RecordingGateway {
        ca,
        recorder: recorder.clone(),
    })
    .await?;
    Ok((serving, recorder))
}

struct RecordingGateway {
    ca: Arc<FleetCa>,
    recorder: Arc<Recorder>,
}

#[tonic::async_trait]
impl AgentGateway for RecordingGateway {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        register(&self.ca, request)
    }

    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        *lock(&self.recorder.to_agent) = Some(tx.clone());
        let recorder = self.recorder.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                // Answer first, then record: a test that sees a backup upload may then
                // expect it stored.
                match &msg.body {
                    Some(Body::ChartRequest(req)) => recorder.answer_chart(req.clone(), &tx),
                    Some(Body::BackupUpload(upload)) => {
                        recorder.acknowledge(&msg.cluster_id, upload, &tx)
                    }
                    _ => {}
                }
                lock(&recorder.received).push(msg);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type ToAgent = mpsc::Sender<Result<CoordinatorMessage, Status>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn message(body: coordinator_message::Body) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { body: Some(body) })
}

impl Recorder {
    fn answer_chart(&self, req: ChartRequest, tx: &ToAgent) {
        let Some(dir) = self.data_dir.clone() else {
            return;
        };
        let tx = tx.clone();
        if self.corrupt.load(Ordering::SeqCst) {
            tokio::spawn(async move {
                let mut data = relay::load(&dir, &req.sha256).unwrap_or_default();
                let middle = data.len() / 2;
                if let Some(byte) = data.get_mut(middle) {
                    *byte ^= 0x01;
                }
                let chunk = ChartChunk {
                    sha256: req.sha256,
                    offset: 0,
                    data,
                    last: true,
                    error: String::new(),
                };
                let _ = tx
                    .send(message(coordinator_message::Body::ChartChunk(chunk)))
                    .await;
            });
        } else {
            tokio::spawn(async move { relay::answer(&dir, &req, &tx, |_| {}).await });
        }
    }

    fn acknowledge(self: &Arc<Self>, cluster: &str, upload: &BackupUpload, tx: &ToAgent) {
        let ack = match &self.data_dir {
            Some(dir) => backups::store(dir, cluster, upload),
            None => BackupStored {
                operation_id: upload.operation_id.clone(),
                generation: upload.generation,
                sha256: upload.sha256.clone(),
                error: String::new(),
            },
        };
        let (tx, recorder) = (tx.clone(), self.clone());
        tokio::spawn(async move {
            if recorder.hold_acks.load(Ordering::SeqCst) {
                recorder.release_acks.notified().await;
            }
            let _ = tx
                .send(message(coordinator_message::Body::BackupStored(ack)))
                .await;
        });
    }

    /// Whether an agent's session is open (the latest one is the one tasks go to).
    pub fn has_session(&self) -> bool {
        lock(&self.to_agent).is_some()
    }

    /// The cluster id the agent's messages carry.
    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.received).first().map(|m| m.cluster_id.clone())
    }

    /// Every message body received so far, in order.
    pub fn bodies(&self) -> Vec<Body> {
        lock(&self.received)
            .iter()
            .filter_map(|m| m.body.clone())
            .collect()
    }

    /// The first result reported for operation `op`.
    pub fn result_of(&self, op: &str) -> Option<TaskResult> {
        self.results_of(op).into_iter().next()
    }

    /// Every result reported for operation `op` (a re-delivered task reports again).
    pub fn results_of(&self, op: &str) -> Vec<TaskResult> {
        self.bodies()
            .into_iter()
            .filter_map(|b| match b {
                Body::TaskResult(r) if r.operation_id == op => Some(r),
                _ => None,
            })
            .collect()
    }

    /// `(step, phase)` of every progress message for operation `op`.
    pub fn steps_of(&self, op: &str) -> Vec<(String, i32)> {
        self.bodies()
            .into_iter()
            .filter_map(|b| match b {
                Body::StepProgress(p) if p.operation_id == op => Some((p.step, p.phase)),
                _ => None,
            })
            .collect()
    }

    /// Sends `task` on the current session. Panics without one: a test bug.
    pub async fn send(&self, task: Task) {
        let tx = lock(&self.to_agent).clone().expect("a session is open");
        tx.send(message(coordinator_message::Body::Task(task)))
            .await
            .expect("send the task");
    }
}

/// A task of `kind` on `skoala-init` in `skoala-system` to `version` from `source`, with a
/// two-minute helm timeout, to be started within ten minutes.
pub fn task(op: &str, kind: TaskKind, version: &str, source: Option<chart_source::Source>) -> Task {
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

/// The chart repository at `url` as a task's chart source.
pub fn repo_source(url: &str) -> Option<chart_source::Source> {
    Some(chart_source::Source::Repository(ChartRepository {
        name: "skoala".into(),
        url: url.into(),
    }))
}

/// Seconds since the Unix epoch, as task deadlines count them.
pub use skoala_support::time::now_unix;
