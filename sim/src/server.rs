//! The HTTP(S) front door: accepts connections, applies faults, checks the bearer token and
//! hands requests to the API layer; `/_sim/faults` is the admin endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, Body, Req, error_response, json_response, parse_query};
use crate::error::ApiError;
use crate::faults::{FaultCommand, Faults, Verdict};

/// Largest request body accepted (Helm release Secrets can be a few MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What every connection shares.
pub struct Ctx {
    pub state: Arc<ApiState>,
    pub faults: Faults,
    pub token: String,
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => serve_connection(tls, peer, ctx, shutdown).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
                None => serve_connection(tcp, peer, ctx, shutdown).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, ctx: Arc<Ctx>, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { handle(ctx, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(%peer, error = %e, "connection ended");
            }
        }
        _ = shutdown.cancelled() => {}
    }
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let public = matches!(path.as_str(), "/healthz" | "/readyz" | "/livez");
    if path.starts_with("/_sim/") {
        if !authorized(&req, &ctx.token) {
            return Ok(error_response(&ApiError::unauthorized()));
        }
        return Ok(admin(&ctx, req).await);
    }
    match ctx.faults.verdict(method.as_str(), &path) {
        Verdict::Pass => {}
        Verdict::Delay(d) => tokio::time::sleep(d).await,
        Verdict::Fail(code) => {
            tracing::debug!(%method, %path, code, "injected failure");
            return Ok(error_response(&ApiError::injected(code)));
        }
        Verdict::Drop => {
            return Err(std::io::Error::other("cluster stopped by fault injection"));
        }
        Verdict::Hold => {
            ctx.faults.until_resumed().await;
            // A stop while frozen drops the held request too.
            if ctx.faults.is_stopped() {
                return Err(std::io::Error::other("cluster stopped by fault injection"));
            }
        }
    }
    if !public && !authorized(&req, &ctx.token) {
        return Ok(error_response(&ApiError::unauthorized()));
    }
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let query = parse_query(req.uri().query());
    let validation =
        api::FieldValidation::from_query(query.get("fieldValidation").map(String::as_str));
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading the request body: {e}"
            ))));
        }
    };
    let api_req = Req {
        method: method.clone(),
        path: path.clone(),
        query,
        content_type: content_type.clone(),
        accept,
        body,
        cut: ctx.faults.cut_token(),
        validation,
    };
    let resp = api::serve(&ctx.state, api_req).await;
    // Paths, queries and content types only: bodies may hold secrets.
    tracing::debug!(
        cluster = %ctx.state.name, %method, %path, query = %raw_query, %content_type,
        status = resp.status().as_u16(), "request"
    );
    Ok(resp)
}

/// `GET /_sim/faults` shows the fault state; `POST /_sim/faults` applies a [`FaultCommand`].
async fn admin(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/_sim/faults" {
        return error_response(&ApiError::not_found("", "_sim", req.uri().path()));
    }
    match *req.method() {
        Method::GET => json_response(200, &json!(ctx.faults.snapshot())),
        Method::POST => {
            let body: Bytes = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
            };
            match serde_json::from_slice::<FaultCommand>(&body) {
                Ok(cmd) => {
                    tracing::info!(cluster = %ctx.state.name, ?cmd, "fault command");
                    ctx.faults.apply_command(cmd);
                    json_response(200, &json!(ctx.faults.snapshot()))
                }
                Err(e) => error_response(&ApiError::bad_request(format!(
                    "invalid fault command: {e}"
                ))),
            }
        }
        _ => error_response(&ApiError::method_not_allowed("use GET or POST")),
    }
}
