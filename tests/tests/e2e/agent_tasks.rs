//! The agent runs a coordinator's upgrade task with the real executor: the real `skoala-agent`
//! process, the real helm against an emulated cluster, the test chart repository.
//!
//! The far end of the session is the testkit's recording stand-in gateway
//! (`skoala_e2e::stand_in::Recorder`): it signs the agent's CSR with the coordinator's own CA
//! code, speaks the real wire contract over real mTLS, and lets the test send one task at a
//! time — the same task twice, or one past its deadline — and see every message the agent
//! sends back. Tasks from the real coordinator are covered by the plan tests (`plan_*.rs`).

use std::sync::Arc;
use std::time::Duration;

use skoala_e2e::charts::{HelmHome, start_repo};
use skoala_e2e::stand_in::{self, Recorder, now_unix, repo_source, task};
use skoala_e2e::tools::{our_bin, tool};
use skoala_e2e::wait;
use skoala_proto::v1::agent_message::Body;
use skoala_proto::v1::{StepPhase, Task, TaskKind, TaskOutcome, TaskResult};
use skoala_upgrade::record::{OperationRecord, RecordPhase, RecordStore};

const TIMEOUT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "t4sk-values-s3cret";

/// An upgrade of `skoala-init` to `version` from the repository at `repo_url`, to be
/// started before `deadline` (Unix seconds).
fn upgrade_task(op: &str, repo_url: &str, version: &str, deadline: i64) -> Task {
    Task {
        start_deadline_unix: deadline,
        ..task(op, TaskKind::Upgrade, version, repo_source(repo_url))
    }
}

/// A working cluster with skoala-init 0.19.0 (installed by hand, with a secret value), the
/// chart repository, and the stand-in gateway; the agent is started separately.
struct Setup {
    url: String,
    cluster: skoala_sim::Cluster,
    /// Holds the CA file and the agent log (deleted on drop).
    _home: HelmHome,
    shared: Arc<Recorder>,
    addr: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
    log: std::path::PathBuf,
    _repo: skoala_e2e::charts::ChartRepo,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Setup {
    async fn new(name: &str) -> Setup {
        let repo = start_repo().await.expect("chart repository");
        let url = repo.url();
        let cluster = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new(name))
            .await
            .expect("emulated cluster");
        let home = HelmHome::new().expect("helm home");
        let values = home.path().join("custom.yaml");
        std::fs::write(
            &values,
            format!("skoala-agent:\n  logLevel: debug\n  auth:\n    password: {PASSWORD}\n"),
        )
        .expect("values");
        let values = values.to_str().expect("utf-8");
        home.install_from_repo(
            &tool("helm"),
            cluster.kubeconfig_path(),
            &url,
            "skoala-init",
            "0.19.0",
            &["-f", values],
        )
        .await
        .expect("helm install");

        // The stand-in gateway on a loopback port, with the coordinator's CA code.
        let ca_file = home.path().join("ca.pem");
        let (gateway, shared) = stand_in::serve_recorder(&ca_file, None)
            .await
            .expect("serve the stand-in gateway");
        let (addr, serving) = (gateway.addr, gateway.task);
        let log = home.path().join("agent.log");
        Setup {
            url,
            cluster,
            _home: home,
            shared,
            addr,
            ca_file,
            log,
            _repo: repo,
            serving,
        }
    }

