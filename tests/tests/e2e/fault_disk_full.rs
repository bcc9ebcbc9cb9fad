//! The coordinator's disk fills in the middle of a plan (its data dir is a small tmpfs that the
//! test fills). Nothing may be lost or done twice: the coordinator stays up and answers, a
//! cluster whose values backup cannot be stored is not upgraded (DESIGN.md invariant 1), and
//! once space returns the plan carries on. At the end every release was upgraded at most once
//! (helm history), each target's state matches its cluster, every stored backup reads back,
//! and the store survives a restart with the same plan.

use std::io::Write;
use std::time::Duration;

use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView, read_backups};
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes zeros into `path` until the file system is full.
fn fill(path: &std::path::Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let block = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_plan_loses_nothing_and_the_plan_goes_on_when_space_returns()
-> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        data_dir_bytes: Some(64 * 1024 * 1024),
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "full",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1, maxFailures: 3}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    wait::until("the canary upgraded", PLAN_TIMEOUT, || async {
        let p = pf.plan("full").await.ok()?;
        let t = p["targets"].as_array()?;
        (t.iter().filter(|t| t["state"] == "succeeded").count() >= 2).then_some(())
    })
    .await?;

    let filler = pf.fleet.coordinator.data_dir().join("filler");
    let written = fill(&filler)?;
    assert!(written > 0, "the data dir had room before the fill");
    wait::until(
        "the coordinator notices its full disk",
        PLAN_TIMEOUT,
        || async {
            let log = pf.fleet.coordinator.log();
            (log.contains("No space left on device") || log.contains("disk is full")).then_some(())
        },
    )
    .await?;
    assert!(pf.fleet.coordinator.is_running(), "a full disk is no crash");
    pf.plan("full").await?;

    std::fs::remove_file(&filler)?;
    let plan = wait::until("the plan settles", PLAN_TIMEOUT, || async {
        let p = pf.plan("full").await.ok()?;
        let t = p["targets"].as_array()?;
        let busy = t
            .iter()
            .any(|t| t["state"] == "running" || t["state"] == "pending");
        let phase = p["phase"].as_str()?;
        (!busy || phase == "succeeded" || phase == "paused").then_some(p)
    })
    .await?;

    pf.assert_consistent_with_clusters(&plan).await?;
    let read = read_backups(&pf.fleet.coordinator.data_dir())?;
    assert!(read >= 1, "the canary's backup is stored");

    let before = plan["phase"].clone();
    pf.fleet.coordinator.kill();
    pf.fleet.coordinator.restart().await?;
    let after = pf.plan("full").await?;
    assert_eq!(after["phase"], before, "the store kept the plan: {after:#}");
    Ok(())
}
