//! The real-cluster tier: real control planes (`skoala_realkube`), our install charts installed
//! into them with the real helm as a user would, and our binaries run with exactly the rights
//! their chart's ServiceAccount has ([`pod`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use skoala_e2e::real;
//! let cluster = real::cluster("work-1").await?;
//! let coordinator = real::InstalledCoordinator::install(&cluster, real::Helm::V4).await?;
//! # Ok(()) }
//! ```
//!
//! A missing binary is a loud failure naming `scripts/install-kube.sh`, never a skip.

pub mod fleet;
pub mod pod;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use skoala_realkube::RealCluster;

use crate::fleet::Ctl;
pub use crate::kubeapi::{binaries, client, cluster};
use crate::tools::{tool, workspace_root};
use crate::wait;
use pod::{Pod, PodSpec};

/// The two helm majors, as a user of each would install with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helm {
    /// helm 4 (`.tools/bin/helm`).
    V4,
    /// helm 3 (`.tools/bin/helm3`).
    V3,
}

impl Helm {
    /// Both, newest first.
    pub const BOTH: [Helm; 2] = [Helm::V4, Helm::V3];

    /// The binary.
    pub fn path(self) -> PathBuf {
        match self {
            Helm::V4 => tool("helm"),
            Helm::V3 => tool("helm3"),
        }
    }

    /// `helm4` or `helm3`, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Helm::V4 => "helm4",
            Helm::V3 => "helm3",
        }
    }
}

