//! The steps of an upgrade, each one method returning what the next needs: [`Run::preflight`]
//! → [`Ready`], [`Run::chart`] → [`Chart`], [`Run::backup`] → [`Backup`], [`Run::crds`] →
//! [`CrdsDone`], [`Run::upgrade`], [`Run::verify`] → [`Verified`]. A step that ends the operation
//! sets the report's outcome and returns [`Halt`]; the driver is `Run::upgrade_operation`.

use std::path::Path;
use std::time::Instant;

use skoala_plan::ReleaseStatus;

use super::cluster::Cluster;
use super::run::{Done, Run};
use super::values::{SecretFile, backup_values, overrides_yaml};
use super::{Halt, Mode, args};
use crate::chart::{self, FetchedChart};
use crate::crds::{self, ChartCrd};
use crate::helm::{HelmError, HelmOutput, QUICK, RunHelm, timeout_flag};
use crate::inventory::ReleaseInfo;
use crate::record::{OperationRecord, RecordPhase};
use crate::report::{Backup, Outcome, Step, StepOutcome};
use crate::spec::{CrdPolicy, ReleaseSpec};
use crate::verify::{self, CustomKind};

/// Preflight passed: the release is deployed, helm and the permissions are there.
#[derive(Debug)]
pub(super) struct Ready {
    /// This operation's record from an earlier attempt (a crash, a re-delivery), if any.
    pub(super) earlier: Option<OperationRecord>,
}

/// The chart step's result: the verified archive and the CRDs it ships.
#[derive(Debug)]
pub(super) struct Chart {
    pub(super) fetched: FetchedChart,
    pub(super) crds: Vec<ChartCrd>,
}

impl Chart {
    fn describe(&self, spec: &ReleaseSpec) -> String {
        format!(
            "chart {} {} (sha256 {}), {} CRD(s)",
            spec.chart,
            spec.version,
            self.fetched.sha256,
            self.crds.len()
        )
    }
}

/// When, relative to `helm upgrade`, [`Run::crds`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Moment {
    BeforeUpgrade,
    AfterUpgrade,
}

/// What the CRD step did at one [`Moment`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CrdsDone {
    /// Applied these CRDs.
    Applied(Vec<String>),
    /// The policy is `skip` (reported once, before the upgrade).
    Skipped,
    /// The policy applies them at the other moment.
    NotNow,
}

/// Verification passed.
#[derive(Debug)]
pub(super) struct Verified {
    /// The release as it is now (`None` if it could not be read back).
    pub(super) release: Option<ReleaseInfo>,
}

