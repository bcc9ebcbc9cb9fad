//! The embedded SQLite backend: one file, `store.db`, in the data dir.
//!
//! WAL journal with `synchronous=FULL`: every commit is fsynced before the call returns, so what
//! the coordinator acknowledged survives SIGKILL and power loss. One connection behind a mutex,
//! used from `spawn_blocking` so SQLite's blocking I/O never stalls the async runtime; the
//! write volume is small by design (transitions only).
//!
//! Its tests run the whole conformance suite (`crate::conformance`) and add only what is
//! SQLite's own: the schema version, exact per-row retention, the sweep's indexes
//! (`sweep_cost.rs`) and the migrations (`migrations.rs`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use skoala_support::time::now_ms;

use crate::{
    AdminRecord, AuditLog, AuditRecord, CertRecord, Claim, ClusterRecord, ClusterState, Cutoffs,
    Identity, IdentityStore, NewAudit, PlanEventRecord, PlanRecord, PlanStore, Pruned,
    RETRY_GRACE_SECS, RegisterError, Registered, Registration, ReleaseSummary, Retention,
    RolloutWrite, StoreError, TargetRecord, TokenRecord,
};

mod migrate;
pub use migrate::WriteHold;
mod migrations;
mod plans;
#[cfg(test)]
mod sweep_cost;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// [`IdentityStore::clusters_version`]: bumped after every write that changes which clusters
    /// exist or what they are called and labelled.
    clusters_version: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            clusters_version: Arc::default(),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still
            // consistent (SQLite rolled back the open transaction), so keep using it.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| E::from(StoreError::Worker(e.to_string())))?
    }

    /// After a write to the clusters' identities, whatever its outcome: a needless bump costs
    /// one full read, a missed one a stale fleet view.
    fn clusters_changed(&self) {
        self.clusters_version.fetch_add(1, Ordering::Release);
    }
}

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        secret_sha256: r.get(1)?,
        created_unix: r.get(2)?,
        expires_unix: r.get(3)?,
        uses_allowed: r.get(4)?,
        uses_left: r.get(5)?,
        revoked: r.get(6)?,
        description: r.get(7)?,
    })
}

/// How long [`IdentityStore::report_cluster_state`] waits before it writes.
const REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

const TOKEN_COLUMNS: &str =
    "id, secret_sha256, created_unix, expires_unix, uses_allowed, uses_left, revoked, description";

const CLUSTER_COLUMNS: &str = "id, name, labels_json, registered_unix, revoked_unix, agent_version, \
     helm_version, inventory, cert_serial, cert_not_after_unix";

/// What a read of a cluster selects: [`CLUSTER_COLUMNS`], the proposal and the release.
fn cluster_select() -> String {
    format!(
        "{CLUSTER_COLUMNS}, proposed_name, proposed_labels_json, release_chart_version, \
         release_status, release_revision"
    )
}

/// The labels stored as JSON in column `i`.
fn labels_at(
    r: &Row<'_>,
    i: usize,
) -> rusqlite::Result<std::collections::BTreeMap<String, String>> {
    let labels_json: String = r.get(i)?;
    serde_json::from_str(&labels_json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn cluster_from_row(r: &Row<'_>) -> rusqlite::Result<ClusterRecord> {
    let proposed = match r.get::<_, Option<String>>(10)? {
        Some(name) => Some(Identity {
            name,
            labels: labels_at(r, 11)?,
        }),
        None => None,
    };
    let release = match r.get::<_, Option<String>>(13)? {
        Some(status) => Some(ReleaseSummary {
            chart_version: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            status: status.into(),
            revision: r.get::<_, Option<i32>>(14)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(ClusterRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        labels: labels_at(r, 2)?,
        proposed,
        registered_unix: r.get(3)?,
        revoked_unix: r.get(4)?,
        state: ClusterState {
            agent_version: r.get(5)?,
            helm_version: r.get(6)?,
            inventory: r.get(7)?,
            release,
        },
        cert_serial: r.get(8)?,
        cert_not_after_unix: r.get(9)?,
    })
}

/// Stores token `t` as it is (`uses_left` included).
fn insert_token_row(c: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    c.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
        params![
            t.id,
            t.secret_sha256,
            t.created_unix,
            t.expires_unix,
            t.uses_allowed,
            t.uses_left,
            t.revoked,
            t.description
        ],
    )?;
    Ok(())
}

const CERT_COLUMNS: &str =
    "serial_hex, cluster_id, issued_unix, not_after_unix, revoked_unix, first_session_unix";

fn cert_from_row(r: &Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial_hex: r.get(0)?,
        cluster_id: r.get(1)?,
        issued_unix: r.get(2)?,
        not_after_unix: r.get(3)?,
        revoked_unix: r.get(4)?,
        first_session_unix: r.get(5)?,
    })
}

const AUDIT_COLUMNS: &str = "id, at_unix_ms, kind, cluster_id, peer, detail";

fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.get(0)?,
        at_unix_ms: r.get(1)?,
        kind: r.get(2)?,
        cluster_id: r.get(3)?,
        peer: r.get(4)?,
        detail: r.get(5)?,
    })
}

