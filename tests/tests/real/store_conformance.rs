//! The kube store (`skoala_kubestore::store::KubeStore`) on a real API server: the identity
//! contracts of the store conformance suite, the audit log's, and the kube store's own
//! retention, each on a namespace of its own, the store speaking as a ServiceAccount whose Role grants only what the coordinator's
//! does for these objects (design §5.8). What the emulator cannot prove is shown here: RBAC
//! allows every request the store makes, and the real server's status subresource, merge
//! patches, label selectors on Secrets, `resourceVersion` preconditions and server-side apply
//! of log segments behave as the store relies on. The contracts that need a refused write are
//! left out: a real control plane cannot be made to refuse one.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::PolicyRule;
use skoala_e2e::kstore::{self, KubeStores};
use skoala_e2e::real;
use skoala_kubestore::crd::{self, Kind};
use skoala_store::conformance as contract;

use crate::crds::cluster_with_crds;
use crate::lease::{account, coordinator_rules};

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// The coordinator's rights on the objects the identity and audit parts use, as §5.8 lists
/// them, and its Lease's.
fn store_rules() -> Vec<PolicyRule> {
    let clusters = Kind::FleetCluster.plural();
    let mut rules = vec![
        rule(
            crd::GROUP,
            &[clusters],
            &["get", "list", "watch", "create", "patch", "update"],
        ),
        rule(
            crd::GROUP,
            &[&format!("{clusters}/status")],
            &["patch", "update"],
        ),
        rule(
            crd::GROUP,
            &[Kind::FleetLog.plural()],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            "",
            &["secrets"],
            &["get", "list", "watch", "create", "update", "delete"],
        ),
    ];
    rules.extend(coordinator_rules());
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_and_audit_contracts_hold_on_a_real_api_server_as_the_coordinators_service_account()
-> anyhow::Result<()> {
    let cluster = Arc::new(cluster_with_crds("store").await?);
    let server = Arc::clone(&cluster);
    let stores = KubeStores::given(Box::new(move |ns| {
        let cluster = Arc::clone(&server);
        Box::pin(async move {
            real::namespace(&cluster, &ns, &[])
                .await
                .expect("the store's namespace");
            let kubeconfig = account(&cluster, &ns, "coordinator", store_rules())
                .await
                .expect("the coordinator's ServiceAccount");
            real::client(&kubeconfig).await.expect("a client")
        })
    }));

    contract::tokens_are_used_up_and_survive_reopen(&stores).await;
    contract::the_same_cluster_may_retry_with_its_own_token(&stores).await;
    contract::refusals_are_distinguished(&stores).await;
    contract::a_first_use_is_recorded_exactly_while_a_same_token_retry_would_read_it(&stores).await;
    contract::a_live_cluster_is_registered_again_only_with_its_key_or_an_operator(&stores).await;
    contract::names_are_unique(&stores).await;
    contract::only_a_join_or_an_operator_sets_name_and_labels(&stores).await;
    contract::admins_are_named_unique_while_live_and_revoked_by_name(&stores).await;
    contract::retention_deletes_admins_once_their_certificate_expired_revoked_or_not(&stores).await;
    contract::revocations_are_answered_kept_and_never_undone(&stores).await;
    contract::clusters_version_moves_on_identity_changes_and_not_on_state(&stores).await;
    contract::joining_again_with_another_token_spends_one_of_its_uses(&stores).await;
    contract::audit_ids_increase_and_pages_follow_after_id_and_limit(&stores).await;
    kstore::retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current(
        &stores,
    )
    .await;
    Ok(())
}
