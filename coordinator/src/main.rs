//! `skoala-coordinator`: `init` creates a fleet's data dir; `serve` runs the coordinator;
//! `migrate` moves a fleet between stores; `crds` prints the fleet's CustomResourceDefinitions.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::edge::EdgeArgs;
use skoala_coordinator::http2::Http2Args;
use skoala_coordinator::pki_store::PkiStore;
use skoala_coordinator::{Retention, Settings};
use skoala_coordinator::{init, server};
use skoala_kubestore::secrets::PKI_SECRET;
use skoala_support::duration;

/// The skoala-fleet coordinator: agents dial in over mutual TLS, operators use skoalactl.
///
/// First run `init` once to create the fleet CA and the operator credential, then `serve`.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value, parsed once at start; boxing would only obscure the flags"
)]
enum Command {
    /// Create the fleet's trust root: fleet CA, server certificate, and admin.yaml for
    /// skoalactl, in a data dir or (`--store kube`) in the Secret skoala-fleet-pki.
    ///
    /// Example: skoala-coordinator init --data-dir /var/lib/skoala --san fleet.example.com
    ///          --endpoint https://fleet.example.com:7443
    ///
    /// With `--store kube` the Secret is created in one request in the coordinator's
    /// namespace, so of two replicas' init containers exactly one creates it; with
    /// `--if-missing` the other does nothing and succeeds. Read the credential with
    /// `show admin-config --store kube`.
    Init {
        #[command(flatten)]
        home: PkiHomeArgs,
        /// Extra DNS name or IP address agents and operators use to reach the coordinator
        /// (repeatable; localhost, 127.0.0.1 and ::1 are always included).
        #[arg(long = "san", value_name = "HOST")]
        sans: Vec<String>,
        /// Endpoint written into admin.yaml [default: https://<first --san or localhost>:7443].
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Replace an existing CA. Every agent certificate it signed stops working.
        #[arg(long, conflicts_with = "if_missing")]
        overwrite_ca: bool,
        /// Do nothing when the data dir (or the namespace, `--store kube`) already holds a CA
        /// (for init containers that run on every pod start).
        #[arg(long)]
        if_missing: bool,
        /// Lifetime of the admin certificate in admin.yaml.
        #[arg(long, value_parser = duration::parse, default_value = "365d")]
        admin_ttl: Duration,
    },
    /// Print a file operators need from the data dir (or the Secret skoala-fleet-pki,
    /// `--store kube`) to stdout: the operator credential for skoalactl, or the fleet CA that
    /// agents are installed with.
    ///
    /// For images without a shell (`cat` is not there):
    ///   kubectl -n skoala-fleet exec deploy/skoala-fleet-coordinator -- \
    ///     skoala-coordinator show admin-config --data-dir=/data > admin.yaml
    /// On the kube store, from anywhere with a kubeconfig that may read the Secret:
    ///   skoala-coordinator show admin-config --store kube --namespace skoala-fleet > admin.yaml
    Show {
        /// What to print.
        #[arg(value_enum)]
        what: Show,
        #[command(flatten)]
        home: PkiHomeArgs,
    },
    /// Print the fleet's CustomResourceDefinitions (UpgradePlan, FleetCluster, FleetLog) as
    /// YAML, for `kubectl apply -f -` where CRDs are managed outside the chart.
    ///
    /// They are for the Kubernetes store (plans as objects on the control-plane cluster's API
    /// server), which is not released yet: nothing acts on these objects today.
    ///
    /// Example: skoala-coordinator crds | kubectl apply --server-side -f -
    Crds,
    /// Move a fleet from one store to the other, without any agent joining again: the CA,
    /// server credential and admin.yaml, values backups, and every record with its ids (tokens
    /// with their uses left, clusters with their certificates, plans, events, audit).
    ///
    /// Stop the coordinator first (`kubectl scale deploy/skoala-fleet-coordinator
    /// --replicas=0`): a SQLite source is locked against writes and a kube one's leader Lease is
    /// taken for the copy, so nothing changes meanwhile. The target must hold no fleet. A plan
    /// with operations in flight is refused: pause it first (or pass --allow-in-flight). Then
    /// start the coordinator on the new store on the same address; agents reconnect with the
    /// certificates they have.
    ///
    /// Example: skoala-coordinator migrate --from sqlite:/data --to kube:skoala-fleet
    ///
    /// And back: skoala-coordinator migrate --from kube:skoala-fleet --to sqlite:/data
    Migrate {
        /// Where the fleet is: sqlite:DATA_DIR or kube:NAMESPACE.
        #[arg(long, value_name = "STORE:WHERE")]
        from: skoala_coordinator::migrate::Place,
        /// Where it goes (holds no fleet yet): sqlite:DATA_DIR or kube:NAMESPACE.
        #[arg(long, value_name = "STORE:WHERE")]
        to: skoala_coordinator::migrate::Place,
        /// Kubeconfig of the control-plane cluster (either end on kube; in-cluster config when
        /// running in a pod).
        #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Migrate a plan whose operations are in flight: the new coordinator sends them
        /// again under the same operation ids.
        #[arg(long)]
        allow_in_flight: bool,
    },
    /// Serve agents and operators on one TLS port until SIGTERM.
    ///
    /// Prints "skoala-coordinator listening on ADDR" once the port is open.
    Serve {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Address of the TLS port for agents and skoalactl.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Serve Prometheus metrics (plaintext HTTP, no authentication) at http://ADDR/metrics.
        /// Off by default; docs/operating.md lists the metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Kubeconfig of the control-plane cluster (in-cluster config when running in a pod).
        #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// This replica's Pod (`--store kube`; the chart sets it from the downward API): while
        /// it leads, the Pod is labelled `fleet.skoala.io/role=leader`, which the agents'
        /// Service selects. Without it the host name names the replica on the Lease and no
        /// Pod is labelled.
        #[arg(long, value_name = "NAME", env = "POD_NAME")]
        pod_name: Option<String>,
        /// Lifetime of agent certificates; agents renew them over their session.
        #[arg(long, value_parser = duration::parse, default_value = "24h")]
        cert_ttl: Duration,
        /// How often to ping each agent.
        #[arg(long, value_parser = duration::parse, default_value = "15s")]
        ping_interval: Duration,
        /// Close a session after this long without any message from its agent.
        #[arg(long, value_parser = duration::parse, default_value = "60s")]
        agent_timeout: Duration,
        /// Largest message accepted from a client, in bytes.
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_message_bytes: usize,
        #[command(flatten)]
        retention: RetentionArgs,
        /// The helm binary that upgrades the control plane's `skoala` release.
        #[arg(long, value_name = "PATH", default_value = "helm")]
        helm: PathBuf,
        /// Bound on each `helm upgrade --wait` (and rollback) a plan runs, in every cluster.
        #[arg(long, value_parser = duration::parse, default_value = "5m")]
        helm_timeout: Duration,
        /// FOR TESTS ONLY: read the current time from this file (an RFC 3339 timestamp,
        /// re-read every second) instead of the system clock, to drive maintenance windows.
        #[arg(long, value_name = "PATH", hide = true)]
        clock_file: Option<PathBuf>,
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        http2: Http2Args,
    },
}

