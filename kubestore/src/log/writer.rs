//! The stream writer: group commit of one stream's entries into its open segment.
//!
//! [`StreamWriter::append`] buffers an entry and returns once the flush holding it is stored. A
//! flush goes [`GroupCommit::delay`] after the first buffered entry arrived, or as soon as
//! [`GroupCommit::max_batch`] entries wait, and never sooner than
//! [`GroupCommit::min_interval`] after the previous flush: a burst of audit entries costs a
//! few writes a second, not one per entry.
//!
//! A flush rewrites the open segment whole. When the next entry would take it past
//! [`SEAL_AT`], the segment is first stored with its entries unsealed, then
//! stored again with `sealed: true` and nothing else changed, and the entry opens the next
//! segment. Sealing never adds entries in the same write, so a seal whose answer was lost (it
//! may have landed) is retried with identical content, which the CRD's rule accepts, instead of
//! with new entries, which it would refuse forever.
//!
//! A failed write fails the entries it carried, and the ids not stored are given again to the
//! next entries: an entry whose append failed was never acknowledged. Its write may still have
//! landed (a timeout); the next flush then rewrites the open segment without it. A stream whose
//! ids the caller gives ([`StreamWriter::append_as`], a plan's events) takes whatever ids come
//! next; a segment then starts at its first entry's id and ends at its last's.
//!
//! A new leader starts a writer with the segments stored for the stream
//! ([`StreamWriter::start`]): it seals the open one its predecessor left, then continues after
//! the last stored id. The predecessor cannot write any more (its fence closed before this
//! leader took the Lease), so nothing races the seal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::{Body, Entry, LogStream, SEAL_AT, encode_lines, line};
use crate::crd::{Encoding, FleetLogSpec, GROUP, Kind, VERSION};
use crate::lease::Fence;
use crate::write::{self, Class, SinkError};