const ADMIN_COLUMNS: &str = "name, serial_hex, created_unix, not_after_unix, revoked_unix";

fn admin_from_row(r: &Row<'_>) -> rusqlite::Result<AdminRecord> {
    Ok(AdminRecord {
        name: r.get(0)?,
        serial_hex: r.get(1)?,
        created_unix: r.get(2)?,
        not_after_unix: r.get(3)?,
        revoked_unix: r.get(4)?,
    })
}

fn labels_json(labels: &std::collections::BTreeMap<String, String>) -> String {
    // Serialising a string map cannot fail.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string())
}

/// Stores `proposed` as cluster `id`'s proposal (`None` clears it).
fn write_proposal(c: &Connection, id: &str, proposed: Option<&Identity>) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE clusters SET proposed_name = ?2, proposed_labels_json = ?3 WHERE id = ?1",
        params![
            id,
            proposed.map(|p| p.name.as_str()),
            proposed.map(|p| labels_json(&p.labels))
        ],
    )?;
    Ok(())
}

/// A claim's name and labels as a proposal for cluster `id`: `None` when they are what it
/// has.
fn proposal_of(c: &Connection, id: &str, claim: &Claim) -> rusqlite::Result<Option<Identity>> {
    let (name, labels) = c.query_row(
        "SELECT name, labels_json FROM clusters WHERE id = ?1",
        params![id],
        |r| Ok((r.get::<_, String>(0)?, labels_at(r, 1)?)),
    )?;
    Ok(
        (name != claim.name || labels != claim.labels).then(|| Identity {
            name: claim.name.clone(),
            labels: claim.labels.clone(),
        }),
    )
}

/// What [`admit_in`] decided, for [`IdentityStore::register`] to write.
struct Admitted {
    token_id: String,
    outcome: Registered,
}

