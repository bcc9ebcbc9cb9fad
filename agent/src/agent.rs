//! The agent's life: find out which cluster this is, make sure it has credentials (stored, or by
//! registering once), start the inventory watch, then hold a session to the coordinator forever,
//! reconnecting with exponential backoff and jitter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use skoala_proto::v1::ClusterIdentity;
use skoala_support::names;
use skoala_upgrade::Helm;
use skoala_upgrade::inventory::{self, InventoryWatch, TrackedRelease};
use tokio_util::sync::CancellationToken;

use crate::AGENT_VERSION;
use crate::credentials::Credentials;
use crate::identity_store::IdentityStore;
use crate::metrics::{self, Metrics};
use crate::register::{self, RegisterError};
use crate::session::{self, SessionParams};
use crate::tasks::{ExecutorParts, TaskRunner};
use crate::transport::CoordinatorAddr;

/// Everything the agent needs to run (the binary builds it from flags and environment).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the coordinator is, its CA, and how to get there (proxy, HTTP/2 settings).
    pub coordinator: CoordinatorAddr,
    /// The join token; needed only to register (first start, or after the certificate lapsed).
    pub token: Option<String>,
    /// `None`: `KUBECONFIG`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The name this cluster is shown under; `None`: the coordinator names it after its id.
    pub cluster_name: Option<String>,
    /// Labels plans select clusters by (`spec.clusters.matchLabels`); sent in every hello, so
    /// a change takes effect at the next connection.
    pub labels: BTreeMap<String, String>,
    /// The agent's own namespace (holds the identity Secret).
    pub namespace: String,
    /// The Secret in `namespace` that keeps the agent's key, certificate and CA, so a restart
    /// never registers again.
    pub secret_name: String,
    /// The Secret in `namespace` the join token came from (the chart's): deleted once the
    /// identity is stored, so a spent token does not stay readable in the cluster. `None`:
    /// nothing to delete (the token came from a flag).
    pub token_secret: Option<String>,
    /// How often the agent says it is alive; the coordinator declares it dead after its own
    /// `--agent-timeout` without a message.
    pub heartbeat: Duration,
    /// The releases whose inventory is reported (`skoala-init` in its namespace).
    pub tracked: Vec<TrackedRelease>,
    /// The helm binary that runs every task and whose version is reported; `None`: tasks are
    /// refused (the inventory is still reported).
    pub helm: Option<PathBuf>,
    /// Where relayed charts are cached; `None`: `$TMPDIR/skoala-agent-charts`.
    pub chart_cache: Option<PathBuf>,
    /// The first wait before reconnecting.
    pub min_backoff: Duration,
    /// The longest wait between reconnect attempts (jittered, see [`reconnect_backoff`]).
    pub max_backoff: Duration,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// The counters, readable by the caller too.
    pub metrics: Arc<Metrics>,
}

/// Why the agent stopped: problems a restart with the same settings would not fix.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `metrics_listen` could not be bound.
    #[error("metrics port {addr}: {source}")]
    MetricsBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// No usable kubeconfig (explicit, `KUBECONFIG` or in-cluster).
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The `kube-system` namespace (whose UID is the cluster's identity) could not be read.
    #[error("cannot read the cluster identity (kube-system namespace UID): {0}")]
    Identity(inventory::InventoryError),
    /// Helm's release Secrets could not be listed or watched.
    #[error("cannot read the Helm release inventory: {0}")]
    Inventory(inventory::InventoryError),
    /// The identity Secret could not be read.
    #[error(transparent)]
    Store(#[from] crate::identity_store::StoreError),
    /// Registering is needed (no stored identity, or it lapsed) but no token was given.
    #[error(
        "{problem}; no join token was given, so the agent cannot register: create one with `skoalactl token create` and pass it with --token (SKOALA_TOKEN)"
    )]
    NeedToken {
        /// Why the stored identity cannot be used.
        problem: String,
    },
    /// The coordinator refused the registration (token unknown, spent, expired or revoked).
    #[error(
        "{0}; create a new join token with `skoalactl token create` and restart the agent with it"
    )]
    Registration(RegisterError),
    /// Registered, but the new identity could not be stored in the cluster.
    #[error(
        "registered, but the identity could not be stored ({0}); the join token is spent: fix the problem, create a new token with `skoalactl token create` and restart the agent with it"
    )]
    StoreAfterRegister(crate::identity_store::StoreError),
}

