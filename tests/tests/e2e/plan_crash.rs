//! SIGKILL the coordinator in the middle of a plan and start it again: the plan completes from
//! its persisted rollout, and `helm history` proves every release was upgraded exactly once
//! (a re-sent task is recognised by its operation id, never run twice). On the kube store, the
//! plan is finished by the standby replica instead, and a start is written beside the result
//! whose slot it takes, carrying it, so that no crash between the two shows more running.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use skoala_e2e::fleet::Coordinator;
use skoala_e2e::fleet::plans::{KUBE_STORE_NAMESPACE, PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::sim::kubectl;
use skoala_e2e::{real, wait};

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits for `plan` to succeed, then checks that every target took one attempt and that helm's
/// history of each release shows the install and exactly one upgrade.
async fn succeeds_upgrading_each_release_once(pf: &PlanFleet, plan: &str) -> anyhow::Result<()> {
    let plan = pf.wait_phase(plan, &["succeeded"], PLAN_TIMEOUT).await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    for name in ["control-plane", "work-1", "work-2", "work-3", "work-4"] {
        let h = pf.history(name).await?;
        assert_eq!(h.len(), 2, "{name}: install + exactly one upgrade: {h:#?}");
        assert_eq!(h[1]["status"], "deployed", "{name}: {h:#?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_finishes_the_plan_upgrading_each_release_once() -> anyhow::Result<()>
{
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 4,
        ..Default::default()
    })
    .await?;
    // One at a time, so the kill lands with work done, work running and work waiting.
    let yaml = pf.plan_yaml(
        "crash",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    wait::until(
        "a worker upgraded and another sent",
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan("crash").await.ok()?;
            let t = p["targets"].as_array()?;
            let done = t.iter().filter(|t| t["state"] == "succeeded").count();
            let running = t.iter().filter(|t| t["state"] == "running").count();
            (done >= 2 && running >= 1).then_some(())
        },
    )
    .await?;
    pf.fleet.coordinator.kill();
    pf.fleet.coordinator.restart().await?;
    assert_eq!(pf.fleet.coordinator.starts(), 2);

    succeeds_upgrading_each_release_once(&pf, "crash").await?;
    let skew = pf.ctl().run(&["skew"]).await?;
    assert!(skew.success, "{}", skew.stdout);
    Ok(())
}

/// The same on the kube store with two replicas: the leader is SIGKILLed mid-rollout, the
/// standby (started beforehand, waiting for the Lease) leads, loads the rollout from the API
/// server and finishes the plan; every release is upgraded exactly once. The time from the kill
/// to the plan moving again is printed (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kube_store_the_standby_finishes_a_killed_leaders_plan_upgrading_each_release_once()
-> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 4,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let standby_opts = pf.fleet.coordinator.options().clone();
    let mut standby = Coordinator::standby_of(&pf.fleet.coordinator, standby_opts).await?;
    let yaml = pf.plan_yaml(
        "failover",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let progress = |p: &serde_json::Value| -> Option<(usize, usize)> {
        let t = p["targets"].as_array()?;
        let state = |s: &str| t.iter().filter(|t| t["state"] == s).count();
        Some((state("succeeded"), state("running")))
    };
    let before = wait::until(
        "a worker upgraded and another sent",
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan("failover").await.ok()?;
            progress(&p).filter(|(done, running)| *done >= 2 && *running >= 1)
        },
    )
    .await?;
    assert!(
        standby.log().contains("waiting to lead") && !standby.log().contains("leading"),
        "the standby waits while the leader lives:\n{}",
        standby.log()
    );

    pf.fleet.coordinator.kill();
    let killed = Instant::now();
    standby.wait_serving(PLAN_TIMEOUT).await?;
    let serving = killed.elapsed();
    // From here on, skoalactl and the agents reach the new leader (same address).
    let old = std::mem::replace(&mut pf.fleet.coordinator, standby);
    wait::until("the plan to move again", PLAN_TIMEOUT, || async {
        let p = pf.plan("failover").await.ok()?;
        progress(&p).filter(|(done, _)| *done > before.0)
    })
    .await?;
    let moving = killed.elapsed();
    eprintln!(
        "failover mid-rollout: the standby served {serving:?} after the kill, the plan moved \
         again {moving:?} after it"
    );

    succeeds_upgrading_each_release_once(&pf, "failover").await?;
    // No backup lost: each release's values were saved before its one upgrade, those taken
    // under the dead leader included, as Secrets on the control-plane cluster.
    let client = real::client(pf.control_plane.kubeconfig_path()).await?;
    let backups: Api<Secret> = Api::namespaced(client, KUBE_STORE_NAMESPACE);
    let stored = backups
        .list(&ListParams::default().labels("fleet.skoala.io/kind=backup"))
        .await?
        .items;
    let clusters: BTreeSet<String> = stored
        .iter()
        .filter_map(|s| {
            s.metadata
                .labels
                .as_ref()?
                .get("fleet.skoala.io/cluster")
                .cloned()
        })
        .collect();
    assert_eq!(
        (stored.len(), clusters.len()),
        (5, 5),
        "one backup per upgraded release, the control plane's and each worker's: {clusters:?}"
    );
    drop(old);
    Ok(())
}

/// On the kube store each entry is its own request, so a start that waited for the result
/// whose slot it takes cost a hand-off two API writes in sequence; it now goes at once with
/// that result and carries it (design §3.3, *as built*). Seen on the API server: a running
/// worker's entry holds the result of the worker it followed, that worker's operation named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kube_store_a_start_carries_the_result_whose_slot_it_takes() -> anyhow::Result<()> {
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 4,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "carry",
        "0.19.2",
        "strategy: {canary: 0, maxConcurrency: 1}",
    );
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let kubeconfig = pf.control_plane.kubeconfig_path().to_path_buf();
    // Looked for until the plan ends: a plan that finished without one never carried.
    let seen = wait::until(
        "a running worker's entry carrying the result it followed, or the plan's end",
        PLAN_TIMEOUT,
        || async {
            let out = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "fleetclusters.fleet.skoala.io",
                    "-n",
                    KUBE_STORE_NAMESPACE,
                    "-o",
                    "json",
                ],
            )
            .await
            .ok()?;
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let found = list["items"].as_array()?.iter().find_map(|c| {
                let entry = c["status"]["plans"]
                    .as_array()?
                    .iter()
                    .find(|e| e["plan"] == "carry" && e["state"] == "running")?;
                let carried = entry["progress"]["carries"].get(0)?.clone();
                Some((c["metadata"]["name"].as_str()?.to_string(), carried))
            });
            if found.is_some() {
                return Some(found);
            }
            let ended = pf.plan("carry").await.ok()?["phase"] == "succeeded";
            ended.then_some(None)
        },
    )
    .await?;
    let Some((carrier, carried)) = seen else {
        panic!("the plan ended and no start carried the result whose slot it took");
    };
    let freed = carried["cluster_id"].as_str().expect("a cluster id");
    assert_ne!(freed, carrier, "{carried:#}");
    assert_eq!(
        carried["follows"],
        format!("carry.{freed}.upgrade-1"),
        "the freed worker's operation: {carried:#}"
    );
    assert_eq!(
        carried["progress"]["state"]["state"], "succeeded",
        "{carried:#}"
    );
    succeeds_upgrading_each_release_once(&pf, "carry").await?;
    pf.fleet.coordinator.kill();
    Ok(())
}
