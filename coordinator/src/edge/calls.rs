//! Per-call limits, as a tower layer around every service of the TLS port.
//!
//! tonic bounds a message by its service (`max_decoding_message_size`), and the agent gateway
//! needs 4 MiB for its Session stream; `Register`, open to anyone, needs kilobytes. So this
//! layer wraps each request body in [`LimitedBody`]: `Register` bodies end in
//! `OUT_OF_RANGE` past `--register-max-bytes`, and every body but the Session stream's ends in
//! `DEADLINE_EXCEEDED` if it has not fully arrived within `--request-body-timeout`, so a slow
//! sender cannot hold a stream's buffer. On a connection without a client certificate at
//! most `--unauthenticated-max-streams` calls run at once; the rest are answered
//! `RESOURCE_EXHAUSTED` before their body is read. Each refusal is audited (summarised), and
//! so is a message over tonic's own limit (`--max-message-bytes`), which no handler sees.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::EdgeSettings;
use crate::context::Context;
use skoala_store::Store;

/// The agents' long-lived stream: neither a byte bound of its own nor a body deadline.
const SESSION_PATH: &str = "/skoala.fleet.v1.AgentGateway/Session";
/// The one call open to peers without a certificate.
const REGISTER_PATH: &str = "/skoala.fleet.v1.AgentGateway/Register";

/// The layer; see the module doc.
pub struct CallLimitsLayer<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    ctx: Arc<Context<S>>,
    register_max_bytes: usize,
    body_timeout: Duration,
    unauthenticated_streams: usize,
    /// Calls in flight per connection without a client certificate, by the connection's
    /// remote address (unique while it is open).
    in_flight: Mutex<HashMap<SocketAddr, usize>>,
}

impl<S> CallLimitsLayer<S> {
    /// A layer enforcing `settings`, auditing through `ctx`.
    pub fn new(ctx: Arc<Context<S>>, settings: &EdgeSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                ctx,
                register_max_bytes: settings.register_max_bytes,
                body_timeout: settings.body_timeout,
                unauthenticated_streams: settings.unauthenticated_streams,
                in_flight: Mutex::default(),
            }),
        }
    }
}

impl<S> Clone for CallLimitsLayer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S, Svc> Layer<Svc> for CallLimitsLayer<S> {
    type Service = CallLimits<S, Svc>;
    fn layer(&self, inner: Svc) -> Self::Service {
        CallLimits {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// The service the layer produces.
pub struct CallLimits<S, Svc> {
    shared: Arc<Shared<S>>,
    inner: Svc,
}

impl<S, Svc: Clone> Clone for CallLimits<S, Svc> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// What a [`LimitedBody`] refused, for the audit entry written once the call is answered.
#[derive(Debug, Clone, Copy)]
enum Tripped {
    TooLarge(usize),
    TooSlow(Duration),
}

/// One call's place in its connection's count; given back on drop.
struct InFlight<S> {
    shared: Arc<Shared<S>>,
    conn: SocketAddr,
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.conn) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.conn);
            }
        }
    }
}

impl<S: Store> Shared<S> {
    /// Takes a place for one more call on the certificate-less connection `conn`, if any is
    /// left.
    fn enter(self: &Arc<Self>, conn: SocketAddr) -> Option<InFlight<S>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(conn).or_default();
        if *n >= self.unauthenticated_streams {
            if *n == 0 {
                map.remove(&conn);
            }
            return None;
        }
        *n += 1;
        Some(InFlight {
            shared: self.clone(),
            conn,
        })
    }

    fn audit_later(self: &Arc<Self>, kind: &'static str, peer: SocketAddr, detail: String) {
        // Off the response path: the caller gets its answer without waiting on the store.
        let shared = self.clone();
        tokio::spawn(async move {
            shared
                .ctx
                .refused(kind, "", &peer.to_string(), detail)
                .await;
        });
    }
}

