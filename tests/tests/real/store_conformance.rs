//! The kube store (`skoala_kubestore::store::KubeStore`) on a real API server: every contract
//! of the store conformance suite but the two that need a refused write (`store_kube.rs` runs
//! those, refused by an admission policy), and the kube store's own retention, each on a namespace of its own, the store speaking as a ServiceAccount whose Role grants only what the coordinator's
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
use skoala_realkube::RealCluster;
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

/// The coordinator's rights on the fleet's objects, as the chart's Role on the kube store
/// grants them (§5.8), and its Lease's.
fn store_rules() -> Vec<PolicyRule> {
    let (clusters, plans) = (Kind::FleetCluster.plural(), Kind::UpgradePlan.plural());
    let mut rules = vec![
        rule(
            crd::GROUP,
            &[plans],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            crd::GROUP,
            &[clusters],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        rule(
            crd::GROUP,
            &[&format!("{clusters}/status"), &format!("{plans}/status")],
            &["update", "patch"],
        ),
        rule(
            crd::GROUP,
            &[Kind::FleetLog.plural()],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            "",
            &["secrets", "configmaps"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
    ];
    rules.extend(coordinator_rules());
    rules
}

/// Stores on `cluster`, each in a namespace of its own, speaking as the coordinator's
/// ServiceAccount with only [`store_rules`].
pub(crate) fn coordinators_stores(cluster: &Arc<RealCluster>) -> KubeStores {
    let server = Arc::clone(cluster);
    KubeStores::given(Box::new(move |ns| {
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
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_contracts_hold_on_a_real_api_server_as_the_coordinators_service_account()
-> anyhow::Result<()> {
    let cluster = Arc::new(cluster_with_crds("store").await?);
    let stores = coordinators_stores(&cluster);

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
    contract::one_active_plan_rollouts_and_events_persist(&stores).await;
    contract::a_write_changes_the_targets_it_names_and_no_other(&stores).await;
    contract::plan_events_are_paged_by_plan_after_id_and_limit(&stores).await;
    contract::retention_keeps_recent_rows_and_the_active_plans_whole_history(&stores).await;
    contract::a_migration_copies_every_record_verbatim_and_ids_continue(&stores).await;
    contract::a_migration_into_a_store_that_holds_records_is_refused(&stores).await;
    kstore::retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current(
        &stores,
    )
    .await;
    kstore::plan_objects_carry_the_leaders_decision_its_finalizer_and_what_it_handled(&stores)
        .await;
    Ok(())
}
