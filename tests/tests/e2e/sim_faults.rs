//! The emulator's fault injection (library handle and the `/_sim/faults` admin endpoint of the
//! `skoala-sim cluster` process), and the process itself: it prints its address, serves the
//! kubeconfig it wrote, and stops on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use skoala_e2e::sim::{kubectl, try_kubectl};
use skoala_e2e::tools::our_bin;
use skoala_sim::{Cluster, ClusterConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn make_cm(api: &Api<ConfigMap>, name: &str) -> anyhow::Result<()> {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))?;
    api.create(&PostParams::default(), &cm).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_next_latency_stop_and_resume() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("faults")).await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    make_cm(&cms, "before").await?;

    // 500, not 503: kube-rs retries 503s by itself (and would hide the fault).
    cluster
        .faults()
        .fail_next(Some("GET"), "/configmaps/before", 500, 2);
    for _ in 0..2 {
        match cms.get("before").await {
            Err(kube::Error::Api(ae)) => assert_eq!(ae.code, 500),
            other => panic!("expected an injected 500, got {other:?}"),
        }
    }
    cms.get("before").await.context("the rule is used up")?;

    cluster
        .faults()
        .add_latency(None, "/configmaps", Duration::from_millis(300));
    let t = Instant::now();
    cms.get("before").await?;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "latency was added"
    );
    cluster.faults().clear();

    cluster.faults().stop();
    let down = cms
        .get("before")
        .await
        .expect_err("a stopped cluster does not answer");
    assert!(
        !matches!(down, kube::Error::Api(_)),
        "no API answer while stopped: {down}"
    );
    cluster.faults().resume();
    // Same state after coming back.
    let cm = cms.get("before").await.context("answers again")?;
    assert_eq!(
        cm.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v")
    );
    make_cm(&cms, "after").await?;

    // Frozen: requests hang (the client's own timeout fires), then are answered on resume.
    cluster.faults().freeze();
    let held = tokio::time::timeout(Duration::from_millis(500), cms.get("after")).await;
    assert!(held.is_err(), "a frozen cluster does not answer");
    let pending = tokio::spawn({
        let cms = cms.clone();
        async move { cms.get("after").await }
    });
    cluster.faults().resume();
    let answered = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .context("the held request was answered after resume")???;
    assert_eq!(answered.metadata.name.as_deref(), Some("after"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_process_serves_kubeconfig_admin_faults_and_stops_on_sigterm() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(our_bin("skoala-sim"))
        .args(["cluster", "--listen", "127.0.0.1:0", "--name", "proc"])
        .arg("--kubeconfig-out")
        .arg(&kc)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn skoala-sim")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("skoala-sim printed nothing")??
        .context("skoala-sim closed stdout")?;
    let url = first
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {first:?}"))?
        .to_string();
    eprintln!("skoala-sim ready at {url} after {:?}", started.elapsed());
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let out = kubectl(
        &kc,
        &[
            "get",
            "namespace",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    )
    .await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).len(),
        36,
        "kube-system has a UID"
    );

    // Admin endpoint, with the kubeconfig's credentials.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let body = json!({"action": "fail", "method": "GET", "path": "/api/v1/namespaces/default", "status": 500, "count": 1});
    let req = http::Request::post("/_sim/faults")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body)?)?;
    let snapshot: serde_json::Value = serde_json::from_str(&client.request_text(req).await?)?;
    assert_eq!(snapshot["fail"][0]["remaining"], 1);
    let failed = try_kubectl(&kc, &["get", "namespace", "default"]).await?;
    assert!(
        !failed.status.success(),
        "the injected failure reaches kubectl"
    );
    kubectl(&kc, &["get", "namespace", "default"])
        .await
        .context("only once")?;

    let pid = child.id().context("pid")?;
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .context("skoala-sim did not stop on SIGTERM")??;
    assert!(exit.success(), "clean exit: {exit}");
    Ok(())
}