impl<S, Svc, ResBody> Service<http::Request<tonic::body::Body>> for CallLimits<S, Svc>
where
    S: Store,
    Svc: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    Svc::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = info
            .and_then(|i| i.get_ref().remote_addr())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let certified = info.and_then(|i| i.peer_certs()).is_some();
        let path = req.uri().path().to_string();
        let shared = self.shared.clone();

        let in_flight = if certified {
            None
        } else {
            match shared.enter(peer) {
                Some(place) => Some(place),
                None => {
                    let limit = shared.unauthenticated_streams;
                    shared.audit_later(
                        "rpc.too_many_streams",
                        peer,
                        format!(
                            "{path}: over {limit} calls at once on a connection without a client certificate"
                        ),
                    );
                    let status = Status::resource_exhausted(format!(
                        "at most {limit} calls at once on a connection without a client certificate"
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };

        let (limit, deadline) = match path.as_str() {
            SESSION_PATH => (None, None),
            REGISTER_PATH => (Some(shared.register_max_bytes), Some(shared.body_timeout)),
            _ => (None, Some(shared.body_timeout)),
        };
        let tripped = Arc::new(OnceLock::new());
        let req = req.map(|body| {
            if limit.is_none() && deadline.is_none() {
                body
            } else {
                tonic::body::Body::new(LimitedBody::new(body, limit, deadline, tripped.clone()))
            }
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            drop(in_flight);
            match tripped.get() {
                Some(Tripped::TooLarge(limit)) => shared.audit_later(
                    "rpc.message_too_large",
                    peer,
                    format!("{path}: request over the {limit}-byte limit"),
                ),
                Some(Tripped::TooSlow(after)) => shared.audit_later(
                    "rpc.body_timeout",
                    peer,
                    format!("{path}: request body not complete after {after:?}"),
                ),
                None => {
                    if let Some(message) = tonic_refused_as_too_large(resp.headers()) {
                        shared.audit_later(
                            "rpc.message_too_large",
                            peer,
                            format!("{path}: {message}"),
                        );
                    }
                }
            }
            Ok(resp)
        })
    }
}

/// tonic enforces `max_decoding_message_size` (`--max-message-bytes`) while decoding a
/// request, before any handler runs, so no handler sees that refusal; its answer shows it: a
/// trailers-only response with `grpc-status: OUT_OF_RANGE` and tonic's "too large" message.
/// (On the Session stream the handler sees the error itself and audits it there.)
fn tonic_refused_as_too_large(headers: &http::HeaderMap) -> Option<String> {
    /// gRPC's numeric code for OUT_OF_RANGE.
    const OUT_OF_RANGE: &[u8] = b"11";
    if headers.get("grpc-status")?.as_bytes() != OUT_OF_RANGE {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace("%20", " ");
    message.contains("too large").then_some(message)
}

/// A request body with a byte bound and a deadline for its end.
pub struct LimitedBody<B> {
    inner: B,
    limit: Option<usize>,
    seen: usize,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    tripped: Arc<OnceLock<Tripped>>,
}

impl<B> LimitedBody<B> {
    fn new(
        inner: B,
        limit: Option<usize>,
        deadline: Option<Duration>,
        tripped: Arc<OnceLock<Tripped>>,
    ) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            deadline: deadline.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            tripped,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some((after, sleep)) = &mut this.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            let after = *after;
            this.deadline = None;
            let _ = this.tripped.set(Tripped::TooSlow(after));
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the request body did not arrive within {after:?}"
            )))));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(limit)) = (f.data_ref(), this.limit) {
                    this.seen += data.len();
                    if this.seen > limit {
                        let _ = this.tripped.set(Tripped::TooLarge(limit));
                        return Poll::Ready(Some(Err(Status::out_of_range(format!(
                            "request message too large: this call accepts at most {limit} bytes"
                        )))));
                    }
                }
            }
            None => this.deadline = None,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(chunks: Vec<Bytes>) -> tonic::body::Body {
        let stream =
            tokio_stream::iter(chunks.into_iter().map(|c| Ok::<_, Status>(Frame::data(c))));
        tonic::body::Body::new(http_body_util::StreamBody::new(stream))
    }

    #[tokio::test]
    async fn a_body_over_its_bound_is_refused() {
        let tripped = Arc::new(OnceLock::new());
        let limited = LimitedBody::new(
            body(vec![
                Bytes::from(vec![0u8; 600]),
                Bytes::from(vec![0u8; 600]),
            ]),
            Some(1000),
            None,
            tripped.clone(),
        );
        let err = limited.collect().await.expect_err("over the bound");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(matches!(tripped.get(), Some(Tripped::TooLarge(1000))));

        let within = LimitedBody::new(
            body(vec![Bytes::from(vec![0u8; 1000])]),
            Some(1000),
            None,
            Arc::new(OnceLock::new()),
        );
        assert_eq!(
            within.collect().await.expect("within").to_bytes().len(),
            1000
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_cut_at_its_deadline() {
        let tripped = Arc::new(OnceLock::new());
        let pending =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::pending::<
                Result<Frame<Bytes>, Status>,
            >()));
        let limited = LimitedBody::new(
            pending,
            None,
            Some(Duration::from_millis(50)),
            tripped.clone(),
        );
        let err = limited.collect().await.expect_err("cut");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(matches!(tripped.get(), Some(Tripped::TooSlow(_))));
    }
}
