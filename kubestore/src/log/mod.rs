//! The audit log and the plans' event logs as `FleetLog` segments (design §2.2 *Audit*, *Plan
//! events*, *Retention*; §4.3).
//!
//! A *stream* (the audit log, or one plan's events) is a run of entries with increasing ids.
//! The audit log's are contiguous, `1, 2, 3, …`, assigned by the leader's [`StreamWriter`]; a
//! plan's events carry the fleet-wide event ids the store assigns across every plan's stream
//! (one cursor for `events --follow` over all plans), so they have gaps where another plan's
//! events went ([`Body::CONTIGUOUS`]). It is stored as segments: each a
//! `FleetLog` object holding the entries `firstId..=lastId` as gzip-compressed JSON lines in
//! base64. The newest segment is *open* and rewritten whole on each flush; once its raw JSON
//! would pass [`SEAL_AT`] it is *sealed* (the CRD's CEL rule then refuses any change) and the
//! next entry opens a new one.
//!
//! A segment is named after its stream and its first id, zero-padded so names sort by id
//! (`audit-00000000000000000001`, `events-<plan>-00000000000000000001`): a reader that watches
//! only metadata knows where each segment starts, and every id of a segment is below the next
//! one's first id.
//!
//! # Layout
//!
//! - this file: entries and their encoding ([`encode`], [`decode`]), segment names
//!   ([`LogStream`]), reading `after_id` across segments ([`read`]), and retention
//!   ([`expired`]); all pure;
//! - [`writer`]: the stream writer (group commit, sealing, a new leader continuing the ids),
//!   generic over [`writer::SegmentSink`] ("store this object"); [`writer::FleetLogs`] is the
//!   one that reaches the API server through the write lanes, behind the fence.
//!
//! Decoding trusts nothing: a segment is read back from the API server, where anyone with
//! `update` on `fleetlogs` could have written it, so every malformation is refused with its own
//! [`Error`] and the decompressed size is capped (a gzip bomb is refused, not inflated).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skoala_store::{AuditRecord, Cutoffs, NewAudit, PlanEventRecord};

use crate::crd::log::MAX_DATA;
use crate::crd::{Encoding, FleetLog, FleetLogSpec, Stream};

pub mod writer;

pub use writer::StreamWriter;

#[cfg(test)]
mod tests;

/// A segment is sealed once its raw JSON lines would pass this size: its gzip in base64 then
/// stays under the CRD's bound on `data` even for entries that do not compress.
pub const SEAL_AT: usize = 256 * 1024;

/// The largest JSON line of one entry. Bounds what one entry can add past [`SEAL_AT`], and so
/// the decompressed size a decoder accepts ([`MAX_RAW`]).
pub const MAX_ENTRY: usize = 64 * 1024;

/// The most raw bytes a segment may hold: a full segment, plus at most one entry's line when
/// that entry alone is larger than what remained.
pub const MAX_RAW: usize = SEAL_AT + MAX_ENTRY;