/// Why an append or the start of a writer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The entry is refused before it gets an id.
    #[error("the entry cannot be stored")]
    Entry(#[source] Arc<super::Error>),
    /// Storing the segment that held the entry failed; the entry has no id.
    #[error("storing log segment {name}")]
    Store {
        /// The segment.
        name: String,
        /// What the sink said.
        #[source]
        source: Arc<SinkError>,
    },
    /// A new leader could not seal its predecessor's open segment, so it cannot write.
    #[error("sealing the previous leader's log segment {name}")]
    Seal {
        /// The segment.
        name: String,
        /// What the sink said.
        #[source]
        source: Arc<SinkError>,
    },
    /// The writer's task has ended.
    #[error("the log writer has stopped")]
    Closed,
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stores one `FleetLog` object, whole: creates it or replaces its spec.
pub trait SegmentSink: Send + Sync + 'static {
    /// Stores `spec` as the segment `name`.
    fn put(
        &self,
        name: &str,
        spec: &FleetLogSpec,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// When a stream flushes (design §2.2 *Audit*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// How long the first buffered entry waits for others.
    pub delay: Duration,
    /// A batch this large is flushed at once.
    pub max_batch: usize,
    /// The least time between two flushes of one stream.
    pub min_interval: Duration,
}

impl Default for GroupCommit {
    /// 200 ms, 500 entries, at most 5 flushes a second.
    fn default() -> Self {
        GroupCommit {
            delay: Duration::from_millis(200),
            max_batch: 500,
            min_interval: Duration::from_millis(200),
        }
    }
}

/// The writer of one stream; cheap to clone. Its task flushes what is buffered and stops once
/// every handle is dropped.
pub struct StreamWriter<B: Body> {
    tx: mpsc::UnboundedSender<Append<B>>,
    stored: Arc<Mutex<Vec<Entry<B>>>>,
    segments: Arc<Mutex<BTreeSet<u64>>>,
    stream: LogStream,
}

impl<B: Body> Clone for StreamWriter<B> {
    fn clone(&self) -> Self {
        StreamWriter {
            tx: self.tx.clone(),
            stored: Arc::clone(&self.stored),
            segments: Arc::clone(&self.segments),
            stream: self.stream.clone(),
        }
    }
}

struct Append<B> {
    /// Given by the caller ([`StreamWriter::append_as`]), or `None`: the next of the stream.
    id: Option<u64>,
    at_ms: i64,
    body: B,
    /// When it was buffered: the flush is due `delay` after the first.
    since: Instant,
    done: oneshot::Sender<Result<u64>>,
}

impl<B: Body> StreamWriter<B> {
    /// Starts the writer of `stream` on the current runtime, after sealing every open segment
    /// of the stream in `stored` (what the API server holds; other streams' segments are
    /// ignored). The first id is the one after the last stored.
    pub async fn start<S: SegmentSink>(
        sink: S,
        stream: LogStream,
        stored: &[FleetLogSpec],
        timing: GroupCommit,
    ) -> Result<Self> {
        let mut mine: Vec<&FleetLogSpec> = stored
            .iter()
            .filter(|s| LogStream::of(s) == stream)
            .collect();
        mine.sort_by_key(|s| s.first_id);
        for open in mine.iter().filter(|s| !s.sealed) {
            let name = stream.segment_name(open.first_id);
            let sealed = FleetLogSpec {
                sealed: true,
                ..(*open).clone()
            };
            sink.put(&name, &sealed).await.map_err(|e| Error::Seal {
                name,
                source: Arc::new(e),
            })?;
        }
        let next_id = mine.iter().map(|s| s.last_id).max().unwrap_or(0) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let segments = Arc::new(Mutex::new(mine.iter().map(|s| s.first_id).collect()));
        let task = Task {
            sink,
            stream: stream.clone(),
            timing,
            next_id,
            open: None,
            shown: Arc::clone(&stored),
            segments: Arc::clone(&segments),
        };
        tokio::spawn(task.run(rx));
        Ok(StreamWriter {
            tx,
            stored,
            segments,
            stream,
        })
    }

    /// Appends an entry recorded at `at_ms`; returns its id once the segment holding it is
    /// stored.
    pub async fn append(&self, at_ms: i64, body: B) -> Result<u64> {
        self.send(None, at_ms, body).await
    }

    /// Appends an entry under `id`, which the caller assigns: past every id appended before,
    /// not necessarily the next (a plan's events take ids from the fleet-wide sequence of every
    /// plan's events). Entries are stored in the order they are appended; an id not past the
    /// last is refused ([`super::Error::OutOfOrder`]). Returns once the segment holding it is
    /// stored.
    pub async fn append_as(&self, id: u64, at_ms: i64, body: B) -> Result<u64> {
        self.send(Some(id), at_ms, body).await
    }

    /// [`StreamWriter::append_as`] in two halves: the entry takes its place in the stream now
    /// (or is refused now), and the returned future answers once its segment is stored. For a
    /// caller that must queue in order under a lock but not hold the lock until the flush.
    pub fn queue_as(
        &self,
        id: u64,
        at_ms: i64,
        body: B,
    ) -> Result<impl Future<Output = Result<u64>> + Send + 'static> {
        let answer = self.queue(Some(id), at_ms, body)?;
        Ok(async move { answer.await.map_err(|_| Error::Closed)? })
    }

    async fn send(&self, id: Option<u64>, at_ms: i64, body: B) -> Result<u64> {
        self.queue(id, at_ms, body)?
            .await
            .map_err(|_| Error::Closed)?
    }

    fn queue(
        &self,
        id: Option<u64>,
        at_ms: i64,
        body: B,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        // Refused here, before it takes an id or a place in a batch.
        line(&Entry {
            id: u64::MAX,
            at_ms,
            body: body.clone(),
        })
        .map_err(|e| Error::Entry(Arc::new(e)))?;
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Append {
                id,
                at_ms,
                body,
                since: Instant::now(),
                done,
            })
            .map_err(|_| Error::Closed)?;
        Ok(answer)
    }

    /// The entries of the open segment as last stored, for reads of the newest entries without
    /// a request (see [`super::read`]).
    pub fn open_entries(&self) -> Vec<Entry<B>> {
        self.stored.lock().expect("lock").clone()
    }

    /// The stream this writer appends to.
    pub fn stream(&self) -> &LogStream {
        &self.stream
    }

    /// Every segment of the stream stored, by first id: those it started with and those it
    /// wrote since, less those [`forget`](Self::forget) was told of. What [`super::read`]
    /// takes, without listing the server.
    pub fn segments(&self) -> BTreeMap<u64, String> {
        self.segments
            .lock()
            .expect("lock")
            .iter()
            .map(|first| (*first, self.stream.segment_name(*first)))
            .collect()
    }

    /// Segments retention deleted, by first id: reads no longer look for them.
    pub fn forget(&self, first_ids: &[u64]) {
        let mut segments = self.segments.lock().expect("lock");
        for first in first_ids {
            segments.remove(first);
        }
    }
}

