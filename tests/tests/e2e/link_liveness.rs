//! Sessions stay honest about who is alive: a silent agent is declared dead and its session
//! closed; short-lived certificates are renewed over the stream and the renewed one works.

use std::time::Duration;

use skoala_e2e::fleet::raw::{self, RawSession};
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, Fleet};
use skoala_proto::v1::{AgentMessage, Hello, agent_message};
use tonic::Code;

#[tokio::test]
async fn a_silent_agent_is_declared_dead() {
    let coord = Coordinator::start_with(CoordinatorOptions {
        ping_interval: Some("1s".into()),
        agent_timeout: Some("3s".into()),
        ..Default::default()
    })
    .await
    .expect("coordinator");
    let token = coord.ctl().token(1, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-silent", "silent")
        .await
        .expect("register");
    let hello = AgentMessage {
        cluster_id: "uid-silent".into(),
        body: Some(agent_message::Body::Hello(Hello::default())),
    };
    // This client never answers the coordinator's pings.
    let mut session = RawSession::open(&coord, Some(&creds), hello)
        .await
        .expect("connect")
        .expect("session");
    let status = session
        .closing_status(Duration::from_secs(30))
        .await
        .expect("closed by the coordinator");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no message from the agent"),
        "{status:?}"
    );
    let clusters = coord.ctl().clusters().await.expect("clusters");
    assert_eq!(clusters[0]["connected"], false, "{clusters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_over_the_stream() {
    let mut fleet = Fleet::start_with(
        1,
        CoordinatorOptions {
            cert_ttl: Some("30s".into()),
            metrics: true,
            ..Default::default()
        },
    )
    .await
    .expect("fleet");
    let before = fleet.wait_connected(1).await.expect("connected");
    let first_serial = before[0]["certificateSerial"]
        .as_str()
        .expect("serial")
        .to_string();
    let ctl = fleet.coordinator.ctl();
    let id = fleet.clusters[0].kube_system_uid().to_string();
    let renewed = ctl
        .wait_audit("certificate.renewed", &id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    assert_eq!(renewed["clusterId"], id.as_str());

    let clusters = ctl.clusters().await.expect("clusters");
    let serial = clusters[0]["certificateSerial"].as_str().expect("serial");
    assert_ne!(
        serial, first_serial,
        "the store records the renewed certificate"
    );

    // The renewed certificate is the one the agent connects with next time.
    fleet.coordinator.kill();
    fleet.coordinator.restart().await.expect("restart");
    fleet
        .wait_connected(1)
        .await
        .expect("reconnected with the renewed certificate");
    let audit = ctl.audit().await.expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["kind"] == "cluster.registered")
            .count(),
        1,
        "renewal never means registering again: {audit:?}"
    );
}

#[tokio::test]
async fn sigterm_closes_sessions_with_a_reason_and_exits_cleanly() {
    let mut coord = Coordinator::start().await.expect("coordinator");
    let token = coord.ctl().token(1, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-bye", "bye")
        .await
        .expect("register");
    let hello = AgentMessage {
        cluster_id: "uid-bye".into(),
        body: Some(agent_message::Body::Hello(Hello::default())),
    };
    let mut session = RawSession::open(&coord, Some(&creds), hello)
        .await
        .expect("connect")
        .expect("session");
    coord
        .wait_connected(1, Duration::from_secs(30))
        .await
        .expect("connected");
    let (status, exit) = tokio::join!(
        session.closing_status(Duration::from_secs(30)),
        coord.terminate()
    );
    let status = status.expect("the session is closed with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(exit.expect("exited").success(), "{}", coord.log());
}
