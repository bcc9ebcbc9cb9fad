//! The store conformance suite on the kube store over the emulator: every contract the
//! coordinator relies on, kept by fleet state on an API server as it is by SQLite.

use skoala_e2e::kstore::KubeStores;

skoala_store::conformance_tests!(KubeStores::sim());
