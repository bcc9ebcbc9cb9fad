//! The bare transport: what one mTLS gRPC bidi stream costs with nothing of ours behind it.
//!
//! The benchmarks report the coordinator's memory per agent as a ratio to this server's, which
//! survives a noisy machine better than absolute figures. To make the ratio mean "our cost on
//! top of the transport", everything below the application is the coordinator's: the same
//! rustls server configuration ([`skoala_coordinator::tls::server_config`]: fleet CA, optional
//! client certificates verified when presented, ALPN h2), the same tonic server and HTTP/2
//! settings ([`skoala_coordinator::http2`], overridable by the same hidden flags), the same generated `AgentGateway` service. Register signs the agent's
//! CSR with the fleet CA (so the load generator's agents work unchanged); Session drains the
//! agent's messages and keeps its half of the stream open without sending anything — except
//! for the fan-out baseline: on SIGUSR1 one `Task` goes down every open stream at once, sent
//! one stream after another through the same bounded channels, as the coordinator's
//! orchestrator sends a plan's tasks (but with no plan, no store and no step behind it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::http2::Http2Settings;
use skoala_coordinator::pki::FleetCa;
use skoala_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use skoala_proto::v1::{
    AgentMessage, CoordinatorMessage, RegisterRequest, RegisterResponse, ReleaseSpec, Task,
    coordinator_message,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The coordinator's default agent certificate lifetime.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The coordinator's TLS handshake bound.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One open stream's sending half.
type Outlet = mpsc::Sender<Result<CoordinatorMessage, Status>>;

struct Bare {
    ca: FleetCa,
    /// Every session's sender, for the fan-out; closed ones are dropped at the next fan-out.
    outlets: Arc<Mutex<Vec<Outlet>>>,
}

#[tonic::async_trait]
impl AgentGateway for Bare {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        let cluster_id = req.identity.map(|i| i.cluster_id).unwrap_or_default();
        let issued = self
            .ca
            .sign_agent_csr(&req.csr_pem, &cluster_id, CERT_TTL)
            .map_err(|e| Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        Ok(Response::new(RegisterResponse {
            certificate_pem: issued.cert_pem,
            ca_bundle_pem: self.ca.cert_pem().to_string(),
            not_after_unix: issued.not_after_unix,
        }))
    }

    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        // The same bounded channel as a coordinator session (32); its sender lives as long as
        // the agent's half of the stream, so the response stream stays open.
        let (tx, rx) = mpsc::channel(32);
        self.outlets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx.clone());
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves until `stop` resolves (SIGTERM/SIGINT).
pub async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    http2: Http2Settings,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let ca_pem = read(dir.ca_cert())?;
    let ca = FleetCa::from_pem(&ca_pem, &read(dir.ca_key())?).context("loading the fleet CA")?;
    let config = skoala_coordinator::tls::server_config(
        &ca_pem,
        &read(dir.server_cert())?,
        &read(dir.server_key())?,
    )
    .context("building the TLS configuration")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("bare-server listening on {}", listener.local_addr()?);

    // The coordinator's accept loop without the audit: handshake each connection in its own
    // task, hand the TLS streams to tonic.
    let outlets = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });
    let server = http2
        .server()
        .add_service(AgentGatewayServer::new(Bare {
            ca,
            outlets: outlets.clone(),
        }))
        .serve_with_incoming(ReceiverStream::new(rx));
    tokio::select! {
        r = server => r.context("the gRPC server failed")?,
        () = stop => {}
        r = fan_out_on_signal(outlets) => r?,
    }
    Ok(())
}

/// On every SIGUSR1: one `Task` down every open stream, then a line with the times.
async fn fan_out_on_signal(outlets: Arc<Mutex<Vec<Outlet>>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let mut round = 0u64;
    while usr1.recv().await.is_some() {
        round += 1;
        let started = jiff::Timestamp::now().as_microsecond();
        let open: Vec<Outlet> = {
            let mut all = outlets.lock().unwrap_or_else(PoisonError::into_inner);
            all.retain(|tx| !tx.is_closed());
            all.clone()
        };
        let msg = CoordinatorMessage {
            body: Some(coordinator_message::Body::Task(Task {
                operation_id: format!("bare-fanout-{round}"),
                release: Some(ReleaseSpec {
                    release: "skoala-init".into(),
                    namespace: "skoala-system".into(),
                    chart_name: "skoala-init".into(),
                    version: "0.0.0-bare".into(),
                    ..ReleaseSpec::default()
                }),
                ..Task::default()
            })),
        };
        let mut sent = 0usize;
        for tx in &open {
            if tx.send(Ok(msg.clone())).await.is_ok() {
                sent += 1;
            }
        }
        println!(
            "bare-server fanout {round} streams={sent} started_unix_us={started} sent_unix_us={}",
            jiff::Timestamp::now().as_microsecond()
        );
    }
    Ok(())
}