/// Every check of a registration, reading only: the token (hashes compared in constant time),
/// the cluster (revoked; registered with a live certificate and no proof of its key) and the
/// name (taken by another cluster).
fn admit_in(c: &Connection, r: &Claim) -> Result<Admitted, RegisterError> {
    let token = c
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
            params![r.token_id],
            token_from_row,
        )
        .optional()
        .map_err(StoreError::from)?;
    let Some(token) = token else {
        return Err(RegisterError::UnknownToken);
    };
    // Compare hashes, never secrets; the hash of a wrong secret reveals nothing.
    if !token.secret_matches(&r.token_sha256) {
        return Err(RegisterError::UnknownToken);
    }
    if token.revoked {
        return Err(RegisterError::Revoked(token.id));
    }
    if token.expires_unix <= r.now_unix {
        return Err(RegisterError::Expired(token.id));
    }
    let existing: Option<(Option<i64>, String, String, i64)> = c
        .query_row(
            "SELECT revoked_unix, token_id, cert_serial, cert_not_after_unix FROM clusters WHERE id = ?1",
            params![r.cluster_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()
        .map_err(StoreError::from)?;
    if let Some((Some(_), ..)) = existing {
        return Err(RegisterError::ClusterRevoked(r.cluster_id.clone()));
    }
    let same_token = existing
        .as_ref()
        .is_some_and(|(_, token_id, ..)| *token_id == token.id);
    if token.uses_left == 0 && !same_token {
        return Err(RegisterError::UsedUp(token.id));
    }
    let outcome = match &existing {
        None => Registered::New,
        Some(_) if proves_key(c, r)? => Registered::Proved,
        // No live certificate (expired, or an operator allowed the cluster to rejoin): nobody
        // holds the identity, a valid token is enough.
        Some((_, _, _, not_after)) if *not_after <= r.now_unix => {
            if same_token {
                Registered::SameToken
            } else {
                Registered::Again
            }
        }
        // The answer to a registration was lost: the same token, soon after, while no session
        // ever used the certificate, may try again.
        Some((_, _, serial, _))
            if same_token && unused_since(c, serial, r.now_unix - RETRY_GRACE_SECS)? =>
        {
            Registered::SameToken
        }
        Some(_) => return Err(RegisterError::Takeover(r.cluster_id.clone())),
    };
    // A cluster proving its key keeps its name (the claim's is only proposed), so only a name
    // the registration would write must be free.
    let other: Option<String> = if outcome == Registered::Proved {
        None
    } else {
        c.query_row(
            "SELECT id FROM clusters WHERE name = ?1 AND id != ?2 LIMIT 1",
            params![r.name, r.cluster_id],
            |row| row.get(0),
        )
        .optional()
        .map_err(StoreError::from)?
    };
    if let Some(other) = other {
        return Err(RegisterError::NameTaken {
            name: r.name.clone(),
            other,
        });
    }
    Ok(Admitted {
        token_id: token.id,
        outcome,
    })
}

/// Whether the claim presented a live, unrevoked certificate of this very cluster.
fn proves_key(c: &Connection, r: &Claim) -> Result<bool, StoreError> {
    let Some(serial) = &r.proven_serial else {
        return Ok(false);
    };
    Ok(c.query_row(
        "SELECT 1 FROM certificates WHERE serial_hex = ?1 AND cluster_id = ?2 \
         AND revoked_unix IS NULL AND not_after_unix > ?3",
        params![serial, r.cluster_id, r.now_unix],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Whether certificate `serial` was issued after `since` and no session ever used it.
fn unused_since(c: &Connection, serial: &str, since: i64) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT 1 FROM certificates WHERE serial_hex = ?1 AND issued_unix > ?2 \
         AND first_session_unix IS NULL",
        params![serial, since],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

impl IdentityStore for SqliteStore {
    async fn insert_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        self.run(move |c| insert_token_row(c, &t)).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_unix, id"
            ))?;
            let rows = st.query_map([], token_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke_token(&self, id: String) -> Result<bool, StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?;
            if n > 0 {
                tx.execute(
                    "INSERT INTO revocations (subject_kind, subject_id, revoked_unix) VALUES ('token', ?1, ?2)",
                    params![id, now_ms() / 1000],
                )?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn admit(&self, claim: Claim) -> Result<(), RegisterError> {
        // A read: refusing costs no write lock and no fsync.
        self.run(move |c| admit_in(c, &claim).map(|_| ())).await
    }

    async fn register(&self, r: Registration) -> Result<Registered, RegisterError> {
        let registered = self.run(move |c| {
            // IMMEDIATE: take the write lock before reading uses_left, so two registrations
            // racing for the last use (or for one cluster) cannot both win.
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let admitted = admit_in(&tx, &r.claim)?;
            let claim = &r.claim;
            if admitted.outcome == Registered::New {
                tx.execute(
                    &format!(
                        "INSERT INTO clusters ({CLUSTER_COLUMNS}, token_id) VALUES (?1,?2,?3,?4,NULL,?5,'',x'',?6,?7,?8)"
                    ),
                    params![
                        claim.cluster_id,
                        claim.name,
                        labels_json(&claim.labels),
                        claim.now_unix,
                        claim.agent_version,
                        r.cert.serial_hex,
                        r.cert.not_after_unix,
                        admitted.token_id
                    ],
                )
                .map_err(StoreError::from)?;
            } else {
                tx.execute(
                    "UPDATE clusters SET agent_version = ?2, cert_serial = ?3, \
                     cert_not_after_unix = ?4, token_id = ?5 WHERE id = ?1",
                    params![
                        claim.cluster_id,
                        claim.agent_version,
                        r.cert.serial_hex,
                        r.cert.not_after_unix,
                        admitted.token_id
                    ],
                )
                .map_err(StoreError::from)?;
                // A join with a token (the cluster's certificate expired, or an operator
                // allowed it to rejoin) sets the identity; proving the key alone does not.
                let proposed = if admitted.outcome == Registered::Proved {
                    proposal_of(&tx, &claim.cluster_id, claim).map_err(StoreError::from)?
                } else {
                    tx.execute(
                        "UPDATE clusters SET name = ?2, labels_json = ?3 WHERE id = ?1",
                        params![claim.cluster_id, claim.name, labels_json(&claim.labels)],
                    )
                    .map_err(StoreError::from)?;
                    None
                };
                write_proposal(&tx, &claim.cluster_id, proposed.as_ref())
                    .map_err(StoreError::from)?;
                // One identity, one key: whoever held the earlier certificates is out.
                tx.execute(
                    "UPDATE certificates SET revoked_unix = ?2 WHERE cluster_id = ?1 AND revoked_unix IS NULL",
                    params![claim.cluster_id, claim.now_unix],
                )
                .map_err(StoreError::from)?;
            }
            if admitted.outcome != Registered::SameToken {
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                    params![admitted.token_id],
                )
                .map_err(StoreError::from)?;
            }
            tx.execute(
                "INSERT INTO certificates (serial_hex, cluster_id, issued_unix, not_after_unix) VALUES (?1,?2,?3,?4)",
                params![r.cert.serial_hex, claim.cluster_id, r.cert.issued_unix, r.cert.not_after_unix],
            )
            .map_err(StoreError::from)?;
            tx.commit().map_err(StoreError::from)?;
            Ok(admitted.outcome)
        })
        .await;
        self.clusters_changed();
        registered
    }

    async fn allow_rejoin(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        let allowed = self.run(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE clusters SET cert_not_after_unix = 0 WHERE id = ?1",
                params![id],
            )?;
            tx.execute(
                "UPDATE certificates SET revoked_unix = ?2 WHERE cluster_id = ?1 AND revoked_unix IS NULL",
                params![id, now_unix],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await;
        self.clusters_changed();
        allowed
    }

    async fn cluster(&self, id: String) -> Result<Option<ClusterRecord>, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {} FROM clusters WHERE id = ?1", cluster_select()),
                params![id],
                cluster_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM clusters ORDER BY name, id",
                cluster_select()
            ))?;
            let rows = st.query_map([], cluster_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    fn clusters_version(&self) -> u64 {
        self.clusters_version.load(Ordering::Acquire)
    }

    async fn set_cluster_state(&self, id: String, s: ClusterState) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "UPDATE clusters SET agent_version = ?2, helm_version = ?3, inventory = ?4, \
                 release_chart_version = ?5, release_status = ?6, release_revision = ?7 \
                 WHERE id = ?1",
                params![
                    id,
                    s.agent_version,
                    s.helm_version,
                    s.inventory,
                    s.release.as_ref().map(|r| r.chart_version.as_str()),
                    s.release.as_ref().map(|r| r.status.as_str()),
                    s.release.as_ref().map(|r| r.revision),
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// A moment later (`REPORT_DELAY`): the agent sends the report beside the task's result,
    /// and written at once it takes the one connection from the result's transaction; nothing
    /// reads it sooner (the orchestrator judges a connected cluster on its live inventory).
    async fn report_cluster_state(
        &self,
        id: String,
        state: ClusterState,
    ) -> Result<(), StoreError> {
        tokio::time::sleep(REPORT_DELAY).await;
        self.set_cluster_state(id, state).await
    }

    async fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Option<String>, StoreError> {
        let written = self
            .run(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let other: Option<String> = tx
                    .query_row(
                        "SELECT id FROM clusters WHERE name = ?1 AND id != ?2 LIMIT 1",
                        params![name, id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if other.is_none() {
                    let labels = labels_json(&labels);
                    tx.execute(
                        "UPDATE clusters SET name = ?2, labels_json = ?3 WHERE id = ?1",
                        params![id, name, labels],
                    )?;
                    tx.execute(
                        "UPDATE clusters SET proposed_name = NULL, proposed_labels_json = NULL \
                         WHERE id = ?1 AND proposed_name = ?2 AND proposed_labels_json = ?3",
                        params![id, name, labels],
                    )?;
                }
                tx.commit()?;
                Ok(other)
            })
            .await;
        self.clusters_changed();
        written
    }

    async fn propose_identity(
        &self,
        id: String,
        proposed: Option<Identity>,
    ) -> Result<(), StoreError> {
        // No `clusters_changed`: a proposal selects nothing, the fleet view does not show it.
        self.run(move |c| Ok(write_proposal(c, &id, proposed.as_ref())?))
            .await
    }

    async fn revoke_cluster(&self, id: String, now_unix: i64) -> Result<bool, StoreError> {
        let revoked = self.run(move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM clusters WHERE id = ?1", params![id], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if exists {
                tx.execute(
                    "UPDATE clusters SET revoked_unix = COALESCE(revoked_unix, ?2) WHERE id = ?1",
                    params![id, now_unix],
                )?;
                tx.execute(
                    "INSERT INTO revocations (subject_kind, subject_id, revoked_unix) VALUES ('cluster', ?1, ?2)",
                    params![id, now_unix],
                )?;
            }
            tx.commit()?;
            Ok(exists)
        })
        .await;
        self.clusters_changed();
        revoked
    }

    async fn certificate(&self, serial_hex: String) -> Result<Option<CertRecord>, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial_hex = ?1"),
                params![serial_hex],
                cert_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn record_certificate(&self, cert: CertRecord) -> Result<(), StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO certificates (serial_hex, cluster_id, issued_unix, not_after_unix) VALUES (?1,?2,?3,?4)",
                params![cert.serial_hex, cert.cluster_id, cert.issued_unix, cert.not_after_unix],
            )?;
            tx.execute(
                "UPDATE clusters SET cert_serial = ?2, cert_not_after_unix = ?3 WHERE id = ?1",
                params![cert.cluster_id, cert.serial_hex, cert.not_after_unix],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn certificate_used(&self, serial_hex: String, now_unix: i64) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "UPDATE certificates SET first_session_unix = ?2 WHERE serial_hex = ?1 AND first_session_unix IS NULL",
                params![serial_hex, now_unix],
            )?;
            Ok(())
        })
        .await
    }

    async fn insert_admin(&self, a: AdminRecord, now_unix: i64) -> Result<bool, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = tx
                .query_row(
                    "SELECT 1 FROM admins WHERE name = ?1 AND revoked_unix IS NULL AND not_after_unix > ?2",
                    params![a.name, now_unix],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !live {
                tx.execute(
                    "INSERT INTO admins (serial_hex, name, created_unix, not_after_unix, revoked_unix) VALUES (?1,?2,?3,?4,?5)",
                    params![a.serial_hex, a.name, a.created_unix, a.not_after_unix, a.revoked_unix],
                )?;
            }
            tx.commit()?;
            Ok(!live)
        })
        .await
    }

    async fn admin(&self, serial_hex: String) -> Result<Option<AdminRecord>, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE serial_hex = ?1"),
                params![serial_hex],
                admin_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY created_unix, name"
            ))?;
            let rows = st.query_map([], admin_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke_admin(&self, name: String, now_unix: i64) -> Result<u32, StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE admins SET revoked_unix = ?2 WHERE name = ?1 AND revoked_unix IS NULL",
                params![name, now_unix],
            )?;
            if n > 0 {
                tx.execute(
                    "INSERT INTO revocations (subject_kind, subject_id, revoked_unix) VALUES ('admin', ?1, ?2)",
                    params![name, now_unix],
                )?;
            }
            tx.commit()?;
            Ok(n as u32)
        })
        .await
    }
}

