//! Issue 3, "Done when": the agent reaches the coordinator through a real HTTP CONNECT proxy on
//! loopback, and the test proves the traffic went through the proxy.
//!
//! The proof has two halves. The agent is told the coordinator is at `https://[::1]:PORT`, where
//! nothing listens (the coordinator listens on 127.0.0.1 only, and `::1` is in its certificate),
//! so a direct connection is refused — shown by an agent whose `NO_PROXY` exempts the address.
//! The proxy, which requires basic auth, dials `[::1]` as 127.0.0.1; through it the agent
//! registers, holds its session, and comes back after the proxy cuts every tunnel. mTLS runs end
//! to end inside the tunnel: the proxy only ever sees ciphertext.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use skoala_e2e::connect_proxy::{ConnectProxy, ProxyOptions};
use skoala_e2e::fleet::{Agent, AgentOptions, Coordinator};
use skoala_e2e::wait;

const TIMEOUT: Duration = Duration::from_secs(90);
const USER: &str = "fleet-egress";
const PASSWORD: &str = "pr0xy-s3cret";

/// Fetches the agent's `/metrics` (address from its log line) with plain HTTP/1.1.
async fn get_metrics(log: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = log
        .lines()
        .find_map(|l| l.strip_prefix("skoala-agent metrics on http://"))?
        .trim()
        .trim_end_matches("/metrics")
        .to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).await.ok()?;
    Some(page)
}

fn cluster<'a>(clusters: &'a [Value], id: &str) -> Option<&'a Value> {
    clusters.iter().find(|c| c["id"] == id)
}

#[tokio::test]
async fn agent_joins_and_stays_connected_only_through_the_proxy() {
    let coordinator = Coordinator::start().await.expect("coordinator");
    let ctl = coordinator.ctl();
    let sim = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("proxied-1"))
        .await
        .expect("emulated cluster");
    let client = sim.client().await.expect("kube client");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "skoala-system"}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client)
        .create(&PostParams::default(), &ns)
        .await
        .expect("create skoala-system");
    let uid = sim.kube_system_uid().to_string();
    let token = ctl.token(1, "1h").await.expect("token");

    let port = coordinator.addr().port();
    let unreachable_url = format!("https://[::1]:{port}");
    let proxy = ConnectProxy::start(ProxyOptions {
        hosts: HashMap::from([("[::1]".to_string(), coordinator.addr())]),
        credentials: Some((USER.into(), PASSWORD.into())),
    })
    .await
    .expect("proxy");
    let agent_opts = |env: &[(&str, &str)]| {
        let mut o = AgentOptions::named("proxied-1");
        o.coordinator_url = Some(unreachable_url.clone());
        for (k, v) in env {
            o = o.env(k, v);
        }
        o
    };

    // 1. NO_PROXY exempts the coordinator: the agent dials directly, which cannot work, and the
    //    proxy sees nothing.
    let good_proxy = proxy.url(Some((USER, PASSWORD)));
    let direct = Agent::start(
        &coordinator,
        &sim,
        Some(&token),
        agent_opts(&[("HTTPS_PROXY", &good_proxy), ("NO_PROXY", "127.0.0.1,::1")]),
    )
    .expect("agent");
    wait::until("the exempted agent to fail directly", TIMEOUT, || async {
        let log = direct.log();
        (log.contains("registration failed; retrying") && log.contains("onnection refused"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", direct.log()));
    assert_eq!(proxy.tunnels(), 0, "NO_PROXY must bypass the proxy");
    drop(direct);

    // 2. Wrong proxy password: a clear 407 error, and the password is never printed.
    let bad_proxy = proxy.url(Some((USER, "wrong-pa55")));
    let denied = Agent::start(
        &coordinator,
        &sim,
        Some(&token),
        agent_opts(&[("HTTPS_PROXY", &bad_proxy), ("NO_PROXY", "127.0.0.1")]),
    )
    .expect("agent");
    wait::until("the agent to report the proxy's 407", TIMEOUT, || async {
        denied
            .log()
            .contains("requires authentication (407)")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", denied.log()));
    assert!(proxy.refused_auth() >= 1);
    assert!(!denied.log().contains("wrong-pa55"), "{}", denied.log());
    drop(denied);
    assert!(ctl.clusters().await.expect("clusters").is_empty());

    // 3. Through the proxy (NO_PROXY keeps the cluster's own API server direct).
    let mut agent = Agent::start(
        &coordinator,
        &sim,
        Some(&token),
        agent_opts(&[("HTTPS_PROXY", &good_proxy), ("NO_PROXY", "127.0.0.1")])
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .expect("agent");
    wait::until("the proxied agent to connect", TIMEOUT, || async {
        let clusters = ctl.clusters().await.ok()?;
        (cluster(&clusters, &uid)?["connected"] == true).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}\n{}", agent.log(), coordinator.log()));
    let targets = proxy.targets();
    assert!(
        targets.len() >= 2,
        "register and session both tunnel: {targets:?}"
    );
    assert!(
        targets.iter().all(|t| *t == format!("[::1]:{port}")),
        "{targets:?}"
    );
    // mTLS and the heartbeats flow both ways through the tunnel.
    wait::until("traffic both ways through the tunnel", TIMEOUT, || async {
        let (up, down) = proxy.bytes();
        (up > 0 && down > 0).then_some(())
    })
    .await
    .expect("bytes through the proxy");

    // 4. The proxy cuts every tunnel: the agent reconnects through it by itself.
    let before = proxy.tunnels();
    proxy.cut_tunnels();
    wait::until(
        "the agent to reconnect through the proxy",
        TIMEOUT,
        || async {
            let clusters = ctl.clusters().await.ok()?;
            (proxy.tunnels() > before && cluster(&clusters, &uid)?["connected"] == true)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    // The agent's own metrics tell the same story: connected, after a broken session.
    let metrics = wait::until(
        "the agent's metrics after the reconnect",
        TIMEOUT,
        || async {
            let page = get_metrics(&agent.log()).await?;
            let value = |name: &str| -> Option<u64> {
                page.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.trim().parse().ok())
            };
            (value("skoala_agent_connected")? == 1
                && value("skoala_agent_sessions_established_total")? >= 2
                && value("skoala_agent_session_failures_total")? >= 1)
                .then_some(page)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    assert!(!metrics.contains(PASSWORD));

    let log = agent.log();
    assert!(!log.contains(PASSWORD), "the proxy password leaked:\n{log}");
    assert!(log.contains("using an HTTP CONNECT proxy"), "{log}");
    assert_eq!(
        ctl.audit_of("cluster.registered")
            .await
            .expect("audit")
            .len(),
        1
    );
    agent.kill();
}
