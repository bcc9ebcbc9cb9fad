//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events over a chunked
//! response.
//!
//! A watch starts in one of three ways, as on a real server:
//! - no `resourceVersion` (or `"0"`): synthetic `ADDED` events for everything that exists, then
//!   changes;
//! - `sendInitialEvents=true` (client-go's streaming list): the same, followed by a `BOOKMARK`
//!   annotated `k8s.io/initial-events-end`, which informers wait for;
//! - `resourceVersion=N`: every change after `N` (from the store's event log), then new ones.
//!
//! A watch ends after `timeoutSeconds`, when it falls too far behind (the client re-lists), or
//! when the fault injector cuts connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::{ApiState, Body, Req, Target, object, table};
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::store::{Event, EventType};

/// Default watch duration when the client gives no `timeoutSeconds` (a real server picks
/// 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK carrying the newest
/// resourceVersion it has seen, so that it can resume from there (a real server sends them
/// about once a minute).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

struct Filter {
    rt: ResourceType,
    /// Send each object as a one-row Table (`kubectl get -w`); the value is `includeObject`.
    table: Option<Option<String>>,
    /// Send each object as `PartialObjectMetadata` (a metadata watch).
    metadata_only: bool,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// The event type this watcher sees for `e`, if any. With a label selector, an update that
    /// moves an object into the selection is ADDED and one that moves it out is DELETED, as
    /// from a real API server's watch cache.
    fn event_type(&self, e: &Event) -> Option<&'static str> {
        if e.group != self.rt.group
            || e.plural != self.rt.plural
            || self.namespace.as_ref().is_some_and(|ns| *ns != e.namespace)
            || !self.fields.matches(&e.object)
        {
            return None;
        }
        let now = self.labels.matches(&e.object);
        match (e.kind, &e.old_labels) {
            (EventType::Modified, Some(old)) => {
                let before = self.labels.matches_labels(old);
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
            (kind, _) => now.then_some(kind.as_str()),
        }
    }

    fn wants_object(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }
}

impl Filter {
    /// One watch line for `obj`, printed as a Table when the client asked for one.
    fn line(&self, kind: &str, obj: Value) -> Bytes {
        let obj = object::output(&self.rt, obj);
        match (&self.table, kind) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                line(
                    kind,
                    table::render(&self.rt, &[obj], &rv, include.as_deref()),
                )
            }
            _ if self.metadata_only && matches!(kind, "ADDED" | "MODIFIED" | "DELETED") => {
                line(kind, table::partial(&obj))
            }
            _ => line(kind, obj),
        }
    }
}

fn line(kind: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

pub fn serve(state: Arc<ApiState>, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let (labels, fields) = req.selectors()?;
    let filter = Filter {
        rt: target.rt.clone(),
        table: table::wanted(&req.accept).then(|| req.q("includeObject").map(String::from)),
        metadata_only: table::metadata_wanted(&req.accept),
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    let send_initial = req.flag("sendInitialEvents");
    let rv = req.q("resourceVersion").filter(|rv| *rv != "0");
    let timeout = req
        .q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);

    let mut first: Vec<Bytes> = vec![];
    let start_rv;
    let rx = match rv {
        Some(rv) if !send_initial => {
            let rv: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            let (past, rx) = state.store.subscribe_since(rv)?;
            start_rv = past.last().map_or(rv, |e| e.rv);
            for e in past.iter() {
                if let Some(kind) = filter.event_type(e) {
                    first.push(filter.line(kind, e.object.clone()));
                }
            }
            rx
        }
        _ => {
            let (items, list_rv, rx) = state.store.list_and_subscribe(
                &filter.rt.group,
                &filter.rt.plural,
                filter.namespace.as_deref(),
            );
            start_rv = list_rv;
            for o in items.into_iter().filter(|o| filter.wants_object(o)) {
                first.push(filter.line("ADDED", o));
            }
            if send_initial {
                first.push(line(
                    "BOOKMARK",
                    json!({
                        "kind": filter.rt.kind,
                        "apiVersion": filter.rt.api_version(),
                        "metadata": {
                            "resourceVersion": list_rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }),
                ));
            }
            rx
        }
    };

    let (tx, out) = mpsc::channel::<Chunk>(64);
    let cut = req.cut.clone();
    let bookmarks = req.flag("allowWatchBookmarks");
    tokio::spawn(pump(
        filter,
        Start {
            lines: first,
            rv: start_rv,
            bookmarks,
        },
        rx,
        tx,
        timeout,
        cut,
    ));
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|item| (item, out))
    });
    let body = BodyExt::boxed_unsync(StreamBody::new(StreamExt::boxed(stream)));
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(crate::api::full_body(Bytes::new()))))
}

