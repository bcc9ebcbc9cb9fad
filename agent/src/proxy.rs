//! Reaching the coordinator through an HTTP CONNECT proxy (`HTTPS_PROXY` / `NO_PROXY`).
//!
//! Working clusters often reach the outside only through a forward proxy. tonic has no proxy
//! support, so this module provides the TCP connector tonic dials with
//! ([`Connector`], a tower `Service<Uri>` for `Endpoint::connect_with_connector`): it opens TCP to
//! the proxy, sends `CONNECT host:port`, checks for a 2xx answer and hands the raw tunnel to tonic,
//! which then runs TLS *inside* it — so the proxy sees only ciphertext and mTLS stays end to end.
//! Without a proxy (or for a `NO_PROXY` host) it simply dials TCP.
//!
//! Semantics follow curl and Go's `httpproxy` where they agree: `HTTPS_PROXY` wins over
//! `https_proxy`; a proxy URL without scheme is `http://`; its port defaults to 80; `NO_PROXY`
//! is a comma-separated list of `*`, IP addresses, CIDR blocks, and domain names (which match the
//! name and its subdomains; a leading `.` or `*.` matches subdomains only), each optionally with
//! `:port`. Unlike Go, loopback addresses are not exempt by default (curl's behaviour): a proxy
//! on loopback is a legitimate test and sidecar setup.
//!
//! Proxy credentials (URL userinfo) become a `Proxy-Authorization: Basic` header and are never
//! printed: [`ProxyUrl`]'s `Debug`/`Display` and every error show only the proxy's host and port.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest CONNECT response header we accept.
const MAX_RESPONSE_HEADER: usize = 16 * 1024;

/// Why a connection (direct or through the proxy) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `HTTPS_PROXY` (or the variable named) is not an `http://` URL we can use.
    #[error("invalid proxy URL in {var}: {reason}")]
    InvalidProxyUrl {
        /// The environment variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `NO_PROXY` entry is neither a host, a domain suffix, an IP nor a CIDR.
    #[error("invalid NO_PROXY entry {entry:?}")]
    InvalidNoProxy {
        /// The entry.
        entry: String,
    },
    /// The coordinator URL names no host.
    #[error("the target URI {0:?} has no host")]
    NoHost(String),
    /// The proxy could not be reached.
    #[error("connect to proxy {proxy}: {source}")]
    ProxyConnect {
        /// The proxy, without credentials.
        proxy: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy answered CONNECT with a status other than 2xx (and other than 407).
    #[error("proxy {proxy} refused CONNECT {target}: {status}")]
    Refused {
        /// The proxy, without credentials.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// The status line.
        status: String,
    },
    /// The proxy wants credentials the URL does not carry.
    #[error(
        "proxy {proxy} requires authentication (407) for CONNECT {target}; put user:password in the proxy URL"
    )]
    AuthRequired {
        /// The proxy, without credentials.
        proxy: String,
        /// `host:port` asked for.
        target: String,
    },
    /// The proxy's answer is not HTTP.
    #[error("proxy {proxy} answered CONNECT {target} with something that is not HTTP: {detail}")]
    BadResponse {
        /// The proxy, without credentials.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// What was wrong.
        detail: String,
    },
    /// No connection within the connect timeout.
    #[error("timed out after {timeout:?} connecting to {target}{via}")]
    Timeout {
        /// `host:port` asked for.
        target: String,
        /// ` via proxy <proxy>`, or empty for a direct connection.
        via: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A direct connection (no proxy, or the target is in `NO_PROXY`) failed.
    #[error("connect to {target}: {source}")]
    Direct {
        /// `host:port` asked for.
        target: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A parsed `http://[user:password@]host[:port]` proxy URL. Never prints its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    /// The ready `Proxy-Authorization` header value, if the URL had userinfo.
    authorization: Option<String>,
}

impl ProxyUrl {
    /// Parses a proxy URL; `var` names the variable it came from, for errors.
    pub fn parse(var: &'static str, url: &str) -> Result<Self, ProxyError> {
        let invalid = |reason: &str| ProxyError::InvalidProxyUrl {
            var,
            reason: reason.to_string(),
        };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(invalid(&format!(
                    "scheme {scheme:?} is not supported (only http:// proxies, which CONNECT-tunnel TLS)"
                )));
            }
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| invalid("expected host[:port] after the scheme"))?;
        let port = port.unwrap_or(80);
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let authorization = userinfo
            .map(|u| {
                let decoded =
                    percent_decode(u).ok_or_else(|| invalid("bad %-escape in userinfo"))?;
                Ok::<_, ProxyError>(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(decoded)
                ))
            })
            .transpose()?;
        Ok(Self {
            host: host.to_string(),
            port,
            authorization,
        })
    }

    /// `host:port` of the proxy (bracketed for IPv6), for dialling and messages.
    pub fn authority(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("authority", &self.authority())
            .field(
                "credentials",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// One `NO_PROXY` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    All,
    Ip(IpAddr, Option<u16>),
    Cidr(IpAddr, u8),
    /// `suffix` is lower-case without leading dot; `subdomains_only` for `.x` / `*.x`.
    Domain {
        suffix: String,
        subdomains_only: bool,
        port: Option<u16>,
    },
}

/// A parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
}

