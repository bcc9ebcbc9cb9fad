//! [`Migrate`] for SQLite: every table read in one read transaction (WAL gives it one
//! snapshot), and written into an empty file in one write transaction with the source's ids,
//! so the `AUTOINCREMENT` sequences continue after the highest imported id; the transaction
//! reads every class back and commits only when the counts are those written.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{ADMIN_COLUMNS, AUDIT_COLUMNS, CERT_COLUMNS, SqliteStore, TOKEN_COLUMNS};
use super::{admin_from_row, audit_from_row, cert_from_row, cluster_from_row, cluster_select};
use super::{insert_token_row, labels_json, plans, token_from_row};
use crate::{ClusterExport, Migrate, Snapshot, StoreError};

/// The tables that hold records: a store with a row in any of them is not empty.
const TABLES: [&str; 8] = [
    "tokens",
    "admins",
    "clusters",
    "certificates",
    "plans",
    "rollout_targets",
    "plan_events",
    "audit",
];

impl Migrate for SqliteStore {
    async fn export(&self) -> Result<Snapshot, StoreError> {
        self.run(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let snapshot = export(&tx)?;
            tx.commit()?;
            Ok(snapshot)
        })
        .await
    }

    async fn import(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let result = self
            .run(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Some(table) = first_nonempty(&tx)? {
                    return Err(StoreError::NotEmpty(format!("table {table} has rows")));
                }
                import(&tx, &snapshot)?;
                let (wrote, found) = (snapshot.counts(), export(&tx)?.counts());
                if found != wrote {
                    return Err(StoreError::Unverified(format!(
                        "wrote {wrote}; read back {found}"
                    )));
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        self.clusters_changed();
        result
    }
}

fn first_nonempty(c: &Connection) -> Result<Option<&'static str>, StoreError> {
    for table in TABLES {
        let any: Option<i64> = c
            .query_row(&format!("SELECT 1 FROM {table} LIMIT 1"), [], |r| r.get(0))
            .optional()?;
        if any.is_some() {
            return Ok(Some(table));
        }
    }
    Ok(None)
}

