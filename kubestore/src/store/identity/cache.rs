//! The leader's cache of clusters, tokens and admins, with the indexes the checks read
//! (design §2.2, §3.1): every read of the identity part is answered from here, and every write
//! of ours lands here once the API server stored it.
//!
//! **Invariant:** the indexes (`by_serial`, `by_name`, `spent`, `admin_serials`) are only ever
//! changed by [`Cache::put_cluster`] and [`Cache::put_admin`], which remove what the previous
//! version of the object contributed before adding the new one's.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use skoala_store::{
    AdminRecord, CertRecord, ClusterRecord, ClusterState, Identity, ReleaseSummary, TokenRecord,
};

use super::secrets::{Admin, Token};
use crate::crd::{
    CertificateRecord, ClusterCondition, Condition, ConditionStatus, FleetCluster,
    FleetClusterSpec, FleetClusterStatus, Proposed,
};

/// The label every `FleetCluster` carries with its cluster's name, when the name is a valid
/// label value (`kubectl get fleetclusters -l fleet.skoala.io/name=prod-eu`).
pub(super) const NAME_LABEL: &str = "fleet.skoala.io/name";

/// A cluster as the identity part knows it: the object's spec, and its status without the
/// plan part's `plans`, which this part neither reads nor writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Cluster {
    pub spec: FleetClusterSpec,
    pub status: FleetClusterStatus,
}

impl Cluster {
    /// What the API server holds, as this part keeps it.
    pub fn of(object: FleetCluster) -> Self {
        let mut status = object.status.unwrap_or_default();
        status.plans.clear();
        Cluster {
            spec: object.spec,
            status,
        }
    }

    /// Whether a registration was ever stored (a create whose status write was lost leaves a
    /// cluster without one, which registers as new).
    pub fn registered(&self) -> bool {
        self.status.registration.is_some()
    }

    /// The current certificate, if any record is left.
    pub fn current(&self) -> Option<&CertificateRecord> {
        self.status.certificates.first()
    }

    /// When the current certificate stops working: 0 once it was revoked (an operator allowed
    /// a rejoin), as for a cluster without one.
    pub fn cert_not_after_unix(&self) -> i64 {
        match self.current() {
            Some(c) if c.revoked_at.is_none() => c.not_after.as_second(),
            _ => 0,
        }
    }

    /// The record the store's callers read.
    pub fn record(&self, id: &str) -> ClusterRecord {
        let s = &self.status;
        let agent = s.agent.clone().unwrap_or_default();
        ClusterRecord {
            id: id.to_string(),
            name: self.spec.name.clone(),
            labels: self.spec.labels.clone(),
            proposed: s.proposed.as_ref().map(|p| Identity {
                name: p.name.clone().unwrap_or_default(),
                labels: p.labels.clone(),
            }),
            registered_unix: s
                .registration
                .as_ref()
                .map_or(0, |r| r.registered_at.as_second()),
            revoked_unix: s.revoked_at.map(Timestamp::as_second),
            state: ClusterState {
                agent_version: agent.agent_version,
                helm_version: agent.helm_version,
                // Written by us from bytes; anything else reads as no inventory.
                inventory: s
                    .inventory
                    .as_deref()
                    .and_then(|b| BASE64.decode(b).ok())
                    .unwrap_or_default(),
                release: s.release.as_ref().map(|r| ReleaseSummary {
                    chart_version: r.chart_version.clone(),
                    status: r.status.clone(),
                    revision: r.revision,
                }),
            },
            cert_serial: self.current().map(|c| c.serial.clone()).unwrap_or_default(),
            cert_not_after_unix: self.cert_not_after_unix(),
        }
    }

