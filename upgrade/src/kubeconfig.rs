//! The kubeconfig file helm is given. The executor always passes `--kubeconfig` (never helm's
//! own in-cluster fallback), so that helm and kube-rs provably talk to the same cluster as the
//! same identity; in a pod that file is written for the pod's ServiceAccount.

use std::path::{Path, PathBuf};

/// Where Kubernetes mounts a pod's ServiceAccount token and the cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Why no kubeconfig could be found or written.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Writing the in-cluster kubeconfig failed.
    #[error("cannot write a kubeconfig for helm at {path}")]
    Write {
        /// Where it was to go.
        path: PathBuf,
        /// Why it could not.
        #[source]
        source: std::io::Error,
    },
    /// Not in a pod and nothing configured.
    #[error(
        "no kubeconfig for helm (not in a pod, no --kubeconfig, no KUBECONFIG, no ~/.kube/config)"
    )]
    None,
}

/// The kubeconfig for helm: `explicit`, else the first file of `KUBECONFIG`, else (in a pod)
/// one written for the pod's ServiceAccount by [`in_cluster`], else `~/.kube/config`.
pub fn for_helm(explicit: Option<&Path>) -> Result<PathBuf, KubeconfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    if let Some(path) = in_cluster()? {
        return Ok(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.map(|h| h.join(".kube/config")) {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(KubeconfigError::None),
    }
}

/// In a pod (`KUBERNETES_SERVICE_HOST`/`_PORT` set and a ServiceAccount token mounted): writes
/// a kubeconfig for the pod's ServiceAccount into the temp dir and returns its path; `None`
/// elsewhere. The kubeconfig names the token *file*, so helm (client-go) re-reads the
/// projected token as the kubelet rotates it.
pub fn in_cluster() -> Result<Option<PathBuf>, KubeconfigError> {
    let sa = Path::new(SERVICE_ACCOUNT_DIR);
    let (Ok(host), Ok(port)) = (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Ok(None);
    };
    if !sa.join("token").is_file() {
        return Ok(None);
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let yaml = format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: in-cluster
  cluster:
    server: https://{host}:{port}
    certificate-authority: {sa}/ca.crt
users:
- name: service-account
  user:
    tokenFile: {sa}/token
contexts:
- name: in-cluster
  context:
    cluster: in-cluster
    user: service-account
current-context: in-cluster
"#,
        sa = SERVICE_ACCOUNT_DIR
    );
    // Per process: two daemons sharing a temp dir must not overwrite each other's file.
    let path = std::env::temp_dir().join(format!(
        "skoala-in-cluster-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, yaml).map_err(|source| KubeconfigError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}