impl AuditLog for SqliteStore {
    async fn append_audit(&self, e: NewAudit) -> Result<i64, StoreError> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO audit (at_unix_ms, kind, cluster_id, peer, detail) VALUES (?1,?2,?3,?4,?5)",
                params![now_ms(), e.kind, e.cluster_id, e.peer, e.detail],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn audit(&self, after_id: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after_id, limit], audit_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

impl PlanStore for SqliteStore {
    async fn put_plan(
        &self,
        plan: PlanRecord,
        events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        self.run(move |c| plans::put_plan(c, now_ms(), &plan, &events))
            .await
    }

    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        self.run(plans::plans).await
    }

    async fn save_rollout(&self, write: RolloutWrite) -> Result<i64, StoreError> {
        self.run(move |c| plans::save_rollout(c, now_ms(), &write))
            .await
    }

    /// One transaction: every target is named once all of them are stored.
    async fn start_targets(
        &self,
        plan: String,
        targets: Vec<TargetRecord>,
        stored: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StoreError> {
        let ids: Vec<String> = targets.iter().map(|t| t.cluster_id.clone()).collect();
        let write = RolloutWrite {
            plan,
            head: None,
            targets,
            events: Vec::new(),
        };
        self.run(move |c| plans::save_rollout(c, now_ms(), &write))
            .await?;
        for id in &ids {
            stored(id);
        }
        Ok(())
    }

    async fn append_plan_events(&self, events: Vec<PlanEventRecord>) -> Result<i64, StoreError> {
        self.run(move |c| plans::append_events(c, now_ms(), &events))
            .await
    }

    async fn plan_events(
        &self,
        plan: String,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        self.run(move |c| plans::events(c, &plan, after_id, limit))
            .await
    }

    async fn mean_upgrade_ms(&self) -> Result<Option<i64>, StoreError> {
        self.run(plans::mean_upgrade_ms).await
    }
}

impl Retention for SqliteStore {
    async fn prune(&self, cutoffs: Cutoffs) -> Result<Pruned, StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let pruned = Pruned {
                audit: tx.execute(
                    "DELETE FROM audit WHERE at_unix_ms < ?1",
                    params![cutoffs.audit_before_ms],
                )?,
                events: tx.execute(
                    "DELETE FROM plan_events WHERE at_unix_ms < ?1
                     AND plan NOT IN (SELECT name FROM plans WHERE active = 1)",
                    params![cutoffs.events_before_ms],
                )?,
                certificates: tx.execute(
                    "DELETE FROM certificates WHERE not_after_unix < ?1",
                    params![cutoffs.certificates_expired_before_unix],
                )?,
                admins: tx.execute(
                    "DELETE FROM admins WHERE not_after_unix < ?1",
                    params![cutoffs.admins_expired_before_unix],
                )?,
            };
            tx.commit()?;
            Ok(pruned)
        })
        .await
    }
}

