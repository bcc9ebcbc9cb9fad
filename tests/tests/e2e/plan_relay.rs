//! Issue 5's first "done when": one control plane and six working clusters go from 0.19.0 to
//! 0.19.2 with `chartSource: relay` while the plan's repository URL is unreachable for the
//! workers; at the end `skoalactl skew` exits 0 and every release shows the new tags. And: a
//! plan for a version the repository does not have (or a repository that cannot be reached)
//! is refused at apply with a clear message, and nothing is stored.
//!
//! How the repository is made unreachable, and why this way: the plan names a chart
//! repository of its own. `plan apply` is the only moment the coordinator needs it (it pulls
//! `skoala` and `skoala-init` once, into its data dir); right after the apply the test shuts
//! that repository down, and checks that its port refuses connections — from then on *no one*
//! can reach the URL, so every worker upgrade (and the control plane's) can only have come
//! over the relay. This is stricter than hiding the repository from the agents alone, and
//! reliable: putting six emulated clusters and their agents into network namespaces would
//! need an egress proxy per namespace (as `link_netns.rs` does for one) and root, for no
//! stronger proof. A coordinator restart in the middle of the rollout shows that a restarted
//! coordinator serves the relay from its cache, without the repository.

use std::time::{Duration, Instant};

use skoala_e2e::charts::{ChartRepo, HelmHome, start_repo};
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::tools::tool;
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// `pf.plan_yaml` with `chart_source` and the repository at `url`.
fn plan_yaml(
    pf: &PlanFleet,
    name: &str,
    version: &str,
    chart_source: &str,
    url: &str,
    extra: &str,
) -> String {
    pf.plan_yaml(name, version, extra)
        .replace("chartSource: repo", &format!("chartSource: {chart_source}"))
        .replace(&pf.repo.url(), url)
}

