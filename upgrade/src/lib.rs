//! skoala-upgrade: the documented manual upgrade of a skoala Helm release, as a library.
//!
//! The five manual steps (back up the values, `helm repo add`, `helm repo update`,
//! `helm upgrade --install ... --set <tags> -f <backup>`, re-apply the CRDs) become a verified,
//! resumable, reversible [`Executor::run`]: preflight, chart, backup (a Secret generation in
//! the cluster), CRDs (server-side apply, before the upgrade by default), upgrade (`--wait`),
//! verify (deployed, ready, image tags), and rollback on failure. Both daemons use it: the
//! coordinator for `skoala` in the control plane, each agent for `skoala-init` in its cluster.
//! Two more operations share its checks and records: [`Executor::preflight`] (the preflight and
//! chart steps only; writes nothing) and [`Executor::rollback`] (back to an earlier revision,
//! with a backup first and verification after, idempotent by operation id).
//! [`inventory`] reads releases natively from Helm's release Secrets.
//!
//! ```no_run
//! # async fn example(kubeconfig: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use skoala_upgrade::{ChartSource, Executor, Helm, Operation, Outcome, ProgressEvent, ReleaseSpec};
//!
//! let client = kube::Client::try_default().await?;
//! let helm = Helm::detect("/usr/local/bin/helm", kubeconfig).await?;
//! let exec = Executor::new(client, helm);
//!
//! let source = ChartSource::Repository {
//!     name: "skoala".into(),
//!     url: "https://release.daocloud.io/chartrepo/skoala".into(),
//! };
//! let spec = ReleaseSpec::skoala_init(source, "0.19.2");
//! let (progress, mut events) = tokio::sync::mpsc::channel::<ProgressEvent>(64);
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         println!("{} {:?} {}", event.step, event.phase, event.message);
//!     }
//! });
//! // Re-running the same operation id is safe: it reports the recorded outcome again.
//! let report = exec.run(&Operation::new("op-42"), &spec, progress).await?;
//! match report.outcome {
//!     Outcome::Succeeded => println!("now at {:?}", report.version_after),
//!     other => println!("{other:?} at {:?}: {}", report.failed_step, report.message),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Secrets: release values only ever reach helm through 0600 files that are removed after
//! use; every message in events and reports is redacted ([`redact`]); the backup bytes in
//! [`Backup`] are the one place values appear, for the caller to upload
//! ([`Executor::with_backup_upload`] makes that upload a condition of the upgrade).
//!
//! What lives in the cluster, all in the release namespace: the backups
//! (`skoala-fleet-backup-<release>-<generation>` Secrets, [`backup`]), the operation record
//! (`skoala-fleet-operation-<release>` ConfigMap, [`record`]) and, while an operation runs,
//! the release lock (`skoala-fleet-<release>` Lease, [`lock`]). The `skoala-upgrade` binary
//! runs one operation from the command line.
//!
//! Modules, one job each: [`spec`] (what to upgrade), [`helm`] (the CLI, isolated homes,
//! flags per major, and [`RunHelm`], how the executor runs it), [`chart`] (fetch or verify the chart), [`crds`] (extract and apply),
//! [`backup`], [`record`], [`lock`], [`rbac`] (permission preflight), [`kubeconfig`] (the file helm is given, in a pod too), [`verify`] (health),
//! [`redact`], [`report`] (events and the report), [`inventory`] (release state).

#![allow(
    missing_docs,
    reason = "public items not all documented yet; each is, crate by crate (issue 13 item 9)"
)]
#![forbid(unsafe_code)]

pub mod backup;
pub mod chart;
pub mod crds;
mod executor;
pub mod helm;
pub mod inventory;
pub mod kubeconfig;
pub mod lock;
pub mod rbac;
pub mod record;
pub mod redact;
pub mod report;
pub mod spec;
pub mod verify;
pub mod wire;

pub use executor::{BackupUpload, ExecError, Executor, Operation};
pub use helm::{Helm, HelmError, RunHelm};
pub use report::{Backup, Outcome, Phase, ProgressEvent, Report, Step, StepOutcome, StepTiming};
/// Helm's release status ([`inventory::ReleaseInfo::status`]), shared with the plan core.
pub use skoala_plan::ReleaseStatus;
pub use spec::{ChartSource, CrdPolicy, ReleaseSpec, SpecError};