/// A segment as the writer holds it.
#[derive(Clone)]
struct Segment<B> {
    first_id: u64,
    entries: Vec<Entry<B>>,
    lines: Vec<Vec<u8>>,
    raw: usize,
    /// Stored unsealed, full; its seal is still to be stored.
    full: bool,
}

impl<B: Body> Segment<B> {
    fn new(first_id: u64) -> Self {
        Segment {
            first_id,
            entries: Vec::new(),
            lines: Vec::new(),
            raw: 0,
            full: false,
        }
    }

    fn last_id(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.first_id.saturating_sub(1), |e| e.id)
    }

    fn spec(&self, stream: &LogStream, sealed: bool) -> FleetLogSpec {
        FleetLogSpec {
            stream: stream.stream(),
            plan: stream.plan().map(str::to_string),
            first_id: self.first_id,
            last_id: self.last_id(),
            from_ms: self.entries.iter().map(|e| e.at_ms).min().unwrap_or(0),
            to_ms: self.entries.iter().map(|e| e.at_ms).max().unwrap_or(0),
            sealed,
            encoding: Encoding::GzipJsonl,
            data: encode_lines(self.lines.iter().map(Vec::as_slice)),
        }
    }
}

struct Task<B, S> {
    sink: S,
    stream: LogStream,
    timing: GroupCommit,
    /// The id the next entry gets: one past the last stored.
    next_id: u64,
    /// The open segment as stored (`None` before the first flush and right after a seal).
    open: Option<Segment<B>>,
    /// `open`'s entries, for [`StreamWriter::open_entries`].
    shown: Arc<Mutex<Vec<Entry<B>>>>,
    /// The first ids of the segments stored, for [`StreamWriter::segments`].
    segments: Arc<Mutex<BTreeSet<u64>>>,
}

