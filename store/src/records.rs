//! The records the store keeps, as plain data: no backend type appears here.

use std::collections::BTreeMap;

use skoala_plan::{ReleaseStatus, TargetPhase};

/// A join token, as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (the part before the dot in the token), used to list and revoke.
    pub id: String,
    /// SHA-256 of the secret, hex: what a presented secret is compared with.
    pub secret_sha256: String,
    /// When it was created (s since the epoch).
    pub created_unix: i64,
    /// After this (s) it admits nobody.
    pub expires_unix: i64,
    /// How many clusters may join with it.
    pub uses_allowed: u32,
    /// What is left of `uses_allowed`; a same-token retry spends none.
    pub uses_left: u32,
    /// Set by an operator; never cleared.
    pub revoked: bool,
    /// Free text from the operator who created it (`token create --description`).
    pub description: String,
}

/// A cluster's name and labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Unique across the fleet; plans select and order clusters by it.
    pub name: String,
    /// Kubernetes-style labels that plans select on.
    pub labels: BTreeMap<String, String>,
}

/// A registered cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterRecord {
    /// UID of the cluster's `kube-system` namespace.
    pub id: String,
    /// Fixed when the cluster registers (a join an operator sanctioned with a token); after
    /// that only an operator changes it ([`IdentityStore::set_cluster_identity`](crate::IdentityStore::set_cluster_identity)): plans select and
    /// order clusters by name and labels, so a cluster must not choose its own.
    pub name: String,
    /// As `name`.
    pub labels: BTreeMap<String, String>,
    /// What the agent asked for since (a Hello or a re-registration proving its key) when it
    /// differs from `name` and `labels`: shown to operators, never applied by itself.
    pub proposed: Option<Identity>,
    /// When it first registered (s).
    pub registered_unix: i64,
    /// When an operator revoked it (s); a revoked cluster never comes back.
    pub revoked_unix: Option<i64>,
    /// Last state the agent reported (persisted only when it changes).
    pub state: ClusterState,
    /// The newest certificate issued to the cluster's agent.
    pub cert_serial: String,
    /// When that certificate expires (s).
    pub cert_not_after_unix: i64,
}

/// What an agent reports about its cluster and itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    /// The agent's own version.
    pub agent_version: String,
    /// The version of the helm the agent runs.
    pub helm_version: String,
    /// The `skoala.fleet.v1.Inventory` message, protobuf-encoded (the store does not need to
    /// understand it, and protobuf keeps it forward compatible).
    pub inventory: Vec<u8>,
    /// The fleet's release in that inventory, summarised by the coordinator (which reads
    /// protobuf) for stores that show it without decoding the inventory; `None`: the inventory
    /// has no such release.
    pub release: Option<ReleaseSummary>,
}

/// The fleet's release in a cluster (`skoala-init`) as the cluster's last inventory shows it:
/// what `kubectl get fleetclusters` prints (design §2.2 *Clusters*).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseSummary {
    /// Its chart version.
    pub chart_version: String,
    /// Helm's status of its current revision.
    pub status: ReleaseStatus,
    /// Its current revision.
    pub revision: i32,
}

/// A certificate the CA issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// The certificate's serial, lowercase hex: how sessions find it.
    pub serial_hex: String,
    /// The cluster it was issued to.
    pub cluster_id: String,
    /// When it was issued (s).
    pub issued_unix: i64,
    /// When it expires (s).
    pub not_after_unix: i64,
    /// Set when the cluster registered again or an operator allowed it to: the TLS layer still
    /// accepts the certificate until it expires, so `Session` checks this.
    pub revoked_unix: Option<i64>,
    /// When a session first used it: a certificate never used may be replaced by a retry with
    /// the same token (its answer was lost), one used may not.
    pub first_session_unix: Option<i64>,
}

impl TokenRecord {
    /// Whether `presented` (the SHA-256 of the secret a caller showed) is this token's, in
    /// time that depends only on the lengths: how long a refusal takes says nothing about how
    /// much of a guessed secret's hash was right.
    pub fn secret_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret_sha256.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
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
    /// The certificate's serial, lowercase hex.
    pub serial_hex: String,
    /// When it was recorded (s).
    pub created_unix: i64,
    /// When the certificate expires (s).
    pub not_after_unix: i64,
    /// When it was revoked (s): refused from then on, though TLS still accepts it.
    pub revoked_unix: Option<i64>,
}

/// An audit event to append.
#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    /// Machine-readable kind (`cluster.registered`, `plan.paused`, ...).
    pub kind: String,
    /// The cluster it concerns, or empty.
    pub cluster_id: String,
    /// Who caused it: an admin's name, a cluster's address, `coordinator`.
    pub peer: String,
    /// Human-readable detail.
    pub detail: String,
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increasing id, the cursor of `audit --after`.
    pub id: i64,
    /// When it was recorded (ms since the epoch).
    pub at_unix_ms: i64,
    /// As in [`NewAudit`].
    pub kind: String,
    /// As in [`NewAudit`].
    pub cluster_id: String,
    /// As in [`NewAudit`].
    pub peer: String,
    /// As in [`NewAudit`].
    pub detail: String,
}

