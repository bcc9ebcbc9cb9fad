//! The store's contract.

use std::collections::BTreeMap;
use std::future::Future;

use crate::{
    AdminRecord, AuditRecord, CertRecord, Claim, ClusterRecord, ClusterState, Cutoffs, Identity,
    NewAudit, PlanEventRecord, PlanRecord, Pruned, RegisterError, Registered, Registration,
    RolloutWrite, Snapshot, StoreError, TargetRecord, TokenRecord,
};

/// Who may talk to the coordinator: join tokens, registrations, clusters, their
/// certificates, and operators. Used by the gateway, the sessions, the admin API and the
/// orchestrator's fleet view.
pub trait IdentityStore: Send + Sync + 'static {
    /// Records a new join token.
    fn insert_token(
        &self,
        token: TokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every token, revoked and used-up ones included.
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;
    /// Returns false when no such token exists.
    fn revoke_token(&self, id: String) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Checks a claim without writing anything (token, cluster, name): what `Register` asks
    /// before it spends a CA signature and a write transaction on the caller.
    fn admit(&self, claim: Claim) -> impl Future<Output = Result<(), RegisterError>> + Send;
    /// Checks the claim again and records it, in one transaction. A cluster registered before
    /// gets every earlier certificate revoked. The claim's name and labels become the
    /// cluster's, except when the caller registers again proving its key
    /// ([`Registered::Proved`]): no operator sanctioned that, so they are only proposed.
    fn register(
        &self,
        registration: Registration,
    ) -> impl Future<Output = Result<Registered, RegisterError>> + Send;
    /// An operator's consent for a cluster that lost its key: revokes its certificates, so the
    /// next `Register` with a valid token needs no proof of the old key. Returns false when no
    /// such cluster exists.
    fn allow_rejoin(
        &self,
        id: String,
        now_unix: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The cluster with this id, revoked or not.
    fn cluster(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<ClusterRecord>, StoreError>> + Send;
    /// Every cluster, revoked ones included.
    fn clusters(&self) -> impl Future<Output = Result<Vec<ClusterRecord>, StoreError>> + Send;
    /// A number that changes whenever a cluster is added, renamed, relabelled, re-registered
    /// or revoked — not when its state (inventory, versions), a proposal or a certificate's
    /// first use is written. The orchestrator keeps its fleet view between rounds and reads
    /// every row again only when this moved (`orchestrator::fleet::FleetCache`): at 10,000
    /// clusters the full read was most of a round's cost (BENCHMARKS.md).
    fn clusters_version(&self) -> u64;
    /// Persists a changed state (callers compare first; this is not a heartbeat).
    fn set_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// [`IdentityStore::set_cluster_state`] for a report nobody waits for (an agent's inventory
    /// after a change, stored off its session's loop): a store may hold it a moment so the
    /// cluster's next write carries it, which is usually the result of the task that changed
    /// it. A store that has nothing to gain writes it as `set_cluster_state` does.
    fn report_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.set_cluster_state(id, state)
    }
    /// An operator's change of a cluster's name or labels. Names are unique: returns the id of
    /// the cluster that already has `name`, and writes nothing, when it is taken. A proposal
    /// equal to the new identity is cleared (it has been applied).
    fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Records what an agent asked for when it differs from the cluster's identity (`None`
    /// clears it: the agent asks for what the cluster has). Does not change the identity.
    fn propose_identity(
        &self,
        id: String,
        proposed: Option<Identity>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Returns false when no such cluster exists; revoking twice keeps the first time.
    fn revoke_cluster(
        &self,
        id: String,
        now_unix: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The certificate with this serial.
    fn certificate(
        &self,
        serial_hex: String,
    ) -> impl Future<Output = Result<Option<CertRecord>, StoreError>> + Send;
    /// Records a certificate issued to a cluster already registered (a renewal) and makes it the
    /// cluster's newest.
    fn record_certificate(
        &self,
        cert: CertRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Notes that a session used certificate `serial_hex` (once per certificate: callers check
    /// [`CertRecord::first_session_unix`] first).
    fn certificate_used(
        &self,
        serial_hex: String,
        now_unix: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records an admin certificate. Returns false, and writes nothing, when an admin of that
    /// name is live (not revoked, not expired at `now_unix`).
    fn insert_admin(
        &self,
        admin: AdminRecord,
        now_unix: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The admin certificate with this serial.
    fn admin(
        &self,
        serial_hex: String,
    ) -> impl Future<Output = Result<Option<AdminRecord>, StoreError>> + Send;
    /// Every admin certificate, oldest first.
    fn admins(&self) -> impl Future<Output = Result<Vec<AdminRecord>, StoreError>> + Send;
    /// Revokes every certificate of admin `name`; returns how many were live.
    fn revoke_admin(
        &self,
        name: String,
        now_unix: i64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
}

/// The append-only record of who did what (`skoalactl audit`).
pub trait AuditLog: Send + Sync + 'static {
    /// Appends an audit event; returns its id.
    fn append_audit(&self, event: NewAudit)
    -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Events with `id > after_id`, oldest first, at most `limit`.
    fn audit(
        &self,
        after_id: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
}

/// Upgrade plans, their rollouts and their event log. Used by the orchestrator only.
pub trait PlanStore: Send + Sync + 'static {
    /// Creates or replaces a plan and appends `events`, in one transaction. Saving one as
    /// active makes every other plan inactive (one active plan at a time). Returns the id of
    /// the last event.
    fn put_plan(
        &self,
        plan: PlanRecord,
        events: Vec<PlanEventRecord>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Every plan, oldest first.
    fn plans(&self) -> impl Future<Output = Result<Vec<PlanRecord>, StoreError>> + Send;
    /// Applies one write of a plan's rollout — its head if given, each given target (created or
    /// replaced by cluster id; the others stay as stored) — all or nothing: the coordinator
    /// acts on a target only after the write that holds it returned (invariant 2). Appends its
    /// events, which take their ids in the write's order but, unlike the state, may still be
    /// being stored when it returns: they gate nothing, so a store that must wait for its log
    /// (the kube store's group commit) does not hold the round's tasks that long. A later
    /// `plan_events` returns them; a lost one loses history, never state. Returns the id of the
    /// last event (0 without events). An unknown plan is an error.
    fn save_rollout(
        &self,
        write: RolloutWrite,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Stores targets entering `running` or `rollingBack`, and beside them the results those
    /// starts carry the copies of (what [`PlanStore::save_rollout`] would store given these
    /// targets alone), calling `stored` with each one's cluster id as soon as its own entry is
    /// stored. The coordinator sends a target's operation once *its*
    /// entry is stored (invariant 2, per operation), so where each target is a request of its
    /// own (the kube store) the first start of a burst goes out without waiting for the last.
    /// A target named to `stored` is stored; one not named is taken as not stored and written
    /// again by a later round. Whether a refusal keeps the others is the store's: SQLite
    /// stores all or none, the kube store each on its own. Returns the first error; an unknown
    /// plan is an error.
    fn start_targets(
        &self,
        plan: String,
        targets: Vec<TargetRecord>,
        stored: &(dyn Fn(&str) + Send + Sync),
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Appends events (progress that changes no rollout state). Returns the last id; the
    /// events may be stored after it returns, as for `save_rollout`.
    fn append_plan_events(
        &self,
        events: Vec<PlanEventRecord>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Events with `id > after_id` (of `plan`, unless empty), oldest first, at most `limit`.
    fn plan_events(
        &self,
        plan: String,
        after_id: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PlanEventRecord>, StoreError>> + Send;
    /// Mean duration of the successful upgrades recorded so far (the fleet's own history),
    /// `None` before the first.
    fn mean_upgrade_ms(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

/// Letting old records go (`serve --retain-*`).
pub trait Retention: Send + Sync + 'static {
    /// Deletes what retention lets go ([`Cutoffs`]), in one transaction. The active plan's
    /// events are kept whatever their age.
    fn prune(&self, cutoffs: Cutoffs) -> impl Future<Output = Result<Pruned, StoreError>> + Send;
}

/// Moving a fleet between backends (`skoala-coordinator migrate`, design §6): every record out,
/// verbatim, and into an empty store, verbatim. Not part of [`Store`]: a serving coordinator
/// never calls it, and the caller keeps the source quiet meanwhile (SQLite: a write lock; kube:
/// the leader Lease).
pub trait Migrate: Send + Sync + 'static {
    /// Every record, read as one consistent state.
    fn export(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// Writes `snapshot` as it is (ids, times, hashes, uses left, heads, targets, event ids),
    /// so that every read of the traits answers as the source did. Refuses, writing nothing, a
    /// store that holds any record ([`StoreError::NotEmpty`]): a merge could give two clusters
    /// one name or two events one id.
    fn import(&self, snapshot: Snapshot) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Everything a coordinator keeps: the four parts together. Methods are async so a backend
/// talking to a remote API fits; every returned `Ok` is durable.
pub trait Store: IdentityStore + AuditLog + PlanStore + Retention {}

impl<T: IdentityStore + AuditLog + PlanStore + Retention> Store for T {}
