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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_charts_lint_clean_with_both_helm_majors() -> anyhow::Result<()> {
    let home = HelmHome::new()?;
    for (label, helm) in helm_versions() {
        for (name, values) in [
            ("skoala-fleet-agent", agent_values()),
            ("skoala-fleet-coordinator", coordinator_values()),
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
