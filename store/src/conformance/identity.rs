//! The contracts of [`IdentityStore`]: tokens, registration, identity, certificates, admins,
//! revocations and [`IdentityStore::clusters_version`].

use super::Factory;
use crate::fixtures::{registration, token};
use crate::{
    AdminRecord, ClusterState, Cutoffs, Identity, IdentityStore, RETRY_GRACE_SECS, RegisterError,
    Registered, ReleaseSummary, Retention,
};
use skoala_plan::ReleaseStatus;

/// A token admits as many clusters as it has uses, and what a registration spent and recorded
/// survives a restart.
pub async fn tokens_are_used_up_and_survive_reopen<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(1);
    store.insert_token(t.clone()).await.expect("insert");
    let first = store.register(registration(&t, "c1", "01")).await;
    assert!(matches!(first, Ok(Registered::New)), "{first:?}");
    let second = store.register(registration(&t, "c2", "02")).await;
    assert!(
        matches!(second, Err(RegisterError::UsedUp(_))),
        "{second:?}"
    );

    let store = f.reopen(store).await;
    let clusters = store.clusters().await.expect("clusters");
    assert_eq!(clusters.len(), 1);
    assert_eq!(
        clusters[0].labels.get("env").map(String::as_str),
        Some("prod")
    );
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 0);
    let cert = store.certificate("01".into()).await.expect("cert");
    assert_eq!(cert.map(|c| c.cluster_id), Some("c1".to_string()));
}

/// A cluster whose answer was lost registers again with the same token, spending no use; no other
/// cluster rides on it.
pub async fn the_same_cluster_may_retry_with_its_own_token<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(1);
    store.insert_token(t.clone()).await.expect("insert");
    assert!(matches!(
        store.register(registration(&t, "c1", "01")).await,
        Ok(Registered::New)
    ));
    // The answer was lost; the agent retries with a new key and the same token.
    assert!(matches!(
        store.register(registration(&t, "c1", "02")).await,
        Ok(Registered::SameToken)
    ));
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 0);
    // Another cluster cannot ride on it.
    assert!(matches!(
        store.register(registration(&t, "c2", "03")).await,
        Err(RegisterError::UsedUp(_))
    ));
    let c = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c.cert_serial, "02");
}

/// Each refusal names its reason: unknown token or secret, expired, revoked token, revoked
/// cluster.
pub async fn refusals_are_distinguished<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(5);
    store.insert_token(t.clone()).await.expect("insert");

    let mut wrong = registration(&t, "c1", "01");
    wrong.claim.token_sha256 = "other".into();
    assert!(matches!(
        store.register(wrong).await,
        Err(RegisterError::UnknownToken)
    ));

    let mut late = registration(&t, "c1", "01");
    late.claim.now_unix = 1_500;
    assert!(matches!(
        store.register(late).await,
        Err(RegisterError::Expired(_))
    ));

    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");
    assert!(
        store
            .revoke_cluster("c1".into(), 1_100)
            .await
            .expect("revoke")
    );
    assert!(matches!(
        store.register(registration(&t, "c1", "02")).await,
        Err(RegisterError::ClusterRevoked(_))
    ));

    assert!(
        store
            .revoke_token("abcd".into())
            .await
            .expect("revoke token")
    );
    assert!(matches!(
        store.register(registration(&t, "c3", "03")).await,
        Err(RegisterError::Revoked(_))
    ));
}

