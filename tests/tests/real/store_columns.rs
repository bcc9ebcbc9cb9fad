//! `kubectl get upgradeplans` and `kubectl get fleetclusters` on a real API server, over
//! objects the kube store wrote as the coordinator's ServiceAccount: the CRDs' printer columns
//! (their JSONPaths evaluated by a real kube-apiserver) show a plan's phase, stage and counts
//! and a cluster's release version, status and progress in the plan, at a glance.

use std::sync::Arc;

use skoala_e2e::kstore;
use skoala_store::conformance::Factory;

use crate::crds::{cells, cluster_with_crds};
use crate::store_conformance::coordinators_stores;

/// The cell of `table` (as [`cells`] gives it) in the row named `name`, column `header`.
fn cell<'a>(table: &'a str, name: &str, header: &str) -> &'a str {
    cell_where(table, "NAME", name, header)
}

/// The cell of `table` (as [`cells`] gives it) in column `header` of the row whose `key`
/// column holds `value`.
pub(crate) fn cell_where<'a>(table: &'a str, key: &str, value: &str, header: &str) -> &'a str {
    let mut rows = table.lines().map(|l| l.split(" | ").collect::<Vec<_>>());
    let headers = rows.next().unwrap_or_default();
    let column = |h: &str| {
        headers
            .iter()
            .position(|x| *x == h)
            .unwrap_or_else(|| panic!("no column {h} in\n{table}"))
    };
    let (by, at) = (column(key), column(header));
    rows.find(|r| r.get(by) == Some(&value))
        .and_then(|r| r.get(at).copied())
        .unwrap_or_else(|| panic!("no row with {key} {value} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_the_progress_and_versions_the_store_wrote() -> anyhow::Result<()> {
    let cluster = Arc::new(cluster_with_crds("store-columns").await?);
    let stores = coordinators_stores(&cluster);
    let store = stores.fresh().await;
    kstore::a_rollout_awaiting_approval(&store).await?;
    let ns = store.namespace().to_string();
    let get = |kind: &'static str| {
        let (cluster, ns) = (&cluster, ns.clone());
        async move { anyhow::Ok(cells(&cluster.kubectl(&["-n", &ns, "get", kind]).await?)) }
    };

    let plan = kstore::SHOWN_PLAN;
    assert_eq!(
        get("upgradeplans").await?,
        format!(
            "NAME | VERSION | PHASE | STAGE | SUCCEEDED | FAILED | TOTAL | AGE\n\
             {plan} | 0.20.0 | awaitingApproval | 0 | 1 | 1 | 3 | <age>"
        )
    );

    let clusters = get("fleetclusters").await?;
    let row = |name: &str| {
        ["CLUSTER", "VERSION", "RELEASE", "PLAN", "PLAN-STATE"].map(|h| cell(&clusters, name, h))
    };
    assert_eq!(
        row("w1"),
        ["name-w1", "0.20.0", "deployed", plan, "succeeded"],
        "{clusters}"
    );
    assert_eq!(row("w2")[3..], [plan, "failed"], "{clusters}");
    assert_eq!(row("w3")[3..], [plan, "pending"], "{clusters}");
    Ok(())
}
