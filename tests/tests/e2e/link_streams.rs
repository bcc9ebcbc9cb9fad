//! One connection cannot hold more streams than the coordinator allows
//! (`skoala_coordinator::http2`, `max_concurrent_streams`): a peer that opens more is refused
//! stream by stream (`RST_STREAM REFUSED_STREAM`, the connection stays up), and an agent on
//! its own connection does not notice.
//!
//! Compliant HTTP/2 clients (tonic's, hyper's) never exceed the limit the server announces;
//! they queue. So the flooding peer here writes frames by hand
//! (`skoala_e2e::fleet::h2raw`): TLS with ALPN h2, the fleet CA and a certificate it issued,
//! then HEADERS of `Register` calls whose body never comes.

use std::time::Duration;

use skoala_e2e::fleet::Fleet;
use skoala_e2e::fleet::h2raw::{
    FLAG_END_HEADERS, FRAME_GOAWAY, FRAME_HEADERS, FRAME_RST_STREAM, FRAME_SETTINGS,
    REFUSED_STREAM, REGISTER, SETTINGS_MAX_CONCURRENT_STREAMS, connect, frame, grpc_call, preface,
    read_frame,
};
use skoala_e2e::fleet::raw;
use tokio::io::AsyncWriteExt;

/// The coordinator's default bound.
const LIMIT: u32 = 100;
/// Streams the flooding peer opens beyond it.
const EXTRA: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_the_stream_limit_is_refused_and_agents_do_not_notice() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Fleet::start serves metrics; wait_connected's error carries every log.
    let fleet = Fleet::start(1).await.expect("fleet");
    fleet
        .wait_connected(1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let sessions = || fleet.coordinator.metric("skoala_sessions_opened_total");
    let opened = sessions().await.expect("sessions opened");

    // TLS like any client, with a certificate of the fleet CA (a cluster that holds one):
    // a peer without any has a far smaller budget of calls (attack_edge.rs).
    let ca = raw::fleet_ca(&fleet.coordinator).expect("fleet CA");
    let creds = raw::agent_creds(&ca, "some-cluster", false).expect("agent certificate");
    let tls = connect(&fleet.coordinator, Some(&creds))
        .await
        .expect("TLS handshake");
    let (mut rd, mut wr) = tokio::io::split(tls);
    preface(&mut wr).await.expect("preface");

    // The server announces its bound in its first SETTINGS.
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let f = read_frame(&mut rd).await.expect("a frame");
            if f.kind == FRAME_SETTINGS && f.flags & 0x1 == 0 {
                return f
                    .payload
                    .chunks_exact(6)
                    .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
                    .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
            }
        }
    })
    .await
    .expect("the server's SETTINGS in time");
    assert_eq!(announced, Some(LIMIT), "SETTINGS_MAX_CONCURRENT_STREAMS");
    wr.write_all(&frame(FRAME_SETTINGS, 0x1, 0, &[]))
        .await
        .expect("settings ack");

    let block = grpc_call(REGISTER);
    let mut flood = Vec::new();
    for i in 0..LIMIT + EXTRA {
        // END_HEADERS, no END_STREAM: the body never comes, so every stream stays open.
        flood.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 2 * i + 1, &block));
    }
    wr.write_all(&flood).await.expect("HEADERS");

    // Exactly the streams over the bound are refused, one by one; the connection stays.
    let mut refused = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while refused.len() < EXTRA as usize {
            let f = read_frame(&mut rd).await.expect("the connection stays up");
            assert_ne!(
                f.kind, FRAME_GOAWAY,
                "the server closed the whole connection"
            );
            if f.kind == FRAME_RST_STREAM {
                let code =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                assert_eq!(
                    code, REFUSED_STREAM,
                    "stream {} reset with {code}",
                    f.stream
                );
                refused.push(f.stream);
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "only {refused:?} refused in time\n{}",
        fleet.logs()
    );
    let first_refused = 2 * LIMIT + 1;
    assert!(
        refused.iter().all(|&s| s >= first_refused),
        "streams within the bound were refused: {refused:?}"
    );

    // The agent, on its own connection, kept its session throughout.
    let after = fleet.coordinator.ctl().clusters().await.expect("clusters");
    assert_eq!(after[0]["connected"], true, "{after:?}");
    assert_eq!(
        sessions().await.expect("sessions opened"),
        opened,
        "the agent's session was not replaced\n{}",
        fleet.logs()
    );
    drop(wr);
}