/// [`CertRecord::first_use_matters`](crate::CertRecord::first_use_matters) agrees with the store:
/// the same-token retry is allowed exactly inside the grace.
pub async fn a_first_use_is_recorded_exactly_while_a_same_token_retry_would_read_it<F: Factory>(
    f: &F,
) {
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    store.insert_token(t.clone()).await.expect("insert");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");
    let cert = store
        .certificate("01".into())
        .await
        .expect("cert")
        .expect("01");
    let edge = cert.issued_unix + RETRY_GRACE_SECS;
    let retry_at = |now| {
        let mut r = registration(&t, "c1", "02");
        r.claim.now_unix = now;
        r.claim
    };

    // Inside the grace the unmarked certificate lets the same token replace it: a session
    // must mark it.
    assert!(cert.first_use_matters(edge - 1));
    store
        .admit(retry_at(edge - 1))
        .await
        .expect("retry inside the grace");
    // From the edge on the retry is refused whether or not the mark exists: a session
    // need not write it.
    assert!(!cert.first_use_matters(edge));
    assert!(matches!(
        store.admit(retry_at(edge)).await,
        Err(RegisterError::Takeover(_))
    ));
}

/// A cluster with a live certificate is taken over by nobody: registering it again needs proof of
/// its current key or an operator's `rejoin`, and refused attempts write nothing.
pub async fn a_live_cluster_is_registered_again_only_with_its_key_or_an_operator<F: Factory>(
    f: &F,
) {
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    store.insert_token(t.clone()).await.expect("insert");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");

    // Another token holder, or the same token while the cluster is connected or past the
    // retry grace: refused, and nothing is written.
    let mut other = registration(&t, "c1", "02");
    other.claim.token_id = "other".into();
    let mut late = registration(&t, "c1", "02");
    late.claim.now_unix = 1_000 + RETRY_GRACE_SECS + 1;
    store
        .certificate_used("01".into(), 1_001)
        .await
        .expect("used");
    for (what, r) in [
        ("connected once", registration(&t, "c1", "02")),
        ("late", late),
    ] {
        assert!(
            matches!(
                store.admit(r.claim.clone()).await,
                Err(RegisterError::Takeover(_))
            ),
            "{what}"
        );
        assert!(
            matches!(store.register(r).await, Err(RegisterError::Takeover(_))),
            "{what}"
        );
    }
    assert!(matches!(
        store.register(other).await,
        Err(RegisterError::UnknownToken)
    ));
    let c = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c.cert_serial, "01");
    assert_eq!(store.tokens().await.expect("tokens")[0].uses_left, 4);

    // Proof of the key: allowed, and the old certificate is revoked.
    let mut proved = registration(&t, "c1", "02");
    proved.claim.proven_serial = Some("01".into());
    assert!(matches!(
        store.register(proved).await,
        Ok(Registered::Proved)
    ));
    let old = store
        .certificate("01".into())
        .await
        .expect("cert")
        .expect("01");
    assert!(old.revoked_unix.is_some());
    // A revoked certificate proves nothing.
    store
        .certificate_used("02".into(), 1_002)
        .await
        .expect("used");
    let mut stale = registration(&t, "c1", "03");
    stale.claim.proven_serial = Some("01".into());
    assert!(matches!(
        store.register(stale).await,
        Err(RegisterError::Takeover(_))
    ));

    // An operator's consent: the next registration needs no proof.
    assert!(
        store
            .allow_rejoin("c1".into(), 1_001)
            .await
            .expect("rejoin")
    );
    assert!(
        !store
            .allow_rejoin("nope".into(), 1_001)
            .await
            .expect("rejoin")
    );
    let new = store
        .certificate("02".into())
        .await
        .expect("cert")
        .expect("02");
    assert!(new.revoked_unix.is_some());
    let mut again = registration(&t, "c1", "03");
    again.claim.now_unix = 1_000 + RETRY_GRACE_SECS + 1;
    again.claim.token_id = t.id.clone();
    assert!(matches!(
        store.register(again).await,
        Ok(Registered::SameToken)
    ));
    let c = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!((c.cert_serial.as_str(), c.registered_unix), ("03", 1_000));
}

/// A registration asking for another cluster's name is refused, naming that cluster.
pub async fn names_are_unique<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(5);
    store.insert_token(t.clone()).await.expect("insert");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");
    let mut twin = registration(&t, "c2", "02");
    twin.claim.name = "name-c1".into();
    assert!(matches!(
        store.register(twin).await,
        Err(RegisterError::NameTaken { other, .. }) if other == "c1"
    ));
    assert_eq!(store.clusters().await.expect("clusters").len(), 1);
}

