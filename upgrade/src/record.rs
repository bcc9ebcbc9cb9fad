//! The operation record: what we are doing to a release, kept in the cluster.
//!
//! One ConfigMap per release, `skoala-fleet-operation-<release>` in the release namespace,
//! written before the first change an operation makes and updated at every phase. It is how a
//! re-delivered operation knows it already succeeded (and does nothing), and how a restarted
//! executor knows that a `pending-*` release is its own unfinished work (and recovers it)
//! rather than an upgrade someone else is running right now. Updates carry the
//! resourceVersion they read, so two executors cannot both believe they own the release.
//! It holds no values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordPhase {
    /// Started and not finished: if the process died, the release may be `pending-*`.
    Running,
    /// Finished at the target version.
    Succeeded,
    /// Failed, and no rollback was asked for (or nothing had changed).
    Failed,
    /// Failed, and the release is back at its revision before, verified.
    RolledBack,
    /// Failed, and the rollback failed too: the release needs an operator.
    RollbackFailed,
}

impl RecordPhase {
    /// The phase as the ConfigMap stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPhase::Running => "running",
            RecordPhase::Succeeded => "succeeded",
            RecordPhase::Failed => "failed",
            RecordPhase::RolledBack => "rolled-back",
            RecordPhase::RollbackFailed => "rollback-failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RecordPhase::Running,
            "succeeded" => RecordPhase::Succeeded,
            "failed" => RecordPhase::Failed,
            "rolled-back" => RecordPhase::RolledBack,
            "rollback-failed" => RecordPhase::RollbackFailed,
            _ => return None,
        })
    }
}

/// The record's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation, as the coordinator named it.
    pub operation_id: String,
    /// Where it is.
    pub phase: RecordPhase,
    /// The chart version it upgrades to.
    pub target_version: String,
    /// 1 for the first run of this operation id, +1 per re-run.
    pub attempt: u32,
    /// The release revision and chart version before the operation's first change.
    pub revision_before: Option<i32>,
    /// See `revision_before`.
    pub version_before: Option<String>,
    /// The backup generation the operation took.
    pub backup_generation: Option<u32>,
    /// Redacted.
    pub message: String,
}

/// Reads and writes one release's record.
pub struct RecordStore {
    api: Api<ConfigMap>,
    name: String,
    release: String,
    /// The resourceVersion last read or written; `None` if the ConfigMap does not exist.
    resource_version: Option<String>,
}

/// The ConfigMap name of a release's record.
pub fn record_name(release: &str) -> String {
    format!("skoala-fleet-operation-{release}")
}

impl RecordStore {
    /// The store for `release`'s record in `namespace` (nothing is read yet).
    pub fn new(client: &kube::Client, namespace: &str, release: &str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            name: record_name(release),
            release: release.into(),
            resource_version: None,
        }
    }

    /// The current record, if any. A record we cannot parse is treated as absent (and will be
    /// overwritten), except that its resourceVersion is kept for the next write.
    pub async fn load(&mut self) -> Result<Option<OperationRecord>, kube::Error> {
        let Some(cm) = self.api.get_opt(&self.name).await? else {
            self.resource_version = None;
            return Ok(None);
        };
        self.resource_version = cm.metadata.resource_version.clone();
        let d = cm.data.unwrap_or_default();
        let get = |k: &str| d.get(k).cloned();
        let Some(phase) = get("phase").as_deref().and_then(RecordPhase::parse) else {
            return Ok(None);
        };
        Ok(Some(OperationRecord {
            operation_id: get("operationId").unwrap_or_default(),
            phase,
            target_version: get("targetVersion").unwrap_or_default(),
            attempt: get("attempt").and_then(|a| a.parse().ok()).unwrap_or(1),
            revision_before: get("revisionBefore").and_then(|r| r.parse().ok()),
            version_before: get("versionBefore").filter(|v| !v.is_empty()),
            backup_generation: get("backupGeneration").and_then(|g| g.parse().ok()),
            message: get("message").unwrap_or_default(),
        }))
    }

    /// Writes `record`: creates the ConfigMap or replaces it at the resourceVersion last seen
    /// (a 409 means someone else wrote it since: the caller must not proceed).
    pub async fn save(&mut self, record: &OperationRecord) -> Result<(), kube::Error> {
        let mut data = BTreeMap::from([
            ("operationId".to_string(), record.operation_id.clone()),
            ("phase".into(), record.phase.as_str().into()),
            ("targetVersion".into(), record.target_version.clone()),
            ("attempt".into(), record.attempt.to_string()),
            ("message".into(), record.message.clone()),
            ("updated".into(), jiff::Timestamp::now().to_string()),
        ]);
        if let Some(r) = record.revision_before {
            data.insert("revisionBefore".into(), r.to_string());
        }
        if let Some(v) = &record.version_before {
            data.insert("versionBefore".into(), v.clone());
        }
        if let Some(g) = record.backup_generation {
            data.insert("backupGeneration".into(), g.to_string());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: self.resource_version.clone(),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), "skoala-fleet".into()),
                    ("fleet.skoala.io/operation-of".into(), self.release.clone()),
                ])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let written = match &self.resource_version {
            None => self.api.create(&PostParams::default(), &cm).await?,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &cm)
                    .await?
            }
        };
        self.resource_version = written.metadata.resource_version;
        Ok(())
    }
}
