//! The embedded SQLite backend: one file, `store.db`, in the data dir.
//!
//! WAL journal with `synchronous=FULL`: every commit is fsynced before the call returns, so what
//! the coordinator acknowledged survives SIGKILL and power loss. One connection behind a mutex,
//! used from `spawn_blocking` so SQLite's blocking I/O never stalls the async runtime; the
//! write volume is small by design (transitions only).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::clock::now_ms;

use super::{
    AuditRecord, CertRecord, ClusterRecord, ClusterState, NewAudit, PlanEventRecord, PlanRecord,
    RegisterError, Registered, Registration, Store, StoreError, TokenRecord, migrations, plans,
};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// [`Store::clusters_version`]: bumped after every write that changes which clusters
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

const TOKEN_COLUMNS: &str =
    "id, secret_sha256, created_unix, expires_unix, uses_allowed, uses_left, revoked, description";

const CLUSTER_COLUMNS: &str = "id, name, labels_json, registered_unix, revoked_unix, agent_version, \
     helm_version, inventory, cert_serial, cert_not_after_unix";

fn cluster_from_row(r: &Row<'_>) -> rusqlite::Result<ClusterRecord> {
    let labels_json: String = r.get(2)?;
    let labels = serde_json::from_str(&labels_json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(ClusterRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        labels,
        registered_unix: r.get(3)?,
        revoked_unix: r.get(4)?,
        state: ClusterState {
            agent_version: r.get(5)?,
            helm_version: r.get(6)?,
            inventory: r.get(7)?,
        },
        cert_serial: r.get(8)?,
        cert_not_after_unix: r.get(9)?,
    })
}

fn labels_json(labels: &std::collections::BTreeMap<String, String>) -> String {
    // Serialising a string map cannot fail.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string())
}

impl Store for SqliteStore {
    async fn insert_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        self.run(move |c| {
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
        })
        .await
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

