//! Values backups as Secrets in the release namespace.
//!
//! Each backup is its own Secret, `skoala-fleet-backup-<release>-<generation>`, created (never
//! updated: a name collision moves on to the next generation, so a backup is never
//! overwritten). The newest [`KEEP`] generations are kept; older ones are deleted only after a
//! newer one was stored. Annotations carry the sha256, the operation that took it and the chart
//! version it was taken from, so a retried operation reuses its own backup instead of taking a
//! second one from a state it may itself have changed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::report::Backup;

/// Generations kept per release.
pub const KEEP: usize = 5;
/// Label: the release a backup belongs to.
pub const RELEASE_LABEL: &str = "fleet.skoala.io/backup-of";
/// Label: the generation.
pub const GENERATION_LABEL: &str = "fleet.skoala.io/backup-generation";
/// Annotation: sha256 of the values.
pub const SHA256_ANNOTATION: &str = "fleet.skoala.io/sha256";
/// Annotation: the operation that took the backup.
pub const OPERATION_ANNOTATION: &str = "fleet.skoala.io/operation-id";
/// Annotation: the chart version the values were taken from.
pub const CHART_VERSION_ANNOTATION: &str = "fleet.skoala.io/chart-version";
/// Secret type of backups.
pub const SECRET_TYPE: &str = "fleet.skoala.io/values-backup";
/// Data key of the values.
pub const DATA_KEY: &str = "values.yaml";

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The Secret name of a generation.
pub fn secret_name(release: &str, generation: u32) -> String {
    format!("skoala-fleet-backup-{release}-{generation}")
}

/// A stored backup and where it came from.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The values and their checksum.
    pub backup: Backup,
    /// The operation that took it.
    pub operation_id: String,
    /// The chart version the values belonged to.
    pub chart_version: String,
}

/// Every backup of `release`, oldest generation first. A Secret whose content does not match
/// its recorded sha256 is reported as an error, never silently used.
pub async fn list(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> Result<Vec<Stored>, BackupError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secrets = api
        .list(&ListParams::default().labels(&format!("{RELEASE_LABEL}={release}")))
        .await?;
    let mut out = Vec::new();
    for s in secrets.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let Some(generation) = labels.get(GENERATION_LABEL).and_then(|g| g.parse().ok()) else {
            continue;
        };
        let values = s
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let sha256 = ann.get(SHA256_ANNOTATION).cloned().unwrap_or_default();
        if sha256_hex(&values) != sha256 {
            return Err(BackupError::Corrupt { secret: name });
        }
        out.push(Stored {
            backup: Backup {
                secret: name,
                generation,
                sha256,
                values,
            },
            operation_id: ann.get(OPERATION_ANNOTATION).cloned().unwrap_or_default(),
            chart_version: ann
                .get(CHART_VERSION_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        });
    }
    out.sort_by_key(|s| s.backup.generation);
    Ok(out)
}

/// Stores `values` as the next generation, then prunes generations beyond [`KEEP`].
pub async fn store(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    operation_id: &str,
    chart_version: &str,
    values: &[u8],
) -> Result<Backup, BackupError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = list(client, namespace, release).await?;
    let mut generation = existing.last().map_or(1, |s| s.backup.generation + 1);
    let sha256 = sha256_hex(values);
    // A collision means someone stored that generation since we listed: take the next one.
    let backup = loop {
        let name = secret_name(release, generation);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    (RELEASE_LABEL.into(), release.into()),
                    (GENERATION_LABEL.into(), generation.to_string()),
                    ("app.kubernetes.io/managed-by".into(), "skoala-fleet".into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (SHA256_ANNOTATION.into(), sha256.clone()),
                    (OPERATION_ANNOTATION.into(), operation_id.into()),
                    (CHART_VERSION_ANNOTATION.into(), chart_version.into()),
                ])),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            immutable: Some(true),
            data: Some(BTreeMap::from([(
                DATA_KEY.into(),
                ByteString(values.to_vec()),
            )])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                break Backup {
                    secret: name,
                    generation,
                    sha256: sha256.clone(),
                    values: values.to_vec(),
                };
            }
            Err(kube::Error::Api(e)) if e.code == 409 && generation < u32::MAX => generation += 1,
            Err(e) => return Err(e.into()),
        }
    };

    // Prune: only now that the new generation exists. A failed delete leaves one more
    // backup than wanted, which is harmless; it is retried next time.
    let all = list(client, namespace, release).await?;
    let excess = all.len().saturating_sub(KEEP);
    for old in all.iter().take(excess) {
        if old.backup.generation < backup.generation {
            let _ = api
                .delete(&old.backup.secret, &DeleteParams::default())
                .await;
        }
    }
    Ok(backup)
}

/// The backup a given operation took, if any (the newest, if it took several).
pub async fn find_for_operation(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    operation_id: &str,
) -> Result<Option<Backup>, BackupError> {
    Ok(list(client, namespace, release)
        .await?
        .into_iter()
        .rev()
        .find(|s| s.operation_id == operation_id)
        .map(|s| s.backup))
}

/// Backup storage failures. Never quote values.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A backup was changed after it was written: it is reported, never used.
    #[error("backup Secret {secret} does not match its recorded sha256")]
    Corrupt {
        /// The Secret's name.
        secret: String,
    },
}
