//! `skoalactl`: the operator's command line for skoala-fleet. It talks only to the coordinator's
//! admin API, over mutual TLS with the admin certificate from `skoala-coordinator init`.

mod audit;
mod clusters;
mod connect;
mod output;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use output::Format;
use skoala_coordinator::duration;

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
    /// Show the audit log: registrations, refusals, revocations, certificate renewals.
    Audit {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Only events with an id greater than this.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
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
enum ClusterCommand {
    /// Revoke a cluster: its live session is closed and its agent can never connect or
    /// register again.
    Revoke {
        /// Cluster name, or cluster id when names are ambiguous.
        cluster: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skoalactl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(config) = cli.config else {
        anyhow::bail!(
            "no admin credential: pass --config DATA_DIR/admin.yaml or set SKOALA_CONFIG"
        );
    };
    let mut admin = connect::connect(&config, cli.endpoint.as_deref()).await?;
    match cli.command {
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
        Command::Audit { output, after } => audit::list(&mut admin, after, output).await,
    }
}
