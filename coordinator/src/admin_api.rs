//! `FleetAdmin`: the operator's API (`skoalactl`). Every call requires the admin certificate;
//! agent certificates are refused and audited.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use skoala_proto::v1::fleet_admin_server::FleetAdmin;
use skoala_proto::v1::{
    AdminInfo, AllowRejoinRequest, AllowRejoinResponse, AuditEvent, Cluster, ClusterIdentity,
    CreateAdminRequest, CreateAdminResponse, CreateTokenRequest, CreateTokenResponse, Inventory,
    ListAdminsRequest, ListAdminsResponse, ListAuditRequest, ListAuditResponse,
    ListClustersRequest, ListClustersResponse, ListTokensRequest, ListTokensResponse,
    RevokeAdminRequest, RevokeAdminResponse, RevokeClusterRequest, RevokeClusterResponse,
    RevokeTokenRequest, RevokeTokenResponse, TokenInfo, UpdateClusterRequest,
};
use skoala_proto::v1::{
    ApplyPlanRequest, CheckPlanRequest, GetSkewRequest, ListPlansRequest, ListPlansResponse,
    PlanEvent, PlanRef, PlanStatus, PreflightResult, SkewReport, WatchEventsRequest,
};
use skoala_support::names;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admin_plans;
use crate::clock::now_unix;
use crate::context::Context;
use crate::identity::{Refusal, remote_of, require_admin};
use crate::orchestrator::{self, Verb};
use crate::tokens;
use skoala_store::{AdminRecord, ClusterRecord, Store, StoreError, TokenRecord};

/// Default lifetime of an operator's admin certificate (`skoalactl admin create`).
const DEFAULT_ADMIN_TTL: Duration = Duration::from_secs(90 * 86400);
/// Longest: an operator who leaves must not keep a credential for years if nobody revokes it.
const MAX_ADMIN_TTL: Duration = Duration::from_secs(366 * 86400);

/// Default join-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest join-token lifetime: a token is a bearer secret, it must not live for ever.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most audit events returned in one call.
const MAX_AUDIT_PAGE: u32 = 1000;

/// The admin service.
pub struct Admin<S> {
    ctx: Arc<Context<S>>,
}

impl<S> Admin<S> {
    pub fn new(ctx: Arc<Context<S>>) -> Self {
        Self { ctx }
    }
}

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error in the admin API");
    Status::unavailable(format!("the coordinator's store is unavailable: {e}"))
}

/// The one place plan errors become gRPC codes: what the caller did wrong is
/// `INVALID_ARGUMENT`, what the fleet or the plans' state does not allow now is
/// `FAILED_PRECONDITION`, a store failure `UNAVAILABLE` (retry later).
impl From<orchestrator::Error> for Status {
    fn from(e: orchestrator::Error) -> Status {
        use orchestrator::Error as E;
        use orchestrator::charts::ChartsError;
        let message = e.to_string();
        match e {
            E::Document(_) | E::Invalid(_) | E::NothingSelected => {
                Status::invalid_argument(message)
            }
            E::Charts(ChartsError::Missing(_)) => Status::invalid_argument(message),
            E::NoControlPlane
            | E::Skewed { .. }
            | E::Helm { .. }
            | E::Charts(ChartsError::Unavailable(_))
            | E::Busy { .. }
            | E::NotActive(_)
            | E::Managed { .. }
            | E::Refused(_) => Status::failed_precondition(message),
            E::Immutable(_) => Status::already_exists(message),
            E::NotFound(_) => Status::not_found(message),
            E::Unreadable(_) => Status::internal(message),
            E::Store(e) => store_status(e),
        }
    }
}

fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        created_unix: t.created_unix,
        expires_unix: t.expires_unix,
        uses_allowed: t.uses_allowed,
        uses_left: t.uses_left,
        revoked: t.revoked,
        description: t.description.clone(),
    }
}

