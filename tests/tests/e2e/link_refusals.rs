//! Issue 3, "Done when": every way in that must be refused is refused, with a clear error for
//! the caller AND an audit entry for the operator. A real coordinator process, real mTLS on
//! loopback; the callers are real tonic clients with crafted credentials or claims.

use std::time::Duration;

use skoala_e2e::fleet::raw::{self, RawSession};
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions};
use skoala_proto::v1::{
    AgentMessage, Hello, Inventory, ListClustersRequest, ReleaseInventory, agent_message,
};
use tonic::Code;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

fn hello(cluster_id: &str) -> AgentMessage {
    AgentMessage {
        cluster_id: cluster_id.to_string(),
        body: Some(agent_message::Body::Hello(Hello {
            agent_version: "raw".into(),
            ..Default::default()
        })),
    }
}

fn heartbeat(cluster_id: &str) -> AgentMessage {
    AgentMessage {
        cluster_id: cluster_id.to_string(),
        body: Some(agent_message::Body::Heartbeat(Default::default())),
    }
}

#[tokio::test]
async fn plaintext_is_refused_and_audited() {
    let coord = Coordinator::start().await.expect("coordinator");
    // h2c to the TLS port: the connection may open, the call must fail.
    let result = match raw::plaintext_channel(&coord).await {
        Ok(channel) => skoala_proto::v1::fleet_admin_client::FleetAdminClient::new(channel)
            .list_clusters(ListClustersRequest {})
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(raw::chain(&e)),
    };
    assert!(result.is_err(), "a plaintext call must fail");
    let entry = coord
        .ctl()
        .wait_audit("tls.plaintext", "requires TLS")
        .await
        .expect("audit entry for the plaintext connection");
    assert!(
        entry["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
}

#[tokio::test]
async fn no_client_certificate_is_refused_everywhere_but_register() {
    let coord = Coordinator::start().await.expect("coordinator");
    let mut admin = raw::admin_client(&coord, None).await.expect("channel");
    let status = admin
        .list_clusters(ListClustersRequest {})
        .await
        .expect_err("admin API without a certificate");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("requires a client certificate"),
        "{status:?}"
    );

    let status = RawSession::open(&coord, None, hello("some-cluster"))
        .await
        .expect("connect")
        .err()
        .expect("session without a certificate is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let entries = coord
        .ctl()
        .audit_of("tls.no_client_certificate")
        .await
        .expect("audit");
    assert_eq!(entries.len(), 2, "one entry per refused call: {entries:?}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_by_tls() {
    let coord = Coordinator::start().await.expect("coordinator");
    let foreign = raw::foreign_ca().expect("foreign CA");
    let creds = raw::admin_creds_from(&foreign).expect("foreign admin cert");
    let err = match raw::admin_client(&coord, Some(&creds)).await {
        Err(e) => format!("{e:#}"),
        Ok(mut c) => c
            .list_clusters(ListClustersRequest {})
            .await
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|s| format!("{s}: {}", s.source_chain())),
    };
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate") || err.contains("alert"),
        "the client must learn the certificate was rejected: {err}"
    );
    let entry = coord
        .ctl()
        .wait_audit("tls.bad_client_certificate", "UnknownIssuer")
        .await
        .expect("audit entry");
    assert!(entry["detail"].as_str().is_some());
}

#[tokio::test]
async fn an_expired_certificate_is_refused_by_tls() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ca = raw::fleet_ca(&coord).expect("fleet CA");
    let creds = raw::agent_creds(&ca, "expired-cluster", true).expect("expired cert");
    let err = match RawSession::open(&coord, Some(&creds), hello("expired-cluster")).await {
        Err(e) => format!("{e:#}"),
        Ok(Err(s)) => format!("{s}: {}", s.source_chain()),
        Ok(Ok(_)) => "accepted".into(),
    };
    assert!(err.contains("alert") || err.contains("Expired"), "{err}");
    coord
        .ctl()
        .wait_audit("tls.bad_client_certificate", "Expired")
        .await
        .expect("audit entry naming the expiry");
}

