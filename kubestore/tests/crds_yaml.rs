//! `kubestore/crds.yaml` is exactly what `skoala-coordinator crds` prints, so the file people
//! review and apply is the one the code defines.

use std::path::Path;

#[test]
fn the_checked_in_crds_yaml_is_what_the_code_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds.yaml");
    let generated = skoala_kubestore::crd::crds_yaml();
    if std::env::var_os("SKOALA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from skoala_kubestore::crd::crds_yaml(); regenerate it with\n  \
         cargo run -p skoala-coordinator -- crds > kubestore/crds.yaml\n\
         (or SKOALA_BLESS=1 cargo test -p skoala-kubestore) and review the diff",
        path.display()
    );
}