impl<S: Store> Admin<S> {
    /// The admin check every call starts with: an admin certificate whose serial the store
    /// records for a named operator, not revoked. Returns the caller's description for audit,
    /// naming the operator.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        self.authorize_operator(request).await.map(|(who, _)| who)
    }

    /// [`Admin::authorize`], and the operator's name.
    async fn authorize_operator<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(String, String), Status> {
        let peer = remote_of(request);
        let serial = match require_admin(request) {
            Ok(serial) => serial,
            Err(r) => return Err(self.ctx.refuse(r, &peer).await),
        };
        let admin = self
            .ctx
            .store
            .admin(serial.clone())
            .await
            .map_err(store_status)?;
        let refusal = |kind, message: String| Refusal {
            status: Status::permission_denied(message.clone()),
            kind,
            cluster_id: String::new(),
            detail: message,
        };
        let r = match admin {
            Some(a) if a.revoked_unix.is_none() => {
                return Ok((
                    format!("{peer} (admin {}, certificate {serial})", a.name),
                    a.name,
                ));
            }
            Some(a) => refusal(
                "admin.certificate_revoked",
                format!("admin certificate {serial} of {} has been revoked", a.name),
            ),
            None => refusal(
                "admin.unknown_certificate",
                format!(
                    "admin certificate {serial} was never issued to an operator by `skoalactl admin create`"
                ),
            ),
        };
        Err(self.ctx.refuse(r, &peer).await)
    }

    /// The one registered cluster `wanted` names (an id, else a unique name); the error says
    /// why not, for `what` the operator asked.
    async fn resolve(&self, wanted: &str, what: &str) -> Result<ClusterRecord, Status> {
        let records = self.ctx.store.clusters().await.map_err(store_status)?;
        let by_id: Vec<&ClusterRecord> = records.iter().filter(|c| c.id == wanted).collect();
        let matches: Vec<&ClusterRecord> = if by_id.is_empty() {
            records.iter().filter(|c| c.name == wanted).collect()
        } else {
            by_id
        };
        match matches.as_slice() {
            [] => Err(Status::not_found(format!(
                "no registered cluster named or with id {wanted:?}"
            ))),
            [one] => Ok((*one).clone()),
            many => {
                let ids: Vec<&str> = many.iter().map(|c| c.id.as_str()).collect();
                Err(Status::failed_precondition(format!(
                    "{} clusters are named {wanted:?} ({}); {what} by cluster id",
                    many.len(),
                    ids.join(", ")
                )))
            }
        }
    }

    /// A registered cluster merged with its live session, if any.
    fn cluster_view(&self, c: ClusterRecord) -> Cluster {
        let live = self.ctx.sessions.get(&c.id);
        let id = c.id.clone();
        let stored_inventory = Inventory::decode(c.state.inventory.as_slice()).unwrap_or_default();
        let (agent_version, helm_version, inventory) = match &live {
            Some(l) => (
                l.agent_version.clone(),
                l.helm_version.clone(),
                l.inventory.clone().unwrap_or(stored_inventory),
            ),
            None => (
                c.state.agent_version,
                c.state.helm_version,
                stored_inventory,
            ),
        };
        Cluster {
            proposed: c.proposed.map(|p| ClusterIdentity {
                cluster_id: c.id.clone(),
                name: p.name,
                labels: p.labels.into_iter().collect(),
            }),
            identity: Some(ClusterIdentity {
                cluster_id: c.id,
                name: c.name,
                labels: c.labels.into_iter().collect(),
            }),
            control_plane: false,
            connected: live.is_some(),
            last_heartbeat_unix_ms: live
                .map(|l| l.last_heartbeat_ms)
                .or_else(|| self.ctx.sessions.last_seen(&id))
                .unwrap_or(0),
            agent_version,
            helm_version,
            releases: inventory.releases,
            revoked: c.revoked_unix.is_some(),
            registered_unix: c.registered_unix,
            certificate_serial: c.cert_serial,
            certificate_not_after_unix: c.cert_not_after_unix,
        }
    }
}

