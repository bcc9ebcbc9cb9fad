//! Tokens, registration, clusters, certificates and admins on the API server (design §2.2,
//! §3.2): `FleetCluster` objects and Secrets, read from the leader's cache.
//!
//! A cluster's identity is its `FleetCluster`'s spec (name, labels, mirrored into
//! `metadata.labels`); everything the coordinator learned is in its status, which this part
//! writes field by field as merge patches through the write lanes ([`Shared::patch`]), so
//! the plan part's `status.plans` on the same object is never touched. Join tokens and admins
//! are Secrets ([`secrets`]), written directly.
//!
//! Reads come from [`cache::Cache`], loaded at [`Identities::load`] and updated with every
//! write of ours once the API server stored it. Checks that a write depends on (a token's
//! remaining uses, a free name, one live admin per name) run under that fact's lock
//! ([`locks`]) from the check until the cache holds the write: one writer, one process, so
//! this is what SQLite's `BEGIN IMMEDIATE` was (§3.1).
//!
//! A token's remaining uses are derived: every registration that spends one appends the
//! token's id to the cluster's `status.registration.tokensUsed`, and the uses left are
//! `usesAllowed − usesSpentBeforeMigration − (occurrences of the id over every cluster)`. So
//! `register` writes only the cluster (§3.2): a create for a new one, then one status write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use serde_json::json;
use skoala_store::{
    AdminRecord, CertRecord, Claim, ClusterExport, ClusterRecord, ClusterState, Cutoffs, Identity,
    Pruned, RETRY_GRACE_SECS, RegisterError, Registered, Registration, Snapshot, StoreError,
    TokenRecord,
};

use super::shared::{Key, KindKey, Shared, Target, api_error, list_all};
use crate::crd::{self, Agent, CertificateRecord, FleetCluster, FleetClusterSpec, Kind, Release};
use crate::write::{Class, Urgency, diff};

mod cache;
mod locks;
mod secrets;

use cache::{Cache, Cluster, at, cert_record, proposal};
use locks::Locks;
use secrets::{ADMIN, Admin, JOIN_TOKEN, KIND_LABEL, SELECTOR, Token};

/// The most certificate records a cluster keeps, the CRD's bound: renewals every 16 h of 24 h
/// certificates leave about a dozen within a week's retention, so only a cluster re-registered
/// dozens of times within one reaches it, and then its oldest (revoked) records go.
pub(super) const MAX_CERTIFICATES: usize = 32;

/// How many clusters a migration's import writes at once: the default write budget's
/// concurrency (`write::Budget`), which the requests queue behind anyway.
pub(super) const IMPORTS_AT_ONCE: usize = 32;

/// The identity part of the store.
pub(super) struct Identities {
    shared: Arc<Shared>,
    cache: Mutex<Cache>,
    locks: Locks,
    /// [`skoala_store::IdentityStore::clusters_version`].
    version: AtomicU64,
}

/// What [`admit_in`] decided, for `register` to write.
struct Admitted {
    token_id: String,
    outcome: Registered,
}

