//! `serve --store kube` over an emulated control-plane cluster: the coordinator keeps the
//! fleet in `FleetCluster` objects (nothing in its data dir), takes the leader Lease before it
//! serves, and after a crash the next process waits out the dead holder's Lease, loads the
//! fleet from the API server and takes its agents back without any of them joining again. A
//! second replica stands by without serving until the leader dies, then leads and the agents
//! follow it (the failover time is printed; BENCHMARKS.md measures it at scale).

use std::collections::BTreeSet;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::core::DynamicObject;
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, FLEET_TIMEOUT, Fleet};
use skoala_e2e::{kstore, wait};
use skoala_kubestore::crd::Kind;
use skoala_kubestore::pod;

const NS: &str = "skoala-fleet";

fn on_kube(cp: &skoala_sim::Cluster, more: &[&str]) -> CoordinatorOptions {
    CoordinatorOptions {
        metrics: true,
        kubeconfig: Some(cp.kubeconfig_path().to_path_buf()),
        kube_store: Some(NS.to_string()),
        args: more.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A Pod named `name` in the fleet's namespace, as the coordinator's Deployment would make.
async fn pod(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "skoala-coordinator"}},
        "spec": {"containers": [{"name": "coordinator", "image": "skoala-coordinator:test"}]},
    }))?;
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

/// The Pods the agents' Service would select: those labelled as the leader's.
async fn leader_pods(client: &kube::Client) -> anyhow::Result<BTreeSet<String>> {
    let selector = format!("{}={}", pod::ROLE_LABEL, pod::LEADER);
    Ok(Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// `spec.name` of every `FleetCluster` in the fleet's namespace.
async fn fleet_clusters(client: &kube::Client) -> anyhow::Result<BTreeSet<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &Kind::FleetCluster.api_resource());
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|o| o.data["spec"]["name"].as_str().map(str::to_string))
        .collect())
}

/// The working clusters' ids (the control plane's row appears whenever its inventory is read).
fn ids(clusters: &[serde_json::Value]) -> BTreeSet<String> {
    clusters
        .iter()
        .filter(|c| c["controlPlane"] != serde_json::Value::Bool(true))
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_fleet_lives_on_the_api_server_and_survives_a_crashed_coordinator() -> anyhow::Result<()>
{
    let (cp, client) = kstore::control_plane(NS).await?;
    let mut fleet = Fleet::start_with(2, on_kube(&cp, &[])).await?;
    let before = ids(&fleet.wait_connected(2).await?);

    let names = fleet_clusters(&client).await?;
    assert_eq!(
        names,
        BTreeSet::from(["work-1".to_string(), "work-2".to_string()]),
        "every registered cluster is a FleetCluster"
    );
    assert!(
        !fleet.coordinator.data_dir().join("store.db").exists(),
        "--store kube keeps no SQLite file"
    );

    // SIGKILL: the Lease is not released, so the new process waits for it to expire.
    fleet.coordinator.restart().await?;
    let after = ids(&fleet.wait_connected(2).await?);
    assert_eq!(before, after, "the same clusters came back");
    let joins = fleet
        .coordinator
        .ctl()
        .audit_of("cluster.registered")
        .await?;
    assert_eq!(
        joins.len(),
        2,
        "no agent joined again after the restart: {joins:?}\n{}",
        fleet.logs()
    );
    assert!(
        fleet.coordinator.log().contains("leading"),
        "the coordinator says when it leads"
    );
    Ok(())
}

#[tokio::test]
async fn a_standby_serves_only_once_the_leader_dies_and_the_agents_follow_it() -> anyhow::Result<()>
{
    let (cp, client) = kstore::control_plane(NS).await?;
    pod(&client, "coordinator-a").await?;
    pod(&client, "coordinator-b").await?;
    let fleet = Fleet::start_with(2, on_kube(&cp, &["--pod-name", "coordinator-a"])).await?;
    let before = ids(&fleet.wait_connected(2).await?);
    let mut leader = fleet.coordinator;
    assert_eq!(
        leader_pods(&client).await?,
        BTreeSet::from(["coordinator-a".to_string()]),
        "the leader's Pod is the Service's endpoint"
    );

    let mut standby =
        Coordinator::standby_of(&leader, on_kube(&cp, &["--pod-name", "coordinator-b"])).await?;
    wait::until("the standby to wait for the Lease", FLEET_TIMEOUT, || {
        let waiting = standby.log().contains("waiting to lead");
        async move { waiting.then_some(()) }
    })
    .await?;
    // While the leader lives and renews, the standby must not lead.
    assert!(
        !standby.log().contains("leading"),
        "a standby leads while the leader lives:\n{}",
        standby.log()
    );

    leader.kill();
    let killed = Instant::now();
    standby.wait_serving(FLEET_TIMEOUT).await?;
    let serving = killed.elapsed();
    let after = ids(&standby.wait_connected(2, FLEET_TIMEOUT).await?);
    let back = killed.elapsed();
    eprintln!("failover: serving {serving:?} after the kill, every agent back after {back:?}");
    assert_eq!(
        before, after,
        "the same clusters are connected to the new leader"
    );
    let joins = standby.ctl().audit_of("cluster.registered").await?;
    assert_eq!(joins.len(), 2, "no agent joined again: {joins:?}");
    Ok(())
}
