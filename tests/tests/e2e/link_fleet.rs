//! Issue 3, "Done when": five agents on five emulated clusters register and show in
//! `skoalactl clusters -o json` with their clusters' `kube-system` UIDs, and a `helm upgrade`
//! done by hand on one cluster shows in its inventory. Real processes throughout: the
//! coordinator, five `skoala-agent`s, `skoalactl`, and the real `helm` against `skoala-sim`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, FLEET_TIMEOUT, Fleet};
use skoala_e2e::tools::tool;
use skoala_e2e::wait;

/// A minimal chart named `name` at `version` whose values hold an image tag `v<version>` under
/// each of `components` (what the inventory reports as `<component>.image.tag`).
fn write_chart(dir: &Path, name: &str, version: &str, components: &[&str]) {
    std::fs::create_dir_all(dir.join("templates")).expect("chart dir");
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: {version}\n"),
    )
    .expect("Chart.yaml");
    let values: String = components
        .iter()
        .map(|c| format!("{c}:\n  image:\n    tag: v{version}\n"))
        .collect();
    std::fs::write(dir.join("values.yaml"), values).expect("values.yaml");
    std::fs::write(
        dir.join("templates/configmap.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-version\ndata:\n  version: {version:?}\n"
        ),
    )
    .expect("template");
}

fn write_skoala_init(dir: &Path, version: &str) {
    write_chart(
        dir,
        "skoala-init",
        version,
        &["nacos-operator", "skoala-agent"],
    );
}

