//! What the retention sweep ([`Retention::prune`](crate::Retention::prune)) costs on a large store, and the indexes that
//! keep it to the rows it deletes (migration 7).
//!
//! `the_sweep_reads_only_what_it_deletes` runs with every `cargo test` on a small store. It is
//! also the benchmark in BENCHMARKS.md (*The retention sweep*), run by hand on a store of
//! `SKOALA_SWEEP_ROWS` audit rows; the command is there.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use skoala_support::time::now_ms;

use super::SqliteStore;
use crate::{Cutoffs, Retention};

const DAY_MS: i64 = 86_400_000;

/// The indexes migration 7 adds, one per time column the sweep deletes by.
const INDEXES: &[(&str, &str)] = &[
    ("audit", "audit_by_time"),
    ("plan_events", "plan_events_by_time"),
    ("certificates", "certificates_by_expiry"),
    ("admins", "admins_by_expiry"),
];

/// Audit rows in the store (`SKOALA_SWEEP_ROWS`, default small enough for every test run).
fn rows() -> usize {
    std::env::var("SKOALA_SWEEP_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// A store with `rows` audit entries spread evenly over the last 90 days and one hour, so a
/// sweep with a 90-day cutoff deletes one hour of them: the steady state of the hourly sweep.
/// Returns the store, the sweep's cutoffs, how many rows are older than them and how long
/// inserting took.
fn store_with_audit(
    path: &Path,
    rows: usize,
    indexed: bool,
) -> (SqliteStore, Cutoffs, usize, Duration) {
    let store = SqliteStore::open(path).expect("open");
    let mut c = Connection::open(path).expect("a second connection");
    if !indexed {
        for (_, index) in INDEXES {
            c.execute_batch(&format!("DROP INDEX IF EXISTS {index}"))
                .expect("drop index");
        }
    }
    let now = now_ms();
    let span = 90 * DAY_MS + DAY_MS / 24;
    let (start, cutoff) = (now - span, now - 90 * DAY_MS);
    let started = Instant::now();
    let tx = c.transaction().expect("tx");
    let mut old = 0;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO audit (at_unix_ms, kind, cluster_id, peer, detail) VALUES (?1,?2,?3,?4,?5)",
            )
            .expect("prepare");
        for i in 0..rows {
            let at = start + (span as i128 * i as i128 / rows as i128) as i64;
            old += usize::from(at < cutoff);
            insert
                .execute(params![
                    at,
                    "certificate.renewed",
                    format!("cluster-{:05}", i % 10_000),
                    "10.0.0.1:43512",
                    format!("serial {i:032x} until {}", at / 1000 + 86_400),
                ])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    let cutoffs = Cutoffs {
        audit_before_ms: cutoff,
        events_before_ms: cutoff,
        certificates_expired_before_unix: now / 1000 - 7 * 86_400,
        admins_expired_before_unix: now / 1000 - 7 * 86_400,
    };
    (store, cutoffs, old, started.elapsed())
}

/// How SQLite runs the sweep's delete on `table`.
fn plan_of_delete(path: &Path, table: &str) -> String {
    let sql = match table {
        "audit" | "plan_events" => format!("DELETE FROM {table} WHERE at_unix_ms < 1"),
        _ => format!("DELETE FROM {table} WHERE not_after_unix < 1"),
    };
    let c = Connection::open(path).expect("open");
    let mut st = c
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("explain");
    let rows = st
        .query_map([], |r| r.get::<_, String>(3))
        .expect("query plan");
    rows.collect::<Result<Vec<_>, _>>()
        .expect("plan rows")
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_sweep_reads_only_what_it_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = rows();
    let mut figures = Vec::new();
    for indexed in [false, true] {
        let path = dir.path().join(format!("indexed-{indexed}.db"));
        let (store, cutoffs, old, insert) = store_with_audit(&path, n, indexed);
        let wal = path.with_extension("db-wal");
        let size_mib = [&path, &wal]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>() as f64
            / (1024.0 * 1024.0);
        let started = Instant::now();
        let pruned = store.prune(cutoffs).await.expect("prune");
        let sweep = started.elapsed();
        assert_eq!(pruned.audit, old, "the sweep deletes exactly the old rows");
        assert!(
            old > 0 && old < n / 1000,
            "one hour of 90 days: {old} of {n}"
        );
        let started = Instant::now();
        let again = store.prune(cutoffs).await.expect("prune again");
        let idle = started.elapsed();
        assert_eq!(again.audit, 0);
        figures.push(format!(
            "indexes {}: insert {n} rows {insert:.2?} ({size_mib:.0} MiB with the WAL), \
             sweep deleting {old} {sweep:.2?}, sweep deleting nothing {idle:.2?}",
            if indexed { "on " } else { "off" },
        ));
        if indexed {
            for (table, index) in INDEXES {
                let plan = plan_of_delete(&path, table);
                assert!(
                    plan.contains(&format!("INDEX {index}")),
                    "the sweep's delete on {table} scans the table: {plan}"
                );
            }
        }
    }
    // The figures for BENCHMARKS.md (`-- --nocapture`).
    for line in figures {
        println!("sweep_cost: {line}");
    }
}
