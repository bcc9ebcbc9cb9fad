//! The contracts of [`Migrate`]: a snapshot moves every record verbatim into an empty store of
//! any backend, and a store that holds records refuses one.

use super::{Factory, plan, target, write};
use crate::fixtures::{registration, token};
use crate::{
    AdminRecord, AuditLog, ClusterState, Identity, IdentityStore, Migrate, NewAudit,
    PlanEventRecord, PlanStore, Registered, ReleaseSummary, RolloutWrite, Snapshot, StoreError,
    TASK_RESULT,
};
use skoala_plan::{ReleaseStatus, TargetPhase};

/// A store with a record of every class and the states a fleet's records go through: a token
/// used and one revoked, a cluster renewed, one that proposed a name, one revoked, admins live
/// and revoked, a finished plan and an active one with events, audit entries.
async fn populated<F: Factory>(f: &F) -> F::Store {
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    t.description = "wave 1".into();
    let mut revoked = token(1);
    revoked.id = "efgh".into();
    store.insert_token(t.clone()).await.expect("token");
    store.insert_token(revoked.clone()).await.expect("token");
    store.revoke_token("efgh".into()).await.expect("revoke");
    for (cluster, serial) in [("c1", "01"), ("c2", "02"), ("c3", "03")] {
        let r = store.register(registration(&t, cluster, serial)).await;
        assert!(matches!(r, Ok(Registered::New)), "{r:?}");
    }
    store
        .certificate_used("01".into(), 1_001)
        .await
        .expect("used");
    let mut renewal = registration(&t, "c1", "11").cert;
    renewal.issued_unix = 1_500;
    renewal.not_after_unix = 2_500;
    store.record_certificate(renewal).await.expect("renew");
    store
        .set_cluster_state(
            "c1".into(),
            ClusterState {
                agent_version: "0.2.0".into(),
                helm_version: "v3.16.0".into(),
                inventory: vec![1, 2, 3],
                release: Some(ReleaseSummary {
                    chart_version: "1.2.3".into(),
                    status: ReleaseStatus::Deployed,
                    revision: 4,
                }),
            },
        )
        .await
        .expect("state");
    store
        .propose_identity(
            "c2".into(),
            Some(Identity {
                name: "wants-this".into(),
                labels: [("tier".to_string(), "web".to_string())].into(),
            }),
        )
        .await
        .expect("propose");
    store
        .revoke_cluster("c3".into(), 1_200)
        .await
        .expect("revoke");
    for (name, serial) in [("alice", "a1"), ("bob", "b1")] {
        let admin = AdminRecord {
            name: name.into(),
            serial_hex: serial.into(),
            created_unix: 1_000,
            not_after_unix: 9_000,
            revoked_unix: None,
        };
        assert!(store.insert_admin(admin, 1_000).await.expect("admin"));
    }
    store.revoke_admin("bob".into(), 1_100).await.expect("bob");

    let event = |plan: &str, kind: &str, target: &str| PlanEventRecord {
        plan: plan.into(),
        kind: kind.into(),
        target: target.into(),
        target_name: format!("name-{target}"),
        state: "pending".into(),
        message: format!("{kind} of {plan}"),
        ..Default::default()
    };
    store
        .put_plan(plan("old", true), vec![event("old", "plan.applied", "")])
        .await
        .expect("old");
    store
        .save_rollout(RolloutWrite {
            events: vec![PlanEventRecord {
                operation_id: "old.c1.upgrade-1".into(),
                state: "succeeded".into(),
                duration_ms: 4_000,
                ..event("old", TASK_RESULT, "c1")
            }],
            ..write(
                "old",
                Some("{\"phase\":\"done\"}"),
                vec![
                    target("c1", 0, "done"),
                    target("c2", 1, "done"),
                    target("c3", 2, "skipped"),
                ],
            )
        })
        .await
        .expect("old's rollout");
    store
        .put_plan(plan("new", true), vec![event("new", "plan.applied", "")])
        .await
        .expect("new");
    store
        .save_rollout(RolloutWrite {
            events: vec![event("new", "target", "c1")],
            ..write(
                "new",
                Some("{\"phase\":\"workers\"}"),
                vec![target("c1", 0, "a")],
            )
        })
        .await
        .expect("new's rollout");
    for kind in ["cluster.registered", "plan.applied", "plan.paused"] {
        store
            .append_audit(NewAudit {
                kind: kind.into(),
                cluster_id: "c1".into(),
                peer: "alice".into(),
                detail: format!("{kind} detail"),
            })
            .await
            .expect("audit");
    }
    store
}

