//! The plans' events: one `FleetLog` stream per plan, ids from one fleet-wide sequence
//! (design §2.2 *Plan events*).
//!
//! Why one sequence over per-plan streams: `events --follow` without `--plan` reads every
//! plan's events with one cursor, so an id must say where an event stands among all of them,
//! as SQLite's global ids do. Why still a stream per plan: retention lets a finished plan's
//! segments go whole and keeps the active plan's, and `plan watch` reads one plan's segments
//! only.
//!
//! **Invariant:** a reader never sees an id before every smaller id is stored or failed, or its
//! cursor would pass an event stored a moment later. Ids are taken and queued on their streams
//! in order (under [`EventLog::next`]), one task answers the appends in that order and only
//! then moves [`EventLog::settled`], and reads stop there: one call's events go to several
//! streams at once, which may land in any order.
//!
//! Why a rollout's events are handed off rather than awaited ([`EventLog::hand_off`]): a
//! stream flushes at most every [`TIMING`]`.min_interval`, and a round that waited for it would
//! hold the next task that long (design §3.3, step 6: losing them loses history, never state).
//! Reads wait for what was handed off before them, so a caller still reads its own events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use kube::api::{Api, DeleteParams, ListParams};
use skoala_store::{Cutoffs, PlanEventRecord, StoreError};

use crate::crd::{FleetLog, Kind, Stream};
use crate::log::writer::{FleetLogs, GroupCommit, SegmentSink as _};
use crate::log::{self, Event, LogStream, StreamWriter};
use crate::store::shared::{Shared, api_error};
use crate::write::Writer;

/// When a plan's stream flushes. A call hands all its events at once, so a short delay
/// gathers them into one write; five flushes a second per stream at most, as for the audit
/// log; a fan-out's events (one per cluster) go in one flush however many.
const TIMING: GroupCommit = GroupCommit {
    delay: Duration::from_millis(20),
    max_batch: 20_000,
    min_interval: Duration::from_millis(200),
};

/// The plans' event log.
pub(super) struct EventLog {
    /// Segment reads and retention's lists and deletes.
    api: Api<FleetLog>,
    /// The lanes every stream's segments are written through.
    sink: Writer<FleetLogs>,
    /// The next id to give; held while an append takes its ids and queues its entries.
    next: tokio::sync::Mutex<u64>,
    /// The last id queued.
    queued: AtomicU64,
    /// Every id up to this one is stored or failed: what reads may return. Moved by
    /// [`settle`] alone.
    settled: Arc<watch::Sender<u64>>,
    /// Each append's answers, in id order, to [`settle`].
    settling: mpsc::UnboundedSender<Batch>,
    /// A writer per plan whose stream exists or was appended to.
    streams: Mutex<BTreeMap<String, StreamWriter<Event>>>,
}

impl EventLog {
    /// Starts a writer for every plan stream stored in `segments` (sealing each open segment
    /// a previous leader left) and continues the ids after the highest stored.
    pub async fn load(shared: &Shared, segments: &[FleetLog]) -> Result<Self, StoreError> {
        let sink = Writer::start(
            FleetLogs::new(
                shared.client.clone(),
                &shared.namespace,
                shared.fence.clone(),
            ),
            shared.budget,
        );
        let specs: Vec<_> = segments
            .iter()
            .filter(|s| s.spec.stream == Stream::Events)
            .map(|s| s.spec.clone())
            .collect();
        let last = specs.iter().map(|s| s.last_id).max().unwrap_or(0);
        let mut streams = BTreeMap::new();
        for spec in &specs {
            let stream = LogStream::of(spec);
            let Some(plan) = stream.plan().map(str::to_string) else {
                continue;
            };
            if streams.contains_key(&plan) {
                continue;
            }
            let writer = StreamWriter::start(sink.clone(), stream, &specs, TIMING)
                .await
                .map_err(|e| api_error(format!("opening the event log of plan {plan}"), e))?;
            streams.insert(plan, writer);
        }
        let settled = Arc::new(watch::Sender::new(last));
        let (settling, batches) = mpsc::unbounded_channel();
        tokio::spawn(settle(batches, Arc::clone(&settled)));
        Ok(EventLog {
            api: super::typed(shared, Kind::FleetLog),
            sink,
            next: tokio::sync::Mutex::new(last + 1),
            queued: AtomicU64::new(last),
            settled,
            settling,
            streams: Mutex::new(streams),
        })
    }

