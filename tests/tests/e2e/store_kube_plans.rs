//! What the kube store keeps beyond the contract for plans: where each part of a plan lives on
//! the API server (design §2.2, §4), which `kubectl` users and the chart's printer columns
//! read, the five plans a cluster keeps, event ids across plans and restarts, and retention of
//! whole segments.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use skoala_e2e::kstore::KubeStores;
use skoala_kubestore::crd::{FleetCluster, FleetLog, Kind, UpgradePlan};
use skoala_kubestore::store::KubeStore;
use skoala_plan::TargetPhase;
use skoala_store::conformance::Factory;
use skoala_store::{
    Cutoffs, PlanEventRecord, PlanRecord, PlanStore, Retention, RolloutRecord, RolloutWrite,
    TargetRecord,
};

fn api<K>(store: &KubeStore, kind: Kind) -> Api<K>
where
    K: kube::Resource<
            DynamicType = kube::core::ApiResource,
            Scope = kube::core::DynamicResourceScope,
        >,
{
    kind.api(store.client().clone(), store.namespace())
}

fn record(name: &str, targets: &[&str]) -> PlanRecord {
    PlanRecord {
        name: name.into(),
        document: format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec: {{version: 1.2.3}}\n"
        ),
        rollout: RolloutRecord {
            head: "{\"phase\":\"workers\"}".into(),
            targets: targets
                .iter()
                .enumerate()
                .map(|(i, id)| TargetRecord {
                    cluster_id: (*id).into(),
                    order: i as u32,
                    phase: TargetPhase::Pending,
                    progress: "{\"attempts\":0}".into(),
                })
                .collect(),
        },
        active: true,
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

fn event(plan: &str, kind: &str) -> PlanEventRecord {
    PlanEventRecord {
        plan: plan.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_plan_is_an_upgrade_plan_its_targets_are_cluster_entries_and_the_pointer_names_it() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    store
        .put_plan(record("p", &["w1"]), vec![event("p", "plan.applied")])
        .await
        .expect("plan");
    let running = TargetRecord {
        cluster_id: "w1".into(),
        order: 0,
        phase: TargetPhase::Running,
        progress: "{\"attempts\":1}".into(),
    };
    store
        .save_rollout(RolloutWrite {
            plan: "p".into(),
            head: Some("{\"phase\":\"canaries\"}".into()),
            targets: vec![running.clone()],
            events: vec![],
        })
        .await
        .expect("write");

    let plan: UpgradePlan = api(&store, Kind::UpgradePlan).get("p").await.expect("plan");
    assert_eq!(
        plan.spec["version"], "1.2.3",
        "the document's spec is the object's"
    );
    let status = plan.status.expect("status");
    assert_eq!(
        status.rollout,
        Some(serde_json::json!({"phase": "canaries"}))
    );
    assert!(status.accepted.is_some() && status.active);

    let cluster: FleetCluster = api(&store, Kind::FleetCluster).get("w1").await.expect("w1");
    let entries = cluster.status.expect("status").plans;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].plan.as_str(), entries[0].order, entries[0].state),
        ("p", 0, TargetPhase::Running)
    );
    assert_eq!(entries[0].progress, serde_json::json!({"attempts": 1}));

    let state: ConfigMap = Api::namespaced(store.client().clone(), store.namespace())
        .get("skoala-fleet-state")
        .await
        .expect("state");
    let data = state.data.expect("data");
    assert_eq!(data.get("activePlan").map(String::as_str), Some("p"));
    assert_eq!(data.get("plans").map(String::as_str), Some("p\n"));

    let logs: Vec<FleetLog> = api(&store, Kind::FleetLog)
        .list(&ListParams::default())
        .await
        .expect("logs")
        .items;
    assert_eq!(
        logs.iter()
            .filter_map(|l| l.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["events-p-00000000000000000001"]
    );

    let again = f.reopen(store).await;
    let p = again.plans().await.expect("plans").pop().expect("p");
    assert_eq!(
        p.rollout.targets,
        [running],
        "read back from the cluster's entry"
    );
}

#[tokio::test]
async fn a_cluster_keeps_the_entries_of_its_five_most_recent_plans() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    for n in 1..=6 {
        let mut plan = record(&format!("p{n}"), &["w1"]);
        plan.created_ms = n;
        store.put_plan(plan, vec![]).await.expect("plan");
    }
    let cluster: FleetCluster = api(&store, Kind::FleetCluster).get("w1").await.expect("w1");
    let names: Vec<String> = cluster
        .status
        .expect("status")
        .plans
        .into_iter()
        .map(|e| e.plan)
        .collect();
    assert_eq!(names, ["p6", "p5", "p4", "p3", "p2"], "most recent first");
    let plans = store.plans().await.expect("plans");
    assert_eq!(plans.len(), 6, "an older plan is still a plan");
    assert!(plans[0].rollout.targets.is_empty(), "without its entries");
}

#[tokio::test]
async fn event_ids_go_on_across_plans_and_restarts() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    store
        .put_plan(record("a", &[]), vec![event("a", "a1")])
        .await
        .expect("a");
    let store = f.reopen(store).await;
    let next = store
        .append_plan_events(vec![event("b", "b1"), event("a", "a2")])
        .await
        .expect("append");
    let all = store.plan_events(String::new(), 0, 10).await.expect("all");
    assert_eq!(
        all.iter()
            .map(|e| (e.id, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(1, "a1"), (2, "b1"), (3, "a2")]
    );
    assert_eq!(next, 3);
}

#[tokio::test]
async fn retention_deletes_a_finished_plans_sealed_segments_and_keeps_the_active_plans() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    for (name, active) in [("done", false), ("running", true)] {
        let mut plan = record(name, &[]);
        plan.active = active;
        store
            .put_plan(plan, vec![event(name, "one"), event(name, "two")])
            .await
            .expect("plan");
    }
    // A new leader seals the segments its predecessor left open.
    let store = f.reopen(store).await;
    let pruned = store
        .prune(Cutoffs {
            audit_before_ms: 0,
            events_before_ms: i64::MAX,
            certificates_expired_before_unix: 0,
            admins_expired_before_unix: 0,
        })
        .await
        .expect("prune");
    assert_eq!(pruned.events, 2);
    let left = store
        .plan_events(String::new(), 0, 10)
        .await
        .expect("events");
    assert_eq!(
        left.iter().map(|e| e.plan.as_str()).collect::<Vec<_>>(),
        ["running", "running"]
    );
    let logs: Vec<FleetLog> = api(&store, Kind::FleetLog)
        .list(&ListParams::default())
        .await
        .expect("logs")
        .items;
    assert!(
        logs.iter()
            .all(|l| l.spec.plan.as_deref() == Some("running")),
        "the finished plan's segment is gone from the server"
    );
}