impl<C: Cluster, H: RunHelm> Run<'_, C, H> {
    /// Preflight: the spec is valid; the operation has not finished already (else its outcome
    /// is reported again) and holds the release lock; the release is deployed — after
    /// recovering what a crashed attempt left `pending-*` or `failed`; helm and the RBAC
    /// permissions are there. In [`Mode::Preflight`] it only reads: no record, no lock.
    pub(super) async fn preflight(&mut self) -> Result<Ready, Halt> {
        let t = self.start(Step::Preflight).await;
        if let Err(e) = self.spec.validate() {
            return Err(self
                .refuse(Step::Preflight, t, Done::failed(e.to_string()))
                .await);
        }
        let (info, earlier, t) = if self.mode == Mode::Preflight {
            (self.deployed_release(t).await?, None, t)
        } else {
            let earlier = self.claim_release(t).await?;
            let (info, t) = self.release_to_upgrade(earlier.as_ref(), t).await?;
            (info, earlier, t)
        };

        // A retried attempt keeps the "before" of its first attempt.
        let first = earlier.as_ref();
        self.report.revision_before = first
            .and_then(|r| r.revision_before)
            .or(Some(info.revision));
        self.report.version_before = first
            .and_then(|r| r.version_before.clone())
            .or(Some(info.chart_version.clone()));
        self.tags_before = info
            .image_tags
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        match self.cluster.missing_permissions(self.spec).await {
            Ok(denied) if denied.is_empty() => {}
            Ok(denied) => {
                let msg = format!("missing permissions: {}", denied.join(", "));
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
            }
            Err(e) => {
                let msg = format!("checking permissions (SelfSubjectAccessReview): {e}");
                return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
            }
        }
        let msg = format!(
            "helm {}; release {} revision {} deployed at chart version {}",
            self.helm.helm().version(),
            self.spec.release,
            info.revision,
            info.chart_version
        );
        self.finish(Step::Preflight, t, Done::ok(msg)).await;
        Ok(Ready { earlier })
    }

    /// [`Mode::Preflight`]'s release check: deployed, or the check is refused.
    async fn deployed_release(&mut self, t: Instant) -> Result<ReleaseInfo, Halt> {
        let info = self.installed_release(t).await?;
        if info.status.is_deployed() {
            return Ok(info);
        }
        let msg = format!(
            "release {} revision {} is {}, not deployed",
            self.spec.release, info.revision, info.status
        );
        Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await)
    }

    /// The release as an upgrade finds it, under the lock: deployed, possibly after
    /// recovering a crashed attempt (which closes this preflight and opens another: the
    /// returned instant). An operation an interrupted attempt already completed ends here.
    async fn release_to_upgrade(
        &mut self,
        earlier: Option<&OperationRecord>,
        t: Instant,
    ) -> Result<(ReleaseInfo, Instant), Halt> {
        let found = self.record.clone();
        let info = self.installed_release(t).await?;
        if !info.status.is_deployed() {
            return self.recover_crashed(info, found, t).await;
        }
        if let Some(rec) = earlier
            && info.chart_version == self.spec.version
            && self.interrupted_after_success(rec, &info).await
        {
            let msg = self.report.message.clone();
            self.finish(Step::Preflight, t, Done::ok(msg)).await;
            return Err(Halt::Reported);
        }
        Ok((info, t))
    }

    /// A release that is not deployed: if a record still `running` (ours or another
    /// operation's) is found under the lock we now hold, that operation's process died and
    /// its `pending-*`/`failed` revision is rolled back ([`Step::Recover`]); then preflight
    /// runs again. Anything else is refused: someone else's operation, or a human's problem.
    async fn recover_crashed(
        &mut self,
        info: ReleaseInfo,
        found: Option<OperationRecord>,
        t: Instant,
    ) -> Result<(ReleaseInfo, Instant), Halt> {
        let stuck = info.status.is_pending() || info.status == ReleaseStatus::Failed;
        let crashed = found.filter(|r| r.phase == RecordPhase::Running && stuck);
        let Some(record) = crashed else {
            let msg = format!(
                "release {} revision {} is {}, not deployed: another operation may be in \
                 progress, or a failed one needs a human (helm history / helm rollback)",
                self.spec.release, info.revision, info.status
            );
            return Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await);
        };
        // Close preflight; recovery is its own step, then preflight runs again.
        let msg = format!(
            "release {} revision {} is {} after an interrupted operation: recovering",
            self.spec.release, info.revision, info.status
        );
        self.finish(Step::Preflight, t, Done::failed(msg)).await;
        self.recover(&info, &record).await?;
        let t = self.start(Step::Preflight).await;
        match self.read_release().await {
            Ok(Some(info)) if info.status.is_deployed() => Ok((info, t)),
            Ok(other) => {
                let msg = format!(
                    "after recovery the release is {}",
                    other.map_or("gone".to_string(), |i| i.status.to_string())
                );
                Err(self.refuse(Step::Preflight, t, Done::failed(msg)).await)
            }
            Err(e) => Err(self.refuse(Step::Preflight, t, Done::failed(e)).await),
        }
    }

    /// The process died after helm succeeded but before the record said so: if the release
    /// is at the target and verifies healthy, the operation is done (no second upgrade).
    async fn interrupted_after_success(
        &mut self,
        rec: &OperationRecord,
        info: &ReleaseInfo,
    ) -> bool {
        let expect = self.target_expectation(Vec::new());
        if self.cluster.health(self.helm, &expect).await.is_err() {
            return false;
        }
        self.report.revision_before = rec.revision_before;
        self.report.version_before = rec.version_before.clone();
        self.report.revision_after = Some(info.revision);
        self.report.version_after = Some(info.chart_version.clone());
        self.report.backup = self.backup_generation(rec.backup_generation).await;
        self.report.outcome = Outcome::Succeeded;
        self.report.message = format!(
            "an interrupted attempt of this operation had already upgraded {} to {}; verified \
             healthy",
            self.spec.release, self.spec.version
        );
        self.record = Some(rec.clone());
        self.close_record(RecordPhase::Succeeded).await;
        true
    }

    /// Chart: fetch the chart (or verify a delivered archive), extract its CRDs and ask the
    /// server to dry-run them. Changes nothing in the cluster.
    pub(super) async fn chart(&mut self) -> Result<Chart, Halt> {
        let t = self.start(Step::Chart).await;
        let fetched = match chart::fetch(self.helm, self.spec).await {
            Ok(c) => c,
            Err(e) => {
                let done = Done {
                    outcome: StepOutcome::Failed,
                    message: e.message.clone(),
                    helm: e.helm.as_ref(),
                };
                return Err(self.refuse(Step::Chart, t, done).await);
            }
        };
        let crds = match crds::extract(&fetched.bytes) {
            Ok(c) => c,
            Err(e) => {
                return Err(self
                    .refuse(Step::Chart, t, Done::failed(e.to_string()))
                    .await);
            }
        };
        if self.spec.crd_policy != CrdPolicy::Skip
            && let Err(e) = self.cluster.apply_crds(&crds, true).await
        {
            let msg = format!("the server would not accept the chart's CRDs (dry run): {e}");
            return Err(self.refuse(Step::Chart, t, Done::failed(msg)).await);
        }
        let chart = Chart { fetched, crds };
        self.custom_kinds = CustomKind::of(&chart.crds);
        let msg = chart.describe(self.spec);
        self.finish(Step::Chart, t, Done::ok(msg)).await;
        Ok(chart)
    }

    /// [`Mode::Preflight`] ends after the chart step, having changed nothing.
    pub(super) fn preflight_passed(&mut self, chart: &Chart) {
        self.report.outcome = Outcome::Succeeded;
        self.report.message = format!("preflight passed: {}", chart.describe(self.spec));
    }

    /// Backup: takes the values backup (or finds the one an earlier attempt of this operation
    /// took), records its generation, and uploads it when an upload is configured. A failure
    /// ends the operation `Failed` with nothing changed but the backup.
    pub(super) async fn backup(&mut self) -> Result<Backup, Halt> {
        let t = self.start(Step::Backup).await;
        let backup = match self.take_backup().await {
            Ok(b) => b,
            Err(msg) => {
                let m = self.finish(Step::Backup, t, Done::failed(msg)).await;
                return Err(self.fail_unchanged(Step::Backup, m).await);
            }
        };
        let msg = format!(
            "values backup generation {} in Secret {} (sha256 {})",
            backup.generation, backup.secret, backup.sha256
        );
        self.report.backup = Some(backup.clone());
        if let Some(mut rec) = self.record.clone() {
            rec.backup_generation = Some(backup.generation);
            if let Err(e) = self.save_record(rec).await {
                let m = self
                    .finish(Step::Backup, t, Done::failed(e.to_string()))
                    .await;
                return Err(self.fail_unchanged(Step::Backup, m).await);
            }
        }
        if let Some(upload) = self.upload.clone()
            && let Err(e) = upload(backup.clone()).await
        {
            let msg = format!("uploading the values backup: {e}");
            let m = self.finish(Step::Backup, t, Done::failed(msg)).await;
            return Err(self.fail_unchanged(Step::Backup, m).await);
        }
        self.finish(Step::Backup, t, Done::ok(msg)).await;
        Ok(backup)
    }

    /// Takes the backup, or finds the one this operation took in an earlier attempt.
    async fn take_backup(&mut self) -> Result<Backup, String> {
        let (ns, release, op) = (
            &self.spec.namespace,
            &self.spec.release,
            &self.report.operation_id,
        );
        let earlier = self
            .cluster
            .backup_of(ns, release, op)
            .await
            .map_err(|e| e.to_string())?;
        let backup = match earlier {
            Some(b) => b,
            None => {
                let out = self
                    .helm
                    .run(
                        &args(&["get", "values", release, "-n", ns, "-o", "yaml"]),
                        QUICK,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !out.success() {
                    // stderr of `get values` could echo values on a decoding error: only the
                    // code, and the redacted tail once we know the values (we do not yet).
                    return Err(format!("helm get values exited with {:?}", out.code));
                }
                let version_before = self.report.version_before.clone().unwrap_or_default();
                self.cluster
                    .store_backup(ns, release, op, &version_before, &out.stdout)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let values: serde_yaml::Value = serde_yaml::from_slice(&backup.values)
            .map_err(|_| format!("the values backup in {} is not YAML", backup.secret))?;
        self.redactor.add_yaml(&values, &[self.spec.tag()]);
        Ok(backup)
    }

    /// CRDs: server-side applies the chart's CRDs at the `moment` the spec's policy names
    /// (`skip` is reported once, before the upgrade). Before the upgrade a failure changed
    /// nothing in the release; after it, the release is rolled back.
    pub(super) async fn crds(&mut self, chart: &Chart, moment: Moment) -> Result<CrdsDone, Halt> {
        let now = match (self.spec.crd_policy, moment) {
            (CrdPolicy::Before, Moment::BeforeUpgrade)
            | (CrdPolicy::After, Moment::AfterUpgrade) => true,
            (CrdPolicy::Skip, Moment::BeforeUpgrade) => {
                let t = self.start(Step::Crds).await;
                self.finish(Step::Crds, t, Done::skipped("CRD policy is skip"))
                    .await;
                return Ok(CrdsDone::Skipped);
            }
            _ => false,
        };
        if !now {
            return Ok(CrdsDone::NotNow);
        }
        let t = self.start(Step::Crds).await;
        match self.cluster.apply_crds(&chart.crds, false).await {
            Ok(names) => {
                let msg = format!("applied {} CRD(s): {}", names.len(), names.join(", "));
                self.finish(Step::Crds, t, Done::ok(msg)).await;
                Ok(CrdsDone::Applied(names))
            }
            Err(e) => {
                let m = self
                    .finish(Step::Crds, t, Done::failed(e.to_string()))
                    .await;
                Err(match moment {
                    // CRDs only add: the release itself is untouched.
                    Moment::BeforeUpgrade => self.fail_unchanged(Step::Crds, m).await,
                    Moment::AfterUpgrade => self.roll_back(Step::Crds, m).await,
                })
            }
        }
    }

    /// Upgrade: deletes the spec's immutable Jobs, then `helm upgrade --install --wait` of the
    /// verified archive with the backup and our overrides. A failure rolls the release back.
    pub(super) async fn upgrade(&mut self, chart: &Chart, backup: &Backup) -> Result<(), Halt> {
        let t = self.start(Step::Upgrade).await;
        let (ns, jobs) = (&self.spec.namespace, &self.spec.delete_jobs);
        if let Err(msg) = self.cluster.delete_jobs(ns, jobs).await {
            let m = self.finish(Step::Upgrade, t, Done::failed(msg)).await;
            return Err(self.roll_back(Step::Upgrade, m).await);
        }
        let version = &self.spec.version;
        let m = match self.helm_upgrade(&chart.fetched.path, backup).await {
            Ok(out) if out.success() => {
                let done = Done {
                    outcome: StepOutcome::Succeeded,
                    message: format!("helm upgrade to {version} succeeded"),
                    // Exit code 0, and helm's warnings (e.g. fields the server pruned).
                    helm: Some(&out),
                };
                self.finish(Step::Upgrade, t, done).await;
                return Ok(());
            }
            Ok(out) => {
                let done = Done {
                    outcome: StepOutcome::Failed,
                    message: format!("helm upgrade to {version} failed ({})", out.exit()),
                    helm: Some(&out),
                };
                self.finish(Step::Upgrade, t, done).await
            }
            Err(e) => {
                self.finish(Step::Upgrade, t, Done::failed(e.to_string()))
                    .await
            }
        };
        Err(self.roll_back(Step::Upgrade, m).await)
    }

    /// `helm upgrade --install` with the backup and our overrides as 0600 files, removed after.
    async fn helm_upgrade(&self, chart: &Path, backup: &Backup) -> Result<HelmOutput, HelmError> {
        let dir = self.helm.work_dir();
        let backup_file = SecretFile::write(
            dir.join("backup-values.yaml"),
            &backup_values(&backup.values),
        )
        .map_err(HelmError::Home)?;
        let overrides = overrides_yaml(self.spec);
        let overrides_file =
            SecretFile::write(dir.join("override-values.yaml"), overrides.as_bytes())
                .map_err(HelmError::Home)?;
        let mut a = args(&[
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            &self.spec.namespace,
            &self.spec.release,
        ]);
        a.push(chart.into());
        // Later files win: our tags and extra values over the backup, like the documented
        // `--set ... -f backup` (where --set wins).
        a.push("-f".into());
        a.push(backup_file.path.clone().into());
        a.push("-f".into());
        a.push(overrides_file.path.clone().into());
        a.extend(self.helm.helm().wait_flags());
        a.push(timeout_flag(self.spec.timeout));
        let out = self.helm.run(&a, self.spec.timeout).await;
        drop(backup_file);
        drop(overrides_file);
        out
    }

    /// Verify: waits until the release is deployed at the target version with its workloads
    /// ready, the image tags set and no custom resource pruned. A failure rolls it back.
    pub(super) async fn verify(&mut self) -> Result<Verified, Halt> {
        let t = self.start(Step::Verify).await;
        let expect = self.target_expectation(self.custom_kinds.clone());
        let (cluster, helm) = (self.cluster, self.helm);
        let healthy = verify::poll(self.spec.timeout, || cluster.health(helm, &expect)).await;
        if let Err(reason) = healthy {
            let m = self.finish(Step::Verify, t, Done::failed(reason)).await;
            return Err(self.roll_back(Step::Verify, m).await);
        }
        let msg = format!(
            "deployed at {}, workloads ready, image tags {}",
            self.spec.version,
            self.spec.tag()
        );
        self.finish(Step::Verify, t, Done::ok(msg)).await;
        Ok(Verified {
            release: self.read_release().await.ok().flatten(),
        })
    }

    /// The upgrade is done and verified: the report and the record say so.
    pub(super) async fn succeeded(&mut self, verified: Verified) {
        self.report.revision_after = verified.release.as_ref().map(|i| i.revision);
        self.report.version_after = verified.release.map(|i| i.chart_version);
        self.report.outcome = Outcome::Succeeded;
        self.report.failed_step = None;
        self.report.message = format!(
            "upgraded {} from {} to {}",
            self.spec.release,
            self.report.version_before.clone().unwrap_or_default(),
            self.spec.version
        );
        self.close_record(RecordPhase::Succeeded).await;
    }
}