#[tonic::async_trait]
impl<S: Store> FleetAdmin for Admin<S> {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = self.authorize(&request).await?;
        let req = request.into_inner();
        let ttl = if req.ttl_seconds <= 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(req.ttl_seconds as u64)
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "a join token may live at most {} days",
                MAX_TOKEN_TTL.as_secs() / 86400
            )));
        }
        let uses = if req.uses == 0 { 1 } else { req.uses };
        let new = tokens::generate();
        let now = now_unix();
        let record = TokenRecord {
            id: new.id.clone(),
            secret_sha256: new.secret_sha256,
            created_unix: now,
            expires_unix: now + ttl.as_secs() as i64,
            uses_allowed: uses,
            uses_left: uses,
            revoked: false,
            description: req.description,
        };
        self.ctx
            .store
            .insert_token(record.clone())
            .await
            .map_err(store_status)?;
        self.ctx
            .audit(
                "token.created",
                "",
                &who,
                format!("token {} ({uses} uses, {}s)", record.id, ttl.as_secs()),
            )
            .await;
        Ok(Response::new(CreateTokenResponse {
            token: new.token,
            info: Some(token_info(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.authorize(&request).await?;
        let tokens = self.ctx.store.tokens().await.map_err(store_status)?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let who = self.authorize(&request).await?;
        let id = request.into_inner().id;
        // Accept a whole token pasted by mistake, but only ever use (and echo) its public id.
        let id = id.split_once('.').map(|(i, _)| i.to_string()).unwrap_or(id);
        if !self
            .ctx
            .store
            .revoke_token(id.clone())
            .await
            .map_err(store_status)?
        {
            return Err(Status::not_found(format!("no join token with id {id}")));
        }
        self.ctx
            .audit("token.revoked", "", &who, format!("token {id}"))
            .await;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        self.authorize(&request).await?;
        let records = self.ctx.store.clusters().await.map_err(store_status)?;
        let mut clusters: Vec<Cluster> = Vec::with_capacity(records.len() + 1);
        if let Some(cp) = &self.ctx.control_plane
            && let Some(c) = cp.view()
        {
            clusters.push(c);
        }
        clusters.extend(records.into_iter().map(|c| self.cluster_view(c)));
        Ok(Response::new(ListClustersResponse { clusters }))
    }

    async fn revoke_cluster(
        &self,
        request: Request<RevokeClusterRequest>,
    ) -> Result<Response<RevokeClusterResponse>, Status> {
        let who = self.authorize(&request).await?;
        let cluster = self
            .resolve(&request.into_inner().cluster, "revoke")
            .await?;
        let id = cluster.id.clone();
        self.ctx
            .store
            .revoke_cluster(id.clone(), now_unix())
            .await
            .map_err(store_status)?;
        let was_connected = self.ctx.sessions.kick(
            &id,
            Status::permission_denied(format!(
                "cluster {id} ({}) has been revoked by an operator",
                cluster.name
            )),
        );
        self.ctx
            .audit(
                "cluster.revoked",
                &id,
                &who,
                format!(
                    "cluster {} revoked{}",
                    cluster.name,
                    if was_connected {
                        "; live session closed"
                    } else {
                        ""
                    }
                ),
            )
            .await;
        Ok(Response::new(RevokeClusterResponse { cluster_id: id }))
    }

    async fn create_admin(
        &self,
        request: Request<CreateAdminRequest>,
    ) -> Result<Response<CreateAdminResponse>, Status> {
        let who = self.authorize(&request).await?;
        let req = request.into_inner();
        names::operator_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = if req.ttl_seconds <= 0 {
            DEFAULT_ADMIN_TTL
        } else {
            Duration::from_secs(req.ttl_seconds as u64)
        };
        if ttl > MAX_ADMIN_TTL {
            return Err(Status::invalid_argument(format!(
                "an admin certificate may live at most {} days",
                MAX_ADMIN_TTL.as_secs() / 86400
            )));
        }
        let issued = self
            .ctx
            .ca
            .issue_operator(&req.name, ttl)
            .map_err(|e| Status::internal(format!("cannot issue the certificate: {e}")))?;
        let now = now_unix();
        let record = AdminRecord {
            name: req.name.clone(),
            serial_hex: issued.issued.serial_hex.clone(),
            created_unix: now,
            not_after_unix: issued.issued.not_after_unix,
            revoked_unix: None,
        };
        let created = self
            .ctx
            .store
            .insert_admin(record, now)
            .await
            .map_err(store_status)?;
        if !created {
            return Err(Status::already_exists(format!(
                "admin {} exists; revoke it first (`skoalactl admin revoke {}`)",
                req.name, req.name
            )));
        }
        self.ctx
            .audit(
                "admin.created",
                "",
                &who,
                format!(
                    "admin {} created, certificate {}, {}s",
                    req.name,
                    issued.issued.serial_hex,
                    ttl.as_secs()
                ),
            )
            .await;
        Ok(Response::new(CreateAdminResponse {
            certificate_pem: issued.issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: self.ctx.ca.cert_pem().to_string(),
            serial: issued.issued.serial_hex,
            not_after_unix: issued.issued.not_after_unix,
        }))
    }

    async fn list_admins(
        &self,
        request: Request<ListAdminsRequest>,
    ) -> Result<Response<ListAdminsResponse>, Status> {
        self.authorize(&request).await?;
        let admins = self.ctx.store.admins().await.map_err(store_status)?;
        Ok(Response::new(ListAdminsResponse {
            admins: admins
                .into_iter()
                .map(|a| AdminInfo {
                    name: a.name,
                    serial: a.serial_hex,
                    created_unix: a.created_unix,
                    not_after_unix: a.not_after_unix,
                    revoked: a.revoked_unix.is_some(),
                })
                .collect(),
        }))
    }

    async fn revoke_admin(
        &self,
        request: Request<RevokeAdminRequest>,
    ) -> Result<Response<RevokeAdminResponse>, Status> {
        let who = self.authorize(&request).await?;
        let name = request.into_inner().name;
        let revoked = self
            .ctx
            .store
            .revoke_admin(name.clone(), now_unix())
            .await
            .map_err(store_status)?;
        if revoked == 0 {
            return Err(Status::not_found(format!("no live admin named {name:?}")));
        }
        self.ctx
            .audit(
                "admin.revoked",
                "",
                &who,
                format!("admin {name}: {revoked} certificate(s) revoked"),
            )
            .await;
        Ok(Response::new(RevokeAdminResponse { revoked }))
    }

    async fn allow_rejoin(
        &self,
        request: Request<AllowRejoinRequest>,
    ) -> Result<Response<AllowRejoinResponse>, Status> {
        let who = self.authorize(&request).await?;
        let cluster = self
            .resolve(&request.into_inner().cluster, "allow to rejoin")
            .await?;
        let id = cluster.id.clone();
        if cluster.revoked_unix.is_some() {
            return Err(Status::failed_precondition(format!(
                "cluster {id} ({}) is revoked; a revoked cluster never registers again",
                cluster.name
            )));
        }
        self.ctx
            .store
            .allow_rejoin(id.clone(), now_unix())
            .await
            .map_err(store_status)?;
        let was_connected = self.ctx.sessions.kick(
            &id,
            Status::permission_denied(format!(
                "cluster {id} ({}): an operator revoked its certificates so it can register again",
                cluster.name
            )),
        );
        self.ctx
            .audit(
                "cluster.rejoin_allowed",
                &id,
                &who,
                format!(
                    "cluster {} may register again with a join token; its certificates are revoked{}",
                    cluster.name,
                    if was_connected {
                        "; live session closed"
                    } else {
                        ""
                    }
                ),
            )
            .await;
        Ok(Response::new(AllowRejoinResponse { cluster_id: id }))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let who = self.authorize(&request).await?;
        let req = request.into_inner();
        let cluster = self.resolve(&req.cluster, "label or rename").await?;
        let id = cluster.id.clone();
        let mut labels = cluster.labels.clone();
        for key in &req.remove_labels {
            labels.remove(key);
        }
        labels.extend(req.set_labels);
        let name = if req.new_name.is_empty() {
            cluster.name.clone()
        } else {
            req.new_name
        };
        names::cluster_name(&name)
            .and_then(|()| names::labels(labels.iter()))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if name == cluster.name && labels == cluster.labels {
            return Ok(Response::new(self.cluster_view(cluster)));
        }
        let taken = self
            .ctx
            .store
            .set_cluster_identity(id.clone(), name.clone(), labels.clone())
            .await
            .map_err(store_status)?;
        if let Some(other) = taken {
            return Err(Status::already_exists(format!(
                "cluster name {name:?} is taken by cluster {other}"
            )));
        }
        self.ctx
            .audit(
                "cluster.relabelled",
                &id,
                &who,
                format!(
                    "name and labels changed from {} {:?} to {name} {labels:?}",
                    cluster.name, cluster.labels
                ),
            )
            .await;
        // Plans select by labels: the orchestrator's next round sees the change.
        self.ctx.orchestrator.poke();
        let updated = self
            .ctx
            .store
            .cluster(id.clone())
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("cluster {id} is gone")))?;
        Ok(Response::new(self.cluster_view(updated)))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            MAX_AUDIT_PAGE
        } else {
            req.limit.min(MAX_AUDIT_PAGE)
        };
        let events = self
            .ctx
            .store
            .audit(req.after_id, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListAuditResponse {
            events: events
                .into_iter()
                .map(|e| AuditEvent {
                    id: e.id,
                    at_unix_ms: e.at_unix_ms,
                    kind: e.kind,
                    cluster_id: e.cluster_id,
                    peer: e.peer,
                    detail: e.detail,
                })
                .collect(),
        }))
    }

    async fn apply_plan(
        &self,
        request: Request<ApplyPlanRequest>,
    ) -> Result<Response<PlanStatus>, Status> {
        let who = self.authorize(&request).await?;
        let req = request.into_inner();
        let ctx = &self.ctx;
        let status = ctx.orchestrator.apply(&req.document, req.force).await?;
        let forced = if req.force { " (forced)" } else { "" };
        ctx.audit(
            "plan.applied",
            "",
            &who,
            format!("plan {} to {}{forced}", status.name, status.version),
        )
        .await;
        Ok(Response::new(status))
    }

    async fn list_plans(
        &self,
        request: Request<ListPlansRequest>,
    ) -> Result<Response<ListPlansResponse>, Status> {
        self.authorize(&request).await?;
        let plans = self.ctx.orchestrator.list().await?;
        Ok(Response::new(ListPlansResponse { plans }))
    }

    async fn get_plan(&self, request: Request<PlanRef>) -> Result<Response<PlanStatus>, Status> {
        self.authorize(&request).await?;
        let name = request.into_inner().name;
        Ok(Response::new(self.ctx.orchestrator.status(&name).await?))
    }

    async fn approve_plan(
        &self,
        request: Request<PlanRef>,
    ) -> Result<Response<PlanStatus>, Status> {
        self.verb(request, Verb::Approve).await
    }

    async fn pause_plan(&self, request: Request<PlanRef>) -> Result<Response<PlanStatus>, Status> {
        self.verb(request, Verb::Pause).await
    }

    async fn resume_plan(&self, request: Request<PlanRef>) -> Result<Response<PlanStatus>, Status> {
        self.verb(request, Verb::Resume).await
    }

    async fn abort_plan(&self, request: Request<PlanRef>) -> Result<Response<PlanStatus>, Status> {
        self.verb(request, Verb::Abort).await
    }

    async fn rollback_plan(
        &self,
        request: Request<PlanRef>,
    ) -> Result<Response<PlanStatus>, Status> {
        self.verb(request, Verb::Rollback).await
    }

    async fn get_skew(
        &self,
        request: Request<GetSkewRequest>,
    ) -> Result<Response<SkewReport>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(admin_plans::skew(&self.ctx).await?))
    }

    type WatchEventsStream = ReceiverStream<Result<PlanEvent, Status>>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        Ok(Response::new(admin_plans::watch(
            self.ctx.clone(),
            req.plan,
            req.after_id,
            req.follow,
        )))
    }
    type CheckPlanStream = ReceiverStream<Result<PreflightResult, Status>>;

    async fn check_plan(
        &self,
        request: Request<CheckPlanRequest>,
    ) -> Result<Response<Self::CheckPlanStream>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(
            admin_plans::check(self.ctx.clone(), request.into_inner()).await?,
        ))
    }
}

