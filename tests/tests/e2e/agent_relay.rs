//! The chart relay, the backup-before-upgrade handshake, and rollback/preflight tasks: the real
//! `skoala-agent` process, real helm (both majors) against emulated clusters.
//!
//! The far end of the session is the testkit's recording stand-in gateway
//! (`skoala_e2e::stand_in::Recorder`), not the coordinator: these tests inject what a real
//! coordinator never does on purpose (a corrupted chart, backup acknowledgements held back)
//! and send tasks one at a time. It answers chart requests and stores backups with the
//! coordinator's own code (`skoala_coordinator::relay`, `skoala_coordinator::backups`), in a
//! data dir of its own. The same paths through the real coordinator are covered by the plan
//! tests (`plan_*.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use skoala_coordinator::data_dir::DataDir;
use skoala_coordinator::{backups, relay};
use skoala_e2e::charts::{PASSWORD, UpgradeFixture, custom_values, start_repo};
use skoala_e2e::stand_in::{self, Recorder, repo_source, task};
use skoala_e2e::tools::{helm_versions, our_bin, tool};
use skoala_e2e::wait;
use skoala_proto::v1::agent_message::Body;
use skoala_proto::v1::{RelayedChart, StepPhase, TaskKind, TaskOutcome, TaskResult, chart_source};

const TIMEOUT: Duration = Duration::from_secs(240);

fn relay_source(chart: &relay::RelayedChart) -> Option<chart_source::Source> {
    Some(chart_source::Source::Relay(RelayedChart {
        sha256: chart.sha256.clone(),
        size: chart.size,
    }))
}

