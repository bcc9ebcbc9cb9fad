//! `skoala-agent`: command-line flags (each also from the environment, so the install chart can
//! feed the token from a Secret) → [`skoala_agent::run`].

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use skoala_agent::AgentConfig;
use skoala_agent::identity_store::DEFAULT_SECRET_NAME;
use skoala_agent::proxy::ProxyConfig;
use skoala_agent::transport::CoordinatorAddr;
use skoala_support::{duration, names};
use skoala_upgrade::inventory::TrackedRelease;
use tokio_util::sync::CancellationToken;

/// The skoala-fleet agent: joins this cluster to the fleet and keeps it connected.
///
/// Dials out to the coordinator (through HTTPS_PROXY unless NO_PROXY exempts it), registers once
/// with a join token, keeps its key and certificate in a Secret in its own namespace, and reports
/// the cluster's skoala-init Helm release.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The coordinator's address, e.g. https://fleet.example.com:7443.
    #[arg(long, env = "SKOALA_COORDINATOR")]
    coordinator: String,

    /// PEM file with the fleet CA that the coordinator's certificate must chain to.
    #[arg(long, env = "SKOALA_CA_FILE")]
    ca_file: PathBuf,

    /// Join token from `skoalactl token create`. Needed only until the agent has registered.
    #[arg(long, env = "SKOALA_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Kubeconfig of this cluster [default: $KUBECONFIG, then the in-cluster service account].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// Human name of this cluster [default: the kubeconfig's current cluster name].
    /// A DNS-1123 subdomain (lower case letters, digits, '-' and '.'), unique in the fleet.
    /// Taken when the cluster joins; later changes are only proposed to the operator
    /// (`skoalactl cluster rename`).
    #[arg(long, env = "SKOALA_CLUSTER_NAME", value_parser = parse_cluster_name)]
    cluster_name: Option<String>,

    /// A label for this cluster, k=v (repeatable); plans select clusters by labels.
    /// Taken when the cluster joins; later changes are only proposed to the operator
    /// (`skoalactl cluster label`).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,

    /// The agent's own namespace, where its identity Secret lives.
    #[arg(long, env = "SKOALA_NAMESPACE", default_value = "skoala-system")]
    namespace: String,

    /// Name of the identity Secret.
    #[arg(long, env = "SKOALA_IDENTITY_SECRET", default_value = DEFAULT_SECRET_NAME)]
    identity_secret: String,

    /// The Secret in --namespace holding the join token (the chart passes its own). Deleted
    /// once the identity is stored, so the spent token does not stay in the cluster; a refusal
    /// to delete it is logged, not fatal.
    #[arg(long, env = "SKOALA_TOKEN_SECRET")]
    token_secret: Option<String>,

    /// Interval between heartbeats, e.g. 10s, 1m.
    #[arg(long, env = "SKOALA_HEARTBEAT", default_value = "10s", value_parser = duration::parse)]
    heartbeat: Duration,

    /// The Helm release this agent reports.
    #[arg(long, default_value = "skoala-init")]
    release: String,

    /// The namespace of that release.
    #[arg(long, default_value = "skoala-system")]
    release_namespace: String,

    /// The helm binary that runs every upgrade, rollback and preflight (helm 3 or 4); its
    /// version is reported to the coordinator.
    #[arg(long, env = "SKOALA_HELM", default_value = "helm")]
    helm: PathBuf,

    /// Where charts relayed by the coordinator are cached, by sha256 [default: $TMPDIR/skoala-agent-charts].
    #[arg(long, env = "SKOALA_CHART_CACHE", value_name = "DIR")]
    chart_cache: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9091). Off by default:
    /// plaintext and unauthenticated, so bind it to the pod network or loopback only.
    #[arg(long, env = "SKOALA_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    max_backoff: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => {
            names::label(k, v).map_err(|e| e.to_string())?;
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?} is not k=v")),
    }
}

/// The coordinator refuses any other name; saying so here is quicker than a refused
/// registration.
fn parse_cluster_name(s: &str) -> Result<String, String> {
    names::cluster_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // kube and tonic both use rustls: pick the crypto provider once, explicitly, so a second
    // provider compiled into the workspace can never make TLS setup ambiguous at runtime.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: the agent is idle nearly always, and memory at rest matters on thousands of
    // clusters.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skoala-agent: error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skoala-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(args: Args) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(&args.ca_file)
        .with_context(|| format!("read --ca-file {}", args.ca_file.display()))?;
    let proxy = ProxyConfig::from_env().context("proxy settings")?;
    if let Some(p) = &proxy.proxy {
        tracing::info!(proxy = %p, "using an HTTP CONNECT proxy for the coordinator unless NO_PROXY exempts it");
    }
    let mut release = TrackedRelease::skoala_init();
    release.release = args.release;
    release.namespace = args.release_namespace;
    let config = AgentConfig {
        coordinator: CoordinatorAddr {
            url: args.coordinator,
            ca_pem,
            proxy,
            local_addr: None,
            http2: Default::default(),
        },
        token: args.token,
        kubeconfig: args.kubeconfig,
        cluster_name: args.cluster_name,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        namespace: args.namespace,
        secret_name: args.identity_secret,
        token_secret: args.token_secret,
        heartbeat: args.heartbeat,
        tracked: vec![release],
        helm: Some(args.helm),
        chart_cache: args.chart_cache,
        min_backoff: Duration::from_millis(200),
        max_backoff: args.max_backoff,
        metrics_listen: args.metrics_listen,
        metrics: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let stop =
        skoala_support::shutdown::requested().context("installing SIGTERM/SIGINT handlers")?;
    tokio::spawn(async move {
        stop.await;
        on_signal.cancel();
    });
    skoala_agent::run(config, shutdown).await?;
    Ok(())
}