    /// The writer of `plan`'s stream, started when the plan has none yet.
    async fn writer(&self, plan: &str) -> Result<StreamWriter<Event>, StoreError> {
        if let Some(w) = self.streams.lock().expect("lock").get(plan) {
            return Ok(w.clone());
        }
        let stream = LogStream::Events {
            plan: plan.to_string(),
        };
        let writer = StreamWriter::start(self.sink.clone(), stream, &[], TIMING)
            .await
            .map_err(|e| api_error(format!("opening the event log of plan {plan}"), e))?;
        self.streams
            .lock()
            .expect("lock")
            .insert(plan.to_string(), writer.clone());
        Ok(writer)
    }

    /// Appends `events` stamped `now_ms`, each to its plan's stream; returns the last id (0
    /// without events) once all are stored. A failure fails the call, but events of other
    /// plans in it may be stored: a log cannot take an entry back.
    pub async fn append(
        &self,
        events: Vec<PlanEventRecord>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        match self.queue(events, now_ms, true).await? {
            (last, Some(answer)) => {
                answer.await.map_err(|_| closed())??;
                Ok(last)
            }
            (last, None) => Ok(last),
        }
    }

    /// Queues `events` like [`EventLog::append`] and returns their last id at once, before
    /// they are stored; a failure to store them later is logged. Refused now only when an
    /// event cannot be queued at all.
    pub async fn hand_off(
        &self,
        events: Vec<PlanEventRecord>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(self.queue(events, now_ms, false).await?.0)
    }

    /// Takes ids for `events` and queues each on its stream, in order; the answers go to
    /// [`settle`], which tells the returned receiver (when `answered`) how they went.
    async fn queue(
        &self,
        events: Vec<PlanEventRecord>,
        now_ms: i64,
        answered: bool,
    ) -> Result<(i64, Option<oneshot::Receiver<Result<(), StoreError>>>), StoreError> {
        if events.is_empty() {
            return Ok((0, None));
        }
        let mut writers = Vec::with_capacity(events.len());
        for event in &events {
            writers.push(self.writer(&event.plan).await?);
        }
        let mut next = self.next.lock().await;
        let first = *next;
        let last = first + events.len() as u64 - 1;
        // Taken whether stored or not: an id a failed write may have landed with is never
        // given to another event.
        *next = last + 1;
        let appends: Vec<BoxFuture<'static, log::writer::Result<u64>>> = (first..)
            .zip(writers.into_iter().zip(events))
            .map(
                |(id, (writer, event))| match writer.queue_as(id, now_ms, Event::from(event)) {
                    Ok(stored) => Box::pin(stored) as BoxFuture<'static, _>,
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                },
            )
            .collect();
        self.queued.store(last, Ordering::SeqCst);
        let (reply, answer) = if answered {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.settling
            .send(Batch {
                last,
                appends,
                reply,
            })
            .map_err(|_| closed())?;
        drop(next);
        Ok((i64::try_from(last).unwrap_or(i64::MAX), answer))
    }

    /// Events with `id > after_id` of `plan` (every plan's when empty), oldest first, at most
    /// `limit`.
    pub async fn read(
        &self,
        plan: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        // What was queued before this read is read with it: a caller reads its own events.
        let queued = self.queued.load(Ordering::SeqCst);
        let settled = *self
            .settled
            .subscribe()
            .wait_for(|s| *s >= queued)
            .await
            .map_err(|_| closed())?;
        let writers: Vec<StreamWriter<Event>> = {
            let streams = self.streams.lock().expect("lock");
            if plan.is_empty() {
                streams.values().cloned().collect()
            } else {
                streams.get(plan).cloned().into_iter().collect()
            }
        };
        let after = u64::try_from(after_id).unwrap_or(0);
        let limit = limit as usize;
        let mut out = Vec::new();
        for writer in writers {
            let Some(plan) = writer.stream().plan().map(str::to_string) else {
                continue;
            };
            let api = self.api.clone();
            let entries = log::read(
                &writer.segments(),
                &writer.open_entries(),
                after,
                limit,
                |name| {
                    let api = api.clone();
                    async move { api.get(&name).await.map(|s| s.spec) }
                },
            )
            .await
            .map_err(|e| api_error(format!("reading the events of plan {plan}"), e))?;
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| e.id <= settled)
                    .map(|e| e.into_record(&plan)),
            );
        }
        out.sort_by_key(|e| e.id);
        out.truncate(limit);
        Ok(out)
    }

    /// Deletes the sealed segments retention lets go (never the active plan's); returns how
    /// many events they held.
    pub async fn prune(
        &self,
        shared: &Shared,
        cutoffs: &Cutoffs,
        active: Option<&str>,
    ) -> Result<usize, StoreError> {
        let stored = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing the plans' event logs", e))?;
        let segments: Vec<FleetLog> = stored
            .items
            .into_iter()
            .filter(|s| s.spec.stream == Stream::Events)
            .collect();
        let mut deleted = 0;
        for name in log::expired(&segments, cutoffs, active) {
            let Some(segment) = segments
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            else {
                continue;
            };
            // A segment that does not decode is deleted all the same; it counts for nothing.
            let held = log::decode::<Event>(&segment.spec).map_or(0, |e| e.len());
            shared.check_fence()?;
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => deleted += held,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error(format!("deleting log segment {name}"), e)),
            }
            let stream = LogStream::of(&segment.spec);
            if let Some(plan) = stream.plan()
                && let Some(w) = self.streams.lock().expect("lock").get(plan)
            {
                w.forget(&[segment.spec.first_id]);
            }
        }
        Ok(deleted)
    }
}

