//! Versioned schema migrations for the SQLite store.
//!
//! The schema version lives in SQLite's `user_version` pragma. Migration `i` (0-based) takes the
//! schema from version `i` to `i + 1`; each runs in its own transaction with the version bump, so
//! a crash mid-migration leaves the previous version intact. Never edit a released migration:
//! append a new one.

use rusqlite::Connection;

use crate::StoreError;

/// The migrations, in order. Index + 1 is the schema version after applying it.
pub const MIGRATIONS: &[&str] = &[
    // 1: tokens, clusters, certificates, revocations, audit.
    r#"
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        created_unix  INTEGER NOT NULL,
        expires_unix  INTEGER NOT NULL,
        uses_allowed  INTEGER NOT NULL,
        uses_left     INTEGER NOT NULL,
        revoked       INTEGER NOT NULL DEFAULT 0,
        description   TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE clusters (
        id                  TEXT PRIMARY KEY,
        name                TEXT NOT NULL,
        labels_json         TEXT NOT NULL DEFAULT '{}',
        registered_unix     INTEGER NOT NULL,
        revoked_unix        INTEGER,
        agent_version       TEXT NOT NULL DEFAULT '',
        helm_version        TEXT NOT NULL DEFAULT '',
        inventory           BLOB NOT NULL DEFAULT x'',
        cert_serial         TEXT NOT NULL DEFAULT '',
        cert_not_after_unix INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX clusters_by_name ON clusters(name);
    CREATE TABLE certificates (
        serial_hex     TEXT PRIMARY KEY,
        cluster_id     TEXT NOT NULL REFERENCES clusters(id),
        issued_unix    INTEGER NOT NULL,
        not_after_unix INTEGER NOT NULL
    );
    CREATE INDEX certificates_by_cluster ON certificates(cluster_id);
    CREATE TABLE revocations (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_kind TEXT NOT NULL,
        subject_id   TEXT NOT NULL,
        revoked_unix INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at_unix_ms INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        cluster_id TEXT NOT NULL DEFAULT '',
        peer       TEXT NOT NULL DEFAULT '',
        detail     TEXT NOT NULL DEFAULT ''
    );
    "#,
    // 2: which token each cluster joined with, so the same cluster may retry with it.
    r#"
    ALTER TABLE clusters ADD COLUMN token_id TEXT NOT NULL DEFAULT '';
    "#,
    // 3: upgrade plans (the applied document and the serialized rollout) and their event log.
    r#"
    CREATE TABLE plans (
        name        TEXT PRIMARY KEY,
        document    TEXT NOT NULL,
        rollout     TEXT NOT NULL,
        active      INTEGER NOT NULL DEFAULT 0,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE TABLE plan_events (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at_unix_ms   INTEGER NOT NULL,
        plan         TEXT NOT NULL,
        kind         TEXT NOT NULL,
        target       TEXT NOT NULL DEFAULT '',
        target_name  TEXT NOT NULL DEFAULT '',
        operation_id TEXT NOT NULL DEFAULT '',
        step         TEXT NOT NULL DEFAULT '',
        state        TEXT NOT NULL DEFAULT '',
        message      TEXT NOT NULL DEFAULT '',
        duration_ms  INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX plan_events_by_plan ON plan_events(plan, id);
    "#,
    // 4: certificates revoked by a re-registration (checked at Session), and whether a session
    // ever used one (only an unused one may be replaced by a same-token retry).
    r#"
    ALTER TABLE certificates ADD COLUMN revoked_unix INTEGER;
    ALTER TABLE certificates ADD COLUMN first_session_unix INTEGER;
    "#,
    // 5: admin identities, one row per admin certificate (checked on every admin call).
    r#"
    CREATE TABLE admins (
        serial_hex     TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        created_unix   INTEGER NOT NULL,
        not_after_unix INTEGER NOT NULL,
        revoked_unix   INTEGER
    );
    CREATE INDEX admins_by_name ON admins(name);
    "#,
    // 6: the name and labels an agent asked for after it registered, which only an operator
    // applies (NULL: none).
    r#"
    ALTER TABLE clusters ADD COLUMN proposed_name TEXT;
    ALTER TABLE clusters ADD COLUMN proposed_labels_json TEXT;
    "#,
    // 7: the retention sweep deletes by time (`Retention::prune`). Without an index on the column
    // it compares, each hourly sweep reads every row of the audit log and the plan events
    // (millions at 10,000 clusters) while it holds the store's write lock, which every
    // registration, renewal and plan round waits on. With one, it reads only what it deletes.
    r#"
    CREATE INDEX audit_by_time ON audit(at_unix_ms);
    CREATE INDEX plan_events_by_time ON plan_events(at_unix_ms);
    CREATE INDEX certificates_by_expiry ON certificates(not_after_unix);
    CREATE INDEX admins_by_expiry ON admins(not_after_unix);
    "#,
    // 8: a rollout in parts (`plans.head` and one `rollout_targets` row per working cluster),
    // so a round writes the clusters it changed rather than the whole rollout. A stored
    // rollout (`{..., "workers": [[id, progress], ...]}`) is split the way
    // `skoala_plan::Rollout::split` splits it: entry `i` gets order `i`, and the head is the
    // rest with `next_order` = the number of workers.
    r#"
    CREATE TABLE rollout_targets (
        plan       TEXT NOT NULL REFERENCES plans(name),
        cluster_id TEXT NOT NULL,
        ord        INTEGER NOT NULL,
        phase      TEXT NOT NULL,
        progress   TEXT NOT NULL,
        PRIMARY KEY (plan, cluster_id)
    ) WITHOUT ROWID;
    INSERT INTO rollout_targets (plan, cluster_id, ord, phase, progress)
        SELECT p.name, json_extract(w.value, '$[0]'), w.key,
               json_extract(w.value, '$[1].state.state'), json(json_extract(w.value, '$[1]'))
        FROM (SELECT name, rollout FROM plans WHERE json_valid(rollout)) p,
             json_each(p.rollout, '$.workers') w;
    UPDATE plans SET rollout = json_set(json_remove(rollout, '$.workers'),
                                        '$.next_order', json_array_length(rollout, '$.workers'))
        WHERE json_valid(rollout) AND json_type(rollout, '$.workers') = 'array';
    ALTER TABLE plans RENAME COLUMN rollout TO head;
    "#,
    // 9: the fleet's release in each cluster as its inventory last showed it
    // (`ClusterState::release`); a cluster has one iff `release_status` is not NULL. Clusters
    // stored before have none until their agent reports again.
    r#"
    ALTER TABLE clusters ADD COLUMN release_chart_version TEXT;
    ALTER TABLE clusters ADD COLUMN release_status TEXT;
    ALTER TABLE clusters ADD COLUMN release_revision INTEGER;
    "#,
];

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings `conn` to the latest schema. Refuses a store written by a newer coordinator rather
/// than guessing at its meaning.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > latest() {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let mut conn = Connection::open(&path).expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO clusters (id, name, registered_unix) VALUES ('c1', 'one', 1)",
            [],
        )
        .expect("v1 row");
        migrate(&mut conn).expect("migrate");
        let (name, token): (String, String) = conn
            .query_row(
                "SELECT name, token_id FROM clusters WHERE id = 'c1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("row survives");
        assert_eq!((name.as_str(), token.as_str()), ("one", ""));
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, latest());
        migrate(&mut conn).expect("migrating twice is a no-op");
    }

    #[test]
    fn a_whole_stored_rollout_is_split_into_its_head_and_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open(dir.path().join("store.db")).expect("open");
        for (i, sql) in MIGRATIONS[..7].iter().enumerate() {
            conn.execute_batch(sql).expect("schema");
            conn.pragma_update(None, "user_version", i as i64 + 1)
                .expect("version");
        }
        let running = r#"{"state":{"state":"running","operation_id":"p.w2.upgrade-1","started":"2026-01-01T00:00:00Z"},"attempts":1,"stage":0}"#;
        let rollout = format!(
            r#"{{"plan":"p","phase":{{"phase":"workers"}},"workers":[["w1",{{"state":{{"state":"pending"}},"attempts":0,"stage":null}}],["w2",{running}]],"enrolled_once":true}}"#
        );
        conn.execute(
            "INSERT INTO plans (name, document, rollout, active, created_ms, updated_ms)
             VALUES ('p', 'doc', ?1, 1, 1, 1), ('empty', 'doc', '', 0, 1, 1)",
            [&rollout],
        )
        .expect("v7 plans");
        migrate(&mut conn).expect("migrate");

        let head: serde_json::Value = conn
            .query_row("SELECT head FROM plans WHERE name = 'p'", [], |r| {
                r.get::<_, String>(0)
            })
            .map(|h| serde_json::from_str(&h).expect("json"))
            .expect("head");
        assert_eq!(
            head,
            serde_json::json!({"plan": "p", "phase": {"phase": "workers"},
                "enrolled_once": true, "next_order": 2})
        );
        let mut st = conn
            .prepare("SELECT cluster_id, ord, phase, progress FROM rollout_targets ORDER BY ord")
            .expect("select");
        let targets: Vec<(String, u32, String, serde_json::Value)> = st
            .query_map([], |r| {
                let progress: String = r.get(3)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    serde_json::from_str(&progress).expect("json"),
                ))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            targets,
            [
                (
                    "w1".to_string(),
                    0,
                    "pending".to_string(),
                    serde_json::json!({"state": {"state": "pending"}, "attempts": 0, "stage": null})
                ),
                (
                    "w2".to_string(),
                    1,
                    "running".to_string(),
                    serde_json::from_str(running).expect("json")
                ),
            ]
        );
    }
}
