//! A `skoala-coordinator` process: `init` into a temp data dir, then `serve` on a loopback port
//! (kept across restarts, so agents find it again).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::ctl::Ctl;
use super::{die_with_parent, tail};
use crate::tools::our_bin;

/// Beside the data dir: the operator's copies of `ca.pem` and `admin.yaml` when the PKI is
/// kept in a Secret ([`CoordinatorOptions::kube_store`]).
const OPERATOR: &str = "operator";

/// `skoala-coordinator <command> --store kube` on the namespace `namespace` of the cluster of
/// `kubeconfig` (`init` and `show`). Awaited, not waited for: the emulated cluster it talks to
/// runs on the test's runtime.
pub fn kube_pki_command(
    command: &str,
    kubeconfig: &Path,
    namespace: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(our_bin("skoala-coordinator"));
    cmd.arg(command)
        .args(["--store", "kube", "--namespace", namespace])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    cmd
}

/// Runs `skoala-coordinator <what>`; its stdout, or an error with its stderr.
async fn succeeded(what: &str, cmd: &mut tokio::process::Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running skoala-coordinator {what}"))?;
    if !out.status.success() {
        bail!(
            "skoala-coordinator {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Copies the fleet CA and `admin.yaml` out of the PKI Secret in `namespace` into `operator`,
/// as an operator reads them (`show --store kube`).
async fn copy_operator_files(
    operator: &Path,
    kubeconfig: &Path,
    namespace: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(operator)?;
    for (what, file) in [("ca", "ca.pem"), ("admin-config", "admin.yaml")] {
        let mut show = kube_pki_command("show", kubeconfig, namespace);
        show.arg(what);
        let printed = succeeded(&format!("show {what} --store kube"), &mut show).await?;
        std::fs::write(operator.join(file), printed)?;
    }
    Ok(())
}

/// `skoala-coordinator migrate --from FROM --to TO` (`sqlite:DIR` or `kube:NAMESPACE`) with
/// the control plane's `kubeconfig` and `more` flags; its exit status and output.
pub async fn migrate(
    from: &str,
    to: &str,
    kubeconfig: &Path,
    more: &[&str],
) -> anyhow::Result<std::process::Output> {
    tokio::process::Command::new(our_bin("skoala-coordinator"))
        .args(["migrate", "--from", from, "--to", to])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(more)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .context("running skoala-coordinator migrate")
}

/// How long `serve` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags for `serve`. `None` keeps the coordinator's default.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorOptions {
    /// `--cert-ttl`, e.g. "10s" to exercise renewal.
    pub cert_ttl: Option<String>,
    /// `--ping-interval`.
    pub ping_interval: Option<String>,
    /// `--agent-timeout`.
    pub agent_timeout: Option<String>,
    /// `--max-message-bytes`.
    pub max_message_bytes: Option<usize>,
    /// `--kubeconfig` of the control-plane cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Serve `/metrics` on a loopback port.
    pub metrics: bool,
    /// `--helm` (the helm that upgrades the control plane).
    pub helm: Option<PathBuf>,
    /// `--helm-timeout` of plan upgrades, e.g. "20s" for a broken-image test.
    pub helm_timeout: Option<String>,
    /// `--clock-file`: drive the orchestrator's clock from a file.
    pub clock_file: Option<PathBuf>,
    /// More `serve` flags, as given (e.g. `["--tls-handshake-timeout", "2s"]`).
    pub args: Vec<String>,
    /// Put the data dir on a tmpfs of this many bytes, so a test can fill the coordinator's
    /// disk (needs root, as a real mount does).
    pub data_dir_bytes: Option<u64>,
    /// `serve --listen` on this address (port chosen once, kept across restarts) instead of
    /// loopback, e.g. `0.0.0.0` for agents in another network namespace. The testkit still
    /// dials it on loopback.
    pub listen_ip: Option<std::net::IpAddr>,
    /// `init --san` each: more names and addresses in the server certificate.
    pub sans: Vec<String>,
    /// Start `serve` without waiting for its address: a standby on the kube store prints it
    /// only once it leads ([`Coordinator::wait_serving`]).
    pub standby: bool,
    /// `--store kube --namespace NS` on the control-plane cluster of `kubeconfig`: `init
    /// --store kube --if-missing` makes (or finds) the PKI Secret there and `serve` keeps the
    /// fleet, its PKI and its backups there; the data dir holds no CA. The operator's
    /// `ca.pem` and `admin.yaml` are read with `show --store kube` into the scratch dir.
    pub kube_store: Option<String>,
}

/// A coordinator's data dir before it is served: a temporary folder, on a tmpfs of a set
/// size if asked, where a test runs `init` (and sees it fail) before [`DataDirSetup::serve`].
pub struct DataDirSetup {
    /// Declared before `dir`: unmounted before the folder it sits in is removed.
    data_mount: Option<Tmpfs>,
    dir: tempfile::TempDir,
}

impl DataDirSetup {
    /// A fresh, empty data dir; on a tmpfs of `bytes` (rounded up to pages) if given.
    pub fn new(bytes: Option<u64>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skoala-coordinator-")
            .tempdir()?;
        let data_mount = match bytes {
            Some(bytes) => Some(Tmpfs::mount(&dir.path().join("data"), bytes)?),
            None => None,
        };
        Ok(DataDirSetup { data_mount, dir })
    }

    /// The data dir.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `skoala-coordinator init --data-dir` on it, with `--san` each of `sans`; its exit
    /// status and output.
    pub fn init(&self, sans: &[String]) -> anyhow::Result<std::process::Output> {
        let mut init = Command::new(our_bin("skoala-coordinator"));
        init.arg("init").arg("--data-dir").arg(self.path());
        for san in sans {
            init.arg("--san").arg(san);
        }
        init.output().context("running skoala-coordinator init")
    }

    /// `init` as `opts` ask: in the data dir, or with [`CoordinatorOptions::kube_store`] the
    /// PKI Secret (if missing), whose CA and `admin.yaml` are then copied out for the tests.
    async fn init_for(&self, opts: &CoordinatorOptions) -> anyhow::Result<()> {
        let Some(namespace) = &opts.kube_store else {
            let out = self.init(&opts.sans)?;
            if !out.status.success() {
                bail!(
                    "skoala-coordinator init failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            return Ok(());
        };
        let kubeconfig = opts
            .kubeconfig
            .as_deref()
            .context("kube_store needs the control plane's kubeconfig")?;
        let mut init = kube_pki_command("init", kubeconfig, namespace);
        init.arg("--if-missing");
        for san in &opts.sans {
            init.arg("--san").arg(san);
        }
        succeeded("init --store kube", &mut init).await?;
        copy_operator_files(&self.dir.path().join(OPERATOR), kubeconfig, namespace).await
    }

    /// Gives the tmpfs `bytes` of room (its files stay).
    pub fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        self.data_mount
            .as_ref()
            .context("the data dir is not a tmpfs")?
            .resize(bytes)
    }

    /// Serves the data dir `init` made, with `opts` (`data_dir_bytes` is not used: the data
    /// dir exists).
    pub async fn serve(self, opts: CoordinatorOptions) -> anyhow::Result<Coordinator> {
        let mut c = Coordinator::unstarted(self, opts, "127.0.0.1:0".parse()?);
        c.spawn().await?;
        Ok(c)
    }
}

/// A running (or killed) coordinator and its data dir.
pub struct Coordinator {
    /// Declared before `dir`: unmounted before the folder it sits in is removed.
    _data_mount: Option<Tmpfs>,
    dir: tempfile::TempDir,
    opts: CoordinatorOptions,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    child: Option<Child>,
    /// The process's stdout lines not read yet, while its address is awaited.
    lines: Option<mpsc::Receiver<String>>,
    starts: u32,
}

impl Coordinator {
    /// A coordinator on `setup`'s data dir that has not been started, to listen on `addr`.
    fn unstarted(setup: DataDirSetup, opts: CoordinatorOptions, addr: SocketAddr) -> Self {
        Coordinator {
            _data_mount: setup.data_mount,
            dir: setup.dir,
            opts,
            addr,
            metrics_addr: None,
            child: None,
            lines: None,
            starts: 0,
        }
    }

    /// Init + serve with default options and metrics on.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(CoordinatorOptions {
            metrics: true,
            ..Default::default()
        })
        .await
    }

    /// Init + serve with `opts`.
    pub async fn start_with(opts: CoordinatorOptions) -> anyhow::Result<Self> {
        let setup = DataDirSetup::new(opts.data_dir_bytes)?;
        setup.init_for(&opts).await?;
        setup.serve(opts).await
    }

    /// A second replica of `leader` on the kube store ([`CoordinatorOptions::kube_store`]),
    /// with `opts`: a fresh data dir, as on another node (its `init --if-missing` finds the PKI
    /// Secret the leader's made, which both serve from), and the leader's address, as a
    /// Service in front of both would give agents. Started as a standby: it serves only once
    /// it leads ([`Coordinator::wait_serving`]).
    pub async fn standby_of(
        leader: &Coordinator,
        opts: CoordinatorOptions,
    ) -> anyhow::Result<Self> {
        if opts.kube_store.is_none() {
            bail!("a standby needs the kube store: set CoordinatorOptions::kube_store");
        }
        let setup = DataDirSetup::new(None)?;
        setup.init_for(&opts).await?;
        let opts = CoordinatorOptions {
            standby: true,
            ..opts
        };
        let mut c = Coordinator::unstarted(setup, opts, leader.addr);
        c.spawn().await?;
        Ok(c)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(our_bin("skoala-coordinator"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(
                SocketAddr::new(
                    self.opts.listen_ip.unwrap_or(self.addr.ip()),
                    self.addr.port(),
                )
                .to_string(),
            );
        if self.opts.metrics {
            let m = self
                .metrics_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "127.0.0.1:0".into());
            cmd.arg("--metrics-listen").arg(m);
        }
        let o = &self.opts;
        for (flag, value) in [
            ("--cert-ttl", o.cert_ttl.clone()),
            ("--ping-interval", o.ping_interval.clone()),
            ("--agent-timeout", o.agent_timeout.clone()),
            (
                "--max-message-bytes",
                o.max_message_bytes.map(|m| m.to_string()),
            ),
            ("--helm-timeout", o.helm_timeout.clone()),
        ] {
            if let Some(v) = value {
                cmd.arg(flag).arg(v);
            }
        }
        if let Some(h) = &o.helm {
            cmd.arg("--helm").arg(h);
        }
        if let Some(c) = &o.clock_file {
            cmd.arg("--clock-file").arg(c);
        }
        if let Some(namespace) = &o.kube_store {
            cmd.args(["--store", "kube", "--namespace", namespace]);
        }
        cmd.args(&o.args);
        if let Some(k) = &o.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        } else {
            cmd.env_remove("KUBECONFIG");
        }
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("spawning skoala-coordinator serve")?;
        let stdout = child.stdout.take().context("coordinator stdout")?;

        // A thread reads stdout for the whole life of the process (so it never blocks on a full
        // pipe) and reports the address lines.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        self.lines = Some(rx);
        if self.opts.standby {
            return Ok(());
        }
        self.wait_serving(START_TIMEOUT).await
    }

    /// Waits until `serve` printed its address (and its metrics address, when asked): the
    /// process is the one serving. A standby on the kube store prints it once it leads.
    pub async fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let rx = self
            .lines
            .take()
            .context("the coordinator's output is not being read")?;
        let want_metrics = self.opts.metrics;
        let found = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + timeout;
            let (mut addr, mut metrics) = (None, None);
            while addr.is_none() || (want_metrics && metrics.is_none()) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let Ok(line) = rx.recv_timeout(left) else {
                    break;
                };
                if let Some(a) = line.strip_prefix("skoala-coordinator listening on ") {
                    // Listening on every address: dial it on loopback.
                    addr = a.trim().parse::<SocketAddr>().ok().map(|a| match a.ip() {
                        ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
                        _ => a,
                    });
                } else if let Some(m) = line.strip_prefix("skoala-coordinator metrics on http://") {
                    metrics = m
                        .trim()
                        .trim_end_matches("/metrics")
                        .parse::<SocketAddr>()
                        .ok();
                }
            }
            (addr, metrics)
        })
        .await?;
        match found {
            (Some(addr), metrics) => {
                self.addr = addr;
                if metrics.is_some() {
                    self.metrics_addr = metrics;
                }
                Ok(())
            }
            (None, _) => {
                self.kill();
                bail!(
                    "skoala-coordinator did not print its address within {timeout:?}; log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// The options it was started with.
    pub fn options(&self) -> &CoordinatorOptions {
        &self.opts
    }

    /// SIGKILL: no shutdown path runs, exactly like a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("coordinator not running")?;
        crate::signal::send(child.id() as i32, libc::SIGTERM).context("kill -TERM")?;
        let exited = crate::wait::until(
            "the coordinator to exit after SIGTERM",
            START_TIMEOUT,
            || {
                let status = child.try_wait().ok().flatten();
                async move { status }
            },
        )
        .await;
        match exited {
            Ok(status) => Ok(status),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Starts `serve` again on the same data dir and port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Starts `serve` again on another store (`Some(namespace)`: the kube store there, `None`:
    /// SQLite in the data dir), on the same data dir and address: what an operator does once
    /// `skoala-coordinator migrate` moved the fleet (stop this one first,
    /// [`Coordinator::terminate`]). On the kube store the operator's files are read from the
    /// PKI Secret, as at start.
    pub async fn serve_store(&mut self, kube_store: Option<String>) -> anyhow::Result<()> {
        if let Some(namespace) = &kube_store {
            let kubeconfig = self
                .opts
                .kubeconfig
                .clone()
                .context("the kube store needs the control plane's kubeconfig")?;
            copy_operator_files(&self.dir.path().join(OPERATOR), &kubeconfig, namespace).await?;
        }
        self.opts.kube_store = kube_store;
        self.spawn().await
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/metrics`, if started with metrics.
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_addr.map(|a| format!("http://{a}/metrics"))
    }

    /// Its data dir (CA, store, backups, charts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the operator's files are: the data dir, or on the kube store the copies read
    /// from the PKI Secret.
    fn operator_dir(&self) -> PathBuf {
        match self.opts.kube_store {
            Some(_) => self.dir.path().join(OPERATOR),
            None => self.data_dir(),
        }
    }

    /// The fleet CA certificate (what agents get as `--ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.operator_dir().join("ca.pem")
    }

    /// The admin credential written by `init`.
    pub fn admin_config(&self) -> PathBuf {
        self.operator_dir().join("admin.yaml")
    }

    /// A scratch dir that lives as long as the coordinator (agent logs, extra files).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("coordinator.log")
    }

    /// The end of the coordinator's log (all runs).
    pub fn log(&self) -> String {
        tail(&self.log_path(), 16 * 1024)
    }

    /// How many times `serve` was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// `skoalactl` with this coordinator's admin credential and endpoint.
    pub fn ctl(&self) -> Ctl {
        Ctl::new(self.admin_config(), self.endpoint())
    }

    /// Waits until `n` working clusters are connected; returns `clusters -o json`.
    pub async fn wait_connected(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let ctl = self.ctl();
        crate::wait::until(&format!("{n} connected clusters"), timeout, || async {
            let clusters = ctl.clusters().await.ok()?;
            // The control plane's row is listed as connected once the coordinator has read
            // its inventory, which races the agents: counting it would let `n` agents' wait
            // end with one of them still away.
            let connected = clusters
                .iter()
                .filter(|c| c["connected"] == serde_json::Value::Bool(true))
                .filter(|c| c["controlPlane"] != serde_json::Value::Bool(true))
                .count();
            (connected >= n).then_some(clusters)
        })
        .await
        .with_context(|| format!("coordinator log:\n{}", self.log()))
    }

    /// Fetches `/metrics` (plain HTTP/1.1 over loopback, no client library needed).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        self.http_get("/metrics").await
    }

    /// `GET path` on the metrics port: the status line, headers and body.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .metrics_addr
            .context("started without --metrics-listen")?;
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    }

    /// `(VmRSS, VmHWM)` of the running process, in KiB: its memory now and at its peak.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.pid().context("not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()
                })
                .with_context(|| format!("{name} not in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// `skoala_refusals_total{kind="<kind>"}`: every refusal of that audit kind, also those
    /// the audit log only summarises; 0 when absent (or the metrics cannot be read).
    pub async fn refusals(&self, kind: &str) -> u64 {
        let text = self.metrics().await.unwrap_or_default();
        let prefix = format!("skoala_refusals_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// The value of an unlabelled metric, e.g. `skoala_agents_connected`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("metric {name} not found in:\n{text}"))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted at a folder for the life of the value (a small disk that fills).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let fs = Tmpfs {
            path: path.to_path_buf(),
        };
        fs.mount_with(&["-t", "tmpfs"], &format!("size={bytes},mode=0700"))?;
        Ok(fs)
    }

    /// Changes its size; the files on it stay.
    fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        self.mount_with(&[], &format!("remount,size={bytes}"))
    }

    fn mount_with(&self, args: &[&str], options: &str) -> anyhow::Result<()> {
        let out = Command::new("mount")
            .args(args)
            .args(["-o", options, "skoala-test"])
            .arg(&self.path)
            .output()
            .context("running mount (a tmpfs data dir needs root and util-linux)")?;
        if !out.status.success() {
            bail!(
                "mount -o {options} of a tmpfs at {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
