//! Issue 3, "strongly wanted": the agents' side can reach the coordinator, the coordinator cannot
//! route to the agents, and everything still works.
//!
//! The working cluster (an emulated API server) and its agent run inside a Linux network
//! namespace whose only interface is its own loopback: no packet from outside can ever reach
//! them, and they cannot reach the coordinator directly either. Their one way out is an egress
//! HTTP CONNECT proxy whose listening socket lives inside the namespace and whose upstream
//! connections leave from the host (the coordinator's side) — like a corporate egress proxy on a
//! firewall. The coordinator runs on the host, outside the namespace.
//!
//! Needs root and iproute2; fails loudly (never skips) without them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use skoala_e2e::connect_proxy::{ConnectProxy, ProxyOptions};
use skoala_e2e::fleet::{Coordinator, die_with_parent};
use skoala_e2e::netns::NetNs;
use skoala_e2e::tools::{our_bin, tool, workspace_root};
use skoala_e2e::wait;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A process started inside the namespace, logging to a file, killed on drop.
struct NsProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl NsProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

/// Starts `skoala-sim cluster` inside `ns`; returns it once it listens.
async fn start_cluster(ns: &NetNs, dir: &Path) -> anyhow::Result<(NsProcess, PathBuf)> {
    let kubeconfig = dir.join("edge.kubeconfig");
    let log = dir.join("sim.log");
    let mut cmd = ns.command(our_bin("skoala-sim"));
    cmd.args(["cluster", "--name", "edge-1", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log)?));
    die_with_parent(cmd.as_std_mut());
    let mut child = cmd.spawn().context("spawn skoala-sim in the namespace")?;
    let stdout = child.stdout.take().context("sim stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("listening on ") {
                return Ok::<_, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    // Keep draining stdout so the emulator never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let proc = NsProcess { child, log };
    match ready {
        Ok(Ok(true)) => Ok((proc, kubeconfig)),
        other => anyhow::bail!("skoala-sim did not start ({other:?}); log:\n{}", proc.log()),
    }
}

/// What every agent run inside the namespace shares.
struct EdgeAgent<'a> {
    ns: &'a NetNs,
    dir: &'a Path,
    coordinator_url: String,
    ca: PathBuf,
    kubeconfig: PathBuf,
}

impl EdgeAgent<'_> {
    /// Starts the agent inside the namespace (`run` numbers its log file).
    fn start(
        &self,
        token: Option<&str>,
        proxy: Option<&str>,
        run: u32,
    ) -> anyhow::Result<NsProcess> {
        let (ns, dir, coordinator_url) = (self.ns, self.dir, &self.coordinator_url);
        let (ca, kubeconfig) = (&self.ca, &self.kubeconfig);
        let log = dir.join(format!("agent-{run}.log"));
        let mut cmd = ns.command(our_bin("skoala-agent"));
        cmd.arg("--coordinator")
            .arg(coordinator_url)
            .arg("--ca-file")
            .arg(ca)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--cluster-name",
                "edge-1",
                "--label",
                "zone=behind-firewall",
            ])
            .args(["--heartbeat", "1s", "--max-backoff", "1s"])
            .arg("--helm")
            .arg(tool("helm"))
            .env_remove("KUBECONFIG")
            .env_remove("SKOALA_TOKEN")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        if let Some(p) = proxy {
            // The emulated API server is on the namespace's loopback: reach it directly.
            cmd.env("HTTPS_PROXY", p).env("NO_PROXY", "127.0.0.1");
        }
        die_with_parent(cmd.as_std_mut());
        let child = cmd.spawn().context("spawn skoala-agent in the namespace")?;
        Ok(NsProcess { child, log })
    }
}

fn cluster<'a>(clusters: &'a [Value], id: &str) -> Option<&'a Value> {
    clusters.iter().find(|c| c["id"] == id)
}

