//! The kube backend of `skoala-store`'s traits (design §2–§3): [`KubeStore`].
//!
//! One object per fact, in the coordinator's namespace: a `FleetCluster` per working cluster
//! (identity in spec, what the coordinator learned in status, its progress in recent plans in
//! `status.plans[]`), an `UpgradePlan` per plan (the rollout's head in status), `FleetLog`
//! segments for the audit log and the plans' events, Secrets for join tokens and admins, and
//! the `skoala-fleet-state` ConfigMap for the active-plan pointer and the plan-name registry.
//!
//! # Layout
//!
//! - `mod.rs`: [`KubeStore`], [`Options`], opening, and the trait impls, which only delegate;
//! - `shared.rs`: what every part uses — the client and namespace, the fence, and the status
//!   writer (one lane per object, [`crate::write`]);
//! - `identity.rs`: tokens, registration, clusters, certificates, admins
//!   ([`IdentityStore`]);
//! - `audit.rs`: the audit log on `FleetLog` ([`AuditLog`]);
//! - `plans.rs`: plans and rollout writes ([`PlanStore`]); `plans/events.rs`: their events;
//! - `migrate.rs`: every record out and into an empty namespace ([`skoala_store::Migrate`],
//!   `skoala-coordinator migrate`).
//!
//! **Invariant:** a `KubeStore` writes only while its [`Fence`] is open: it is opened by the
//! leader, with the leader's fence, and every write checks it first. There is no kube store
//! without leadership, even with one replica: two coordinators pointed at one namespace by
//! mistake must not both write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skoala_store::{
    AdminRecord, AuditLog, AuditRecord, CertRecord, Claim, ClusterRecord, ClusterState, Cutoffs,
    Identity, IdentityStore, NewAudit, PlanEventRecord, PlanRecord, PlanStore, Pruned,
    RegisterError, Registered, Registration, Retention, RolloutWrite, StoreError, TargetRecord,
    TokenRecord,
};

use crate::lease::Fence;
use crate::write::Budget;

mod audit;
mod gitops;
mod identity;
mod migrate;
mod plans;
mod shared;

pub use gitops::{
    AnnotateError, IN_FLIGHT_FINALIZER, Judgement, PlanObject, Refusal, RefusalReason, Verdict,
    admin_manager,
};
pub use migrate::MIGRATED_FROM;
pub use shared::Options;
use shared::Shared;

/// Fleet state on the API server. Cheap to clone; the clones share caches and writers.
#[derive(Clone)]
pub struct KubeStore {
    shared: Arc<Shared>,
    identity: Arc<identity::Identities>,
    audit: Arc<audit::Audit>,
    plans: Arc<plans::Plans>,
}

impl KubeStore {
    /// Loads the fleet's state from `client`'s API server (every object of ours in
    /// `options.namespace`) and starts the writers, which write while `fence` is open.
    pub async fn open(
        client: kube::Client,
        options: Options,
        fence: Fence,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::new(client, options, fence));
        let identity = Arc::new(identity::Identities::load(Arc::clone(&shared)).await?);
        let audit = Arc::new(audit::Audit::load(Arc::clone(&shared)).await?);
        let plans = Arc::new(plans::Plans::load(Arc::clone(&shared)).await?);
        Ok(KubeStore {
            shared,
            identity,
            audit,
            plans,
        })
    }
}

impl KubeStore {
    /// The namespace the fleet's objects live in.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// The client it speaks with (the coordinator's ServiceAccount).
    pub fn client(&self) -> &kube::Client {
        &self.shared.client
    }

    /// Every `UpgradePlan` object in the namespace, stored plans or not, read now: what
    /// `kubectl apply` and GitOps tools asked for (design §4.5).
    pub async fn plan_objects(&self) -> Result<Vec<PlanObject>, StoreError> {
        gitops::list(&self.shared).await
    }

    /// Whether `name` is a stored plan (accepted, and its object still there).
    pub fn is_stored_plan(&self, name: &str) -> bool {
        self.plans.is_stored(name)
    }

    /// Whether `name` was ever accepted: names are never reused (design §4.5).
    pub fn is_registered_plan(&self, name: &str) -> bool {
        self.plans.is_registered(name)
    }

    /// Records on object `name` what the leader decided about `generation` of it (its
    /// `Accepted` condition).
    pub async fn judge_plan_object(
        &self,
        name: &str,
        generation: i64,
        judgement: &Judgement,
    ) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        gitops::judge(&self.shared, name, generation, judgement).await
    }

    /// Puts [`IN_FLIGHT_FINALIZER`] on `object` (`held`) or takes it off.
    pub async fn hold_plan_object(
        &self,
        object: &PlanObject,
        held: bool,
    ) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        gitops::hold(&self.shared, object, held).await
    }

    /// Stores what the leader handled of plan `name`'s control annotations.
    pub async fn observe_plan_control(
        &self,
        name: &str,
        observed: &skoala_plan::control::Observed,
    ) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        gitops::observe(&self.shared, name, observed).await
    }

    /// Writes an operator's verb on plan `name`'s object as its control annotations `set`,
    /// with server-side apply as `manager` ([`admin_manager`]), so the GitOps reconciler asks
    /// for what the verb did rather than undo it (design §4.4). Refused when another manager
    /// (git's) owns the annotation, unless `force`. `false`: the object is gone, nothing was
    /// written.
    pub async fn annotate_plan(
        &self,
        name: &str,
        manager: &str,
        set: &BTreeMap<String, String>,
        force: bool,
    ) -> Result<bool, AnnotateError> {
        self.shared.check_fence()?;
        gitops::annotate(&self.shared, name, manager, set, force).await
    }

    /// Records the fields of `observed` that are set in plan `name`'s `status.control`: what
    /// an operator's verb handled already.
    pub async fn note_plan_control(
        &self,
        name: &str,
        observed: &skoala_plan::control::Observed,
    ) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        gitops::note(&self.shared, name, observed).await
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "skoala-fleet".into(),
            budget: Budget::default(),
        }
    }
}

