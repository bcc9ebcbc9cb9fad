//! What the kube store keeps beyond the contract for plans: where each part of a plan lives on
//! the API server (design §2.2, §4), which `kubectl` users and the chart's printer columns
//! read, the five plans a cluster keeps, event ids across plans and restarts, retention of
//! whole segments, and the status fields the printer columns show (a plan's phase, stage,
//! counts and what it waits for; a cluster's release), written without a write per target.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use skoala_e2e::kstore::{self, KubeStores};
use skoala_e2e::wait;
use skoala_kubestore::crd::{
    Counts, FleetCluster, FleetLog, Kind, Release, UpgradePlan, UpgradePlanStatus,
};
use skoala_kubestore::store::KubeStore;
use skoala_plan::{Phase, PhaseKind, ReleaseStatus, TargetPhase, TargetState};
use skoala_store::conformance::{Factory, Refusal};
use skoala_store::{
    Cutoffs, IdentityStore, PlanEventRecord, PlanRecord, PlanStore, Retention, RolloutRecord,
    RolloutWrite, TargetRecord,
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

/// A round's events gate nothing (design §3.3, step 6), and the event log flushes a stream at
/// most five times a second: a rollout write that waited for its events would hold the
/// round's tasks until the next flush. So the write is answered once its head and targets are
/// stored, and an event the log then refuses costs history, not the write.
#[tokio::test]
async fn a_rollout_write_is_answered_without_its_events_and_stands_when_the_log_refuses_them() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    store
        .put_plan(record("p", &["w1"]), vec![event("p", "plan.applied")])
        .await
        .expect("plan");
    f.refuse(&store, Refusal::Events).await;
    let running = TargetRecord {
        cluster_id: "w1".into(),
        order: 0,
        phase: TargetPhase::Running,
        progress: "{\"attempts\":1}".into(),
    };
    let last = store
        .save_rollout(RolloutWrite {
            plan: "p".into(),
            head: None,
            targets: vec![running.clone()],
            events: vec![event("p", "task.sent")],
        })
        .await
        .expect("the write stands");
    assert!(last > 0, "the event took an id");

    let cluster: FleetCluster = api(&store, Kind::FleetCluster).get("w1").await.expect("w1");
    let entries = cluster.status.expect("status").plans;
    assert_eq!(
        (entries[0].plan.as_str(), entries[0].state),
        ("p", TargetPhase::Running),
        "the target is stored"
    );
    let kinds: Vec<String> = store
        .plan_events("p".into(), 0, 10)
        .await
        .expect("a read waits for the refused flush, then answers")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["plan.applied"], "the refused event is not there");
}

/// Cluster `id`'s entry entering `running` as the `order`th target.
fn running(id: &str, order: u32) -> TargetRecord {
    TargetRecord {
        cluster_id: id.into(),
        order,
        phase: TargetPhase::Running,
        progress: "{\"attempts\":1}".into(),
    }
}

/// Starts are one request each, and each is named as soon as its own lands: a start whose
/// write is slow does not hold back the others' tasks.
#[tokio::test]
async fn each_start_is_named_as_soon_as_its_own_write_lands() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    store
        .put_plan(record("p", &["w1", "w2"]), vec![])
        .await
        .expect("plan");
    let slow = Duration::from_millis(1500);
    f.delay(&store, "fleetclusters/w1/status", slow);
    let began = Instant::now();
    let named = std::sync::Mutex::new(Vec::new());
    store
        .start_targets(
            "p".into(),
            vec![running("w1", 0), running("w2", 1)],
            &|id| {
                named
                    .lock()
                    .expect("named")
                    .push((id.to_string(), began.elapsed()))
            },
        )
        .await
        .expect("start");
    let named = named.into_inner().expect("named");
    let at = |id: &str| named.iter().find(|(n, _)| n == id).map(|(_, at)| *at);
    let (w1, w2) = (at("w1").expect("w1 named"), at("w2").expect("w2 named"));
    assert!(w1 >= slow, "w1's write was slowed down: {named:?}");
    assert!(
        w2 < slow / 2,
        "w2 is named as its own write lands, not when w1's does: {named:?}"
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

/// The plan [`kstore::a_rollout_awaiting_approval`] stored, as the API server holds it.
async fn shown(store: &KubeStore) -> UpgradePlanStatus {
    let plan: UpgradePlan = api(store, Kind::UpgradePlan)
        .get(kstore::SHOWN_PLAN)
        .await
        .expect("the plan");
    plan.status.expect("its status")
}

#[tokio::test]
async fn a_plans_status_shows_its_heads_phase_the_stage_started_its_targets_counts_and_what_it_waits_for()
 {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    kstore::a_rollout_awaiting_approval(&store)
        .await
        .expect("the rollout");

    let status = shown(&store).await;
    assert_eq!(status.phase, Some(PhaseKind::AwaitingApproval));
    assert_eq!(status.stage, Some(0), "the canaries started");
    assert_eq!(
        status.counts,
        Some(Counts {
            total: 3,
            pending: 1,
            succeeded: 1,
            failed: 1,
            ..Counts::default()
        })
    );
    assert_eq!(status.waiting, "approve wave 1: skoalactl plan approve");

    let release = Release {
        chart_version: "0.20.0".into(),
        status: ReleaseStatus::Deployed,
        revision: 5,
    };
    let cluster: FleetCluster = api(&store, Kind::FleetCluster).get("w1").await.expect("w1");
    assert_eq!(cluster.status.expect("status").release, Some(release));
    let again = f.reopen(store).await;
    let w1 = again.cluster("w1".into()).await.expect("w1").expect("w1");
    assert_eq!(
        w1.state
            .release
            .map(|r| (r.chart_version, r.status, r.revision)),
        Some(("0.20.0".into(), ReleaseStatus::Deployed, 5)),
        "read back from status.release"
    );
}

#[tokio::test]
async fn a_head_the_plan_crate_cannot_read_leaves_the_phase_as_it_was_while_the_counts_follow() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    kstore::a_rollout_awaiting_approval(&store)
        .await
        .expect("the rollout");
    store
        .save_rollout(RolloutWrite {
            plan: kstore::SHOWN_PLAN.into(),
            head: Some("{\"phase\":\"fromTheFuture\"}".into()),
            targets: vec![kstore::target(
                "w3",
                2,
                TargetState::Succeeded {
                    revision_before: None,
                },
            )],
            events: vec![],
        })
        .await
        .expect("write");
    let status = wait::until(
        "the counts to follow the targets",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                let status = shown(&store).await;
                (status.counts.as_ref()?.succeeded == 2).then_some(status)
            }
        },
    )
    .await
    .expect("the counts");
    assert_eq!(status.phase, Some(PhaseKind::AwaitingApproval));
    assert_eq!(status.waiting, "approve wave 1: skoalactl plan approve");
}

