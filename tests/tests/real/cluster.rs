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

/// What the kube store's benchmark counts API writes with: the API server started with an
/// audit policy logs the requests the policy selects, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_started_with_an_audit_policy_logs_the_requests_it_selects() -> anyhow::Result<()>
{
    let policy = tempfile::NamedTempFile::new()?;
    std::fs::write(
        policy.path(),
        "apiVersion: audit.k8s.io/v1\n\
         kind: Policy\n\
         omitStages: [RequestReceived]\n\
         rules:\n\
         - level: Metadata\n\
         \x20 users: [skoala-realkube-admin]\n\
         \x20 verbs: [create]\n\
         \x20 resources: [{group: \"\", resources: [configmaps]}]\n\
         - level: None\n",
    )?;
    let cluster = skoala_realkube::RealCluster::start_with(
        "audit",
        &real::binaries(),
        skoala_realkube::Options {
            audit_policy: Some(policy.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await?;
    cluster
        .kubectl(&["-n", "default", "create", "configmap", "audited"])
        .await?;
    cluster
        .kubectl(&["-n", "default", "get", "configmap", "audited"])
        .await?;
    cluster
        .kubectl(&["-n", "default", "create", "serviceaccount", "not-audited"])
        .await?;
    // Blocking mode: the event is written before the response, so it is there now.
    let log = std::fs::read_to_string(cluster.audit_log())?;
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ours: Vec<_> = events
        .iter()
        .filter(|e| e["objectRef"]["name"] == "audited" || e["objectRef"]["name"] == "not-audited")
        .collect();
    assert_eq!(ours.len(), 1, "{log}");
    assert_eq!(ours[0]["verb"], "create", "{log}");
    assert_eq!(ours[0]["objectRef"]["resource"], "configmaps", "{log}");
    assert_eq!(ours[0]["level"], "Metadata", "{log}");
    assert_eq!(ours[0]["stage"], "ResponseComplete", "{log}");
    cluster.stop().await;
    Ok(())
}
