//! Failover on a real control plane (design §5, issue 15's second "done when"): the
//! coordinator chart with `store.type=kube` runs two replicas with its ServiceAccount's
//! rights; the leader's process is SIGKILLed mid-rollout over a real working cluster and
//! emulated ones. The standby takes the Lease, the leader label moves to its Pod, the plan
//! completes, helm's history shows exactly one upgrade per release, and every release's values
//! backup (a Secret on the control plane) is there. The time from the kill to the standby
//! serving and to the plan moving again is printed (`--nocapture`). Then a SIGTERM of the new
//! leader hands over to the restarted ex-leader well within a lease duration.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use skoala_e2e::fleet::plans::PlanView;
use skoala_e2e::real::fleet::{RealFleet, RealFleetOptions, Store};
use skoala_e2e::real::{FLEET_NAMESPACE, Helm};
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(300);

/// Targets succeeded and running.
fn progress(plan: &Value) -> Option<(usize, usize)> {
    let t = plan["targets"].as_array()?;
    let state = |s: &str| t.iter().filter(|t| t["state"] == s).count();
    Some((state("succeeded"), state("running")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leaders_plan_is_finished_by_the_standby_upgrading_each_release_once()
-> anyhow::Result<()> {
    let mut fleet = RealFleet::start(RealFleetOptions {
        coordinator_helm: Helm::V4,
        real_workers: vec![Helm::V4],
        sim_workers: 3,
        store: Store::Kube,
        // Slow enough upgrades that the kill lands with one running.
        sim_readiness_delay: Some(Duration::from_secs(8)),
        ..Default::default()
    })
    .await?;
    let leader = fleet.coordinator.pod.name().to_string();
    let standby = fleet
        .coordinator
        .standby
        .as_ref()
        .context("a standby")?
        .name()
        .to_string();
    assert_ne!(leader, standby, "two Pods, one process each");

    // One at a time, so the kill lands with work done, work running and work waiting.
    let applied = fleet
        .apply(&fleet.plan_yaml(
            "failover",
            "0.19.2",
            "strategy: {canary: 1, maxConcurrency: 1}",
        ))
        .await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let before = wait::until(
        "a worker upgraded and another sent",
        PLAN_TIMEOUT,
        || async {
            let p = fleet.plan("failover").await.ok()?;
            progress(&p).filter(|(done, running)| *done >= 2 && *running >= 1)
        },
    )
    .await
    .with_context(|| fleet.logs())?;
    let log = fleet
        .coordinator
        .standby
        .as_ref()
        .context("a standby")?
        .log();
    assert!(
        log.contains("waiting to lead") && !log.contains("leading"),
        "the standby waits while the leader lives:\n{log}"
    );

    let sent = |events: &[Value]| events.iter().filter(|e| e["kind"] == "task.sent").count();
    let sent_before = sent(&fleet.events("failover").await?);
    fleet.coordinator.kill_leader().await;
    let killed = Instant::now();
    fleet
        .coordinator
        .wait_standby_leads(PLAN_TIMEOUT)
        .await
        .with_context(|| fleet.logs())?;
    let serving = killed.elapsed();
    assert_eq!(fleet.coordinator.pod.name(), standby);
    // Measured side by side, each when first seen: the label, every agent's new session, the
    // next target done.
    let workers = fleet.cluster_names().len() - 1;
    let labelled = async {
        fleet
            .coordinator
            .wait_labelled(&fleet.control_plane)
            .await?;
        anyhow::Ok(killed.elapsed())
    };
    let agents = async {
        wait::until(
            "every agent back on the new leader",
            PLAN_TIMEOUT,
            || async {
                let opened = fleet
                    .coordinator
                    .pod
                    .log()
                    .matches("agent session opened")
                    .count();
                (opened >= workers).then_some(())
            },
        )
        .await?;
        anyhow::Ok(killed.elapsed())
    };
    let moving = async {
        wait::until("the plan to move again", PLAN_TIMEOUT, || async {
            let p = fleet.plan("failover").await.ok()?;
            progress(&p).filter(|(done, _)| *done > before.0)
        })
        .await?;
        anyhow::Ok(killed.elapsed())
    };
    // The new leader sends the upgrade in flight again (its agent answers from its record).
    let resent = async {
        wait::until("the upgrade in flight sent again", PLAN_TIMEOUT, || async {
            let events = fleet.events("failover").await.ok()?;
            (sent(&events) > sent_before).then_some(())
        })
        .await?;
        anyhow::Ok(killed.elapsed())
    };
    let (labelled, agents, resent, moving) = tokio::join!(labelled, agents, resent, moving);
    let (labelled, agents, resent, moving) = (
        labelled?,
        agents.with_context(|| fleet.logs())?,
        resent.with_context(|| fleet.logs())?,
        moving.with_context(|| fleet.logs())?,
    );
    eprintln!(
        "failover mid-rollout on a real control plane: the standby served {serving:?} after \
         the kill, its Pod was the only one labelled leader at {labelled:?}, all {workers} \
         agents were back at {agents:?}, the upgrade in flight was sent again at {resent:?}, \
         the next worker finished at {moving:?}"
    );

    // The kubelet restarts the killed container: it stands by, unlabelled.
    let restarted = fleet
        .coordinator
        .standby
        .as_mut()
        .context("the ex-leader")?;
    restarted.restart(&fleet.control_plane).await?;
    wait::until(
        "the restarted ex-leader waiting to lead",
        PLAN_TIMEOUT,
        || async { (restarted.log().matches("waiting to lead").count() == 2).then_some(()) },
    )
    .await?;

    let plan = fleet
        .wait_phase("failover", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    for t in plan["targets"].as_array().context("targets")? {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    fleet.assert_upgraded_once_to("0.19.2").await?;
    fleet
        .coordinator
        .wait_labelled(&fleet.control_plane)
        .await?;

    // A graceful stop (a rolling update, a drain) hands over without waiting out the lease:
    // the leader releases the Lease, the restarted ex-leader takes it at its next attempt.
    fleet.coordinator.stop_leader()?;
    let stopped = Instant::now();
    fleet
        .coordinator
        .wait_standby_leads(Duration::from_secs(14))
        .await
        .context("taken over before a SIGKILLed leader's Lease could have expired")?;
    let handed = stopped.elapsed();
    fleet
        .coordinator
        .wait_labelled(&fleet.control_plane)
        .await?;
    let stopped_process = std::sync::Mutex::new(
        fleet
            .coordinator
            .standby
            .as_mut()
            .context("the stopped one")?,
    );
    wait::until("the stopped leader exited", PLAN_TIMEOUT, || async {
        let running = stopped_process.lock().ok()?.is_running();
        (!running).then_some(())
    })
    .await?;
    eprintln!("SIGTERM of the leader: the standby served {handed:?} after it");
    fleet.wait_versions("0.19.2", PLAN_TIMEOUT).await?;

    // No backup lost: each release's values were saved before its one upgrade, those taken
    // under the killed leader included.
    let out = fleet
        .control_plane
        .kubectl(&[
            "get",
            "secrets",
            "-n",
            FLEET_NAMESPACE,
            "-l",
            "fleet.skoala.io/kind=backup",
            "-o",
            "json",
        ])
        .await?;
    let stored: Value = serde_json::from_str(&out)?;
    let stored = stored["items"].as_array().context("items")?;
    let clusters: BTreeSet<&str> = stored
        .iter()
        .filter_map(|s| s["metadata"]["labels"]["fleet.skoala.io/cluster"].as_str())
        .collect();
    assert_eq!(
        (stored.len(), clusters.len()),
        (5, 5),
        "one backup per upgraded release, the control plane's and each worker's: {clusters:?}"
    );
    Ok(())
}