/// Where `init` makes the PKI and `show` reads it.
#[derive(clap::Args)]
struct PkiHomeArgs {
    /// The data dir (`--store sqlite`): the CA, certificates, admin.yaml and the store.
    #[arg(long, value_name = "DIR", required_unless_present = "store")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Kubeconfig of the control-plane cluster (`--store kube`; in-cluster config when
    /// running in a pod).
    #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// Where the fleet is kept: `init`, `show` and `serve` take the same two flags.
#[derive(clap::Args)]
struct StoreArgs {
    /// Where the fleet is kept. `sqlite`: the data dir (`store.db`, the CA and server
    /// credential, values backups), for one replica. `kube`: the coordinator's namespace on
    /// the control-plane cluster: the fleet as objects (`kubectl get fleetclusters`), the CA,
    /// server credential and admin.yaml as the Secret skoala-fleet-pki (`init --store kube`),
    /// values backups as Secrets; the data dir is only a cache. `serve` writes there only
    /// while it holds the `skoala-fleet-leader` Lease; the other replicas wait without serving.
    #[arg(long, value_enum, default_value_t = StoreArg::Sqlite)]
    store: StoreArg,
    /// The coordinator's namespace on the control-plane cluster (`--store kube`).
    #[arg(
        long,
        value_name = "NAME",
        env = "POD_NAMESPACE",
        default_value = "skoala-fleet"
    )]
    namespace: String,
}

