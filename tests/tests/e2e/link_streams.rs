//! One connection cannot hold more streams than the coordinator allows
//! (`skoala_coordinator::http2`, `max_concurrent_streams`): a peer that opens more is refused
//! stream by stream (`RST_STREAM REFUSED_STREAM`, the connection stays up), and an agent on
//! its own connection does not notice.
//!
//! Compliant HTTP/2 clients (tonic's, hyper's) never exceed the limit the server announces;
//! they queue. So the flooding peer here writes frames by hand: TLS with ALPN h2 and the fleet
//! CA, no client certificate (anyone who can reach the port can do this), then HEADERS of
//! `Register` calls whose body never comes.

use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use skoala_e2e::fleet::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The coordinator's default bound.
const LIMIT: u32 = 100;
/// Streams the flooding peer opens beyond it.
const EXTRA: u32 = 10;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

/// One HTTP/2 frame header plus payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block of literal fields without indexing (no Huffman): valid, and needs no
/// encoder state.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            assert!(s.len() < 127, "short strings only");
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

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

    // TLS like any client: the fleet CA, ALPN h2, no certificate.
    let ca = std::fs::read(fleet.coordinator.ca_file()).expect("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(fleet.coordinator.addr())
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut rd, mut wr) = tokio::io::split(tls);

    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    wr.write_all(&frame(FRAME_SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");

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

    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/skoala.fleet.v1.AgentGateway/Register"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut flood = Vec::new();
    for i in 0..LIMIT + EXTRA {
        // END_HEADERS, no END_STREAM: the body never comes, so every stream stays open.
        flood.extend(frame(FRAME_HEADERS, 0x4, 2 * i + 1, &block));
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