/// Shuts `repo` down and waits until its port refuses connections.
async fn shut_down(repo: ChartRepo) -> anyhow::Result<()> {
    let addr = repo.addr;
    drop(repo);
    wait::until(
        "the plan's chart repository to refuse connections",
        Duration::from_secs(30),
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_workers_upgrade_over_the_relay_with_the_repository_unreachable() -> anyhow::Result<()>
{
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 6,
        ..Default::default()
    })
    .await?;
    let plan_repo = start_repo().await?;
    let url = plan_repo.url();
    let yaml = plan_yaml(
        &pf,
        "relay-0-19-2",
        "0.19.2",
        "relay",
        &url,
        "strategy: {canary: 1, maxConcurrency: 3, maxFailures: 0}",
    );
    assert!(
        yaml.contains("chartSource: relay") && yaml.contains(&url),
        "{yaml}"
    );

    let started = Instant::now();
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    println!(
        "relay apply (pulls both charts) took {:?}",
        started.elapsed()
    );
    let requests = plan_repo.requests();
    println!("the plan's repository served {requests} requests, all during the apply");
    // `helm pull --repo` reads index.yaml, then the archive: two requests per chart, so each
    // chart was fetched exactly once (the control plane's `skoala` comes from the same pull).
    assert_eq!(
        requests, 4,
        "the coordinator pulled each chart once at apply"
    );
    let charts = pf.fleet.coordinator.data_dir().join("charts");
    for file in ["skoala-0.19.2.tgz", "skoala-init-0.19.2.tgz"] {
        assert!(
            charts.join(file).is_file(),
            "{file} in {}",
            charts.display()
        );
    }

    // From here on nobody can reach the plan's repository.
    shut_down(plan_repo).await?;
    let home = HelmHome::new()?;
    let from_a_worker = home
        .try_run(
            &tool("helm"),
            None,
            &[
                "show",
                "chart",
                "skoala-init",
                "--repo",
                &url,
                "--version",
                "0.19.2",
            ],
        )
        .await?;
    assert!(
        !from_a_worker.status.success(),
        "the repository must be unreachable during the rollout"
    );

    // A coordinator restart mid-rollout: the relay is served from its data dir's cache.
    wait::until("the canary upgraded", PLAN_TIMEOUT, || async {
        let p = pf.plan("relay-0-19-2").await.ok()?;
        let t = p["targets"].as_array()?;
        let done = t
            .iter()
            .filter(|t| t["target"] != "control-plane" && t["state"] == "succeeded")
            .count();
        (done >= 1).then_some(())
    })
    .await?;
    pf.fleet.coordinator.kill();
    pf.fleet.coordinator.restart().await?;

    let plan = pf
        .wait_phase("relay-0-19-2", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    println!(
        "six-cluster relay plan wall time (control plane + 6 workers, one coordinator restart): {:?}",
        started.elapsed()
    );
    let targets = plan["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 7, "{plan:#}");
    for t in targets {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "each cluster upgraded once: {t:#}");
    }

    // No skew; every release on the new version and tags; helm's records: one upgrade per
    // release, to the relayed chart.
    pf.assert_upgraded_once_to("0.19.2").await?;
    // The workers got the chart over their session.
    for agent in &pf.fleet.agents {
        let log = agent.log();
        assert!(
            log.contains("relayed chart received")
                || log.contains("relayed chart found in the cache"),
            "{}: {log}",
            agent.name()
        );
    }
    Ok(())
}

/// `plan apply` of a plan named `nope`.
async fn apply(
    pf: &PlanFleet,
    source: &str,
    version: &str,
    url: &str,
) -> anyhow::Result<skoala_e2e::fleet::ctl::CtlOutput> {
    pf.apply(&plan_yaml(pf, "nope", version, source, url, ""))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_repository_lacks_is_refused_at_apply_and_nothing_is_stored()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 1,
        ..Default::default()
    })
    .await?;
    let url = pf.repo.url();

    // Relay: the coordinator cannot pull what the repository does not have.
    let started = Instant::now();
    let out = apply(&pf, "relay", "9.9.9", &url).await?;
    println!("refused relay apply took {:?}", started.elapsed());
    assert!(!out.success, "{}", out.stdout);
    for want in [
        "spec.version",
        "skoala-init",
        "9.9.9",
        url.as_str(),
        "not found",
    ] {
        assert!(out.stderr.contains(want), "{want:?} in: {}", out.stderr);
    }

    // Repo: checked at apply too (issue 5: an unknown version is an error at creation).
    let started = Instant::now();
    let out = apply(&pf, "repo", "9.9.9", &url).await?;
    println!("refused repo apply took {:?}", started.elapsed());
    assert!(!out.success, "{}", out.stdout);
    for want in [
        "spec.version",
        "skoala",
        "skoala-init",
        "9.9.9",
        url.as_str(),
    ] {
        assert!(out.stderr.contains(want), "{want:?} in: {}", out.stderr);
    }

    // An unreachable repository: named, with helm's reason.
    let gone = start_repo().await?;
    let gone_url = gone.url();
    shut_down(gone).await?;
    for source in ["relay", "repo"] {
        let out = apply(&pf, source, "0.19.2", &gone_url).await?;
        assert!(!out.success, "{source}: {}", out.stdout);
        for want in [
            "spec.repository.url",
            gone_url.as_str(),
            "0.19.2",
            "connection refused",
        ] {
            assert!(
                out.stderr.contains(want),
                "{source}: {want:?} in: {}",
                out.stderr
            );
        }
    }

    // Nothing was stored: no plan, and no relayed chart of the unknown version.
    let plans = pf.ctl().json(&["plan", "list"]).await?;
    assert_eq!(plans.as_array().map(Vec::len), Some(0), "{plans:#}");
    let get = pf.ctl().run(&["plan", "get", "nope"]).await?;
    assert!(!get.success, "{}", get.stdout);
    let charts = pf.fleet.coordinator.data_dir().join("charts");
    let files: Vec<String> = std::fs::read_dir(&charts)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(files.iter().all(|f| !f.contains("9.9.9")), "{files:?}");

    // The same plan for a version the repository has is accepted.
    let out = apply(&pf, "relay", "0.19.2", &url).await?;
    assert!(out.success, "{}", out.stderr);
    Ok(())
}
