//! `skoala-demo`: the local fleet demo behind `scripts/demo.sh`.
//!
//! Starts, on this machine only: an emulated control-plane cluster and five emulated working
//! clusters, a local chart repository with the test charts, a real coordinator on its embedded
//! SQLite store (with the control plane's kubeconfig), and one real agent per working cluster.
//! Installs `skoala` and `skoala-init` 0.19.0 with the real helm and shows the fleet as an
//! operator sees it. Then applies a plan to 0.19.2 (`chartSource: relay`, an open window, one
//! canary, waves of two): the coordinator pulls each chart once at apply, the chart repository
//! is then shut down, and the agents get `skoala-init` over their sessions — the working
//! clusters never need a route to a repository. Follows the plan live with
//! `skoalactl plan watch`. One working cluster is
//! kept offline during the plan; it joins afterwards on the old version, `skoalactl skew` flags
//! it, and the plan converges it. Ends with the fleet table and a clean skew report.
//!
//! Every child process dies with this process (Ctrl-C included): nothing is left behind.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::fleet::Ctl;
use skoala_e2e::fleet::{Agent, AgentOptions, Coordinator, CoordinatorOptions, prepare_cluster};
use skoala_e2e::tools::{our_bin, tool, workspace_root};
use skoala_e2e::wait;

