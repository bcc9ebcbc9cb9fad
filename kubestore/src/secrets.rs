//! The fleet's Secrets that hold files rather than records (design §2.2, *PKI* and *Backups*):
//! the trust root `skoala-fleet-pki`, and values backups `skoala-fleet-backup-<hash>`.
//!
//! **The PKI** is one Secret made in one create request: that is the atomicity `init`'s
//! staging folder buys on a file system. Two replicas' init containers racing both ask to
//! create it; the API server lets exactly one win, the other learns `AlreadyExists`.
//!
//! **A backup** is an immutable Secret, created once and never replaced: the same backup again
//! (a re-delivered operation re-sends it) is acknowledged as stored, different bytes under the
//! same name are refused and the first copy stays. Its name is a hash of what identifies it
//! (cluster, release, generation, operation), so a retry after a lost answer finds its own
//! earlier create. What a prune needs to decide is in labels and annotations, so retention
//! lists backups metadata-only and never holds anyone's values in memory.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::lease::Fence;

/// The Secret holding the fleet's CA, the coordinator's server credential and `admin.yaml`.
pub const PKI_SECRET: &str = "skoala-fleet-pki";
/// Says what a Secret of the fleet is (`pki`, `backup`), so each reader selects only its own.
pub const KIND_LABEL: &str = "fleet.skoala.io/kind";
/// The working cluster a backup belongs to.
pub const CLUSTER_LABEL: &str = "fleet.skoala.io/cluster";
/// The release a backup is of.
pub const RELEASE_LABEL: &str = "fleet.skoala.io/release";
/// A backup's generation (annotation: it orders backups, it is never selected on).
pub const GENERATION_ANNOTATION: &str = "fleet.skoala.io/generation";
/// The operation that uploaded a backup.
pub const OPERATION_ANNOTATION: &str = "fleet.skoala.io/operation";
/// The sha256 of a backup's values, as the agent computed and the coordinator checked it.
pub const SHA256_ANNOTATION: &str = "fleet.skoala.io/sha256";
/// The key of a backup's values in its Secret's `data`: nothing else is there, so the values
/// may use all of the API server's 1 MiB.
pub const VALUES_KEY: &str = "values.yaml";

const PKI_KIND: &str = "pki";
const BACKUP_KIND: &str = "backup";
const BACKUP_PREFIX: &str = "skoala-fleet-backup-";

/// What can go wrong with the fleet's Secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or did not answer.
    #[error("{what}")]
    Api {
        /// What was being done, naming the Secret.
        what: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A backup of this name exists with other values; it is never overwritten.
    #[error("Secret {namespace}/{name} already holds a different backup; it is never overwritten")]
    Different {
        /// The coordinator's namespace.
        namespace: String,
        /// The backup's Secret.
        name: String,
    },
    /// A name the backup is selected by is not a Kubernetes label value.
    #[error(
        "the backup's {what} {value:?} is not a Kubernetes label value (1-63 of [A-Za-z0-9._-], \
         alphanumeric at both ends)"
    )]
    NotALabel {
        /// Which name.
        what: &'static str,
        /// The name.
        value: String,
    },
    /// This process no longer leads: it must not write.
    #[error("not writing backups")]
    Fenced(#[source] crate::lease::Error),
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api {
        what,
        source: Box::new(source),
    }
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a create made the object or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This request made it.
    Created,
    /// It existed already; nothing was changed.
    AlreadyExists,
}

/// Creates the PKI Secret holding `files` (file name → contents) in `namespace`, in one
/// request. An existing one is left untouched and reported as [`Created::AlreadyExists`].
pub async fn create_pki(
    client: &kube::Client,
    namespace: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Created> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(PKI_SECRET.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                KIND_LABEL.to_string(),
                PKI_KIND.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(
            files
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Created::Created),
        Err(e) if is_already_exists(&e) => Ok(Created::AlreadyExists),
        Err(e) => Err(api_error(format!(
            "creating Secret {namespace}/{PKI_SECRET}"
        ))(e)),
    }
}

