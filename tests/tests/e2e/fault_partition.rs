//! A network partition between an agent and the coordinator in the middle of an upgrade.
//!
//! The working cluster and its agent live in a network namespace joined to the host by a veth
//! link (`PlanFleetOptions::linked`); the coordinator is on the host. The plan relays its
//! charts over the session (the namespace cannot reach the test repository). While `helm
//! upgrade` runs in the cluster (its workloads take seconds to become ready), the link goes
//! down: every packet either way is dropped without a word, as in a real partition.
//!
//! Nothing may be lost or done twice: the upgrade finishes in the cluster while it is cut off;
//! the coordinator declares the agent gone and starts nothing new for it; once the link is
//! back the agent reconnects and reports, and the plan completes with the operation it
//! started. The agent's result sent while the link was down is lost with the dead connection,
//! so the coordinator sends the operation again: the executor recognises it by its id and
//! reports the recorded outcome, and helm's history shows exactly one upgrade. The stored
//! backup reads back.
//!
//! Needs root and iproute2; fails loudly (never skips) without them.

use std::time::{Duration, Instant};

use skoala_e2e::fleet::plans::{
    PlanFleet, PlanFleetOptions, PlanView, read_backups, sent_to, target,
};
use skoala_e2e::wait;

const TIMEOUT: Duration = Duration::from_secs(300);

/// The helm release Secret of `skoala-init` revision `revision`, read from the emulator's
/// store in-process (the test cannot reach the cluster over the cut link).
fn release_status(cluster: &skoala_sim::Cluster, revision: u32) -> Option<String> {
    let secret = cluster.get_object(
        "",
        "secrets",
        "skoala-system",
        &format!("sh.helm.release.v1.skoala-init.v{revision}"),
    )?;
    secret["metadata"]["labels"]["status"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_mid_upgrade_loses_nothing_and_the_upgrade_runs_once() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 1,
        linked: vec![1],
        // `helm upgrade --wait` lasts at least this long: the cut lands inside it.
        worker_readiness_delay: Some(Duration::from_secs(3)),
        // The coordinator notices a silent agent within seconds.
        coordinator_args: ["--ping-interval", "1s", "--agent-timeout", "4s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await
    .expect("a linked fleet (this test needs root and iproute2)");
    let (_, link) = pf.link("work-1")?;
    let cluster = &pf.fleet.clusters[0];
    assert!(link.is_up()?);

    let yaml = pf
        .plan_yaml("partition", "0.19.2", "strategy: {canary: 1}")
        .replace("chartSource: repo", "chartSource: relay");
    let applied = pf.apply(&yaml).await?;
    assert!(applied.success, "apply: {}", applied.stderr);

    // `helm upgrade` has started in the cluster (its backup is stored): cut the link.
    wait::until("work-1's helm upgrade to start", TIMEOUT, || async {
        let events = pf.events("partition").await.ok()?;
        events
            .iter()
            .any(|e| {
                e["kind"] == "step"
                    && e["targetName"] == "work-1"
                    && e["step"] == "upgrade"
                    && e["state"] == "started"
            })
            .then_some(())
    })
    .await?;
    link.cut()?;
    let cut = Instant::now();
    assert_ne!(
        release_status(cluster, 2).as_deref(),
        Some("deployed"),
        "the cut lands mid-upgrade"
    );

    // Both sides of the partition: the coordinator declares the agent gone...
    pf.ctl().wait_connected("work-1", false).await?;
    // ...and the cluster finishes its upgrade, cut off.
    wait::until("the upgrade to finish behind the cut", TIMEOUT, || async {
        (release_status(cluster, 2).as_deref() == Some("deployed")).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", pf.fleet.logs()))?;
    assert!(!link.is_up()?, "still cut off");
    let plan = pf.plan("partition").await?;
    assert_eq!(
        target(&plan, "work-1")?["state"],
        "running",
        "the coordinator cannot know yet: {plan:#}"
    );
    let sent_before = sent_to(&pf.events("partition").await?, "work-1").len();
    assert_eq!(sent_before, 1, "nothing re-sent into the partition");

    link.restore()?;
    eprintln!("the link was cut for {:?}", cut.elapsed());
    let plan = pf
        .wait_phase("partition", &["succeeded"], TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", pf.fleet.logs()))?;
    let t = target(&plan, "work-1")?;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    assert_eq!(
        t["attempts"], 1,
        "the operation it started, no new one: {t:#}"
    );
    assert_eq!(t["connected"], true, "the agent is back: {t:#}");

    // The result the agent sent into the cut was lost with the dead connection (the agent
    // notices a silent link only after its keepalive, tens of seconds, much later than the
    // upgrade ends), so the coordinator sent the same operation again after the partition
    // healed, and it ran once.
    let events = pf.events("partition").await?;
    let sent = sent_to(&events, "work-1");
    assert_eq!(
        sent.len(),
        2,
        "sent, then sent again after the heal: {sent:#?}"
    );
    assert_eq!(
        sent[0]["operationId"], sent[1]["operationId"],
        "one operation, never a new one"
    );
    assert!(
        release_status(cluster, 3).is_none(),
        "no third revision: the re-sent operation was not run again"
    );
    pf.assert_upgraded_once_to("0.19.2").await?;
    pf.assert_consistent_with_clusters(&plan).await?;
    let backups = read_backups(&pf.fleet.coordinator.data_dir())?;
    assert!(
        backups >= 1,
        "work-1's values backup, stored before the upgrade"
    );
    Ok(())
}