/// An emulated cluster with skoala-init 0.19.0 installed by hand (with a password in its
/// values), the stand-in gateway, and the real agent using `helm`.
struct Setup {
    fx: UpgradeFixture,
    shared: Arc<Recorder>,
    dir: tempfile::TempDir,
    agent: tokio::process::Child,
    log: PathBuf,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Setup {
    async fn new(label: &'static str, helm: &std::path::Path, name: &str) -> Setup {
        let repo = start_repo().await.expect("chart repository");
        let fx = UpgradeFixture::start(label, helm, skoala_sim::ClusterConfig::new(name))
            .await
            .expect("fixture");
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await
            .expect("install 0.19.0");
        drop(repo);

        let dir = tempfile::tempdir().expect("tmp");
        let ca_file = dir.path().join("ca.pem");
        let data_dir = DataDir::new(dir.path().join("data"));
        let (gateway, shared) = stand_in::serve_recorder(&ca_file, Some(data_dir))
            .await
            .expect("serve the stand-in gateway");
        let (addr, serving) = (gateway.addr, gateway.task);

        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let agent = tokio::process::Command::new(our_bin("skoala-agent"))
            .arg("--coordinator")
            .arg(format!("https://{addr}"))
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--kubeconfig")
            .arg(fx.cluster.kubeconfig_path())
            .args(["--token", "stand-in-token", "--heartbeat", "1s"])
            .arg("--helm")
            .arg(helm)
            .arg("--chart-cache")
            .arg(dir.path().join("agent-charts"))
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("RUST_LOG", "info")
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the agent");
        let setup = Setup {
            fx,
            shared,
            dir,
            agent,
            log,
            serving,
        };
        wait::until("the agent's session", TIMEOUT, || async {
            setup.shared.has_session().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
        setup
    }

    fn data_dir(&self) -> DataDir {
        DataDir::new(self.dir.path().join("data"))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn result(&self, op: &str) -> TaskResult {
        wait::until(&format!("the result of {op}"), TIMEOUT, || async {
            self.shared.result_of(op)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", self.agent_log()))
    }

    /// Revision numbers of the release, from Helm's release Secrets.
    async fn revisions(&self) -> Vec<i32> {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.fx.client.clone(), "skoala-system");
        let list = api
            .list(&kube::api::ListParams::default().labels("owner=helm,name=skoala-init"))
            .await
            .expect("list release secrets");
        let mut revs: Vec<i32> = list
            .items
            .iter()
            .filter_map(|s| s.metadata.labels.as_ref()?.get("version")?.parse().ok())
            .collect();
        revs.sort();
        revs
    }

    async fn backup_secrets(&self) -> usize {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.fx.client.clone(), "skoala-system");
        api.list(&kube::api::ListParams::default().labels("fleet.skoala.io/backup-of=skoala-init"))
            .await
            .expect("list backups")
            .items
            .len()
    }

    async fn finish(mut self) {
        let _ = self.agent.kill().await;
        self.serving.abort();
        assert!(
            !self.agent_log().contains(PASSWORD),
            "the password leaked into the agent log"
        );
    }
}

/// Prepares 0.19.1 for relaying the way the coordinator does (`helm pull` into its data dir),
/// then takes the repository away: the agent can only get the chart over its session.
async fn prepared_chart(setup: &Setup, version: &str) -> relay::RelayedChart {
    let repo = start_repo().await.expect("chart repository");
    let helm = skoala_upgrade::Helm::detect(tool("helm"), "")
        .await
        .expect("helm");
    let chart = relay::prepare(
        &repo.url(),
        "skoala-init",
        version,
        &helm,
        &setup.data_dir(),
    )
    .await
    .expect("prepare the relayed chart");
    drop(repo);
    chart
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_chart_upgrades_a_cluster_with_no_repository_and_the_backup_is_stored_first() {
    let setup = Setup::new("helm4", &tool("helm"), "relay-1").await;
    let chart = prepared_chart(&setup, "0.19.1").await;
    assert_eq!(chart.sha256.len(), 64);

    // Hold the backup acknowledgement: the upgrade must not start until the coordinator has
    // stored the backup.
    setup.shared.hold_acks.store(true, Ordering::SeqCst);
    setup
        .shared
        .send(task(
            "op-relay",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let upload = wait::until("the backup upload", TIMEOUT, || async {
        setup.shared.bodies().into_iter().find_map(|b| match b {
            Body::BackupUpload(u) if u.operation_id == "op-relay" => Some(u),
            _ => None,
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
    // The stored file: one per cluster/operation/generation, 0600, the values as uploaded.
    let cluster_id = setup.shared.cluster_id().expect("a message");
    let file = backups::path_for(&setup.data_dir(), &cluster_id, &upload).expect("path");
    let bytes = std::fs::read(&file).expect("the backup is on the coordinator's disk");
    assert!(String::from_utf8_lossy(&bytes).contains(PASSWORD));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // While the acknowledgement is held, helm has not begun: only revision 1 exists.
    assert_eq!(
        setup.revisions().await,
        vec![1],
        "no upgrade before the ack"
    );
    assert!(
        !setup
            .shared
            .steps_of("op-relay")
            .contains(&("upgrade".into(), StepPhase::Started as i32)),
        "the upgrade step did not start"
    );
    // notify_one keeps a permit if the held acknowledgement is not waiting yet.
    setup.shared.hold_acks.store(false, Ordering::SeqCst);
    setup.shared.release_acks.notify_one();

    let result = setup.result("op-relay").await;
    assert_eq!(
        result.outcome,
        TaskOutcome::Succeeded as i32,
        "{result:?}\nagent log:\n{}",
        setup.agent_log()
    );
    let after = result.release_after.expect("release after");
    assert_eq!(after.chart_version, "0.19.1");
    assert_eq!(after.image_tags["skoala-agent.image.tag"], "v0.19.1");
    // Event order on the wire: chart request, backup upload, then the upgrade step.
    let bodies = setup.shared.bodies();
    let pos = |f: &dyn Fn(&Body) -> bool| bodies.iter().position(f).expect("message");
    let request = pos(&|b| matches!(b, Body::ChartRequest(r) if r.sha256 == chart.sha256));
    let backup = pos(&|b| matches!(b, Body::BackupUpload(u) if u.operation_id == "op-relay"));
    let upgrade = pos(&|b| {
        matches!(b, Body::StepProgress(p) if p.operation_id == "op-relay" && p.step == "upgrade"
            && p.phase == StepPhase::Started as i32)
    });
    assert!(
        request < backup && backup < upgrade,
        "{request} < {backup} < {upgrade}"
    );
    assert!(
        setup.agent_log().contains("relayed chart received"),
        "fetched over the session"
    );

    // Another upgrade of the same digest is served from the agent's cache (no new request),
    // and a reconnecting agent lists it in Hello — checked through the request count.
    let requests = || {
        setup
            .shared
            .bodies()
            .iter()
            .filter(|b| matches!(b, Body::ChartRequest(_)))
            .count()
    };
    assert_eq!(requests(), 1);
    setup
        .shared
        .send(task(
            "op-preflight-cached",
            TaskKind::Preflight,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let pre = setup.result("op-preflight-cached").await;
    assert_eq!(pre.outcome, TaskOutcome::Succeeded as i32, "{pre:?}");
    assert_eq!(requests(), 1, "the cached chart was not requested again");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_unknown_relayed_chart_is_refused_before_anything_changes() {
    let setup = Setup::new("helm4", &tool("helm"), "relay-2").await;
    let chart = prepared_chart(&setup, "0.19.1").await;

    // 1. The bytes arrive damaged (one bit flipped): the digest check refuses them.
    setup.shared.corrupt.store(true, Ordering::SeqCst);
    setup
        .shared
        .send(task(
            "op-corrupt",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&chart),
        ))
        .await;
    let result = setup.result("op-corrupt").await;
    assert_eq!(result.outcome, TaskOutcome::Refused as i32, "{result:?}");
    assert!(result.message.contains("sha256"), "{}", result.message);
    assert_eq!(result.failed_step, "chart");

    // 2. A digest the coordinator does not have: its error reaches the operator.
    setup.shared.corrupt.store(false, Ordering::SeqCst);
    let unknown = relay::RelayedChart {
        sha256: "0".repeat(64),
        ..chart.clone()
    };
    setup
        .shared
        .send(task(
            "op-unknown",
            TaskKind::Upgrade,
            "0.19.1",
            relay_source(&unknown),
        ))
        .await;
    let result = setup.result("op-unknown").await;
    assert_eq!(result.outcome, TaskOutcome::Refused as i32, "{result:?}");
    assert!(
        result.message.contains("has no chart"),
        "{}",
        result.message
    );

    // Nothing changed: one revision, no backup, no operation record, no stored backup.
    assert_eq!(setup.revisions().await, vec![1]);
    assert_eq!(setup.backup_secrets().await, 0);
    let records: kube::Api<ConfigMap> =
        kube::Api::namespaced(setup.fx.client.clone(), "skoala-system");
    assert!(
        records
            .get_opt("skoala-fleet-operation-skoala-init")
            .await
            .expect("get")
            .is_none(),
        "no operation record"
    );
    assert!(!setup.dir.path().join("data/backups").exists());
    setup.finish().await;
}

/// Upgrade (from a repository), preflight (passes; and refused for a version that does not
/// exist) and rollback tasks, with both helm majors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_preflight_tasks_with_both_helm_majors() {
    for (label, helm) in helm_versions() {
        let setup = Setup::new(label, &helm, &format!("rb-{label}")).await;
        let repo = start_repo().await.expect("chart repository");
        let url = repo.url();
        let s = &setup.shared;

        s.send(task("up", TaskKind::Upgrade, "0.19.1", repo_source(&url)))
            .await;
        let up = setup.result("up").await;
        assert_eq!(up.outcome, TaskOutcome::Succeeded as i32, "{label}: {up:?}");
        assert_eq!(setup.revisions().await, vec![1, 2], "{label}");

        // Preflight: passes for an existing version, refuses one that does not exist; writes
        // nothing either way.
        s.send(task(
            "pre-ok",
            TaskKind::Preflight,
            "0.19.2",
            repo_source(&url),
        ))
        .await;
        let pre = setup.result("pre-ok").await;
        assert_eq!(
            pre.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {pre:?}"
        );
        s.send(task(
            "pre-bad",
            TaskKind::Preflight,
            "9.9.9",
            repo_source(&url),
        ))
        .await;
        let bad = setup.result("pre-bad").await;
        assert_eq!(bad.outcome, TaskOutcome::Refused as i32, "{label}: {bad:?}");
        assert_eq!(bad.failed_step, "chart", "{label}: {bad:?}");
        assert_eq!(
            setup.revisions().await,
            vec![1, 2],
            "{label}: preflight changed nothing"
        );
        let backups_before = setup.backup_secrets().await;

        // Rollback to the previous deployed revision (0 = previous), with no chart source.
        let mut rb = task("rb", TaskKind::Rollback, "", None);
        rb.rollback_to_revision = 0;
        s.send(rb.clone()).await;
        let result = setup.result("rb").await;
        assert_eq!(
            result.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {result:?}\nagent log:\n{}",
            setup.agent_log()
        );
        let after = result.release_after.clone().expect("release after");
        assert_eq!(after.chart_version, "0.19.0", "{label}");
        assert_eq!(after.status, "deployed", "{label}");
        assert_eq!(after.revision, 3, "{label}");
        assert_eq!(result.revision_before, 2, "{label}");
        assert_eq!(
            setup.backup_secrets().await,
            backups_before + 1,
            "{label}: a backup before the rollback"
        );
        let steps = s.steps_of("rb");
        for step in ["preflight", "backup", "rollback", "verify"] {
            assert!(
                steps.contains(&(step.to_string(), StepPhase::Succeeded as i32)),
                "{label}: {step} succeeded: {steps:?}"
            );
        }
        let uploaded = s
            .bodies()
            .into_iter()
            .any(|b| matches!(b, Body::BackupUpload(u) if u.operation_id == "rb"));
        assert!(uploaded, "{label}: the rollback's backup was uploaded");

        // Re-delivery: the recorded outcome again, no new revision.
        s.send(rb).await;
        wait::until("the re-delivered rollback's result", TIMEOUT, || async {
            (s.results_of("rb").len() >= 2).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", setup.agent_log()));
        let again = &s.results_of("rb")[1];
        assert_eq!(
            again.outcome,
            TaskOutcome::Succeeded as i32,
            "{label}: {again:?}"
        );
        assert_eq!(
            setup.revisions().await,
            vec![1, 2, 3],
            "{label}: no second rollback"
        );
        drop(repo);
        setup.finish().await;
    }
}