#[tokio::test]
async fn agents_behind_a_one_way_boundary_join_and_report() {
    let ns = NetNs::create().expect("this test needs root and iproute2 (ip netns add)");
    let dir = tempfile::Builder::new()
        .prefix("link-netns-")
        .tempdir()
        .expect("tempdir");

    // The agents' side: nothing but loopback.
    let interfaces = ns.interfaces().expect("list interfaces");
    assert_eq!(
        interfaces,
        vec!["lo".to_string()],
        "the namespace must have only loopback"
    );
    let routes = ns.routes().expect("list routes");
    assert!(
        routes.iter().all(|r| r.contains("dev lo")),
        "only loopback routes inside the namespace: {routes:?}"
    );

    let (_sim, kubeconfig) = start_cluster(&ns, dir.path())
        .await
        .expect("emulated cluster");
    let kubectl_env = [("KUBECONFIG", kubeconfig.as_path())];
    let uid = ns
        .output(
            tool("kubectl"),
            &[
                "get",
                "namespace",
                "kube-system",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            &kubectl_env,
        )
        .await
        .expect("kube-system uid");
    assert!(!uid.is_empty());

    // skoala-init installed by hand, with real helm, inside the namespace.
    let helm_home = dir.path().join("helm-home");
    let chart = workspace_root().join("tests/charts/skoala-init");
    let chart = chart.to_str().expect("utf-8 path");
    let helm_env = [
        ("KUBECONFIG", kubeconfig.as_path()),
        ("HELM_CONFIG_HOME", helm_home.as_path()),
        ("HELM_CACHE_HOME", helm_home.as_path()),
        ("HELM_DATA_HOME", helm_home.as_path()),
    ];
    ns.output(
        tool("helm"),
        &[
            "install",
            "skoala-init",
            chart,
            "-n",
            "skoala-system",
            "--create-namespace",
        ],
        &helm_env,
    )
    .await
    .expect("helm install");

    // The coordinator's side: the host.
    let coordinator = Coordinator::start().await.expect("coordinator");
    let ctl = coordinator.ctl();
    let token = ctl.token(1, "1h").await.expect("token");
    // Inside the namespace `localhost` is the namespace's own loopback: a direct dial can only
    // fail. The proxy dials `localhost` from the host, where the coordinator listens.
    let edge = EdgeAgent {
        ns: &ns,
        dir: dir.path(),
        coordinator_url: format!("https://localhost:{}", coordinator.addr().port()),
        ca: coordinator.ca_file(),
        kubeconfig: kubeconfig.clone(),
    };

    // 1. Without the egress path the agent cannot get out.
    let mut blocked = edge.start(Some(&token), None, 0).expect("agent");
    wait::until(
        "the agent to report it cannot reach the coordinator",
        TIMEOUT,
        || async {
            blocked
                .log()
                .contains("registration failed; retrying")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", blocked.log()));
    assert!(ctl.clusters().await.expect("clusters").is_empty());
    let _ = blocked.child.kill().await;

    // 2. With the egress proxy (socket inside the namespace, upstream from the host).
    let listener = ns
        .bind_tcp("127.0.0.1:0")
        .expect("bind inside the namespace");
    let proxy = ConnectProxy::start_on(listener, ProxyOptions::default()).expect("proxy");
    let proxy_url = proxy.url(None);
    let mut agent = edge
        .start(Some(&token), Some(&proxy_url), 1)
        .expect("agent");
    let clusters = wait::until(
        "the agent behind the boundary to connect",
        TIMEOUT,
        || async {
            let clusters = ctl.clusters().await.ok()?;
            let c = cluster(&clusters, &uid)?;
            (c["connected"] == true && c["release"]["status"] == "deployed")
                .then_some(clusters.clone())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; agent log:\n{}\ncoordinator log:\n{}",
            agent.log(),
            coordinator.log()
        )
    });
    let c = cluster(&clusters, &uid).expect("cluster");
    assert_eq!(c["name"], "edge-1");
    assert_eq!(c["labels"]["zone"], "behind-firewall");
    assert_eq!(c["release"]["revision"], 1);
    let registered = c["registered"].clone();
    let targets = proxy.targets();
    assert!(
        targets.len() >= 2,
        "register and session both go through the proxy: {targets:?}"
    );
    let want = format!("localhost:{}", coordinator.addr().port());
    assert!(targets.iter().all(|t| *t == want), "{targets:?}");

    // 3. A hand-made upgrade inside the namespace reaches the coordinator through the boundary.
    ns.output(
        tool("helm"),
        &[
            "upgrade",
            "skoala-init",
            chart,
            "-n",
            "skoala-system",
            "--reuse-values",
            "--set",
            "skoala-agent.image.tag=v0.20.1-hotfix",
        ],
        &helm_env,
    )
    .await
    .expect("helm upgrade");
    wait::until(
        "the hand-made upgrade in the coordinator's inventory",
        TIMEOUT,
        || async {
            let clusters = ctl.clusters().await.ok()?;
            let r = &cluster(&clusters, &uid)?["release"];
            (r["revision"] == 2 && r["imageTags"]["skoala-agent.image.tag"] == "v0.20.1-hotfix")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));

    // 4. The path drops (the proxy cuts every tunnel): the agent comes back by itself.
    let tunnels_before = proxy.tunnels();
    proxy.cut_tunnels();
    wait::until(
        "the agent to reconnect through the proxy",
        TIMEOUT,
        || async {
            let clusters = ctl.clusters().await.ok()?;
            (proxy.tunnels() > tunnels_before && cluster(&clusters, &uid)?["connected"] == true)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));

    // 5. A restarted agent (no token any more) keeps its identity and does not re-register.
    let _ = agent.child.kill().await;
    let _ = agent.child.wait().await;
    let agent = edge.start(None, Some(&proxy_url), 2).expect("agent");
    wait::until("the restarted agent to connect", TIMEOUT, || async {
        agent
            .log()
            .contains("connected to the coordinator")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    assert!(
        agent.log().contains("using the stored identity"),
        "{}",
        agent.log()
    );
    let clusters = ctl.clusters().await.expect("clusters");
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(
        cluster(&clusters, &uid).expect("cluster")["registered"],
        registered
    );
    let registrations = ctl.audit_of("cluster.registered").await.expect("audit");
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    assert!(
        ctl.audit_of("cluster.reregistered")
            .await
            .expect("audit")
            .is_empty()
    );
}
