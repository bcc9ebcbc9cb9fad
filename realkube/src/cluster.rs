//! One real cluster: its processes in start order, readiness, kubeconfigs and teardown.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki::{Pki, SERVICE_RANGE, write_private};
use crate::process::{Proc, rss_bytes, tail};
use crate::{Binaries, Error, Result, io};

/// Upper bound for a cluster to become ready on a loaded 2-core machine; a bound, not an
/// expected duration.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How kwok's fake nodes renew their Lease; the controller-manager's grace period is twice it,
/// so a loaded machine does not mark the node NotReady and evict the pods under a test.
const NODE_LEASE_SECONDS: u64 = 40;

/// Knobs a test may turn; [`Default`] is a cluster as users have one.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often the API server compacts etcd (upstream default: 5 min). Shorter makes an old
    /// resourceVersion expire (410 Gone) within a test.
    pub etcd_compaction_interval: Duration,
    /// Where the cluster's files go; `None`: a temporary folder removed on drop.
    pub dir: Option<PathBuf>,
    /// An audit policy for the API server (`--audit-policy-file`); the events go as JSON lines
    /// to [`RealCluster::audit_log`]. Benchmarks count the API writes of one identity with it.
    pub audit_policy: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            etcd_compaction_interval: Duration::from_secs(300),
            dir: None,
            audit_policy: None,
        }
    }
}

/// A running cluster. Dropping it kills every process (and removes a temporary folder).
pub struct RealCluster {
    name: String,
    url: String,
    pki: Pki,
    admin_kubeconfig: PathBuf,
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    bins: Binaries,
    dir: PathBuf,
    /// Keeps a temporary folder alive as long as the cluster.
    _temp: Option<tempfile::TempDir>,
    started_in: Duration,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A free port on 127.0.0.1. The port is released before the component binds it; another
/// process could take it in between, which shows as the component exiting with "address in
/// use" (an error, never a wrong cluster).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("reserving a port"))?;
    Ok(l.local_addr().map_err(io("reading a port"))?.port())
}