#[tokio::test]
async fn expired_used_up_revoked_and_garbage_tokens_are_refused() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();

    // Used up: one use, two registrations.
    let once = ctl.token(1, "1h").await.expect("token");
    raw::register(&coord, &once, "cluster-a", "a")
        .await
        .expect("first use registers");
    let status = raw::register(&coord, &once, "cluster-b", "b")
        .await
        .err()
        .expect("second use refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("no uses left"), "{status:?}");

    // Revoked.
    let revoked = ctl.token(5, "1h").await.expect("token");
    let id = revoked.split_once('.').expect("id.secret").0.to_string();
    ctl.ok(&["token", "revoke", &id]).await.expect("revoke");
    let status = raw::register(&coord, &revoked, "cluster-c", "c")
        .await
        .err()
        .expect("revoked token refused");
    assert!(status.message().contains("revoked"), "{status:?}");

    // Expired: a 1 s token, used once `token list` says it has expired.
    let short = ctl.token(5, "1s").await.expect("token");
    let short_id = short.split_once('.').expect("id.secret").0.to_string();
    skoala_e2e::wait::until(
        "the 1s token to expire",
        Duration::from_secs(30),
        || async {
            let tokens = ctl.json(&["token", "list"]).await.ok()?;
            tokens
                .as_array()?
                .iter()
                .any(|t| t["id"] == short_id.as_str() && t["expired"] == true)
                .then_some(())
        },
    )
    .await
    .expect("token expires");
    let status = raw::register(&coord, &short, "cluster-d", "d")
        .await
        .err()
        .expect("expired token refused");
    assert!(status.message().contains("expired"), "{status:?}");

    // Garbage and a wrong secret for a real id.
    let status = raw::register(&coord, "not-a-token", "cluster-e", "e")
        .await
        .err()
        .expect("garbage refused");
    assert!(status.message().contains("not valid"), "{status:?}");
    let status = raw::register(&coord, &format!("{id}.wrongsecret"), "cluster-e", "e")
        .await
        .err()
        .expect("wrong secret refused");
    assert!(status.message().contains("not valid"), "{status:?}");
    assert!(
        !status.message().contains("wrongsecret"),
        "secrets are never echoed"
    );

    for (kind, count) in [
        ("register.token_used_up", 1),
        ("register.token_revoked", 1),
        ("register.token_expired", 1),
        ("register.unknown_token", 2),
    ] {
        let entries = ctl.audit_of(kind).await.expect("audit");
        assert_eq!(entries.len(), count, "{kind}: {entries:?}");
    }
    let audit = serde_json::to_string(&ctl.audit().await.expect("audit")).expect("json");
    for token in [&once, &revoked, &short] {
        let secret = token.split_once('.').expect("id.secret").1;
        assert!(
            !audit.contains(secret),
            "a token secret leaked into the audit log"
        );
    }
}

#[tokio::test]
async fn an_agent_claiming_another_cluster_is_cut_off() {
    let coord = Coordinator::start().await.expect("coordinator");
    let token = coord.ctl().token(2, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-honest", "honest")
        .await
        .expect("register");
    raw::register(&coord, &token, "uid-victim", "victim")
        .await
        .expect("register the victim");

    // Claiming the other cluster in the very first message.
    let status = match RawSession::open(&coord, Some(&creds), hello("uid-victim"))
        .await
        .expect("connect")
    {
        Err(s) => s,
        Ok(mut s) => s.closing_status(CLOSE_TIMEOUT).await.expect("closed"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("claims cluster"), "{status:?}");

    // Honest hello first, then a lie: the stream is closed at the lie.
    let mut session = RawSession::open(&coord, Some(&creds), hello("uid-honest"))
        .await
        .expect("connect")
        .expect("honest session accepted");
    session
        .tx
        .send(heartbeat("uid-victim"))
        .await
        .expect("send the lie");
    let status = session.closing_status(CLOSE_TIMEOUT).await.expect("closed");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let entries = coord
        .ctl()
        .audit_of("session.identity_mismatch")
        .await
        .expect("audit");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries.iter().all(|e| e["clusterId"] == "uid-honest"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("uid-victim"))),
        "{entries:?}"
    );
}

