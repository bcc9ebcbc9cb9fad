//! The coordinator's durable state behind a small trait.
//!
//! Only state *transitions* are written: a token created, redeemed or revoked; a cluster
//! registered, its inventory or versions changed, revoked; a certificate issued; an audit event.
//! Heartbeats and "connected" stay in memory ([`crate::sessions`]) — writing them would turn
//! thousands of agents into a constant write load for facts that are stale a minute later.
//!
//! The one backend is SQLite ([`sqlite::SqliteStore`]), for a single coordinator; the trait
//! is the seam where another backend would go. Every write the trait acknowledges is durable:
//! a coordinator killed right after a call returned still has it on restart.

pub mod migrations;
pub mod plans;
pub mod sqlite;
#[cfg(test)]
mod sweep_cost;

use std::collections::BTreeMap;
use std::future::Future;

pub use plans::{PlanEventRecord, PlanRecord};
pub use sqlite::SqliteStore;

/// Errors of the storage backend itself (not business refusals).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
    #[error("the store holds data this coordinator cannot read: {0}")]
    Corrupt(String),
    #[error(
        "the store's schema version {found} is newer than this coordinator supports ({supported}); upgrade the coordinator"
    )]
    TooNew { found: i64, supported: i64 },
}

/// A join token, as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (the part before the dot in the token), used to list and revoke.
    pub id: String,
    pub secret_sha256: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub uses_allowed: u32,
    pub uses_left: u32,
    pub revoked: bool,
    pub description: String,
}

/// A cluster's name and labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A registered cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterRecord {
    /// UID of the cluster's `kube-system` namespace.
    pub id: String,
    /// Fixed when the cluster registers (a join an operator sanctioned with a token); after
    /// that only an operator changes it ([`Store::set_cluster_identity`]): plans select and
    /// order clusters by name and labels, so a cluster must not choose its own.
    pub name: String,
    /// As `name`.
    pub labels: BTreeMap<String, String>,
    /// What the agent asked for since (a Hello or a re-registration proving its key) when it
    /// differs from `name` and `labels`: shown to operators, never applied by itself.
    pub proposed: Option<Identity>,
    pub registered_unix: i64,
    pub revoked_unix: Option<i64>,
    /// Last state the agent reported (persisted only when it changes).
    pub state: ClusterState,
    /// The newest certificate issued to the cluster's agent.
    pub cert_serial: String,
    pub cert_not_after_unix: i64,
}

/// What an agent reports about its cluster and itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    pub agent_version: String,
    pub helm_version: String,
    /// The `skoala.fleet.v1.Inventory` message, protobuf-encoded (the store does not need to
    /// understand it, and protobuf keeps it forward compatible).
    pub inventory: Vec<u8>,
}

/// A certificate the CA issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub serial_hex: String,
    pub cluster_id: String,
    pub issued_unix: i64,
    pub not_after_unix: i64,
    /// Set when the cluster registered again or an operator allowed it to: the TLS layer still
    /// accepts the certificate until it expires, so `Session` checks this.
    pub revoked_unix: Option<i64>,
    /// When a session first used it: a certificate never used may be replaced by a retry with
    /// the same token (its answer was lost), one used may not.
    pub first_session_unix: Option<i64>,
}

impl CertRecord {
    /// Whether a session at `now_unix` must record that it used this certificate. Only the
    /// same-token retry reads the mark, and only for certificates issued less than
    /// [`RETRY_GRACE_SECS`] ago; for older ones the write would change no decision, and after a
    /// coordinator restart every reconnecting agent would otherwise make one.
    pub fn first_use_matters(&self, now_unix: i64) -> bool {
        self.first_session_unix.is_none() && self.issued_unix > now_unix - RETRY_GRACE_SECS
    }
}

/// An operator's admin certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    /// Who: named in every audit line of their calls.
    pub name: String,
    pub serial_hex: String,
    pub created_unix: i64,
    pub not_after_unix: i64,
    pub revoked_unix: Option<i64>,
}

/// An audit event to append.
#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    pub kind: String,
    pub cluster_id: String,
    pub peer: String,
    pub detail: String,
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_unix_ms: i64,
    pub kind: String,
    pub cluster_id: String,
    pub peer: String,
    pub detail: String,
}

/// What retention lets go: rows older than these are deleted by [`Store::prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Audit entries written before this (ms since the epoch).
    pub audit_before_ms: i64,
    /// Events of plans that are not the active one, recorded before this (ms).
    pub events_before_ms: i64,
    /// Certificate records that expired before this (s since the epoch).
    pub certificates_expired_before_unix: i64,
    /// Admin identities whose certificate expired before this (s), revoked or not. A revoked
    /// identity whose certificate is still valid is kept: its row is what refuses it (and
    /// what keeps `init`'s `admin.yaml`, once revoked, from being recorded again at start).
    pub admins_expired_before_unix: i64,
}