/// Name and labels are set by a join with a token and by an operator; proving the key
/// and a Hello only propose, and an operator's change that equals the proposal clears it.
pub async fn only_a_join_or_an_operator_sets_name_and_labels<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    store.insert_token(t.clone()).await.expect("insert");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");
    let canary = Identity {
        name: "a-first".into(),
        labels: [("ring".to_string(), "canary".to_string())].into(),
    };
    let get = || async { store.cluster("c1".into()).await.expect("get").expect("c1") };

    // Registering again proving the key: the claim is only proposed.
    let mut proved = registration(&t, "c1", "02");
    proved.claim.proven_serial = Some("01".into());
    proved.claim.name = canary.name.clone();
    proved.claim.labels = canary.labels.clone();
    assert!(matches!(
        store.register(proved).await,
        Ok(Registered::Proved)
    ));
    let c = get().await;
    assert_eq!(c.name, "name-c1");
    assert_eq!(c.labels, registration(&t, "c1", "01").claim.labels);
    assert_eq!(c.proposed.as_ref(), Some(&canary));

    store
        .propose_identity("c1".into(), None)
        .await
        .expect("clear");
    assert_eq!(get().await.proposed, None);
    store
        .propose_identity("c1".into(), Some(canary.clone()))
        .await
        .expect("propose");
    let version = store.clusters_version();

    // The operator applies it: the identity changes, the proposal is done.
    store
        .set_cluster_identity("c1".into(), canary.name.clone(), canary.labels.clone())
        .await
        .expect("set")
        .map_or(Ok(()), Err)
        .expect("the name is free");
    let c = get().await;
    assert_eq!((c.name.as_str(), &c.labels), ("a-first", &canary.labels));
    assert_eq!(c.proposed, None);
    assert!(store.clusters_version() > version, "the fleet view rereads");

    // A join an operator sanctioned (the cluster may rejoin) sets the claim's identity.
    store
        .allow_rejoin("c1".into(), 1_001)
        .await
        .expect("rejoin");
    store
        .propose_identity("c1".into(), Some(canary.clone()))
        .await
        .expect("propose");
    store
        .register(registration(&t, "c1", "03"))
        .await
        .expect("rejoin");
    let c = get().await;
    assert_eq!((c.name.as_str(), c.proposed), ("name-c1", None));
}

/// One live admin per name; revoking by name counts the live ones, and a revoked name may be
/// issued again.
pub async fn admins_are_named_unique_while_live_and_revoked_by_name<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let alice = |serial: &str| AdminRecord {
        name: "alice".into(),
        serial_hex: serial.into(),
        created_unix: 1_000,
        not_after_unix: 2_000,
        revoked_unix: None,
    };
    assert!(
        store
            .insert_admin(alice("a1"), 1_000)
            .await
            .expect("insert")
    );
    assert!(
        !store
            .insert_admin(alice("a2"), 1_000)
            .await
            .expect("insert")
    );
    assert_eq!(
        store
            .revoke_admin("alice".into(), 1_500)
            .await
            .expect("revoke"),
        1
    );
    assert_eq!(
        store
            .revoke_admin("alice".into(), 1_600)
            .await
            .expect("revoke"),
        0
    );
    let a1 = store.admin("a1".into()).await.expect("get").expect("a1");
    assert_eq!(a1.revoked_unix, Some(1_500));
    assert!(
        store
            .insert_admin(alice("a3"), 1_700)
            .await
            .expect("a new alice")
    );
    assert_eq!(store.admins().await.expect("list").len(), 2);
    assert_eq!(store.admin("nope".into()).await.expect("get"), None);
}