    async fn register(&self, r: Registration) -> Result<Registered, RegisterError> {
        let registered = self.run(move |c| {
            // IMMEDIATE: take the write lock before reading uses_left, so two registrations
            // racing for the last use cannot both win.
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let token = tx
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
            if token.secret_sha256 != r.token_sha256 {
                return Err(RegisterError::UnknownToken);
            }
            if token.revoked {
                return Err(RegisterError::Revoked(token.id));
            }
            if token.expires_unix <= r.now_unix {
                return Err(RegisterError::Expired(token.id));
            }
            let existing: Option<(Option<i64>, String)> = tx
                .query_row(
                    "SELECT revoked_unix, token_id FROM clusters WHERE id = ?1",
                    params![r.cluster_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(StoreError::from)?;
            if let Some((Some(_), _)) = existing {
                return Err(RegisterError::ClusterRevoked(r.cluster_id));
            }
            // The same cluster registering again with the token it joined with (its answer
            // was lost, or it lost its key before saving it): allowed while the token is
            // valid, without spending another use, so a flaky network cannot strand an agent
            // with a used-up token.
            let same_token = existing
                .as_ref()
                .is_some_and(|(_, token_id)| *token_id == token.id);
            if token.uses_left == 0 && !same_token {
                return Err(RegisterError::UsedUp(token.id));
            }
            let outcome = if existing.is_some() {
                tx.execute(
                    "UPDATE clusters SET name = ?2, labels_json = ?3, agent_version = ?4, \
                     cert_serial = ?5, cert_not_after_unix = ?6, token_id = ?7 WHERE id = ?1",
                    params![
                        r.cluster_id,
                        r.name,
                        labels_json(&r.labels),
                        r.agent_version,
                        r.cert.serial_hex,
                        r.cert.not_after_unix,
                        token.id
                    ],
                )
                .map_err(StoreError::from)?;
                if same_token {
                    Registered::SameToken
                } else {
                    Registered::Again
                }
            } else {
                tx.execute(
                    &format!(
                        "INSERT INTO clusters ({CLUSTER_COLUMNS}, token_id) VALUES (?1,?2,?3,?4,NULL,?5,'',x'',?6,?7,?8)"
                    ),
                    params![
                        r.cluster_id,
                        r.name,
                        labels_json(&r.labels),
                        r.now_unix,
                        r.agent_version,
                        r.cert.serial_hex,
                        r.cert.not_after_unix,
                        token.id
                    ],
                )
                .map_err(StoreError::from)?;
                Registered::New
            };
            if !same_token {
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                    params![token.id],
                )
                .map_err(StoreError::from)?;
            }
            tx.execute(
                "INSERT INTO certificates (serial_hex, cluster_id, issued_unix, not_after_unix) VALUES (?1,?2,?3,?4)",
                params![r.cert.serial_hex, r.cluster_id, r.cert.issued_unix, r.cert.not_after_unix],
            )
            .map_err(StoreError::from)?;
            tx.commit().map_err(StoreError::from)?;
            Ok(outcome)
        })
        .await;
        self.clusters_changed();
        registered
    }

    async fn cluster(&self, id: String) -> Result<Option<ClusterRecord>, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = ?1"),
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
                "SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY name, id"
            ))?;
            let rows = st.query_map([], cluster_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn set_cluster_state(&self, id: String, s: ClusterState) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "UPDATE clusters SET agent_version = ?2, helm_version = ?3, inventory = ?4 WHERE id = ?1",
                params![id, s.agent_version, s.helm_version, s.inventory],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_cluster_identity(
        &self,
        id: String,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let written = self
            .run(move |c| {
                c.execute(
                    "UPDATE clusters SET name = ?2, labels_json = ?3 WHERE id = ?1",
                    params![id, name, labels_json(&labels)],
                )?;
                Ok(())
            })
            .await;
        self.clusters_changed();
        written
    }

    fn clusters_version(&self) -> u64 {
        self.clusters_version.load(Ordering::Acquire)
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
                "SELECT serial_hex, cluster_id, issued_unix, not_after_unix FROM certificates WHERE serial_hex = ?1",
                params![serial_hex],
                |r| {
                    Ok(CertRecord {
                        serial_hex: r.get(0)?,
                        cluster_id: r.get(1)?,
                        issued_unix: r.get(2)?,
                        not_after_unix: r.get(3)?,
                    })
                },
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
            let mut st = c.prepare(
                "SELECT id, at_unix_ms, kind, cluster_id, peer, detail FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![after_id, limit], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at_unix_ms: r.get(1)?,
                    kind: r.get(2)?,
                    cluster_id: r.get(3)?,
                    peer: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

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

    async fn save_rollout(
        &self,
        name: String,
        rollout: String,
        events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        self.run(move |c| plans::save_rollout(c, now_ms(), &name, &rollout, &events))
            .await
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

/// Records for tests of the store and of what reads it.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn registration(token: &TokenRecord, cluster: &str, serial: &str) -> Registration {
        Registration {
            token_id: token.id.clone(),
            token_sha256: token.secret_sha256.clone(),
            now_unix: 1_000,
            cluster_id: cluster.into(),
            name: format!("name-{cluster}"),
            labels: [("env".to_string(), "prod".to_string())].into(),
            agent_version: "0.1.0".into(),
            cert: CertRecord {
                serial_hex: serial.into(),
                cluster_id: cluster.into(),
                issued_unix: 1_000,
                not_after_unix: 2_000,
            },
        }
    }

    pub fn token(uses: u32) -> TokenRecord {
        TokenRecord {
            id: "abcd".into(),
            secret_sha256: "hash".into(),
            created_unix: 900,
            expires_unix: 1_500,
            uses_allowed: uses,
            uses_left: uses,
            revoked: false,
            description: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{registration, token};
    use super::*;

    #[tokio::test]
    async fn tokens_are_used_up_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open");
        let t = token(1);
        store.insert_token(t.clone()).await.expect("insert");
        let first = store.register(registration(&t, "c1", "01")).await;
        assert!(matches!(first, Ok(Registered::New)), "{first:?}");
        let second = store.register(registration(&t, "c2", "02")).await;
        assert!(
            matches!(second, Err(RegisterError::UsedUp(_))),
            "{second:?}"
        );
        drop(store);

        let store = SqliteStore::open(&path).expect("reopen");
        let clusters = store.clusters().await.expect("clusters");
        assert_eq!(clusters.len(), 1);
        assert_eq!(
            clusters[0].labels.get("env").map(String::as_str),
            Some("prod")
        );
        assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 0);
        let cert = store.certificate("01".into()).await.expect("cert");
        assert_eq!(cert.map(|c| c.cluster_id), Some("c1".to_string()));
    }

    #[tokio::test]
    async fn the_same_cluster_may_retry_with_its_own_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
        let t = token(1);
        store.insert_token(t.clone()).await.expect("insert");
        assert!(matches!(
            store.register(registration(&t, "c1", "01")).await,
            Ok(Registered::New)
        ));
        // The answer was lost; the agent retries with a new key and the same token.
        assert!(matches!(
            store.register(registration(&t, "c1", "02")).await,
            Ok(Registered::SameToken)
        ));
        assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 0);
        // Another cluster cannot ride on it.
        assert!(matches!(
            store.register(registration(&t, "c2", "03")).await,
            Err(RegisterError::UsedUp(_))
        ));
        let c = store.cluster("c1".into()).await.expect("get").expect("c1");
        assert_eq!(c.cert_serial, "02");
    }

    #[tokio::test]
    async fn refusals_are_distinguished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
        let t = token(5);
        store.insert_token(t.clone()).await.expect("insert");

        let mut wrong = registration(&t, "c1", "01");
        wrong.token_sha256 = "other".into();
        assert!(matches!(
            store.register(wrong).await,
            Err(RegisterError::UnknownToken)
        ));

        let mut late = registration(&t, "c1", "01");
        late.now_unix = 1_500;
        assert!(matches!(
            store.register(late).await,
            Err(RegisterError::Expired(_))
        ));

        store
            .register(registration(&t, "c1", "01"))
            .await
            .expect("register");
        assert!(
            store
                .revoke_cluster("c1".into(), 1_100)
                .await
                .expect("revoke")
        );
        assert!(matches!(
            store.register(registration(&t, "c1", "02")).await,
            Err(RegisterError::ClusterRevoked(_))
        ));

        assert!(
            store
                .revoke_token("abcd".into())
                .await
                .expect("revoke token")
        );
        assert!(matches!(
            store.register(registration(&t, "c3", "03")).await,
            Err(RegisterError::Revoked(_))
        ));
    }

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
}
