//! The library API against a running cluster, through kube-rs: start-up, kubeconfig, identity,
//! listen addresses.

#![forbid(unsafe_code)]

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use skoala_sim::{Cluster, ClusterConfig, SimError};

#[tokio::test]
async fn kubeconfig_file_and_client_reach_the_cluster() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::start(ClusterConfig::new("lib-1")).await?;
    let text = std::fs::read_to_string(cluster.kubeconfig_path())?;
    assert_eq!(text, cluster.kubeconfig_yaml());
    assert!(text.contains("certificate-authority-data:"));
    assert!(text.contains(&format!("server: {}", cluster.url())));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cluster.kubeconfig_path())?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "kubeconfig holds a token: owner-only");
    }
    let namespaces: Api<Namespace> = Api::all(cluster.client().await?);
    let ks = namespaces.get("kube-system").await?;
    assert_eq!(ks.metadata.uid.as_deref(), Some(cluster.kube_system_uid()));
    Ok(())
}

#[tokio::test]
async fn ipv6_loopback_cluster_is_reachable() -> Result<(), Box<dyn std::error::Error>> {
    let config = ClusterConfig::new("lib-v6").listen("[::1]:0".parse()?);
    let cluster = match Cluster::start(config).await {
        Ok(c) => c,
        // A machine without IPv6 loopback cannot bind [::1]; that is not the emulator's fault.
        Err(SimError::Bind(..)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    assert!(
        cluster.url().starts_with("https://[::1]:"),
        "{}",
        cluster.url()
    );
    let namespaces: Api<Namespace> = Api::all(cluster.client().await?);
    assert!(namespaces.get_opt("kube-system").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn dropping_the_handle_stops_serving() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::start(ClusterConfig::new("lib-drop")).await?;
    let addr = cluster.addr();
    drop(cluster);
    // The listener is closed once the accept loop has seen the cancellation.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return Ok(());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after drop"
        );
        tokio::task::yield_now().await;
    }
}
