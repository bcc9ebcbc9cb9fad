//! Upgrade plans and their event log in SQLite.
//!
//! A plan row holds the document as the operator applied it and the head of its rollout (the
//! `skoala_plan::Rollout` state machine without its workers) as JSON; each working cluster's
//! entry is a row of `rollout_targets`. The orchestrator owns their meaning, the store only
//! keeps them durable: it never parses them.
//!
//! Why parts rather than the joined rollout in one column, as the kube store keeps them too:
//! joining is `Rollout::join`'s job (order, duplicates, an enrolment a crash cut short), and
//! the store does not know the plan crate. Keeping the joined JSON would mean a second join
//! written against the rollout's JSON here, which drifts from the first; and a round that
//! changes one cluster would still rewrite (and re-parse) the whole rollout, about 150 bytes
//! per cluster. So [`plans`] returns the parts and the orchestrator joins them.
//!
//! Events are append-only and feed `plan watch`, `events` and the expected-duration history.

use rusqlite::{Connection, Row, params};

use skoala_plan::TargetPhase;

use crate::{
    PlanEventRecord, PlanRecord, RolloutRecord, RolloutWrite, StoreError, TASK_RESULT, TargetRecord,
};

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
        "INSERT INTO plans (name, document, head, active, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(name) DO UPDATE SET document = ?2, head = ?3, active = ?4, updated_ms = ?6",
        params![
            p.name,
            p.document,
            p.rollout.head,
            p.active,
            p.created_ms,
            p.updated_ms
        ],
    )?;
    // A replaced plan's rollout is the record's, whole.
    tx.execute(
        "DELETE FROM rollout_targets WHERE plan = ?1",
        params![p.name],
    )?;
    put_targets(&tx, &p.name, &p.rollout.targets)?;
    let last = insert_events(&tx, now_ms, events)?;
    tx.commit()?;
    Ok(last)
}

pub(super) fn plans(c: &mut Connection) -> Result<Vec<PlanRecord>, StoreError> {
    let mut st = c.prepare(
        "SELECT name, document, head, active, created_ms, updated_ms FROM plans ORDER BY created_ms, name",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PlanRecord {
            name: r.get(0)?,
            document: r.get(1)?,
            rollout: RolloutRecord {
                head: r.get(2)?,
                targets: Vec::new(),
            },
            active: r.get(3)?,
            created_ms: r.get(4)?,
            updated_ms: r.get(5)?,
        })
    })?;
    let mut plans = rows.collect::<Result<Vec<_>, _>>()?;
    let mut st = c.prepare("SELECT plan, cluster_id, ord, phase, progress FROM rollout_targets")?;
    let mut rows = st.query([])?;
    let mut by_plan: std::collections::HashMap<String, Vec<TargetRecord>> = Default::default();
    while let Some(r) = rows.next()? {
        let plan: String = r.get(0)?;
        let phase: String = r.get(3)?;
        let phase = TargetPhase::parse(&phase).ok_or_else(|| {
            StoreError::Corrupt(format!("plan {plan:?}: a target in phase {phase:?}"))
        })?;
        by_plan.entry(plan).or_default().push(TargetRecord {
            cluster_id: r.get(1)?,
            order: r.get(2)?,
            phase,
            progress: r.get(4)?,
        });
    }
    for p in &mut plans {
        p.rollout.targets = by_plan.remove(&p.name).unwrap_or_default();
    }
    Ok(plans)
}

