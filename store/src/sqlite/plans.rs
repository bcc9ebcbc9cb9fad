//! Upgrade plans and their event log in SQLite.
//!
//! A plan row holds the document as the operator applied it and the rollout (the
//! `skoala_plan::Rollout` state machine) serialized as JSON: the orchestrator owns their
//! meaning, the store only keeps them durable. Events are append-only and feed `plan watch`,
//! `events` and the expected-duration history.

use rusqlite::{Connection, Row, params};

use crate::{PlanEventRecord, PlanRecord, StoreError, TASK_RESULT};

pub(super) fn put_plan(
    c: &mut Connection,
    now_ms: i64,
    p: &PlanRecord,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    if p.active {
        tx.execute(
            "UPDATE plans SET active = 0 WHERE name != ?1",
            params![p.name],
        )?;
    }
    tx.execute(
        "INSERT INTO plans (name, document, rollout, active, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(name) DO UPDATE SET document = ?2, rollout = ?3, active = ?4, updated_ms = ?6",
        params![
            p.name,
            p.document,
            p.rollout,
            p.active,
            p.created_ms,
            p.updated_ms
        ],
    )?;
    let last = insert_events(&tx, now_ms, events)?;
    tx.commit()?;
    Ok(last)
}

pub(super) fn plans(c: &mut Connection) -> Result<Vec<PlanRecord>, StoreError> {
    let mut st = c.prepare(
        "SELECT name, document, rollout, active, created_ms, updated_ms FROM plans ORDER BY created_ms, name",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PlanRecord {
            name: r.get(0)?,
            document: r.get(1)?,
            rollout: r.get(2)?,
            active: r.get(3)?,
            created_ms: r.get(4)?,
            updated_ms: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn insert_events(
    c: &Connection,
    now_ms: i64,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let mut last = 0;
    // Prepared once per batch, not per row: a fan-out to 10,000 clusters writes 10,000
    // events in one transaction, and parsing the statement for each row was about half of
    // it (BENCHMARKS.md).
    let mut insert = c.prepare_cached(
        "INSERT INTO plan_events (at_unix_ms, plan, kind, target, target_name, operation_id,
         step, state, message, duration_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
    )?;
    for e in events {
        insert.execute(params![
            now_ms,
            e.plan,
            e.kind,
            e.target,
            e.target_name,
            e.operation_id,
            e.step,
            e.state,
            e.message,
            e.duration_ms
        ])?;
        last = c.last_insert_rowid();
    }
    Ok(last)
}

pub(super) fn save_rollout(
    c: &mut Connection,
    now_ms: i64,
    name: &str,
    rollout: &str,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    let n = tx.execute(
        "UPDATE plans SET rollout = ?2, updated_ms = ?3 WHERE name = ?1",
        params![name, rollout, now_ms],
    )?;
    if n == 0 {
        return Err(StoreError::Corrupt(format!("no plan named {name:?}")));
    }
    let last = insert_events(&tx, now_ms, events)?;
    tx.commit()?;
    Ok(last)
}

pub(super) fn append_events(
    c: &mut Connection,
    now_ms: i64,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    let last = insert_events(&tx, now_ms, events)?;
    tx.commit()?;
    Ok(last)
}

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<PlanEventRecord> {
    Ok(PlanEventRecord {
        id: r.get(0)?,
        at_unix_ms: r.get(1)?,
        plan: r.get(2)?,
        kind: r.get(3)?,
        target: r.get(4)?,
        target_name: r.get(5)?,
        operation_id: r.get(6)?,
        step: r.get(7)?,
        state: r.get(8)?,
        message: r.get(9)?,
        duration_ms: r.get(10)?,
    })
}

pub(super) fn events(
    c: &mut Connection,
    plan: &str,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PlanEventRecord>, StoreError> {
    let mut st = c.prepare(
        "SELECT id, at_unix_ms, plan, kind, target, target_name, operation_id, step, state,
         message, duration_ms FROM plan_events
         WHERE id > ?1 AND (?2 = '' OR plan = ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows = st.query_map(params![after_id, plan, limit], event_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn mean_upgrade_ms(c: &mut Connection) -> Result<Option<i64>, StoreError> {
    let mean: Option<f64> = c.query_row(
        "SELECT AVG(duration_ms) FROM plan_events
         WHERE kind = ?1 AND state = 'succeeded' AND duration_ms > 0
         AND operation_id LIKE '%.upgrade-%'",
        params![TASK_RESULT],
        |r| r.get(0),
    )?;
    Ok(mean.map(|m| m.round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PlanStore;
    use crate::sqlite::SqliteStore;

    fn plan(name: &str, active: bool) -> PlanRecord {
        PlanRecord {
            name: name.into(),
            document: "doc".into(),
            rollout: "{}".into(),
            active,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[tokio::test]
    async fn one_active_plan_rollouts_and_events_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        store.put_plan(plan("a", true), vec![]).await.expect("a");
        let applied = PlanEventRecord {
            plan: "b".into(),
            kind: "plan.applied".into(),
            ..Default::default()
        };
        let first = store
            .put_plan(plan("b", true), vec![applied])
            .await
            .expect("b");
        assert!(first > 0, "the plan's first event is stored with it");
        let all = store.plans().await.expect("plans");
        assert_eq!(
            all.iter()
                .map(|p| (p.name.as_str(), p.active))
                .collect::<Vec<_>>(),
            vec![("a", false), ("b", true)]
        );
        let result = |op: &str, ms| PlanEventRecord {
            plan: "b".into(),
            kind: TASK_RESULT.into(),
            operation_id: op.into(),
            state: "succeeded".into(),
            duration_ms: ms,
            ..Default::default()
        };
        let last = store
            .save_rollout(
                "b".into(),
                "{\"x\":1}".into(),
                vec![
                    result("b.w1.upgrade-1", 1000),
                    result("b.control-plane.upgrade-1", 3000),
                    // A rollback is not an upgrade: it does not count towards the expected
                    // duration that windows are planned with.
                    result("b.w1.rollback-1", 60_000),
                ],
            )
            .await
            .expect("save");
        assert!(last > 0);
        assert!(
            store
                .save_rollout("nope".into(), "{}".into(), vec![])
                .await
                .is_err(),
            "an unknown plan is an error, not a silent no-op"
        );
        let events = store.plan_events("b".into(), 0, 10).await.expect("events");
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].kind, "plan.applied");
        assert!(
            store
                .plan_events("a".into(), 0, 10)
                .await
                .expect("a")
                .is_empty()
        );
        assert_eq!(store.mean_upgrade_ms().await.expect("mean"), Some(2000));
        drop(store);
        let again = SqliteStore::open(&dir.path().join("s.db")).expect("reopen");
        let b = again.plans().await.expect("plans").pop().expect("b");
        assert_eq!(b.rollout, "{\"x\":1}", "the rollout survives a restart");
    }

    #[tokio::test]
    async fn a_plan_is_stored_with_its_events_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).expect("open");
        // The event log refuses writes (a full disk, say), from another connection.
        let other = Connection::open(&path).expect("second connection");
        other
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON plan_events
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .expect("trigger");
        let applied = PlanEventRecord {
            plan: "a".into(),
            kind: "plan.applied".into(),
            ..Default::default()
        };
        let put = store.put_plan(plan("a", true), vec![applied]).await;
        assert!(put.is_err(), "{put:?}");
        assert!(
            store.plans().await.expect("plans").is_empty(),
            "no plan without its event"
        );
    }
}
