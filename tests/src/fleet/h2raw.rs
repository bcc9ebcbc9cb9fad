//! HTTP/2 written by hand, for peers that misbehave where tonic's and hyper's clients never
//! would: more streams than the server announced, bodies that stop half-way, handshakes that
//! never finish. Frames are built and read byte by byte (RFC 9113); header blocks are HPACK
//! literals without indexing or Huffman coding, which are valid and need no encoder state.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::coordinator::Coordinator;
use super::raw::Creds;

/// DATA.
pub const FRAME_DATA: u8 = 0x0;
/// HEADERS.
pub const FRAME_HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const FRAME_RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const FRAME_SETTINGS: u8 = 0x4;
/// GOAWAY.
pub const FRAME_GOAWAY: u8 = 0x7;
/// The END_STREAM flag of DATA and HEADERS.
pub const FLAG_END_STREAM: u8 = 0x1;
/// The END_HEADERS flag of HEADERS.
pub const FLAG_END_HEADERS: u8 = 0x4;
/// The SETTINGS parameter SETTINGS_MAX_CONCURRENT_STREAMS.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// The RST_STREAM code REFUSED_STREAM.
pub const REFUSED_STREAM: u32 = 0x7;

/// The gRPC path of `Register`.
pub const REGISTER: &str = "/skoala.fleet.v1.AgentGateway/Register";

/// One HTTP/2 frame header plus payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block of literal fields without indexing (no Huffman).
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
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

/// The request headers of a gRPC call to `path`.
pub fn grpc_call(path: &str) -> Vec<u8> {
    header_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// One frame read back.
pub struct Frame {
    /// Its type.
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its stream (0: the connection).
    pub stream: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Reads one frame.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Frame> {
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

/// A TLS connection to the coordinator as any client makes it (the fleet CA, ALPN h2),
/// presenting `creds` if given.
pub async fn connect(
    coordinator: &Coordinator,
    creds: Option<&Creds>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let ca = std::fs::read(coordinator.ca_file()).context("reading ca.pem")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match creds {
        None => builder.with_no_client_auth(),
        Some(c) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(coordinator.addr()).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// Sends the client preface and an empty SETTINGS.
pub async fn preface<W: AsyncWriteExt + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    w.write_all(&frame(FRAME_SETTINGS, 0, 0, &[])).await
}