/// How a watch begins: the lines to send first, the resourceVersion they bring the client
/// to, and whether it wants bookmarks.
struct Start {
    lines: Vec<Bytes>,
    rv: u64,
    bookmarks: bool,
}

async fn pump(
    filter: Filter,
    start: Start,
    mut rx: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Chunk>,
    timeout: Duration,
    cut: tokio_util::sync::CancellationToken,
) {
    for b in start.lines {
        if tx.send(Ok(Frame::data(b))).await.is_err() {
            return;
        }
    }
    // Every event up to `seen` that matches has been sent.
    let mut seen = start.rv;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmark = tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_INTERVAL,
        BOOKMARK_INTERVAL,
    );
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = bookmark.tick(), if start.bookmarks => {
                let b = line("BOOKMARK", json!({
                    "kind": filter.rt.kind,
                    "apiVersion": filter.rt.api_version(),
                    "metadata": {"resourceVersion": seen.to_string()},
                }));
                if tx.send(Ok(Frame::data(b))).await.is_err() {
                    return;
                }
            }
            _ = cut.cancelled() => {
                // Abort the body mid-stream: the client sees the connection drop, as when an
                // API server goes away.
                let _ = tx.send(Err(std::io::Error::other("connection cut by fault injection"))).await;
                return;
            }
            _ = tx.closed() => return,
            ev = rx.recv() => match ev {
                Ok(e) => {
                    seen = seen.max(e.rv);
                    let Some(kind) = filter.event_type(&e) else {
                        continue;
                    };
                    let b = filter.line(kind, e.object.clone());
                    if tx.send(Ok(Frame::data(b))).await.is_err() {
                        return;
                    }
                }
                // Fell behind or the store is gone: end the watch; clients re-list.
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn filter() -> Filter {
        Filter {
            rt: Registry::new()
                .lookup("", "v1", "configmaps")
                .expect("configmaps"),
            table: None,
            metadata_only: false,
            namespace: Some("default".into()),
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        }
    }

    fn event(ns: &str, rv: u64) -> Arc<Event> {
        Arc::new(Event {
            kind: EventType::Added,
            group: String::new(),
            plural: "configmaps".into(),
            namespace: ns.into(),
            name: "c".into(),
            object: json!({"metadata": {"name": "c", "namespace": ns, "resourceVersion": rv.to_string()}}),
            old_labels: None,
            rv,
        })
    }

    async fn next_line(out: &mut mpsc::Receiver<Chunk>) -> Value {
        let frame = out.recv().await.expect("a frame").expect("data");
        let data = frame.into_data().expect("data frame");
        serde_json::from_slice(&data).expect("json line")
    }

    #[tokio::test(start_paused = true)]
    async fn bookmarks_carry_the_newest_version_seen_even_if_filtered() {
        let (btx, brx) = broadcast::channel(16);
        let (tx, mut out) = mpsc::channel(16);
        let start = Start {
            lines: vec![],
            rv: 5,
            bookmarks: true,
        };
        let cut = tokio_util::sync::CancellationToken::new();
        tokio::spawn(pump(filter(), start, brx, tx, DEFAULT_TIMEOUT, cut.clone()));
        btx.send(event("default", 7)).expect("send");
        let added = next_line(&mut out).await;
        assert_eq!(added["type"], "ADDED");
        // Another namespace: not sent, but the watcher has now seen version 9.
        btx.send(event("other", 9)).expect("send");
        tokio::time::sleep(BOOKMARK_INTERVAL + Duration::from_secs(1)).await;
        let bookmark = next_line(&mut out).await;
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], "9");
        cut.cancel();
        assert!(out.recv().await.expect("the cut").is_err());
    }
}
