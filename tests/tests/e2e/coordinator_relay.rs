//! The real `skoala-coordinator` process answers chart requests and stores values backups on
//! an agent's session (its `relay` and `backups` hooks), talking to a hand-made agent client
//! over real mTLS.

use std::os::unix::fs::PermissionsExt;
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
async fn the_coordinator_relays_prepared_charts_and_stores_backups_once() {
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

    // Backups: stored 0600, acknowledged; the same again is fine; other bytes under the same
    // cluster/operation/generation are refused and the first copy stays.
    let first = upload(b"skoala-agent:\n  auth:\n    password: relay-s3cret\n", 3);
    send(&session, agent_message::Body::BackupUpload(first.clone())).await;
    let a = ack(&mut session).await;
    assert_eq!((a.error.as_str(), a.generation), ("", 3), "{a:?}");
    let file = backups::path_for(&dir, CLUSTER, &first).expect("path");
    assert_eq!(std::fs::read(&file).expect("stored"), first.values_yaml);
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    send(&session, agent_message::Body::BackupUpload(first.clone())).await;
    assert_eq!(
        ack(&mut session).await.error,
        "",
        "a re-sent backup is fine"
    );

    let other = upload(b"something: else\n", 3);
    send(&session, agent_message::Body::BackupUpload(other)).await;
    let refused = ack(&mut session).await;
    assert!(
        refused.error.contains("never overwritten"),
        "{}",
        refused.error
    );
    assert_eq!(std::fs::read(&file).expect("stored"), first.values_yaml);

    let mut damaged = upload(b"a: 1\n", 4);
    damaged.values_yaml = b"a: 2\n".to_vec();
    send(&session, agent_message::Body::BackupUpload(damaged)).await;
    assert!(ack(&mut session).await.error.contains("damaged"));

    assert!(
        !coord.log().contains("relay-s3cret"),
        "backup values never reach the coordinator's log"
    );
}
