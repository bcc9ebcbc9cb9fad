//! One Session stream with the coordinator, from Hello to its end.
//!
//! The agent opens the stream (the coordinator never dials agents) and then, until the stream
//! breaks or the agent shuts down: sends heartbeats, sends its inventory whenever it changes,
//! answers the coordinator's pings and inventory requests, renews its certificate before it
//! expires, hands tasks to [`crate::tasks`] and forwards their progress and results. Reconnecting is the caller's job ([`crate::agent`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skoala_proto::v1::agent_gateway_client::AgentGatewayClient;
use skoala_proto::v1::{
    AgentMessage, CertificateIssued, CertificateRenewal, ClusterIdentity, CoordinatorMessage,
    Heartbeat, Hello, agent_message, coordinator_message,
};
use skoala_support::time::now_ms;
use skoala_upgrade::inventory::ReleaseInfo;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::credentials::{Credentials, PendingKey};
use crate::identity_store::IdentityStore;
use crate::metrics::{self, Metrics};
use crate::tasks::TaskRunner;
use crate::transport::{self, CoordinatorAddr, TransportError};

/// If the coordinator does not answer a renewal request within this time, ask again.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);

/// The credentials in use, shared between the session (which renews them) and the supervisor
/// (which connects with them).
pub type CredentialCell = Arc<Mutex<Credentials>>;

/// What a session needs besides the coordinator's address.
pub struct SessionParams {
    /// Who this cluster is (id, name, labels), sent in the hello.
    pub identity: ClusterIdentity,
    /// This agent's version, sent in the hello.
    pub agent_version: String,
    /// `helm version`'s answer, sent in the hello (empty without helm).
    pub helm_version: String,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
    /// The release inventory; every change is sent as it happens.
    pub inventory: watch::Receiver<Vec<ReleaseInfo>>,
    /// The credentials to connect with, replaced on renewal.
    pub credentials: CredentialCell,
    /// Where renewed credentials are persisted; `None` keeps them in memory only (load tests).
    pub store: Option<IdentityStore>,
    /// Runs tasks; their progress and results arrive through `outbox`.
    pub tasks: TaskRunner,
    /// Messages from the tasks (progress, results, backups) to send up the session.
    pub outbox: mpsc::Receiver<agent_message::Body>,
    /// The counters the session updates.
    pub metrics: Arc<Metrics>,
}

/// How a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No connection could be made (the supervisor retries with backoff).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The coordinator refused the stream (unknown certificate, revoked cluster).
    #[error("the coordinator refused the session ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message.
        message: String,
    },
    /// The stream failed after it was up (network, keepalive, coordinator restart).
    #[error("the session broke ({code:?}): {message}")]
    Broken {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The coordinator closed the stream cleanly.
    #[error("the coordinator ended the session")]
    Closed,
}

impl SessionError {
    /// The coordinator closed this session because another one for the same cluster opened
    /// (ABORTED). Two agents for one cluster (a rollout surge, a copied Secret) must not take
    /// turns replacing each other in a tight loop, so the caller keeps backing off.
    pub fn is_superseded(&self) -> bool {
        matches!(
            self,
            Self::Broken {
                code: tonic::Code::Aborted,
                ..
            }
        )
    }

    fn from_status(status: tonic::Status, established: bool) -> Self {
        let (code, message) = (status.code(), status.message().to_string());
        // The h2/transport cause hides in the source chain, e.g. "connection reset".
        let message = match std::error::Error::source(&status) {
            Some(src) if message.is_empty() || message == "transport error" => {
                transport::error_chain(src)
            }
            _ => message,
        };
        if established {
            Self::Broken { code, message }
        } else {
            Self::Refused { code, message }
        }
    }
}

