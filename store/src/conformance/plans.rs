//! The contracts of [`PlanStore`], [`AuditLog`] and [`Retention`]: plans, rollout writes,
//! plan events, the audit log and what retention keeps.

use super::{Factory, Refusal, plan, target, write};
use crate::fixtures::{registration, token};
use crate::{
    AuditLog, Cutoffs, IdentityStore, NewAudit, PlanEventRecord, PlanRecord, PlanStore, Retention,
    RolloutWrite, TASK_RESULT, TargetRecord,
};
use skoala_plan::TargetPhase;

/// Storing an active plan makes the others inactive; a rollout write stores its head and events,
/// an unknown plan is an error, the mean upgrade time counts upgrades only, and the rollout
/// survives a restart.
pub async fn one_active_plan_rollouts_and_events_persist<F: Factory>(f: &F) {
    let store = f.fresh().await;
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
    let again = f.reopen(store).await;
    let b = again.plans().await.expect("plans").pop().expect("b");
    assert_eq!(b.rollout.head, "{\"x\":1}", "the head survives a restart");
    assert_eq!(b.rollout.targets, [target("w1", 0, "{}")]);
}

/// A rollout write replaces or adds the targets it names, keeps the others, and keeps the head
/// when it gives none.
pub async fn a_write_changes_the_targets_it_names_and_no_other<F: Factory>(f: &F) {
    let store = f.fresh().await;
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

/// A rollout write refused in part stores none of it (head, targets, events) and keeps what
/// earlier writes stored.
pub async fn a_refused_write_stores_none_of_its_parts_and_keeps_the_earlier_ones<F: Factory>(
    f: &F,
) {
    let store = f.fresh().await;
    store.put_plan(plan("p", true), vec![]).await.expect("plan");
    // A round's head is stored; then the disk refuses its targets.
    store
        .save_rollout(write("p", Some("{\"h\":1}"), vec![]))
        .await
        .expect("head");
    f.refuse(&store, Refusal::Target("w3".into())).await;
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

/// Starts are stored by name: every target `start_targets` names is stored, a refused one is
/// neither named nor stored, the targets it was not given stay as they were, and an unknown
/// plan is an error.
pub async fn every_start_named_is_stored_and_a_refused_one_is_not<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let mut p = plan("p", true);
    p.rollout.targets = vec![
        target("w1", 0, "1"),
        target("w2", 1, "2"),
        target("w3", 2, "3"),
    ];
    store.put_plan(p, vec![]).await.expect("plan");
    let running = |id: &str, order| TargetRecord {
        phase: TargetPhase::Running,
        ..target(id, order, &format!("{id} running"))
    };
    let named = std::sync::Mutex::new(Vec::new());
    let name = |id: &str| named.lock().expect("named").push(id.to_string());
    store
        .start_targets("p".into(), vec![running("w1", 0), running("w2", 1)], &name)
        .await
        .expect("start");
    let mut first = std::mem::take(&mut *named.lock().expect("named"));
    first.sort();
    assert_eq!(first, ["w1", "w2"], "each start is named once stored");
    assert_eq!(
        targets_of(&store).await,
        [running("w1", 0), running("w2", 1), target("w3", 2, "3")],
        "the starts, and the target not given as it was"
    );

    f.refuse(&store, Refusal::Target("w3".into())).await;
    let refused = store
        .start_targets("p".into(), vec![running("w2", 1), running("w3", 2)], &name)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let named = std::mem::take(&mut *named.lock().expect("named"));
    assert!(!named.contains(&"w3".to_string()), "{named:?}");
    let after = targets_of(&store).await;
    assert_eq!(
        after[2],
        target("w3", 2, "3"),
        "the refused start is not stored"
    );
    for id in &named {
        assert!(
            after
                .iter()
                .any(|t| &t.cluster_id == id && t.phase == TargetPhase::Running),
            "{id} was named, so it is stored: {after:?}"
        );
    }

    assert!(
        store
            .start_targets("nope".into(), vec![running("w1", 0)], &name)
            .await
            .is_err(),
        "an unknown plan is an error, not a silent no-op"
    );
    let again = f.reopen(store).await;
    assert_eq!(
        &targets_of(&again).await[..1],
        [running("w1", 0)],
        "a start survives a restart"
    );
}

/// The targets of the last plan stored, in their order.
async fn targets_of<S: PlanStore>(store: &S) -> Vec<TargetRecord> {
    let mut targets = store
        .plans()
        .await
        .expect("plans")
        .pop()
        .expect("a plan")
        .rollout
        .targets;
    targets.sort_by_key(|t| t.order);
    targets
}

/// A plan whose events are refused is not stored.
pub async fn a_plan_is_stored_with_its_events_or_not_at_all<F: Factory>(f: &F) {
    let store = f.fresh().await;
    // The event log refuses writes (a full disk, say).
    f.refuse(&store, Refusal::Events).await;
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

/// Plan events get increasing ids in the order appended, and a read follows its cursor,
/// limit and plan.
pub async fn plan_events_are_paged_by_plan_after_id_and_limit<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let event = |plan: &str, kind: &str| PlanEventRecord {
        plan: plan.into(),
        kind: kind.into(),
        ..Default::default()
    };
    let first = store
        .put_plan(plan("a", true), vec![event("a", "a1")])
        .await
        .expect("a");
    let second = store
        .append_plan_events(vec![event("b", "b1"), event("a", "a2")])
        .await
        .expect("append");
    let third = store
        .save_rollout(RolloutWrite {
            events: vec![event("a", "a3")],
            ..write("a", None, vec![])
        })
        .await
        .expect("save");
    assert!(first < second && second < third, "{first} {second} {third}");
    assert_eq!(
        store
            .save_rollout(write("a", None, vec![]))
            .await
            .expect("save"),
        0,
        "a write without events returns 0"
    );

    let kinds = |events: Vec<PlanEventRecord>| -> Vec<String> {
        events.into_iter().map(|e| e.kind).collect()
    };
    let all = store.plan_events(String::new(), 0, 100).await.expect("all");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "{all:?}");
    assert_eq!(all.last().map(|e| e.id), Some(third));
    assert_eq!(kinds(all.clone()), ["a1", "b1", "a2", "a3"]);
    assert_eq!(
        kinds(store.plan_events("a".into(), 0, 100).await.expect("a")),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        kinds(store.plan_events("a".into(), first, 1).await.expect("page")),
        ["a2"]
    );
    assert_eq!(
        kinds(
            store
                .plan_events(String::new(), all[1].id, 2)
                .await
                .expect("page")
        ),
        ["a2", "a3"]
    );
    assert!(
        store
            .plan_events(String::new(), third, 100)
            .await
            .expect("past the end")
            .is_empty()
    );
    assert!(
        all.iter().all(|e| e.at_unix_ms > 0),
        "the store stamps them"
    );
}

