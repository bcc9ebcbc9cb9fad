//! Issue 3: certificates are short-lived and renewed over the stream before expiry; the renewed
//! certificate is stored, so a restarted agent uses it (and never registers again), even after
//! the first certificate has expired.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use skoala_e2e::fleet::{Agent, AgentOptions, Coordinator, CoordinatorOptions};
use skoala_e2e::wait;

const TIMEOUT: Duration = Duration::from_secs(90);
/// Certificate lifetime: renewal is due at two thirds (16 s), leaving 8 s of margin on a slow
/// machine before expiry.
const TTL_SECS: i64 = 24;

fn cluster<'a>(clusters: &'a [Value], id: &str) -> Option<&'a Value> {
    clusters.iter().find(|c| c["id"] == id)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn certificates_renew_over_the_session_and_survive_a_restart() {
    let coordinator = Coordinator::start_with(CoordinatorOptions {
        cert_ttl: Some(format!("{TTL_SECS}s")),
        ..Default::default()
    })
    .await
    .expect("coordinator");
    let ctl = coordinator.ctl();
    let sim = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("renew-1"))
        .await
        .expect("emulated cluster");
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "skoala-system"}}))
            .expect("namespace");
    Api::<Namespace>::all(sim.client().await.expect("client"))
        .create(&PostParams::default(), &ns)
        .await
        .expect("create skoala-system");
    let uid = sim.kube_system_uid().to_string();
    let token = ctl.token(1, "1h").await.expect("token");
    // The first certificate is issued after this instant, so it expires no earlier than
    // `started + TTL` (whole seconds).
    let started = unix_now();
    let mut agent = Agent::start(
        &coordinator,
        &sim,
        Some(&token),
        AgentOptions::named("renew-1"),
    )
    .expect("agent");

    let first = wait::until("the agent to connect", TIMEOUT, || async {
        let clusters = ctl.clusters().await.ok()?;
        let c = cluster(&clusters, &uid)?;
        (c["connected"] == true).then(|| c.clone())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let first_serial = first["certificateSerial"]
        .as_str()
        .expect("serial")
        .to_string();
    // ... and no later than this.
    let first_expiry_latest = unix_now() + TTL_SECS + 1;

    // Renewed over the running session, before expiry (at about two thirds of the lifetime).
    let renewed = wait::until("a renewed certificate", TIMEOUT, || async {
        let clusters = ctl.clusters().await.ok()?;
        let c = cluster(&clusters, &uid)?;
        let serial = c["certificateSerial"].as_str()?.to_string();
        (serial != first_serial && c["connected"] == true).then_some(serial)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    assert!(
        unix_now() < started + TTL_SECS - 1,
        "renewal must happen before the first certificate expires"
    );
    ctl.wait_audit("certificate.renewed", &renewed)
        .await
        .expect("audit entry for the renewal");
    assert!(
        agent
            .log()
            .contains("certificate renewed; used from the next connection")
    );

    // Let the first certificate expire, then restart: the agent must use a stored renewed
    // certificate (the first one would be refused) and must not register again.
    wait::until("the first certificate to expire", TIMEOUT, || async {
        (unix_now() > first_expiry_latest).then_some(())
    })
    .await
    .expect("clock");
    let connects_before = agent.log().matches("connected to the coordinator").count();
    agent.restart().expect("restart");
    wait::until("the restarted agent to connect", TIMEOUT, || async {
        (agent.log().matches("connected to the coordinator").count() > connects_before)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let log = agent.log();
    let restart_line = log
        .lines()
        .rev()
        .find(|l| l.contains("using the stored identity"))
        .expect("the restarted agent used the stored identity");
    assert!(
        !restart_line.contains(&first_serial),
        "restarted with the first (expired) certificate: {restart_line}"
    );
    assert_eq!(
        ctl.audit_of("cluster.registered")
            .await
            .expect("audit")
            .len(),
        1
    );
    assert!(
        ctl.audit_of("cluster.reregistered")
            .await
            .expect("audit")
            .is_empty()
    );
    agent.kill();
}
