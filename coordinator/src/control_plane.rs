//! The coordinator's own cluster (the control plane, release `skoala`), listed by `clusters`
//! with `control_plane = true`.
//!
//! Its identity is the `kube-system` UID, like an agent's. It is re-read periodically so a
//! control-plane API that was down at start shows up once it answers. The `skoala` release
//! inventory comes from `skoala-upgrade`'s Helm-release-Secret reader once that lands; until
//! then the entry carries the identity and reachability only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use skoala_proto::v1::{Cluster, ClusterIdentity};

use crate::context::now_ms;

/// How often the control plane is re-read.
const REFRESH: Duration = Duration::from_secs(30);

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
            match read(&source).await {
                Ok(view) => *bg.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the control-plane cluster");
                    bg.set_connected(false);
                }
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
    cp
}

async fn client(source: &Source) -> anyhow::Result<kube::Client> {
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

async fn read(source: &Source) -> anyhow::Result<Cluster> {
    let client = client(source).await?;
    let ns: Api<Namespace> = Api::all(client);
    let kube_system = ns.get("kube-system").await?;
    let uid = kube_system
        .metadata
        .uid
        .ok_or_else(|| anyhow::anyhow!("namespace kube-system has no uid"))?;
    Ok(Cluster {
        identity: Some(ClusterIdentity {
            cluster_id: uid,
            name: "control-plane".to_string(),
            labels: Default::default(),
        }),
        control_plane: true,
        connected: true,
        last_heartbeat_unix_ms: now_ms(),
        ..Default::default()
    })
}