impl NoProxy {
    /// Parses a comma-separated list (`NO_PROXY` syntax: hosts, `.domain` suffixes, IPs,
    /// CIDRs, `*`).
    pub fn parse(list: &str) -> Result<Self, ProxyError> {
        let mut rules = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || ProxyError::InvalidNoProxy {
                entry: entry.to_string(),
            };
            if entry == "*" {
                rules.push(Rule::All);
            } else if let Some((ip, bits)) = entry.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let bits: u8 = bits.parse().map_err(|_| bad())?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if bits > max {
                    return Err(bad());
                }
                rules.push(Rule::Cidr(ip, bits));
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                // A bare IPv6 address has colons, so try it whole before splitting off a port.
                rules.push(Rule::Ip(ip, None));
            } else {
                let (host, port) = split_host_port(entry).ok_or_else(bad)?;
                if let Ok(ip) = host.parse::<IpAddr>() {
                    rules.push(Rule::Ip(ip, port));
                    continue;
                }
                let host = host.to_ascii_lowercase();
                let (suffix, subdomains_only) = if let Some(s) = host.strip_prefix("*.") {
                    (s.to_string(), true)
                } else if let Some(s) = host.strip_prefix('.') {
                    (s.to_string(), true)
                } else {
                    (host, false)
                };
                if suffix.is_empty() {
                    return Err(bad());
                }
                rules.push(Rule::Domain {
                    suffix,
                    subdomains_only,
                    port,
                });
            }
        }
        Ok(Self { rules })
    }

    /// True if `host:port` must be reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|rule| match rule {
            Rule::All => true,
            Rule::Ip(want, p) => ip == Some(*want) && p.is_none_or(|p| p == port),
            Rule::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            Rule::Domain {
                suffix,
                subdomains_only,
                port: p,
            } => {
                let name_matches = if host == *suffix {
                    !subdomains_only
                } else {
                    host.ends_with(suffix.as_str())
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                };
                ip.is_none() && name_matches && p.is_none_or(|p| p == port)
            }
        })
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Which proxy, if any, to use for which target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy for HTTPS targets (`HTTPS_PROXY`); `None`: always direct.
    pub proxy: Option<ProxyUrl>,
    /// Targets reached directly even with a proxy.
    pub no_proxy: NoProxy,
}

impl ProxyConfig {
    /// No proxy at all.
    pub fn direct() -> Self {
        Self::default()
    }

    /// From `HTTPS_PROXY`/`https_proxy` and `NO_PROXY`/`no_proxy` (upper case wins, as in curl
    /// and Go). Empty values count as unset.
    pub fn from_env() -> Result<Self, ProxyError> {
        let get = |k: &'static str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (k, v))
        };
        let proxy = get("HTTPS_PROXY").or_else(|| get("https_proxy"));
        let no_proxy = get("NO_PROXY").or_else(|| get("no_proxy"));
        Ok(Self {
            proxy: proxy
                .map(|(var, url)| ProxyUrl::parse(var, &url))
                .transpose()?,
            no_proxy: no_proxy
                .map(|(_, list)| NoProxy::parse(&list))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The proxy to use for `host:port`, or `None` to dial directly.
    pub fn proxy_for(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        self.proxy
            .as_ref()
            .filter(|_| !self.no_proxy.matches(host, port))
    }
}

/// The connector tonic dials with: direct TCP, or a CONNECT tunnel through the proxy.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<ProxyConfig>,
    timeout: Duration,
    /// Source address for direct connections (see [`Connector::local_addr`]).
    local_addr: Option<IpAddr>,
}

impl Connector {
    /// `timeout` bounds the whole of TCP connect + CONNECT exchange.
    pub fn new(config: ProxyConfig, timeout: Duration) -> Self {
        Self {
            config: Arc::new(config),
            timeout,
            local_addr: None,
        }
    }

    /// Dials direct connections from `addr` (any port). The load generator spreads thousands of
    /// simulated agents over several loopback addresses, because one source address has only
    /// ~28,000 ephemeral ports towards one destination.
    pub fn local_addr(mut self, addr: Option<IpAddr>) -> Self {
        self.local_addr = addr;
        self
    }

