//! A tiny, real HTTP CONNECT proxy for the link tests: it accepts `CONNECT host:port`, optionally
//! demands basic auth, dials the target (with name overrides, so a test can use a host name only
//! the proxy can resolve), answers `200` and splices bytes both ways.
//!
//! It records what it did (tunnels opened, their targets, bytes carried) so a test can prove
//! traffic went through it, and can cut all open tunnels to simulate a flaky path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the proxy behaves.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// `host` → address: names the proxy resolves itself (anything else is dialled as given).
    pub hosts: HashMap<String, SocketAddr>,
    /// Required `user:password` (basic auth); `None` accepts anyone.
    pub credentials: Option<(String, String)>,
}

/// What the proxy has seen.
#[derive(Debug, Default)]
struct Stats {
    targets: Mutex<Vec<String>>,
    refused_auth: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running proxy; stops (and cuts its tunnels) when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    /// Bumped to cut every open tunnel.
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(options: ProxyOptions) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Self::start_on(listener, options)
    }

    /// Starts on an already bound listener (e.g. one created inside a network namespace).
    pub fn start_on(
        listener: std::net::TcpListener,
        options: ProxyOptions,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let stats = Arc::new(Stats::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let options = Arc::new(options);
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (stats, options, cut_rx) = (stats.clone(), options.clone(), cut_rx.clone());
                    tokio::spawn(async move {
                        // Errors end this one tunnel only; a proxy does not crash on bad clients.
                        let _ = serve(client, &options, &stats, cut_rx).await;
                    });
                }
            })
        };
        Ok(Self {
            addr,
            stats,
            cut,
            task,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://[user:password@]addr` for `HTTPS_PROXY`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The `host:port` of every tunnel opened so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.stats
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.targets().len()
    }

    /// CONNECT requests refused for missing or wrong credentials.
    pub fn refused_auth(&self) -> u64 {
        self.stats.refused_auth.load(Ordering::Relaxed)
    }

    /// Bytes carried client → target and target → client.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.stats.bytes_up.load(Ordering::Relaxed),
            self.stats.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// Cuts every open tunnel (new ones are still accepted).
    pub fn cut_tunnels(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.cut_tunnels();
        self.task.abort();
    }
}

async fn serve(
    client: TcpStream,
    options: &ProxyOptions,
    stats: &Stats,
    mut cut: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    cut.mark_unchanged();
    let mut reader = BufReader::new(client);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            anyhow::bail!("client left during the header");
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("proxy-authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    // CONNECT is the whole protocol; nothing can be buffered past the blank line yet.
    let mut client = reader.into_inner();
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Ok(());
    };
    if let Some((user, password)) = &options.credentials {
        let want = format!(
            "Basic {}",
            base64_encode(format!("{user}:{password}").as_bytes())
        );
        if authorization.as_deref() != Some(want.as_str()) {
            stats.refused_auth.fetch_add(1, Ordering::Relaxed);
            client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\r\n")
                .await?;
            return Ok(());
        }
    }
    let upstream = match target.rsplit_once(':') {
        Some((host, port)) => match options.hosts.get(host) {
            Some(addr) => TcpStream::connect(SocketAddr::new(addr.ip(), port.parse()?)).await,
            None => TcpStream::connect(target).await,
        },
        None => anyhow::bail!("CONNECT target without port"),
    };
    let upstream = match upstream {
        Ok(s) => s,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    stats
        .targets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target.to_string());
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    // Count bytes as they flow (not when the tunnel ends): a test reads them while the tunnel
    // is up, and a cut tunnel never "ends" normally.
    let (mut client_r, mut client_w) = client.into_split();
    let (mut upstream_r, mut upstream_w) = upstream.into_split();
    tokio::select! {
        _ = pump(&mut client_r, &mut upstream_w, &stats.bytes_up) => {}
        _ = pump(&mut upstream_r, &mut client_w, &stats.bytes_down) => {}
        _ = cut.changed() => {}
    }
    Ok(())
}

/// Copies until EOF or error, adding to `counter` per chunk.
async fn pump(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counter: &AtomicU64,
) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Standard base64 with padding (the testkit avoids a dependency for these few lines).
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }
}
