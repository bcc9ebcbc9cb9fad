//! The store conformance suite's contracts that need a refused write, on the kube store over a
//! real API server: a refused write is refused by admission (a `ValidatingAdmissionPolicy`,
//! `KubeStores::refuse`), as a cluster owner's policy would, and the CRDs' schemas and rules
//! judge what the store writes around it. The other contracts run in `store_conformance.rs`,
//! as the coordinator's ServiceAccount.

use skoala_e2e::kstore::KubeStores;

skoala_store::conformance_tests!(
    KubeStores::real();
    a_refused_write_stores_none_of_its_parts_and_keeps_the_earlier_ones,
    every_start_named_is_stored_and_a_refused_one_is_not,
    a_plan_is_stored_with_its_events_or_not_at_all,
);