impl<B: Body, S: SegmentSink> Task<B, S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Append<B>>) {
        let mut last_flush: Option<Instant> = None;
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            let earliest = last_flush.map_or(first.since, |t| t + self.timing.min_interval);
            let due = (first.since + self.timing.delay).max(earliest);
            let mut batch = vec![first];
            let mut open = true;
            while batch.len() < self.timing.max_batch {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(a) => batch.push(a),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = sleep_until(due) => break,
                }
            }
            // Full or closing: go now, but not more often than allowed.
            sleep_until(earliest).await;
            last_flush = Some(Instant::now());
            self.flush(batch).await;
            if !open {
                return;
            }
        }
    }

    /// Stores `batch` after what is stored: the writes it takes, in order, until one fails.
    async fn flush(&mut self, batch: Vec<Append<B>>) {
        let mut writes: Vec<(Segment<B>, bool)> = Vec::new();
        let mut cur = self
            .open
            .clone()
            .unwrap_or_else(|| Segment::new(self.next_id));
        if cur.full {
            writes.push((cur.clone(), true));
            cur = Segment::new(self.next_id);
        }
        let mut changed = false;
        let mut waiters = Vec::with_capacity(batch.len());
        let mut next = self.next_id;
        for a in batch {
            let id = a.id.unwrap_or(next);
            if id < next {
                let refused = super::Error::OutOfOrder { id, last: next - 1 };
                let _ = a.done.send(Err(Error::Entry(Arc::new(refused))));
                continue;
            }
            next = id + 1;
            let entry = Entry {
                id,
                at_ms: a.at_ms,
                body: a.body,
            };
            if cur.entries.is_empty() {
                cur.first_id = id;
            }
            let line = line(&entry).expect("checked by append");
            if !cur.entries.is_empty() && cur.raw + line.len() > SEAL_AT {
                if changed {
                    writes.push((cur.clone(), false));
                }
                writes.push((cur, true));
                cur = Segment::new(entry.id);
            }
            cur.raw += line.len();
            cur.lines.push(line);
            waiters.push((entry.id, a.done));
            cur.entries.push(entry);
            changed = true;
        }
        if changed {
            writes.push((cur, false));
        }

        let mut failure = None;
        for (mut segment, sealed) in writes {
            let name = self.stream.segment_name(segment.first_id);
            match self
                .sink
                .put(&name, &segment.spec(&self.stream, sealed))
                .await
            {
                Ok(()) => {
                    self.segments.lock().expect("lock").insert(segment.first_id);
                    self.next_id = segment.last_id() + 1;
                    self.open = (!sealed).then_some(segment);
                }
                Err(e) => {
                    if sealed {
                        // Stored unsealed already (a seal follows only a stored write of the
                        // same entries); seal it first next time.
                        segment.full = true;
                        self.open = Some(segment);
                    }
                    failure = Some(Error::Store {
                        name,
                        source: Arc::new(e),
                    });
                    break;
                }
            }
        }
        *self.shown.lock().expect("lock") = self
            .open
            .as_ref()
            .map(|s| s.entries.clone())
            .unwrap_or_default();
        for (id, done) in waiters {
            let outcome = match &failure {
                Some(e) if id >= self.next_id => Err(e.clone()),
                _ => Ok(id),
            };
            let _ = done.send(outcome);
        }
    }
}

/// The field manager of the coordinator's server-side applies of log segments.
pub const FIELD_MANAGER: &str = "skoala-coordinator";

/// The [`write::Sink`] of log segments: a server-side apply of the whole object (it creates
/// the segment or replaces its spec in one request, with no `resourceVersion` to track),
/// refused by the fence once this process no longer leads. Keys are segment names.
pub struct FleetLogs {
    api: Api<crate::crd::FleetLog>,
    fence: Fence,
}

impl FleetLogs {
    /// Segments in `namespace`, written while `fence` is open.
    pub fn new(client: kube::Client, namespace: &str, fence: Fence) -> Self {
        FleetLogs {
            api: Api::namespaced_with(client, namespace, &Kind::FleetLog.api_resource()),
            fence,
        }
    }
}

impl write::Sink for FleetLogs {
    type Key = String;

    async fn write(&self, key: &String, patch: Value) -> Result<(), SinkError> {
        self.fence.check()?;
        let object = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": Kind::FleetLog.name(),
            "metadata": {"name": key},
            "spec": patch.get("spec").cloned().unwrap_or(Value::Null),
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api.patch(key, &params, &Patch::Apply(object)).await?;
        Ok(())
    }
}

/// Segments go through the write lanes (one request in flight per segment, under the
/// process's write budget) as `Durable` writes.
impl SegmentSink for write::Writer<FleetLogs> {
    async fn put(&self, name: &str, spec: &FleetLogSpec) -> Result<(), SinkError> {
        let patch = json!({ "spec": spec });
        self.write(name.to_string(), Class::Durable, patch)
            .await
            .map_err(|e| Box::new(e) as SinkError)
    }
}
