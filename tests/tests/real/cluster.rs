//! The fixture itself: a real cluster enforces RBAC and admission, runs controllers and kwok's
//! fake node, and leaves no process behind.

use std::time::Duration;

use skoala_e2e::real;
use skoala_e2e::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cluster_enforces_rbac_and_pod_security_and_runs_workloads() -> anyhow::Result<()> {
    let cluster = real::cluster("fixture").await?;
    // Real /version, as Helm's kubeVersion checks read it.
    let version = cluster.kubectl(&["version", "-o", "json"]).await?;
    let version: serde_json::Value = serde_json::from_str(&version)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.37.2",
        "{version:#}"
    );

    // RBAC: a ServiceAccount with no binding may do nothing.
    real::namespace(&cluster, "rbac-probe", &[]).await?;
    cluster
        .kubectl(&["-n", "rbac-probe", "create", "serviceaccount", "nobody"])
        .await?;
    let kubeconfig = cluster
        .service_account_kubeconfig("rbac-probe", "nobody")
        .await?;
    let out =
        skoala_e2e::sim::try_kubectl(&kubeconfig, &["-n", "rbac-probe", "get", "secrets"]).await?;
    assert!(
        !out.status.success(),
        "an unbound ServiceAccount listed secrets"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "{stderr}"
    );

    // Admission: a namespace enforcing the restricted Pod Security profile refuses a root pod.
    real::namespace(
        &cluster,
        "restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    let err = cluster
        .kubectl(&[
            "-n",
            "restricted",
            "run",
            "root",
            "--image=busybox",
            "--restart=Never",
        ])
        .await
        .expect_err("a pod violating the restricted profile was admitted");
    assert!(err.to_string().contains("violates PodSecurity"), "{err}");

    // Controllers and kwok: a Deployment's pod becomes Ready on the fake node.
    real::namespace(&cluster, "apps", &[]).await?;
    cluster
        .kubectl(&[
            "-n",
            "apps",
            "create",
            "deployment",
            "web",
            "--image=nginx:1",
        ])
        .await?;
    cluster
        .kubectl(&[
            "-n",
            "apps",
            "rollout",
            "status",
            "deployment/web",
            "--timeout=120s",
        ])
        .await?;

    let pids = cluster.pids();
    let rss = cluster.rss_bytes();
    assert!(rss > 0, "memory of the cluster's processes is readable");
    eprintln!(
        "real cluster: started in {:.1} s, {} MiB resident",
        cluster.started_in().as_secs_f64(),
        rss >> 20
    );
    cluster.stop().await;
    // No process left behind.
    wait::until(
        "every component to exit",
        Duration::from_secs(10),
        || async {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                .then_some(())
        },
    )
    .await?;
    Ok(())
}
