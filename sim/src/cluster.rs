//! One emulated cluster: its API state, HTTPS listener, controllers, kubeconfig and fault
//! injector, started in-process and stopped when the handle is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Behaviour, Target, object};
use crate::faults::Faults;
use crate::server::{self, Ctx};
use crate::store::Write;
use crate::{SimError, controllers, tls, util};

/// How to start a cluster. `ClusterConfig::new(name)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Cluster name: used in the kubeconfig (cluster, context and user names).
    pub name: String,
    /// Address to listen on (default `127.0.0.1:0`: any free loopback port).
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS (the bearer token is still required).
    pub insecure_http: bool,
    /// How long after creation a workload's pods become ready (default 200 ms).
    pub readiness_delay: Duration,
    /// Containers whose image contains this string never become ready (default `:broken`,
    /// i.e. the tag `broken`), like an image that cannot be pulled.
    pub never_ready_image: String,
}

impl ClusterConfig {
    /// The defaults for a cluster called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ClusterConfig {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            insecure_http: false,
            readiness_delay: Duration::from_millis(200),
            never_ready_image: ":broken".into(),
        }
    }

    /// Listens on `addr` instead of any free loopback port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Plain HTTP (`true`) or HTTPS.
    pub fn insecure_http(mut self, yes: bool) -> Self {
        self.insecure_http = yes;
        self
    }

    /// How long after creation a workload's pods become ready.
    pub fn readiness_delay(mut self, d: Duration) -> Self {
        self.readiness_delay = d;
        self
    }

    /// Images containing `pattern` never become ready.
    pub fn never_ready_image(mut self, pattern: impl Into<String>) -> Self {
        self.never_ready_image = pattern.into();
        self
    }
}

