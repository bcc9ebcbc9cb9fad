//! `skoala-upgrade`: run one upgrade operation with the executor, from the command line.
//!
//! The same pipeline the agent and the coordinator run, for an operator at a terminal (or a
//! test that needs a process to kill). Progress goes to stdout, one line per step; the exit
//! code is 0 only when the release ends at the target version, verified.
//!
//! ```text
//! skoala-upgrade --kubeconfig ~/.kube/config --operation-id night-1 \
//!     --release skoala-init --version 0.19.2 \
//!     --repo-url https://release.daocloud.io/chartrepo/skoala
//! ```
//!
//! `--preflight` runs the checks only (nothing is written); `--rollback-to REV` (0: the previous
//! deployed revision) returns the release to an earlier revision as an operation of its own
//! (backup first, then `helm rollback --wait`, then verify) and needs no chart or version.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use skoala_upgrade::{
    ChartSource, CrdPolicy, Executor, Helm, Operation, Outcome, Phase, ReleaseSpec,
};

#[derive(Parser, Debug)]
#[command(
    // `--version` is the target chart version, as in helm.
    disable_version_flag = true,
    about = "Upgrade one skoala Helm release: backup, chart, CRDs, helm upgrade, verify, rollback on failure (or only check it: --preflight; or roll it back: --rollback-to)",
    long_about = None
)]
struct Args {
    /// kubeconfig of the cluster (used by helm and by our own API calls).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The helm binary (3.x or 4.x).
    #[arg(long, default_value = "helm")]
    helm: PathBuf,
    /// Operation id: re-running the same id is safe (a finished operation is not redone; an
    /// interrupted one is recovered and retried).
    #[arg(long)]
    operation_id: String,
    /// Release: `skoala-init` or `skoala` get their documented image-tag keys and Jobs.
    #[arg(long, default_value = "skoala-init")]
    release: String,
    /// Release namespace.
    #[arg(long, default_value = "skoala-system")]
    namespace: String,
    /// Chart name (default: the release name).
    #[arg(long)]
    chart: Option<String>,
    /// Target chart version (exact).
    #[arg(long, required_unless_present = "rollback_to")]
    version: Option<String>,
    /// Chart repository URL (`helm repo add`).
    #[arg(
        long,
        conflicts_with = "chart_archive",
        required_unless_present_any = ["chart_archive", "rollback_to"]
    )]
    repo_url: Option<String>,
    /// Local repository name.
    #[arg(long, default_value = "skoala")]
    repo_name: String,
    /// A packaged chart (.tgz) instead of a repository; needs --chart-sha256.
    #[arg(long, requires = "chart_sha256")]
    chart_archive: Option<PathBuf>,
    /// Expected sha256 of --chart-archive.
    #[arg(long)]
    chart_sha256: Option<String>,
    /// Value keys holding image tags (repeatable); default: the release's documented keys.
    #[arg(long = "tag-key")]
    tag_keys: Vec<String>,
    /// The image tag to set (default: v<version>).
    #[arg(long)]
    image_tag: Option<String>,
    /// When to apply the chart's CRDs.
    #[arg(long, value_enum, default_value_t = Crds::Before)]
    crds: Crds,
    /// Jobs to delete before the upgrade (repeatable); default: the release's documented ones.
    #[arg(long = "delete-job")]
    delete_jobs: Vec<String>,
    /// Bound on helm's wait, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Only check (preflight and chart steps); change nothing. Exit 0 when the upgrade could run.
    #[arg(long, conflicts_with = "rollback_to")]
    preflight: bool,
    /// Roll the release back to this revision instead of upgrading (0: the previous deployed one).
    #[arg(long, value_name = "REV")]
    rollback_to: Option<i32>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Crds {
    Before,
    After,
    Skip,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();

    let source = match (&args.repo_url, &args.chart_archive) {
        (Some(url), _) => ChartSource::Repository {
            name: args.repo_name.clone(),
            url: url.clone(),
        },
        (None, Some(path)) => ChartSource::Archive {
            path: path.clone(),
            sha256: args.chart_sha256.clone().unwrap_or_default(),
        },
        // A rollback needs no chart; the spec's source is not used.
        (None, None) if args.rollback_to.is_some() => ChartSource::Repository {
            name: args.repo_name.clone(),
            url: "http://unused.invalid".into(),
        },
        (None, None) => anyhow::bail!("give --repo-url or --chart-archive"),
    };
    let version = args.version.clone().unwrap_or_default();
    let mut spec = match args.release.as_str() {
        "skoala-init" if args.namespace == "skoala-system" => {
            ReleaseSpec::skoala_init(source, &version)
        }
        "skoala" if args.namespace == "skoala-system" => ReleaseSpec::skoala(source, &version),
        _ => ReleaseSpec::new(&args.release, &args.namespace, source, &version),
    };
    if let Some(chart) = &args.chart {
        spec.chart = chart.clone();
    }
    if !args.tag_keys.is_empty() {
        spec.image_tag_keys = args.tag_keys.clone();
    }
    if !args.delete_jobs.is_empty() {
        spec.delete_jobs = args.delete_jobs.clone();
    }
    spec.image_tag = args.image_tag.clone();
    spec.crd_policy = match args.crds {
        Crds::Before => CrdPolicy::Before,
        Crds::After => CrdPolicy::After,
        Crds::Skip => CrdPolicy::Skip,
    };
    spec.timeout = Duration::from_secs(args.timeout_secs);

    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading the kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let helm = Helm::detect(&args.helm, &args.kubeconfig).await?;
    let executor = Executor::new(client, helm);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<skoala_upgrade::ProgressEvent>(64);
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match e.phase {
                Phase::Started => println!("{:<9} started", e.step.as_str()),
                Phase::Finished => println!(
                    "{:<9} {:?} in {:.3}s{}{}",
                    e.step.as_str(),
                    e.outcome.unwrap_or(skoala_upgrade::StepOutcome::Skipped),
                    e.duration.unwrap_or_default().as_secs_f64(),
                    if e.message.is_empty() { "" } else { ": " },
                    e.message
                ),
            }
        }
    });
    let operation = Operation::new(&args.operation_id);
    let report = match args.rollback_to {
        Some(rev) => {
            executor
                .rollback(&operation, &spec, (rev > 0).then_some(rev), tx)
                .await?
        }
        None if args.preflight => executor.preflight(&operation, &spec, tx).await?,
        None => executor.run(&operation, &spec, tx).await?,
    };
    let _ = printer.await;
    println!(
        "outcome: {} ({} {} -> {})",
        report.outcome.as_str(),
        report.release,
        report.version_before.as_deref().unwrap_or("?"),
        report.version_after.as_deref().unwrap_or("?")
    );
    if report.outcome != Outcome::Succeeded {
        println!("failed step: {:?}", report.failed_step);
        println!("message: {}", report.message);
        if let Some(m) = &report.rollback_message {
            println!("rollback: {m}");
        }
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn a_rollback_needs_no_version_or_chart() {
        use clap::Parser as _;
        let base = [
            "skoala-upgrade",
            "--kubeconfig",
            "k",
            "--operation-id",
            "op",
        ];
        let rb = super::Args::try_parse_from(base.iter().chain(&["--rollback-to", "0"]))
            .expect("rollback without version or repository");
        assert_eq!(rb.rollback_to, Some(0));
        assert!(
            super::Args::try_parse_from(base).is_err(),
            "an upgrade needs --version"
        );
        let both = base.iter().chain(&["--rollback-to", "2", "--preflight"]);
        assert!(super::Args::try_parse_from(both).is_err());
    }
}
