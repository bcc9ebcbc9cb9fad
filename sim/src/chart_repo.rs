//! A Helm chart repository server (`index.yaml` + `.tgz`) built from chart source folders.
//!
//! [`serve`] packages every chart version listed in `<charts_dir>/versions.yaml` (see
//! [`package`]) and serves them over plain HTTP, the way a static chart repository (GitHub
//! pages, a ChartMuseum, Harbor's chartrepo) does: `GET /index.yaml` and `GET /<name>-<version>.tgz`.
//! `helm repo add`, `helm repo update`, `helm pull` and `helm upgrade --install --version`
//! work against it with Helm 3 and 4. The packaged archives are also available in process
//! ([`ChartRepo::chart`], [`ChartRepo::write_tgz`]) for tests of the offline (`.tgz` relay) path.

pub mod index;
pub mod package;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use package::{PackagedChart, package_all};

/// A running chart repository; dropping it stops the server and its open connections.
pub struct ChartRepo {
    /// The address the server is bound to.
    pub addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

struct State {
    index_yaml: Bytes,
    /// Keyed by file name (`skoala-init-0.19.2.tgz`).
    charts: BTreeMap<String, (PackagedChart, Bytes)>,
    requests: AtomicU64,
}

impl ChartRepo {
    /// Base URL to pass to `helm repo add`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every packaged chart version served.
    pub fn charts(&self) -> impl Iterator<Item = &PackagedChart> {
        self.state.charts.values().map(|(c, _)| c)
    }

    /// One packaged chart version, if served.
    pub fn chart(&self, name: &str, version: &str) -> Option<&PackagedChart> {
        self.state
            .charts
            .get(&format!("{name}-{version}.tgz"))
            .map(|(c, _)| c)
    }

    /// Writes a chart version's `.tgz` into `dir` (as `<name>-<version>.tgz`) and returns its
    /// path: what a relay hands to a cluster that cannot reach any repository.
    pub fn write_tgz(&self, name: &str, version: &str, dir: &Path) -> std::io::Result<PathBuf> {
        let chart = self.chart(name, version).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no chart {name} {version} in the repository"),
            )
        })?;
        let path = dir.join(chart.file_name());
        std::fs::write(&path, &chart.tgz)?;
        Ok(path)
    }

    /// How many HTTP requests the server has answered (any path, any status).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ChartRepo {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks (a JoinSet), so aborting it ends them too.
        self.server.abort();
    }
}

/// Packages every chart version found under `charts_dir` and serves them on `listen`.
pub async fn serve(charts_dir: &Path, listen: SocketAddr) -> std::io::Result<ChartRepo> {
    let dir = charts_dir.to_path_buf();
    let charts = tokio::task::spawn_blocking(move || package_all(&dir))
        .await
        .map_err(std::io::Error::other)??;
    let now = jiff::Timestamp::now().to_string();
    let index_yaml = Bytes::from(index::render(&charts, &now));
    let charts = charts
        .into_iter()
        .map(|c| {
            let bytes = Bytes::from(c.tgz.clone());
            (c.file_name(), (c, bytes))
        })
        .collect();
    let state = Arc::new(State {
        index_yaml,
        charts,
        requests: AtomicU64::new(0),
    });

    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(accept_loop(listener, state.clone()));
    Ok(ChartRepo {
        addr,
        state,
        server,
    })
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, &req)) }
                    });
                    // A client that hangs up mid-response is its own problem.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let name = req.uri().path().trim_start_matches('/');
    let (content_type, body) = if name == "index.yaml" {
        ("application/x-yaml", state.index_yaml.clone())
    } else if let Some((_, tgz)) = state.charts.get(name) {
        ("application/gzip", tgz.clone())
    } else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("static headers are valid")
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(msg.as_bytes())))
        .expect("static headers are valid")
}
