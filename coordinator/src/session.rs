//! One agent's live session: the loop behind `AgentGateway.Session`.
//!
//! The loop ends when the agent hangs up, when the operator revokes the cluster (the close
//! signal from [`crate::sessions`]), when a newer session of the same cluster replaces it, when
//! a message violates the contract (wrong cluster id, too large), or when the agent goes
//! silent for longer than `agent_timeout` — pings every `ping_interval` give a live agent
//! something to answer, and HTTP/2 keepalives catch dead TCP connections underneath — or when
//! it drops more messages than its quotas allow ([`crate::quota`]).
//!
//! The agent's certificate sits in a cluster we do not control, so what it says about
//! operations is checked: progress, results and backups are taken only for an operation sent
//! to this cluster and not finished ([`crate::orchestrator::Orchestrator::sent_to`]); the rest
//! is dropped and audited once per session.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use prost::Message;
use skoala_proto::v1::{
    AgentMessage, CertificateIssued, CoordinatorMessage, Inventory, Ping, agent_message,
    agent_message::Body, coordinator_message,
};
use skoala_support::names;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tonic::{Code, Status, Streaming};

use crate::clock::{now_ms, now_unix};
use crate::context::Context;
use crate::orchestrator::fleet::release_summary;
use crate::quota::{Dropped, Limits, Quota, Strike};
use crate::relay;
use skoala_store::{CertRecord, ClusterState, Identity, Store};

/// The state of one session task.
pub(crate) struct Session<S> {
    pub ctx: Arc<Context<S>>,
    pub cluster_id: String,
    pub peer: String,
    pub session: u64,
    /// What the store holds for this cluster, or was handed to [`Session::writer`] to hold;
    /// compared before writing so only changes persist.
    pub stored: ClusterState,
    /// Stores the cluster's state off this loop (started at the first change).
    pub writer: Option<StateWriter>,
    /// The cluster's name and labels (the operator's), and what the agent proposed instead: a
    /// Hello is compared with them so an unchanged proposal is neither written nor audited.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub proposed: Option<Identity>,
    pub tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
}

/// Stores a session's cluster state (versions, inventory) off the session's loop, newest
/// first. An agent reports its inventory as an upgrade finishes, next to the task's result:
/// written in the loop, the result waited for the write. Nothing waits for it (the orchestrator
/// reads the live inventory; the store's copy is for `skoalactl`, `kubectl` and a restart), so
/// the writer hands each change to the store as a report ([`skoala_store::IdentityStore::report_cluster_state`]),
/// which the kube store holds until the result's write to the same object carries it and
/// SQLite writes a moment later, out of the result's transaction's way; a change made while
/// one is being stored replaces the one waiting behind it. A refused write is logged;
/// the next change, or the agent's next Hello, stores the state again.
pub(crate) struct StateWriter {
    newest: watch::Sender<Option<ClusterState>>,
    /// Ends once the sender is dropped and the last state handed is stored.
    task: JoinHandle<()>,
}

impl StateWriter {
    /// Starts the writer of `cluster_id`'s state, which `write` stores.
    fn spawn<W, F>(cluster_id: String, write: W) -> Self
    where
        W: Fn(ClusterState) -> F + Send + 'static,
        F: Future<Output = Result<(), skoala_store::StoreError>> + Send,
    {
        let (newest, mut handed) = watch::channel(None::<ClusterState>);
        let task = tokio::spawn(async move {
            // A value handed before the sender went is still seen: `changed` reports it first.
            while handed.changed().await.is_ok() {
                let Some(state) = handed.borrow_and_update().clone() else {
                    continue;
                };
                if let Err(e) = write(state).await {
                    tracing::error!(error = %e, cluster_id, "could not persist cluster state");
                }
            }
        });
        StateWriter { newest, task }
    }

    fn hand(&self, state: ClusterState) {
        self.newest.send_replace(Some(state));
    }

    /// Returns once the last state handed is stored (or its write failed): a cluster whose
    /// session ended is judged on what is stored, read as the session leaves.
    async fn finish(self) {
        drop(self.newest);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the cluster state writer failed");
        }
    }
}

/// Why a message ended the session.
type Fatal = Status;