/// Every check of a registration, reading only the cache: the token (hashes compared in
/// constant time), the cluster (revoked; registered with a live certificate and no proof of its
/// key) and the name (taken by another cluster). The same rules as the SQLite store's.
fn admit_in(cache: &Cache, r: &Claim) -> Result<Admitted, RegisterError> {
    let token = cache
        .token(&r.token_id)
        .ok_or(RegisterError::UnknownToken)?;
    let t = &token.record;
    if !t.secret_matches(&r.token_sha256) {
        return Err(RegisterError::UnknownToken);
    }
    if t.revoked {
        return Err(RegisterError::Revoked(t.id.clone()));
    }
    if t.expires_unix <= r.now_unix {
        return Err(RegisterError::Expired(t.id.clone()));
    }
    let existing = cache.cluster(&r.cluster_id);
    if existing.is_some_and(|c| c.status.revoked_at.is_some()) {
        return Err(RegisterError::ClusterRevoked(r.cluster_id.clone()));
    }
    let registered = existing.filter(|c| c.registered());
    // The token of the last registration: a retry with it spends nothing.
    let same_token = registered
        .and_then(|c| c.status.registration.as_ref())
        .and_then(|g| g.token_id.as_deref())
        == Some(t.id.as_str());
    if cache.uses_left(token) == 0 && !same_token {
        return Err(RegisterError::UsedUp(t.id.clone()));
    }
    let outcome = match registered {
        None => Registered::New,
        Some(c) if proves_key(c, r) => Registered::Proved,
        // No live certificate (expired, or an operator allowed the cluster to rejoin): nobody
        // holds the identity, a valid token is enough.
        Some(c) if c.cert_not_after_unix() <= r.now_unix => {
            if same_token {
                Registered::SameToken
            } else {
                Registered::Again
            }
        }
        // The answer to a registration was lost: the same token, soon after, while no session
        // ever used the certificate, may try again.
        Some(c)
            if same_token
                && c.current().is_some_and(|cert| {
                    cert.issued_at.as_second() > r.now_unix - RETRY_GRACE_SECS
                        && cert.first_session_at.is_none()
                }) =>
        {
            Registered::SameToken
        }
        Some(_) => return Err(RegisterError::Takeover(r.cluster_id.clone())),
    };
    // A cluster proving its key keeps its name (the claim's is only proposed), so only a name
    // the registration would write must be free.
    if outcome != Registered::Proved
        && let Some(other) = cache.named(&r.name, &r.cluster_id)
    {
        return Err(RegisterError::NameTaken {
            name: r.name.clone(),
            other: other.to_string(),
        });
    }
    Ok(Admitted {
        token_id: t.id.clone(),
        outcome,
    })
}

/// Whether the claim presented a live, unrevoked certificate of this very cluster.
fn proves_key(c: &Cluster, r: &Claim) -> bool {
    let Some(serial) = &r.proven_serial else {
        return false;
    };
    c.status.certificates.iter().any(|cert| {
        cert.serial == *serial
            && cert.revoked_at.is_none()
            && cert.not_after.as_second() > r.now_unix
    })
}

/// The claim's name and labels as a proposal: `None` when they are what the cluster has.
fn proposal_of(spec: &FleetClusterSpec, claim: &Claim) -> Option<Identity> {
    (spec.name != claim.name || spec.labels != claim.labels).then(|| Identity {
        name: claim.name.clone(),
        labels: claim.labels.clone(),
    })
}

