//! A Helm chart repository server (`index.yaml` + `.tgz`) built from chart source folders.
//!
//! Placeholder: the real implementation lands with the test charts.

use std::net::SocketAddr;
use std::path::Path;

/// A running chart repository; dropping it stops the server.
pub struct ChartRepo {
    /// The address the server is bound to.
    pub addr: SocketAddr,
}

impl ChartRepo {
    /// Base URL to pass to `helm repo add`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Packages every chart version found under `charts_dir` and serves them on `listen`.
pub async fn serve(charts_dir: &Path, listen: SocketAddr) -> std::io::Result<ChartRepo> {
    let _ = (charts_dir, listen);
    Err(std::io::Error::other("chart repository not implemented yet"))
}
