//! The install charts (`charts/skoala-fleet-coordinator`, `charts/skoala-fleet-agent`): lint
//! clean with both helm majors, their rendered manifests accepted by a server-side dry run, and
//! the agent chart installs (and becomes ready) in an emulated cluster.

use std::path::PathBuf;

use anyhow::Context as _;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::sim::kubectl;
use skoala_e2e::tools::{helm_versions, tool, workspace_root};

const NAMESPACE: &str = "skoala-fleet";

fn chart(name: &str) -> String {
    workspace_root()
        .join("charts")
        .join(name)
        .display()
        .to_string()
}

/// Values a real installation must give; the rest are the charts' defaults.
fn agent_values() -> Vec<&'static str> {
    vec![
        "--set",
        "coordinator.url=https://fleet.example.com:7443",
        "--set",
        "coordinator.caBundle=-----BEGIN CERTIFICATE-----",
        "--set",
        "joinToken.value=skt_example",
        "--set",
        "cluster.labels.env=prod",
        "--set",
        "proxy.httpsProxy=http://proxy.example.com:3128",
    ]
}

fn coordinator_values() -> Vec<&'static str> {
    vec!["--set", "serverNames={fleet.example.com}"]
}

fn coordinator_kube_values() -> Vec<&'static str> {
    let mut v = coordinator_values();
    v.extend(["--set", "store.type=kube"]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_charts_lint_clean_with_both_helm_majors() -> anyhow::Result<()> {
    let home = HelmHome::new()?;
    for (label, helm) in helm_versions() {
        for (name, values) in [
            ("skoala-fleet-agent", agent_values()),
            ("skoala-fleet-coordinator", coordinator_values()),
            ("skoala-fleet-coordinator", coordinator_kube_values()),
        ] {
            let mut args = vec!["lint", "--strict"];
            let path = chart(name);
            args.push(&path);
            args.extend(values);
            let out = home
                .run(&helm, None, &args)
                .await
                .with_context(|| format!("{label} lint {name}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("0 chart(s) failed"),
                "{label} lint {name}: {text}"
            );
        }
    }
    Ok(())
}

/// The objects `helm template` renders.
fn objects(manifest: &str) -> Vec<serde_yaml::Value> {
    manifest
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| v.is_mapping())
        .collect()
}

fn of_kind<'a>(objects: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kube_store_the_coordinator_chart_runs_a_leader_and_a_standby_behind_a_pdb()
-> anyhow::Result<()> {
    let home = HelmHome::new()?;
    for (label, helm) in helm_versions() {
        let path = chart("skoala-fleet-coordinator");
        let render = |values: Vec<&'static str>| {
            let (home, helm, path) = (&home, &helm, &path);
            async move {
                let mut args = vec![
                    "template",
                    "skoala-fleet",
                    path.as_str(),
                    "-n",
                    "skoala-fleet",
                ];
                args.extend(values);
                let out = home.run(helm, None, &args).await?;
                anyhow::ensure!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                anyhow::Ok(objects(&String::from_utf8_lossy(&out.stdout)))
            }
        };
        let kube = render(coordinator_kube_values()).await?;
        let deployment = of_kind(&kube, "Deployment")[0];
        assert_eq!(deployment["spec"]["replicas"], 2, "{label}");
        assert_eq!(
            deployment["spec"]["strategy"]["type"], "RollingUpdate",
            "{label}"
        );
        assert!(
            deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_mapping(),
            "{label}: replicas spread over nodes"
        );
        let serve = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert!(
            serve["args"]
                .as_sequence()
                .is_some_and(|a| a.iter().any(|x| x == "--store=kube")),
            "{label}"
        );
        assert_eq!(of_kind(&kube, "PodDisruptionBudget").len(), 1, "{label}");
        assert_eq!(
            of_kind(&kube, "PersistentVolumeClaim").len(),
            0,
            "{label}: no volume"
        );
        assert_eq!(
            of_kind(&kube, "CustomResourceDefinition").len(),
            3,
            "{label}"
        );
        for crd in of_kind(&kube, "CustomResourceDefinition") {
            assert_eq!(
                crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                "{label}: uninstalling the chart must not delete every plan"
            );
        }
        let agents = of_kind(&kube, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == "skoala-fleet-coordinator")
            .expect("the agents' Service");
        assert_eq!(
            agents["spec"]["selector"]["fleet.skoala.io/role"], "leader",
            "{label}: agents reach only the leader"
        );

        let sqlite = render(coordinator_values()).await?;
        let deployment = of_kind(&sqlite, "Deployment")[0];
        assert_eq!(deployment["spec"]["replicas"], 1, "{label}");
        assert_eq!(
            deployment["spec"]["strategy"]["type"], "Recreate",
            "{label}"
        );
        assert_eq!(of_kind(&sqlite, "PodDisruptionBudget").len(), 0, "{label}");
        assert_eq!(
            of_kind(&sqlite, "CustomResourceDefinition").len(),
            0,
            "{label}"
        );
        assert_eq!(
            of_kind(&sqlite, "PersistentVolumeClaim").len(),
            1,
            "{label}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_chart_refuses_to_render_without_the_coordinator() -> anyhow::Result<()> {
    let home = HelmHome::new()?;
    let helm = tool("helm");
    let out = home
        .try_run(
            &helm,
            None,
            &["template", "a", &chart("skoala-fleet-agent")],
        )
        .await?;
    assert!(!out.status.success(), "rendered without required values");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coordinator.caBundle is required"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_pass_a_server_side_dry_run_and_the_agent_installs() -> anyhow::Result<()>
{
    let cluster = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("install-charts"))
        .await
        .context("start the emulated cluster")?;
    let kc = cluster.kubeconfig_path().to_path_buf();
    kubectl(&kc, &["create", "namespace", NAMESPACE]).await?;
    kubectl(&kc, &["create", "namespace", "skoala-system"]).await?;

    let home = HelmHome::new()?;
    let helm = tool("helm");
    for (name, values) in [
        ("skoala-fleet-coordinator", coordinator_values()),
        ("skoala-fleet-agent", agent_values()),
    ] {
        let path = chart(name);
        let mut args = vec!["template", "fleet", &path, "--namespace", NAMESPACE];
        args.extend(values);
        let rendered = home.run(&helm, None, &args).await?;
        let file: PathBuf = home.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered.stdout)?;
        let file = file.display().to_string();
        let out = kubectl(&kc, &["apply", "--dry-run=server", "-f", &file]).await?;
        let applied = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "deployment.apps",
            "serviceaccount",
            "role.rbac",
            "clusterrole.rbac",
            "service/",
        ] {
            assert!(
                applied.contains(kind),
                "{name}: no {kind} in the dry run: {applied}"
            );
        }
        assert!(applied.contains("(server dry run)"), "{applied}");
    }
    // A dry run creates nothing.
    let out = kubectl(&kc, &["get", "deployments", "-n", NAMESPACE, "-o", "name"]).await?;
    assert!(
        out.stdout.is_empty(),
        "dry run created {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The real install of the agent chart, waiting for it to be ready.
    let path = chart("skoala-fleet-agent");
    let mut args = vec![
        "install",
        "skoala-fleet-agent",
        &path,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "60s",
    ];
    args.extend(agent_values());
    home.run(&helm, Some(&kc), &args).await?;
    let out = kubectl(
        &kc,
        &[
            "get",
            "deployment",
            "skoala-fleet-agent",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");
    // The token lands in a Secret, never in the Deployment.
    let out = kubectl(
        &kc,
        &[
            "get",
            "deployment",
            "skoala-fleet-agent",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ],
    )
    .await?;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("skt_example"),
        "token leaked into the pod spec"
    );
    Ok(())
}
