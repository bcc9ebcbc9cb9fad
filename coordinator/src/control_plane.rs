//! The coordinator's own cluster (the control plane, release `skoala`), listed by `clusters`
//! with `control_plane = true`.
//!
//! Its identity is the `kube-system` UID, like an agent's; its inventory is read natively from
//! Helm's release Secrets with `skoala-upgrade`'s reader and kept current by its watch, exactly
//! as an agent does for `skoala-init`. A control-plane API that is down at start is retried
//! until it answers.

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skoala_proto::v1::{Cluster, ClusterIdentity};
use skoala_upgrade::inventory::{InventoryWatch, ReleaseInfo, TrackedRelease, kube_system_uid};

use crate::clock::now_ms;

/// How long to wait before retrying an unreachable control plane.
const RETRY: Duration = Duration::from_secs(10);

/// Where to find the control-plane API.
#[derive(Debug, Clone)]
pub enum Source {
    Kubeconfig(PathBuf),
    InCluster,
}

impl Source {
    /// `--kubeconfig` if given, else in-cluster config when running in a pod, else none.
    pub fn detect(kubeconfig: Option<PathBuf>) -> Option<Self> {
        match kubeconfig {
            Some(p) => Some(Source::Kubeconfig(p)),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                Some(Source::InCluster)
            }
            None => None,
        }
    }
}

/// The last observation of the control plane.
#[derive(Default)]
pub struct ControlPlane {
    view: Mutex<Option<Cluster>>,
}

impl ControlPlane {
    /// A control plane seen as `view`, with nothing watching it (tests of what reads it).
    #[cfg(test)]
    pub fn showing(view: Cluster) -> Self {
        ControlPlane {
            view: Mutex::new(Some(view)),
        }
    }

    /// What `clusters` shows; `None` until the first successful read.
    pub fn view(&self) -> Option<Cluster> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_connected(&self, connected: bool) {
        if let Some(v) = self.view.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            v.connected = connected;
        }
    }
}

/// Starts watching the control plane in the background.
pub fn start(source: Source) -> Arc<ControlPlane> {
    let cp = Arc::new(ControlPlane::default());
    let bg = cp.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&source, &bg).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the control-plane cluster; retrying");
                bg.set_connected(false);
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    cp
}

/// Reads the identity, then publishes every inventory change until the watch ends.
async fn follow(source: &Source, cp: &ControlPlane) -> anyhow::Result<()> {
    let client = client(source).await?;
    let uid = kube_system_uid(&client).await?;
    let watch = InventoryWatch::start(client, vec![TrackedRelease::skoala()]).await?;
    let mut rx = watch.subscribe();
    loop {
        let releases = rx.borrow_and_update().clone();
        *cp.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view(&uid, &releases));
        if rx.changed().await.is_err() {
            anyhow::bail!("the inventory watch ended");
        }
    }
}

/// A client for the control-plane cluster.
/// A client of the control-plane cluster for `--store kube`: `kubeconfig`, else `KUBECONFIG`'s,
/// else the pod's own.
pub(crate) async fn connect(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let source = Source::detect(kubeconfig).context(
        "--store kube keeps the fleet on the control-plane cluster: give --kubeconfig, set \
         KUBECONFIG, or run in a pod",
    )?;
    client(&source).await
}

pub(crate) async fn client(source: &Source) -> anyhow::Result<kube::Client> {
    let config = match source {
        Source::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        Source::InCluster => kube::Config::incluster()?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn view(uid: &str, releases: &[ReleaseInfo]) -> Cluster {
    Cluster {
        identity: Some(ClusterIdentity {
            cluster_id: uid.to_string(),
            name: "control-plane".to_string(),
            labels: Default::default(),
        }),
        control_plane: true,
        connected: true,
        last_heartbeat_unix_ms: now_ms(),
        releases: skoala_upgrade::wire::inventory(releases).releases,
        ..Default::default()
    }
}
