//! `skoala-coordinator migrate` (design §6) between a data dir and a namespace of an emulated
//! control-plane cluster, both ways: the stopped coordinator's fleet moves with its PKI, so a
//! coordinator started on the other store at the same address takes the same agents back
//! without any of them joining again, shows the old plans, events and audit with their ids,
//! and runs a new plan to the end. A migration into a store that holds a fleet is refused and
//! changes nothing; one that fails part-way leaves a namespace no coordinator serves, and the
//! refusal's commands empty it for the next try.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::Value;
use skoala_e2e::fleet::coordinator::migrate;
use skoala_e2e::fleet::plans::{
    KUBE_STORE_NAMESPACE, PlanFleet, PlanFleetOptions, PlanView, read_backups,
};
use skoala_e2e::sim::kubectl;
use skoala_e2e::{kstore, kubeapi};
use skoala_kubestore::crd::{FleetCluster, Kind};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);
const NS: &str = KUBE_STORE_NAMESPACE;

/// What operators see of a fleet's history: each plan's name and phase, every event's id and
/// kind, every audit entry's id and kind, and the clusters by id.
#[derive(Debug, PartialEq)]
struct Seen {
    plans: Vec<(String, String)>,
    events: Vec<(i64, String)>,
    audit: Vec<(i64, String)>,
    clusters: BTreeSet<String>,
    /// Each join token's id and uses left.
    tokens: Vec<(String, u64)>,
}

async fn seen(pf: &PlanFleet) -> anyhow::Result<Seen> {
    let ctl = pf.ctl();
    let plans = ctl.json(&["plan", "list"]).await?;
    let plans = plans
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (text(&p["name"]), text(&p["phase"])))
        .collect();
    let mut events = Vec::new();
    for plan in ["first", "second", "third"] {
        let out = ctl.ok(&["events", "--plan", plan, "-o", "json"]).await?;
        for line in out.lines() {
            let e: Value = serde_json::from_str(line)?;
            events.push((e["id"].as_i64().unwrap_or_default(), text(&e["kind"])));
        }
    }
    events.sort();
    let audit = ctl
        .audit()
        .await?
        .iter()
        .map(|a| (a["id"].as_i64().unwrap_or_default(), text(&a["kind"])))
        .collect();
    let clusters = ctl
        .clusters()
        .await?
        .iter()
        .map(|c| text(&c["id"]))
        .collect();
    let tokens = ctl.json(&["token", "list"]).await?;
    let tokens = tokens
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (text(&t["id"]), t["usesLeft"].as_u64().unwrap_or(u64::MAX)))
        .collect();
    Ok(Seen {
        plans,
        events,
        audit,
        clusters,
        tokens,
    })
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// What was seen before a move is still there after it, with the same ids: the plans as they
/// were, every event and audit entry (more may follow), the same clusters.
fn kept(before: &Seen, after: &Seen) {
    assert_eq!(after.plans, before.plans, "the plans");
    assert_eq!(after.clusters, before.clusters, "the clusters");
    assert_eq!(after.tokens, before.tokens, "the tokens' uses left");
    for (what, old, new) in [
        ("events", &before.events, &after.events),
        ("audit", &before.audit, &after.audit),
    ] {
        assert!(
            new.len() >= old.len() && new[..old.len()] == old[..],
            "{what} keep their ids: before {old:?}, after {new:?}"
        );
    }
}

async fn joins(pf: &PlanFleet) -> anyhow::Result<usize> {
    Ok(pf.ctl().audit_of("cluster.registered").await?.len())
}