/// Every record of a migrated store reads back as it was in the source, through the export and
/// through each trait's reads, after a restart; ids continue after the highest imported, and a
/// token's remaining uses are the source's, so the next join spends the same on either side.
pub async fn a_migration_copies_every_record_verbatim_and_ids_continue<F: Factory>(f: &F) {
    let source = populated(f).await;
    let snapshot = source.export().await.expect("export").sorted();
    assert_eq!(snapshot.clusters.len(), 3);
    assert_eq!(snapshot.counts().certificates, 4, "{:?}", snapshot.counts());
    assert!(
        snapshot.clusters.iter().all(|c| c.token_id == "abcd"),
        "each cluster's last token travels with it"
    );

    let target = f.fresh().await;
    target.import(snapshot.clone()).await.expect("import");
    let target = f.reopen(target).await;
    assert_eq!(
        unwritten(target.export().await.expect("export").sorted()),
        unwritten(snapshot.clone()),
        "what was imported is exported again as it was"
    );

    let mut tokens = target.tokens().await.expect("tokens");
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(tokens, snapshot.tokens);
    assert_eq!(
        tokens.iter().map(|t| t.uses_left).collect::<Vec<_>>(),
        [2, 1],
        "three of five uses were spent; the revoked token was never used"
    );
    let mut clusters = target.clusters().await.expect("clusters");
    clusters.sort_by(|a, b| a.id.cmp(&b.id));
    let source_clusters: Vec<_> = snapshot.clusters.iter().map(|c| c.record.clone()).collect();
    assert_eq!(clusters, source_clusters);
    for cert in snapshot.clusters.iter().flat_map(|c| &c.certificates) {
        assert_eq!(
            target
                .certificate(cert.serial_hex.clone())
                .await
                .expect("cert")
                .as_ref(),
            Some(cert),
            "an agent's certificate is found by its serial"
        );
    }
    let mut admins = target.admins().await.expect("admins");
    admins.sort_by(|a, b| a.serial_hex.cmp(&b.serial_hex));
    assert_eq!(admins, snapshot.admins);
    assert_eq!(
        target
            .admin("b1".into())
            .await
            .expect("bob")
            .map(|a| a.revoked_unix),
        Some(Some(1_100))
    );
    let mut plans = target.plans().await.expect("plans");
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    for (p, want) in plans.iter().zip(&unwritten(snapshot.clone()).plans) {
        let mut got = p.clone();
        got.rollout
            .targets
            .sort_by(|a, b| (a.order, &a.cluster_id).cmp(&(b.order, &b.cluster_id)));
        got.updated_ms = 0;
        assert_eq!(&got, want);
    }
    assert_eq!(
        plans
            .iter()
            .filter(|p| p.active)
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["new"]
    );
    assert_eq!(
        target
            .plan_events(String::new(), 0, 1_000)
            .await
            .expect("events"),
        snapshot.plan_events
    );
    assert_eq!(
        target
            .plan_events("old".into(), 0, 1_000)
            .await
            .expect("old's"),
        source
            .plan_events("old".into(), 0, 1_000)
            .await
            .expect("old's")
    );
    assert_eq!(target.audit(0, 1_000).await.expect("audit"), snapshot.audit);
    assert_eq!(
        target.mean_upgrade_ms().await.expect("mean"),
        source.mean_upgrade_ms().await.expect("mean")
    );

    let last_event = snapshot.plan_events.last().expect("events").id;
    let next = target
        .save_rollout(RolloutWrite {
            events: vec![PlanEventRecord {
                plan: "new".into(),
                kind: "target".into(),
                target: "c2".into(),
                ..Default::default()
            }],
            ..write("new", None, vec![target_running("c2", 1)])
        })
        .await
        .expect("a round after the move");
    assert!(
        next > last_event,
        "event ids go on: {next} after {last_event}"
    );
    let last_audit = snapshot.audit.last().expect("audit").id;
    let next = target
        .append_audit(NewAudit {
            kind: "plan.resumed".into(),
            ..Default::default()
        })
        .await
        .expect("audit after the move");
    assert!(
        next > last_audit,
        "audit ids go on: {next} after {last_audit}"
    );

    let t = token(5);
    let mut join = registration(&t, "c4", "04");
    join.claim.now_unix = 1_600;
    for store in [&source, &target] {
        let r = store.register(join.clone()).await;
        assert!(matches!(r, Ok(Registered::New)), "{r:?}");
    }
    let left = |tokens: Vec<crate::TokenRecord>| {
        tokens
            .into_iter()
            .find(|t| t.id == "abcd")
            .map(|t| t.uses_left)
    };
    assert_eq!(left(target.tokens().await.expect("tokens")), Some(1));
    assert_eq!(
        left(target.tokens().await.expect("tokens")),
        left(source.tokens().await.expect("tokens"))
    );
}

/// A store that holds any record refuses an import and keeps what it had: a merge could give
/// two clusters one name or two events one id.
pub async fn a_migration_into_a_store_that_holds_records_is_refused<F: Factory>(f: &F) {
    let source = populated(f).await;
    let snapshot = source.export().await.expect("export");
    let target = f.fresh().await;
    let t = token(1);
    target.insert_token(t).await.expect("one token");
    let before = target.export().await.expect("export").sorted();
    let refused = target.import(snapshot.clone()).await;
    assert!(
        matches!(refused, Err(StoreError::NotEmpty(_))),
        "{refused:?}"
    );
    assert_eq!(target.export().await.expect("export").sorted(), before);

    let refused = source.import(Snapshot::default()).await;
    assert!(
        matches!(refused, Err(StoreError::NotEmpty(_))),
        "{refused:?}"
    );
    assert_eq!(
        source.export().await.expect("export").sorted(),
        snapshot.sorted(),
        "the refused import changed nothing"
    );
}

/// `s` without when each plan was last written, which not every backend keeps across a
/// restart (the kube store reads it back as the plan's acceptance): nothing decides by it.
fn unwritten(mut s: Snapshot) -> Snapshot {
    for p in &mut s.plans {
        p.updated_ms = 0;
    }
    s
}

/// Target `id` upgrading, at place `order`.
fn target_running(id: &str, order: u32) -> crate::TargetRecord {
    crate::TargetRecord {
        phase: TargetPhase::Running,
        ..target(id, order, "running")
    }
}