impl<S: Store> Session<S> {
    pub async fn run(
        mut self,
        mut inbound: Streaming<AgentMessage>,
        mut closed: oneshot::Receiver<Status>,
    ) {
        let settings = self.ctx.settings.clone();
        let mut pings = interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut deadline = Instant::now() + settings.agent_timeout;
        let mut quota = Quota::new(Limits::default(), std::time::Instant::now());

        let outcome: Result<(), Status> = loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        deadline = Instant::now() + settings.agent_timeout;
                        if let Err(fatal) = self.handle(m, &mut quota).await {
                            break Err(fatal);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break self.inbound_error(status).await,
                },
                status = &mut closed => {
                    // Sender dropped without a status: the coordinator is going away.
                    break Err(status.unwrap_or_else(|_| Status::unavailable("session closed")));
                }
                _ = pings.tick() => {
                    // try_send: a slow reader must not stall the loop; a missed ping is harmless.
                    let _ = self.tx.try_send(Ok(ping()));
                }
                _ = sleep_until(deadline) => {
                    tracing::warn!(cluster_id = self.cluster_id, "agent silent; closing its session");
                    break Err(Status::unavailable(format!(
                        "no message from the agent for {:?}; session closed",
                        settings.agent_timeout
                    )));
                }
                _ = self.tx.closed() => break Ok(()),
            }
        };
        if let Some(summary) = quota.summary() {
            self.ctx
                .audit("session.dropped", &self.cluster_id, &self.peer, summary)
                .await;
        }
        if let Err(status) = outcome {
            let _ = self.tx.send(Err(status)).await;
        }
        // A cluster that left is judged on what is stored, read once it leaves the sessions.
        if let Some(writer) = self.writer.take() {
            writer.finish().await;
        }
        self.ctx.sessions.remove(&self.cluster_id, self.session);
        self.ctx.orchestrator.poke();
        self.ctx.metrics.session_closed();
        tracing::info!(
            cluster_id = self.cluster_id,
            peer = self.peer,
            "agent session closed"
        );
    }

    /// A read error: an oversized message is a contract violation worth an audit entry; anything
    /// else is the connection going away.
    async fn inbound_error(&self, status: Status) -> Result<(), Status> {
        let too_large = matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted)
            && status.message().contains("too large");
        if too_large {
            self.ctx
                .refused(
                    "session.message_too_large",
                    &self.cluster_id,
                    &self.peer,
                    status.message().to_string(),
                )
                .await;
            return Err(Status::resource_exhausted(format!(
                "message refused: {}; session closed",
                status.message()
            )));
        }
        tracing::debug!(cluster_id = self.cluster_id, %status, "session read ended");
        Ok(())
    }

    async fn handle(&mut self, m: AgentMessage, quota: &mut Quota) -> Result<(), Fatal> {
        let ctx = self.ctx.clone();
        ctx.metrics.message(message_kind(&m));
        if m.cluster_id != self.cluster_id {
            return Err(self.identity_mismatch(&m.cluster_id).await);
        }
        ctx.sessions.heard(&self.cluster_id, self.session, now_ms());
        match m.body {
            Some(Body::Hello(hello)) => {
                if let Some(id) = &hello.identity
                    && !id.cluster_id.is_empty()
                    && id.cluster_id != self.cluster_id
                {
                    return Err(self.identity_mismatch(&id.cluster_id).await);
                }
                if let Some(id) = hello.identity {
                    self.identity(id.name, id.labels.into_iter().collect())
                        .await;
                }
                let inventory = hello.inventory.unwrap_or_default();
                ctx.sessions.update(&self.cluster_id, self.session, |l| {
                    l.agent_version = hello.agent_version.clone();
                    l.helm_version = hello.helm_version.clone();
                    l.inventory = Some(inventory.clone());
                });
                // A (re)connected agent: re-send its running task, start waiting ones.
                ctx.orchestrator.poke();
                let state = ClusterState {
                    agent_version: hello.agent_version,
                    helm_version: hello.helm_version,
                    inventory: encode_inventory(&inventory),
                    release: release_summary(&inventory),
                };
                self.persist(state).await;
            }
            Some(Body::Inventory(inventory)) => {
                self.inventory(inventory);
                ctx.orchestrator.poke();
            }
            Some(body @ (Body::TaskAccepted(_) | Body::StepProgress(_) | Body::TaskResult(_))) => {
                let (what, op) = operation_of(&body);
                if !quota.message(std::time::Instant::now()) {
                    let detail = format!("{what} for {op:?} over the message rate; dropped");
                    return self.dropped(quota, Dropped::OverQuota, detail).await;
                }
                if !ctx.orchestrator.sent_to(&self.cluster_id, op) {
                    let detail = format!(
                        "{what} for operation {op:?}, which was never sent to this cluster or has finished; dropped"
                    );
                    return self
                        .dropped(quota, Dropped::UnexpectedOperation, detail)
                        .await;
                }
                ctx.orchestrator.agent_message(&self.cluster_id, body);
            }
            Some(Body::Heartbeat(_)) => {}
            Some(Body::CertificateRenewal(renewal)) => {
                self.renew(&renewal.csr_pem).await?;
            }
            // The chart relay and backup storage (crate::relay, crate::backups).
            // A task each, so streaming a chart or syncing a file never stalls this loop.
            // A chart is the same for every cluster of a plan and is served only from the relay
            // cache, so any joined agent may ask; what it costs is capped.
            Some(Body::ChartRequest(req)) => {
                let permit = quota
                    .message(std::time::Instant::now())
                    .then(|| quota.chart())
                    .flatten();
                let Some(permit) = permit else {
                    self.refuse(chart_refused(&req.sha256));
                    let detail = format!(
                        "chart request for {} over the rate or the transfers in flight; refused",
                        req.sha256
                    );
                    return self.dropped(quota, Dropped::OverQuota, detail).await;
                };
                let (dir, tx, metrics) =
                    (ctx.data_dir.clone(), self.tx.clone(), ctx.metrics.clone());
                tokio::spawn(async move {
                    relay::answer(&dir, &req, &tx, |n| metrics.relay_bytes_sent(n)).await;
                    drop(permit);
                });
            }
            Some(Body::BackupUpload(upload)) => {
                let op = upload.operation_id.clone();
                if !ctx.orchestrator.sent_to(&self.cluster_id, &op) {
                    self.refuse(backup_refused(
                        &upload,
                        "no such operation for this cluster",
                    ));
                    let detail = format!(
                        "backup upload for operation {op:?}, which was never sent to this cluster or has finished; not stored"
                    );
                    return self
                        .dropped(quota, Dropped::UnexpectedOperation, detail)
                        .await;
                }
                let permit = quota
                    .message(std::time::Instant::now())
                    .then(|| quota.upload(upload.values_yaml.len()))
                    .flatten();
                let Some(permit) = permit else {
                    self.refuse(backup_refused(&upload, "over this agent's upload quota"));
                    let detail = format!(
                        "backup upload for {op:?} ({} bytes) over the rate or the bytes in flight; not stored",
                        upload.values_yaml.len()
                    );
                    return self.dropped(quota, Dropped::OverQuota, detail).await;
                };
                let (backups, tx, id) = (
                    ctx.backups.clone(),
                    self.tx.clone(),
                    self.cluster_id.clone(),
                );
                let keep = ctx.settings.retention.backups_per_release;
                tokio::spawn(async move {
                    let ack = backups.store(&id, &upload).await;
                    backups.prune_release(&id, &upload.release, keep).await;
                    drop(permit);
                    let _ = tx.send(Ok(backup_stored(ack))).await;
                });
            }
            // An empty message (a newer agent's body this build does not know) is counted and
            // ignored.
            None => {}
        }
        Ok(())
    }

    /// Sends a refusal the agent waits for (a chart fetch, a backup upload's acknowledgement).
    /// It waits for room like a chunk does: the channel is full exactly while transfers stream,
    /// and a refusal dropped there would leave the agent waiting out its timeout. A task of its
    /// own keeps the session loop from stalling; a refusal is also a strike, so at most
    /// `Limits::hard_limit` of them wait before the session closes.
    fn refuse(&self, refusal: CoordinatorMessage) {
        let tx = self.tx.clone();
        tokio::spawn(async move { tx.send(Ok(refusal)).await });
    }

    /// Counts a dropped message: the first of its kind in this session is audited (throttled
    /// across sessions by [`Context::refused`]), the rest are summarised when the session ends;
    /// past the hard limit the session is closed.
    async fn dropped(&self, quota: &mut Quota, why: Dropped, detail: String) -> Result<(), Fatal> {
        match quota.strike(why) {
            Strike::First => {
                self.ctx
                    .refused(why.kind(), &self.cluster_id, &self.peer, detail)
                    .await
            }
            Strike::Counted => self.ctx.metrics.refusal(why.kind()),
            Strike::Close => {
                let detail = format!(
                    "too many dropped messages; session closed ({})",
                    quota.summary().unwrap_or_default()
                );
                self.ctx
                    .refused(
                        "session.flood",
                        &self.cluster_id,
                        &self.peer,
                        detail.clone(),
                    )
                    .await;
                return Err(Status::resource_exhausted(detail));
            }
        }
        Ok(())
    }

    async fn identity_mismatch(&self, claimed: &str) -> Status {
        let detail = format!(
            "message claims cluster {claimed:?} but the client certificate is for cluster {}",
            self.cluster_id
        );
        self.ctx
            .refused(
                "session.identity_mismatch",
                &self.cluster_id,
                &self.peer,
                detail.clone(),
            )
            .await;
        Status::permission_denied(format!("{detail}; session closed"))
    }

    /// Name and labels are the operator's: fixed when the cluster registered, changed only by
    /// `skoalactl cluster label|rename` (plans select and order clusters by them, so a cluster
    /// must not choose its own, like Kubernetes' NodeRestriction). A Hello asking for another
    /// name or other labels is recorded as the cluster's proposal, shown to operators and
    /// audited once per new proposal (throttled across sessions), never applied. An invalid one
    /// is refused and audited, and nothing is recorded.
    async fn identity(&mut self, name: String, labels: BTreeMap<String, String>) {
        let name = if name.is_empty() {
            self.name.clone()
        } else {
            name
        };
        let asked = Identity { name, labels };
        let proposed = (asked.name != self.name || asked.labels != self.labels).then_some(asked);
        if proposed == self.proposed {
            return;
        }
        if let Some(p) = &proposed
            && let Err(e) =
                names::cluster_name(&p.name).and_then(|()| names::labels(p.labels.iter()))
        {
            self.refuse_identity(e.to_string()).await;
            return;
        }
        if let Err(e) = self
            .ctx
            .store
            .propose_identity(self.cluster_id.clone(), proposed.clone())
            .await
        {
            tracing::error!(error = %e, cluster_id = self.cluster_id, "could not record the proposed identity");
            return;
        }
        if let Some(p) = &proposed {
            let detail = format!(
                "the agent asks for name {} and labels {:?}; not applied: the cluster keeps name {} and labels {:?} until an operator runs `skoalactl cluster label|rename`",
                p.name, p.labels, self.name, self.labels
            );
            self.ctx
                .refused(
                    "cluster.identity_proposed",
                    &self.cluster_id,
                    &self.peer,
                    detail,
                )
                .await;
        }
        self.proposed = proposed;
    }

    async fn refuse_identity(&self, why: String) {
        self.ctx
            .refused(
                "cluster.relabel_refused",
                &self.cluster_id,
                &self.peer,
                format!("{why}; the cluster keeps the name {}", self.name),
            )
            .await;
    }

    fn inventory(&mut self, inventory: Inventory) {
        self.ctx
            .sessions
            .update(&self.cluster_id, self.session, |l| {
                l.inventory = Some(inventory.clone())
            });
        let state = ClusterState {
            inventory: encode_inventory(&inventory),
            release: release_summary(&inventory),
            ..self.stored.clone()
        };
        self.persist_later(state);
    }

    /// Writes `state` if it differs from what the store holds (a transition, not a heartbeat):
    /// a Hello's, before anything else of the session, so a cluster that leaves at once is
    /// still judged on what it said.
    async fn persist(&mut self, state: ClusterState) {
        if same_state(&state, &self.stored) {
            return;
        }
        match self
            .ctx
            .store
            .set_cluster_state(self.cluster_id.clone(), state.clone())
            .await
        {
            Ok(()) => self.stored = state,
            Err(e) => {
                tracing::error!(error = %e, cluster_id = self.cluster_id, "could not persist cluster state")
            }
        }
    }

    /// Has `state` stored by the session's [`StateWriter`] if it differs from what was last
    /// stored or handed over: a later report, which must not hold the messages behind it.
    fn persist_later(&mut self, state: ClusterState) {
        if same_state(&state, &self.stored) {
            return;
        }
        self.stored = state.clone();
        let writer = self.writer.get_or_insert_with(|| {
            let (ctx, id) = (self.ctx.clone(), self.cluster_id.clone());
            StateWriter::spawn(self.cluster_id.clone(), move |state| {
                let (ctx, id) = (ctx.clone(), id.clone());
                async move { ctx.store.report_cluster_state(id, state).await }
            })
        });
        writer.hand(state);
    }

    /// Signs a renewal CSR for the session's own identity (never one named in the CSR).
    async fn renew(&self, csr_pem: &str) -> Result<(), Fatal> {
        let ctx = &self.ctx;
        let issued = match ctx
            .ca
            .sign_agent_csr(csr_pem, &self.cluster_id, ctx.settings.cert_ttl)
        {
            Ok(i) => i,
            Err(e) => {
                ctx.audit(
                    "certificate.renewal_refused",
                    &self.cluster_id,
                    &self.peer,
                    e.to_string(),
                )
                .await;
                return Err(Status::invalid_argument(format!(
                    "cannot renew the certificate: {e}"
                )));
            }
        };
        let record = CertRecord {
            serial_hex: issued.serial_hex.clone(),
            cluster_id: self.cluster_id.clone(),
            issued_unix: now_unix(),
            not_after_unix: issued.not_after_unix,
            revoked_unix: None,
            first_session_unix: None,
        };
        if let Err(e) = ctx.store.record_certificate(record).await {
            tracing::error!(error = %e, "could not record a renewed certificate");
            // Not fatal for the session: the agent keeps its current certificate and retries.
            return Ok(());
        }
        ctx.audit(
            "certificate.renewed",
            &self.cluster_id,
            &self.peer,
            format!("certificate {}", issued.serial_hex),
        )
        .await;
        let msg = certificate_issued(issued.cert_pem, ctx.ca.cert_pem(), issued.not_after_unix);
        if self.tx.send(Ok(msg)).await.is_err() {
            tracing::debug!(
                cluster_id = self.cluster_id,
                "agent left before its renewal was sent"
            );
        }
        Ok(())
    }
}

