//! The join token does not outlive registration (issue 14, finding 9): the agent installed from
//! its chart, running with its ServiceAccount's rights, deletes the join-token Secret once its
//! identity is stored (the chart grants `delete` on that one name), and a restarted pod, which
//! now has no token, keeps working from its stored identity.

use std::time::Duration;

use skoala_e2e::fleet::plans::PlanView;
use skoala_e2e::real::FLEET_NAMESPACE;
use skoala_e2e::real::fleet::{RealFleet, RealFleetOptions};
use skoala_e2e::wait;

const TOKEN_SECRET: &str = "skoala-fleet-agent-join-token";
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_deletes_its_join_token_secret_and_restarts_without_it() -> anyhow::Result<()> {
    let mut fleet = RealFleet::start(RealFleetOptions::default()).await?;
    let ctl = fleet.ctl();
    let logs = fleet.logs();
    let w = &mut fleet.real[0];
    let cluster = &w.cluster;
    wait::until("the join token Secret deleted", TIMEOUT, || async {
        let out = cluster
            .kubectl(&[
                "get",
                "secret",
                TOKEN_SECRET,
                "-n",
                FLEET_NAMESPACE,
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .await
            .ok()?;
        out.trim().is_empty().then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{logs}"))?;
    let log = w.agent.pod.log();
    assert!(log.contains("join token Secret deleted"), "{log}");
    assert!(
        !log.contains("cannot delete the join token Secret"),
        "{log}"
    );
    // Its identity Secret is what it lives on now.
    cluster
        .kubectl(&[
            "get",
            "secret",
            "skoala-fleet-agent-identity",
            "-n",
            FLEET_NAMESPACE,
        ])
        .await?;

    // The kubelet restarts the container: no token in its environment any more (the Secret
    // reference is optional), the stored identity is used, the session comes back.
    let connected = |log: &str| log.matches("connected to the coordinator").count();
    let before = connected(&w.agent.pod.log());
    w.agent.pod.restart(cluster).await?;
    let pod = &mut w.agent.pod;
    let log = wait::until("the restarted agent connected", TIMEOUT, || async {
        let log = pod.log();
        (connected(&log) > before).then_some(log)
    })
    .await?;
    assert!(pod.is_running(), "{log}");
    assert_eq!(
        log.matches("using the stored identity").count(),
        1,
        "the first start registered, the restart used the stored identity: {log}"
    );
    assert_eq!(log.matches("registering with the coordinator").count(), 1);
    ctl.wait_connected(&w.name, true).await?;
    let audit = ctl.audit_of("cluster.registered").await?;
    assert_eq!(audit.len(), 1, "registered once: {audit:?}");
    Ok(())
}