impl EventLog {
    /// Writes `events` (of a migration's snapshot) as sealed segments of their plans' streams,
    /// keeping their ids and times; returns how many segments. The store reads them once opened
    /// again.
    pub async fn import(&self, events: &[PlanEventRecord]) -> Result<usize, StoreError> {
        let mut by_plan: BTreeMap<&str, Vec<log::Entry<Event>>> = BTreeMap::new();
        for e in events {
            let id = u64::try_from(e.id)
                .map_err(|_| StoreError::Corrupt(format!("plan event id {}", e.id)))?;
            by_plan.entry(&e.plan).or_default().push(log::Entry {
                id,
                at_ms: e.at_unix_ms,
                body: Event::from(e.clone()),
            });
        }
        let mut written = 0;
        for (plan, mut entries) in by_plan {
            entries.sort_by_key(|e| e.id);
            let stream = LogStream::Events {
                plan: plan.to_string(),
            };
            let segments = log::sealed_segments(&stream, &entries)
                .map_err(|e| api_error(format!("the events of plan {plan}"), e))?;
            for (name, spec) in segments {
                self.sink
                    .put(&name, &spec)
                    .await
                    .map_err(|source| StoreError::Api {
                        what: format!("writing log segment {name}"),
                        source,
                    })?;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// One append's answers, and who wants to know how they went.
struct Batch {
    last: u64,
    appends: Vec<BoxFuture<'static, log::writer::Result<u64>>>,
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Answers the appends in the order their ids were taken, moving `settled` past each.
async fn settle(mut batches: mpsc::UnboundedReceiver<Batch>, settled: Arc<watch::Sender<u64>>) {
    while let Some(batch) = batches.recv().await {
        let outcomes = futures::future::join_all(batch.appends).await;
        settled.send_replace(batch.last);
        let failure = outcomes
            .into_iter()
            .find_map(Result::err)
            .map(|e| api_error("appending plan events", e));
        match (batch.reply, failure) {
            (Some(reply), failure) => {
                let _ = reply.send(failure.map_or(Ok(()), Err));
            }
            (None, Some(e)) => {
                tracing::error!(error = %e, "plan events handed off were not stored");
            }
            (None, None) => {}
        }
    }
}

/// The event log's settling task is gone (the store is shutting down).
fn closed() -> StoreError {
    api_error("appending plan events", log::writer::Error::Closed)
}

/// The fleet's `FleetLog` segments, as stored.
pub(super) async fn list(shared: &Shared) -> Result<Vec<FleetLog>, StoreError> {
    let api: Api<FleetLog> = super::typed(shared, Kind::FleetLog);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| api_error("listing the plans' event logs", e))
}