/// Retention lets an admin go once its certificate expired before the cutoff, revoked or not, and
/// keeps a revoked one still valid.
pub async fn retention_deletes_admins_once_their_certificate_expired_revoked_or_not<F: Factory>(
    f: &F,
) {
    let store = f.fresh().await;
    let admin = |name: &str, not_after_unix: i64| AdminRecord {
        name: name.into(),
        serial_hex: format!("{name}-serial"),
        created_unix: 1_000,
        not_after_unix,
        revoked_unix: None,
    };
    // At 10,000 s with a cutoff of 5,000 s (the window): "gone" and "gone-revoked"
    // expired before it; "recent" expired after it; "live" and "revoked" are valid.
    for (a, revoke) in [
        (admin("gone", 4_000), false),
        (admin("gone-revoked", 4_500), true),
        (admin("recent", 6_000), false),
        (admin("live", 20_000), false),
        (admin("revoked", 20_000), true),
    ] {
        let name = a.name.clone();
        assert!(store.insert_admin(a, 1_000).await.expect("insert"));
        if revoke {
            store.revoke_admin(name, 2_000).await.expect("revoke");
        }
    }
    let pruned = store
        .prune(Cutoffs {
            audit_before_ms: 0,
            events_before_ms: 0,
            certificates_expired_before_unix: 0,
            admins_expired_before_unix: 5_000,
        })
        .await
        .expect("prune");
    assert_eq!(pruned.admins, 2);
    let mut left: Vec<(String, bool)> = store
        .admins()
        .await
        .expect("list")
        .into_iter()
        .map(|a| (a.name, a.revoked_unix.is_some()))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("live".to_string(), false),
            ("recent".into(), false),
            ("revoked".into(), true)
        ],
        "a revoked certificate still valid keeps the row that refuses it"
    );
}

/// Revoking answers whether the subject exists, shows in the records, and is never undone: a
/// second revocation keeps the first time, and a revoked cluster stays listed.
pub async fn revocations_are_answered_kept_and_never_undone<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let t = token(5);
    store.insert_token(t.clone()).await.expect("insert");
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");

    assert!(!store.revoke_token("nope".into()).await.expect("revoke"));
    assert!(store.revoke_token(t.id.clone()).await.expect("revoke"));
    assert!(store.revoke_token(t.id.clone()).await.expect("again"));
    assert!(store.tokens().await.expect("tokens")[0].revoked);

    assert!(
        !store
            .revoke_cluster("nope".into(), 1_100)
            .await
            .expect("revoke")
    );
    assert!(
        store
            .revoke_cluster("c1".into(), 1_100)
            .await
            .expect("revoke")
    );
    assert!(
        store
            .revoke_cluster("c1".into(), 1_200)
            .await
            .expect("again")
    );
    let clusters = store.clusters().await.expect("clusters");
    assert_eq!(
        clusters
            .iter()
            .map(|c| (c.id.as_str(), c.revoked_unix))
            .collect::<Vec<_>>(),
        [("c1", Some(1_100))],
        "the first revocation's time, and the cluster still listed"
    );

    let store = f.reopen(store).await;
    assert!(store.tokens().await.expect("tokens")[0].revoked);
    let c1 = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c1.revoked_unix, Some(1_100));
    assert_eq!(
        store
            .revoke_admin("nobody".into(), 1_100)
            .await
            .expect("revoke"),
        0
    );
}

