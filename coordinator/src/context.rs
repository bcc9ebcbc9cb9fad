//! What every handler shares: the store, the CA, the live sessions, metrics and settings, plus
//! the one way to record a security-relevant event ([`Context::audit`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backups::Backups;
use crate::control_plane::ControlPlane;
use crate::data_dir::DataDir;
use crate::identity::Refusal;
use crate::metrics::{self, Metrics};
use crate::orchestrator::{self, Orchestrator};
use crate::pki::FleetCa;
use crate::sessions::Sessions;
use crate::throttle::{Throttle, Verdict};
use skoala_kubestore::store::KubeStore;
use skoala_store::{NewAudit, Store};

/// Tunables of the gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of agent certificates (issued at registration and renewal).
    pub cert_ttl: Duration,
    /// How often the coordinator pings each agent.
    pub ping_interval: Duration,
    /// A session with no message from the agent for this long is declared dead and closed.
    pub agent_timeout: Duration,
    /// Largest accepted message, in bytes (gRPC decoding limit).
    pub max_message_bytes: usize,
    /// What is deleted, and when ([`orchestrator::Retention`]).
    pub retention: orchestrator::Retention,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cert_ttl: Duration::from_secs(24 * 3600),
            ping_interval: Duration::from_secs(15),
            agent_timeout: Duration::from_secs(60),
            max_message_bytes: 4 * 1024 * 1024,
            retention: Default::default(),
        }
    }
}

/// Shared state of one coordinator.
pub struct Context<S> {
    pub store: S,
    pub ca: FleetCa,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub control_plane: Option<Arc<ControlPlane>>,
    /// The data dir: relayed charts ([`crate::relay`]) live there.
    pub data_dir: DataDir,
    /// Where uploaded values backups go.
    pub backups: Backups,
    /// Limits audit entries per refusal kind.
    pub throttle: Throttle,
    /// Fleet upgrade plans ([`crate::orchestrator`]).
    pub orchestrator: Arc<Orchestrator<S>>,
    /// On the kube store, where the operators' verbs are written as the plan object's
    /// annotations (design §4.4); `None` on SQLite.
    pub plan_objects: Option<KubeStore>,
}

impl<S: Store> Context<S> {
    /// Writes an audit event and logs it. A store failure is logged, never hidden from the
    /// operator and never turned into a different answer for the caller.
    pub async fn audit(&self, kind: &str, cluster_id: &str, peer: &str, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(kind, cluster_id, peer, detail = %detail, "audit");
        let event = NewAudit {
            kind: kind.to_string(),
            cluster_id: cluster_id.to_string(),
            peer: peer.to_string(),
            detail,
        };
        if let Err(e) = self.store.append_audit(event).await {
            // Never silent: the log, a counter, and the metric the readiness check reads.
            self.metrics.audit_write_failed();
            tracing::error!(error = %e, kind, "could not write the audit log");
        } else {
            self.metrics.audit_written();
        }
    }

    /// Audits a refusal, counts it, and returns the status for the caller.
    pub async fn refuse(&self, refusal: Refusal, peer: &str) -> tonic::Status {
        self.refused(refusal.kind, &refusal.cluster_id, peer, refusal.detail)
            .await;
        refusal.status
    }

    /// Counts a refusal, then logs and audits it, summarising floods ([`crate::throttle`]):
    /// Register and the TLS port are open to anyone, and a loop of bad attempts must fill
    /// neither the disk nor the log. The metric counts every refusal.
    pub async fn refused(&self, kind: &str, cluster_id: &str, peer: &str, detail: String) {
        self.metrics.refusal(kind);
        if let Verdict::Write { suppressed } = self.throttle.check(kind, Instant::now()) {
            let detail = if suppressed > 0 {
                format!(
                    "{detail} ({suppressed} more refusals of this kind were not logged one by one)"
                )
            } else {
                detail
            };
            tracing::warn!(kind, peer, detail = %detail, "refused");
            self.audit(kind, cluster_id, peer, detail).await;
        }
    }
}

impl<S: Store> Context<S> {
    /// Writes the summaries of refusal floods whose window is over ([`Throttle::overdue`]);
    /// the server calls it periodically.
    pub async fn summarise_refusals(&self) {
        for (kind, suppressed) in self.throttle.overdue(Instant::now()) {
            let detail = format!(
                "{suppressed} more refusals of this kind were not logged one by one (the first {} of each {}s are)",
                crate::throttle::PER_WINDOW,
                crate::throttle::WINDOW.as_secs()
            );
            tracing::warn!(kind, detail = %detail, "refused");
            self.audit(&kind, "", "", detail).await;
        }
    }
}

/// `/metrics` reads the counters and the fleet as the orchestrator sees it.
impl<S: Store> metrics::Source for Context<S> {
    type Error = orchestrator::Error;

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn connected(&self) -> usize {
        self.sessions.connected()
    }

    async fn fleet(&self) -> Result<metrics::fleet::FleetState, orchestrator::Error> {
        let (snap, active_plans) = self.orchestrator.fleet_and_active_plans().await?;
        Ok(metrics::fleet::FleetState {
            skew: snap.skew(),
            view: std::sync::Arc::unwrap_or_clone(snap).view,
            active_plans,
        })
    }
}