#[tokio::test]
async fn a_revoked_cluster_is_cut_off_and_cannot_come_back() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl.token(2, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-doomed", "doomed")
        .await
        .expect("register");
    let mut session = RawSession::open(&coord, Some(&creds), hello("uid-doomed"))
        .await
        .expect("connect")
        .expect("session accepted");
    coord
        .wait_connected(1, Duration::from_secs(30))
        .await
        .expect("connected");

    let out = ctl
        .ok(&["cluster", "revoke", "doomed"])
        .await
        .expect("revoke");
    assert!(out.contains("uid-doomed"), "{out}");
    let status = session
        .closing_status(CLOSE_TIMEOUT)
        .await
        .expect("live session closed");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");

    let status = match RawSession::open(&coord, Some(&creds), hello("uid-doomed"))
        .await
        .expect("connect")
    {
        Err(s) => s,
        Ok(mut s) => s.closing_status(CLOSE_TIMEOUT).await.expect("closed"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = raw::register(&coord, &token, "uid-doomed", "doomed")
        .await
        .err()
        .expect("a revoked cluster cannot register again");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let clusters = ctl.clusters().await.expect("clusters");
    assert_eq!(clusters[0]["revoked"], true);
    assert_eq!(clusters[0]["connected"], false);
    for kind in [
        "cluster.revoked",
        "session.cluster_revoked",
        "register.cluster_revoked",
    ] {
        ctl.wait_audit(kind, "doomed").await.expect(kind);
    }
}

#[tokio::test]
async fn certificates_are_only_good_for_their_own_api() {
    let coord = Coordinator::start().await.expect("coordinator");
    let token = coord.ctl().token(1, "1h").await.expect("token");
    let agent = raw::register(&coord, &token, "uid-agent", "agent")
        .await
        .expect("register");

    let mut admin = raw::admin_client(&coord, Some(&agent))
        .await
        .expect("channel");
    let status = admin
        .list_clusters(ListClustersRequest {})
        .await
        .expect_err("agent cert on the admin API");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("requires an admin certificate"),
        "{status:?}"
    );

    let admin_creds = raw::admin_creds(&coord).expect("admin creds");
    let status = RawSession::open(&coord, Some(&admin_creds), hello("uid-agent"))
        .await
        .expect("connect")
        .err()
        .expect("admin cert on Session");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let ctl = coord.ctl();
    ctl.wait_audit("admin.agent_certificate", "uid-agent")
        .await
        .expect("audit agent cert on admin API");
    ctl.wait_audit("session.admin_certificate", "admin certificate")
        .await
        .expect("audit admin cert on Session");
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_the_session() {
    let coord = Coordinator::start_with(CoordinatorOptions {
        max_message_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .await
    .expect("coordinator");
    let token = coord.ctl().token(1, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-big", "big")
        .await
        .expect("register");
    let mut session = RawSession::open(&coord, Some(&creds), hello("uid-big"))
        .await
        .expect("connect")
        .expect("session");
    let huge = ReleaseInventory {
        release: "skoala-init".into(),
        image_tags: [("padding".to_string(), "x".repeat(256 * 1024))].into(),
        ..Default::default()
    };
    session
        .tx
        .send(AgentMessage {
            cluster_id: "uid-big".into(),
            body: Some(agent_message::Body::Inventory(Inventory {
                releases: vec![huge],
            })),
        })
        .await
        .expect("send");
    let status = session.closing_status(CLOSE_TIMEOUT).await.expect("closed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    coord
        .ctl()
        .wait_audit("session.message_too_large", "limit")
        .await
        .expect("audit entry");

    // A unary call is refused while decoding, before any handler: still audited.
    let status = raw::register(&coord, &"x".repeat(128 * 1024), "uid-huge", "huge")
        .await
        .err()
        .expect("oversized Register refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    coord
        .ctl()
        .wait_audit("rpc.message_too_large", "AgentGateway/Register")
        .await
        .expect("audit entry for the unary call");
}

/// `Status` keeps its transport cause in `source()`; tests print it for clear failures.
trait SourceChain {
    fn source_chain(&self) -> String;
}

impl SourceChain for tonic::Status {
    fn source_chain(&self) -> String {
        std::error::Error::source(self)
            .map(raw::chain)
            .unwrap_or_default()
    }
}
