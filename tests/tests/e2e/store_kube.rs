//! The store conformance suite on the kube store over the emulator: every contract the
//! coordinator relies on, kept by fleet state on an API server as it is by SQLite. Then what
//! the kube store does its own way: retention by whole log segments and certificate records
//! within their cluster.

use skoala_e2e::kstore::KubeStores;
use skoala_store::conformance::Factory;
use skoala_store::fixtures::{registration, token};
use skoala_store::{
    AuditLog, CertRecord, Cutoffs, IdentityStore, NewAudit, RegisterError, Registered, Retention,
};

skoala_store::conformance_tests!(KubeStores::sim());

/// An audit entry whose JSON line is about 16 KiB, so 16 of them fill a segment.
fn bulky(n: usize) -> NewAudit {
    NewAudit {
        kind: "admin.created".into(),
        peer: "bootstrap".into(),
        detail: format!("{n:>16000}"),
        ..NewAudit::default()
    }
}

/// Retention deletes sealed audit segments past the cutoff, counting their entries, and keeps
/// the newest, so ids go on after a restart; of a cluster's certificate records it drops the
/// expired ones but the current, which the cluster's record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current() {
    let stores = KubeStores::sim();
    let store = stores.fresh().await;
    // Appended at once, so the group commit stores them in a few writes: one sealed segment,
    // the rest in the open one.
    let appends: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(bulky(n)).await })
        })
        .collect();
    for a in appends {
        a.await.expect("the task").expect("appended");
    }

    let t = token(2);
    store.insert_token(t.clone()).await.expect("token");
    // c1 renewed: its first certificate expired at 2,000 s, the renewal runs until far ahead.
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("c1");
    store
        .record_certificate(CertRecord {
            serial_hex: "02".into(),
            not_after_unix: 1_000_000_000,
            ..registration(&t, "c1", "02").cert
        })
        .await
        .expect("renewal");
    // c2's only certificate expired too.
    store
        .register(registration(&t, "c2", "03"))
        .await
        .expect("c2");

    let pruned = store
        .prune(Cutoffs {
            audit_before_ms: i64::MAX,
            events_before_ms: 0,
            certificates_expired_before_unix: 1_000_000,
            admins_expired_before_unix: 0,
        })
        .await
        .expect("prune");
    let left: Vec<i64> = store
        .audit(0, 100)
        .await
        .expect("audit")
        .iter()
        .map(|a| a.id)
        .collect();
    assert!(
        pruned.audit > 0 && left.len() + pruned.audit == 20,
        "{pruned:?} {left:?}"
    );
    assert_eq!(
        left,
        ((pruned.audit as i64 + 1)..=20).collect::<Vec<_>>(),
        "the newest segment stays whole"
    );
    assert_eq!(pruned.certificates, 1);
    assert_eq!(store.certificate("01".into()).await.expect("01"), None);
    for (serial, cluster) in [("02", "c1"), ("03", "c2")] {
        let kept = store.certificate(serial.into()).await.expect("cert");
        assert_eq!(kept.map(|c| c.cluster_id), Some(cluster.to_string()));
    }

    let store = stores.reopen(store).await;
    let next = store
        .append_audit(bulky(20))
        .await
        .expect("after a restart");
    assert_eq!(next, 21, "ids go on after the last stored one");
    let c1 = store.cluster("c1".into()).await.expect("c1").expect("c1");
    assert_eq!(c1.cert_serial, "02");
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
