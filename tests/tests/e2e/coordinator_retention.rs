//! Issue 14, finding 8: nothing was ever deleted. A real coordinator with short retention
//! (`--retain-audit`, `--retention-interval`): old audit entries go, recent ones stay, and the
//! sweep says what it deleted. (The other kinds — plan events, certificate records, relayed
//! charts, values backups — are deleted by the same sweep; their rules are unit-tested next to
//! the code: `store::sqlite`, `relay`, `backups`.)

use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions};
use skoala_e2e::wait;

/// The audit entry of the token with `id` (`token.created` names it), if still there.
async fn created(coord: &Coordinator, id: &str) -> anyhow::Result<Option<Value>> {
    let entries = coord.ctl().audit_of("token.created").await?;
    Ok(entries
        .into_iter()
        .find(|e| e["detail"].as_str().is_some_and(|d| d.contains(id))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_audit_entries_go_and_recent_ones_stay() -> anyhow::Result<()> {
    let coord = Coordinator::start_with(CoordinatorOptions {
        args: ["--retain-audit", "4s", "--retention-interval", "1s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await?;
    let ctl = coord.ctl();
    let old = ctl.token(1, "1h").await?;
    let old_id = old.split('.').next().unwrap_or_default().to_string();
    assert!(created(&coord, &old_id).await?.is_some(), "written");

    wait::until(
        "the old audit entry deleted by the sweep",
        Duration::from_secs(60),
        || async { created(&coord, &old_id).await.ok()?.is_none().then_some(()) },
    )
    .await?;

    // A fresh one is kept: the sweep that just ran, and the next, leave it alone.
    let new = ctl.token(1, "1h").await?;
    let new_id = new.split('.').next().unwrap_or_default().to_string();
    assert!(
        created(&coord, &new_id).await?.is_some(),
        "a recent entry stays"
    );
    assert!(coord.log().contains("retention sweep"), "{}", coord.log());
    Ok(())
}