    /// Sets `status.conditions` from the facts they summarise for `kubectl` and kstatus:
    /// `Revoked` once the cluster is, `IdentityProposed` while its agent asks for another
    /// identity (`False` once that was settled). A condition whose status did not change keeps
    /// its transition time; other parts' conditions are left as they are.
    pub fn settle_conditions(&mut self, now: Timestamp) {
        let s = &mut self.status;
        let revoked = s.revoked_at.map(|_| {
            (
                ConditionStatus::True,
                "Revoked",
                "an operator revoked the cluster; its certificates are refused".to_string(),
            )
        });
        let proposed = match &s.proposed {
            Some(p) => Some((
                ConditionStatus::True,
                "AgentAsked",
                format!(
                    "its agent asks to be named {:?} with {} label(s); an operator decides",
                    p.name.as_deref().unwrap_or_default(),
                    p.labels.len()
                ),
            )),
            None => s
                .conditions
                .iter()
                .any(|c| c.type_ == ClusterCondition::IdentityProposed)
                .then(|| {
                    (
                        ConditionStatus::False,
                        "Settled",
                        "its agent asks for the identity it has".to_string(),
                    )
                }),
        };
        for (type_, wanted) in [
            (ClusterCondition::Revoked, revoked),
            (ClusterCondition::IdentityProposed, proposed),
        ] {
            let at = s.conditions.iter().position(|c| c.type_ == type_);
            let Some((status, reason, message)) = wanted else {
                if let Some(i) = at {
                    s.conditions.remove(i);
                }
                continue;
            };
            let last_transition_time = match at.map(|i| &s.conditions[i]) {
                Some(c) if c.status == status => c.last_transition_time,
                _ => now,
            };
            let condition = Condition {
                type_,
                status,
                observed_generation: None,
                last_transition_time,
                reason: reason.into(),
                message,
            };
            match at {
                Some(i) => s.conditions[i] = condition,
                None => s.conditions.push(condition),
            }
        }
    }

    /// `metadata.labels` as this part maintains them: the cluster's labels and its name.
    pub fn mirrored_labels(spec: &FleetClusterSpec) -> BTreeMap<String, String> {
        let mut labels = spec.labels.clone();
        if skoala_support::names::label(NAME_LABEL, &spec.name).is_ok() {
            labels.insert(NAME_LABEL.into(), spec.name.clone());
        } else {
            labels.remove(NAME_LABEL);
        }
        labels
    }
}

/// `proposed` as status holds it.
pub(super) fn proposal(identity: Option<&Identity>) -> Option<Proposed> {
    identity.map(|p| Proposed {
        name: Some(p.name.clone()),
        labels: p.labels.clone(),
    })
}

/// A certificate record as the store's callers read it.
pub(super) fn cert_record(cluster_id: &str, c: &CertificateRecord) -> CertRecord {
    CertRecord {
        serial_hex: c.serial.clone(),
        cluster_id: cluster_id.to_string(),
        issued_unix: c.issued_at.as_second(),
        not_after_unix: c.not_after.as_second(),
        revoked_unix: c.revoked_at.map(Timestamp::as_second),
        first_session_unix: c.first_session_at.map(Timestamp::as_second),
    }
}

/// `secs` as a timestamp, clamped to the years 1–9999 a timestamp spans: the callers' times
/// are real ones, but "never expires" is spelled as a huge number by some.
pub(super) fn at(secs: i64) -> Timestamp {
    let secs = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    Timestamp::from_second(secs).unwrap_or(Timestamp::MAX)
}

/// The identity part's cache.
#[derive(Default)]
pub(super) struct Cache {
    clusters: HashMap<String, Cluster>,
    /// Certificate serial → cluster id.
    by_serial: HashMap<String, String>,
    /// Cluster name → cluster id.
    by_name: HashMap<String, String>,
    /// Token id → uses spent, counted over every cluster's `tokensUsed`.
    spent: HashMap<String, u32>,
    tokens: HashMap<String, Token>,
    admins: HashMap<String, Admin>,
    /// Admin certificate serial → admin name.
    admin_serials: HashMap<String, String>,
}

impl Cache {
    pub fn cluster(&self, id: &str) -> Option<&Cluster> {
        self.clusters.get(id)
    }