/// [`IdentityStore::clusters_version`] moves on every change of which clusters exist and what
/// they are called and labelled, and stays when only a cluster's state or proposal is written
/// (the fleet view rereads every row when it moves).
pub async fn clusters_version_moves_on_identity_changes_and_not_on_state<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let mut t = token(5);
    t.expires_unix = 10_000;
    store.insert_token(t.clone()).await.expect("insert");
    let mut version = store.clusters_version();
    let mut moved = |store: &F::Store, what: &str| {
        let now = store.clusters_version();
        assert_ne!(now, version, "{what} moves clusters_version");
        version = now;
    };

    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("register");
    moved(&store, "a registration");
    let mut proved = registration(&t, "c1", "02");
    proved.claim.proven_serial = Some("01".into());
    store.register(proved).await.expect("proved");
    moved(&store, "a registration again");
    store
        .set_cluster_identity("c1".into(), "renamed".into(), Default::default())
        .await
        .expect("set")
        .map_or(Ok(()), Err)
        .expect("the name is free");
    moved(&store, "a rename");
    store
        .allow_rejoin("c1".into(), 1_001)
        .await
        .expect("rejoin");
    moved(&store, "allowing a rejoin");

    let still = store.clusters_version();
    let state = ClusterState {
        agent_version: "0.2.0".into(),
        helm_version: "v3".into(),
        inventory: vec![1, 2, 3],
        release: Some(ReleaseSummary {
            chart_version: "0.20.0".into(),
            status: ReleaseStatus::PendingUpgrade,
            revision: 7,
        }),
    };
    store
        .set_cluster_state("c1".into(), state.clone())
        .await
        .expect("state");
    store
        .propose_identity(
            "c1".into(),
            Some(Identity {
                name: "proposed".into(),
                labels: Default::default(),
            }),
        )
        .await
        .expect("propose");
    store
        .certificate_used("02".into(), 1_002)
        .await
        .expect("used");
    assert_eq!(
        store.clusters_version(),
        still,
        "a state, a proposal or a first use changes nothing the fleet view shows"
    );
    let c1 = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c1.state, state, "the state was written whole");
    let reported = ClusterState {
        agent_version: "0.2.1".into(),
        ..state
    };
    store
        .report_cluster_state("c1".into(), reported.clone())
        .await
        .expect("a report");
    let c1 = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c1.state, reported, "a report is stored once it is answered");
    assert_eq!(store.clusters_version(), still, "nor does a report");

    store
        .revoke_cluster("c1".into(), 1_100)
        .await
        .expect("revoke");
    moved(&store, "a revocation");
}

/// A cluster without a live certificate (expired, or an operator allowed it to rejoin) joins
/// again with another token, which spends one of that token's uses and none of the first's.
pub async fn joining_again_with_another_token_spends_one_of_its_uses<F: Factory>(f: &F) {
    let store = f.fresh().await;
    let mut first = token(5);
    first.expires_unix = 10_000;
    let mut second = token(2);
    second.id = "efgh".into();
    second.expires_unix = 10_000;
    for t in [&first, &second] {
        store.insert_token(t.clone()).await.expect("insert");
    }
    let uses = || async {
        let mut uses: Vec<(String, u32)> = store
            .tokens()
            .await
            .expect("tokens")
            .into_iter()
            .map(|t| (t.id, t.uses_left))
            .collect();
        uses.sort();
        uses
    };
    store
        .register(registration(&first, "c1", "01"))
        .await
        .expect("register");

    // An operator allowed it to rejoin.
    store
        .allow_rejoin("c1".into(), 1_001)
        .await
        .expect("rejoin");
    let again = store.register(registration(&second, "c1", "02")).await;
    assert!(matches!(again, Ok(Registered::Again)), "{again:?}");
    assert_eq!(uses().await, [("abcd".into(), 4), ("efgh".into(), 1)]);

    // Its certificate (valid until 2,000 s) expired.
    let mut expired = registration(&second, "c1", "03");
    expired.claim.now_unix = 2_000;
    // The same token as the last registration: a retry, which spends nothing.
    let retry = store.register(expired).await;
    assert!(matches!(retry, Ok(Registered::SameToken)), "{retry:?}");
    let mut expired = registration(&first, "c1", "04");
    expired.claim.now_unix = 2_000;
    let again = store.register(expired).await;
    assert!(matches!(again, Ok(Registered::Again)), "{again:?}");
    assert_eq!(uses().await, [("abcd".into(), 3), ("efgh".into(), 1)]);
    let c1 = store.cluster("c1".into()).await.expect("get").expect("c1");
    assert_eq!(c1.cert_serial, "04");
}