/// The files of the PKI Secret in `namespace` (file name → contents); `None` when the Secret
/// does not exist (`init` has not run).
pub async fn load_pki(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = api.get_opt(PKI_SECRET).await.map_err(api_error(format!(
        "reading Secret {namespace}/{PKI_SECRET}"
    )))?
    else {
        return Ok(None);
    };
    Ok(Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    ))
}

/// What identifies one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKey {
    /// The working cluster it came from.
    pub cluster_id: String,
    /// The release whose values it holds.
    pub release: String,
    /// The release's generation it was taken at (newer is larger).
    pub generation: i64,
    /// The operation that uploaded it.
    pub operation_id: String,
}

impl BackupKey {
    /// `skoala-fleet-backup-` and the first 20 hex digits of the sha256 of
    /// `cluster/release/generation/operation`: fixed length whatever the names are, and the
    /// same for every retry of one upload.
    pub fn secret_name(&self) -> String {
        let digest = Sha256::digest(format!(
            "{}/{}/{}/{}",
            self.cluster_id, self.release, self.generation, self.operation_id
        ));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{BACKUP_PREFIX}{}", &hex[..20])
    }
}

/// Whether `s` can be a label value (and so be selected on).
fn label_value(what: &'static str, s: &str) -> Result<()> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = !s.is_empty()
        && s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::NotALabel {
            what,
            value: s.to_string(),
        })
    }
}

/// How a backup upload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored now.
    Stored,
    /// The same bytes were stored before (a re-delivery).
    AlreadyStored,
}

/// Values backups as immutable Secrets in the coordinator's namespace, written while `fence`
/// is open.
#[derive(Clone)]
pub struct BackupSecrets {
    client: kube::Client,
    namespace: String,
    fence: Fence,
}