    /// Opens a TCP stream to `uri`'s host and port, through the proxy if one applies.
    pub async fn connect(&self, uri: &http::Uri) -> Result<TcpStream, ProxyError> {
        let host = uri
            .host()
            .ok_or_else(|| ProxyError::NoHost(uri.to_string()))?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let target = join_host_port(bare_host, port);
        let proxy = self.config.proxy_for(bare_host, port);
        let via = proxy.map(|p| format!(" via proxy {p}")).unwrap_or_default();
        let work = async {
            match proxy {
                Some(proxy) => tunnel(proxy, &target).await,
                None => direct(bare_host, port, self.local_addr)
                    .await
                    .map_err(|source| ProxyError::Direct {
                        target: target.clone(),
                        source,
                    }),
            }
        };
        let stream = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ProxyError::Timeout {
                target: target.clone(),
                via,
                timeout: self.timeout,
            })??;
        // Small frames (heartbeats) should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(TokioIo::new) })
    }
}

/// A plain TCP connection, from `local` if given.
async fn direct(host: &str, port: u16, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{host} has no address of the local address' family ({local})"),
        )
    }))
}

/// Dials the proxy and asks it for a tunnel to `target` (`host:port`).
async fn tunnel(proxy: &ProxyUrl, target: &str) -> Result<TcpStream, ProxyError> {
    let proxy_name = proxy.authority();
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| ProxyError::ProxyConnect {
            proxy: proxy_name.clone(),
            source,
        })?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let io_err = |source| ProxyError::ProxyConnect {
        proxy: proxy_name.clone(),
        source,
    };
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;

    // Read the response header byte by byte: anything after the blank line belongs to the tunnel
    // (in practice nothing arrives before our TLS ClientHello, but never swallow it).
    let mut header = Vec::with_capacity(256);
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_RESPONSE_HEADER {
            return Err(ProxyError::BadResponse {
                proxy: proxy_name,
                target: target.into(),
                detail: format!("response header longer than {MAX_RESPONSE_HEADER} bytes"),
            });
        }
        let b = stream
            .read_u8()
            .await
            .map_err(|e| ProxyError::BadResponse {
                proxy: proxy_name.clone(),
                target: target.into(),
                detail: format!("connection ended during the response header ({e})"),
            })?;
        header.push(b);
    }
    let status_line = header
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (version, code) = (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    );
    match (version, code) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => match code {
            200..=299 => Ok(stream),
            407 => Err(ProxyError::AuthRequired {
                proxy: proxy_name,
                target: target.into(),
            }),
            _ => Err(ProxyError::Refused {
                proxy: proxy_name,
                target: target.into(),
                status: status_line,
            }),
        },
        _ => Err(ProxyError::BadResponse {
            proxy: proxy_name,
            target: target.into(),
            detail: format!("status line {status_line:?}"),
        }),
    }
}