impl PkiHomeArgs {
    async fn pki_store(self) -> anyhow::Result<PkiStore> {
        match self.store.store {
            StoreArg::Sqlite => {
                let dir = self
                    .data_dir
                    .context("--data-dir is required unless --store kube")?;
                Ok(PkiStore::DataDir(DataDir::new(dir)))
            }
            StoreArg::Kube => PkiStore::secret(self.kubeconfig, self.store.namespace).await,
        }
    }
}

/// `serve --store`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreArg {
    /// `store.db` in the data dir.
    Sqlite,
    /// Objects on the control-plane cluster's API server.
    Kube,
}

/// What `serve` deletes, and when (docs/operating.md, *Retention*).
#[derive(clap::Args)]
struct RetentionArgs {
    /// Delete audit entries older than this.
    #[arg(long, value_parser = duration::parse, default_value = "90d")]
    retain_audit: Duration,
    /// Delete the events of plans other than the active one older than this.
    #[arg(long, value_parser = duration::parse, default_value = "90d")]
    retain_plan_events: Duration,
    /// Delete certificate records this long after they expired.
    #[arg(long, value_parser = duration::parse, default_value = "7d")]
    retain_certificates: Duration,
    /// Delete admin identities (skoalactl admin) this long after their certificate expired,
    /// revoked or not.
    #[arg(long, value_parser = duration::parse, default_value = "7d")]
    retain_admins: Duration,
    /// Delete relayed charts the active plan does not use, unchanged for this long.
    #[arg(long, value_parser = duration::parse, default_value = "7d")]
    retain_charts: Duration,
    /// Values backups kept per cluster and release (the newest generations; older ones are
    /// deleted: they hold values in plain text).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    keep_backups: u32,
    /// Time between retention sweeps (one also runs at start).
    #[arg(long, value_parser = duration::parse, default_value = "1h")]
    retention_interval: Duration,
}

impl RetentionArgs {
    fn retention(&self) -> Retention {
        Retention {
            audit: self.retain_audit,
            plan_events: self.retain_plan_events,
            certificates: self.retain_certificates,
            admins: self.retain_admins,
            charts: self.retain_charts,
            backups_per_release: self.keep_backups as usize,
            every: self.retention_interval,
        }
    }
}

/// The files `show` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Show {
    /// admin.yaml: endpoint, CA and the operator's client certificate (a secret).
    AdminConfig,
    /// The fleet CA certificate (public): `--set-file coordinator.caBundle=` of the agent chart.
    Ca,
}

