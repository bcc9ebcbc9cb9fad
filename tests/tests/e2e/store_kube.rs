//! The store conformance suite on the kube store over the emulator: every contract the
//! coordinator relies on, kept by fleet state on an API server as it is by SQLite. Then what
//! the kube store does its own way: retention by whole log segments and certificate records
//! within their cluster, a registration cut off between its two writes, and the leader's locks
//! in place of SQLite's transactions.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use skoala_e2e::kstore::{self, KubeStores};
use skoala_kubestore::crd::{FleetCluster, Kind};
use skoala_store::conformance::Factory;
use skoala_store::fixtures::{registration, token};
use skoala_store::{
    AuditLog, ClusterState, IdentityStore, NewAudit, RegisterError, Registered, StoreError,
};

skoala_store::conformance_tests!(KubeStores::sim());

/// Retention deletes sealed audit segments past the cutoff, counting their entries, and keeps
/// the newest, so ids go on after a restart; of a cluster's certificate records it drops the
/// expired ones but the current, which the cluster's record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current() {
    kstore::retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current(
        &KubeStores::sim(),
    )
    .await;
}

/// What the GitOps reconciler reads and writes of a plan object it did not create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_objects_carry_the_leaders_decision_its_finalizer_and_what_it_handled() {
    kstore::plan_objects_carry_the_leaders_decision_its_finalizer_and_what_it_handled(
        &KubeStores::sim(),
    )
    .await;
}

/// A registration cut off between the create of its cluster and the status write (a crash,
/// or a write the API server failed) leaves no registered cluster and spends no use; the
/// agent's retry with the same token, after a restart too, registers it as new and spends one
/// (design §3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_cut_off_after_its_create_is_finished_by_the_agents_retry() {
    let stores = KubeStores::sim();
    let store = stores.fresh().await;
    let t = token(2);
    store.insert_token(t.clone()).await.expect("token");
    stores.fail_next(&store, "fleetclusters/c1/status", 1);
    let cut = store.register(registration(&t, "c1", "01")).await;
    assert!(matches!(cut, Err(RegisterError::Store(_))), "{cut:?}");
    assert_eq!(store.clusters().await.expect("clusters"), []);
    assert_eq!(store.cluster("c1".into()).await.expect("c1"), None);
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 2);

    let store = stores.reopen(store).await;
    assert_eq!(store.clusters().await.expect("clusters"), []);
    let retry = store.register(registration(&t, "c1", "02")).await;
    assert!(matches!(retry, Ok(Registered::New)), "{retry:?}");
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 1);
    let c1 = store.cluster("c1".into()).await.expect("c1").expect("c1");
    assert_eq!(
        (c1.name.as_str(), c1.cert_serial.as_str()),
        ("name-c1", "02")
    );
}