async fn run_plan(pf: &PlanFleet, name: &str, version: &str) -> anyhow::Result<()> {
    let yaml = pf.plan_yaml(name, version, "strategy: {canary: 0, maxConcurrency: 100%}");
    pf.apply_when_ready(&yaml, PLAN_TIMEOUT).await?;
    let plan = pf.wait_phase(name, &["succeeded"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().into_iter().flatten() {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_to_the_kube_store_and_back_and_no_agent_joins_again() -> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    let kubeconfig = pf.control_plane.kubeconfig_path().to_path_buf();
    let client = kubeapi::client(&kubeconfig).await?;
    kstore::install_crds(&client).await?;
    kstore::create_namespace(&client, NS).await?;
    run_plan(&pf, "first", "0.19.1").await?;
    pf.fleet.wait_connected(2).await?;
    let on_sqlite = seen(&pf).await?;
    let joined = joins(&pf).await?;
    assert_eq!(joined, 2, "each agent joined once");
    assert_eq!(
        on_sqlite.plans,
        [("first".to_string(), "succeeded".to_string())]
    );
    assert_eq!(
        on_sqlite.clusters.len(),
        3,
        "two workers and the control plane"
    );
    assert!(
        on_sqlite.events.len() > 2 && on_sqlite.audit.len() > 2 && !on_sqlite.tokens.is_empty(),
        "the plan left events, the joins audit entries and a token: {on_sqlite:?}"
    );
    let backups = read_backups(&pf.fleet.coordinator.data_dir())?;
    assert!(
        backups >= 2,
        "each upgrade saved the values first: {backups}"
    );

    // --- SQLite -> kube ------------------------------------------------------------------
    pf.fleet.coordinator.terminate().await?;
    let data = pf.fleet.coordinator.data_dir();
    let sqlite = format!("sqlite:{}", data.display());
    let kube = format!("kube:{NS}");

    // A first try fails part-way (the API server refuses every log segment, written after
    // the clusters and plans): no coordinator serves what it left, and the refusal says how
    // to empty the namespace; emptied so, the next try goes through.
    let segments = format!("/namespaces/{NS}/fleetlogs");
    pf.control_plane
        .faults()
        .fail_next(Some("PATCH"), &segments, 500, 10_000);
    let failed = migrate(&sqlite, &kube, &kubeconfig, &[]).await?;
    pf.control_plane.faults().clear();
    assert!(
        !failed.status.success(),
        "the migration failed: {}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let written: Api<FleetCluster> = Kind::FleetCluster.api(client.clone(), NS);
    assert!(
        !written.list(&ListParams::default()).await?.items.is_empty(),
        "the failed try left clusters behind"
    );
    let refused = pf.fleet.coordinator.serve_store(Some(NS.into())).await;
    let log = pf.fleet.coordinator.log();
    assert!(
        refused.is_err() && log.contains("began and never committed"),
        "a coordinator on the half-written namespace: {refused:?}\n{log}"
    );
    // The commands the refusal gives, run as given.
    let selector = "fleet.skoala.io/kind in (join-token,admin,backup)";
    let emptying: [&[&str]; 3] = [
        &["delete", "upgradeplans,fleetclusters,fleetlogs", "--all"],
        &["delete", "secrets", "-l", selector],
        &["delete", "configmap", "skoala-fleet-state"],
    ];
    for args in emptying {
        let shown = format!("kubectl -n {NS} {}", args.join(" "))
            .replace(selector, &format!("'{selector}'"));
        assert!(log.contains(&shown), "the refusal gives `{shown}`:\n{log}");
        kubectl(&kubeconfig, &[&["-n", NS], args].concat()).await?;
    }
    let started = Instant::now();
    let out = migrate(&sqlite, &kube, &kubeconfig, &[]).await?;
    eprintln!("migrate sqlite -> kube: {:?}", started.elapsed());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("2 clusters"), "the report counts: {said}");
    assert!(
        said.contains(&format!("{backups} values backups")),
        "every backup moved: {said}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let stored = secrets
        .list(&ListParams::default().labels("fleet.skoala.io/kind=backup"))
        .await?;
    assert_eq!(stored.items.len(), backups, "the backups are Secrets now");

    // Once more into the namespace that now holds the fleet: refused, nothing changed.
    let again = migrate(&sqlite, &kube, &kubeconfig, &[]).await?;
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second migration into a fleet");
    assert!(
        why.contains("not empty") || why.contains("already holds"),
        "{why}"
    );

    pf.fleet.coordinator.serve_store(Some(NS.into())).await?;
    pf.fleet.wait_connected(2).await?;
    let on_kube = seen(&pf).await?;
    kept(&on_sqlite, &on_kube);
    assert_eq!(
        joins(&pf).await?,
        joined,
        "no agent joined again on the kube store\n{}",
        pf.fleet.logs()
    );
    run_plan(&pf, "second", "0.19.2").await?;
    let on_kube = seen(&pf).await?;
    assert_eq!(on_kube.plans.len(), 2, "{on_kube:?}");
    assert!(
        on_kube.events.len() > on_sqlite.events.len(),
        "the new plan's events follow the old ones' ids: {on_kube:?}"
    );

    // --- kube -> SQLite ------------------------------------------------------------------
    pf.fleet.coordinator.terminate().await?;
    // The operator cleared the data dir when the fleet went to kube; the PKI may stay (it is
    // this fleet's).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("store.db{suffix}")));
    }
    std::fs::remove_dir_all(data.join("backups"))?;
    let started = Instant::now();
    let out = migrate(&kube, &sqlite, &kubeconfig, &[]).await?;
    eprintln!("migrate kube -> sqlite: {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "migrate back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pf.fleet.coordinator.serve_store(None).await?;
    pf.fleet.wait_connected(2).await?;
    assert!(
        read_backups(&data)? >= backups,
        "the backups are files again, the kube store's included"
    );
    let back = seen(&pf).await?;
    kept(&on_kube, &back);
    assert_eq!(
        joins(&pf).await?,
        joined,
        "no agent joined again back on SQLite\n{}",
        pf.fleet.logs()
    );
    // Every cluster runs 0.19.2 already: the plan settles each target without an upgrade.
    run_plan(&pf, "third", "0.19.2").await?;
    Ok(())
}
