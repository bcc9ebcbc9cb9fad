//! `AgentGateway`: how agents join (`Register`) and the one long-lived stream each holds
//! (`Session`).
//!
//! Register is the only RPC served without a client certificate: the join token authenticates
//! it. Session requires an agent certificate whose serial the store knows, for a cluster that
//! is not revoked, and then checks the cluster id in *every* message against the certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use skoala_proto::v1::agent_gateway_server::AgentGateway;
use skoala_proto::v1::{AgentMessage, CoordinatorMessage, RegisterRequest, RegisterResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::{now_ms, now_unix};
use crate::context::Context;
use crate::identity::{Refusal, remote_of, require_agent};
use crate::sessions::LiveAgent;
use crate::store::{CertRecord, ClusterRecord, RegisterError, Registered, Registration, Store};
use crate::tokens;

/// Longest cluster id / name / label accepted (a kube-system UID is 36 characters).
const MAX_ID_LEN: usize = 128;

/// The gateway service.
pub struct Gateway<S> {
    ctx: Arc<Context<S>>,
}

impl<S> Gateway<S> {
    pub fn new(ctx: Arc<Context<S>>) -> Self {
        Self { ctx }
    }
}

fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[tonic::async_trait]
impl<S: Store> AgentGateway for Gateway<S> {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let ctx = &self.ctx;
        let peer = remote_of(&request);
        let req = request.into_inner();
        let identity = req.identity.unwrap_or_default();
        let cluster_id = identity.cluster_id.clone();
        let refuse = |status: Status, kind: &'static str, detail: String| Refusal {
            status,
            kind,
            cluster_id: cluster_id.clone(),
            detail,
        };

        let Some((token_id, token_sha256)) = tokens::parse(&req.token) else {
            let r = refuse(
                Status::unauthenticated("the join token is not valid (expected <id>.<secret>)"),
                "register.unknown_token",
                "malformed join token".into(),
            );
            return Err(ctx.refuse(r, &peer).await);
        };
        if !valid_cluster_id(&cluster_id) {
            let r = refuse(
                Status::invalid_argument(
                    "identity.cluster_id must be the kube-system namespace UID (1-128 characters of [A-Za-z0-9._-])",
                ),
                "register.bad_identity",
                format!("token {token_id}: invalid cluster id"),
            );
            return Err(ctx.refuse(r, &peer).await);
        }
        let name = if identity.name.is_empty() {
            cluster_id.clone()
        } else {
            identity.name.clone()
        };
        let issued = match ctx
            .ca
            .sign_agent_csr(&req.csr_pem, &cluster_id, ctx.settings.cert_ttl)
        {
            Ok(i) => i,
            Err(e) => {
                let r = refuse(
                    Status::invalid_argument(format!("cannot sign the CSR: {e}")),
                    "register.bad_csr",
                    format!("token {token_id}: {e}"),
                );
                return Err(ctx.refuse(r, &peer).await);
            }
        };
        let registration = Registration {
            token_id: token_id.clone(),
            token_sha256,
            now_unix: now_unix(),
            cluster_id: cluster_id.clone(),
            name: name.clone(),
            labels: identity.labels.into_iter().collect::<BTreeMap<_, _>>(),
            agent_version: req.agent_version,
            cert: CertRecord {
                serial_hex: issued.serial_hex.clone(),
                cluster_id: cluster_id.clone(),
                issued_unix: now_unix(),
                not_after_unix: issued.not_after_unix,
            },
        };
        match ctx.store.register(registration).await {
            Ok(outcome) => {
                let kind = match outcome {
                    Registered::New => "cluster.registered",
                    Registered::Again | Registered::SameToken => "cluster.reregistered",
                };
                ctx.audit(
                    kind,
                    &cluster_id,
                    &peer,
                    format!(
                        "name {name}, token {token_id}{}, certificate {}",
                        if outcome == Registered::SameToken {
                            " (a retry with the cluster's own token; no use spent)"
                        } else {
                            ""
                        },
                        issued.serial_hex
                    ),
                )
                .await;
                Ok(Response::new(RegisterResponse {
                    certificate_pem: issued.cert_pem,
                    ca_bundle_pem: ctx.ca.cert_pem().to_string(),
                    not_after_unix: issued.not_after_unix,
                }))
            }
            Err(RegisterError::Store(e)) => {
                tracing::error!(error = %e, "registration failed in the store");
                Err(Status::unavailable(
                    "the coordinator's store is unavailable; retry later",
                ))
            }
            Err(e) => {
                let status = match e {
                    RegisterError::ClusterRevoked(_) => Status::permission_denied(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                };
                let r = refuse(status, e.audit_kind(), e.to_string());
                Err(ctx.refuse(r, &peer).await)
            }
        }
    }

    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctx = self.ctx.clone();
        let peer = remote_of(&request);
        let (cluster_id, serial) = match require_agent(&request) {
            Ok(v) => v,
            Err(r) => return Err(ctx.refuse(r, &peer).await),
        };
        let stored = authorize_session(&ctx, &cluster_id, &serial)
            .await
            .map_err(|e| e.into_status())?;
        let record = match stored {
            Ok(record) => record,
            Err(r) => return Err(ctx.refuse(r, &peer).await),
        };

        let (tx, rx) = mpsc::channel(32);
        let opened = ctx.sessions.open(
            &cluster_id,
            LiveAgent {
                last_heartbeat_ms: now_ms(),
                agent_version: record.state.agent_version.clone(),
                helm_version: record.state.helm_version.clone(),
                inventory: None,
                to_agent: Some(tx.clone()),
            },
        );
        ctx.metrics.session_opened();
        // A revocation stores first, then closes live sessions. Checking again *after* this
        // session became visible closes the window where a revocation lands between the check
        // above and `open`: either the revocation's kick finds this session, or this read
        // finds the revocation.
        if let Ok(Some(c)) = ctx.store.cluster(cluster_id.clone()).await
            && c.revoked_unix.is_some()
        {
            ctx.sessions.kick(
                &cluster_id,
                Status::permission_denied(format!(
                    "cluster {cluster_id} ({}) has been revoked by an operator",
                    c.name
                )),
            );
        }
        tracing::info!(cluster_id, peer, "agent session opened");
        let session = crate::session::Session {
            ctx: ctx.clone(),
            cluster_id,
            peer,
            session: opened.session,
            stored: record.state,
            name: record.name,
            labels: record.labels,
            tx,
        };
        tokio::spawn(session.run(request.into_inner(), opened.closed));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A store failure while authorizing; the caller sees UNAVAILABLE, not a refusal.
struct StoreDown(crate::store::StoreError);

impl StoreDown {
    fn into_status(self) -> Status {
        tracing::error!(error = %self.0, "store unavailable while authorizing a session");
        Status::unavailable("the coordinator's store is unavailable; retry later")
    }
}

/// Checks that the certificate is one the CA issued to this cluster and that the cluster is not
/// revoked. Returns the cluster's persisted state.
async fn authorize_session<S: Store>(
    ctx: &Context<S>,
    cluster_id: &str,
    serial: &str,
) -> Result<Result<ClusterRecord, Refusal>, StoreDown> {
    let refusal = |status, kind, detail: String| Refusal {
        status,
        kind,
        cluster_id: cluster_id.to_string(),
        detail,
    };
    let cert = ctx
        .store
        .certificate(serial.to_string())
        .await
        .map_err(StoreDown)?;
    if cert.as_ref().map(|c| c.cluster_id.as_str()) != Some(cluster_id) {
        return Ok(Err(refusal(
            Status::permission_denied(format!(
                "certificate {serial} was not issued to cluster {cluster_id} by this coordinator"
            )),
            "session.unknown_certificate",
            format!("certificate {serial} unknown for cluster {cluster_id}"),
        )));
    }
    let cluster = ctx
        .store
        .cluster(cluster_id.to_string())
        .await
        .map_err(StoreDown)?;
    match cluster {
        None => Ok(Err(refusal(
            Status::permission_denied(format!("cluster {cluster_id} is not registered")),
            "session.unknown_cluster",
            "no such cluster".into(),
        ))),
        Some(c) if c.revoked_unix.is_some() => Ok(Err(refusal(
            Status::permission_denied(format!(
                "cluster {cluster_id} ({}) has been revoked by an operator",
                c.name
            )),
            "session.cluster_revoked",
            format!("revoked cluster {} tried to connect", c.name),
        ))),
        Some(c) => Ok(Ok(c)),
    }
}