/// Registrations racing for a token's last use, or for one name, are serialised by the
/// leader's locks as SQLite's transactions serialise them: one wins, the others are refused
/// with the reason, and nothing of theirs is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_spend_a_token_once_and_a_name_once() {
    let stores = KubeStores::sim();
    let store = stores.fresh().await;
    let race = |registrations: Vec<skoala_store::Registration>| {
        let store = store.clone();
        async move {
            let joins: Vec<_> = registrations
                .into_iter()
                .map(|r| {
                    let store = store.clone();
                    tokio::spawn(async move { store.register(r).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for j in joins {
                outcomes.push(j.await.expect("the task"));
            }
            outcomes
        }
    };

    let one = token(1);
    store.insert_token(one.clone()).await.expect("token");
    let outcomes = race(
        (1..=5)
            .map(|n| registration(&one, &format!("c{n}"), &format!("0{n}")))
            .collect(),
    )
    .await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    let used_up = outcomes
        .iter()
        .filter(|o| matches!(o, Err(RegisterError::UsedUp(_))))
        .count();
    assert_eq!((won, used_up), (1, 4), "{outcomes:?}");
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 0);
    assert_eq!(store.clusters().await.expect("clusters").len(), 1);

    let mut many = token(5);
    many.id = "efgh".into();
    store.insert_token(many.clone()).await.expect("token");
    let outcomes = race(
        (6..=8)
            .map(|n| {
                let mut r = registration(&many, &format!("c{n}"), &format!("0{n}"));
                r.claim.name = "twin".into();
                r
            })
            .collect(),
    )
    .await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    let taken = outcomes
        .iter()
        .filter(|o| matches!(o, Err(RegisterError::NameTaken { .. })))
        .count();
    assert_eq!((won, taken), (1, 2), "{outcomes:?}");
    let twins = store
        .clusters()
        .await
        .expect("clusters")
        .into_iter()
        .filter(|c| c.name == "twin")
        .count();
    assert_eq!(twins, 1);
    let uses: Vec<u32> = store
        .tokens()
        .await
        .expect("tokens")
        .iter()
        .map(|t| t.uses_left)
        .collect();
    assert_eq!(uses, [0, 4], "a refused registration spends nothing");
}

/// A store whose leader stepped down writes nothing more, and its callers are told why; the
/// next leader finds only what was stored before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_store_writes_nothing_and_says_so() {
    let stores = KubeStores::sim();
    let store = stores.fresh().await;
    let t = token(2);
    store.insert_token(t.clone()).await.expect("token");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("c1");
    stores.depose(&store).await;

    let fenced = |e: &StoreError| matches!(e, StoreError::Fenced(_));
    let joined = store.register(registration(&t, "c2", "02")).await;
    assert!(
        matches!(&joined, Err(RegisterError::Store(e)) if fenced(e)),
        "{joined:?}"
    );
    let revoked = store.revoke_cluster("c1".into(), 1_100).await;
    assert!(revoked.as_ref().is_err_and(fenced), "{revoked:?}");
    let revoked = store.revoke_token(t.id.clone()).await;
    assert!(revoked.as_ref().is_err_and(fenced), "{revoked:?}");
    let audited = store.append_audit(NewAudit::default()).await;
    assert!(audited.as_ref().is_err_and(fenced), "{audited:?}");

    let store = stores.reopen(store).await;
    let clusters: Vec<(String, Option<i64>)> = store
        .clusters()
        .await
        .expect("clusters")
        .into_iter()
        .map(|c| (c.id, c.revoked_unix))
        .collect();
    assert_eq!(clusters, [("c1".to_string(), None)]);
    let tokens = store.tokens().await.expect("tokens");
    assert_eq!((tokens[0].revoked, tokens[0].uses_left), (false, 1));
    assert_eq!(store.audit(0, 10).await.expect("audit"), []);
}

/// The identity part writes its own status fields only: a cluster's progress in plans,
/// written beside them by the plan part, survives a registration again, a state, a proposal, a
/// rename and a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_writes_leave_a_clusters_plan_entries_alone() {
    let stores = KubeStores::sim();
    let store = stores.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    store.insert_token(t.clone()).await.expect("token");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("c1");
    let api: Api<FleetCluster> = Api::namespaced_with(
        store.client().clone(),
        store.namespace(),
        &Kind::FleetCluster.api_resource(),
    );
    let entry = json!([{"plan": "p1", "order": 0, "state": "pending", "progress": {"x": 1}}]);
    api.patch_status(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"plans": entry}})),
    )
    .await
    .expect("a plan entry");

    let mut proved = registration(&t, "c1", "02");
    proved.claim.proven_serial = Some("01".into());
    store.register(proved).await.expect("proved");
    let state = ClusterState {
        agent_version: "0.2.0".into(),
        helm_version: "v3".into(),
        inventory: vec![1, 2, 3],
        release: None,
    };
    store
        .set_cluster_state("c1".into(), state)
        .await
        .expect("state");
    store
        .set_cluster_identity("c1".into(), "renamed".into(), Default::default())
        .await
        .expect("rename");
    store
        .revoke_cluster("c1".into(), 1_100)
        .await
        .expect("revoke");

    let stored = api.get("c1").await.expect("c1");
    let status = stored.status.expect("a status");
    assert_eq!(json!(status.plans), entry);
    assert_eq!(stored.spec.name, "renamed");
    assert!(status.revoked_at.is_some());
    assert_eq!(status.certificates.len(), 2);
}