/// A round of results changes the plan's counts and its upgrade history (the sums behind the
/// mean upgrade time): neither is a write of the plan per round, and both are stored.
#[tokio::test]
async fn a_round_of_many_target_writes_shows_the_counts_in_a_few_writes_not_one_per_target() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    let ids: Vec<String> = (0..12).map(|n| format!("w{n}")).collect();
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut plan = record("p", &names);
    plan.rollout.head = kstore::head("p", Phase::Workers, 12);
    store.put_plan(plan, vec![]).await.expect("plan");
    let plans: Api<UpgradePlan> = api(&store, Kind::UpgradePlan);
    let counted = |succeeded: u32| {
        let plans = plans.clone();
        async move {
            let plan = plans.get("p").await.ok()?;
            let counts = plan.status.as_ref()?.counts.as_ref()?;
            (counts.total == 12 && counts.succeeded == succeeded)
                .then(|| plan.metadata.resource_version.clone())
                .flatten()
        }
    };
    let version = wait::until("the targets to be counted", Duration::from_secs(30), || {
        counted(0)
    })
    .await
    .expect("counted");

    let mut changes = plans
        .watch(&WatchParams::default(), &version)
        .await
        .expect("a watch")
        .boxed();
    let started = Instant::now();
    for (order, id) in ids.iter().enumerate() {
        let done = kstore::target(
            id,
            order as u32,
            TargetState::Succeeded {
                revision_before: Some(1),
            },
        );
        let result = PlanEventRecord {
            plan: "p".into(),
            kind: "task.result".into(),
            state: "succeeded".into(),
            operation_id: format!("p.{id}.upgrade-1"),
            duration_ms: 1_000,
            ..Default::default()
        };
        store
            .save_rollout(RolloutWrite {
                plan: "p".into(),
                head: None,
                targets: vec![done],
                events: vec![result],
            })
            .await
            .expect("a result");
    }
    wait::until(
        "every result to be counted",
        Duration::from_secs(30),
        || counted(12),
    )
    .await
    .expect("counted");
    let elapsed = started.elapsed();
    let mut writes = 0;
    let history = loop {
        let change = tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("the history within 30 s")
            .expect("the watch goes on");
        if let WatchEvent::Modified(plan) = change.expect("a change") {
            writes += 1;
            let status = plan.status.unwrap_or_default();
            let succeeded = status.counts.map(|c| c.succeeded);
            let history = status.history.unwrap_or_default();
            if succeeded == Some(12) && history.upgrades == 12 {
                break history;
            }
        }
    };
    assert_eq!(history.upgrade_millis, 12_000, "every upgrade's time");
    let allowed = 2 + (elapsed.as_secs_f64() / 2.0).ceil() as usize;
    assert!(
        writes <= allowed && writes < ids.len(),
        "{writes} writes of the plan in {elapsed:?} for {} results",
        ids.len()
    );
}

