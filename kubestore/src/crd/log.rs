//! `FleetLog` (design §4.3): one segment of the plan events or the audit log. The open segment
//! of a stream is rewritten on each flush until it is sealed; a sealed one never changes, which
//! the API server enforces, so a reader may cache it forever.

use kube::core::{NotUsed, Object};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{self, Bounds};
use super::{Column, Definition, rule};

/// A `FleetLog` object (no status: the segment is the data).
pub type FleetLog = Object<FleetLogSpec, NotUsed>;

/// The largest `data` of a segment: sealed at 256 KiB of raw entries, whose gzip (in base64)
/// is smaller; the bound also keeps the immutability rule's estimated cost low.
pub(crate) const MAX_DATA: i64 = 512 * 1024;

/// `spec`: one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetLogSpec {
    /// Which log.
    pub stream: Stream,
    /// The plan whose events these are; absent for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub plan: Option<String>,
    /// The id of the first entry (ids increase within a stream; the audit log's are contiguous).
    pub first_id: u64,
    /// The id of the last entry.
    pub last_id: u64,
    /// When the first entry was written, in Unix milliseconds.
    pub from_ms: i64,
    /// When the last entry was written, in Unix milliseconds.
    pub to_ms: i64,
    /// No entry will be added; the segment is immutable.
    #[serde(default)]
    pub sealed: bool,
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// The entries.
    #[schemars(extend("format" = "byte"))]
    pub data: String,
}

/// The two logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Stream {
    /// A plan's events.
    Events,
    /// The audit log.
    Audit,
}

/// How a segment's entries are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Encoding {
    /// One JSON object per line, gzip-compressed, base64 in the object.
    #[serde(rename = "gzip+jsonl")]
    GzipJsonl,
}

/// A sealed segment never changes, not even by the coordinator.
const SEALED_RULE: &str = "!oldSelf.spec.sealed || self.spec == oldSelf.spec";

pub(super) fn definition() -> Definition {
    let mut spec = schema::generate::<FleetLogSpec>();
    schema::bound(
        &mut spec,
        &Bounds {
            string: 253,
            list: 64,
            map: 64,
            at: &[(".data", MAX_DATA)],
        },
    );
    Definition {
        spec,
        status: None,
        rules: vec![rule(SEALED_RULE, "a sealed log segment cannot change")],
        columns: vec![
            Column("STREAM", "string", ".spec.stream", false),
            Column("PLAN", "string", ".spec.plan", false),
            Column("FIRST", "integer", ".spec.firstId", false),
            Column("LAST", "integer", ".spec.lastId", false),
        ],
    }
}