/// Runs the agent until `shutdown` is cancelled. Returns an error only for problems a restart
/// will not fix (no identity, registration refused); network trouble is retried forever.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    if let Some(addr) = config.metrics_listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::MetricsBind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        // Scripts and tests read this line to learn the port when listening on :0.
        println!("skoala-agent metrics on http://{local}/metrics");
        tokio::spawn(metrics::serve(
            listener,
            config.metrics.clone(),
            shutdown.clone(),
        ));
    }
    let (kube_config, context_cluster) = kube_config(config.kubeconfig.as_ref()).await?;
    let client = kube::Client::try_from(kube_config.clone())?;
    let cluster_id = inventory::kube_system_uid(&client)
        .await
        .map_err(AgentError::Identity)?;
    let name = config
        .cluster_name
        .clone()
        // A kubeconfig's cluster name is free-form (GKE's `gke_<project>_<zone>_<name>`, EKS
        // ARNs); the fleet accepts only DNS-1123 names.
        .or(context_cluster.as_deref().and_then(names::name_from))
        .unwrap_or_else(|| format!("cluster-{}", cluster_id.chars().take(8).collect::<String>()));
    let identity = ClusterIdentity {
        cluster_id: cluster_id.clone(),
        name: name.clone(),
        labels: config.labels.clone().into_iter().collect(),
    };
    tracing::info!(cluster_id = %cluster_id, name = %name, "cluster identity");

    let inventory = InventoryWatch::start(client.clone(), config.tracked.clone())
        .await
        .map_err(AgentError::Inventory)?;
    let helm_version = match &config.helm {
        Some(helm) => helm_version(helm).await,
        None => String::new(),
    };
    let executor = match &config.helm {
        Some(helm) => executor_parts(&config, helm, kube_config).await,
        None => Err("this agent runs without helm (no --helm)".to_string()),
    };
    if let Err(why) = &executor {
        tracing::warn!(reason = %why, "tasks will be refused");
    }
    let (tasks, outbox) = TaskRunner::new(executor, Some((client.clone(), config.tracked.clone())));
    let tasks = match &config.chart_cache {
        Some(dir) => tasks.with_chart_cache(dir),
        None => tasks,
    };
    let store = IdentityStore::new(client.clone(), &config.namespace, &config.secret_name);

    let backoff = reconnect_backoff(config.min_backoff, config.max_backoff);

    let Some(creds) = ensure_credentials(&config, &store, &identity, &backoff, &shutdown).await?
    else {
        return Ok(()); // shut down while registering
    };
    // On every start, not only after registering: a crash between storing the identity and
    // deleting the token leaves the Secret for the next start.
    if let Some(name) = &config.token_secret {
        forget_join_token(client, &config.namespace, name).await;
    }
    let mut params = SessionParams {
        identity: identity.clone(),
        agent_version: AGENT_VERSION.to_string(),
        helm_version,
        heartbeat: config.heartbeat,
        inventory: inventory.subscribe(),
        credentials: Arc::new(Mutex::new(creds)),
        store: Some(store.clone()),
        tasks,
        outbox,
        metrics: config.metrics.clone(),
    };

    let mut link = LinkLog {
        metrics: config.metrics.clone(),
        ..LinkLog::default()
    };
    let mut delays = backoff.build();
    loop {
        // A certificate can lapse while the coordinator is unreachable for long.
        let current = params
            .credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Err(problem) = current.check(&cluster_id, jiff::Timestamp::now()) {
            tracing::error!(error = %problem, "the agent's certificate cannot be used");
            let Some(fresh) =
                ensure_credentials(&config, &store, &identity, &backoff, &shutdown).await?
            else {
                return Ok(());
            };
            *params.credentials.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        }

        let mut connected = false;
        let result = session::run(&config.coordinator, &mut params, &shutdown, &mut || {
            connected = true;
            link.connected();
        })
        .await;
        if shutdown.is_cancelled() {
            tracing::info!("shutting down");
            return Ok(());
        }
        let superseded = result.as_ref().is_err_and(|e| e.is_superseded());
        if connected && !superseded {
            // A session that got going resets the backoff: the next failure is a new incident.
            delays = backoff.build();
        }
        let delay = delays.next().unwrap_or(config.max_backoff);
        let cause = match result {
            Ok(()) => "the session ended".to_string(),
            Err(e) => e.to_string(),
        };
        link.failed(&cause, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// The reconnect (and registration retry) delays: exponential from `min` with jitter, never
/// longer than `max`, never giving up.
///
/// backon adds its jitter *after* capping (a delay `d` becomes `d..2d`), so the cap given to it
/// is half of `max`: delays at the cap spread over `max/2..max` instead of reaching `2 × max`.
/// Measured with 10,000 simulated agents and a 30 s coordinator outage (BENCHMARKS.md): with
/// the cap at `max` the last agents came back 51 s after the restart, with `--max-backoff 30s`.
pub fn reconnect_backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(min.min(max / 2))
        .with_max_delay(max / 2)
        .without_max_times()
}

/// Logs the link's state changes, not every attempt: one line when it comes up, one when it
/// goes down, one when the cause of failing changes.
#[derive(Default)]
struct LinkLog {
    metrics: Arc<Metrics>,
    up: bool,
    last_cause: Option<String>,
    failures: u64,
}

impl LinkLog {
    fn connected(&mut self) {
        self.metrics.session_up();
        if self.failures > 0 {
            tracing::info!(
                failed_attempts = self.failures,
                "connected to the coordinator"
            );
        } else {
            tracing::info!("connected to the coordinator");
        }
        self.up = true;
        self.last_cause = None;
        self.failures = 0;
    }

    fn failed(&mut self, cause: &str, retry_in: Duration) {
        self.metrics.connected.store(0, Ordering::Relaxed);
        metrics::inc(&self.metrics.session_failures);
        self.failures += 1;
        if self.up {
            tracing::warn!(
                cause,
                ?retry_in,
                "lost the coordinator session; reconnecting"
            );
        } else if self.last_cause.as_deref() != Some(cause) {
            tracing::warn!(
                cause,
                ?retry_in,
                attempts = self.failures,
                "cannot reach the coordinator; retrying with backoff"
            );
        } else {
            tracing::debug!(
                cause,
                ?retry_in,
                attempts = self.failures,
                "still cannot reach the coordinator"
            );
        }
        self.up = false;
        self.last_cause = Some(cause.to_string());
    }
}

/// Stored credentials if usable, otherwise registers (retrying while the coordinator is
/// unreachable) and stores the result. `None` if shut down meanwhile.
async fn ensure_credentials(
    config: &AgentConfig,
    store: &IdentityStore,
    identity: &ClusterIdentity,
    backoff: &ExponentialBuilder,
    shutdown: &CancellationToken,
) -> Result<Option<Credentials>, AgentError> {
    let problem = match store.load().await {
        Ok(Some(creds)) => match creds.check(&identity.cluster_id, jiff::Timestamp::now()) {
            Ok(()) => {
                tracing::info!(secret = %store.location(), serial = %creds.serial_hex, not_after = %creds.not_after, "using the stored identity");
                return Ok(Some(creds));
            }
            Err(e) => format!("the identity in Secret {}: {e}", store.location()),
        },
        Ok(None) => format!("not registered yet (no Secret {})", store.location()),
        // Garbage in the Secret is as good as none; a fresh registration replaces it.
        Err(e @ crate::identity_store::StoreError::Invalid { .. })
        | Err(e @ crate::identity_store::StoreError::Incomplete { .. }) => e.to_string(),
        Err(e) => return Err(e.into()),
    };
    let Some(token) = config.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(AgentError::NeedToken { problem });
    };
    store.check_namespace().await?;
    tracing::info!(reason = %problem, "registering with the coordinator");
    let mut delays = backoff.build();
    let mut last_cause = String::new();
    loop {
        match register::register(&config.coordinator, token, identity, AGENT_VERSION).await {
            Ok(creds) => {
                save_after_register(store, &creds, backoff, shutdown).await?;
                tracing::info!(secret = %store.location(), serial = %creds.serial_hex, not_after = %creds.not_after, "registered; identity stored");
                return Ok(Some(creds));
            }
            Err(e) if e.is_transient() => {
                let delay = delays.next().unwrap_or(config.max_backoff);
                let cause = e.to_string();
                if cause != last_cause {
                    tracing::warn!(cause = %cause, retry_in = ?delay, "registration failed; retrying");
                    last_cause = cause;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(AgentError::Registration(e)),
        }
    }
}

/// Deletes the join token's Secret now that the identity is stored: the token is spent, and
/// whoever could read it should not learn what the fleet's tokens look like, nor try it
/// elsewhere while it has uses left. Never fatal: the agent runs without it; a refusal (the
/// chart grants `delete` on that one name) is logged for the operator.
async fn forget_join_token(client: kube::Client, namespace: &str, name: &str) {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, namespace);
    match secrets.delete(name, &Default::default()).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "join token Secret deleted: the identity is stored")
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(secret = %format!("{namespace}/{name}"), "no join token Secret to delete")
        }
        Err(e) => {
            tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot delete the join token Secret; the token is spent, delete the Secret by hand")
        }
    }
}