fn export(c: &Connection) -> Result<Snapshot, StoreError> {
    let tokens = c
        .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"))?
        .query_map([], token_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let admins = c
        .prepare(&format!(
            "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY created_unix, serial_hex"
        ))?
        .query_map([], admin_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut clusters = c
        .prepare(&format!(
            "SELECT {}, token_id FROM clusters ORDER BY id",
            cluster_select()
        ))?
        .query_map([], |r| {
            Ok(ClusterExport {
                record: cluster_from_row(r)?,
                token_id: r.get(15)?,
                certificates: Vec::new(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let certificates = c
        .prepare(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY cluster_id, issued_unix, serial_hex"
        ))?
        .query_map([], cert_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    for cert in certificates {
        match clusters.binary_search_by(|x| x.record.id.as_str().cmp(cert.cluster_id.as_str())) {
            Ok(i) => clusters[i].certificates.push(cert),
            Err(_) => {
                return Err(StoreError::Corrupt(format!(
                    "certificate {} of cluster {} that does not exist",
                    cert.serial_hex, cert.cluster_id
                )));
            }
        }
    }
    let plans = plans::plans_in(c)?;
    let plan_events = plans::events_in(c, "", 0, u32::MAX)?;
    let audit = c
        .prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"))?
        .query_map([], audit_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        tokens,
        admins,
        clusters,
        plans,
        plan_events,
        audit,
    })
}

fn import(c: &Connection, s: &Snapshot) -> Result<(), StoreError> {
    for t in &s.tokens {
        insert_token_row(c, t)?;
    }
    for a in &s.admins {
        c.execute(
            &format!("INSERT INTO admins ({ADMIN_COLUMNS}) VALUES (?1,?2,?3,?4,?5)"),
            params![
                a.name,
                a.serial_hex,
                a.created_unix,
                a.not_after_unix,
                a.revoked_unix
            ],
        )?;
    }
    for x in &s.clusters {
        let r = &x.record;
        let release = r.state.release.as_ref();
        c.execute(
            "INSERT INTO clusters (id, name, labels_json, registered_unix, revoked_unix,
             agent_version, helm_version, inventory, cert_serial, cert_not_after_unix, token_id,
             proposed_name, proposed_labels_json, release_chart_version, release_status,
             release_revision)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
            params![
                r.id,
                r.name,
                labels_json(&r.labels),
                r.registered_unix,
                r.revoked_unix,
                r.state.agent_version,
                r.state.helm_version,
                r.state.inventory,
                r.cert_serial,
                r.cert_not_after_unix,
                x.token_id,
                r.proposed.as_ref().map(|p| p.name.as_str()),
                r.proposed.as_ref().map(|p| labels_json(&p.labels)),
                release.map(|s| s.chart_version.as_str()),
                release.map(|s| s.status.as_str()),
                release.map(|s| s.revision),
            ],
        )?;
        for cert in &x.certificates {
            c.execute(
                "INSERT INTO certificates (serial_hex, cluster_id, issued_unix, not_after_unix,
                 revoked_unix, first_session_unix) VALUES (?1,?2,?3,?4,?5,?6)",
                params![
                    cert.serial_hex,
                    cert.cluster_id,
                    cert.issued_unix,
                    cert.not_after_unix,
                    cert.revoked_unix,
                    cert.first_session_unix
                ],
            )?;
        }
    }
    for p in &s.plans {
        plans::store_plan(c, p)?;
    }
    plans::insert_events(c, None, &s.plan_events)?;
    let mut insert = c.prepare(
        "INSERT INTO audit (id, at_unix_ms, kind, cluster_id, peer, detail)
         VALUES (?1,?2,?3,?4,?5,?6)",
    )?;
    for a in &s.audit {
        insert.execute(params![
            a.id,
            a.at_unix_ms,
            a.kind,
            a.cluster_id,
            a.peer,
            a.detail
        ])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Moves everything committed into the main file and empties the write-ahead log, so the
    /// file alone holds the store: what a migration needs before it renames the file it wrote
    /// into place (a log left beside the old name would be lost).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.run(|c| {
            let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy != 0 {
                return Err(StoreError::Corrupt(
                    "the write-ahead log could not be checkpointed: the file is in use".into(),
                ));
            }
            Ok(())
        })
        .await
    }
}

/// A write lock on a store file, held by a connection of its own until dropped: what keeps a
/// coordinator that was not stopped from committing anything a migration's copy would miss
/// (its writes wait, then fail) while reads, the copy's included, go on.
pub struct WriteHold {
    conn: Connection,
}

impl SqliteStore {
    /// Takes the write lock of the store file at `path` (`BEGIN IMMEDIATE`), waiting up to the
    /// store's busy timeout for a write in progress; fails when a writer keeps it.
    pub fn hold_writes(path: &std::path::Path) -> Result<WriteHold, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(WriteHold { conn })
    }
}

impl Drop for WriteHold {
    fn drop(&mut self) {
        // Nothing was written: rolling back only lets the lock go.
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::token;
    use crate::{IdentityStore, Migrate};

    #[tokio::test]
    async fn a_held_store_refuses_writes_and_still_exports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open");
        store.insert_token(token(1)).await.expect("token");
        let hold = SqliteStore::hold_writes(&path).expect("hold");
        let mut other = token(1);
        other.id = "efgh".into();
        assert!(
            store.insert_token(other.clone()).await.is_err(),
            "a write waits for the lock, then fails"
        );
        let snapshot = store.export().await.expect("a read goes on");
        assert_eq!(snapshot.tokens.len(), 1);
        drop(hold);
        store
            .insert_token(other)
            .await
            .expect("writes again once let go");
    }
}