/// Runs one session until it fails (the error says why) or `shutdown` fires (`Ok`).
/// `on_connected` is called once the coordinator accepted the stream.
pub async fn run(
    addr: &CoordinatorAddr,
    params: &mut SessionParams,
    shutdown: &CancellationToken,
    on_connected: &mut (dyn FnMut() + Send),
) -> Result<(), SessionError> {
    let creds = lock(&params.credentials).clone();
    params.metrics.certificate_not_after.store(
        creds.not_after.as_second(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let channel = transport::connect(addr, &creds.ca_pem, Some(&creds)).await?;
    let mut client = AgentGatewayClient::new(channel);
    let cluster_id = params.identity.cluster_id.clone();
    let envelope = |body| AgentMessage {
        cluster_id: cluster_id.clone(),
        body: Some(body),
    };

    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    // Read the inventory *and* mark it seen, so only later changes trigger an update.
    let inventory_now = skoala_upgrade::wire::inventory(&params.inventory.borrow_and_update());
    let hello = Hello {
        agent_version: params.agent_version.clone(),
        helm_version: params.helm_version.clone(),
        identity: Some(params.identity.clone()),
        inventory: Some(inventory_now),
        cached_chart_digests: params.tasks.cached_charts(),
        unfinished_operation_ids: params.tasks.unfinished().await,
    };
    // Cannot fail: the receiver is alive and the channel empty.
    let _ = tx.try_send(envelope(agent_message::Body::Hello(hello)));

    let mut inbound = tokio::select! {
        r = client.session(ReceiverStream::new(rx)) => {
            r.map_err(|s| SessionError::from_status(s, false))?.into_inner()
        }
        _ = shutdown.cancelled() => return Ok(()),
    };
    on_connected();
    params.tasks.resume_transfers();

    let mut heartbeat = tokio::time::interval(params.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await; // the first tick is immediate; Hello just went out
    let mut pending: Option<PendingKey> = None;
    let renewal = tokio::time::sleep_until(until(lock(&params.credentials).renew_at()));
    tokio::pin!(renewal);

    loop {
        let outgoing = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => handle(msg, params, &mut pending, &mut renewal).await,
                Ok(None) => return Err(SessionError::Closed),
                Err(status) => return Err(SessionError::from_status(status, true)),
            },
            _ = heartbeat.tick() => Some(agent_message::Body::Heartbeat(Heartbeat {
                sent_unix_ms: now_ms(),
            })),
            Some(body) = params.outbox.recv() => Some(body),
            changed = params.inventory.changed() => match changed {
                Ok(()) => {
                    let inv = skoala_upgrade::wire::inventory(&params.inventory.borrow_and_update());
                    tracing::info!(releases = inv.releases.len(), "inventory changed; reporting it");
                    Some(agent_message::Body::Inventory(inv))
                }
                // The inventory watch is gone: the agent is shutting down.
                Err(_) => return Ok(()),
            },
            _ = &mut renewal => {
                let next = lock(&params.credentials).clone();
                tracing::info!(not_after = %next.not_after, "renewing the client certificate");
                renewal.as_mut().reset(tokio::time::Instant::now() + RENEWAL_RETRY);
                match PendingKey::generate(&next.cluster_id) {
                    Ok(key) => {
                        let csr_pem = key.csr_pem.clone();
                        pending = Some(key);
                        Some(agent_message::Body::CertificateRenewal(CertificateRenewal { csr_pem }))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot generate a key for renewal; retrying");
                        None
                    }
                }
            }
        };
        if let Some(body) = &outgoing {
            params.metrics.sent(body);
        }
        if let Some(body) = outgoing
            && tx.send(envelope(body)).await.is_err()
        {
            // The request stream is gone; the response stream tells why.
            return match inbound.message().await {
                Err(status) => Err(SessionError::from_status(status, true)),
                Ok(_) => Err(SessionError::Closed),
            };
        }
    }
}

/// Handles one coordinator message; returns the answer to send, if any.
async fn handle(
    msg: CoordinatorMessage,
    params: &mut SessionParams,
    pending: &mut Option<PendingKey>,
    renewal: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<agent_message::Body> {
    use coordinator_message::Body;
    match msg.body? {
        Body::Ping(_) => Some(agent_message::Body::Heartbeat(Heartbeat {
            sent_unix_ms: now_ms(),
        })),
        Body::InventoryRequest(_) => Some(agent_message::Body::Inventory(
            skoala_upgrade::wire::inventory(&params.inventory.borrow()),
        )),
        Body::Task(task) => {
            params.metrics.task_received(&task);
            params.tasks.accept(task)
        }
        Body::Cancel(c) => {
            tracing::info!(operation = %c.operation_id, "cancel for an operation this agent is not running");
            None
        }
        Body::CertificateIssued(issued) => {
            renewed(issued, params, pending, renewal).await;
            None
        }
        Body::ChartChunk(chunk) => {
            params.tasks.chart_chunk(chunk);
            None
        }
        Body::BackupStored(ack) => {
            params.tasks.backup_stored(ack);
            None
        }
    }
}

/// Completes a renewal: check the certificate against the pending key, persist it, and use it
/// from the next connection on (the running TLS session stays as it is).
async fn renewed(
    issued: CertificateIssued,
    params: &mut SessionParams,
    pending: &mut Option<PendingKey>,
    renewal: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) {
    let Some(key) = pending.take() else {
        tracing::warn!("ignoring a certificate the agent did not ask for");
        return;
    };
    let ca = if issued.ca_bundle_pem.trim().is_empty() {
        lock(&params.credentials).ca_pem.clone()
    } else {
        issued.ca_bundle_pem
    };
    let creds = match key.complete(&issued.certificate_pem, &ca) {
        Ok(c) if c.cluster_id == params.identity.cluster_id => c,
        Ok(c) => {
            tracing::error!(cert_for = %c.cluster_id, "the renewed certificate is for another cluster; keeping the current one");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "the renewed certificate is unusable; keeping the current one");
            return;
        }
    };
    if let Some(store) = &params.store
        && let Err(e) = store.save(&creds).await
    {
        // Using a certificate we could not persist would make the next restart present an
        // older one; keep the current certificate and try again later.
        tracing::error!(error = %e, "cannot store the renewed certificate; will renew again");
        return;
    }
    tracing::info!(serial = %creds.serial_hex, not_after = %creds.not_after, "certificate renewed; used from the next connection");
    renewal.as_mut().reset(until(creds.renew_at()));
    metrics::inc(&params.metrics.certificate_renewals);
    params.metrics.certificate_not_after.store(
        creds.not_after.as_second(),
        std::sync::atomic::Ordering::Relaxed,
    );
    *lock(&params.credentials) = creds;
}

/// `at` as a tokio deadline; at least a second away, so a certificate that is somehow due at
/// once (issued already expired) cannot make the agent spin on renewals.
fn until(at: jiff::Timestamp) -> tokio::time::Instant {
    let wait = at
        .duration_since(jiff::Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait.max(Duration::from_secs(1))
}

fn lock(cell: &CredentialCell) -> std::sync::MutexGuard<'_, Credentials> {
    // A panic while holding this lock cannot leave credentials half-written (plain assignment).
    cell.lock().unwrap_or_else(|e| e.into_inner())
}