/// Stores freshly issued credentials, retrying a few times: the join token is spent, so losing
/// them means asking the operator for a new one.
async fn save_after_register(
    store: &IdentityStore,
    creds: &Credentials,
    backoff: &ExponentialBuilder,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    const ATTEMPTS: usize = 5;
    let mut delays = backoff.build();
    let mut attempt = 1;
    loop {
        match store.save(creds).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < ATTEMPTS && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, attempt, "cannot store the new identity yet; retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                attempt += 1;
            }
            Err(e) => return Err(AgentError::StoreAfterRegister(e)),
        }
    }
}

/// The kube config from `--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`, else in-cluster; and
/// the current context's cluster name (the default cluster name), when there is a kubeconfig.
async fn kube_config(path: Option<&PathBuf>) -> Result<(kube::Config, Option<String>), AgentError> {
    let kc_err = |e: &dyn std::fmt::Display| AgentError::Kubeconfig(e.to_string());
    let (config, kubeconfig) = match path {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| kc_err(&format!("{}: {e}", path.display())))?;
            let config =
                kube::Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default())
                    .await
                    .map_err(|e| kc_err(&e))?;
            (config, Some(kc))
        }
        None => {
            let config = kube::Config::infer().await.map_err(|e| kc_err(&e))?;
            (config, Kubeconfig::read().ok())
        }
    };
    let cluster = kubeconfig.and_then(|kc| {
        let current = kc.current_context.clone()?;
        kc.contexts
            .into_iter()
            .find(|c| c.name == current)?
            .context
            .map(|c| c.cluster)
    });
    Ok((config, cluster))
}