/// Why a segment could not be encoded or decoded, or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The segment belongs to another stream than the one being read.
    #[error("the segment holds the {found:?} stream, not {expected:?}")]
    WrongStream {
        /// The stream being read.
        expected: Stream,
        /// The segment's.
        found: Stream,
    },
    /// `data` is longer than the CRD allows.
    #[error("the segment's data is {len} bytes, more than {MAX_DATA}")]
    DataTooLarge {
        /// Its length.
        len: usize,
    },
    /// `data` is not base64.
    #[error("the segment's data is not base64")]
    Base64(#[source] base64::DecodeError),
    /// The decoded bytes are not one gzip stream.
    #[error("the segment's data is not gzip")]
    Gzip(#[source] std::io::Error),
    /// Bytes follow the gzip stream.
    #[error("{0} bytes follow the segment's gzip stream")]
    TrailingData(usize),
    /// The entries inflate past [`MAX_RAW`].
    #[error("the segment inflates past {MAX_RAW} bytes")]
    Inflated,
    /// A line is not an entry of this stream.
    #[error("line {line} of the segment is not an entry")]
    Line {
        /// 1-based.
        line: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The spec's id range is empty or reversed.
    #[error("the segment's ids {first}..={last} are not a range")]
    Range {
        /// `firstId`.
        first: u64,
        /// `lastId`.
        last: u64,
    },
    /// An entry's id does not follow the one before it (contiguous streams: is not the next of
    /// the spec's range).
    #[error("line {line} has id {found}, expected {expected}")]
    Id {
        /// 1-based.
        line: usize,
        /// What `firstId` and the line's position say.
        expected: u64,
        /// The entry's.
        found: u64,
    },
    /// The entries stop before `lastId`.
    #[error("the segment ends at id {found}, its spec says {last}")]
    Short {
        /// The last entry's id (`firstId - 1` when there is none).
        found: u64,
        /// `lastId`.
        last: u64,
    },
    /// The entries go on past `lastId`.
    #[error("line {line} is past the segment's last id {last}")]
    Long {
        /// 1-based.
        line: usize,
        /// `lastId`.
        last: u64,
    },
    /// An id given to a writer is not past the stream's last one; the entry is refused.
    #[error("id {id} is not past the stream's last id {last}")]
    OutOfOrder {
        /// The id given.
        id: u64,
        /// The stream's last id.
        last: u64,
    },
    /// One entry's JSON line is longer than [`MAX_ENTRY`]; it is refused, not stored.
    #[error("an entry of {len} bytes is longer than {MAX_ENTRY}")]
    EntryTooLarge {
        /// Its length.
        len: usize,
    },
    /// Fetching a stored segment for a read failed.
    #[error("reading segment {name}")]
    Fetch {
        /// The segment.
        name: String,
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one stream's entries carry besides their id and time; one type per [`Stream`].
pub trait Body:
    Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The stream these entries belong to.
    const STREAM: Stream;
    /// Whether the stream's ids go up by one. Otherwise they only increase: a plan's events
    /// share one id sequence with every other plan's.
    const CONTIGUOUS: bool;
}

/// One entry of a stream, as one JSON line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<B> {
    /// Its id: contiguous within the stream, assigned by the writer.
    pub id: u64,
    /// When it was recorded, in Unix milliseconds.
    pub at_ms: i64,
    /// The rest.
    #[serde(flatten)]
    pub body: B,
}

/// An audit entry: [`NewAudit`]'s fields, with JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// As in [`NewAudit::kind`].
    pub kind: String,
    /// As in [`NewAudit::cluster_id`]; omitted when empty, like the fields below.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// As in [`NewAudit::peer`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    /// As in [`NewAudit::detail`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Body for Audit {
    const STREAM: Stream = Stream::Audit;
    const CONTIGUOUS: bool = true;
}

impl From<NewAudit> for Audit {
    fn from(a: NewAudit) -> Self {
        Audit {
            kind: a.kind,
            cluster_id: a.cluster_id,
            peer: a.peer,
            detail: a.detail,
        }
    }
}

impl Entry<Audit> {
    /// The record the store's callers read.
    pub fn into_record(self) -> AuditRecord {
        AuditRecord {
            id: record_id(self.id),
            at_unix_ms: self.at_ms,
            kind: self.body.kind,
            cluster_id: self.body.cluster_id,
            peer: self.body.peer,
            detail: self.body.detail,
        }
    }
}

/// A plan event: [`PlanEventRecord`]'s fields but the id, the time and the plan (the stream
/// names the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// As in [`PlanEventRecord::kind`].
    pub kind: String,
    /// As in [`PlanEventRecord::target`]; omitted when empty, like the fields below.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// As in [`PlanEventRecord::target_name`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_name: String,
    /// As in [`PlanEventRecord::operation_id`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_id: String,
    /// As in [`PlanEventRecord::step`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// As in [`PlanEventRecord::state`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// As in [`PlanEventRecord::message`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// As in [`PlanEventRecord::duration_ms`]; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duration_ms: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Body for Event {
    const STREAM: Stream = Stream::Events;
    const CONTIGUOUS: bool = false;
}

impl From<PlanEventRecord> for Event {
    fn from(e: PlanEventRecord) -> Self {
        Event {
            kind: e.kind,
            target: e.target,
            target_name: e.target_name,
            operation_id: e.operation_id,
            step: e.step,
            state: e.state,
            message: e.message,
            duration_ms: e.duration_ms,
        }
    }
}

impl Entry<Event> {
    /// The record the store's callers read; `plan` is the stream's.
    pub fn into_record(self, plan: &str) -> PlanEventRecord {
        PlanEventRecord {
            id: record_id(self.id),
            at_unix_ms: self.at_ms,
            plan: plan.to_string(),
            kind: self.body.kind,
            target: self.body.target,
            target_name: self.body.target_name,
            operation_id: self.body.operation_id,
            step: self.body.step,
            state: self.body.state,
            message: self.body.message,
            duration_ms: self.body.duration_ms,
        }
    }
}

/// The store's records count ids in `i64`; a stream never gets near its end (one id per
/// entry), so saturating is only a guard.
fn record_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// One entry's JSON line, newline included, or [`Error::EntryTooLarge`].
pub fn line<B: Body>(entry: &Entry<B>) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(entry).expect("an entry serializes");
    line.push(b'\n');
    if line.len() > MAX_ENTRY {
        return Err(Error::EntryTooLarge { len: line.len() });
    }
    Ok(line)
}

