//! `skoalactl`: the operator's command line for skoala-fleet. It talks only to the coordinator's
//! admin API, over mutual TLS with the admin certificate from `skoala-coordinator init`.

mod admins;
mod audit;
mod clusters;
mod connect;
mod output;
mod plan_check;
mod plan_doc;
mod plan_watch;
mod plans;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use output::Format;
use skoala_support::duration;

/// Operate a skoala-fleet: join tokens, clusters, audit log.
///
/// Every command reads the admin credential written by `skoala-coordinator init`
/// (DATA_DIR/admin.yaml): the coordinator's endpoint, the fleet CA and the admin certificate.
///
/// Joining a cluster:
///   TOKEN=$(skoalactl token create --ttl 1h --uses 1 --description "prod-eu-1")
///   skoala-agent --coordinator https://fleet.example.com:7443 --ca-file ca.pem --token "$TOKEN"
///   skoalactl clusters
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Admin credential (admin.yaml from `skoala-coordinator init`).
    #[arg(long, global = true, env = "SKOALA_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override the endpoint in the config, e.g. https://127.0.0.1:7443.
    #[arg(long, global = true, env = "SKOALA_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list and revoke join tokens (what a new agent registers with).
    #[command(subcommand)]
    Token(TokenCommand),
    /// List the fleet's clusters: identity, connection, versions, the engine release.
    ///
    /// The id is the UID of the cluster's kube-system namespace. RELEASE is skoala-init on
    /// working clusters and skoala on the control plane.
    Clusters {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Act on one cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Admin identities: one per operator, with an expiry, revoked by name.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show the audit log: registrations, refusals, revocations, certificate renewals.
    Audit {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Only events with an id greater than this.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Fleet upgrade plans: create, apply, watch, approve, pause, resume, abort, roll back.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// List every cluster whose skoala-init differs from the control plane's skoala (or is
    /// failed, pending, or carries the wrong image tags). Exits 1 when there is any skew.
    Skew {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show the plan event log: plan transitions, step progress, results.
    Events {
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Only this plan's events.
        #[arg(long, default_value = "")]
        plan: String,
        /// json: one object per line.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Print a shell completion script: skoalactl completion bash > /etc/bash_completion.d/skoalactl
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Apply an UpgradePlan document (YAML). One plan is active at a time.
    Apply {
        /// The document; `-` reads stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Apply although the fleet is skewed and the plan targets another version.
        #[arg(long)]
        force: bool,
    },
    /// Print an UpgradePlan document built from flags (validated), or apply it with --apply.
    ///
    /// Example: skoalactl plan create skoala-0-19-2 --version 0.19.2
    ///   --window 'schedule=0 2 * * SAT,duration=4h,timeZone=Asia/Shanghai'
    ///   --canary 1 --max-concurrency 10% --max-failures 2
    #[command(verbatim_doc_comment)]
    Create {
        #[command(flatten)]
        args: plan_doc::CreateArgs,
        /// Apply the document instead of printing it.
        #[arg(long)]
        apply: bool,
        /// With --apply: apply although the fleet is skewed.
        #[arg(long)]
        force: bool,
        /// Output of the document (yaml or json).
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// List plans: phase, progress, whether active.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show a plan: phase, reason, and every cluster's state and failure message.
    Get {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Run the executor's preflight on every cluster a plan selects and on the control plane.
    ///
    /// NAME is a plan the coordinator stores (applied: waiting, running or finished); with
    /// -f FILE, a plan document that is not applied yet is checked instead (nothing is stored).
    /// Checks are read-only (release deployed, helm, permissions, the chart version fetched,
    /// its CRDs dry-run) and never disturb a running plan; clusters the running plan is
    /// upgrading right now are listed as upgrading, not asked.
    ///
    /// Prints a table: cluster, role, reachable, current version, result, message. Clusters
    /// with no agent session are listed as offline and not waited for. Exit 0 when every
    /// reachable cluster passed (offline clusters do not count), 1 otherwise.
    ///
    /// Examples:
    ///   skoalactl plan check skoala-0-19-2
    ///   skoalactl plan create next --version 0.19.2 | skoalactl plan check -f -
    #[command(verbatim_doc_comment)]
    Check {
        /// A stored plan (see `plan list`).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        name: Option<String>,
        /// A plan document to check without applying it; `-` reads stdin.
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// How long to wait for the clusters' answers, e.g. 30s, 5m (at most 30m). A
        /// connected cluster that has not answered by then fails the check.
        #[arg(long, value_parser = duration::parse, default_value = "60s")]
        timeout: Duration,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Follow a plan's progress until it settles.
    ///
    /// On a terminal: a bar per wave (done/total, failed, running) and a line per cluster
    /// with its latest step, redrawn in place. Otherwise (a pipe, a file, CI): one plain line
    /// per event, as `events --follow --plan NAME` prints them.
    Watch {
        /// The plan (see `plan list`).
        name: String,
    },
    /// Approve the next stage (requireApproval).
    Approve(VerbArgs),
    /// Stop starting upgrades; running ones finish.
    Pause(VerbArgs),
    /// Resume a paused plan; failures so far are acknowledged.
    Resume(VerbArgs),
    /// Stop the plan for good; running upgrades finish.
    Abort(VerbArgs),
    /// Return every upgraded cluster to its previous revision: workers first, then the
    /// control plane.
    Rollback(VerbArgs),
}

/// What every verb on a plan takes.
#[derive(clap::Args)]
struct VerbArgs {
    /// The plan (see `plan list`).
    name: String,
    /// On the kube store the verb is also written as the plan object's `fleet.skoala.io/*`
    /// annotation, so the object and the plan agree. When that annotation is managed by
    /// someone else (a GitOps tool syncing it from git, `kubectl annotate`), the verb is
    /// refused, naming the manager: change it there. --force takes the annotation over;
    /// the GitOps tool may set it back at its next sync, and the plan follows git again.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token; prints only the token (details on stderr). Shown once.
    Create {
        /// How long the token can be used, e.g. 30m, 1h, 7d.
        #[arg(long, value_parser = duration::parse, default_value = "1h")]
        ttl: Duration,
        /// How many agents may register with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Free text shown by `token list` (which cluster it is for, who asked).
        #[arg(long, default_value = "")]
        description: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// List join tokens (ids and state; never the secrets).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke a join token by id, so no further agent can register with it.
    Revoke {
        /// The token id (the part before the dot).
        id: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an operator's admin identity; writes their admin.yaml (0600), a secret to hand
    /// to them only.
    Create {
        /// The operator's name (a DNS-1123 label); audit lines name them.
        name: String,
        /// How long the certificate is valid, e.g. 30d, 90d (at most 366d).
        #[arg(long, value_parser = duration::parse, default_value = "90d")]
        expires: Duration,
        /// Where to write the credential [default: NAME.admin.yaml].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List admin identities (names, serials, expiry; never keys).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke every certificate of an operator; refused from their next call.
    Revoke {
        /// The operator's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Revoke a cluster: its live session is closed and its agent can never connect or
    /// register again.
    Revoke {
        /// Cluster name, or cluster id when names are ambiguous.
        cluster: String,
    },
    /// Let a cluster that lost its key (its agent's identity Secret) register again: its
    /// certificates are revoked at once, and its agent, restarted with a join token, joins
    /// under the same identity. Without this, registering a cluster whose certificate is
    /// still valid needs that certificate.
    Rejoin {
        /// Cluster name, or cluster id when names are ambiguous.
        cluster: String,
    },
    /// Set or remove a cluster's labels (what plans select by). Labels are the operator's:
    /// an agent's --label flags count only when it joins; later ones are shown as PROPOSED
    /// in `skoalactl clusters` until applied here.
    ///
    ///   skoalactl cluster label prod-eu-1 ring=canary tier-
    #[command(verbatim_doc_comment)]
    Label {
        /// Cluster name, or cluster id when names are ambiguous.
        cluster: String,
        /// KEY=VALUE sets a label, KEY- removes one.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Rename a cluster (names are unique; plans order and address clusters by name). Like
    /// labels, an agent's --cluster-name counts only when it joins.
    Rename {
        /// Cluster name, or cluster id when names are ambiguous.
        cluster: String,
        /// The new name (a DNS-1123 subdomain).
        new_name: String,
    },
}

#[tokio::main(flavor = "current_thread")]
#[allow(
    unsafe_code,
    reason = "libc has the only signal(2), for SIGPIPE's default action"
)]
async fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` loses its reader early: end quietly on SIGPIPE,
    // as Unix tools do, instead of panicking inside println! on EPIPE.
    // SAFETY: signal(2) only sets the disposition of SIGPIPE, for which nothing of ours
    // installs a handler.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skoalactl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that need no coordinator.
    match &cli.command {
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "skoalactl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Plan(PlanCommand::Create {
            args,
            apply: false,
            output,
            ..
        }) => {
            let doc = plan_doc::build(args)?;
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
                _ => print!("{}", doc.to_yaml()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let Some(config) = cli.config else {
        anyhow::bail!(
            "no admin credential: pass --config DATA_DIR/admin.yaml or set SKOALA_CONFIG"
        );
    };
    let mut admin = connect::connect(&config, cli.endpoint.as_deref()).await?;
    let done = match cli.command {
        Command::Token(TokenCommand::Create {
            ttl,
            uses,
            description,
            output,
        }) => tokens::create(&mut admin, ttl, uses, description, output).await,
        Command::Token(TokenCommand::List { output }) => tokens::list(&mut admin, output).await,
        Command::Token(TokenCommand::Revoke { id }) => tokens::revoke(&mut admin, id).await,
        Command::Clusters { output } => clusters::list(&mut admin, output).await,
        Command::Cluster(ClusterCommand::Revoke { cluster }) => {
            clusters::revoke(&mut admin, cluster).await
        }
        Command::Admin(AdminCommand::Create { name, expires, out }) => {
            admins::create(&mut admin, name, expires, out).await
        }
        Command::Admin(AdminCommand::List { output }) => admins::list(&mut admin, output).await,
        Command::Admin(AdminCommand::Revoke { name }) => admins::revoke(&mut admin, name).await,
        Command::Cluster(ClusterCommand::Rejoin { cluster }) => {
            clusters::rejoin(&mut admin, cluster).await
        }
        Command::Cluster(ClusterCommand::Label { cluster, changes }) => {
            clusters::label(&mut admin, cluster, changes).await
        }
        Command::Cluster(ClusterCommand::Rename { cluster, new_name }) => {
            clusters::rename(&mut admin, cluster, new_name).await
        }
        Command::Audit { output, after } => audit::list(&mut admin, after, output).await,
        Command::Skew { output } => return plans::skew(&mut admin, output).await,
        Command::Events {
            follow,
            plan,
            output,
        } => plans::events(&mut admin, plan, follow, false, output).await,
        Command::Plan(PlanCommand::Check {
            name,
            file,
            timeout,
            output,
        }) => {
            let subject = match (name, file) {
                (_, Some(file)) => plan_check::Subject::Document(read_document(&file)?),
                (Some(name), None) => plan_check::Subject::Name(name),
                (None, None) => anyhow::bail!("give a plan NAME or -f FILE"),
            };
            return plan_check::check(&mut admin, subject, timeout, output).await;
        }
        Command::Plan(cmd) => plan(&mut admin, cmd).await,
        Command::Completion { .. } => Ok(()),
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// A plan document from FILE, or stdin for `-`.
fn read_document(file: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the plan from stdin")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

async fn plan(admin: &mut connect::Admin, cmd: PlanCommand) -> anyhow::Result<()> {
    match cmd {
        PlanCommand::Apply { file, force } => {
            plans::apply(admin, read_document(&file)?, force).await
        }
        PlanCommand::Create { args, force, .. } => {
            let doc = plan_doc::build(&args)?;
            plans::apply(admin, doc.to_yaml(), force).await
        }
        PlanCommand::List { output } => plans::list(admin, output).await,
        PlanCommand::Get { name, output } => plans::get(admin, name, output).await,
        PlanCommand::Watch { name } => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                plan_watch::watch(admin, name).await
            } else {
                plans::events(admin, name, true, true, Format::Table).await
            }
        }
        // Answered in `run` (it has its own exit code).
        PlanCommand::Check { .. } => Ok(()),
        PlanCommand::Approve(a) => plans::verb(admin, "approve", a.name, a.force).await,
        PlanCommand::Pause(a) => plans::verb(admin, "pause", a.name, a.force).await,
        PlanCommand::Resume(a) => plans::verb(admin, "resume", a.name, a.force).await,
        PlanCommand::Abort(a) => plans::verb(admin, "abort", a.name, a.force).await,
        PlanCommand::Rollback(a) => plans::verb(admin, "rollback", a.name, a.force).await,
    }
}