/// A kubeconfig for `server` trusting `ca_pem`, as `user`: either a client certificate and key
/// (PEM) or a bearer token.
pub fn kubeconfig_yaml(name: &str, server: &str, ca_pem: &str, user: &User) -> String {
    use base64_data as b64;
    let auth = match user {
        User::Certificate { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        User::Token(token) => format!("    token: {token}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n{auth}contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\n",
        ca = b64(ca_pem),
    )
}

/// Who a kubeconfig speaks as.
pub enum User {
    /// An x509 client certificate (the admin, the controllers).
    Certificate {
        /// The client certificate, PEM.
        cert_pem: String,
        /// Its private key, PEM.
        key_pem: String,
    },
    /// A bearer token (a ServiceAccount's, from the TokenRequest API).
    Token(String),
}

fn base64_data(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn audit_log_path(dir: &Path) -> PathBuf {
    dir.join("audit.log")
}

/// The API server's flags for `policy`: JSON lines to [`audit_log_path`], written before each
/// response (the log backend's blocking mode, so a count read after a request includes it),
/// and rotated only past 1 GiB so a benchmark's log stays one file.
fn audit_args(policy: &Path, dir: &Path) -> Vec<String> {
    vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit_log_path(dir).display()),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
        "--audit-log-maxsize=1024".to_string(),
    ]
}

impl RealCluster {
    /// Starts a cluster as users have one (see [`Options::default`]).
    pub async fn start(name: &str, bins: &Binaries) -> Result<RealCluster> {
        Self::start_with(name, bins, Options::default()).await
    }

    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, creates
    /// one fake node, and returns once `/readyz` answers `ok`, the node is Ready and the
    /// controller-manager has made the `default` ServiceAccount.
    pub async fn start_with(name: &str, bins: &Binaries, opts: Options) -> Result<RealCluster> {
        let began = Instant::now();
        let (dir, temp) = match opts.dir {
            Some(d) => {
                std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("realkube-{name}-"))
                    .tempdir()
                    .map_err(io("creating the cluster's folder"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let pki = Pki::generate(name, &dir)?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let url = format!("https://127.0.0.1:{api_port}");

        let kc = |file: &str, cert: &crate::pki::ClientCert| -> Result<PathBuf> {
            write_private(
                &dir,
                file,
                &kubeconfig_yaml(
                    name,
                    &url,
                    &pki.ca_pem,
                    &User::Certificate {
                        cert_pem: cert.cert_pem.clone(),
                        key_pem: cert.key_pem.clone(),
                    },
                ),
            )
        };
        let admin_kubeconfig = kc("admin.kubeconfig", &pki.admin)?;
        let kcm_kubeconfig = kc("controller-manager.kubeconfig", &pki.controller_manager)?;
        let sched_kubeconfig = kc("scheduler.kubeconfig", &pki.scheduler)?;

        let mut this = RealCluster {
            name: name.to_string(),
            url: url.clone(),
            admin_kubeconfig,
            procs: Vec::new(),
            bins: bins.clone(),
            dir: dir.clone(),
            _temp: temp,
            started_in: Duration::ZERO,
            pki,
        };
        let s = |p: &Path| p.display().to_string();

        // etcd: loopback only; fsync off, as the cluster lives for one test.
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            "--name=etcd".to_string(),
            format!("--data-dir={}", s(&dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=etcd={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        this.procs
            .push(Proc::spawn("etcd", &bins.bin("etcd"), &etcd_args, &dir)?);
        this.wait_tcp("etcd", SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port)))
            .await?;

        let (serving_cert, serving_key, ca_cert, sa_key, sa_pub) = (
            this.pki.serving_cert.clone(),
            this.pki.serving_key.clone(),
            this.pki.ca_cert.clone(),
            this.pki.service_account_key.clone(),
            this.pki.service_account_pub.clone(),
        );
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!(
                "--etcd-compaction-interval={}s",
                opts.etcd_compaction_interval.as_secs().max(1)
            ),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".to_string(),
            // 1.37 refuses a loopback advertise address for the endpoint reconciler; nothing
            // dials the `kubernetes` Service here anyway.
            "--endpoint-reconciler-type=none".to_string(),
            format!("--cert-dir={}", s(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", s(&serving_cert)),
            format!("--tls-private-key-file={}", s(&serving_key)),
            format!("--client-ca-file={}", s(&ca_cert)),
            "--authorization-mode=RBAC".to_string(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", s(&sa_pub)),
            format!("--service-account-signing-key-file={}", s(&sa_key)),
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
            "--v=0".to_string(),
        ];
        if let Some(policy) = &opts.audit_policy {
            api_args.extend(audit_args(policy, &dir));
        }
        this.procs.push(Proc::spawn(
            "kube-apiserver",
            &bins.bin("kube-apiserver"),
            &api_args,
            &dir,
        )?);
        this.wait_readyz().await?;

        let kcm_args = vec![
            format!("--kubeconfig={}", s(&kcm_kubeconfig)),
            format!("--authentication-kubeconfig={}", s(&kcm_kubeconfig)),
            format!("--authorization-kubeconfig={}", s(&kcm_kubeconfig)),
            "--bind-address=127.0.0.1".to_string(),
            "--secure-port=0".to_string(),
            "--leader-elect=false".to_string(),
            format!("--root-ca-file={}", s(&ca_cert)),
            format!("--service-account-private-key-file={}", s(&sa_key)),
            "--use-service-account-credentials=true".to_string(),
            format!("--node-monitor-grace-period={}s", NODE_LEASE_SECONDS * 2),
            "--profiling=false".to_string(),
        ];
        this.procs.push(Proc::spawn(
            "kube-controller-manager",
            &bins.bin("kube-controller-manager"),
            &kcm_args,
            &dir,
        )?);
        let sched_args = vec![
            format!("--kubeconfig={}", s(&sched_kubeconfig)),
            format!("--authentication-kubeconfig={}", s(&sched_kubeconfig)),
            format!("--authorization-kubeconfig={}", s(&sched_kubeconfig)),
            "--bind-address=127.0.0.1".to_string(),
            "--secure-port=0".to_string(),
            "--leader-elect=false".to_string(),
            "--profiling=false".to_string(),
        ];
        this.procs.push(Proc::spawn(
            "kube-scheduler",
            &bins.bin("kube-scheduler"),
            &sched_args,
            &dir,
        )?);
        let kwok_args = vec![
            format!("--kubeconfig={}", s(&this.admin_kubeconfig)),
            format!("--config={}", s(&bins.kwok_stages())),
            "--manage-all-nodes=true".to_string(),
            format!("--node-lease-duration-seconds={NODE_LEASE_SECONDS}"),
            format!("--server-address=127.0.0.1:{}", free_port()?),
        ];
        this.procs
            .push(Proc::spawn("kwok", &bins.bin("kwok"), &kwok_args, &dir)?);

        this.create_node().await?;
        this.wait_node_ready().await?;
        this.wait_default_service_account("default").await?;
        this.started_in = began.elapsed();
        tracing::info!(cluster = %this.name, url = %this.url, started_in = ?this.started_in, "real cluster ready");
        Ok(this)
    }

    /// The cluster's name (also the kubeconfig's cluster and context name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }

    /// The cluster CA (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The CA's file, as a pod finds it in its ServiceAccount folder.
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// A kubeconfig with `system:masters` rights: for the test's own setup and checks, never
    /// for our components.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The cluster's folder (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the API server writes audit events when started with [`Options::audit_policy`].
    pub fn audit_log(&self) -> PathBuf {
        audit_log_path(&self.dir)
    }

    /// How long [`RealCluster::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.admin_kubeconfig).await
    }

    /// The uid of `kube-system`, the identity our agents register with.
    pub async fn kube_system_uid(&self) -> Result<String> {
        let ns: Api<Namespace> = Api::all(self.client().await?);
        let obj = ns.get("kube-system").await.map_err(|source| Error::Kube {
            what: "reading namespace kube-system".into(),
            source,
        })?;
        Ok(obj.metadata.uid.unwrap_or_default())
    }

    /// A token for the ServiceAccount `namespace/name` from the TokenRequest API (what a pod of
    /// that ServiceAccount gets), valid for a day.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let out = self
            .kubectl(&["create", "token", name, "-n", namespace, "--duration=24h"])
            .await?;
        Ok(out.trim().to_string())
    }

    /// Writes a kubeconfig that speaks as the ServiceAccount `namespace/name` (a fresh token)
    /// into the cluster's folder and returns its path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.service_account_token(namespace, name).await?;
        write_private(
            &self.dir,
            &format!("sa-{namespace}-{name}.kubeconfig"),
            &kubeconfig_yaml(&self.name, &self.url, &self.pki.ca_pem, &User::Token(token)),
        )
    }

    /// Runs the cluster's own kubectl as admin; its stdout, or an error with its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(self.bins.kubectl())
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(io("running kubectl"))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the controller-manager made the `default` ServiceAccount of `namespace`:
    /// until then the ServiceAccount admission plugin refuses every pod there.
    pub async fn wait_default_service_account(&self, namespace: &str) -> Result<()> {
        let sa: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        self.poll(
            &format!("the default ServiceAccount in {namespace}"),
            || {
                let sa = sa.clone();
                async move { sa.get_opt("default").await.ok().flatten().map(|_| ()) }
            },
        )
        .await
    }

    /// The process ids of the running components, start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.pid()).collect()
    }

    /// Resident memory of all the cluster's processes, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.procs
            .iter()
            .filter_map(|p| p.pid())
            .map(rss_bytes)
            .sum()
    }

    /// Each component's name and the last `max` bytes of its log, for a failing test's message.
    pub fn log_tails(&self, max: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}\n", p.name, tail(&p.log, max)))
            .collect()
    }

    /// Kills every process, newest first, and waits for them.
    pub async fn stop(mut self) {
        self.kill_all().await;
    }

    async fn kill_all(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.kill().await;
        }
    }

    fn check_processes(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_running()?;
        }
        Ok(())
    }

    /// Polls `check` every 100 ms until it yields, failing early if a component died.
    async fn poll<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{what} in cluster {}", self.name),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: Some(self.log_tails(1500)),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_tcp(&mut self, what: &'static str, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_processes()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{what} to listen on {addr}"),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: Some(self.log_tails(1500)),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz`, not `/healthz`: RBAC's bootstrap roles exist only once it says `ok`.
    async fn wait_readyz(&mut self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last;
        loop {
            self.check_processes()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a static request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("/readyz of {}", self.url),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: Some(format!("{last}\n{}", self.log_tails(1500))),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One fake node, managed by kwok (which fills in its status and renews its Lease).
    async fn create_node(&self) -> Result<()> {
        let node_name = format!("kwok-{}-0", self.name);
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": node_name,
                    "type": "kwok"
                }
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}
            }
        }))
        .expect("a valid Node");
        let nodes: Api<Node> = Api::all(self.client().await?);
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(|source| Error::Kube {
                what: format!("creating node {node_name}"),
                source,
            })?;
        Ok(())
    }

    async fn wait_node_ready(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        self.poll("a Ready node (kwok)", || {
            let nodes = nodes.clone();
            async move {
                let list = nodes.list(&Default::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .then_some(())
            }
        })
        .await
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        // kill_on_drop SIGKILLs each child as its handle drops; reverse order stops the
        // controllers before the API server and etcd.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// An admin (or any) kube client from a kubeconfig file.
pub(crate) async fn client_for(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            what: format!("loading {}", path.display()),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        what: format!("building a client for {}", path.display()),
        source,
    })
}
