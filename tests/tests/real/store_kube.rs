//! The store conformance suite's plan contracts on the kube store over a real API server:
//! the CRDs' schemas, status subresources and CEL rules judge every object the store writes
//! (the emulator checks less), and a refused write is refused by admission (a
//! `ValidatingAdmissionPolicy`, `KubeStores::refuse`), as a cluster owner's policy would. The
//! identity and audit contracts join this list once their parts are built.

use skoala_e2e::kstore::KubeStores;

skoala_store::conformance_tests!(
    KubeStores::real();
    one_active_plan_rollouts_and_events_persist,
    a_write_changes_the_targets_it_names_and_no_other,
    plan_events_are_paged_by_plan_after_id_and_limit,
    a_refused_write_stores_none_of_its_parts_and_keeps_the_earlier_ones,
    a_plan_is_stored_with_its_events_or_not_at_all,
);
