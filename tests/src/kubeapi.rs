//! Speaking to an API server: a client from a kubeconfig, and real control planes
//! (`skoala_realkube`) from the binaries `scripts/install-kube.sh` built. A leaf of the testkit,
//! so the emulated tier's helpers (`fleet`, `kstore`) and the real tier's (`real`, which
//! re-exports these) can both use it without depending on each other.

use std::path::Path;

use anyhow::Context;
use skoala_realkube::{Binaries, RealCluster};

/// The binaries `scripts/install-kube.sh` built; panics with what to run when they are missing.
pub fn binaries() -> Binaries {
    match Binaries::locate() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// A fresh real cluster named `name`.
pub async fn cluster(name: &str) -> anyhow::Result<RealCluster> {
    RealCluster::start(name, &binaries())
        .await
        .with_context(|| format!("starting real cluster {name}"))
}

/// A kube client speaking as whoever `kubeconfig` names (e.g. a ServiceAccount's token).
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
