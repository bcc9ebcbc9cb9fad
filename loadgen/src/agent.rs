//! One simulated agent: register once with the shared token, then hold a session forever,
//! reconnecting with the real agent's backoff (exponential, jittered, never giving up).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use skoala_agent::credentials::Credentials;
use skoala_agent::metrics::Metrics;
use skoala_agent::register;
use skoala_agent::session::{self, SessionParams};
use skoala_agent::tasks::TaskRunner;
use skoala_agent::transport::CoordinatorAddr;
use skoala_proto::v1::ClusterIdentity;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fake;
use super::receipts::Receipts;
use super::stats::{self, Stats};

/// The real agent's first reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// What all simulated agents share.
pub struct Settings {
    pub token: String,
    pub heartbeat: Duration,
    pub upgrade_time: Duration,
    pub initial_version: String,
    /// Labels besides `skoala.io/simulated=true`.
    pub labels: Vec<(String, String)>,
    pub max_backoff: Duration,
    /// Where task arrivals are noted (`--receipts`).
    pub receipts: Receipts,
}

pub struct SimAgent {
    pub name: String,
    pub addr: CoordinatorAddr,
    pub settings: Arc<Settings>,
    pub stats: Arc<Stats>,
}

impl SimAgent {
    /// Runs until `shutdown`, or until the coordinator refuses the registration for good.
    pub async fn run(self, shutdown: CancellationToken) {
        let identity = ClusterIdentity {
            cluster_id: uuid::Uuid::new_v4().to_string(),
            name: self.name.clone(),
            labels: [("skoala.io/simulated".to_string(), "true".to_string())]
                .into_iter()
                .chain(self.settings.labels.iter().cloned())
                .collect(),
        };
        let backoff =
            skoala_agent::agent::reconnect_backoff(MIN_BACKOFF, self.settings.max_backoff);

        let Some(creds) = self.register(&identity, &backoff, &shutdown).await else {
            return;
        };
        stats::inc(&self.stats.registered);

        let (inventory, inventory_rx) =
            watch::channel(vec![fake::release(&self.settings.initial_version, 1)]);
        let (tasks, outbox) = TaskRunner::custom(fake::upgrade(
            self.settings.upgrade_time,
            Arc::new(inventory),
            self.stats.clone(),
            self.settings.receipts.clone(),
        ));
        let mut params = SessionParams {
            identity,
            agent_version: format!("{}-sim", skoala_agent::AGENT_VERSION),
            helm_version: "v4.1.4-sim".into(),
            heartbeat: self.settings.heartbeat,
            inventory: inventory_rx,
            credentials: Arc::new(Mutex::new(creds)),
            store: None,
            tasks,
            outbox,
            metrics: Arc::new(Metrics::default()),
        };
        let mut delays = backoff.build();
        loop {
            let mut connected = false;
            let stats = &self.stats;
            let result = session::run(&self.addr, &mut params, &shutdown, &mut || {
                connected = true;
                stats::inc(&stats.connected);
                stats::inc(&stats.sessions);
            })
            .await;
            if connected {
                stats::dec(&self.stats.connected);
            }
            if shutdown.is_cancelled() {
                return;
            }
            match &result {
                Err(e) if connected && !e.is_superseded() => {
                    stats::inc(&self.stats.disconnects);
                    delays = backoff.build();
                }
                Err(e) => {
                    stats::inc(&self.stats.failed_attempts);
                    tracing::debug!(agent = %self.name, error = %e, "session attempt failed");
                }
                Ok(()) => {}
            }
            let delay = delays.next().unwrap_or(self.settings.max_backoff);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Registers with retries; `None` on shutdown or a refusal (counted as giving up).
    async fn register(
        &self,
        identity: &ClusterIdentity,
        backoff: &ExponentialBuilder,
        shutdown: &CancellationToken,
    ) -> Option<Credentials> {
        let mut delays = backoff.build();
        loop {
            let attempt = register::register(
                &self.addr,
                &self.settings.token,
                identity,
                skoala_agent::AGENT_VERSION,
            );
            let result = tokio::select! {
                r = attempt => r,
                _ = shutdown.cancelled() => return None,
            };
            match result {
                Ok(creds) => return Some(creds),
                Err(e) if e.is_transient() => {
                    stats::inc(&self.stats.failed_attempts);
                    tracing::debug!(agent = %self.name, error = %e, "registration failed; retrying");
                }
                Err(e) => {
                    stats::inc(&self.stats.gave_up);
                    tracing::error!(agent = %self.name, error = %e, "registration refused; this simulated agent stops");
                    return None;
                }
            }
            let delay = delays.next().unwrap_or(self.settings.max_backoff);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }
}