/// Bound on tokio's blocking pool (see where the runtime is built).
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // kube and tonic both use rustls; pick the provider once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Errors are printed with their causes, one line, no backtrace: this is what an operator
    // reads at 3 a.m.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skoala-coordinator: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            home,
            sans,
            endpoint,
            overwrite_ca,
            if_missing,
            admin_ttl,
        } => {
            let opts = init::InitOptions {
                sans,
                endpoint,
                overwrite_ca,
                if_missing,
                ca_ttl: Duration::from_secs(10 * 365 * 86400),
                server_ttl: Duration::from_secs(2 * 365 * 86400),
                admin_ttl,
            };
            // One runtime for both: the kube client's worker task lives on the runtime that
            // made it.
            let (home, done) = block_on(async {
                let home = home.pki_store().await?;
                let done = init::run_in(&home, &opts).await?;
                Ok((home, done))
            })?;
            let place = match &home {
                PkiStore::DataDir(dir) => dir.root().display().to_string(),
                PkiStore::Secret { namespace, .. } => format!("namespace {namespace}"),
            };
            match done {
                init::Initialised::AlreadyThere => {
                    println!("{place} already holds a fleet CA; nothing to do")
                }
                init::Initialised::Created(path) => {
                    println!("fleet CA created; operator credential: {}", path.display());
                    println!(
                        "next: skoala-coordinator serve --data-dir ... and skoalactl --config {}",
                        path.display()
                    );
                }
                init::Initialised::CreatedSecret(namespace) => {
                    println!("fleet CA created in Secret {namespace}/{PKI_SECRET}");
                    println!(
                        "next: skoala-coordinator show admin-config --store kube --namespace \
                         {namespace} > admin.yaml, then serve --store kube --namespace {namespace}"
                    );
                }
            }
            Ok(())
        }
        Command::Show { what, home } => {
            let pki = block_on(async { home.pki_store().await?.load().await })?;
            let text = match what {
                Show::AdminConfig => pki
                    .admin_yaml
                    .context("the PKI holds no admin.yaml (it was deleted after init)")?,
                Show::Ca => pki.ca_pem,
            };
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Migrate {
            from,
            to,
            kubeconfig,
            allow_in_flight,
        } => {
            let opts = skoala_coordinator::migrate::MigrateOptions {
                from,
                to,
                kubeconfig,
                allow_in_flight,
            };
            let (from, to) = (opts.from.to_string(), opts.to.to_string());
            let done = block_on(skoala_coordinator::migrate::run(opts))?;
            println!(
                "migrated {from} to {to}: {}; {} values backups",
                done.found, done.backups
            );
            println!("next: start the coordinator on {to} at the same address");
            Ok(())
        }
        Command::Crds => {
            use std::io::Write;
            std::io::stdout().write_all(skoala_kubestore::crd::crds_yaml().as_bytes())?;
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            metrics_listen,
            kubeconfig,
            store,
            pod_name,
            cert_ttl,
            ping_interval,
            agent_timeout,
            max_message_bytes,
            retention,
            helm,
            helm_timeout,
            clock_file,
            edge,
            http2,
        } => {
            raise_open_files_limit();
            if !skoala_coordinator::malloc::limit_arenas() {
                tracing::debug!("malloc arenas not limited (not glibc)");
            }
            // SQLite calls run on the blocking pool but take turns on one connection, so
            // more threads than a few only wait: tokio's default (512) let a burst of 1,000
            // registrations start hundreds of threads, each with a stack and malloc state
            // that outlived the burst (BENCHMARKS.md, *Memory and the allocator*).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(MAX_BLOCKING_THREADS)
                .build()?;
            rt.block_on(server::run(server::ServeOptions {
                data_dir: DataDir::new(data_dir),
                listen,
                metrics_listen,
                kubeconfig,
                store: match store.store {
                    StoreArg::Sqlite => server::StoreChoice::Sqlite,
                    StoreArg::Kube => server::StoreChoice::Kube {
                        namespace: store.namespace,
                        pod: pod_name,
                    },
                },
                settings: Settings {
                    cert_ttl,
                    ping_interval,
                    agent_timeout,
                    max_message_bytes,
                    retention: retention.retention(),
                },
                helm,
                helm_timeout,
                clock_file,
                http2: http2.settings(),
                edge: edge.settings(),
            }))
        }
    }
}

/// Runs one future of `init` or `show` (a kube request at most) on a small runtime.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Every connected agent holds a socket, so the soft open-files limit (often 1,024) would cap
/// the fleet far below its target; raise it to the hard one. Best effort: the coordinator
/// still serves (fewer agents) if it cannot.
fn raise_open_files_limit() {
    match skoala_support::rlimit::raise_open_files() {
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}