fn backup_stored(ack: skoala_proto::v1::BackupStored) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(skoala_proto::v1::coordinator_message::Body::BackupStored(
            ack,
        )),
    }
}

/// The answer to a chart request over quota: the agent refuses its task with this text.
fn chart_refused(sha256: &str) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(coordinator_message::Body::ChartChunk(
            skoala_proto::v1::ChartChunk {
                sha256: sha256.to_string(),
                last: true,
                error: "too many chart requests from this agent at once; retry later".into(),
                ..Default::default()
            },
        )),
    }
}

/// The answer to an upload that is not stored.
fn backup_refused(upload: &skoala_proto::v1::BackupUpload, why: &str) -> CoordinatorMessage {
    backup_stored(skoala_proto::v1::BackupStored {
        operation_id: upload.operation_id.clone(),
        generation: upload.generation,
        sha256: upload.sha256.clone(),
        error: format!("backup not stored: {why}"),
    })
}

/// What a task message is, and the operation it names.
fn operation_of(body: &Body) -> (&'static str, &str) {
    match body {
        Body::TaskAccepted(a) => ("task accepted", &a.operation_id),
        Body::StepProgress(p) => ("step progress", &p.operation_id),
        Body::TaskResult(r) => ("task result", &r.operation_id),
        _ => ("message", ""),
    }
}