/// `helm <args>` as the cluster's admin (the person installing our charts), with a helm home
/// of its own; fails with helm's stderr.
pub async fn helm(cluster: &RealCluster, helm: Helm, args: &[&str]) -> anyhow::Result<String> {
    let home = cluster.dir().join(format!("helm-home-{}", helm.label()));
    std::fs::create_dir_all(&home)?;
    let out = tokio::process::Command::new(helm.path())
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{} {} failed: {}",
        helm.label(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our product charts (`charts/`).
pub fn product_chart(name: &str) -> PathBuf {
    workspace_root().join("charts").join(name)
}

/// The namespace both charts are installed into in the tests, as the README does.
pub const FLEET_NAMESPACE: &str = "skoala-fleet";
/// Where the releases we upgrade live (`skoala` and `skoala-init`).
pub const RELEASE_NAMESPACE: &str = "skoala-system";

/// Creates a namespace (as the admin), optionally with labels; waits for its `default`
/// ServiceAccount, without which every pod there is refused.
pub async fn namespace(
    cluster: &RealCluster,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    cluster.kubectl(&["create", "namespace", name]).await?;
    for (k, v) in labels {
        cluster
            .kubectl(&["label", "namespace", name, &format!("{k}={v}")])
            .await?;
    }
    cluster.wait_default_service_account(name).await?;
    Ok(())
}

/// `charts/skoala-fleet-coordinator` installed into a real cluster, and its container running
/// as that chart's pod would (its ServiceAccount, its volumes).
///
/// With `store.type=kube` ([`InstalledCoordinator::install_kube`]) the chart's Deployment has
/// two replicas and each of its two Pod objects gets a process of its own (`pod::Pod::
/// start_replicas`), both with the same `--listen=127.0.0.1:<port>`: the standby binds the
/// port only once it leads, so whoever dials that address reaches the leader. That stands in
/// for the agents' Service, whose only endpoint is the Pod labelled
/// `fleet.skoala.io/role=leader` (the stand-in pods share the host's network, so there is no
/// Service routing here); the label itself, the Lease and the RBAC are real.
pub struct InstalledCoordinator {
    /// The coordinator's container, running as the chart's pod; on the kube store, the
    /// replica that leads (after [`InstalledCoordinator::wait_standby_leads`], the one that
    /// took over).
    pub pod: Pod,
    /// On the kube store, the other replica: the standby, or the leader killed before.
    pub standby: Option<Pod>,
    endpoint: String,
    /// `admin.yaml` and `ca.crt`, as the operator saved them.
    creds: PathBuf,
}

impl InstalledCoordinator {
    /// `helm install skoala-fleet charts/skoala-fleet-coordinator -n skoala-fleet`, then runs
    /// the pod (init container, then `serve`).
    pub async fn install(cluster: &RealCluster, helm_version: Helm) -> anyhow::Result<Self> {
        Self::install_with(cluster, helm_version, &[]).await
    }

    /// Like [`InstalledCoordinator::install`], with extra `--set k=v`.
    pub async fn install_with(
        cluster: &RealCluster,
        helm_version: Helm,
        set: &[&str],
    ) -> anyhow::Result<Self> {
        install_coordinator_chart(cluster, helm_version, set).await?;
        let spec = PodSpec::new(FLEET_NAMESPACE, "skoala-fleet-coordinator")
            .helm(helm_version.path())
            .rewrite("--listen=", "--listen=127.0.0.1:0")
            .rewrite("--metrics-listen=", "--metrics-listen=127.0.0.1:0");
        let mut pod = Pod::start(cluster, spec).await?;
        let endpoint = listening(&mut pod).await?;
        // The README's way to the operator credential and the CA, on an image without a shell.
        let creds = save_credentials(cluster, &pod, &["--data-dir=/data"]).await?;
        Ok(InstalledCoordinator {
            pod,
            standby: None,
            endpoint,
            creds,
        })
    }

    /// The chart with `--set store.type=kube` (and `set`): its CRDs, two replicas, one
    /// process per Pod object sharing one listen address (the type's doc says why), the
    /// credentials read from the Secret `skoala-fleet-pki` with `show --store kube` in the
    /// leader's pod. Returns once one replica serves and its Pod carries the leader label.
    pub async fn install_kube(
        cluster: &RealCluster,
        helm_version: Helm,
        set: &[&str],
    ) -> anyhow::Result<Self> {
        let mut sets = vec!["store.type=kube"];
        sets.extend_from_slice(set);
        install_coordinator_chart(cluster, helm_version, &sets).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let spec = PodSpec::new(FLEET_NAMESPACE, "skoala-fleet-coordinator")
            .helm(helm_version.path())
            .rewrite("--listen=", &format!("--listen=127.0.0.1:{port}"))
            .rewrite("--metrics-listen=", "--metrics-listen=127.0.0.1:0");
        let mut pods = Pod::start_replicas(cluster, spec).await?;
        anyhow::ensure!(pods.len() == 2, "the chart's two replicas: {}", pods.len());
        let leads = wait::until("one replica serving", Duration::from_secs(120), || async {
            pods.iter()
                .position(|p| listening_at(&p.log(), 0).is_some())
        })
        .await?;
        let pod = pods.remove(leads);
        let endpoint = format!("https://127.0.0.1:{port}");
        anyhow::ensure!(
            listening_at(&pod.log(), 0).as_deref() == Some(endpoint.as_str()),
            "the leader serves on the chart's port: {}",
            pod.log()
        );
        let namespace = format!("--namespace={FLEET_NAMESPACE}");
        let creds = save_credentials(cluster, &pod, &["--store=kube", &namespace]).await?;
        let installed = InstalledCoordinator {
            pod,
            standby: pods.pop(),
            endpoint,
            creds,
        };
        installed.wait_labelled(cluster).await?;
        Ok(installed)
    }

    /// Waits until the serving replica's Pod, and no other, is labelled
    /// `fleet.skoala.io/role=leader`, as the agents' Service needs.
    pub async fn wait_labelled(&self, cluster: &RealCluster) -> anyhow::Result<()> {
        let want = vec![self.pod.name().to_string()];
        let last = std::sync::Mutex::new(Vec::new());
        wait::until(
            &format!("only {} labelled as the leader's", want[0]),
            Duration::from_secs(60),
            || async {
                let labelled = leader_pods(cluster).await.ok()?;
                *last.lock().ok()? = labelled.clone();
                (labelled == want).then_some(())
            },
        )
        .await
        .with_context(|| format!("labelled: {:?}", last.lock().map(|l| l.clone())))
    }

    /// SIGKILLs the leader's process (kube store), as a crash or the OOM killer would; its
    /// Pod object stays, as it does until the kubelet restarts the container.
    pub async fn kill_leader(&mut self) {
        self.pod.kill().await;
    }

    /// SIGTERMs the leader's process, as the kubelet does in a rolling update or a drain: it
    /// closes its sessions, releases the Lease and exits.
    pub fn stop_leader(&self) -> anyhow::Result<()> {
        let pid = self.pod.pid().context("the leader is not running")?;
        crate::signal::send(i32::try_from(pid)?, libc::SIGTERM)?;
        Ok(())
    }

    /// Waits until the standby serves on the shared address, then makes it [`Self::pod`] and
    /// the leader that went [`Self::standby`]. Call it as soon as the leader went: a standby
    /// that led before (a restarted ex-leader) is waited for to serve once more than it had.
    pub async fn wait_standby_leads(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let standby = self
            .standby
            .as_mut()
            .context("no standby (kube store only)")?;
        let served_before = standby.log().matches(LISTENING).count();
        let served = wait::until("the standby serving", timeout, || async {
            listening_at(&standby.log(), served_before)
        })
        .await
        .with_context(|| format!("the standby's log:\n{}", standby.log()))?;
        anyhow::ensure!(served == self.endpoint, "serving on {served}");
        let standby = self.standby.take().context("no standby")?;
        self.standby = Some(std::mem::replace(&mut self.pod, standby));
        Ok(())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The data volume (CA, store, backups, admin.yaml).
    pub fn data_dir(&self) -> PathBuf {
        self.pod.volume("data")
    }

    /// The fleet CA, as `--set-file coordinator.caBundle=` takes it.
    pub fn ca_file(&self) -> PathBuf {
        self.creds.join("ca.crt")
    }

    /// `skoalactl` with the operator credential (README: `kubectl exec ... skoala-coordinator
    /// show admin-config`).
    pub fn ctl(&self) -> Ctl {
        Ctl::new(self.creds.join("admin.yaml"), self.endpoint.clone())
    }

    /// SIGKILL and start again, as the kubelet restarts a crashed container; the endpoint may
    /// change (a new port).
    pub async fn restart(&mut self, cluster: &RealCluster) -> anyhow::Result<()> {
        self.pod.restart(cluster).await?;
        self.endpoint = listening(&mut self.pod).await?;
        Ok(())
    }
}

/// `helm install skoala-fleet charts/skoala-fleet-coordinator -n skoala-fleet
/// --create-namespace` with `--set` of each of `set`.
async fn install_coordinator_chart(
    cluster: &RealCluster,
    helm_version: Helm,
    set: &[&str],
) -> anyhow::Result<()> {
    let chart = product_chart("skoala-fleet-coordinator");
    let mut args = vec![
        "install",
        "skoala-fleet",
        chart.to_str().context("a UTF-8 path")?,
        "-n",
        FLEET_NAMESPACE,
        "--create-namespace",
    ];
    for s in set {
        args.push("--set");
        args.push(s);
    }
    helm(cluster, helm_version, &args).await?;
    Ok(())
}

/// The line `serve` prints once its port is open.
const LISTENING: &str = "skoala-coordinator listening on";

/// `https://<addr>` of the `nth` (from 0) "listening on" line of a coordinator's log.
fn listening_at(log: &str, nth: usize) -> Option<String> {
    let line = log.lines().filter(|l| l.contains(LISTENING)).nth(nth)?;
    Some(format!("https://{}", line.rsplit(' ').next()?))
}

/// The Pods in the fleet's namespace labelled `fleet.skoala.io/role=leader`, by name.
pub async fn leader_pods(cluster: &RealCluster) -> anyhow::Result<Vec<String>> {
    let out = cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            FLEET_NAMESPACE,
            "-l",
            "fleet.skoala.io/role=leader",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// `skoala-coordinator show admin-config|ca <how>` in `pod`, saved as `admin.yaml` and
/// `ca.crt` in a folder of the cluster's.
async fn save_credentials(
    cluster: &RealCluster,
    pod: &Pod,
    how: &[&str],
) -> anyhow::Result<PathBuf> {
    let creds = cluster.dir().join("coordinator-credentials");
    std::fs::create_dir_all(&creds)?;
    for (what, file) in [("admin-config", "admin.yaml"), ("ca", "ca.crt")] {
        let mut args = vec!["show", what];
        args.extend_from_slice(how);
        let out = pod
            .exec(&args)
            .await
            .with_context(|| format!("skoala-coordinator show {what}"))?;
        std::fs::write(creds.join(file), out.stdout)?;
    }
    Ok(creds)
}

async fn listening(pod: &mut Pod) -> anyhow::Result<String> {
    let starts = pod.log().matches(LISTENING).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let log = pod.log();
        if let Some(endpoint) = listening_at(&log, starts) {
            return Ok(endpoint);
        }
        anyhow::ensure!(pod.is_running(), "the coordinator exited: {log}");
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the coordinator did not listen within 120 s: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `charts/skoala-fleet-agent` installed into a real working cluster, and its container
/// running as that chart's pod would.
pub struct InstalledAgent {
    /// The agent's container, running as the chart's pod.
    pub pod: Pod,
}

/// How an agent is installed.
#[derive(Clone, Debug)]
pub struct AgentInstall<'a> {
    /// The cluster name the agent reports.
    pub name: &'a str,
    /// Its labels.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The helm that installs the chart (and that the agent then runs).
    pub helm: Helm,
    /// `--set` overrides of the chart's values.
    pub set: Vec<String>,
}

impl<'a> AgentInstall<'a> {
    /// An agent for cluster `name`, installed with `helm`.
    pub fn new(name: &'a str, helm: Helm) -> Self {
        AgentInstall {
            name,
            labels: Vec::new(),
            helm,
            set: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &'a str, v: &'a str) -> Self {
        self.labels.push((k, v));
        self
    }
}

impl InstalledAgent {
    /// The README's step 2: `helm install skoala-fleet-agent charts/skoala-fleet-agent -n
    /// skoala-fleet --create-namespace --set coordinator.url=... --set-file
    /// coordinator.caBundle=ca.crt --set joinToken.value=<token> --set cluster.labels.k=v`,
    /// then runs the pod.
    pub async fn install(
        cluster: &RealCluster,
        endpoint: &str,
        ca_file: &Path,
        token: &str,
        how: AgentInstall<'_>,
    ) -> anyhow::Result<Self> {
        let chart = product_chart("skoala-fleet-agent");
        let mut sets = vec![
            format!("coordinator.url={endpoint}"),
            format!("joinToken.value={token}"),
            format!("cluster.name={}", how.name),
        ];
        for (k, v) in &how.labels {
            sets.push(format!("cluster.labels.{k}={v}"));
        }
        sets.extend(how.set.iter().cloned());
        let ca = format!("coordinator.caBundle={}", ca_file.display());
        let mut args = vec![
            "install",
            "skoala-fleet-agent",
            chart.to_str().context("a UTF-8 path")?,
            "-n",
            FLEET_NAMESPACE,
            "--create-namespace",
            "--set-file",
            &ca,
        ];
        for s in &sets {
            args.push("--set");
            args.push(s);
        }
        helm(cluster, how.helm, &args).await?;
        let spec = PodSpec::new(FLEET_NAMESPACE, "skoala-fleet-agent")
            .helm(how.helm.path())
            .rewrite("--metrics-listen=", "--metrics-listen=127.0.0.1:0")
            .env("RUST_LOG", "info,skoala_agent=debug");
        let pod = Pod::start(cluster, spec).await?;
        Ok(InstalledAgent { pod })
    }
}

/// `--set` values that let the agent chart install where its pod is never run (RBAC and
/// admission checks): a coordinator URL, a token and a CA that lead nowhere.
pub const PLACEHOLDER_AGENT_VALUES: [&str; 6] = [
    "--set",
    "coordinator.url=https://fleet.example.com:7443",
    "--set",
    "joinToken.value=placeholder",
    "--set",
    "coordinator.caBundle=placeholder",
];

/// Plan phases after which nothing more happens without an operator: wait for these, then
/// assert which one, so a failed plan fails the test at once with its reason.
pub const FINISHED: [&str; 5] = ["succeeded", "degraded", "failed", "aborted", "rolledBack"];
