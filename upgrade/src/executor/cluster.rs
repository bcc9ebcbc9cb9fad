//! The executor's seam to the Kubernetes API: every call an operation makes, as one trait.
//!
//! [`Kube`] is the product's implementation; each method is one call into the module that owns
//! that object ([`inventory`], [`record`], [`lock`], [`backup`], [`rbac`], [`crds`], [`verify`])
//! through kube-rs, so the seam adds no behaviour. The executor's unit tests put a fake API
//! behind it. Helm has its own seam, [`RunHelm`].

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PropagationPolicy};

use crate::backup::{self, BackupError, Stored};
use crate::crds::{self, ChartCrd, CrdError};
use crate::helm::RunHelm;
use crate::inventory::{self, InventoryError, ReleaseInfo, TrackedRelease};
use crate::lock::{LockError, ReleaseLock};
use crate::rbac;
use crate::record::{OperationRecord, RecordStore};
use crate::report::Backup;
use crate::spec::ReleaseSpec;
use crate::verify::{self, Expectation, Unhealthy};

/// How long deleted Jobs may take to disappear.
const JOB_DELETE_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster an operation changes, as the executor uses it.
pub(crate) trait Cluster: Send + Sync {
    /// One release's operation record ([`crate::record`]).
    type Records: Records;
    /// A held release lock ([`crate::lock`]).
    type Lock: Lock;

    fn records(&self, namespace: &str, release: &str) -> Self::Records;

    /// Takes the release's lock for `holder` (an operation id).
    fn lock(
        &self,
        namespace: &str,
        release: &str,
        holder: &str,
    ) -> impl Future<Output = Result<Self::Lock, LockError>> + Send;

    /// The release's latest revision ([`inventory::read_release`]).
    fn release(
        &self,
        tracked: &TrackedRelease,
    ) -> impl Future<Output = Result<Option<ReleaseInfo>, InventoryError>> + Send;

    /// One revision of the release ([`inventory::read_revision`]).
    fn revision(
        &self,
        tracked: &TrackedRelease,
        revision: i32,
    ) -> impl Future<Output = Result<Option<ReleaseInfo>, InventoryError>> + Send;

    /// Every backup of the release ([`backup::list`]).
    fn backups(
        &self,
        namespace: &str,
        release: &str,
    ) -> impl Future<Output = Result<Vec<Stored>, BackupError>> + Send;

    /// The backup an operation took ([`backup::find_for_operation`]).
    fn backup_of(
        &self,
        namespace: &str,
        release: &str,
        operation_id: &str,
    ) -> impl Future<Output = Result<Option<Backup>, BackupError>> + Send;

    /// Stores a new backup generation ([`backup::store`]).
    fn store_backup(
        &self,
        namespace: &str,
        release: &str,
        operation_id: &str,
        chart_version: &str,
        values: &[u8],
    ) -> impl Future<Output = Result<Backup, BackupError>> + Send;

    /// The permissions an operation on `spec` lacks ([`rbac::missing`]).
    fn missing_permissions(
        &self,
        spec: &ReleaseSpec,
    ) -> impl Future<Output = Result<Vec<String>, kube::Error>> + Send;

    /// Server-side applies the CRDs, or only asks whether the server would ([`crds::apply`]).
    fn apply_crds(
        &self,
        crds: &[ChartCrd],
        dry_run: bool,
    ) -> impl Future<Output = Result<Vec<String>, CrdError>> + Send;

    /// Deletes the Jobs and waits until they are gone (helm must create them anew).
    fn delete_jobs(
        &self,
        namespace: &str,
        names: &[String],
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// One verification pass ([`verify::check`]).
    fn health<H: RunHelm>(
        &self,
        helm: &H,
        expect: &Expectation,
    ) -> impl Future<Output = Result<(), Unhealthy>> + Send;
}

/// Reads and writes one release's operation record.
pub(crate) trait Records: Send {
    fn load(&mut self)
    -> impl Future<Output = Result<Option<OperationRecord>, kube::Error>> + Send;
    fn save(
        &mut self,
        record: &OperationRecord,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

/// A held release lock.
pub(crate) trait Lock: Send {
    /// Gives the lock up (best effort: an unreleased lock expires).
    fn release(self) -> impl Future<Output = ()> + Send;
}

/// The real cluster, through kube-rs.
pub(crate) struct Kube {
    pub(crate) client: kube::Client,
}

impl Cluster for Kube {
    type Records = RecordStore;
    type Lock = ReleaseLock;

    fn records(&self, namespace: &str, release: &str) -> RecordStore {
        RecordStore::new(&self.client, namespace, release)
    }

    async fn lock(
        &self,
        namespace: &str,
        release: &str,
        holder: &str,
    ) -> Result<ReleaseLock, LockError> {
        ReleaseLock::acquire(&self.client, namespace, release, holder).await
    }

    async fn release(
        &self,
        tracked: &TrackedRelease,
    ) -> Result<Option<ReleaseInfo>, InventoryError> {
        inventory::read_release(&self.client, tracked).await
    }

    async fn revision(
        &self,
        tracked: &TrackedRelease,
        revision: i32,
    ) -> Result<Option<ReleaseInfo>, InventoryError> {
        inventory::read_revision(&self.client, tracked, revision).await
    }

    async fn backups(&self, namespace: &str, release: &str) -> Result<Vec<Stored>, BackupError> {
        backup::list(&self.client, namespace, release).await
    }

    async fn backup_of(
        &self,
        namespace: &str,
        release: &str,
        operation_id: &str,
    ) -> Result<Option<Backup>, BackupError> {
        backup::find_for_operation(&self.client, namespace, release, operation_id).await
    }

    async fn store_backup(
        &self,
        namespace: &str,
        release: &str,
        operation_id: &str,
        chart_version: &str,
        values: &[u8],
    ) -> Result<Backup, BackupError> {
        backup::store(
            &self.client,
            namespace,
            release,
            operation_id,
            chart_version,
            values,
        )
        .await
    }

    async fn missing_permissions(&self, spec: &ReleaseSpec) -> Result<Vec<String>, kube::Error> {
        rbac::missing(&self.client, spec).await
    }

    async fn apply_crds(&self, crds: &[ChartCrd], dry_run: bool) -> Result<Vec<String>, CrdError> {
        crds::apply(&self.client, crds, dry_run).await
    }

    async fn delete_jobs(&self, namespace: &str, names: &[String]) -> Result<(), String> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        for name in names {
            match api.delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(format!("deleting Job {name}: {e}")),
            }
            let deadline = Instant::now() + JOB_DELETE_TIMEOUT;
            loop {
                match api.get_opt(name).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(Some(_)) => {
                        return Err(format!(
                            "Job {name} still exists {JOB_DELETE_TIMEOUT:?} after deletion"
                        ));
                    }
                    Err(e) => return Err(format!("waiting for Job {name} to go: {e}")),
                }
            }
        }
        Ok(())
    }

    async fn health<H: RunHelm>(&self, helm: &H, expect: &Expectation) -> Result<(), Unhealthy> {
        verify::check(helm, &self.client, expect).await
    }
}

impl Records for RecordStore {
    async fn load(&mut self) -> Result<Option<OperationRecord>, kube::Error> {
        RecordStore::load(self).await
    }

    async fn save(&mut self, record: &OperationRecord) -> Result<(), kube::Error> {
        RecordStore::save(self, record).await
    }
}

impl Lock for ReleaseLock {
    async fn release(self) {
        ReleaseLock::release(self).await
    }
}
