//! Issue 3, "Done when": SIGKILL the coordinator and restart it — every agent is back without
//! registering again and nothing it had acknowledged is lost; restart an agent — same identity,
//! no new registration.

use serde_json::Value;
use skoala_e2e::fleet::raw;
use skoala_e2e::fleet::{FLEET_TIMEOUT, Fleet};

/// `id → certificateSerial` of every cluster: a re-registration would issue a new serial.
fn serials(clusters: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = clusters
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["certificateSerial"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn kinds(audit: &[Value], kind: &str) -> usize {
    audit.iter().filter(|e| e["kind"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_coordinator_comes_back_with_everything_it_acknowledged() {
    let mut fleet = Fleet::start(3).await.expect("fleet");
    let before = fleet.wait_connected(3).await.expect("connected");
    let ctl = fleet.coordinator.ctl();

    // Acknowledged right before the crash: a registration, a token, a revocation.
    let spare = ctl.token(1, "1h").await.expect("token");
    raw::register(&fleet.coordinator, &spare, "uid-last-second", "last-second")
        .await
        .expect("registration acknowledged");
    let pending = ctl.token(2, "2h").await.expect("token");
    let pending_id = pending.split_once('.').expect("id.secret").0.to_string();
    ctl.ok(&["cluster", "revoke", "last-second"])
        .await
        .expect("revocation acknowledged");
    let tokens_before = ctl.json(&["token", "list"]).await.expect("tokens");
    let audit_before = ctl.audit().await.expect("audit");

    fleet.coordinator.kill();
    fleet.coordinator.restart().await.expect("restart");
    let after = fleet
        .wait_connected(3)
        .await
        .expect("all agents back after the restart");

    // Same clusters, same certificates: nobody registered again.
    let agents_after: Vec<Value> = after
        .iter()
        .filter(|c| c["name"] != "last-second")
        .cloned()
        .collect();
    assert_eq!(serials(&before), serials(&agents_after));
    let audit_after = ctl.audit().await.expect("audit");
    assert_eq!(
        kinds(&audit_after, "cluster.registered"),
        4,
        "{audit_after:?}"
    );
    assert_eq!(kinds(&audit_after, "cluster.reregistered"), 0);

    // Nothing acknowledged was lost: tokens (uses left, revocation), the late registration and
    // its revocation, and every audit event in order.
    assert_eq!(
        ctl.json(&["token", "list"]).await.expect("tokens"),
        tokens_before
    );
    assert!(
        tokens_before
            .as_array()
            .expect("list")
            .iter()
            .any(|t| t["id"] == pending_id.as_str() && t["usesLeft"] == 2)
    );
    let last = after
        .iter()
        .find(|c| c["name"] == "last-second")
        .expect("the last-second registration survived");
    assert_eq!(last["revoked"], true);
    assert_eq!(&audit_after[..audit_before.len()], &audit_before[..]);

    // Labels and versions came back from the store and the agents' hellos.
    for c in &agents_after {
        assert_eq!(c["labels"]["fleet"], "test");
        assert!(c["agentVersion"].as_str().is_some_and(|v| !v.is_empty()));
    }
    assert_eq!(fleet.coordinator.starts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_identity() {
    let mut fleet = Fleet::start(2).await.expect("fleet");
    let before = fleet.wait_connected(2).await.expect("connected");
    let ctl = fleet.coordinator.ctl();
    let name = fleet.agents[0].name().to_string();
    let id = fleet.clusters[0].kube_system_uid().to_string();

    fleet.agents[0].kill();
    let gone = skoala_e2e::wait::until(
        "the killed agent to show as disconnected",
        FLEET_TIMEOUT,
        || async {
            let clusters = ctl.clusters().await.ok()?;
            clusters
                .into_iter()
                .find(|c| c["id"] == id.as_str() && c["connected"] == false)
        },
    )
    .await
    .expect("disconnect noticed");
    assert!(
        gone["lastHeartbeat"].is_string(),
        "a disconnected cluster says when it was last heard from: {gone}"
    );

    // The join token (2 uses) is used up: a re-registration could not even succeed. The agent
    // now asks for one more label, which stays a proposal until an operator applies it.
    fleet.agents[0].add_args(&["--label", "tier=gold"]);
    fleet.agents[0].restart().expect("restart agent");
    let after = fleet.wait_connected(2).await.expect("connected again");
    assert_eq!(
        serials(&before),
        serials(&after),
        "same certificate, same id"
    );
    let c = after
        .iter()
        .find(|c| c["name"] == name.as_str())
        .expect("listed");
    assert_eq!(c["id"], id.as_str());
    let proposed = skoala_e2e::wait::until("the proposed label", FLEET_TIMEOUT, || async {
        let clusters = ctl.clusters().await.ok()?;
        clusters
            .into_iter()
            .find(|c| c["id"] == id.as_str() && c["proposed"]["labels"]["tier"] == "gold")
    })
    .await
    .expect("the agent's new flags are shown as its proposal");
    assert_eq!(proposed["labels"]["fleet"], "test");
    assert!(proposed["labels"].get("tier").is_none(), "{proposed:#}");
    ctl.wait_audit("cluster.identity_proposed", "tier")
        .await
        .expect("a proposed label change is audited");

    let audit = ctl.audit().await.expect("audit");
    assert_eq!(kinds(&audit, "cluster.registered"), 2, "{audit:?}");
    assert_eq!(kinds(&audit, "cluster.reregistered"), 0);
    assert_eq!(
        kinds(&audit, "register.token_used_up"),
        0,
        "the agent did not even try"
    );
    assert!(
        fleet.agents[0].log().contains(&id),
        "{}",
        fleet.agents[0].log()
    );
    let opened = fleet
        .coordinator
        .metric("skoala_sessions_opened_total")
        .await
        .expect("metric");
    assert!(
        opened >= 3.0,
        "two first sessions and the reconnect: {opened}"
    );
}

/// The join token does not outlive registration, on the emulator as on a real cluster
/// (`real::agent_token`): an agent told where its token came from (`--token-secret`, as the
/// chart does) deletes that Secret once its identity is stored, and restarts without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_token_secret_is_deleted_once_the_identity_is_stored() {
    use skoala_e2e::fleet::{AGENT_NAMESPACE, Agent, AgentOptions, Coordinator, prepare_cluster};
    use skoala_e2e::sim::try_kubectl;

    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let clusters = skoala_sim::start_clusters(1, "tokened")
        .await
        .expect("cluster");
    let kubeconfig = clusters[0].kubeconfig_path();
    prepare_cluster(&clusters[0]).await.expect("namespace");
    let token = ctl.token(1, "1h").await.expect("token");
    let literal = format!("--from-literal=token={token}");
    let args = [
        "-n",
        AGENT_NAMESPACE,
        "create",
        "secret",
        "generic",
        "join-token",
        literal.as_str(),
    ];
    let created = try_kubectl(kubeconfig, &args).await.expect("kubectl");
    assert!(created.status.success(), "{created:?}");

    let mut agent = Agent::start(
        &coord,
        &clusters[0],
        Some(&token),
        AgentOptions::named("tokened").arg("--token-secret=join-token"),
    )
    .expect("agent");
    ctl.wait_connected("tokened", true).await.expect("joined");
    let get = ["-n", AGENT_NAMESPACE, "get", "secret", "join-token"];
    skoala_e2e::wait::until("the join token Secret deleted", FLEET_TIMEOUT, || async {
        let out = try_kubectl(kubeconfig, &get).await.ok()?;
        (!out.status.success()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent.log().contains("join token Secret deleted"));

    // Restarted (the token flag is still there, as a chart's env would no longer be; either
    // way it is not used): the stored identity, no new registration, nothing to delete.
    agent.restart().expect("restart");
    skoala_e2e::wait::until("the restarted agent", FLEET_TIMEOUT, || async {
        (agent.log().matches("using the stored identity").count() == 1).then_some(())
    })
    .await
    .expect("uses its stored identity");
    ctl.wait_connected("tokened", true)
        .await
        .expect("connected");
    assert_eq!(
        kinds(&ctl.audit().await.expect("audit"), "cluster.registered"),
        1
    );
    assert!(agent.exited().is_none(), "{}", agent.log());
}
