//! Hand-made gRPC clients for tests that must present unusual credentials or claims: no
//! client certificate, a foreign CA's certificate, an expired one, an agent certificate that
//! claims another cluster. Real tonic clients over real mTLS — only the *caller* is crafted;
//! the coordinator is the real process.

use std::time::Duration;

use anyhow::Context;
use skoala_coordinator::pki::{self, FleetCa, LeafSpec};
use skoala_proto::v1::agent_gateway_client::AgentGatewayClient;
use skoala_proto::v1::fleet_admin_client::FleetAdminClient;
use skoala_proto::v1::{
    AgentMessage, ClusterIdentity, CoordinatorMessage, Hello, RegisterRequest, agent_message,
};
use skoala_support::admin_config::AdminConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::coordinator::Coordinator;

/// A client certificate and its key (PEM).
#[derive(Clone)]
pub struct Creds {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// The admin credential from the coordinator's `admin.yaml`.
pub fn admin_creds(coordinator: &Coordinator) -> anyhow::Result<Creds> {
    let cfg = AdminConfig::load(&coordinator.admin_config())?;
    Ok(Creds {
        cert_pem: cfg.client_certificate,
        key_pem: cfg.client_key,
    })
}

/// The coordinator's own CA, loaded from its data dir (to mint certificates the real CA would
/// sign, e.g. expired ones).
pub fn fleet_ca(coordinator: &Coordinator) -> anyhow::Result<FleetCa> {
    let dir = coordinator.data_dir();
    let cert = std::fs::read_to_string(dir.join("ca.pem"))?;
    let key = std::fs::read_to_string(dir.join("ca-key.pem"))?;
    Ok(FleetCa::from_pem(&cert, &key)?)
}

/// A CA that has nothing to do with the fleet.
pub fn foreign_ca() -> anyhow::Result<FleetCa> {
    Ok(FleetCa::generate("not the fleet CA", Duration::from_secs(3600))?.0)
}

/// Mints an agent certificate for `cluster_id` from `ca`, valid for `ttl` (or already expired
/// when `expired`).
pub fn agent_creds(ca: &FleetCa, cluster_id: &str, expired: bool) -> anyhow::Result<Creds> {
    let mut spec: LeafSpec = pki::agent_spec(cluster_id, Duration::from_secs(3600));
    if expired {
        let now = std::time::SystemTime::now();
        spec.not_before = now - Duration::from_secs(7200);
        spec.not_after = now - Duration::from_secs(3600);
    }
    let issued = ca.issue_with_key(&spec)?;
    Ok(Creds {
        cert_pem: issued.issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// An admin certificate minted by `ca`.
pub fn admin_creds_from(ca: &FleetCa) -> anyhow::Result<Creds> {
    let issued = ca.issue_admin(Duration::from_secs(3600))?;
    Ok(Creds {
        cert_pem: issued.issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// A TLS channel to the coordinator, trusting the fleet CA, presenting `creds` if given.
pub async fn channel(
    coordinator: &Coordinator,
    creds: Option<&Creds>,
) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read_to_string(coordinator.ca_file()).unwrap_or_default();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(c) = creds {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    Endpoint::from_shared(coordinator.endpoint())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
}

/// A plaintext (h2c) channel to the coordinator's TLS port.
pub async fn plaintext_channel(
    coordinator: &Coordinator,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{}", coordinator.addr()))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// The error and its causes on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Registers like an agent would (fresh key, CSR) and returns the issued credentials.
pub async fn register(
    coordinator: &Coordinator,
    token: &str,
    cluster_id: &str,
    name: &str,
) -> Result<Creds, tonic::Status> {
    let channel = channel(coordinator, None)
        .await
        .map_err(|e| tonic::Status::unavailable(chain(&e)))?;
    register_on(channel, token, cluster_id, name).await
}

/// Registers over an existing channel.
pub async fn register_on(
    channel: Channel,
    token: &str,
    cluster_id: &str,
    name: &str,
) -> Result<Creds, tonic::Status> {
    let (csr_pem, key_pem) =
        pki::generate_csr(cluster_id).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let resp = AgentGatewayClient::new(channel)
        .register(RegisterRequest {
            token: token.to_string(),
            csr_pem,
            identity: Some(ClusterIdentity {
                cluster_id: cluster_id.to_string(),
                name: name.to_string(),
                labels: Default::default(),
            }),
            agent_version: "raw-test-client".into(),
        })
        .await?
        .into_inner();
    Ok(Creds {
        cert_pem: resp.certificate_pem,
        key_pem,
    })
}

/// The opening message of a session for `cluster_id`: a Hello with nothing else in it.
pub fn hello(cluster_id: &str) -> AgentMessage {
    AgentMessage {
        cluster_id: cluster_id.to_string(),
        body: Some(agent_message::Body::Hello(Hello {
            agent_version: "raw".into(),
            ..Default::default()
        })),
    }
}

/// An open Session stream: send agent messages, read coordinator messages.
pub struct RawSession {
    /// What the test sends as the agent.
    pub tx: mpsc::Sender<AgentMessage>,
    /// What the coordinator sends back.
    pub inbound: tonic::Streaming<CoordinatorMessage>,
}

impl RawSession {
    /// Opens Session with `creds`, sending `first` as the opening message.
    pub async fn open(
        coordinator: &Coordinator,
        creds: Option<&Creds>,
        first: AgentMessage,
    ) -> anyhow::Result<Result<RawSession, tonic::Status>> {
        let channel = channel(coordinator, creds)
            .await
            .map_err(|e| anyhow::anyhow!(chain(&e)))
            .context("connecting for a raw session")?;
        Ok(Self::open_on(channel, first).await)
    }

    /// Opens Session on an existing channel.
    pub async fn open_on(
        channel: Channel,
        first: AgentMessage,
    ) -> Result<RawSession, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        // Cannot fail: fresh channel with room.
        let _ = tx.try_send(first);
        let mut client = AgentGatewayClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024)
            .max_decoding_message_size(64 * 1024 * 1024);
        let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(RawSession { tx, inbound })
    }

    /// Reads until the stream ends with an error status (what a refused stream does), skipping
    /// pings and other messages. Fails if the stream ends cleanly or `timeout` passes.
    pub async fn closing_status(&mut self, timeout: Duration) -> anyhow::Result<tonic::Status> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => anyhow::bail!("the stream ended without an error status"),
                    Err(status) => return Ok(status),
                }
            }
        })
        .await
        .context("the coordinator did not close the stream in time")?
    }
}

/// A FleetAdmin client presenting `creds`.
pub async fn admin_client(
    coordinator: &Coordinator,
    creds: Option<&Creds>,
) -> anyhow::Result<FleetAdminClient<Channel>> {
    let channel = channel(coordinator, creds)
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))?;
    Ok(FleetAdminClient::new(channel))
}