/// A plan's display (its counts) is written by a timer, the lowest class of write; the API
/// server may be slow to answer it, and the rounds writing results and starts meanwhile go on:
/// the timer holds the plan part's lock only while it queues its write, not while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_write_the_api_server_is_slow_to_answer_holds_back_no_start() {
    let f = KubeStores::sim();
    let store = f.fresh().await;
    store
        .put_plan(record("p", &["w1", "w2"]), vec![])
        .await
        .expect("plan");
    let plans: Api<UpgradePlan> = api(&store, Kind::UpgradePlan);
    let counted = |succeeded: u32| {
        let plans = plans.clone();
        async move {
            let plan = plans.get("p").await.ok()?;
            let counts = plan.status?.counts?;
            (counts.total == 2 && counts.succeeded == succeeded).then_some(())
        }
    };
    wait::until("the targets to be counted", Duration::from_secs(30), || {
        counted(0)
    })
    .await
    .expect("counted");

    // Under the store's 2 s write timeout: the write is slow, not failed.
    let slow = Duration::from_millis(1_500);
    let status = "upgradeplans/p/status";
    f.delay(&store, status, slow);
    let done = kstore::target(
        "w1",
        0,
        TargetState::Succeeded {
            revision_before: Some(1),
        },
    );
    store
        .save_rollout(RolloutWrite {
            plan: "p".into(),
            head: None,
            targets: vec![done],
            events: vec![],
        })
        .await
        .expect("a result");
    // The counts changed: the timer writes them within its interval, and the server holds it.
    wait::until(
        "the display write to reach the server",
        Duration::from_secs(10),
        || async { (f.delayed(&store, status) > 0).then_some(()) },
    )
    .await
    .expect("the display write in flight");

    let began = Instant::now();
    store
        .start_targets("p".into(), vec![running("w2", 1)], &|_| {})
        .await
        .expect("start");
    let took = began.elapsed();
    assert!(
        took < slow / 3,
        "the start waited {took:?} while the display write was held for {slow:?}"
    );
    wait::until("the result to be counted", Duration::from_secs(30), || {
        counted(1)
    })
    .await
    .expect("the display follows once the server answers");
}

/// An agent reports its new inventory beside the task's result, and both go to the cluster's
/// `FleetCluster`: the report is held until the result's write carries it, so the rollout
/// costs the API server one patch per upgrade, not two; a report nothing carries is stored
/// alone a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_reported_state_rides_in_the_request_that_stores_its_result() {
    use skoala_store::fixtures::{registration, token};
    use skoala_store::{ClusterState, ReleaseSummary};

    let f = KubeStores::sim();
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = i64::MAX;
    store.insert_token(t.clone()).await.expect("token");
    store
        .register(registration(&t, "w1", "01"))
        .await
        .expect("w1");
    store
        .put_plan(record("p", &["w1"]), vec![])
        .await
        .expect("plan");
    let target = |state| kstore::target("w1", 0, state);
    store
        .start_targets(
            "p".into(),
            vec![target(TargetState::Running {
                operation_id: "p-w1-1".into(),
                started: jiff::Timestamp::now(),
            })],
            &|_| {},
        )
        .await
        .expect("start");
    let clusters: Api<FleetCluster> = api(&store, Kind::FleetCluster);
    let version = clusters
        .get("w1")
        .await
        .expect("w1")
        .metadata
        .resource_version
        .expect("a version");
    let mut changes = clusters
        .watch(&WatchParams::default(), &version)
        .await
        .expect("a watch")
        .boxed();

    let state = |version: &str| ClusterState {
        agent_version: "0.2.0".into(),
        helm_version: "v3.17.0".into(),
        inventory: vec![1, 2, 3],
        release: Some(ReleaseSummary {
            chart_version: version.into(),
            status: ReleaseStatus::Deployed,
            revision: 2,
        }),
    };
    let report = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .report_cluster_state("w1".into(), state("1.2.3"))
                .await
        }
    });
    // The result reaches the orchestrator beside the report, and its round writes it a few
    // milliseconds later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .save_rollout(RolloutWrite {
            plan: "p".into(),
            head: None,
            targets: vec![target(TargetState::Succeeded {
                revision_before: Some(1),
            })],
            events: vec![],
        })
        .await
        .expect("the result");
    report.await.expect("join").expect("the report");

    let first = loop {
        let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s")
            .expect("the watch goes on")
            .expect("a change");
        if let WatchEvent::Modified(c) = change {
            break c;
        }
    };
    let status = first.status.expect("a status");
    assert_eq!(
        (
            status.release.as_ref().map(|r| r.chart_version.as_str()),
            status.plans.first().map(|e| e.state),
        ),
        (Some("1.2.3"), Some(TargetPhase::Succeeded)),
        "the first write after the start carries both the report and the result"
    );

    store
        .report_cluster_state("w1".into(), state("1.2.4"))
        .await
        .expect("a report alone");
    let stored = clusters
        .get("w1")
        .await
        .expect("w1")
        .status
        .expect("status");
    assert_eq!(
        stored.release.map(|r| r.chart_version).as_deref(),
        Some("1.2.4"),
        "a report nothing carries is stored when its hold ends"
    );
}
