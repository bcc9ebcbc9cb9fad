//! Audits calls refused for a message over the size limit.
//!
//! tonic enforces `max_decoding_message_size` while decoding a unary request, *before* any
//! handler runs, so a handler cannot see the refusal. This layer looks at the answer instead:
//! a trailers-only response with `grpc-status: OUT_OF_RANGE` and tonic's "too large" message.
//! (On the Session stream the handler sees the error itself and audits it there.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::context::Context;
use crate::store::Store;

/// gRPC's numeric code for OUT_OF_RANGE, which tonic uses for oversized messages.
const OUT_OF_RANGE: &str = "11";

/// The layer: wraps every service of the server.
pub struct AuditOversizeLayer<S> {
    ctx: Arc<Context<S>>,
}

impl<S> AuditOversizeLayer<S> {
    pub fn new(ctx: Arc<Context<S>>) -> Self {
        Self { ctx }
    }
}

impl<S> Clone for AuditOversizeLayer<S> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
        }
    }
}

impl<S, Svc> Layer<Svc> for AuditOversizeLayer<S> {
    type Service = AuditOversize<S, Svc>;
    fn layer(&self, inner: Svc) -> Self::Service {
        AuditOversize {
            ctx: self.ctx.clone(),
            inner,
        }
    }
}

/// The service the layer produces.
pub struct AuditOversize<S, Svc> {
    ctx: Arc<Context<S>>,
    inner: Svc,
}

impl<S, Svc: Clone> Clone for AuditOversize<S, Svc> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, Svc, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuditOversize<S, Svc>
where
    S: Store,
    Svc: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    Svc::Future: Send + 'static,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let path = req.uri().path().to_string();
        let ctx = self.ctx.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let headers = resp.headers();
            let refused = headers
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == OUT_OF_RANGE.as_bytes());
            if refused {
                let message = headers
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .replace("%20", " ");
                if message.contains("too large") {
                    // Off the response path: the caller gets its answer without waiting on
                    // the store.
                    tokio::spawn(async move {
                        ctx.refused(
                            "rpc.message_too_large",
                            "",
                            &peer,
                            format!("{path}: {message}"),
                        )
                        .await;
                    });
                }
            }
            Ok(resp)
        })
    }
}