/// `helm upgrade --install` as an operator would type it, against one emulated cluster.
fn helm_upgrade(kubeconfig: &Path, release: &str, chart: &Path, set: &[&str]) {
    let mut cmd = Command::new(tool("helm"));
    cmd.args([
        "upgrade",
        "--install",
        "--create-namespace",
        "-n",
        "skoala-system",
    ])
    .arg(release)
    .arg(chart)
    .arg("--kubeconfig")
    .arg(kubeconfig);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn by_name<'a>(clusters: &'a [Value], name: &str) -> &'a Value {
    clusters
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("cluster {name} not listed: {clusters:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_join_with_their_identity_and_report_manual_upgrades() {
    let fleet = Fleet::start(5).await.expect("fleet");
    fleet.wait_connected(5).await.expect("5 agents connected");
    // A session is listed as connected when it opens; what the agent reports comes with its
    // Hello, a moment later.
    let ctl = fleet.coordinator.ctl();
    let clusters = wait::until("every agent's Hello recorded", FLEET_TIMEOUT, || async {
        let clusters = ctl.clusters().await.ok()?;
        let said_hello = clusters
            .iter()
            .filter(|c| c["helmVersion"].as_str().is_some_and(|v| !v.is_empty()))
            .count();
        (said_hello == 5).then_some(clusters)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    assert_eq!(clusters.len(), 5, "{clusters:?}");

    for (i, sim) in fleet.clusters.iter().enumerate() {
        let c = by_name(&clusters, sim.name());
        assert_eq!(
            c["id"],
            sim.kube_system_uid(),
            "identity is the kube-system UID"
        );
        assert_eq!(c["controlPlane"], false);
        assert_eq!(c["labels"]["fleet"], "test");
        assert_eq!(c["labels"]["index"], (i + 1).to_string());
        assert!(
            c["agentVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{c}"
        );
        assert!(
            c["helmVersion"].as_str().is_some_and(|v| v.contains('4')),
            "helm 4 is what the agent runs: {c}"
        );
        assert!(
            c["certificateSerial"]
                .as_str()
                .is_some_and(|s| s.len() == 32)
        );
        assert!(c["lastHeartbeat"].is_string());
    }

    // An operator upgrades skoala-init by hand on one cluster, outside of skoala-fleet.
    let charts = tempfile::tempdir().expect("tempdir");
    let (old, new) = (charts.path().join("0.19.0"), charts.path().join("0.19.2"));
    write_skoala_init(&old, "0.19.0");
    write_skoala_init(&new, "0.19.2");
    let target = &fleet.clusters[2];
    helm_upgrade(target.kubeconfig_path(), "skoala-init", &old, &[]);
    let ctl = fleet.coordinator.ctl();
    let seen = |version: &'static str, revision: i64| {
        let ctl = ctl.clone();
        let name = target.name().to_string();
        async move {
            let clusters = ctl.clusters().await.ok()?;
            let release = by_name(&clusters, &name)["release"].clone();
            (release["version"] == version
                && release["revision"] == revision
                && release["status"] == "deployed")
                .then_some(release)
        }
    };
    skoala_e2e::wait::until(
        "the install in the inventory",
        Duration::from_secs(60),
        || seen("0.19.0", 1),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));

    helm_upgrade(
        target.kubeconfig_path(),
        "skoala-init",
        &new,
        &["nacos-operator.image.tag=v0.19.2-hotfix"],
    );
    let release = skoala_e2e::wait::until(
        "the manual upgrade in the inventory",
        Duration::from_secs(60),
        || seen("0.19.2", 2),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    assert_eq!(release["chart"], "skoala-init");
    assert_eq!(
        release["imageTags"]["nacos-operator.image.tag"],
        "v0.19.2-hotfix"
    );
    assert_eq!(release["imageTags"]["skoala-agent.image.tag"], "v0.19.2");

    // The other clusters have no release; nothing leaked across identities.
    let clusters = ctl.clusters().await.expect("clusters");
    for sim in fleet.clusters.iter().filter(|s| s.name() != target.name()) {
        assert!(by_name(&clusters, sim.name())["release"].is_null());
    }

    // The table names what an operator looks for.
    let table = ctl.ok(&["clusters"]).await.expect("table");
    assert!(
        table.contains("skoala-init 0.19.2") && table.contains("connected"),
        "{table}"
    );
    let metrics = fleet.coordinator.metrics().await.expect("metrics");
    assert!(metrics.contains("skoala_agents_connected 5"), "{metrics}");
    assert!(
        metrics.contains("skoala_agent_messages_total{type=\"inventory\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_is_listed_with_its_skoala_release() {
    let control = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("control"))
        .await
        .expect("control-plane cluster");
    let charts = tempfile::tempdir().expect("tempdir");
    write_chart(charts.path(), "skoala", "0.19.2", &["hive", "sesame"]);
    helm_upgrade(control.kubeconfig_path(), "skoala", charts.path(), &[]);

    let coord = Coordinator::start_with(CoordinatorOptions {
        kubeconfig: Some(control.kubeconfig_path().to_path_buf()),
        ..Default::default()
    })
    .await
    .expect("coordinator");
    let ctl = coord.ctl();
    let cp = skoala_e2e::wait::until(
        "the control plane in clusters",
        Duration::from_secs(60),
        || async {
            let clusters = ctl.clusters().await.ok()?;
            clusters
                .into_iter()
                .find(|c| c["controlPlane"] == true && !c["release"].is_null())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", coord.log()));
    assert_eq!(cp["id"], control.kube_system_uid());
    assert_eq!(cp["release"]["release"], "skoala");
    assert_eq!(cp["release"]["version"], "0.19.2");
    assert_eq!(cp["release"]["imageTags"]["hive.image.tag"], "v0.19.2");

    // A hand-made upgrade of the control plane is followed too.
    helm_upgrade(
        control.kubeconfig_path(),
        "skoala",
        charts.path(),
        &["hive.image.tag=v0.19.3-rc1"],
    );
    skoala_e2e::wait::until(
        "the control plane's upgrade in clusters",
        Duration::from_secs(60),
        || async {
            let clusters = ctl.clusters().await.ok()?;
            clusters.into_iter().find(|c| {
                c["controlPlane"] == true
                    && c["release"]["revision"] == 2
                    && c["release"]["imageTags"]["hive.image.tag"] == "v0.19.3-rc1"
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", coord.log()));
}
