//! The real `skoala-coordinator` process answers chart requests and refuses values backups it
//! did not ask for on an agent's session (its `relay` and `backups` hooks), talking to a
//! hand-made agent client over real mTLS.

use std::time::Duration;

use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::{backups, relay};
use skoala_e2e::charts::start_repo;
use skoala_e2e::fleet::Coordinator;
use skoala_e2e::fleet::raw::{self, RawSession};
use skoala_e2e::tools::tool;
use skoala_proto::v1::{
    AgentMessage, BackupStored, BackupUpload, ChartChunk, ChartRequest, Hello, agent_message,
    coordinator_message,
};
use skoala_upgrade::backup::sha256_hex;

const TIMEOUT: Duration = Duration::from_secs(60);
const CLUSTER: &str = "uid-relay";

async fn send(session: &RawSession, body: agent_message::Body) {
    session
        .tx
        .send(AgentMessage {
            cluster_id: CLUSTER.into(),
            body: Some(body),
        })
        .await
        .expect("send");
}

/// The next chart chunk or backup acknowledgement (pings are skipped).
async fn next(session: &mut RawSession) -> coordinator_message::Body {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let msg = session
                .inbound
                .message()
                .await
                .expect("the session stays up")
                .expect("a message");
            match msg.body {
                Some(b @ coordinator_message::Body::ChartChunk(_))
                | Some(b @ coordinator_message::Body::BackupStored(_)) => return b,
                _ => continue,
            }
        }
    })
    .await
    .expect("an answer in time")
}

async fn chunk(session: &mut RawSession) -> ChartChunk {
    match next(session).await {
        coordinator_message::Body::ChartChunk(c) => c,
        other => panic!("expected a chart chunk, got {other:?}"),
    }
}

async fn ack(session: &mut RawSession) -> BackupStored {
    match next(session).await {
        coordinator_message::Body::BackupStored(a) => a,
        other => panic!("expected BackupStored, got {other:?}"),
    }
}

fn upload(values: &[u8], generation: i32) -> BackupUpload {
    BackupUpload {
        operation_id: "op-7".into(),
        release: "skoala-init".into(),
        revision: 4,
        values_yaml: values.to_vec(),
        sha256: sha256_hex(values),
        generation,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_relays_prepared_charts_and_stores_no_unasked_backup() {
    let coord = Coordinator::start().await.expect("coordinator");
    let token = coord.ctl().token(1, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, CLUSTER, "relay")
        .await
        .expect("register");
    let hello = AgentMessage {
        cluster_id: CLUSTER.into(),
        body: Some(agent_message::Body::Hello(Hello::default())),
    };
    let mut session = RawSession::open(&coord, Some(&creds), hello)
        .await
        .expect("connect")
        .expect("session");

    // A chart prepared in the coordinator's data dir (what a relay plan does first).
    let dir = DataDir::new(coord.data_dir());
    let repo = start_repo().await.expect("chart repository");
    let helm = skoala_upgrade::Helm::detect(tool("helm"), "")
        .await
        .expect("helm");
    let chart = relay::prepare(&repo.url(), "skoala-init", "0.19.2", &helm, &dir)
        .await
        .expect("prepare");
    drop(repo);
    // Cached by name and version: preparing again needs no repository.
    let again = relay::prepare(
        "http://127.0.0.1:9/none",
        "skoala-init",
        "0.19.2",
        &helm,
        &dir,
    )
    .await
    .expect("prepared from the cache");
    assert_eq!(again.sha256, chart.sha256);

    send(
        &session,
        agent_message::Body::ChartRequest(ChartRequest {
            sha256: chart.sha256.clone(),
        }),
    )
    .await;
    let mut bytes = Vec::new();
    loop {
        let c = chunk(&mut session).await;
        assert!(c.error.is_empty(), "{}", c.error);
        assert_eq!(c.sha256, chart.sha256);
        assert_eq!(c.offset, bytes.len() as u64, "chunks in order");
        bytes.extend_from_slice(&c.data);
        if c.last {
            break;
        }
    }
    assert_eq!(bytes.len() as u64, chart.size);
    assert_eq!(sha256_hex(&bytes), chart.sha256);

    send(
        &session,
        agent_message::Body::ChartRequest(ChartRequest {
            sha256: "f".repeat(64),
        }),
    )
    .await;
    let refused = chunk(&mut session).await;
    assert!(refused.last && refused.data.is_empty());
    assert!(refused.error.contains("has no chart"), "{}", refused.error);

    // Backups: only for an operation sent to this cluster and not finished. This hand-made
    // agent was sent none, so nothing is stored (how a stored backup is kept — 0600, never
    // overwritten, checksum-verified — is `backups`' unit tests; real agents' uploads during
    // plans are `plan_rollout`'s and `attack_agent`'s).
    let first = upload(b"skoala-agent:\n  auth:\n    password: relay-s3cret\n", 3);
    send(&session, agent_message::Body::BackupUpload(first.clone())).await;
    let a = ack(&mut session).await;
    assert!(a.error.contains("not stored"), "{a:?}");
    let file = backups::path_for(&dir, CLUSTER, &first).expect("path");
    assert!(!file.exists(), "{} was written", file.display());

    assert!(
        !coord.log().contains("relay-s3cret"),
        "backup values never reach the coordinator's log"
    );
}