fn lock_key(fact: &str, id: &str) -> String {
    format!("{fact}:{id}")
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Identities {
    /// Reads every `FleetCluster` and the token and admin Secrets into the cache.
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let mut cache = Cache::default();
        let clusters = cluster_api(&shared);
        let objects = list_all("FleetClusters", ListParams::default(), |p| {
            let api = clusters.clone();
            async move { api.list(&p).await }
        })
        .await?;
        for object in objects {
            let Some(id) = object.metadata.name.clone() else {
                continue;
            };
            cache.put_cluster(&id, Cluster::of(object));
        }
        let api: Api<Secret> = shared.api();
        let secrets = list_all(
            "the fleet's Secrets",
            ListParams::default().labels(SELECTOR),
            |p| {
                let api = api.clone();
                async move { api.list(&p).await }
            },
        )
        .await?;
        for secret in &secrets {
            remember(&mut cache, secret)?;
        }
        Ok(Identities {
            shared,
            cache: Mutex::new(cache),
            locks: Locks::default(),
            version: AtomicU64::new(0),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().expect("the cache's lock")
    }

    /// After a write to the clusters' identities, whatever its outcome: a needless bump costs
    /// the orchestrator one full read, a missed one a stale fleet view.
    fn clusters_changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    pub async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let _token = self.locks.lock(lock_key("token", &token.id)).await;
        let token = Token {
            spent_before_migration: token.uses_allowed.saturating_sub(token.uses_left),
            record: token,
            resource_version: None,
        };
        self.put_secret(token.secret()).await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let cache = self.cache();
        let mut tokens: Vec<TokenRecord> = cache.tokens().map(|t| cache.token_record(t)).collect();
        tokens.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        Ok(tokens)
    }

    pub async fn revoke_token(&self, id: String) -> Result<bool, StoreError> {
        let _token = self.locks.lock(lock_key("token", &id)).await;
        let Some(mut token) = self.cache().token(&id).cloned() else {
            return Ok(false);
        };
        if !token.record.revoked {
            token.record.revoked = true;
            self.put_secret(token.secret()).await?;
        }
        Ok(true)
    }

    pub async fn admit(&self, claim: Claim) -> Result<(), RegisterError> {
        admit_in(&self.cache(), &claim).map(|_| ())
    }

    pub async fn register(&self, r: Registration) -> Result<Registered, RegisterError> {
        let claim = &r.claim;
        let _token = self.locks.lock(lock_key("token", &claim.token_id)).await;
        let _name = self.locks.lock(lock_key("name", &claim.name)).await;
        let _cluster = self
            .locks
            .lock(lock_key("cluster", &claim.cluster_id))
            .await;
        let registered = self.register_locked(&r).await;
        // A refusal wrote nothing; a write, even a failed one, may have changed the cluster.
        let refused = matches!(&registered, Err(e) if !matches!(e, RegisterError::Store(_)));
        if !refused {
            self.clusters_changed();
        }
        registered
    }

    /// `register` under its locks: admitted again against the cache, then the create of a
    /// new cluster, then the spec when a join sets name and labels, then one status write.
    async fn register_locked(&self, r: &Registration) -> Result<Registered, RegisterError> {
        let claim = &r.claim;
        let id = claim.cluster_id.as_str();
        let (admitted, old) = loop {
            let (admitted, existing) = {
                let cache = self.cache();
                (admit_in(&cache, claim)?, cache.cluster(id).cloned())
            };
            if let Some(old) = existing {
                break (admitted, old);
            }
            let spec = FleetClusterSpec {
                name: claim.name.clone(),
                labels: claim.labels.clone(),
            };
            // `None`: it exists already, unknown to the cache; admitted again with it.
            if let Some(created) = self.create_cluster(id, spec).await? {
                break (admitted, created);
            }
        };
        let now = at(claim.now_unix);
        let outcome = admitted.outcome;
        let mut new = old.clone();
        if outcome != Registered::Proved {
            new.spec = FleetClusterSpec {
                name: claim.name.clone(),
                labels: claim.labels.clone(),
            };
        }
        let s = &mut new.status;
        let previous = s.registration.take();
        let registered_at = previous.as_ref().map_or(now, |p| p.registered_at);
        let mut tokens_used = previous.map(|p| p.tokens_used).unwrap_or_default();
        if outcome != Registered::SameToken {
            tokens_used.push(admitted.token_id.clone());
        }
        s.registration = Some(crd::Registration {
            registered_at,
            token_id: Some(admitted.token_id),
            tokens_used,
        });
        // One identity, one key: whoever held the earlier certificates is out.
        for cert in &mut s.certificates {
            cert.revoked_at.get_or_insert(now);
        }
        s.certificates.insert(
            0,
            CertificateRecord {
                serial: r.cert.serial_hex.clone(),
                issued_at: at(r.cert.issued_unix),
                not_after: at(r.cert.not_after_unix),
                revoked_at: None,
                first_session_at: None,
            },
        );
        s.certificates.truncate(MAX_CERTIFICATES);
        let helm_version = s.agent.take().map(|a| a.helm_version).unwrap_or_default();
        s.agent = Some(Agent {
            agent_version: claim.agent_version.clone(),
            helm_version,
        });
        // A join with a token (new, the certificate expired, or an operator allowed a rejoin)
        // sets the identity; proving the key alone only proposes it.
        s.proposed = if outcome == Registered::Proved {
            proposal(proposal_of(&old.spec, claim).as_ref())
        } else {
            None
        };
        self.write_cluster(id, &old, new, Class::Gating).await?;
        Ok(outcome)
    }

    /// Creates cluster `id` with `spec` and caches it; `None` when it exists already (then
    /// what the API server holds is cached instead).
    async fn create_cluster(
        &self,
        id: &str,
        spec: FleetClusterSpec,
    ) -> Result<Option<Cluster>, StoreError> {
        self.shared.check_fence()?;
        let api = cluster_api(&self.shared);
        let mut object = FleetCluster::new(id, &Kind::FleetCluster.api_resource(), spec);
        object.metadata.labels = Some(Cluster::mirrored_labels(&object.spec));
        let what = || format!("creating FleetCluster {id}");
        let created = match api.create(&PostParams::default(), &object).await {
            Ok(created) => Cluster::of(created),
            Err(e) if is_conflict(&e) => {
                let there = api.get(id).await.map_err(|e| api_error(what(), e))?;
                self.cache().put_cluster(id, Cluster::of(there));
                return Ok(None);
            }
            Err(e) => return Err(api_error(what(), e)),
        };
        self.cache().put_cluster(id, created.clone());
        Ok(Some(created))
    }

    /// Writes what changed from `old` (the cached cluster) to `new`: the spec with its
    /// mirrored labels first, then the status; each part lands in the cache once stored.
    async fn write_cluster(
        &self,
        id: &str,
        old: &Cluster,
        mut new: Cluster,
        urgency: impl Into<Urgency>,
    ) -> Result<(), StoreError> {
        let urgency = urgency.into();
        // The lanes check the fence too; checked here, a deposed leader's caller is told so.
        self.shared.check_fence()?;
        new.settle_conditions(jiff::Timestamp::now());
        let key = |target| Key {
            kind: KindKey::FleetCluster,
            name: id.to_string(),
            target,
        };
        if old.spec != new.spec {
            let spec = diff(&json!(old.spec), &json!(new.spec));
            let labels = diff(
                &json!(Cluster::mirrored_labels(&old.spec)),
                &json!(Cluster::mirrored_labels(&new.spec)),
            );
            let mut patch = json!({ "spec": spec });
            if let Some(labels) = labels {
                patch["metadata"] = json!({ "labels": labels });
            }
            self.shared
                .patch(key(Target::Object), urgency, patch)
                .await?;
            let written = Cluster {
                spec: new.spec.clone(),
                status: old.status.clone(),
            };
            self.cache().put_cluster(id, written);
        }
        if let Some(status) = diff(&json!(old.status), &json!(new.status)) {
            let patch = json!({ "status": status });
            self.shared
                .patch(key(Target::Status), urgency, patch)
                .await?;
        }
        self.cache().put_cluster(id, new);
        Ok(())
    }

    /// Changes cluster `id` with `change` under its lock and writes the result; `None` when
    /// there is no such cluster.
    async fn update_cluster<T>(
        &self,
        id: &str,
        urgency: impl Into<Urgency>,
        change: impl FnOnce(&mut Cluster) -> T,
    ) -> Result<Option<T>, StoreError> {
        let _cluster = self.locks.lock(lock_key("cluster", id)).await;
        let Some(old) = self.cache().cluster(id).cloned() else {
            return Ok(None);
        };
        let mut new = old.clone();
        let answer = change(&mut new);
        self.write_cluster(id, &old, new, urgency).await?;
        Ok(Some(answer))
    }

    /// [`Identities::update_cluster`] for a change the fleet view shows: the version moves
    /// whatever the outcome. Returns whether the cluster exists.
    async fn update_shown(
        &self,
        id: &str,
        change: impl FnOnce(&mut Cluster),
    ) -> Result<bool, StoreError> {
        let updated = self.update_cluster(id, Class::Durable, change).await;
        self.clusters_changed();
        Ok(updated?.is_some())
    }

    pub async fn allow_rejoin(&self, id: String, now: i64) -> Result<bool, StoreError> {
        self.update_shown(&id, |c| {
            for cert in &mut c.status.certificates {
                cert.revoked_at.get_or_insert(at(now));
            }
        })
        .await
    }

    /// A cluster whose registration was never stored (its create was, its status write was
    /// not) is no registered cluster: reads do not show it, and its agent's retry registers it
    /// as new.
    pub async fn cluster(&self, id: String) -> Result<Option<ClusterRecord>, StoreError> {
        Ok(self
            .cache()
            .cluster(&id)
            .filter(|c| c.registered())
            .map(|c| c.record(&id)))
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let mut all: Vec<ClusterRecord> = self
            .cache()
            .clusters()
            .filter(|(_, c)| c.registered())
            .map(|(id, c)| c.record(id))
            .collect();
        all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(all)
    }

    pub fn clusters_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Stores cluster `id`'s versions and inventory; `hold`: the write may wait that long for
    /// the cluster's next write to carry it ([`crate::write::Writer::write_held`]).
    pub async fn set_cluster_state(
        &self,
        id: String,
        s: ClusterState,
        hold: Option<Duration>,
    ) -> Result<(), StoreError> {
        let urgency = Urgency {
            class: Class::Durable,
            hold,
        };
        self.update_cluster(&id, urgency, |c| {
            let agent = Agent {
                agent_version: s.agent_version,
                helm_version: s.helm_version,
            };
            c.status.agent = (agent != Agent::default()).then_some(agent);
            c.status.inventory = (!s.inventory.is_empty()).then(|| BASE64.encode(&s.inventory));
            c.status.release = s.release.map(|r| Release {
                chart_version: r.chart_version,
                status: r.status,
                revision: r.revision,
            });
        })
        .await?;
        Ok(())
    }

    pub async fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<String>, StoreError> {
        let _name = self.locks.lock(lock_key("name", &name)).await;
        let taken = self.cache().named(&name, &id).map(str::to_string);
        if taken.is_some() {
            return Ok(taken);
        }
        self.update_shown(&id, |c| {
            let identity = Identity { name, labels };
            // The proposal has been applied.
            if proposal(Some(&identity)) == c.status.proposed {
                c.status.proposed = None;
            }
            c.spec = FleetClusterSpec {
                name: identity.name,
                labels: identity.labels,
            };
        })
        .await?;
        Ok(None)
    }

    pub async fn propose_identity(
        &self,
        id: String,
        proposed: Option<Identity>,
    ) -> Result<(), StoreError> {
        // No `clusters_changed`: a proposal selects nothing, the fleet view does not show it.
        self.update_cluster(&id, Class::Coalesced, |c| {
            c.status.proposed = proposal(proposed.as_ref());
        })
        .await?;
        Ok(())
    }

    pub async fn revoke_cluster(&self, id: String, now: i64) -> Result<bool, StoreError> {
        self.update_shown(&id, |c| {
            c.status.revoked_at.get_or_insert(at(now));
        })
        .await
    }

    pub async fn certificate(&self, serial: String) -> Result<Option<CertRecord>, StoreError> {
        Ok(self
            .cache()
            .certificate(&serial)
            .map(|(id, c)| cert_record(id, c)))
    }

    pub async fn record_certificate(&self, cert: CertRecord) -> Result<(), StoreError> {
        let id = cert.cluster_id.clone();
        let recorded = self
            .update_cluster(&id, Class::Durable, |c| {
                let certs = &mut c.status.certificates;
                certs.retain(|c| c.serial != cert.serial_hex);
                certs.insert(
                    0,
                    CertificateRecord {
                        serial: cert.serial_hex,
                        issued_at: at(cert.issued_unix),
                        not_after: at(cert.not_after_unix),
                        revoked_at: cert.revoked_unix.map(at),
                        first_session_at: cert.first_session_unix.map(at),
                    },
                );
                certs.truncate(MAX_CERTIFICATES);
            })
            .await?;
        recorded.ok_or_else(|| {
            api_error(
                format!("recording a certificate of cluster {id}"),
                NoSuchCluster(id.clone()),
            )
        })
    }

    pub async fn certificate_used(&self, serial: String, now: i64) -> Result<(), StoreError> {
        let Some(id) = self
            .cache()
            .certificate(&serial)
            .filter(|(_, c)| c.first_session_at.is_none())
            .map(|(id, _)| id.to_string())
        else {
            return Ok(());
        };
        self.update_cluster(&id, Class::Coalesced, |c| {
            for cert in &mut c.status.certificates {
                if cert.serial == serial {
                    cert.first_session_at.get_or_insert(at(now));
                }
            }
        })
        .await?;
        Ok(())
    }

    pub async fn insert_admin(&self, a: AdminRecord, now: i64) -> Result<bool, StoreError> {
        let _admin = self.locks.lock(lock_key("admin", &a.name)).await;
        let existing = self.cache().admin(&a.name).cloned();
        let live = existing.as_ref().is_some_and(|admin| {
            admin
                .records
                .iter()
                .any(|r| r.revoked_unix.is_none() && r.not_after_unix > now)
        });
        if live {
            return Ok(false);
        }
        let mut admin = existing.unwrap_or_else(|| Admin {
            name: a.name.clone(),
            records: Vec::new(),
            resource_version: None,
        });
        admin.records.push(a);
        self.put_secret(admin.secret()).await?;
        Ok(true)
    }

    pub async fn admin(&self, serial: String) -> Result<Option<AdminRecord>, StoreError> {
        Ok(self.cache().admin_record(&serial).cloned())
    }

    pub async fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        let cache = self.cache();
        let mut all: Vec<(usize, &AdminRecord)> = cache
            .admins()
            .flat_map(|a| a.records.iter().enumerate())
            .collect();
        // Oldest first; records of one name in the order they were recorded.
        all.sort_by(|(i, a), (j, b)| {
            (a.created_unix, &a.name, i).cmp(&(b.created_unix, &b.name, j))
        });
        Ok(all.into_iter().map(|(_, a)| a.clone()).collect())
    }

    pub async fn revoke_admin(&self, name: String, now: i64) -> Result<u32, StoreError> {
        let _admin = self.locks.lock(lock_key("admin", &name)).await;
        let Some(mut admin) = self.cache().admin(&name).cloned() else {
            return Ok(0);
        };
        let mut live = 0;
        for r in admin
            .records
            .iter_mut()
            .filter(|r| r.revoked_unix.is_none())
        {
            r.revoked_unix = Some(now);
            live += 1;
        }
        if live > 0 {
            self.put_secret(admin.secret()).await?;
        }
        Ok(live)
    }

    /// Every registered cluster with what only the store reads: the token of its last
    /// registration and every certificate record.
    pub fn export_clusters(&self) -> Vec<ClusterExport> {
        let cache = self.cache();
        let mut out: Vec<ClusterExport> = cache
            .clusters()
            .filter(|(_, c)| c.registered())
            .map(|(id, c)| ClusterExport {
                record: c.record(id),
                token_id: c
                    .status
                    .registration
                    .as_ref()
                    .and_then(|r| r.token_id.clone())
                    .unwrap_or_default(),
                certificates: c
                    .status
                    .certificates
                    .iter()
                    .map(|cert| cert_record(id, cert))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        out
    }

    /// What this part holds, if anything: what a migration into the namespace refuses.
    pub fn holds_records(&self) -> Option<String> {
        let cache = self.cache();
        if let Some(t) = cache.tokens().next() {
            return Some(format!("join token {} exists", t.record.id));
        }
        if let Some(a) = cache.admins().next() {
            return Some(format!("admin {} exists", a.name));
        }
        cache
            .clusters()
            .next()
            .map(|(id, _)| format!("FleetCluster {id} exists"))
    }

    /// Writes the tokens, admins and clusters of a migration's snapshot as they are, into a
    /// namespace that holds none. A cluster's use of its last token is listed once in
    /// `tokensUsed` (so a same-token retry is recognised), and each token's other spent uses
    /// go to `usesSpentBeforeMigration`: the uses left are the source's.
    pub async fn import(&self, s: &Snapshot) -> Result<(), StoreError> {
        for t in &s.tokens {
            let listed = s.clusters.iter().filter(|c| c.token_id == t.id).count();
            let token = Token {
                spent_before_migration: t
                    .uses_allowed
                    .saturating_sub(t.uses_left)
                    .saturating_sub(u32::try_from(listed).unwrap_or(u32::MAX)),
                record: t.clone(),
                resource_version: None,
            };
            self.put_secret(token.secret()).await?;
        }
        let mut admins: BTreeMap<&str, Vec<AdminRecord>> = BTreeMap::new();
        for a in &s.admins {
            admins.entry(&a.name).or_default().push(a.clone());
        }
        for (name, mut records) in admins {
            records.sort_by_key(|a| a.created_unix);
            let admin = Admin {
                name: name.to_string(),
                records,
                resource_version: None,
            };
            self.put_secret(admin.secret()).await?;
        }
        // Each cluster is its own objects: they go side by side, as many as the write lanes
        // take at once, since one after the other is a round trip per request.
        let writes: Vec<_> = s.clusters.iter().map(|c| self.import_cluster(c)).collect();
        let imported = futures::stream::iter(writes)
            .buffer_unordered(IMPORTS_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await;
        self.clusters_changed();
        imported.map(|_| ())
    }

    /// Creates cluster `c`'s object, then writes its status: registration, revocation, its
    /// certificate records (the current first), agent, inventory and proposal.
    async fn import_cluster(&self, c: &ClusterExport) -> Result<(), StoreError> {
        let r = &c.record;
        let spec = FleetClusterSpec {
            name: r.name.clone(),
            labels: r.labels.clone(),
        };
        let Some(old) = self.create_cluster(&r.id, spec.clone()).await? else {
            return Err(StoreError::NotEmpty(format!(
                "FleetCluster {} exists",
                r.id
            )));
        };
        let mut certificates: Vec<&CertRecord> = c.certificates.iter().collect();
        // The cluster's current certificate first, then the newest: what the reads take as
        // current is the first record.
        certificates.sort_by_key(|cert| {
            (
                cert.serial_hex != r.cert_serial,
                std::cmp::Reverse(cert.issued_unix),
            )
        });
        let mut new = Cluster {
            spec,
            status: old.status.clone(),
        };
        let s = &mut new.status;
        s.registration = Some(crd::Registration {
            registered_at: at(r.registered_unix),
            token_id: (!c.token_id.is_empty()).then(|| c.token_id.clone()),
            tokens_used: if c.token_id.is_empty() {
                Vec::new()
            } else {
                vec![c.token_id.clone()]
            },
        });
        s.revoked_at = r.revoked_unix.map(at);
        s.certificates = certificates
            .into_iter()
            .take(MAX_CERTIFICATES)
            .map(|cert| CertificateRecord {
                serial: cert.serial_hex.clone(),
                issued_at: at(cert.issued_unix),
                not_after: at(cert.not_after_unix),
                revoked_at: cert.revoked_unix.map(at),
                first_session_at: cert.first_session_unix.map(at),
            })
            .collect();
        let state = &r.state;
        s.agent =
            (!state.agent_version.is_empty() || !state.helm_version.is_empty()).then(|| Agent {
                agent_version: state.agent_version.clone(),
                helm_version: state.helm_version.clone(),
            });
        s.inventory = (!state.inventory.is_empty()).then(|| BASE64.encode(&state.inventory));
        s.release = state.release.as_ref().map(|x| Release {
            chart_version: x.chart_version.clone(),
            status: x.status.clone(),
            revision: x.revision,
        });
        s.proposed = proposal(r.proposed.as_ref());
        self.write_cluster(&r.id, &old, new, Class::Durable).await
    }

    /// Certificate records and admins retention lets go; `audit` and `events` stay 0.
    ///
    /// A cluster keeps its current certificate's record whatever its age: it is what the
    /// cluster's record names as its certificate.
    pub async fn prune(&self, cutoffs: &Cutoffs) -> Result<Pruned, StoreError> {
        let cutoff = cutoffs.certificates_expired_before_unix;
        let expired = |c: &CertificateRecord| c.not_after.as_second() < cutoff;
        let clusters: Vec<String> = self
            .cache()
            .clusters()
            .filter(|(_, c)| c.status.certificates.iter().skip(1).any(expired))
            .map(|(id, _)| id.clone())
            .collect();
        let mut certificates = 0;
        for id in clusters {
            let dropped = self
                .update_cluster(&id, Class::Coalesced, |c| {
                    let before = c.status.certificates.len();
                    let mut first = true;
                    c.status.certificates.retain(|c| {
                        let keep = first || !expired(c);
                        first = false;
                        keep
                    });
                    before - c.status.certificates.len()
                })
                .await?;
            certificates += dropped.unwrap_or(0);
        }

        let cutoff = cutoffs.admins_expired_before_unix;
        let names: Vec<String> = self
            .cache()
            .admins()
            .filter(|a| a.records.iter().any(|r| r.not_after_unix < cutoff))
            .map(|a| a.name.clone())
            .collect();
        let mut admins = 0;
        for name in names {
            let _admin = self.locks.lock(lock_key("admin", &name)).await;
            let Some(mut admin) = self.cache().admin(&name).cloned() else {
                continue;
            };
            let before = admin.records.len();
            admin.records.retain(|r| r.not_after_unix >= cutoff);
            let dropped = before - admin.records.len();
            if dropped == 0 {
                continue;
            }
            if admin.records.is_empty() {
                self.delete_admin(&admin).await?;
            } else {
                self.put_secret(admin.secret()).await?;
            }
            admins += dropped;
        }
        Ok(Pruned {
            certificates,
            admins,
            ..Pruned::default()
        })
    }

    /// Creates `secret`, or replaces it when it carries the `resourceVersion` it was read
    /// at, and caches what was stored. On a conflict (someone else wrote it) the cache takes
    /// what the API server holds, so the caller's next attempt checks against that.
    async fn put_secret(&self, secret: Secret) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        let api: Api<Secret> = self.shared.api();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let params = PostParams::default();
        let stored = match &secret.metadata.resource_version {
            Some(_) => api.replace(&name, &params, &secret).await,
            None => api.create(&params, &secret).await,
        };
        let what = || format!("writing Secret {name}");
        match stored {
            Ok(stored) => remember(&mut self.cache(), &stored),
            Err(e) if is_conflict(&e) => {
                if let Ok(there) = api.get(&name).await {
                    remember(&mut self.cache(), &there)?;
                }
                Err(api_error(what(), e))
            }
            Err(e) => Err(api_error(what(), e)),
        }
    }

    /// Deletes admin `admin`'s Secret, as read.
    async fn delete_admin(&self, admin: &Admin) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        let api: Api<Secret> = self.shared.api();
        let name = secrets::admin_name(&admin.name);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: admin.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api_error(format!("deleting Secret {name}"), e)),
        }
        self.cache().put_admin(&admin.name, None);
        Ok(())
    }
}

/// Caches a token or admin Secret as read or stored.
fn remember(cache: &mut Cache, secret: &Secret) -> Result<(), StoreError> {
    let kind = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(KIND_LABEL))
        .map(String::as_str);
    match kind {
        Some(JOIN_TOKEN) => cache.put_token(Token::from_secret(secret)?),
        Some(ADMIN) => {
            let admin = Admin::from_secret(secret)?;
            cache.put_admin(&admin.name.clone(), Some(admin));
        }
        _ => {}
    }
    Ok(())
}

fn cluster_api(shared: &Shared) -> Api<FleetCluster> {
    Api::namespaced_with(
        shared.client.clone(),
        &shared.namespace,
        &Kind::FleetCluster.api_resource(),
    )
}

/// A certificate was to be recorded for a cluster the store does not have.
#[derive(Debug, thiserror::Error)]
#[error("no FleetCluster {0}")]
struct NoSuchCluster(String);