/// The executor's helm and cluster, or why tasks cannot run here.
async fn executor_parts(
    config: &AgentConfig,
    helm: &Path,
    kube: kube::Config,
) -> Result<ExecutorParts, String> {
    let kubeconfig = skoala_upgrade::kubeconfig::for_helm(config.kubeconfig.as_deref())
        .map_err(|e| e.to_string())?;
    let helm = Helm::detect(helm, kubeconfig)
        .await
        .map_err(|e| format!("helm is not usable: {e}"))?;
    Ok(ExecutorParts { kube, helm })
}

/// `helm version --short`, or empty if helm cannot be run (reported, not fatal: the agent's
/// link does not need helm).
async fn helm_version(helm: &PathBuf) -> String {
    let run = tokio::process::Command::new(helm)
        .args(["version", "--short"])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
        Ok(Ok(out)) => {
            tracing::warn!(helm = %helm.display(), status = %out.status, "`helm version` failed; reporting no helm version");
            String::new()
        }
        Ok(Err(e)) => {
            tracing::warn!(helm = %helm.display(), error = %e, "cannot run helm; reporting no helm version");
            String::new()
        }
        Err(_) => {
            tracing::warn!(helm = %helm.display(), "`helm version` hung; reporting no helm version");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_never_exceed_the_max_backoff_and_stay_jittered() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(2));
        let delays: Vec<Duration> = reconnect_backoff(min, max).build().take(200).collect();
        assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
        assert!(delays.iter().all(|d| *d >= min), "{delays:?}");
        // At the cap the delays still spread (no synchronized retries after an outage).
        let capped = &delays[50..];
        let (lo, hi) = (capped.iter().min(), capped.iter().max());
        assert!(
            hi.zip(lo).is_some_and(|(h, l)| *h - *l > max / 4),
            "{capped:?}"
        );
    }
}