    /// Starts the real agent and waits for its session.
    async fn start_agent(&self) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let agent = tokio::process::Command::new(our_bin("skoala-agent"))
            .arg("--coordinator")
            .arg(format!("https://{}", self.addr))
            .arg("--ca-file")
            .arg(&self.ca_file)
            .arg("--kubeconfig")
            .arg(self.cluster.kubeconfig_path())
            .args(["--token", "stand-in-token", "--heartbeat", "1s"])
            .arg("--helm")
            .arg(tool("helm"))
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("RUST_LOG", "info")
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the agent");
        wait::until("the agent's session", TIMEOUT, || async {
            self.shared.has_session().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", self.agent_log()));
        agent
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_an_upgrade_task_with_the_executor() {
    let setup = Setup::new("tasks-1").await;
    let mut agent = setup.start_agent().await;
    let (shared, url) = (&setup.shared, &setup.url);
    let agent_log = || setup.agent_log();

    // 1. An upgrade to 0.19.1.
    shared
        .send(upgrade_task("op-1", url, "0.19.1", now_unix() + 600))
        .await;
    let result = wait::until("the task result", TIMEOUT, || async {
        shared.result_of("op-1")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent_log()));
    assert_eq!(
        result.outcome,
        TaskOutcome::Succeeded as i32,
        "{result:?}\nagent log:\n{}",
        agent_log()
    );
    let after = result.release_after.clone().expect("release after");
    assert_eq!(after.chart_version, "0.19.1");
    assert_eq!(after.status, "deployed");
    assert_eq!(after.image_tags["skoala-agent.image.tag"], "v0.19.1");
    assert_eq!(result.revision_before, 1);

    let bodies = shared.bodies();
    let pos = |f: &dyn Fn(&Body) -> bool| bodies.iter().position(f);
    let accepted = pos(&|b| matches!(b, Body::TaskAccepted(a) if a.operation_id == "op-1"))
        .expect("TaskAccepted");
    let backup = pos(&|b| matches!(b, Body::BackupUpload(u) if u.operation_id == "op-1"))
        .expect("BackupUpload");
    let done =
        pos(&|b| matches!(b, Body::TaskResult(r) if r.operation_id == "op-1")).expect("TaskResult");
    assert!(
        accepted < backup && backup < done,
        "order: accepted, backup, result"
    );
    let steps: Vec<(String, i32)> = bodies
        .iter()
        .filter_map(|b| match b {
            Body::StepProgress(p) if p.operation_id == "op-1" => Some((p.step.clone(), p.phase)),
            _ => None,
        })
        .collect();
    for step in ["preflight", "backup", "upgrade", "verify"] {
        assert!(
            steps.contains(&(step.to_string(), StepPhase::Succeeded as i32)),
            "{step} succeeded: {steps:?}"
        );
    }
    // The backup carries the values (that is its job); nothing else may.
    if let Body::BackupUpload(u) = &bodies[backup] {
        assert!(String::from_utf8_lossy(&u.values_yaml).contains(PASSWORD));
        assert_eq!(u.sha256.len(), 64);
        assert_eq!(u.release, "skoala-init");
    }
    for b in &bodies {
        if !matches!(b, Body::BackupUpload(_)) {
            assert!(!format!("{b:?}").contains(PASSWORD), "leaked in {b:?}");
        }
    }
    assert!(!agent_log().contains(PASSWORD), "leaked in the agent log");

    // 2. Re-delivery of the same operation (the coordinator did not get the result): the
    //    recorded outcome again, no second upgrade.
    shared
        .send(upgrade_task("op-1", url, "0.19.1", now_unix() + 600))
        .await;
    wait::until("the re-delivered task's result", TIMEOUT, || async {
        (shared.results_of("op-1").len() >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent_log()));
    let again: Vec<TaskResult> = shared
        .bodies()
        .into_iter()
        .filter_map(|b| match b {
            Body::TaskResult(r) if r.operation_id == "op-1" => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        again[1].outcome,
        TaskOutcome::Succeeded as i32,
        "{:?}",
        again[1]
    );
    assert_eq!(
        again[1].release_after.as_ref().map(|r| r.revision),
        Some(after.revision),
        "no new revision on re-delivery"
    );

    // 3. A task whose start deadline has passed is refused before anything happens.
    shared
        .send(upgrade_task("op-late", url, "0.19.2", now_unix() - 1))
        .await;
    let late = wait::until("the late task's refusal", TIMEOUT, || async {
        shared.result_of("op-late")
    })
    .await
    .expect("refusal");
    assert_eq!(late.outcome, TaskOutcome::Refused as i32);
    assert!(late.message.contains("deadline"), "{late:?}");

    let _ = agent.kill().await;
    setup.serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_lists_an_operation_a_dead_agent_left_unfinished() {
    let setup = Setup::new("tasks-2").await;
    // What an agent killed mid-upgrade leaves behind: the record of a running operation.
    let client = setup.cluster.client().await.expect("client");
    let mut records = RecordStore::new(&client, "skoala-system", "skoala-init");
    records.load().await.expect("load the record");
    records
        .save(&OperationRecord {
            operation_id: "op-crashed".into(),
            phase: RecordPhase::Running,
            target_version: "0.19.1".into(),
            attempt: 1,
            revision_before: Some(1),
            version_before: Some("0.19.0".into()),
            backup_generation: None,
            message: String::new(),
        })
        .await
        .expect("write the record");

    let mut agent = setup.start_agent().await;
    let hello = wait::until("the agent's hello", TIMEOUT, || async {
        setup.shared.bodies().into_iter().find_map(|b| match b {
            Body::Hello(h) => Some(h),
            _ => None,
        })
    })
    .await
    .expect("hello");
    assert_eq!(
        hello.unfinished_operation_ids,
        vec!["op-crashed".to_string()]
    );

    // The coordinator re-sends it; the executor finishes the job.
    setup
        .shared
        .send(upgrade_task(
            "op-crashed",
            &setup.url,
            "0.19.1",
            now_unix() + 600,
        ))
        .await;
    let result = wait::until("the re-sent task's result", TIMEOUT, || async {
        setup.shared.result_of("op-crashed")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
    assert_eq!(
        result.outcome,
        TaskOutcome::Succeeded as i32,
        "{result:?}\nagent log:\n{}",
        setup.agent_log()
    );
    assert_eq!(
        result.release_after.map(|r| r.chart_version).as_deref(),
        Some("0.19.1")
    );
    let _ = agent.kill().await;
    setup.serving.abort();
}