impl<S: Store> Admin<S> {
    /// An operator's verb on a plan, audited; on the kube store written on the plan's object
    /// first ([`crate::gitops::record_verb`]).
    async fn verb(
        &self,
        request: Request<PlanRef>,
        verb: Verb,
    ) -> Result<Response<PlanStatus>, Status> {
        let (who, operator) = self.authorize_operator(&request).await?;
        let PlanRef { name, force } = request.into_inner();
        let ctx = &self.ctx;
        let status = match &ctx.plan_objects {
            Some(store) => {
                let record = |approved| {
                    crate::gitops::record_verb(store, &name, &operator, verb, approved, force)
                };
                ctx.orchestrator
                    .transition_recorded(&name, verb, record)
                    .await?
            }
            None => ctx.orchestrator.transition(&name, verb).await?,
        };
        ctx.audit(
            &format!("plan.{}", verb.as_str()),
            "",
            &who,
            format!("plan {name} is now {}", status.phase),
        )
        .await;
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::orchestrator::{Error, charts::ChartsError};

    #[test]
    fn plan_errors_become_the_codes_a_caller_acts_on() {
        let code = |e: Error| Status::from(e).code();
        assert_eq!(code(Error::NothingSelected), Code::InvalidArgument);
        assert_eq!(
            code(Error::Charts(ChartsError::Missing("9.9.9".into()))),
            Code::InvalidArgument
        );
        assert_eq!(
            code(Error::Charts(ChartsError::Unavailable("refused".into()))),
            Code::FailedPrecondition
        );
        let busy = Error::Busy {
            active: "p1".into(),
            phase: "workers",
        };
        assert_eq!(code(busy), Code::FailedPrecondition);
        assert_eq!(code(Error::Immutable("p".into())), Code::AlreadyExists);
        assert_eq!(code(Error::NotFound("p".into())), Code::NotFound);
        let down = Error::Store(StoreError::Worker("gone".into()));
        let status = Status::from(down);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("the coordinator's store is unavailable"),
            "{status:?}"
        );
    }
}
