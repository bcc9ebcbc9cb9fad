//! A stand-in for the coordinator's agent gateway, for tests that drive a real `skoala-agent`
//! with hand-written session logic: the coordinator's own CA code, real mTLS on a loopback
//! port, and the coordinator's `Register` behaviour; the test supplies the `AgentGateway`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use skoala_coordinator::pki::FleetCa;
use skoala_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use skoala_proto::v1::{RegisterRequest, RegisterResponse};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

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