/// How long an agent's report of its cluster's state (its inventory after an upgrade) waits
/// for the cluster's next write: the agent sends it beside the task's result, which the
/// orchestrator stores in the same object a round later, a few milliseconds; carried by that
/// request, the rollout writes one `FleetCluster` patch fewer per upgrade. A report nothing
/// carries goes alone when the hold ends; nothing reads it sooner (the orchestrator judges a
/// connected cluster on its live inventory; the stored copy is for `kubectl`, `skoalactl`, a
/// cluster that left, and a restart, and a session that ends waits for it).
const REPORT_HOLD: Duration = Duration::from_millis(250);

impl IdentityStore for KubeStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.identity.insert_token(token).await
    }
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.identity.tokens().await
    }
    async fn revoke_token(&self, id: String) -> Result<bool, StoreError> {
        self.identity.revoke_token(id).await
    }
    async fn admit(&self, claim: Claim) -> Result<(), RegisterError> {
        self.identity.admit(claim).await
    }
    async fn register(&self, registration: Registration) -> Result<Registered, RegisterError> {
        let id = registration.claim.cluster_id.clone();
        let registered = self.identity.register(registration).await?;
        self.plans.cluster_exists(&id);
        Ok(registered)
    }
    async fn allow_rejoin(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        self.identity.allow_rejoin(id, now_unix).await
    }
    async fn cluster(&self, id: String) -> Result<Option<ClusterRecord>, StoreError> {
        self.identity.cluster(id).await
    }
    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.identity.clusters().await
    }
    fn clusters_version(&self) -> u64 {
        self.identity.clusters_version()
    }
    async fn set_cluster_state(&self, id: String, state: ClusterState) -> Result<(), StoreError> {
        self.identity.set_cluster_state(id, state, None).await
    }
    async fn report_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> Result<(), StoreError> {
        self.identity
            .set_cluster_state(id, state, Some(REPORT_HOLD))
            .await
    }
    async fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<String>, StoreError> {
        self.identity.set_cluster_identity(id, name, labels).await
    }
    async fn propose_identity(
        &self,
        id: String,
        proposed: Option<Identity>,
    ) -> Result<(), StoreError> {
        self.identity.propose_identity(id, proposed).await
    }
    async fn revoke_cluster(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        self.identity.revoke_cluster(id, now_unix).await
    }
    async fn certificate(&self, serial_hex: String) -> Result<Option<CertRecord>, StoreError> {
        self.identity.certificate(serial_hex).await
    }
    async fn record_certificate(&self, cert: CertRecord) -> Result<(), StoreError> {
        self.identity.record_certificate(cert).await
    }
    async fn certificate_used(&self, serial_hex: String, now_unix: i64) -> Result<(), StoreError> {
        self.identity.certificate_used(serial_hex, now_unix).await
    }
    async fn insert_admin(&self, admin: AdminRecord, now_unix: i64) -> Result<bool, StoreError> {
        self.identity.insert_admin(admin, now_unix).await
    }
    async fn admin(&self, serial_hex: String) -> Result<Option<AdminRecord>, StoreError> {
        self.identity.admin(serial_hex).await
    }
    async fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.identity.admins().await
    }
    async fn revoke_admin(&self, name: String, now_unix: i64) -> Result<u32, StoreError> {
        self.identity.revoke_admin(name, now_unix).await
    }
}

impl AuditLog for KubeStore {
    async fn append_audit(&self, event: NewAudit) -> Result<i64, StoreError> {
        self.audit.append(event).await
    }
    async fn audit(&self, after_id: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit.page(after_id, limit).await
    }
}

impl PlanStore for KubeStore {
    async fn put_plan(
        &self,
        plan: PlanRecord,
        events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        self.plans.put_plan(plan, events).await
    }
    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        self.plans.plans().await
    }
    async fn save_rollout(&self, write: RolloutWrite) -> Result<i64, StoreError> {
        self.plans.save_rollout(write).await
    }
    async fn start_targets(
        &self,
        plan: String,
        targets: Vec<TargetRecord>,
        stored: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StoreError> {
        self.plans.start_targets(&plan, targets, stored).await
    }
    async fn append_plan_events(&self, events: Vec<PlanEventRecord>) -> Result<i64, StoreError> {
        self.plans.append_events(events).await
    }
    async fn plan_events(
        &self,
        plan: String,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        self.plans.events(plan, after_id, limit).await
    }
    async fn mean_upgrade_ms(&self) -> Result<Option<i64>, StoreError> {
        self.plans.mean_upgrade_ms().await
    }
}

impl Retention for KubeStore {
    /// Each part lets its own records go; the deletes are independent and idempotent, so a
    /// sweep cut short is finished by the next.
    async fn prune(&self, cutoffs: Cutoffs) -> Result<Pruned, StoreError> {
        let identity = self.identity.prune(&cutoffs).await?;
        let audit = self.audit.prune(&cutoffs).await?;
        let plans = self.plans.prune(&cutoffs).await?;
        Ok(Pruned {
            audit,
            events: plans,
            certificates: identity.certificates,
            admins: identity.admins,
        })
    }
}