/// Splits `host[:port]` / `[v6][:port]`. `None` for a malformed port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Decodes `%XX` escapes (proxy userinfo may escape `@`, `:` and `%`).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn parses_proxy_urls_and_hides_credentials() {
        let p = ProxyUrl::parse("HTTPS_PROXY", "http://al%40ice:s3cr%3At@proxy.corp:3128/")
            .expect("parse");
        assert_eq!(p.authority(), "proxy.corp:3128");
        // base64("al@ice:s3cr:t")
        assert_eq!(
            p.authorization.as_deref(),
            Some("Basic YWxAaWNlOnMzY3I6dA==")
        );
        let shown = format!("{p} {p:?}");
        assert!(
            !shown.contains("s3cr") && !shown.contains("YWxA"),
            "{shown}"
        );

        let p = ProxyUrl::parse("HTTPS_PROXY", "10.0.0.1").expect("parse");
        assert_eq!(p.authority(), "10.0.0.1:80");
        let p = ProxyUrl::parse("HTTPS_PROXY", "http://[::1]:8080").expect("parse");
        assert_eq!(p.authority(), "[::1]:8080");

        let err = ProxyUrl::parse("HTTPS_PROXY", "socks5://u:hunter2@x:1").expect_err("scheme");
        assert!(err.to_string().contains("socks5"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = ProxyUrl::parse("HTTPS_PROXY", "http://u:hunter2@x:notaport").expect_err("port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn no_proxy_matching() {
        let np = NoProxy::parse(
            " example.com, .internal, *.svc.local, 10.0.0.0/8, 192.168.1.5, fd00::/8, ::1, api:6443",
        )
        .expect("parse");
        assert!(np.matches("example.com", 443));
        assert!(np.matches("a.b.EXAMPLE.com", 443));
        assert!(!np.matches("notexample.com", 443));
        assert!(np.matches("x.internal", 1));
        assert!(!np.matches("internal", 1));
        assert!(np.matches("kubernetes.svc.local", 1));
        assert!(!np.matches("svc.local", 1));
        assert!(np.matches("10.1.2.3", 443));
        assert!(!np.matches("11.1.2.3", 443));
        assert!(np.matches("192.168.1.5", 443));
        assert!(np.matches("[fd12::1]", 443));
        assert!(np.matches("::1", 443));
        assert!(np.matches("api", 6443));
        assert!(!np.matches("api", 443));
        assert!(
            !np.matches("127.0.0.1", 443),
            "loopback is not exempt by default"
        );
        assert!(NoProxy::parse("*").expect("parse").matches("anything", 1));
        assert!(NoProxy::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn proxy_for_respects_no_proxy() {
        let cfg = ProxyConfig {
            proxy: Some(ProxyUrl::parse("HTTPS_PROXY", "http://p:1").expect("parse")),
            no_proxy: NoProxy::parse("direct.example").expect("parse"),
        };
        assert!(cfg.proxy_for("coordinator.example", 443).is_some());
        assert!(cfg.proxy_for("direct.example", 443).is_none());
        assert!(ProxyConfig::direct().proxy_for("x", 1).is_none());
    }

    /// A one-shot CONNECT proxy: answers with `reply`, records the request header, and (on 200)
    /// splices to the requested target.
    async fn one_shot_proxy(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.expect("read");
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let target = head
                .split_whitespace()
                .nth(1)
                .expect("CONNECT target")
                .to_string();
            let mut client = reader.into_inner();
            client.write_all(reply.as_bytes()).await.expect("reply");
            if reply.starts_with("HTTP/1.1 200") {
                let mut upstream = TcpStream::connect(target).await.expect("upstream");
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            head
        });
        (port, task)
    }

    #[tokio::test]
    async fn tunnels_through_connect_with_basic_auth() {
        // The "coordinator": an echo server.
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_port = echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf).await.expect("write");
        });
        let (proxy_port, proxy) =
            one_shot_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let cfg = ProxyConfig {
            proxy: Some(
                ProxyUrl::parse(
                    "HTTPS_PROXY",
                    &format!("http://u:pw@127.0.0.1:{proxy_port}"),
                )
                .expect("parse"),
            ),
            no_proxy: NoProxy::default(),
        };
        let connector = Connector::new(cfg, Duration::from_secs(10));
        let uri: http::Uri = format!("https://127.0.0.1:{echo_port}")
            .parse()
            .expect("uri");
        let mut s = connector.connect(&uri).await.expect("tunnel");
        s.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        drop(s);
        let head = proxy.await.expect("proxy task");
        assert!(
            head.starts_with(&format!("CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n")),
            "{head}"
        );
        assert!(
            head.contains("Proxy-Authorization: Basic dTpwdw==\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn reports_refusals_clearly() {
        for (reply, want) in [
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "requires authentication",
            ),
            ("HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n", "403 Forbidden"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
        ] {
            let (proxy_port, _proxy) = one_shot_proxy(reply).await;
            let cfg = ProxyConfig {
                proxy: Some(
                    ProxyUrl::parse("HTTPS_PROXY", &format!("127.0.0.1:{proxy_port}"))
                        .expect("parse"),
                ),
                no_proxy: NoProxy::default(),
            };
            let err = Connector::new(cfg, Duration::from_secs(10))
                .connect(&"https://coordinator.example:443".parse().expect("uri"))
                .await
                .expect_err("must be refused");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn times_out_on_a_silent_proxy() {
        // Accepts, then never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let cfg = ProxyConfig {
            proxy: Some(
                ProxyUrl::parse("HTTPS_PROXY", &format!("127.0.0.1:{port}")).expect("parse"),
            ),
            no_proxy: NoProxy::default(),
        };
        let err = Connector::new(cfg, Duration::from_millis(300))
            .connect(&"https://c.example".parse().expect("uri"))
            .await
            .expect_err("must time out");
        assert!(matches!(err, ProxyError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("via proxy http://127.0.0.1:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dials_from_the_given_local_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let local: IpAddr = "127.0.0.7".parse().expect("ip");
        let connector =
            Connector::new(ProxyConfig::direct(), Duration::from_secs(5)).local_addr(Some(local));
        let uri: http::Uri = format!("https://127.0.0.1:{port}").parse().expect("uri");
        let (dialed, accepted) = tokio::join!(connector.connect(&uri), listener.accept());
        dialed.expect("connect");
        let (_, peer) = accepted.expect("accept");
        assert_eq!(peer.ip(), local);
    }
}