/// What retention lets go: rows older than these are deleted by [`Retention::prune`](crate::Retention::prune).
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

/// How many rows [`Retention::prune`](crate::Retention::prune) deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit entries deleted.
    pub audit: usize,
    /// Plan events deleted.
    pub events: usize,
    /// Certificate records deleted.
    pub certificates: usize,
    /// Admin identities deleted.
    pub admins: usize,
}

/// What a `Register` call claims, checked before any work is done for it
/// ([`IdentityStore::admit`](crate::IdentityStore::admit)) and again, atomically, when it is recorded ([`IdentityStore::register`](crate::IdentityStore::register)).
#[derive(Debug, Clone)]
pub struct Claim {
    /// The token's public id.
    pub token_id: String,
    /// SHA-256 of the secret the caller presented.
    pub token_sha256: String,
    /// The time the claim is judged at (s): expiry, grace and liveness are measured from it.
    pub now_unix: i64,
    /// The cluster's id (its `kube-system` namespace UID).
    pub cluster_id: String,
    /// The name the agent asks for.
    pub name: String,
    /// The labels the agent asks for.
    pub labels: BTreeMap<String, String>,
    /// The agent's version.
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
    /// What is claimed.
    pub claim: Claim,
    /// The certificate signed for the caller, recorded with the registration.
    pub cert: CertRecord,
}

/// How long after its certificate was issued a cluster may register again with the token it
/// joined with and no proof of its key (its answer was lost), provided no session ever used
/// that certificate. Longer would widen the window for anyone else holding a shared token.
pub const RETRY_GRACE_SECS: i64 = 600;

/// Whether a registration created the cluster or renewed an existing, non-revoked one (an agent
/// that lost its key and was given a new token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Not registered before.
    New,
    /// Registered before, now with a different token (a use was spent).
    Again,
    /// Registered before with this very token (a retry; no use was spent).
    SameToken,
    /// Registered before, and the caller proved the cluster's current key.
    Proved,
}

/// A plan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    /// The plan's name: unique, never reused, part of every operation id of the plan.
    pub name: String,
    /// The UpgradePlan document (YAML) as applied.
    pub document: String,
    /// The rollout as stored, in parts: the orchestrator joins them
    /// (`skoala_plan::Rollout::join`).
    pub rollout: RolloutRecord,
    /// Whether it is the one plan the orchestrator runs.
    pub active: bool,
    /// When it was first stored (ms).
    pub created_ms: i64,
    /// When it was last written (ms).
    pub updated_ms: i64,
}

/// A plan's rollout as a store keeps it: the head and one entry per working cluster, so a
/// round that changes one cluster writes one entry, and no stored object grows with the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutRecord {
    /// The head (`skoala_plan::RolloutHead`) as JSON; empty only in records made by tests
    /// that never read it back as a rollout.
    pub head: String,
    /// Every stored target, in no particular order (a store lists them as it keeps them).
    pub targets: Vec<TargetRecord>,
}

/// One working cluster's entry in a plan's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    /// The cluster's id.
    pub cluster_id: String,
    /// Its place in the enrolment order (`skoala_plan::TargetEntry::order`).
    pub order: u32,
    /// Its state, passed beside the JSON so a store can show it (a printer column, a field
    /// selector) without knowing the plan crate's types.
    pub phase: TargetPhase,
    /// The `skoala_plan::rollout::Progress` as JSON: opaque to the store.
    pub progress: String,
}

/// One write of a plan's rollout: the head if it changed, the targets that changed, and the
/// events that go with them. A store applies one write atomically, or reports that it did
/// not; the orchestrator orders several writes of a round (head, then targets, then starts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutWrite {
    /// The plan's name.
    pub plan: String,
    /// The new head as JSON (`None`: unchanged).
    pub head: Option<String>,
    /// Targets to create or replace (by cluster id); the others are left as stored.
    pub targets: Vec<TargetRecord>,
    /// Events recorded with the write.
    pub events: Vec<PlanEventRecord>,
}

/// One event of a plan (`id` and `at_unix_ms` are assigned by the store when appending).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanEventRecord {
    /// Increasing id, the cursor of `plan watch` and `events --after`.
    pub id: i64,
    /// When it was recorded (ms).
    pub at_unix_ms: i64,
    /// The plan it belongs to.
    pub plan: String,
    /// Machine-readable kind (`target`, `task.sent`, [`TASK_RESULT`], `step`, ...).
    pub kind: String,
    /// The cluster id it concerns, or empty for the plan as a whole.
    pub target: String,
    /// That cluster's name when the event was recorded.
    pub target_name: String,
    /// The operation it reports on, or empty.
    pub operation_id: String,
    /// The executor's step (`backup`, `upgrade`, `verify`, ...), or empty.
    pub step: String,
    /// The target's or step's state after the event.
    pub state: String,
    /// Human-readable detail.
    pub message: String,
    /// How long the step or task took, 0 when not timed.
    pub duration_ms: i64,
}

