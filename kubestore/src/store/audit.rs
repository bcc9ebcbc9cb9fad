//! The audit log on `FleetLog` segments (design §2.2, *Audit*): the `audit` stream, written by
//! the leader's [`StreamWriter`] (group commit; ids contiguous, continued after the last
//! stored one by a new leader), read with [`log::read`]: the open segment from memory, sealed
//! ones by GET, found by the first id in their names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::api::{Api, DeleteParams, ListParams};
use skoala_store::{AuditRecord, Cutoffs, NewAudit, StoreError};
use skoala_support::time::now_ms;

use super::shared::{Shared, api_error, list_all, list_each};
use crate::crd::{FleetLog, FleetLogSpec, Kind, Stream};
use crate::log::writer::{FleetLogs, GroupCommit, SegmentSink};
use crate::log::{self, LogStream, StreamWriter};
use crate::write::{SinkError, Writer};

/// Where each stored segment of the audit stream starts: first id → name.
type Index = Arc<Mutex<BTreeMap<u64, String>>>;

/// The audit part of the store.
pub(super) struct Audit {
    shared: Arc<Shared>,
    writer: StreamWriter<log::Audit>,
    segments: Index,
}

/// The segment sink of the audit stream: the write lanes of log segments, noting where each
/// stored segment starts so reads find the segments this leader sealed.
struct Indexed {
    lanes: Writer<FleetLogs>,
    segments: Index,
}

impl SegmentSink for Indexed {
    async fn put(&self, name: &str, spec: &FleetLogSpec) -> Result<(), SinkError> {
        self.lanes.put(name, spec).await?;
        self.segments
            .lock()
            .expect("lock")
            .insert(spec.first_id, name.to_string());
        Ok(())
    }
}

/// The audit stream's segment names start with this; the plans' are `events-…`.
const PREFIX: &str = "audit-";

/// The first id a segment of the audit stream named `name` starts at.
fn first_id(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

impl Audit {
    /// Finds the stored audit segments (metadata only: where each starts is in its name),
    /// reads the newest, and starts the writer after it, sealing it if it was left open.
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let api = log_api(&shared);
        let metas = list_all("FleetLogs", ListParams::default(), |p| {
            let api = api.clone();
            async move { api.list_metadata(&p).await }
        })
        .await?;
        let index: BTreeMap<u64, String> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.metadata.name?;
                Some((first_id(&name)?, name))
            })
            .collect();
        let mut stored = Vec::new();
        if let Some(name) = index.values().next_back() {
            let newest = api
                .get(name)
                .await
                .map_err(|e| api_error(format!("reading FleetLog {name}"), e))?;
            stored.push(newest.spec);
        }
        let segments = Arc::new(Mutex::new(index));
        let sink = Indexed {
            lanes: Writer::start(
                FleetLogs::new(
                    shared.client.clone(),
                    &shared.namespace,
                    shared.fence.clone(),
                ),
                shared.budget,
            ),
            segments: Arc::clone(&segments),
        };
        let writer = StreamWriter::start(sink, LogStream::Audit, &stored, GroupCommit::default())
            .await
            .map_err(|e| api_error("continuing the audit log", e))?;
        Ok(Audit {
            shared,
            writer,
            segments,
        })
    }

    pub async fn append(&self, event: NewAudit) -> Result<i64, StoreError> {
        // The writer's sink checks the fence too; checked here, a deposed leader's caller is
        // told so.
        self.shared.check_fence()?;
        let id = self
            .writer
            .append(now_ms(), event.into())
            .await
            .map_err(|e| api_error("appending to the audit log", e))?;
        Ok(i64::try_from(id).unwrap_or(i64::MAX))
    }

    pub async fn page(&self, after_id: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let segments = self.segments.lock().expect("lock").clone();
        let open = self.writer.open_entries();
        let api = log_api(&self.shared);
        let after = u64::try_from(after_id).unwrap_or(0);
        let entries = log::read(&segments, &open, after, limit as usize, |name| {
            let api = api.clone();
            async move { api.get(&name).await.map(|s| s.spec) }
        })
        .await
        .map_err(|e| api_error("reading the audit log", e))?;
        Ok(entries
            .into_iter()
            .map(log::Entry::<log::Audit>::into_record)
            .collect())
    }

    /// Writes a migration's audit entries as sealed segments with their ids and times; returns
    /// how many segments. The store reads them once opened again, and continues the ids after
    /// the last.
    pub async fn import(&self, entries: &[AuditRecord]) -> Result<usize, StoreError> {
        let mut log: Vec<log::Entry<log::Audit>> = entries
            .iter()
            .map(|a| {
                Ok(log::Entry {
                    id: u64::try_from(a.id)
                        .map_err(|_| StoreError::Corrupt(format!("audit id {}", a.id)))?,
                    at_ms: a.at_unix_ms,
                    body: log::Audit {
                        kind: a.kind.clone(),
                        cluster_id: a.cluster_id.clone(),
                        peer: a.peer.clone(),
                        detail: a.detail.clone(),
                    },
                })
            })
            .collect::<Result<_, StoreError>>()?;
        log.sort_by_key(|e| e.id);
        let segments = log::sealed_segments(&LogStream::Audit, &log)
            .map_err(|e| api_error("the audit log", e))?;
        let sink = Writer::start(
            FleetLogs::new(
                self.shared.client.clone(),
                &self.shared.namespace,
                self.shared.fence.clone(),
            ),
            self.shared.budget,
        );
        let written = segments.len();
        for (name, spec) in segments {
            sink.put(&name, &spec)
                .await
                .map_err(|source| StoreError::Api {
                    what: format!("writing log segment {name}"),
                    source,
                })?;
        }
        Ok(written)
    }

    /// Whether the audit log holds any segment.
    pub fn holds_records(&self) -> bool {
        !self.segments.lock().expect("lock").is_empty() || !self.writer.open_entries().is_empty()
    }

    /// How many audit entries retention deleted: whole sealed segments older than the
    /// cutoff, never the newest ([`log::expired`]).
    pub async fn prune(&self, cutoffs: &Cutoffs) -> Result<usize, StoreError> {
        let api = log_api(&self.shared);
        // Only what `expired` reads: a segment's entries are not needed to delete it.
        let mut audit: Vec<FleetLog> = Vec::new();
        list_each(
            "FleetLogs",
            ListParams::default(),
            |p| {
                let api = api.clone();
                async move { api.list(&p).await }
            },
            |mut s: FleetLog| {
                if s.spec.stream == Stream::Audit {
                    s.spec.data = String::new();
                    audit.push(s);
                }
            },
        )
        .await?;
        let sizes: BTreeMap<String, u64> = audit
            .iter()
            .filter_map(|s| {
                let size = s.spec.last_id.saturating_sub(s.spec.first_id) + 1;
                Some((s.metadata.name.clone()?, size))
            })
            .collect();
        let mut deleted = 0;
        for name in log::expired(&audit, cutoffs, None) {
            self.shared.check_fence()?;
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => deleted += sizes.get(&name).copied().unwrap_or(0) as usize,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(api_error(format!("deleting FleetLog {name}"), e)),
            }
            if let Some(first) = first_id(&name) {
                self.segments.lock().expect("lock").remove(&first);
            }
        }
        Ok(deleted)
    }
}

fn log_api(shared: &Shared) -> Api<FleetLog> {
    Api::namespaced_with(
        shared.client.clone(),
        &shared.namespace,
        &Kind::FleetLog.api_resource(),
    )
}
