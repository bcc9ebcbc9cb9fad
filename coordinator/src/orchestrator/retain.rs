//! Retention: what the coordinator deletes, and when.
//!
//! Without it the data dir only grows: an audit row per renewal and refusal, a dozen plan
//! events per cluster and plan, a certificate row per renewal, every relayed chart, and every
//! values backup — which holds a cluster's secrets in plain text. A sweep runs at start and
//! every [`Retention::every`]; it deletes
//!
//! - audit entries older than [`Retention::audit`],
//! - events of plans other than the active one older than [`Retention::plan_events`] (the
//!   active plan keeps its whole history, which `plan watch` and `events` read),
//! - certificate records expired for longer than [`Retention::certificates`] (an expired
//!   certificate cannot open a session; the record only served renewals and audits),
//! - admin identities (`skoalactl admin`) whose certificate expired longer than
//!   [`Retention::admins`] ago, revoked or not (a revoked one is kept until then: its row is
//!   what refuses its certificate),
//! - relayed charts the active plan does not use, untouched for [`Retention::charts`],
//! - values backups beyond the newest [`Retention::backups_per_release`] generations of each
//!   cluster's release (also right after every upload, [`crate::backups::Backups::prune_release`]).
//!
//! docs/operating.md has the defaults, the flags and the disk use they give at 10,000
//! clusters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skoala_plan::validate::ChartSource;

use super::Orchestrator;
use crate::clock::{now_ms, now_unix};
use crate::relay;
use skoala_store::{Cutoffs, Store};

/// How long things are kept (`serve --retain-*`, `--keep-backups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Audit entries.
    pub audit: Duration,
    /// Events of plans that are not the active one.
    pub plan_events: Duration,
    /// Certificate records, counted from their expiry.
    pub certificates: Duration,
    /// Admin identities, counted from their certificate's expiry.
    pub admins: Duration,
    /// Relayed charts no active plan uses, counted from their last change.
    pub charts: Duration,
    /// Values backups kept per cluster and release (newest generations).
    pub backups_per_release: usize,
    /// Time between sweeps.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(86_400);
        Retention {
            audit: 90 * DAY,
            plan_events: 90 * DAY,
            certificates: 7 * DAY,
            admins: 7 * DAY,
            charts: 7 * DAY,
            // The executor keeps as many backup Secrets in each cluster.
            backups_per_release: 5,
            every: Duration::from_secs(3600),
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl<S: Store> Orchestrator<S> {
    /// Sweeps now and then every `retention.every`, until the process ends.
    pub async fn retain(self: Arc<Self>, retention: Retention) {
        loop {
            self.sweep(&retention).await;
            tokio::time::sleep(retention.every).await;
        }
    }

    /// One sweep; failures are logged and retried at the next.
    pub(crate) async fn sweep(&self, r: &Retention) {
        let cutoffs = Cutoffs {
            audit_before_ms: now_ms().saturating_sub(ms(r.audit)),
            events_before_ms: now_ms().saturating_sub(ms(r.plan_events)),
            certificates_expired_before_unix: now_unix().saturating_sub(secs(r.certificates)),
            admins_expired_before_unix: now_unix().saturating_sub(secs(r.admins)),
        };
        let pruned = match self.store.prune(cutoffs).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot prune the store");
                Default::default()
            }
        };
        let (dir, keep) = (self.data_dir.clone(), r.backups_per_release);
        let in_use = self.charts_in_use().await;
        let older_than = SystemTime::now()
            .checked_sub(r.charts)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let charts = tokio::task::spawn_blocking(move || {
            in_use.map_or(0, |used| relay::prune(&dir, &used, older_than))
        })
        .await
        .unwrap_or_default();
        let backups = self.backups.prune(keep).await;
        tracing::info!(
            audit = pruned.audit,
            plan_events = pruned.events,
            certificates = pruned.certificates,
            admins = pruned.admins,
            charts,
            backups,
            "retention sweep"
        );
    }

    /// The relayed chart files the active plan uses (both names of each); `None` while they
    /// are unknown (a relay plan's charts being prepared after a restart): no chart is
    /// deleted then.
    async fn charts_in_use(&self) -> Option<Vec<PathBuf>> {
        let st = self.state.lock().await;
        let Some(active) = st.active.as_ref() else {
            return Some(Vec::new());
        };
        match (&active.plan.chart_source, &active.charts) {
            (ChartSource::Repo, _) => Some(Vec::new()),
            (ChartSource::Relay, None) => None,
            (ChartSource::Relay, Some(c)) => Some(
                [&c.control_plane, &c.worker]
                    .into_iter()
                    .flat_map(|r| [r.path.clone(), relay::by_digest(&self.data_dir, &r.sha256)])
                    .collect(),
            ),
        }
    }
}