/// A running emulated cluster. Dropping it stops the server and its controllers.
pub struct Cluster {
    state: Arc<ApiState>,
    addr: SocketAddr,
    url: String,
    kubeconfig_yaml: String,
    kubeconfig_path: PathBuf,
    kube_system_uid: String,
    faults: Faults,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Binds, bootstraps the built-in namespaces and starts serving.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, SimError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| SimError::Bind(config.listen, e))?;
        Self::serve(config, listener)
    }

    /// Like [`Cluster::start`] on a socket bound already (`config.listen` is ignored), e.g. one
    /// a test bound inside another network namespace: the server stays in this process, the
    /// cluster is reachable only where the socket lives.
    pub async fn start_on(
        config: ClusterConfig,
        listener: std::net::TcpListener,
    ) -> Result<Cluster, SimError> {
        listener.set_nonblocking(true).map_err(SimError::Io)?;
        let listener = TcpListener::from_std(listener).map_err(SimError::Io)?;
        Self::serve(config, listener)
    }

    fn serve(config: ClusterConfig, listener: TcpListener) -> Result<Cluster, SimError> {
        let addr = listener.local_addr().map_err(SimError::Io)?;
        let host = match addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let (tls, scheme) = if config.insecure_http {
            (None, "http")
        } else {
            (Some(tls::generate(&config.name, addr.ip())?), "https")
        };
        let url = format!("{scheme}://{host}:{}", addr.port());
        let state = ApiState::new(
            &config.name,
            Behaviour {
                readiness_delay: config.readiness_delay,
                never_ready_image: config.never_ready_image.clone(),
            },
        );
        if let Ok(mut a) = state.server_address.lock() {
            *a = format!("{host}:{}", addr.port());
        }
        let kube_system_uid = bootstrap(&state)?;
        let token = util::random_token();
        let kubeconfig_yaml = kubeconfig(
            &config.name,
            &url,
            tls.as_ref().map(|t| t.ca_pem.as_str()),
            &token,
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("skoala-sim-{}-", sanitize(&config.name)))
            .tempdir()
            .map_err(SimError::Io)?;
        let kubeconfig_path = dir.path().join("kubeconfig");
        write_private(&kubeconfig_path, &kubeconfig_yaml)?;

        let faults = Faults::new();
        let shutdown = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            faults: faults.clone(),
            token,
        });
        tokio::spawn(server::run(
            listener,
            tls.map(|t| t.config),
            ctx,
            shutdown.clone(),
        ));
        controllers::spawn(state.clone(), shutdown.clone());
        tracing::info!(cluster = %config.name, %url, "emulated cluster started");
        Ok(Cluster {
            state,
            addr,
            url,
            kubeconfig_yaml,
            kubeconfig_path,
            kube_system_uid,
            faults,
            shutdown,
            _dir: dir,
        })
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The address it listens on (the actual port when it was asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (or `http://` with `insecure_http`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig file (server URL, CA data, bearer token) in a temp dir this handle owns.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig's contents, as [`Cluster::kubeconfig_path`] holds them.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The UID of the `kube-system` namespace (random per cluster, stable for its lifetime).
    pub fn kube_system_uid(&self) -> &str {
        &self.kube_system_uid
    }

    /// The fault injector of this cluster.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A kube-rs client for this cluster (built from the kubeconfig, TLS and token included).
    pub async fn client(&self) -> Result<kube::Client, SimError> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml)
            .map_err(|e| SimError::Kube(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| SimError::Kube(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| SimError::Kube(e.to_string()))
    }

    /// Reads an object straight from the store (tests use it to check server-side state).
    pub fn get_object(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        self.state.store.get(group, plural, namespace, name)
    }

    /// Stops serving (same as dropping the handle).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts `n` clusters named `{prefix}-1` ... `{prefix}-n` with default settings.
pub async fn start_clusters(n: usize, name_prefix: &str) -> Result<Vec<Cluster>, SimError> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        out.push(Cluster::start(ClusterConfig::new(format!("{name_prefix}-{i}"))).await?);
    }
    Ok(out)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes a file readable only by its owner (helm warns about group-readable kubeconfigs).
pub fn write_private(path: &Path, content: &str) -> Result<(), SimError> {
    skoala_support::fs::write_private(path, content.as_bytes()).map_err(SimError::Io)
}

/// The kubeconfig for a cluster: one cluster, one token user, one context (namespace default).
pub fn kubeconfig(name: &str, url: &str, ca_pem: Option<&str>, token: &str) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\n{ca}contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n    namespace: default\ncurrent-context: {name}\nusers:\n- name: {name}-admin\n  user:\n    token: {token}\npreferences: {{}}\n"
    )
}

/// Creates what every cluster has: the system namespaces and one ready node. Returns the
/// `kube-system` UID.
fn bootstrap(state: &ApiState) -> Result<String, SimError> {
    let create = |plural: &str, obj: Value| -> Result<Value, SimError> {
        let rt = state
            .registry
            .lookup("", "v1", plural)
            .ok_or_else(|| SimError::Bootstrap(format!("{plural} not registered")))?;
        let target = Target {
            rt,
            namespace: None,
            name: None,
            subresource: None,
        };
        let obj = object::prepare_create(&target, obj, &Default::default())
            .map_err(|e| SimError::Bootstrap(e.to_string()))?;
        let name = object::name_of(&obj);
        state
            .store
            .write("", plural, "", &name, |_| Ok(Write::Create(obj)))
            .map_err(|e| SimError::Bootstrap(e.to_string()))?
            .ok_or_else(|| SimError::Bootstrap(format!("{plural}/{name} not stored")))
    };
    let mut kube_system_uid = String::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = create("namespaces", json!({"metadata": {"name": ns}}))?;
        if ns == "kube-system" {
            kube_system_uid = obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
    }
    create(
        "nodes",
        json!({
            "metadata": {"name": "sim-node-1", "labels": {"kubernetes.io/hostname": "sim-node-1", "kubernetes.io/os": "linux"}},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": crate::api::discovery::GIT_VERSION, "architecture": "amd64", "operatingSystem": "linux"},
            },
        }),
    )?;
    Ok(kube_system_uid)
}