/// Builds a Ping.
fn ping() -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(coordinator_message::Body::Ping(Ping {
            sent_unix_ms: now_ms(),
        })),
    }
}

/// Builds a CertificateIssued.
fn certificate_issued(cert_pem: String, ca: &str, not_after: i64) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(coordinator_message::Body::CertificateIssued(
            CertificateIssued {
                certificate_pem: cert_pem,
                ca_bundle_pem: ca.to_string(),
                not_after_unix: not_after,
            },
        )),
    }
}

/// The metric label of an agent message.
fn message_kind(m: &AgentMessage) -> &'static str {
    use agent_message::Body;
    match &m.body {
        None => "empty",
        Some(Body::Hello(_)) => "hello",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Inventory(_)) => "inventory",
        Some(Body::TaskAccepted(_)) => "task_accepted",
        Some(Body::StepProgress(_)) => "step_progress",
        Some(Body::TaskResult(_)) => "task_result",
        Some(Body::BackupUpload(_)) => "backup_upload",
        Some(Body::CertificateRenewal(_)) => "certificate_renewal",
        Some(Body::ChartRequest(_)) => "chart_request",
    }
}

/// Encodes an inventory for the store.
/// Whether `a` and `b` say the same, though their inventories' bytes may differ: protobuf
/// encodes a map (a release's image tags) in the order its `HashMap` iterates, which differs
/// between maps, so every reconnect of an agent would otherwise write its unchanged
/// inventory again, and a new leader's reconnect storm would be a write per cluster.
fn same_state(a: &ClusterState, b: &ClusterState) -> bool {
    if a == b {
        return true;
    }
    a.agent_version == b.agent_version
        && a.helm_version == b.helm_version
        && a.release == b.release
        && match (
            Inventory::decode(a.inventory.as_slice()),
            Inventory::decode(b.inventory.as_slice()),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

fn encode_inventory(inv: &skoala_proto::v1::Inventory) -> Vec<u8> {
    inv.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use skoala_proto::v1::ReleaseInventory;

    use super::*;

    fn state(tags: HashMap<String, String>, version: &str) -> ClusterState {
        let inventory = Inventory {
            releases: vec![ReleaseInventory {
                release: "skoala-init".into(),
                chart_version: version.into(),
                image_tags: tags,
                ..Default::default()
            }],
        };
        ClusterState {
            agent_version: "1.0.0".into(),
            inventory: encode_inventory(&inventory),
            ..Default::default()
        }
    }

    /// How long the recording store takes for a write.
    const WRITE: Duration = Duration::from_millis(250);

    /// Each state stored: its agent version, and the (paused) time since the writer began.
    type Stored = Arc<std::sync::Mutex<Vec<(String, Duration)>>>;

    /// A writer whose stores take [`WRITE`] each and are recorded as they finish.
    fn recording() -> (StateWriter, Stored) {
        let began = tokio::time::Instant::now();
        let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = stored.clone();
        let writer = StateWriter::spawn("c1".into(), move |state: ClusterState| {
            let record = record.clone();
            async move {
                tokio::time::sleep(WRITE).await;
                record
                    .lock()
                    .expect("stored")
                    .push((state.agent_version, began.elapsed()));
                Ok(())
            }
        });
        (writer, stored)
    }

    fn agent(version: &str) -> ClusterState {
        ClusterState {
            agent_version: version.into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_is_stored_at_once_and_of_those_made_meanwhile_only_the_newest() {
        let (writer, stored) = recording();
        writer.hand(agent("1"));
        tokio::task::yield_now().await;
        writer.hand(agent("2"));
        writer.hand(agent("3"));
        tokio::time::sleep(WRITE * 3).await;
        assert_eq!(
            *stored.lock().expect("stored"),
            [("1".to_string(), WRITE), ("3".to_string(), WRITE * 2)],
            "the first at once, then the newest of those handed while it was being stored"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_ends_waits_until_its_last_report_is_stored() {
        let (writer, stored) = recording();
        writer.hand(agent("1"));
        writer.finish().await;
        assert_eq!(
            *stored.lock().expect("stored"),
            [("1".to_string(), WRITE)],
            "stored before the session leaves the sessions"
        );
    }

    #[test]
    fn an_inventory_whose_map_is_encoded_in_another_order_is_the_same_state() {
        let tags: Vec<(String, String)> = (0..32)
            .map(|i| (format!("image-{i}.tag"), format!("v{i}")))
            .collect();
        let forward: HashMap<_, _> = tags.iter().cloned().collect();
        let backward: HashMap<_, _> = tags.iter().rev().cloned().collect();
        let (a, b) = (state(forward.clone(), "0.19.1"), state(backward, "0.19.1"));
        assert!(
            same_state(&a, &b),
            "equal inventories, whatever their bytes"
        );
        assert!(
            !same_state(&a, &state(forward.clone(), "0.19.2")),
            "another chart version is a change"
        );
        let mut retagged = forward;
        retagged.insert("image-0.tag".into(), "v99".into());
        assert!(
            !same_state(&a, &state(retagged, "0.19.1")),
            "another image tag is a change"
        );
        let newer_agent = ClusterState {
            agent_version: "1.0.1".into(),
            ..a.clone()
        };
        assert!(
            !same_state(&a, &newer_agent),
            "another agent version is a change"
        );
    }
}
