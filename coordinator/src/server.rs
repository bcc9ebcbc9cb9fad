//! `skoala-coordinator serve`: loads the PKI (from the data dir, or on `--store kube` from the
//! Secret every replica shares), opens the store and serves the gateway and the admin API on
//! one TLS port (plus `/metrics` on its own plaintext port if asked).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use skoala_proto::v1::agent_gateway_server::AgentGatewayServer;
use skoala_proto::v1::fleet_admin_server::FleetAdminServer;
use tokio::net::TcpListener;

use crate::admin_api::Admin;
use crate::backups::Backups;
use crate::context::{Context, Settings};
use crate::data_dir::DataDir;
use crate::edge::EdgeSettings;
use crate::edge::calls::CallLimitsLayer;
use crate::gateway::Gateway;
use crate::http2::Http2Settings;
use crate::metrics::{self, Metrics};
use crate::orchestrator::dispatch::{ControlPlaneRunner, Dispatcher};
use crate::orchestrator::{Orchestrator, Parts};
use crate::pki::FleetCa;
use crate::pki_store::PkiStore;
use crate::sessions::Sessions;
use crate::store::AnyStore;
use crate::tls;
use crate::{clock, control_plane};
use skoala_kubestore::lease::{self, Elector, Leadership};
use skoala_kubestore::secrets::BackupSecrets;
use skoala_kubestore::store::{KubeStore, Options as KubeOptions};
use skoala_store::sqlite::SqliteStore;

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data dir: on `--store sqlite` the one `init` made (CA, server credential, store,
    /// backups); on `--store kube` a cache (relayed charts, helm's home).
    pub data_dir: DataDir,
    /// The one TLS port for agents and operators.
    pub listen: SocketAddr,
    /// Plain-HTTP `/metrics`; `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The control-plane cluster; `None`: `KUBECONFIG`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Where the fleet's state is kept.
    pub store: StoreChoice,
    /// Certificate lifetimes, session timing, message size limit.
    pub settings: Settings,
    /// The helm that upgrades the control plane.
    pub helm: PathBuf,
    /// Bound on one `helm upgrade --wait` of a plan (and on its rollback).
    pub helm_timeout: Duration,
    /// For tests: read "now" from this file (RFC 3339) instead of the system clock.
    pub clock_file: Option<PathBuf>,
    /// The HTTP/2 server's settings ([`Http2Settings::default`] but for benchmark sweeps).
    pub http2: Http2Settings,
    /// What a peer may cost before and after it authenticates ([`crate::edge`]).
    pub edge: EdgeSettings,
}

/// Where `serve` keeps the fleet's state (`--store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `store.db` in the data dir: one replica.
    Sqlite,
    /// Objects in `namespace` of the control-plane cluster; this process serves only while it
    /// holds the leader Lease there, as `pod` (the holder identity's prefix).
    Kube {
        /// The coordinator's namespace.
        namespace: String,
        /// This replica's Pod, when it runs in one: labelled while it leads, so the agents'
        /// Service sends agents to it (design §5.4). Outside a Pod, the host name names it.
        pod: Option<String>,
    },
}

/// A term on the kube store, and what marks this replica's Pod as the leader's.
struct Term {
    leadership: Leadership,
    client: kube::Client,
    namespace: String,
    pod: Option<String>,
}

/// Who this process is on the Lease when not in a Pod.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skoala-coordinator".into())
}