/// How many rows [`Store::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub audit: usize,
    pub events: usize,
    pub certificates: usize,
    pub admins: usize,
}

/// What a `Register` call claims, checked before any work is done for it
/// ([`Store::admit`]) and again, atomically, when it is recorded ([`Store::register`]).
#[derive(Debug, Clone)]
pub struct Claim {
    pub token_id: String,
    pub token_sha256: String,
    pub now_unix: i64,
    pub cluster_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    /// The serial of a client certificate for this very cluster presented on the call: proof
    /// of the cluster's current key, which re-registering a cluster with a live certificate
    /// needs.
    pub proven_serial: Option<String>,
}

/// One registration: redeem a token and record the cluster and its first certificate, in one
/// transaction (a crash never leaves a used token without its cluster, or the reverse).
#[derive(Debug, Clone)]
pub struct Registration {
    pub claim: Claim,
    pub cert: CertRecord,
}

/// How long after its certificate was issued a cluster may register again with the token it
/// joined with and no proof of its key (its answer was lost), provided no session ever used
/// that certificate. Longer would widen the window for anyone else holding a shared token.
pub const RETRY_GRACE_SECS: i64 = 600;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the join token is not valid")]
    UnknownToken,
    #[error("join token {0} has expired")]
    Expired(String),
    #[error("join token {0} has no uses left")]
    UsedUp(String),
    #[error("join token {0} has been revoked")]
    Revoked(String),
    #[error("cluster {0} has been revoked; it cannot register again")]
    ClusterRevoked(String),
    #[error(
        "cluster {0} is already registered and its certificate is live: registering it again needs its current client certificate, or an operator's `skoalactl cluster rejoin`"
    )]
    Takeover(String),
    #[error("cluster name {name:?} is taken by cluster {other}; choose another --cluster-name")]
    NameTaken { name: String, other: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// Short machine-readable kind for the audit log.
    pub fn audit_kind(&self) -> &'static str {
        match self {
            RegisterError::UnknownToken => "register.unknown_token",
            RegisterError::Expired(_) => "register.token_expired",
            RegisterError::UsedUp(_) => "register.token_used_up",
            RegisterError::Revoked(_) => "register.token_revoked",
            RegisterError::ClusterRevoked(_) => "register.cluster_revoked",
            RegisterError::Takeover(_) => "register.takeover_refused",
            RegisterError::NameTaken { .. } => "register.name_taken",
            RegisterError::Store(_) => "register.store_error",
        }
    }
}

/// Whether a registration created the cluster or renewed an existing, non-revoked one (an agent
/// that lost its key and was given a new token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    /// Registered before, now with a different token (a use was spent).
    Again,
    /// Registered before with this very token (a retry; no use was spent).
    SameToken,
    /// Registered before, and the caller proved the cluster's current key.
    Proved,
}

/// The durable store. Methods are async so a backend talking to a remote API fits; every
/// returned `Ok` is durable.
pub trait Store: Send + Sync + 'static {
    fn insert_token(
        &self,
        token: TokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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

    fn cluster(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<ClusterRecord>, StoreError>> + Send;
    fn clusters(&self) -> impl Future<Output = Result<Vec<ClusterRecord>, StoreError>> + Send;
    /// A number that changes whenever a cluster is added, renamed, relabelled, re-registered
    /// or revoked — not when its state (inventory, versions) is written. The orchestrator keeps
    /// its fleet view between rounds and reads every row again only when this moved
    /// (`orchestrator::fleet::FleetCache`): at 10,000 clusters the full read was most of a
    /// round's cost (BENCHMARKS.md).
    fn clusters_version(&self) -> u64;
    /// Persists a changed state (callers compare first; this is not a heartbeat).
    fn set_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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

    fn certificate(
        &self,
        serial_hex: String,
    ) -> impl Future<Output = Result<Option<CertRecord>, StoreError>> + Send;
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

    /// Appends an audit event; returns its id.
    fn append_audit(&self, event: NewAudit)
    -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Events with `id > after_id`, oldest first, at most `limit`.
    fn audit(
        &self,
        after_id: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;

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
    /// Saves a plan's rollout and appends `events`, in one transaction: the coordinator acts on
    /// a step only after this returned (invariant 2). Returns the id of the last event.
    fn save_rollout(
        &self,
        name: String,
        rollout: String,
        events: Vec<PlanEventRecord>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Appends events (progress that changes no rollout state). Returns the last id.
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
    /// Deletes what retention lets go ([`Cutoffs`]), in one transaction. The active plan's
    /// events are kept whatever their age.
    fn prune(&self, cutoffs: Cutoffs) -> impl Future<Output = Result<Pruned, StoreError>> + Send;
}