impl std::fmt::Debug for BackupSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSecrets")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl BackupSecrets {
    /// Backups in `namespace`, written only while `fence` says this process leads.
    pub fn new(client: kube::Client, namespace: impl Into<String>, fence: Fence) -> Self {
        BackupSecrets {
            client,
            namespace: namespace.into(),
            fence,
        }
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn check_fence(&self) -> Result<()> {
        self.fence.check().map(|_| ()).map_err(Error::Fenced)
    }

    /// Stores `values` (whose sha256 the caller checked) as the backup `key`, never replacing
    /// one: the same bytes already there are [`Put::AlreadyStored`], different bytes
    /// [`Error::Different`].
    pub async fn put(&self, key: &BackupKey, values: &[u8], sha256: &str) -> Result<Put> {
        label_value("cluster id", &key.cluster_id)?;
        label_value("release", &key.release)?;
        self.check_fence()?;
        let name = key.secret_name();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (KIND_LABEL.to_string(), BACKUP_KIND.to_string()),
                    (CLUSTER_LABEL.to_string(), key.cluster_id.clone()),
                    (RELEASE_LABEL.to_string(), key.release.clone()),
                ])),
                annotations: Some(BTreeMap::from([
                    (
                        GENERATION_ANNOTATION.to_string(),
                        key.generation.to_string(),
                    ),
                    (OPERATION_ANNOTATION.to_string(), key.operation_id.clone()),
                    (SHA256_ANNOTATION.to_string(), sha256.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            immutable: Some(true),
            data: Some(BTreeMap::from([(
                VALUES_KEY.to_string(),
                ByteString(values.to_vec()),
            )])),
            ..Secret::default()
        };
        let what = || format!("storing the backup in Secret {}/{name}", self.namespace);
        match self.api().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Put::Stored),
            Err(e) if is_already_exists(&e) => {
                if self.get(key).await?.as_deref() == Some(values) {
                    Ok(Put::AlreadyStored)
                } else {
                    Err(Error::Different {
                        namespace: self.namespace.clone(),
                        name,
                    })
                }
            }
            Err(e) => Err(api_error(what())(e)),
        }
    }

    /// The values of the backup `key`; `None` if there is none.
    pub async fn get(&self, key: &BackupKey) -> Result<Option<Vec<u8>>> {
        let name = key.secret_name();
        let secret = self.api().get_opt(&name).await.map_err(api_error(format!(
            "reading the backup Secret {}/{name}",
            self.namespace
        )))?;
        Ok(secret.map(|s| {
            s.data
                .and_then(|mut d| d.remove(VALUES_KEY))
                .map(|v| v.0)
                .unwrap_or_default()
        }))
    }

    /// Every backup with its values (a migration's copy; the serving coordinator never lists
    /// values, which would otherwise sit in its memory).
    pub async fn list(&self) -> Result<Vec<(BackupKey, Vec<u8>)>> {
        let listed = self
            .api()
            .list(&ListParams::default().labels(&format!("{KIND_LABEL}={BACKUP_KIND}")))
            .await
            .map_err(api_error(format!(
                "listing the backup Secrets of namespace {}",
                self.namespace
            )))?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|secret| {
                let stored = Stored::from_meta(secret.metadata)?;
                let values = secret.data?.remove(VALUES_KEY)?.0;
                Some((
                    BackupKey {
                        cluster_id: stored.cluster_id,
                        release: stored.release,
                        generation: stored.generation,
                        operation_id: stored.operation_id,
                    },
                    values,
                ))
            })
            .collect())
    }

    /// Keeps the newest `keep` generations of `cluster_id`'s `release` and deletes the rest;
    /// returns how many were deleted.
    pub async fn prune_release(
        &self,
        cluster_id: &str,
        release: &str,
        keep: usize,
    ) -> Result<usize> {
        if label_value("cluster id", cluster_id).is_err()
            || label_value("release", release).is_err()
        {
            return Ok(0);
        }
        let selector = format!(
            "{KIND_LABEL}={BACKUP_KIND},{CLUSTER_LABEL}={cluster_id},{RELEASE_LABEL}={release}"
        );
        self.prune_selected(&selector, keep).await
    }

    /// [`BackupSecrets::prune_release`] for every cluster and release (the retention sweep).
    pub async fn prune(&self, keep: usize) -> Result<usize> {
        self.prune_selected(&format!("{KIND_LABEL}={BACKUP_KIND}"), keep)
            .await
    }

    async fn prune_selected(&self, selector: &str, keep: usize) -> Result<usize> {
        let listed = self
            .api()
            .list_metadata(&ListParams::default().labels(selector))
            .await
            .map_err(api_error(format!(
                "listing the backup Secrets of namespace {}",
                self.namespace
            )))?;
        let stored: Vec<Stored> = listed
            .items
            .into_iter()
            .filter_map(|o| Stored::from_meta(o.metadata))
            .collect();
        let mut deleted = 0;
        for name in expired(stored, keep) {
            self.check_fence()?;
            match self.api().delete(&name, &DeleteParams::default()).await {
                Ok(_) => deleted += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => tracing::warn!(
                    secret = %name, error = %e,
                    "cannot delete an old backup; the next sweep tries again"
                ),
            }
        }
        Ok(deleted)
    }
}

/// A stored backup as a prune sees it: its metadata only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    name: String,
    cluster_id: String,
    release: String,
    generation: i64,
    operation_id: String,
}

impl Stored {
    /// `None` for a Secret that is not a whole backup of ours (never deleted by a prune).
    fn from_meta(meta: ObjectMeta) -> Option<Stored> {
        let labels = meta.labels?;
        let annotations = meta.annotations?;
        Some(Stored {
            name: meta.name?,
            cluster_id: labels.get(CLUSTER_LABEL)?.clone(),
            release: labels.get(RELEASE_LABEL)?.clone(),
            generation: annotations.get(GENERATION_ANNOTATION)?.parse().ok()?,
            operation_id: annotations.get(OPERATION_ANNOTATION)?.clone(),
        })
    }
}