const WORKERS: usize = 5;
const FROM: &str = "0.19.0";
const TO: &str = "0.19.2";
const PLAN: &str = "skoala-0-19-2";
/// The cluster whose agent joins only after the plan has run.
const LATE: usize = WORKERS - 1;
/// Upper bound for the plan and for convergence on a loaded 2-core machine.
const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// The plan the demo applies: the DESIGN.md example, with a window that is open now (every
/// minute for an hour, in Shanghai time) so the demo does not wait for Saturday.
fn plan_yaml(repo: &skoala_sim::chart_repo::ChartRepo) -> String {
    let repo_url = repo.url();
    let digests = skoala_e2e::charts::digests_yaml(repo, TO);
    format!(
        "apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {{name: {PLAN}}}
spec:
  version: {TO}
  repository: {{name: skoala, url: \"{repo_url}\", digests: {digests}}}
  chartSource: relay
  window: {{schedule: \"* * * * *\", duration: 1h, timeZone: Asia/Shanghai}}
  strategy: {{canary: 1, maxConcurrency: 2, maxFailures: 0, rollbackOnFailure: true}}
  clusters: {{matchLabels: {{demo: \"true\"}}}}
"
    )
}

struct Args {
    keep_running: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut keep_running = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep-running" => keep_running = true,
            "-h" | "--help" => {
                println!(
                    "skoala-demo: a local fleet (1 control plane + {WORKERS} working clusters, emulated) \
                     upgraded from {FROM} to {TO}.\n\n\
                     Usage: scripts/demo.sh [--keep-running]\n\n\
                     --keep-running  leave the fleet up at the end and print the commands to explore it;\n\
                     \x20               Ctrl-C stops everything."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Args { keep_running })
}

/// Prints a step with the time since the demo started.
struct Narrator(Instant);

impl Narrator {
    fn say(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

async fn helm_install(
    home: &HelmHome,
    kubeconfig: &Path,
    release: &str,
    version: &str,
) -> anyhow::Result<()> {
    let chart = format!("skoala/{release}");
    home.run(
        &tool("helm"),
        Some(kubeconfig),
        &[
            "install",
            release,
            &chart,
            "--version",
            version,
            "-n",
            "skoala-system",
            "--create-namespace",
            "--wait",
        ],
    )
    .await
    .map(|_| ())
    .with_context(|| format!("helm install {release} {version}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let n = Narrator(Instant::now());

    n.say("starting a chart repository with the skoala test charts");
    let repo = skoala_sim::chart_repo::serve(
        &workspace_root().join("tests/charts"),
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the chart repository")?;
    let home = HelmHome::new()?;
    home.run(&tool("helm"), None, &["repo", "add", "skoala", &repo.url()])
        .await?;

    n.say(&format!(
        "starting 1 emulated control-plane cluster and {WORKERS} emulated working clusters"
    ));
    let control_plane =
        skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("control-plane")).await?;
    let workers = skoala_sim::start_clusters(WORKERS, "work").await?;

    n.say(&format!("installing skoala {FROM} in the control plane and skoala-init {FROM} in every working cluster"));
    helm_install(&home, control_plane.kubeconfig_path(), "skoala", FROM).await?;
    for w in &workers {
        helm_install(&home, w.kubeconfig_path(), "skoala-init", FROM).await?;
    }

    n.say("starting the coordinator (embedded SQLite store) and one agent per working cluster");
    let coordinator = Coordinator::start_with(CoordinatorOptions {
        metrics: true,
        kubeconfig: Some(control_plane.kubeconfig_path().to_path_buf()),
        helm: Some(tool("helm")),
        ..Default::default()
    })
    .await?;
    let ctl = coordinator.ctl();
    let token = ctl.token(WORKERS as u32, "1h").await?;
    let options = |i: usize, w: &skoala_sim::Cluster| {
        let env = if i.is_multiple_of(2) {
            "prod"
        } else {
            "staging"
        };
        AgentOptions::named(w.name())
            .label("env", env)
            .label("demo", "true")
    };
    let mut agents = Vec::new();
    for (i, w) in workers.iter().enumerate().take(LATE) {
        prepare_cluster(w).await?;
        agents.push(Agent::start(&coordinator, w, Some(&token), options(i, w))?);
    }
    coordinator
        .wait_connected(LATE, Duration::from_secs(120)) // every agent but the late one's
        .await
        .context("waiting for the agents to connect")?;
    let late = &workers[LATE];
    n.say(&format!(
        "{LATE} agents dialled out, registered with the join token, and reported their release \
         ({} stays offline for now):",
        late.name()
    ));
    println!("\n{}", ctl.ok(&["clusters"]).await?);

    n.say(&format!(
        "applying a plan to {TO}: control plane first, one canary, then waves of 2"
    ));
    let plan_file = home.path().join("plan.yaml");
    std::fs::write(&plan_file, plan_yaml(&repo))?;
    println!("\n{}", plan_yaml(&repo));
    ctl.ok(&["plan", "apply", "-f", &plan_file.display().to_string()])
        .await
        .context("skoalactl plan apply")?;
    n.say(&format!(
        "the coordinator pulled skoala and skoala-init {TO} once; stopping the chart repository: \
         the agents get the chart over their sessions"
    ));
    drop(repo);
    watch_plan(&coordinator, &ctl).await?;
    println!("\n{}", ctl.ok(&["plan", "get", PLAN]).await?);

    n.say(&format!(
        "{} comes back online, still on {FROM}",
        late.name()
    ));
    prepare_cluster(late).await?;
    agents.push(Agent::start(
        &coordinator,
        late,
        Some(&token),
        options(LATE, late),
    )?);
    // Its first inventory, not the instant between joining and reporting ("never reported").
    // The plan may converge it within seconds, so a clean report also ends the wait.
    let old_version = format!("version {FROM}");
    let skewed = wait::until(
        "the late cluster to report its old version",
        Duration::from_secs(120),
        || async {
            let out = ctl.run(&["skew"]).await.ok()?;
            if !out.success && out.stdout.contains(late.name()) && out.stdout.contains(&old_version)
            {
                return Some(Some(out.stdout));
            }
            // Already upgraded (a clean report alone could predate its joining).
            let clusters = ctl.clusters().await.ok()?;
            clusters
                .iter()
                .any(|c| c["name"] == late.name() && c["release"]["version"] == TO)
                .then_some(None)
        },
    )
    .await?;
    match skewed {
        Some(report) => {
            n.say("skoalactl skew flags it (exit 1):");
            println!("\n{report}");
        }
        None => n.say("(it was converged before skew could be shown)"),
    }
    n.say("convergence: auto upgrades it in its window, like any cluster that was offline");
    let clean = wait::until("no skew", PLAN_TIMEOUT, || async {
        let out = ctl.run(&["skew"]).await.ok()?;
        out.success.then_some(out.stdout)
    })
    .await
    .context("waiting for the fleet to converge")?;

    n.say("the fleet, one version everywhere:");
    println!("\n{}", ctl.ok(&["clusters"]).await?);
    n.say("skoalactl skew (exit 0):");
    println!("\n{clean}");

    if args.keep_running {
        print_exploration(
            &coordinator.admin_config(),
            control_plane.kubeconfig_path(),
            &workers,
        );
        n.say("the fleet keeps running; press Ctrl-C to stop everything");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        n.say("stopping");
    }
    drop(agents);
    n.say("done");
    Ok(())
}

/// Follows the plan with `skoalactl plan watch`, its output going straight to the terminal,
/// until the plan settles.
async fn watch_plan(coordinator: &Coordinator, ctl: &Ctl) -> anyhow::Result<()> {
    let mut watch = tokio::process::Command::new(our_bin("skoalactl"))
        .arg("--config")
        .arg(coordinator.admin_config())
        .arg("--endpoint")
        .arg(coordinator.endpoint())
        .args(["plan", "watch", PLAN])
        .kill_on_drop(true)
        .spawn()
        .context("starting skoalactl plan watch")?;
    let settled = wait::until("the plan to settle", PLAN_TIMEOUT, || async {
        let plan = ctl.json(&["plan", "get", PLAN]).await.ok()?;
        let phase = plan["phase"].as_str()?.to_string();
        ["succeeded", "degraded", "paused", "failed"]
            .contains(&phase.as_str())
            .then_some(phase)
    })
    .await?;
    // `plan watch` ends by itself when the plan settles; give it a moment to print its last line.
    let _ = tokio::time::timeout(Duration::from_secs(10), watch.wait()).await;
    anyhow::ensure!(
        settled == "succeeded",
        "the plan ended {settled}; see `skoalactl plan get {PLAN}`"
    );
    Ok(())
}

fn print_exploration(admin: &Path, cp_kubeconfig: &Path, workers: &[skoala_sim::Cluster]) {
    let bin = workspace_root().join("target/debug");
    let tools = workspace_root().join(".tools/bin");
    let first: PathBuf = workers
        .first()
        .map(|w| w.kubeconfig_path().to_path_buf())
        .unwrap_or_default();
    println!("Explore the running fleet from another terminal:\n");
    println!("  export PATH={}:{}:$PATH", bin.display(), tools.display());
    println!("  export SKOALA_CONFIG={}", admin.display());
    println!("  skoalactl clusters");
    println!("  skoalactl audit");
    println!(
        "  kubectl --kubeconfig {} get deploy -n skoala-system",
        first.display()
    );
    println!(
        "  helm --kubeconfig {} history skoala-init -n skoala-system",
        first.display()
    );
    println!(
        "  helm --kubeconfig {} status skoala -n skoala-system",
        cp_kubeconfig.display()
    );
    println!();
}