/// How often the summaries of refusal floods are written once their window is over.
const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the coordinator until SIGINT/SIGTERM.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let dir = &opts.data_dir;
    crate::init::recover(dir)?;
    let (pki_home, kube) = match &opts.store {
        StoreChoice::Sqlite => (PkiStore::DataDir(dir.clone()), None),
        StoreChoice::Kube { namespace, pod } => {
            let client = control_plane::connect(opts.kubeconfig.clone()).await?;
            let home = PkiStore::Secret {
                client: client.clone(),
                namespace: namespace.clone(),
            };
            (home, Some((client, namespace, pod)))
        }
    };
    // Every replica loads the CA (a standby is ready to sign the moment it leads); only the
    // leader signs.
    let pki = pki_home.load().await?;
    let ca = FleetCa::from_pem(&pki.ca_pem, &pki.ca_key_pem).context("loading the fleet CA")?;
    let tls_config = tls::server_config(&pki.ca_pem, &pki.server_pem, &pki.server_key_pem)
        .context("building the TLS configuration")?;
    let mut stop = Box::pin(
        skoala_support::shutdown::requested().context("installing SIGTERM/SIGINT handlers")?,
    );
    // Health and metrics answer from the start: a standby is healthy and Ready (design §5.4);
    // the leader's routes replace the standby's once it serves.
    let (routes, current_routes) = tokio::sync::watch::channel(metrics::standby_router());
    if let Some(addr) = opts.metrics_listen {
        let ml = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        println!(
            "skoala-coordinator metrics on http://{}/metrics",
            ml.local_addr()?
        );
        tokio::spawn(async move {
            if let Err(e) = metrics::serve_switching(ml, current_routes).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let (store, backups, term) = match kube {
        None => {
            let store = SqliteStore::open(&dir.store())
                .with_context(|| format!("opening the store {}", dir.store().display()))?;
            (AnyStore::Sqlite(store), Backups::Files(dir.clone()), None)
        }
        Some((client, namespace, pod)) => {
            if let Some(pod) = pod {
                // A restarted ex-leader must not keep receiving agents while it stands by.
                skoala_kubestore::pod::unmark(&client, namespace, pod).await?;
            }
            let name = pod.clone().unwrap_or_else(host_name);
            let elector = Elector::new(
                client.clone(),
                lease::Config::new(namespace.clone(), lease::identity(&name)),
            )?;
            // A standby waits here: it neither serves nor writes until it leads.
            let leadership = tokio::select! {
                held = elector.acquire() => held.with_context(|| {
                    format!("taking the leader Lease {namespace}/{}", lease::LEASE_NAME)
                })?,
                _ = &mut stop => return Ok(()),
            };
            tracing::info!(term = ?leadership.term(), predecessor = ?leadership.predecessor(), "leading");
            let options = KubeOptions {
                namespace: namespace.clone(),
                ..KubeOptions::default()
            };
            let backups = Backups::Secrets(BackupSecrets::new(
                client.clone(),
                namespace.clone(),
                leadership.fence(),
            ));
            let store = KubeStore::open(client.clone(), options, leadership.fence())
                .await
                .with_context(|| format!("loading the fleet from namespace {namespace}"))?;
            let term = Term {
                leadership,
                client,
                namespace: namespace.clone(),
                pod: pod.clone(),
            };
            (AnyStore::Kube(store), backups, Some(term))
        }
    };
    crate::init::record_bootstrap_admin(&store, pki.admin_yaml.as_deref()).await?;

    let sessions = Arc::new(Sessions::default());
    let metrics = Arc::new(Metrics::default());
    let source = control_plane::Source::detect(opts.kubeconfig.clone());
    // The in-process executor gives helm a kubeconfig file: `--kubeconfig`, or in a pod one
    // written for the pod's ServiceAccount (the chart passes none), so an in-cluster
    // coordinator runs plans with exactly its ServiceAccount's rights.
    let runner_kubeconfig = match &source {
        Some(control_plane::Source::Kubeconfig(path)) => Some(path.clone()),
        Some(control_plane::Source::InCluster) => skoala_upgrade::kubeconfig::in_cluster()
            .context("preparing the in-cluster kubeconfig for helm")?,
        None => None,
    };
    if source.is_some() && runner_kubeconfig.is_none() {
        anyhow::bail!(
            "in a pod, but no ServiceAccount token is mounted for the control-plane upgrades"
        );
    }
    let runner = runner_kubeconfig.map(|kubeconfig| ControlPlaneRunner {
        helm: opts.helm.clone(),
        kubeconfig,
        helm_timeout: opts.helm_timeout,
        backups: backups.clone(),
    });
    let control_plane = source.map(control_plane::start);
    let orchestrator = Orchestrator::new(Parts {
        store: store.clone(),
        sessions: sessions.clone(),
        control_plane: control_plane.clone(),
        runner: runner.clone(),
        dispatch: Arc::new(Dispatcher {
            sessions: sessions.clone(),
            runner,
        }),
        data_dir: dir.clone(),
        backups: backups.clone(),
        metrics: metrics.clone(),
        clock: clock::from_flag(opts.clock_file.clone()),
        helm_timeout: opts.helm_timeout,
    });
    let plan_objects = match &store {
        AnyStore::Kube(store) => Some(store.clone()),
        AnyStore::Sqlite(_) => None,
    };
    let ctx = Arc::new(Context {
        plan_objects,
        store,
        ca,
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        settings: opts.settings.clone(),
        control_plane,
        data_dir: dir.clone(),
        backups,
        throttle: Default::default(),
        orchestrator: orchestrator.clone(),
    });
    if let AnyStore::Kube(store) = &ctx.store {
        tokio::spawn(crate::gitops::run(ctx.clone(), store.clone()));
    }
    tokio::spawn(orchestrator.clone().retain(opts.settings.retention));
    tokio::spawn(orchestrator.run());
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFUSAL_SUMMARY_INTERVAL);
            loop {
                tick.tick().await;
                ctx.summarise_refusals().await;
            }
        });
    }

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("skoala-coordinator listening on {local}");
    routes.send_modify(|r| *r = metrics::leader_router(ctx.clone()));
    if let Some(term) = &term
        && let Some(pod) = &term.pod
    {
        let predecessor = term.leadership.predecessor().map(lease::pod_of);
        skoala_kubestore::pod::mark_leader(&term.client, &term.namespace, pod, predecessor)
            .await
            .context("marking this Pod as the leader's, which the agents' Service selects")?;
    }
    tracing::info!(%local, "serving");

    let max = opts.settings.max_message_bytes;
    let gateway = AgentGatewayServer::new(Gateway::new(ctx.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = FleetAdminServer::new(Admin::new(ctx.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let incoming = tls::incoming(listener, tls_config, opts.edge, ctx.clone());
    let server = opts
        .http2
        .server()
        .layer(CallLimitsLayer::new(ctx.clone(), &opts.edge))
        .add_service(gateway)
        .add_service(admin)
        .serve_with_incoming(incoming);

    let deposed = async {
        match &term {
            Some(t) => t.leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => r.context("the gRPC server failed")?,
        lost = deposed => {
            // Deposed means exit (design §5.3): a process that kept serving could act on
            // state a new leader is already changing. The restart stands by.
            sessions.kick_all(&tonic::Status::unavailable("the coordinator lost its leadership"));
            anyhow::bail!("no longer the leader ({lost}); exiting so the restart stands by");
        }
        _ = stop => {
            tracing::info!("shutting down: closing agent sessions");
            sessions.kick_all(&tonic::Status::unavailable("the coordinator is shutting down"));
            // Give the closing statuses a moment to reach the agents.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(t) = &term {
                unmark(t).await;
            }
            release(term.map(|t| t.leadership)).await;
        }
    }
    Ok(())
}

/// Takes the leader label off this process's own Pod on a graceful stop. The Lease it then
/// releases names no holder, so the next leader cannot tell whose label to take off, and the
/// agents' Service would keep this Pod as an endpoint until it is deleted or restarted.
async fn unmark(term: &Term) {
    let Some(pod) = &term.pod else {
        return;
    };
    if let Err(e) = skoala_kubestore::pod::unmark(&term.client, &term.namespace, pod).await {
        tracing::warn!(error = %e, "cannot take the leader label off this Pod; the next leader's Pod is labelled as well");
    }
}

/// Hands the Lease over on a graceful stop, so a standby leads at its next try instead of
/// after the lease duration.
async fn release(leadership: Option<Leadership>) {
    if let Some(l) = leadership
        && let Err(e) = l.release().await
    {
        tracing::warn!(error = %e, "releasing the leader Lease failed; a standby takes over when it expires");
    }
}