    pub fn clusters(&self) -> impl Iterator<Item = (&String, &Cluster)> {
        self.clusters.iter()
    }

    /// The cluster holding certificate `serial`, and the record.
    pub fn certificate(&self, serial: &str) -> Option<(&str, &CertificateRecord)> {
        let id = self.by_serial.get(serial)?;
        let record = self
            .clusters
            .get(id)?
            .status
            .certificates
            .iter()
            .find(|c| c.serial == serial)?;
        Some((id, record))
    }

    /// The cluster other than `id` named `name`.
    pub fn named(&self, name: &str, id: &str) -> Option<&str> {
        self.by_name
            .get(name)
            .map(String::as_str)
            .filter(|other| *other != id)
    }

    /// Replaces (or adds) cluster `id`.
    pub fn put_cluster(&mut self, id: &str, cluster: Cluster) {
        self.remove_cluster(id);
        for c in &cluster.status.certificates {
            self.by_serial.insert(c.serial.clone(), id.to_string());
        }
        self.by_name
            .insert(cluster.spec.name.clone(), id.to_string());
        for t in used(&cluster) {
            *self.spent.entry(t.clone()).or_default() += 1;
        }
        self.clusters.insert(id.to_string(), cluster);
    }

    fn remove_cluster(&mut self, id: &str) {
        let Some(old) = self.clusters.remove(id) else {
            return;
        };
        for c in &old.status.certificates {
            if self.by_serial.get(&c.serial).is_some_and(|i| i == id) {
                self.by_serial.remove(&c.serial);
            }
        }
        if self.by_name.get(&old.spec.name).is_some_and(|i| i == id) {
            self.by_name.remove(&old.spec.name);
        }
        for t in used(&old) {
            if let Some(n) = self.spent.get_mut(t) {
                *n = n.saturating_sub(1);
            }
        }
    }

    pub fn token(&self, id: &str) -> Option<&Token> {
        self.tokens.get(id)
    }

    /// `uses_allowed`, less the uses spent before a migration and those the clusters spent.
    pub fn uses_left(&self, token: &Token) -> u32 {
        let spent = self.spent.get(&token.record.id).copied().unwrap_or(0);
        token
            .record
            .uses_allowed
            .saturating_sub(token.spent_before_migration)
            .saturating_sub(spent)
    }

    /// Token `id` as the store's callers read it.
    pub fn token_record(&self, token: &Token) -> TokenRecord {
        TokenRecord {
            uses_left: self.uses_left(token),
            ..token.record.clone()
        }
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values()
    }

    pub fn put_token(&mut self, token: Token) {
        self.tokens.insert(token.record.id.clone(), token);
    }

    pub fn admin(&self, name: &str) -> Option<&Admin> {
        self.admins.get(name)
    }

    pub fn admins(&self) -> impl Iterator<Item = &Admin> {
        self.admins.values()
    }

    /// The admin certificate `serial`.
    pub fn admin_record(&self, serial: &str) -> Option<&AdminRecord> {
        let name = self.admin_serials.get(serial)?;
        self.admins
            .get(name)?
            .records
            .iter()
            .find(|a| a.serial_hex == serial)
    }

    /// Replaces admin `name`'s records; `None`: its Secret is gone.
    pub fn put_admin(&mut self, name: &str, admin: Option<Admin>) {
        if let Some(old) = self.admins.remove(name) {
            for a in &old.records {
                if self
                    .admin_serials
                    .get(&a.serial_hex)
                    .is_some_and(|n| n == name)
                {
                    self.admin_serials.remove(&a.serial_hex);
                }
            }
        }
        if let Some(admin) = admin {
            for a in &admin.records {
                self.admin_serials
                    .insert(a.serial_hex.clone(), name.to_string());
            }
            self.admins.insert(name.to_string(), admin);
        }
    }
}

