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
use skoala_support::names;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::{now_ms, now_unix};
use crate::context::Context;
use crate::identity::{Peer, Refusal, peer_of, remote_of, require_agent};
use crate::sessions::LiveAgent;
use crate::tokens;
use skoala_store::{
    CertRecord, Claim, ClusterRecord, RegisterError, Registered, Registration, Store,
};

/// The gateway service.
pub struct Gateway<S> {
    ctx: Arc<Context<S>>,
}

impl<S> Gateway<S> {
    pub fn new(ctx: Arc<Context<S>>) -> Self {
        Self { ctx }
    }
}

/// A refused registration's status, as the caller sees it.
fn register_status(e: &RegisterError) -> Status {
    match e {
        RegisterError::ClusterRevoked(_) | RegisterError::Takeover(_) => {
            Status::permission_denied(e.to_string())
        }
        RegisterError::NameTaken { .. } => Status::already_exists(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

fn store_unavailable(e: &skoala_store::StoreError) -> Status {
    tracing::error!(error = %e, "registration failed in the store");
    Status::unavailable("the coordinator's store is unavailable; retry later")
}

impl<S: Store> Gateway<S> {
    /// Audits a registration the store refused and returns what the caller sees.
    async fn refused(&self, e: RegisterError, claim: &Claim, peer: &str) -> Status {
        if let RegisterError::Store(e) = &e {
            return store_unavailable(e);
        }
        let r = Refusal {
            status: register_status(&e),
            kind: e.audit_kind(),
            cluster_id: claim.cluster_id.clone(),
            detail: format!("{} (token {}): {e}", claim.name, claim.token_id),
        };
        self.ctx.refuse(r, peer).await
    }
}

#[tonic::async_trait]
impl<S: Store> AgentGateway for Gateway<S> {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let ctx = &self.ctx;
        let peer = remote_of(&request);
        // A client certificate on Register is the caller proving the key of a cluster it
        // already is (the TLS layer verified the chain and the validity period).
        let presented = match peer_of(&request) {
            Ok(Peer::Agent {
                cluster_id,
                serial_hex,
            }) => Some((cluster_id, serial_hex)),
            _ => None,
        };
        let req = request.into_inner();
        let identity = req.identity.unwrap_or_default();
        let cluster_id = identity.cluster_id.clone();
        // What the audit log keeps of an id nobody has checked yet.
        let audit_id = names::clipped(&cluster_id);
        let refuse = |status: Status, kind: &'static str, detail: String| Refusal {
            status,
            kind,
            cluster_id: audit_id.clone(),
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
        let name = if identity.name.is_empty() {
            cluster_id.clone()
        } else {
            identity.name.clone()
        };
        let labels = identity.labels.into_iter().collect::<BTreeMap<_, _>>();
        let checked = names::cluster_id(&cluster_id)
            .and_then(|()| names::cluster_name(&name))
            .and_then(|()| names::labels(labels.iter()));
        if let Err(e) = checked {
            let r = refuse(
                Status::invalid_argument(format!(
                    "{e} (identity.cluster_id is the kube-system namespace UID)"
                )),
                "register.bad_identity",
                format!("token {token_id}: {e}"),
            );
            return Err(ctx.refuse(r, &peer).await);
        }
        let claim = Claim {
            token_id: token_id.clone(),
            token_sha256,
            now_unix: now_unix(),
            cluster_id: cluster_id.clone(),
            name: name.clone(),
            labels,
            agent_version: req.agent_version,
            proven_serial: presented
                .filter(|(id, _)| *id == cluster_id)
                .map(|(_, serial)| serial),
        };
        // Every check first, reading only: a refusal costs no signature and no write.
        let admitted = ctx.store.admit(claim.clone()).await;
        if let Err(e) = admitted {
            return Err(self.refused(e, &claim, &peer).await);
        }
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
        let proven = claim.proven_serial.clone();
        let registration = Registration {
            claim: claim.clone(),
            cert: CertRecord {
                serial_hex: issued.serial_hex.clone(),
                cluster_id: cluster_id.clone(),
                issued_unix: now_unix(),
                not_after_unix: issued.not_after_unix,
                revoked_unix: None,
                first_session_unix: None,
            },
        };
        let outcome = match ctx.store.register(registration).await {
            Ok(outcome) => outcome,
            Err(e) => return Err(self.refused(e, &claim, &peer).await),
        };
        let how = match (outcome, &proven) {
            (Registered::New, _) => String::new(),
            (Registered::SameToken, _) => {
                " (a retry with the cluster's own token; no use spent)".to_string()
            }
            (Registered::Proved, Some(serial)) => {
                format!(" (proved its current key with certificate {serial})")
            }
            _ => " (no live certificate: it expired, or an operator allowed the cluster to rejoin)"
                .to_string(),
        };
        let kind = if outcome == Registered::New {
            "cluster.registered"
        } else {
            // The earlier certificates are revoked; a session holding one ends now.
            ctx.sessions.kick(
                &cluster_id,
                Status::permission_denied(format!(
                    "cluster {cluster_id} registered again; this session's certificate is revoked"
                )),
            );
            "cluster.reregistered"
        };
        ctx.audit(
            kind,
            &cluster_id,
            &peer,
            format!(
                "name {name}, token {token_id}{how}, certificate {}",
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
            writer: None,
            name: record.name,
            labels: record.labels,
            proposed: record.proposed,
            tx,
        };
        tokio::spawn(session.run(request.into_inner(), opened.closed));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A store failure while authorizing; the caller sees UNAVAILABLE, not a refusal.
struct StoreDown(skoala_store::StoreError);

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
    let Some(cert) = cert.filter(|c| c.cluster_id == cluster_id) else {
        return Ok(Err(refusal(
            Status::permission_denied(format!(
                "certificate {serial} was not issued to cluster {cluster_id} by this coordinator"
            )),
            "session.unknown_certificate",
            format!("certificate {serial} unknown for cluster {cluster_id}"),
        )));
    };
    if cert.revoked_unix.is_some() {
        return Ok(Err(refusal(
            Status::permission_denied(format!(
                "certificate {serial} of cluster {cluster_id} was revoked: the cluster registered again"
            )),
            "session.certificate_revoked",
            format!("revoked certificate {serial} presented"),
        )));
    }
    let now = now_unix();
    if cert.first_use_matters(now) {
        // From now on only its key (or an operator) can replace this certificate.
        ctx.store
            .certificate_used(serial.to_string(), now)
            .await
            .map_err(StoreDown)?;
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
