//! Which store a coordinator keeps its state in: [`AnyStore`], chosen by `serve --store`.
//!
//! The store traits return `impl Future`, so they are not object safe; an enum that delegates
//! is what lets one build serve either backend without compiling the gateway, the sessions,
//! the admin API and the orchestrator once per backend.
//!
//! **Invariant:** nothing here decides anything: every method forwards to the backend, so the
//! conformance suite that each backend passes is the contract the coordinator sees.

use std::collections::BTreeMap;

use skoala_kubestore::store::KubeStore;
use skoala_store::sqlite::SqliteStore;
use skoala_store::{
    AdminRecord, AuditLog, AuditRecord, CertRecord, Claim, ClusterRecord, ClusterState, Cutoffs,
    Identity, IdentityStore, NewAudit, PlanEventRecord, PlanRecord, PlanStore, Pruned,
    RegisterError, Registered, Registration, Retention, RolloutWrite, StoreError, TargetRecord,
    TokenRecord,
};

/// The store `serve` runs on.
#[derive(Clone)]
pub enum AnyStore {
    /// One file in the data dir: one replica.
    Sqlite(SqliteStore),
    /// Objects on the control-plane cluster's API server, written by the Lease's holder.
    Kube(KubeStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $call,
            AnyStore::Kube($s) => $call,
        }
    };
}

impl IdentityStore for AnyStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        each!(self, s => s.insert_token(token).await)
    }
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        each!(self, s => s.tokens().await)
    }
    async fn revoke_token(&self, id: String) -> Result<bool, StoreError> {
        each!(self, s => s.revoke_token(id).await)
    }
    async fn admit(&self, claim: Claim) -> Result<(), RegisterError> {
        each!(self, s => s.admit(claim).await)
    }
    async fn register(&self, registration: Registration) -> Result<Registered, RegisterError> {
        each!(self, s => s.register(registration).await)
    }
    async fn allow_rejoin(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        each!(self, s => s.allow_rejoin(id, now_unix).await)
    }
    async fn cluster(&self, id: String) -> Result<Option<ClusterRecord>, StoreError> {
        each!(self, s => s.cluster(id).await)
    }
    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        each!(self, s => s.clusters().await)
    }
    fn clusters_version(&self) -> u64 {
        each!(self, s => s.clusters_version())
    }
    async fn set_cluster_state(&self, id: String, state: ClusterState) -> Result<(), StoreError> {
        each!(self, s => s.set_cluster_state(id, state).await)
    }
    async fn report_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> Result<(), StoreError> {
        each!(self, s => s.report_cluster_state(id, state).await)
    }
    async fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<String>, StoreError> {
        each!(self, s => s.set_cluster_identity(id, name, labels).await)
    }
    async fn propose_identity(
        &self,
        id: String,
        proposed: Option<Identity>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.propose_identity(id, proposed).await)
    }
    async fn revoke_cluster(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        each!(self, s => s.revoke_cluster(id, now_unix).await)
    }
    async fn certificate(&self, serial_hex: String) -> Result<Option<CertRecord>, StoreError> {
        each!(self, s => s.certificate(serial_hex).await)
    }
    async fn record_certificate(&self, cert: CertRecord) -> Result<(), StoreError> {
        each!(self, s => s.record_certificate(cert).await)
    }
    async fn certificate_used(&self, serial_hex: String, now_unix: i64) -> Result<(), StoreError> {
        each!(self, s => s.certificate_used(serial_hex, now_unix).await)
    }
    async fn insert_admin(&self, admin: AdminRecord, now_unix: i64) -> Result<bool, StoreError> {
        each!(self, s => s.insert_admin(admin, now_unix).await)
    }
    async fn admin(&self, serial_hex: String) -> Result<Option<AdminRecord>, StoreError> {
        each!(self, s => s.admin(serial_hex).await)
    }
    async fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        each!(self, s => s.admins().await)
    }
    async fn revoke_admin(&self, name: String, now_unix: i64) -> Result<u32, StoreError> {
        each!(self, s => s.revoke_admin(name, now_unix).await)
    }
}

impl AuditLog for AnyStore {
    async fn append_audit(&self, event: NewAudit) -> Result<i64, StoreError> {
        each!(self, s => s.append_audit(event).await)
    }
    async fn audit(&self, after_id: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        each!(self, s => s.audit(after_id, limit).await)
    }
}

impl PlanStore for AnyStore {
    async fn put_plan(
        &self,
        plan: PlanRecord,
        events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        each!(self, s => s.put_plan(plan, events).await)
    }
    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        each!(self, s => s.plans().await)
    }
    async fn save_rollout(&self, write: RolloutWrite) -> Result<i64, StoreError> {
        each!(self, s => s.save_rollout(write).await)
    }
    async fn start_targets(
        &self,
        plan: String,
        targets: Vec<TargetRecord>,
        stored: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StoreError> {
        each!(self, s => s.start_targets(plan, targets, stored).await)
    }
    async fn append_plan_events(&self, events: Vec<PlanEventRecord>) -> Result<i64, StoreError> {
        each!(self, s => s.append_plan_events(events).await)
    }
    async fn plan_events(
        &self,
        plan: String,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        each!(self, s => s.plan_events(plan, after_id, limit).await)
    }
    async fn mean_upgrade_ms(&self) -> Result<Option<i64>, StoreError> {
        each!(self, s => s.mean_upgrade_ms().await)
    }
}

impl Retention for AnyStore {
    async fn prune(&self, cutoffs: Cutoffs) -> Result<Pruned, StoreError> {
        each!(self, s => s.prune(cutoffs).await)
    }
}
