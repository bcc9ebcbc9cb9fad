//! The store conformance suite's plan contracts on the kube store over a real API server:
//! the CRDs' schemas, status subresources and CEL rules judge every object the store writes
//! (the emulator checks less). The contracts that need a refused write stay on the emulator
//! (`e2e::store_kube`): a real API server cannot be made to refuse one. The identity and audit
//! contracts join this list once their parts are built.

use skoala_e2e::kstore::KubeStores;

skoala_store::conformance_tests!(
    KubeStores::real();
    one_active_plan_rollouts_and_events_persist,
    a_write_changes_the_targets_it_names_and_no_other,
    plan_events_are_paged_by_plan_after_id_and_limit,
);
