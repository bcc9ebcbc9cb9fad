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
    // A replaced plan's rollout is the record's, whole.
    tx.execute(
        "DELETE FROM rollout_targets WHERE plan = ?1",
        params![p.name],
    )?;
    store_plan(&tx, p)?;
    let last = insert_events(&tx, Some(now_ms), events)?;
    tx.commit()?;
    Ok(last)
}

pub(super) fn plans(c: &mut Connection) -> Result<Vec<PlanRecord>, StoreError> {
    plans_in(c)
}

/// Every plan with its targets, read in the caller's transaction (or none).
pub(super) fn plans_in(c: &Connection) -> Result<Vec<PlanRecord>, StoreError> {
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

/// Creates plan `p` with its targets, or replaces its document, head, activity and targets
/// (it keeps when it was created): `put_plan`'s write, and a migration's import of each plan.
pub(super) fn store_plan(c: &Connection, p: &PlanRecord) -> Result<(), StoreError> {
    c.execute(
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
    put_targets(c, &p.name, &p.rollout.targets)
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

/// Appends `events`, stamped `now_ms` with new ids, or with `None` (a migration's import) as
/// they are, ids and times included; returns the last id.
pub(super) fn insert_events(
    c: &Connection,
    now_ms: Option<i64>,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let mut last = 0;
    // Prepared once per batch, not per row: a fan-out to 10,000 clusters writes 10,000
    // events in one transaction, and parsing the statement for each row was about half of
    // it (BENCHMARKS.md).
    let mut insert = c.prepare_cached(
        "INSERT INTO plan_events (id, at_unix_ms, plan, kind, target, target_name,
         operation_id, step, state, message, duration_ms)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
    )?;
    for e in events {
        // A NULL id is the next of the sequence.
        let id = now_ms.is_none().then_some(e.id);
        insert.execute(params![
            id,
            now_ms.unwrap_or(e.at_unix_ms),
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
    let last = insert_events(&tx, Some(now_ms), &w.events)?;
    tx.commit()?;
    Ok(last)
}

pub(super) fn append_events(
    c: &mut Connection,
    now_ms: i64,
    events: &[PlanEventRecord],
) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    let last = insert_events(&tx, Some(now_ms), events)?;
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
    events_in(c, plan, after_id, limit)
}

/// [`events`], read in the caller's transaction (or none).
pub(super) fn events_in(
    c: &Connection,
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