/// Audit ids increase in the order appended, survive a restart, and a read follows its
/// cursor and limit.
pub async fn audit_ids_increase_and_pages_follow_after_id_and_limit<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let mut ids = Vec::new();
    for kind in ["one", "two", "three"] {
        let e = NewAudit {
            kind: kind.into(),
            cluster_id: "c1".into(),
            peer: "alice".into(),
            detail: format!("{kind} happened"),
        };
        ids.push(store.append_audit(e).await.expect("audit"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let store = f.reopen(store).await;
    let all = store.audit(0, 100).await.expect("audit");
    assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), ids);
    let first = &all[0];
    assert_eq!(
        (
            first.kind.as_str(),
            first.cluster_id.as_str(),
            first.peer.as_str(),
            first.detail.as_str()
        ),
        ("one", "c1", "alice", "one happened")
    );
    assert!(
        all.iter().all(|a| a.at_unix_ms > 0),
        "the store stamps them"
    );
    let page: Vec<i64> = store
        .audit(ids[0], 1)
        .await
        .expect("page")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(page, [ids[1]]);
    assert!(store.audit(ids[2], 10).await.expect("end").is_empty());
    let next = store
        .append_audit(NewAudit {
            kind: "four".into(),
            ..Default::default()
        })
        .await
        .expect("after a restart");
    assert!(next > ids[2], "ids go on after a restart: {next} {ids:?}");
}

/// Retention never lets go of what is within its windows, nor of any event of the active
/// plan whatever its age, and counts what it deleted. Which older rows go, and when, is the
/// backend's own (SQLite: each row; the kube store: whole sealed segments).
pub async fn retention_keeps_recent_rows_and_the_active_plans_whole_history<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(2);
    store.insert_token(t.clone()).await.expect("token");
    // c2's certificate runs until far ahead.
    let mut r2 = registration(&t, "c2", "02");
    r2.cert.not_after_unix = i64::MAX / 2;
    store.register(r2).await.expect("c2");
    for kind in ["one", "two"] {
        let e = NewAudit {
            kind: kind.into(),
            ..Default::default()
        };
        store.append_audit(e).await.expect("audit");
    }
    for (name, active) in [("done", false), ("running", true)] {
        let plan = PlanRecord {
            rollout: Default::default(),
            ..plan(name, active)
        };
        let event = |kind: &str| PlanEventRecord {
            plan: name.into(),
            kind: kind.into(),
            ..Default::default()
        };
        store
            .put_plan(plan, vec![event("one"), event("two")])
            .await
            .expect("plan");
    }
    let audit_before = store.audit(0, 100).await.expect("audit");
    let events_before = store
        .plan_events(String::new(), 0, 100)
        .await
        .expect("events");
    let oldest_audit = audit_before.iter().map(|a| a.at_unix_ms).min();

    // Every audit row is within its window; every event is outside its window.
    let pruned = store
        .prune(Cutoffs {
            audit_before_ms: oldest_audit.expect("audit rows"),
            events_before_ms: i64::MAX,
            certificates_expired_before_unix: 1_000_000,
            admins_expired_before_unix: 0,
        })
        .await
        .expect("prune");
    assert_eq!(pruned.audit, 0);
    assert_eq!(store.audit(0, 100).await.expect("audit"), audit_before);
    let events_after = store
        .plan_events(String::new(), 0, 100)
        .await
        .expect("events");
    let running = |events: &[PlanEventRecord]| -> Vec<PlanEventRecord> {
        events
            .iter()
            .filter(|e| e.plan == "running")
            .cloned()
            .collect()
    };
    assert_eq!(
        running(&events_after),
        running(&events_before),
        "the active plan keeps its whole history"
    );
    assert_eq!(
        pruned.events,
        events_before.len() - events_after.len(),
        "prune counts what it deleted"
    );
    assert!(
        store
            .certificate("02".into())
            .await
            .expect("cert")
            .is_some(),
        "a certificate valid past the cutoff is kept"
    );
}
