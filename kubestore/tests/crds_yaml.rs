//! `kubestore/crds.yaml` and the coordinator chart's copy (`files/crds.yaml`, which the chart
//! installs with `store.type: kube`) are exactly what `skoala-coordinator crds` prints, so the
//! files people review, apply and install are the ones the code defines.

use std::path::{Path, PathBuf};

fn check(path: PathBuf) {
    let generated = skoala_kubestore::crd::crds_yaml();
    if std::env::var_os("SKOALA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from skoala_kubestore::crd::crds_yaml(); regenerate it with\n  \
         cargo run -p skoala-coordinator -- crds > {}\n\
         (or SKOALA_BLESS=1 cargo test -p skoala-kubestore) and review the diff",
        path.display(),
        path.display()
    );
}

#[test]
fn the_checked_in_crds_yaml_is_what_the_code_generates() {
    check(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds.yaml"));
}

#[test]
fn the_coordinator_charts_crds_are_what_the_code_generates() {
    check(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/skoala-fleet-coordinator/files/crds.yaml"),
    );
}