/// The names of the backups beyond the newest `keep` of each cluster's release: the highest
/// generation first, then the operation id (a re-run of one generation), as the data dir's
/// backups are ordered.
fn expired(stored: Vec<Stored>, keep: usize) -> Vec<String> {
    let mut groups: BTreeMap<(String, String), Vec<Stored>> = BTreeMap::new();
    for s in stored {
        groups
            .entry((s.cluster_id.clone(), s.release.clone()))
            .or_default()
            .push(s);
    }
    let mut names = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| {
            b.generation
                .cmp(&a.generation)
                .then_with(|| b.operation_id.cmp(&a.operation_id))
        });
        names.extend(group.into_iter().skip(keep).map(|s| s.name));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: i64, operation: &str) -> BackupKey {
        BackupKey {
            cluster_id: "c1".into(),
            release: "skoala-init".into(),
            generation,
            operation_id: operation.into(),
        }
    }

    #[test]
    fn a_backup_name_is_fixed_length_and_differs_by_every_part() {
        let base = key(2, "op-1");
        let name = base.secret_name();
        assert!(name.starts_with("skoala-fleet-backup-"), "{name}");
        assert_eq!(name.len(), "skoala-fleet-backup-".len() + 20);
        assert_eq!(name, key(2, "op-1").secret_name(), "a retry finds its own");
        let others = [
            BackupKey {
                cluster_id: "c2".into(),
                ..base.clone()
            },
            BackupKey {
                release: "other".into(),
                ..base.clone()
            },
            key(3, "op-1"),
            key(2, "op-2"),
        ];
        for other in others {
            assert_ne!(other.secret_name(), name, "{other:?}");
        }
    }

    #[test]
    fn only_label_values_are_accepted_as_cluster_and_release() {
        for ok in ["c1", "skoala-init", "a.b_c-d", &"x".repeat(63)] {
            assert!(label_value("release", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", "../x", &"x".repeat(64)] {
            assert!(label_value("release", bad).is_err(), "{bad}");
        }
    }

    fn stored(cluster: &str, generation: i64, operation: &str) -> Stored {
        Stored {
            name: format!("{cluster}-{generation}-{operation}"),
            cluster_id: cluster.into(),
            release: "r".into(),
            generation,
            operation_id: operation.into(),
        }
    }

    #[test]
    fn a_prune_keeps_the_newest_generations_of_each_cluster_release() {
        let all = vec![
            stored("a", 1, "op-1"),
            stored("a", 10, "op-1"),
            stored("a", 2, "op-1"),
            stored("a", 3, "op-1"),
            stored("a", 3, "op-2"),
            stored("b", 1, "op-1"),
        ];
        let mut gone = expired(all, 2);
        gone.sort();
        assert_eq!(
            gone,
            ["a-1-op-1", "a-2-op-1", "a-3-op-1"],
            "10 is newer than 3 (numbers, not text); of one generation the later operation \
             stays; b's single backup is its own"
        );
    }

    #[test]
    fn a_secret_without_every_backup_mark_is_never_pruned() {
        let mut meta = ObjectMeta {
            name: Some("skoala-fleet-backup-x".into()),
            labels: Some(BTreeMap::from([
                (CLUSTER_LABEL.to_string(), "c".to_string()),
                (RELEASE_LABEL.to_string(), "r".to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (GENERATION_ANNOTATION.to_string(), "4".to_string()),
                (OPERATION_ANNOTATION.to_string(), "op".to_string()),
            ])),
            ..ObjectMeta::default()
        };
        assert!(Stored::from_meta(meta.clone()).is_some());
        meta.annotations
            .as_mut()
            .expect("annotations")
            .insert(GENERATION_ANNOTATION.to_string(), "four".to_string());
        assert_eq!(Stored::from_meta(meta), None);
    }
}