/// `data` for the given JSON lines (each from [`line()`]): gzip, then base64.
pub fn encode_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        gz.write_all(l).expect("writing to memory");
    }
    BASE64.encode(gz.finish().expect("writing to memory"))
}

/// `data` for `entries`.
pub fn encode<B: Body>(entries: &[Entry<B>]) -> Result<String> {
    let lines = entries.iter().map(line).collect::<Result<Vec<_>>>()?;
    Ok(encode_lines(lines.iter().map(Vec::as_slice)))
}

/// The entries of a stored segment, checked against its spec: the stream, `data`'s encoding
/// and size, and ids from `firstId` to `lastId` in order (every one of them for a contiguous
/// stream).
pub fn decode<B: Body>(spec: &FleetLogSpec) -> Result<Vec<Entry<B>>> {
    if spec.stream != B::STREAM {
        return Err(Error::WrongStream {
            expected: B::STREAM,
            found: spec.stream,
        });
    }
    let Encoding::GzipJsonl = spec.encoding;
    if spec.first_id == 0 || spec.first_id > spec.last_id {
        return Err(Error::Range {
            first: spec.first_id,
            last: spec.last_id,
        });
    }
    if spec.data.len() as u64 > MAX_DATA.unsigned_abs() {
        return Err(Error::DataTooLarge {
            len: spec.data.len(),
        });
    }
    let gz = BASE64.decode(&spec.data).map_err(Error::Base64)?;
    let raw = inflate(&gz)?;
    let mut entries: Vec<Entry<B>> = Vec::new();
    for (n, text) in raw.split_inclusive(|b| *b == b'\n').enumerate() {
        let line = n + 1;
        let entry: Entry<B> =
            serde_json::from_slice(text).map_err(|source| Error::Line { line, source })?;
        let previous = entries.last().map(|e| e.id);
        if previous == Some(spec.last_id) {
            return Err(Error::Long {
                line,
                last: spec.last_id,
            });
        }
        let expected = previous.map_or(spec.first_id, |id| id + 1);
        let follows = if B::CONTIGUOUS || previous.is_none() {
            entry.id == expected
        } else {
            (expected..=spec.last_id).contains(&entry.id)
        };
        if !follows {
            return Err(Error::Id {
                line,
                expected,
                found: entry.id,
            });
        }
        entries.push(entry);
    }
    // `first_id >= 1`, so one less fits.
    let found = entries.last().map_or(spec.first_id - 1, |e| e.id);
    if found < spec.last_id {
        return Err(Error::Short {
            found,
            last: spec.last_id,
        });
    }
    Ok(entries)
}

/// Inflates one gzip stream into at most [`MAX_RAW`] bytes.
fn inflate(gz: &[u8]) -> Result<Vec<u8>> {
    let mut decoder = flate2::bufread::GzDecoder::new(gz);
    let mut raw = Vec::new();
    // One byte more than allowed tells "exactly at the cap" from "past it".
    (&mut decoder)
        .take(MAX_RAW as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(Error::Gzip)?;
    if raw.len() > MAX_RAW {
        return Err(Error::Inflated);
    }
    let rest = decoder.into_inner();
    if !rest.is_empty() {
        return Err(Error::TrailingData(rest.len()));
    }
    Ok(raw)
}

/// `entries` (ids increasing) as sealed segments of `stream`, each named: a new segment where
/// the next line would pass [`SEAL_AT`], and, in a contiguous stream, where an id is skipped.
/// What `skoala-coordinator migrate` writes, so that records keep the ids they had in the
/// store they come from; a writer started afterwards continues after the last.
pub fn sealed_segments<B: Body>(
    stream: &LogStream,
    entries: &[Entry<B>],
) -> Result<Vec<(String, FleetLogSpec)>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut raw = 0;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let line = line(entry)?;
        if let Some(previous) = i.checked_sub(1).map(|p| entries[p].id) {
            if entry.id <= previous {
                return Err(Error::OutOfOrder {
                    id: entry.id,
                    last: previous,
                });
            }
            let gap = B::CONTIGUOUS && entry.id != previous + 1;
            if gap || raw + line.len() > SEAL_AT {
                out.push(sealed(stream, &entries[start..i], &lines));
                start = i;
                raw = 0;
                lines.clear();
            }
        }
        raw += line.len();
        lines.push(line);
    }
    if !lines.is_empty() {
        out.push(sealed(stream, &entries[start..], &lines));
    }
    Ok(out)
}