/// The records of [`crate::fixtures`], beside the backend the coordinator's tests run on.
#[cfg(any(test, feature = "fixtures"))]
pub use crate::fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::{registration, token};
    use super::*;
    use crate::conformance::{Factory, Refusal};

    /// Stores in a folder of their own; `reopen` opens the file again, as a restarted
    /// coordinator does.
    struct Sqlite {
        dir: tempfile::TempDir,
        /// How many stores [`Factory::fresh`] made: each gets a file of its own.
        made: AtomicU64,
    }

    impl Sqlite {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
                made: AtomicU64::new(0),
            }
        }
    }

    /// The file `store` was opened from.
    fn path_of(store: &SqliteStore) -> std::path::PathBuf {
        let conn = store.conn.lock().expect("lock");
        conn.path().expect("a file store").into()
    }

    impl Factory for Sqlite {
        type Store = SqliteStore;

        async fn fresh(&self) -> SqliteStore {
            let n = self.made.fetch_add(1, Ordering::Relaxed);
            SqliteStore::open(&self.dir.path().join(format!("store-{n}.db"))).expect("open")
        }

        async fn reopen(&self, store: SqliteStore) -> SqliteStore {
            let path = path_of(&store);
            drop(store);
            SqliteStore::open(&path).expect("reopen")
        }

        /// A trigger, created from a second connection: the store's own sees it at its next
        /// statement, as it would a full disk.
        async fn refuse(&self, store: &SqliteStore, refusal: Refusal) {
            let trigger = match refusal {
                Refusal::Events => "CREATE TRIGGER refuse_events BEFORE INSERT ON plan_events
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
                    .to_string(),
                Refusal::Target(id) => format!(
                    "CREATE TRIGGER refuse_target BEFORE INSERT ON rollout_targets
                     WHEN NEW.cluster_id = '{id}'
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
                ),
            };
            let other = Connection::open(path_of(store)).expect("second connection");
            other.execute_batch(&trigger).expect("trigger");
        }
    }

    crate::conformance_tests!(Sqlite::new());

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).expect("open"));
        let c = Connection::open(&path).expect("raw open");
        c.pragma_update(None, "user_version", 99).expect("bump");
        drop(c);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// SQLite-only: it deletes each row older than its cutoff, where the kube store deletes
    /// whole sealed segments and certificate records on the cluster's next write (§2.2).
    #[tokio::test]
    async fn retention_deletes_exactly_the_rows_older_than_the_cutoffs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open");
        let t = token(2);
        store.insert_token(t.clone()).await.expect("token");
        // c1's certificate expired at 2,000 s; c2's renewal runs until far ahead.
        store
            .register(registration(&t, "c1", "01"))
            .await
            .expect("c1");
        let mut r2 = registration(&t, "c2", "02");
        r2.cert.not_after_unix = i64::MAX / 2;
        store.register(r2).await.expect("c2");
        for kind in ["old", "new"] {
            let e = NewAudit {
                kind: kind.into(),
                ..Default::default()
            };
            store.append_audit(e).await.expect("audit");
        }
        for (name, active) in [("done", false), ("running", true)] {
            let plan = PlanRecord {
                name: name.into(),
                document: String::new(),
                rollout: Default::default(),
                active,
                created_ms: 1,
                updated_ms: 1,
            };
            let event = |kind: &str| PlanEventRecord {
                plan: name.into(),
                kind: kind.into(),
                ..Default::default()
            };
            store
                .put_plan(plan, vec![event("old"), event("new")])
                .await
                .expect("plan");
        }
        // The "old" rows are a year old.
        let c = Connection::open(&path).expect("a second connection");
        let year_ago = now_ms() - 365 * 86_400_000;
        c.execute(
            "UPDATE audit SET at_unix_ms = ?1 WHERE kind = 'old'",
            [year_ago],
        )
        .expect("age audit");
        c.execute(
            "UPDATE plan_events SET at_unix_ms = ?1 WHERE kind = 'old'",
            [year_ago],
        )
        .expect("age events");

        let day_ago = now_ms() - 86_400_000;
        let pruned = store
            .prune(Cutoffs {
                audit_before_ms: day_ago,
                events_before_ms: day_ago,
                certificates_expired_before_unix: 1_000_000,
                admins_expired_before_unix: 0,
            })
            .await
            .expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                audit: 1,
                events: 1,
                certificates: 1,
                admins: 0,
            }
        );
        let audit: Vec<String> = store
            .audit(0, 100)
            .await
            .expect("audit")
            .into_iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(audit, ["new"]);
        let events: Vec<(String, String)> = store
            .plan_events(String::new(), 0, 100)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.plan, e.kind))
            .collect();
        assert_eq!(
            events,
            [
                ("done".to_string(), "new".to_string()),
                ("running".into(), "old".into()),
                ("running".into(), "new".into())
            ],
            "the active plan keeps its whole history"
        );
        assert!(
            store
                .certificate("01".into())
                .await
                .expect("cert")
                .is_none()
        );
        assert!(
            store
                .certificate("02".into())
                .await
                .expect("cert")
                .is_some()
        );
    }
}