/// The token ids a cluster spent a use of, once per use.
fn used(cluster: &Cluster) -> &[String] {
    cluster
        .status
        .registration
        .as_ref()
        .map_or(&[], |r| r.tokens_used.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Registration;

    fn cluster(name: &str, serials: &[&str], tokens: &[&str]) -> Cluster {
        Cluster {
            spec: FleetClusterSpec {
                name: name.into(),
                labels: BTreeMap::new(),
            },
            status: FleetClusterStatus {
                registration: Some(Registration {
                    registered_at: at(1_000),
                    token_id: tokens.last().map(|t| t.to_string()),
                    tokens_used: tokens.iter().map(|t| t.to_string()).collect(),
                }),
                certificates: serials
                    .iter()
                    .map(|s| CertificateRecord {
                        serial: s.to_string(),
                        issued_at: at(1_000),
                        not_after: at(2_000),
                        revoked_at: None,
                        first_session_at: None,
                    })
                    .collect(),
                ..FleetClusterStatus::default()
            },
        }
    }

    #[test]
    fn replacing_a_cluster_replaces_what_it_contributed_to_every_index() {
        let mut cache = Cache::default();
        cache.put_cluster("c1", cluster("one", &["01"], &["abcd"]));
        cache.put_cluster("c2", cluster("two", &["02"], &["abcd", "efgh", "abcd"]));
        assert_eq!(cache.spent.get("abcd"), Some(&3));
        cache.put_cluster("c2", cluster("renamed", &["03", "02"], &["abcd", "efgh"]));
        assert_eq!(
            (cache.spent.get("abcd"), cache.spent.get("efgh")),
            (Some(&2), Some(&1))
        );
        assert_eq!(cache.named("two", "c1"), None);
        assert_eq!(cache.named("renamed", "c1"), Some("c2"));
        assert_eq!(
            cache.named("renamed", "c2"),
            None,
            "its own name is no clash"
        );
        assert_eq!(cache.certificate("02").map(|(id, _)| id), Some("c2"));
        cache.put_cluster("c2", cluster("renamed", &["03"], &[]));
        assert_eq!(cache.certificate("02"), None);
        assert_eq!(cache.spent.get("abcd"), Some(&1));
    }

    #[test]
    fn a_revoked_current_certificate_leaves_no_live_one() {
        let mut c = cluster("one", &["01"], &["abcd"]);
        assert_eq!(c.cert_not_after_unix(), 2_000);
        c.status.certificates[0].revoked_at = Some(at(1_500));
        let record = c.record("c1");
        assert_eq!(
            (record.cert_serial.as_str(), record.cert_not_after_unix),
            ("01", 0)
        );
    }

    #[test]
    fn conditions_follow_revocation_and_proposal_and_keep_their_transition_times() {
        let mut c = cluster("one", &["01"], &["abcd"]);
        c.settle_conditions(at(1_000));
        assert!(c.status.conditions.is_empty(), "nothing to say yet");
        c.status.proposed = Some(Proposed {
            name: Some("two".into()),
            labels: BTreeMap::new(),
        });
        c.settle_conditions(at(1_100));
        c.status.revoked_at = Some(at(1_200));
        c.settle_conditions(at(1_200));
        c.status.proposed = None;
        c.settle_conditions(at(1_300));
        c.settle_conditions(at(1_400));
        let shown: Vec<(ClusterCondition, ConditionStatus, i64)> = c
            .status
            .conditions
            .iter()
            .map(|c| (c.type_, c.status, c.last_transition_time.as_second()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    ClusterCondition::IdentityProposed,
                    ConditionStatus::False,
                    1_300
                ),
                (ClusterCondition::Revoked, ConditionStatus::True, 1_200),
            ]
        );
    }

    #[test]
    fn times_beyond_a_timestamps_range_are_clamped() {
        assert_eq!(at(i64::MAX / 2).as_second(), Timestamp::MAX.as_second());
        assert_eq!(at(1_000).as_second(), 1_000);
    }
}