/// One sealed segment of `stream` holding `entries`, whose lines are `lines`.
fn sealed<B>(
    stream: &LogStream,
    entries: &[Entry<B>],
    lines: &[Vec<u8>],
) -> (String, FleetLogSpec) {
    let first_id = entries.first().map_or(0, |e| e.id);
    let spec = FleetLogSpec {
        stream: stream.stream(),
        plan: stream.plan().map(str::to_string),
        first_id,
        last_id: entries.last().map_or(0, |e| e.id),
        from_ms: entries.iter().map(|e| e.at_ms).min().unwrap_or(0),
        to_ms: entries.iter().map(|e| e.at_ms).max().unwrap_or(0),
        sealed: true,
        encoding: Encoding::GzipJsonl,
        data: encode_lines(lines.iter().map(Vec::as_slice)),
    };
    (stream.segment_name(first_id), spec)
}

/// A stream, and the names of its segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogStream {
    /// The audit log.
    Audit,
    /// One plan's events.
    Events {
        /// The plan.
        plan: String,
    },
}

impl LogStream {
    /// Which `spec.stream`.
    pub fn stream(&self) -> Stream {
        match self {
            LogStream::Audit => Stream::Audit,
            LogStream::Events { .. } => Stream::Events,
        }
    }

    /// `spec.plan`.
    pub fn plan(&self) -> Option<&str> {
        match self {
            LogStream::Audit => None,
            LogStream::Events { plan } => Some(plan),
        }
    }

    /// The stream a stored segment belongs to.
    pub fn of(spec: &FleetLogSpec) -> Self {
        match (spec.stream, &spec.plan) {
            (Stream::Events, Some(plan)) => LogStream::Events { plan: plan.clone() },
            (Stream::Events, None) => LogStream::Events {
                plan: String::new(),
            },
            (Stream::Audit, _) => LogStream::Audit,
        }
    }

    /// The name of the segment whose first entry is `first_id`.
    pub fn segment_name(&self, first_id: u64) -> String {
        match self {
            LogStream::Audit => format!("audit-{first_id:020}"),
            LogStream::Events { plan } => format!("events-{plan}-{first_id:020}"),
        }
    }
}

/// Entries with `id > after_id`, oldest first, at most `limit`: from the stored segments
/// (`segments`: each one's first id and name, as a metadata-only list gives them) fetched with
/// `fetch`, then from `open` (the open segment as the writer last stored it), which replaces
/// any stored segment starting at or after its first id. Only segments that can hold an
/// entry past `after_id` are fetched, and fetching stops once `limit` entries are found.
pub async fn read<B, F, Fut, E>(
    segments: &BTreeMap<u64, String>,
    open: &[Entry<B>],
    after_id: u64,
    limit: usize,
    fetch: F,
) -> Result<Vec<Entry<B>>>
where
    B: Body,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<FleetLogSpec, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut out = Vec::new();
    let open_from = open.first().map_or(u64::MAX, |e| e.id);
    // The segment holding `after_id + 1` is the last one starting at or before it; the open
    // one, when that is it, is read from memory.
    let wanted = after_id.saturating_add(1);
    let start = if open_from <= wanted {
        open_from
    } else {
        segments
            .range(..=wanted)
            .next_back()
            .map_or(0, |(first, _)| *first)
    };
    for (_, name) in segments.range(start..open_from) {
        if out.len() >= limit {
            return Ok(out);
        }
        let spec = fetch(name.clone()).await.map_err(|e| Error::Fetch {
            name: name.clone(),
            source: e.into(),
        })?;
        let entries = decode::<B>(&spec)?;
        out.extend(entries.into_iter().filter(|e| e.id > after_id));
    }
    out.extend(open.iter().filter(|e| e.id > after_id).cloned());
    out.truncate(limit);
    Ok(out)
}

/// The segments retention deletes for `cutoffs` (§2.2 *Retention*), by name: sealed ones whose
/// newest entry is older than the cutoff of their stream, never the active plan's events, and
/// never the newest segment of the audit stream, from which a new leader learns where the ids
/// go on (deleting it would reuse ids and break `audit --after` cursors). Open segments are
/// never deleted: the writer rewrites them.
pub fn expired(segments: &[FleetLog], cutoffs: &Cutoffs, active_plan: Option<&str>) -> Vec<String> {
    let newest_audit = segments
        .iter()
        .filter(|s| s.spec.stream == Stream::Audit)
        .map(|s| s.spec.first_id)
        .max();
    segments
        .iter()
        .filter(|s| {
            let spec = &s.spec;
            spec.sealed
                && match spec.stream {
                    Stream::Audit => {
                        spec.to_ms < cutoffs.audit_before_ms && Some(spec.first_id) != newest_audit
                    }
                    Stream::Events => {
                        spec.to_ms < cutoffs.events_before_ms && spec.plan.as_deref() != active_plan
                    }
                }
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}