/// Every record a store keeps, verbatim (ids, times, token hashes and uses, plan heads and
/// targets, event ids): what `skoala-coordinator migrate` reads from one backend and writes
/// into another ([`Migrate`](crate::Migrate)), so agents keep their certificates and cursors
/// (`events --after`, `audit --after`) keep their meaning across the move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every join token; `uses_left` as the source counts it.
    pub tokens: Vec<TokenRecord>,
    /// Every admin certificate.
    pub admins: Vec<AdminRecord>,
    /// Every cluster with its certificate records.
    pub clusters: Vec<ClusterExport>,
    /// Every plan with its whole stored rollout.
    pub plans: Vec<PlanRecord>,
    /// Every plan event, oldest first.
    pub plan_events: Vec<PlanEventRecord>,
    /// Every audit entry, oldest first.
    pub audit: Vec<AuditRecord>,
}

/// One cluster as a [`Snapshot`] carries it: what [`ClusterRecord`] shows, plus what only the
/// store reads (which token it last joined with, every certificate record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterExport {
    /// The cluster.
    pub record: ClusterRecord,
    /// The token of its last registration that spent a use (empty: none known), which a
    /// same-token retry is judged by.
    pub token_id: String,
    /// Every certificate record of the cluster, any order.
    pub certificates: Vec<CertRecord>,
}

/// How many records of each class a [`Snapshot`] holds: what `migrate` compares after reading
/// the target back, before it commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Join tokens.
    pub tokens: usize,
    /// Admin certificates.
    pub admins: usize,
    /// Clusters.
    pub clusters: usize,
    /// Certificate records of clusters.
    pub certificates: usize,
    /// Plans.
    pub plans: usize,
    /// Rollout targets over every plan.
    pub targets: usize,
    /// Plan events.
    pub plan_events: usize,
    /// Audit entries.
    pub audit: usize,
}

impl Snapshot {
    /// The number of records of each class.
    pub fn counts(&self) -> Counts {
        Counts {
            tokens: self.tokens.len(),
            admins: self.admins.len(),
            clusters: self.clusters.len(),
            certificates: self.clusters.iter().map(|c| c.certificates.len()).sum(),
            plans: self.plans.len(),
            targets: self.plans.iter().map(|p| p.rollout.targets.len()).sum(),
            plan_events: self.plan_events.len(),
            audit: self.audit.len(),
        }
    }

    /// The same records in one order whatever the backend listed them in: tokens by id, admins
    /// by serial, clusters by id with their certificates by serial, plans by name with their
    /// targets by order, events and audit by id. Two snapshots of the same state are equal
    /// once sorted.
    pub fn sorted(mut self) -> Self {
        self.tokens.sort_by(|a, b| a.id.cmp(&b.id));
        self.admins.sort_by(|a, b| a.serial_hex.cmp(&b.serial_hex));
        self.clusters.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        for c in &mut self.clusters {
            c.certificates
                .sort_by(|a, b| a.serial_hex.cmp(&b.serial_hex));
        }
        self.plans.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &mut self.plans {
            p.rollout
                .targets
                .sort_by(|a, b| (a.order, &a.cluster_id).cmp(&(b.order, &b.cluster_id)));
        }
        self.plan_events.sort_by_key(|e| e.id);
        self.audit.sort_by_key(|e| e.id);
        self
    }

    /// The (plan, cluster) pairs with an operation in flight: a target upgrading or rolling
    /// back (sent, not answered). Migrating one is safe (the new coordinator sends again under the same
    /// operation ids), but `migrate` asks for the plan to be paused first.
    pub fn in_flight(&self) -> Vec<(String, String)> {
        self.plans
            .iter()
            .flat_map(|p| {
                p.rollout
                    .targets
                    .iter()
                    .filter(|t| matches!(t.phase, TargetPhase::Running | TargetPhase::RollingBack))
                    .map(|t| (p.name.clone(), t.cluster_id.clone()))
            })
            .collect()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tokens, {} admins, {} clusters, {} certificates, {} plans, {} targets, {} plan events, {} audit entries",
            self.tokens,
            self.admins,
            self.clusters,
            self.certificates,
            self.plans,
            self.targets,
            self.plan_events,
            self.audit
        )
    }
}

/// The event kind of a finished task; its `duration_ms` is the upgrade's duration.
pub const TASK_RESULT: &str = "task.result";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_matches_only_its_own_hash() {
        let token = TokenRecord {
            id: "abcd".into(),
            secret_sha256: "9f".repeat(32),
            created_unix: 0,
            expires_unix: 1,
            uses_allowed: 1,
            uses_left: 1,
            revoked: false,
            description: String::new(),
        };
        assert!(token.secret_matches(&"9f".repeat(32)));
        let mut other = "9f".repeat(32).into_bytes();
        other[63] = b'0';
        assert!(!token.secret_matches(&String::from_utf8(other).expect("hex")));
        assert!(!token.secret_matches(&"9f".repeat(32)[..63]));
        assert!(!token.secret_matches(""));
    }
}