/// Creates or replaces `targets` of `plan`, leaving its other targets as they are.
fn put_targets(c: &Connection, plan: &str, targets: &[TargetRecord]) -> Result<(), StoreError> {
    let mut put = c.prepare_cached(
        "INSERT INTO rollout_targets (plan, cluster_id, ord, phase, progress)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(plan, cluster_id) DO UPDATE SET ord = ?3, phase = ?4, progress = ?5",
    )?;
    for t in targets {
        put.execute(params![
            plan,
            t.cluster_id,
            t.order,
            t.phase.as_str(),
            t.progress
        ])?;
    }
    Ok(())
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
    w: &RolloutWrite,
) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    let n = match &w.head {
        Some(head) => tx.execute(
            "UPDATE plans SET head = ?2, updated_ms = ?3 WHERE name = ?1",
            params![w.plan, head, now_ms],
        )?,
        None => tx.execute(
            "UPDATE plans SET updated_ms = ?2 WHERE name = ?1",
            params![w.plan, now_ms],
        )?,
    };
    if n == 0 {
        return Err(StoreError::Corrupt(format!("no plan named {:?}", w.plan)));
    }
    put_targets(&tx, &w.plan, &w.targets)?;
    let last = insert_events(&tx, now_ms, &w.events)?;
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

    fn target(id: &str, order: u32, progress: &str) -> TargetRecord {
        TargetRecord {
            cluster_id: id.into(),
            order,
            phase: TargetPhase::Pending,
            progress: progress.into(),
        }
    }

    fn write(plan: &str, head: Option<&str>, targets: Vec<TargetRecord>) -> RolloutWrite {
        RolloutWrite {
            plan: plan.into(),
            head: head.map(Into::into),
            targets,
            events: Vec::new(),
        }
    }

    fn plan(name: &str, active: bool) -> PlanRecord {
        PlanRecord {
            name: name.into(),
            document: "doc".into(),
            rollout: RolloutRecord {
                head: "{}".into(),
                targets: vec![target("w1", 0, "{}")],
            },
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
            .save_rollout(RolloutWrite {
                events: vec![
                    result("b.w1.upgrade-1", 1000),
                    result("b.control-plane.upgrade-1", 3000),
                    // A rollback is not an upgrade: it does not count towards the expected
                    // duration that windows are planned with.
                    result("b.w1.rollback-1", 60_000),
                ],
                ..write("b", Some("{\"x\":1}"), vec![])
            })
            .await
            .expect("save");
        assert!(last > 0);
        assert!(
            store
                .save_rollout(write("nope", Some("{}"), vec![]))
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
        assert_eq!(b.rollout.head, "{\"x\":1}", "the head survives a restart");
        assert_eq!(b.rollout.targets, [target("w1", 0, "{}")]);
    }

    #[tokio::test]
    async fn a_write_changes_the_targets_it_names_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        let mut p = plan("p", true);
        p.rollout.targets = vec![target("w1", 0, "1"), target("w2", 1, "2")];
        store.put_plan(p, vec![]).await.expect("plan");

        let mut w2 = target("w2", 1, "2 running");
        w2.phase = TargetPhase::Running;
        let added = target("w3", 2, "3");
        store
            .save_rollout(write("p", None, vec![w2.clone(), added.clone()]))
            .await
            .expect("targets");
        let stored = store.plans().await.expect("plans").pop().expect("p");
        assert_eq!(
            stored.rollout.head, "{}",
            "no head given: the stored one stays"
        );
        let mut targets = stored.rollout.targets;
        targets.sort_by_key(|t| t.order);
        assert_eq!(targets, [target("w1", 0, "1"), w2, added]);

        store
            .save_rollout(write("p", Some("{\"h\":2}"), vec![]))
            .await
            .expect("head");
        let stored = store.plans().await.expect("plans").pop().expect("p");
        assert_eq!(stored.rollout.head, "{\"h\":2}");
        assert_eq!(
            stored.rollout.targets.len(),
            3,
            "a head alone keeps every target"
        );
    }

    #[tokio::test]
    async fn a_refused_write_stores_none_of_its_parts_and_keeps_the_earlier_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).expect("open");
        store.put_plan(plan("p", true), vec![]).await.expect("plan");
        // A round's head is stored; then the disk refuses its targets.
        store
            .save_rollout(write("p", Some("{\"h\":1}"), vec![]))
            .await
            .expect("head");
        let other = Connection::open(&path).expect("second connection");
        other
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON rollout_targets
                 WHEN NEW.cluster_id = 'w3'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .expect("trigger");
        let refused = store
            .save_rollout(RolloutWrite {
                events: vec![PlanEventRecord {
                    plan: "p".into(),
                    kind: "target".into(),
                    ..Default::default()
                }],
                ..write(
                    "p",
                    Some("{\"h\":2}"),
                    vec![target("w2", 1, "2"), target("w3", 2, "3")],
                )
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let stored = store.plans().await.expect("plans").pop().expect("p");
        assert_eq!(
            (stored.rollout.head.as_str(), stored.rollout.targets),
            ("{\"h\":1}", vec![target("w1", 0, "{}")]),
            "what the earlier writes stored, none of the refused one"
        );
        assert!(
            store
                .plan_events("p".into(), 0, 10)
                .await
                .expect("events")
                .is_empty(),
            "nor its events"
        );
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
