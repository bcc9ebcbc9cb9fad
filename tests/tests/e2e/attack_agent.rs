//! Issue 14, finding 4: a joined agent turned hostile. The attacker is a real joined cluster
//! (registered with a real token, holding the certificate the coordinator issued it) driven by
//! a raw tonic client, because the real agent would refuse to misbehave. The coordinator and
//! the other agents are the real processes. Each test asserts the defence held *and* that
//! nothing was lost: the real agents stay connected, the plan and the store are intact, and
//! the refusal is audited once.

use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::fleet::raw::{self, Creds, RawSession};
use skoala_e2e::fleet::{Coordinator, Fleet};
use skoala_e2e::wait;
use skoala_proto::v1::{
    AgentMessage, BackupUpload, ChartRequest, Hello, StepPhase, StepProgress, TaskOutcome,
    TaskResult, agent_message::Body, coordinator_message,
};
use skoala_upgrade::backup::sha256_hex;
use tonic::Code;

const EVIL: &str = "uid-hostile";
const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

fn msg(body: Body) -> AgentMessage {
    AgentMessage {
        cluster_id: EVIL.into(),
        body: Some(body),
    }
}

fn hello() -> AgentMessage {
    msg(Body::Hello(Hello {
        agent_version: "hostile".into(),
        ..Default::default()
    }))
}

/// Joins the fleet as a real cluster would (a token, Register, the issued certificate) and
/// opens its session.
async fn join(coord: &Coordinator) -> anyhow::Result<(Creds, RawSession)> {
    let token = coord.ctl().token(1, "1h").await?;
    let creds = raw::register(coord, &token, EVIL, "hostile").await?;
    let session = RawSession::open(coord, Some(&creds), hello())
        .await?
        .map_err(|s| anyhow::anyhow!("session refused: {s:?}"))?;
    coord.ctl().wait_connected("hostile", true).await?;
    Ok((creds, session))
}

fn upload(operation_id: &str, generation: i32) -> BackupUpload {
    let values = b"password: hunter2\n".to_vec();
    BackupUpload {
        operation_id: operation_id.into(),
        release: "skoala-init".into(),
        revision: 1,
        sha256: sha256_hex(&values),
        values_yaml: values,
        generation,
    }
}

fn progress(operation_id: &str) -> Body {
    Body::StepProgress(StepProgress {
        operation_id: operation_id.into(),
        step: "upgrade".into(),
        phase: StepPhase::Succeeded as i32,
        message: "said-by-hostile".into(),
        ..Default::default()
    })
}

/// The next `BackupStored` on the hostile session (pings and the rest skipped).
async fn backup_answer(session: &mut RawSession) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match session.inbound.message().await? {
                Some(m) => {
                    if let Some(coordinator_message::Body::BackupStored(ack)) = m.body {
                        return Ok(ack.error);
                    }
                }
                None => anyhow::bail!("the session ended"),
            }
        }
    })
    .await?
}

/// Every event of every plan (`skoalactl events -o json`).
async fn events(coord: &Coordinator) -> anyhow::Result<Vec<Value>> {
    let out = coord.ctl().ok(&["events", "-o", "json"]).await?;
    out.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_for_another_clusters_operation_are_dropped_and_audited_once()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    let coord = &pf.fleet.coordinator;
    let (_creds, mut evil) = join(coord).await?;

    let yaml = pf.plan_yaml(
        "forged",
        "0.19.2",
        "strategy: {canary: 0, maxConcurrency: 2}\nclusters:\n  matchLabels: {fleet: test}",
    );
    // --force: the hostile cluster reports no release at all, which reads as skew.
    let file = pf.scratch().join("forged.yaml");
    std::fs::write(&file, yaml)?;
    let path = file.to_string_lossy().to_string();
    let applied = pf
        .ctl()
        .run(&["plan", "apply", "-f", &path, "--force"])
        .await?;
    assert!(applied.success, "apply: {}", applied.stderr);

    // The hostile cluster speaks about work-1's operation: a success before work-1 ran it,
    // its progress, a backup under its name, and an answer to a check addressed to work-1.
    let victim = pf.fleet.clusters[0].kube_system_uid().to_string();
    let op = format!("forged.{victim}.upgrade-1");
    for body in [
        Body::TaskResult(TaskResult {
            operation_id: op.clone(),
            outcome: TaskOutcome::Succeeded as i32,
            message: "said-by-hostile".into(),
            ..Default::default()
        }),
        progress(&op),
        Body::TaskResult(TaskResult {
            operation_id: format!("preflight_forged_1-0.{victim}"),
            outcome: TaskOutcome::Succeeded as i32,
            ..Default::default()
        }),
        Body::BackupUpload(upload(&op, 7)),
    ] {
        evil.tx.send(msg(body)).await?;
    }
    let answer = backup_answer(&mut evil).await?;
    assert!(
        answer.contains("not stored"),
        "a backup for an operation never sent to this cluster is refused: {answer:?}"
    );

    // The plan runs as if nothing was said: every real target upgraded once.
    let plan = pf
        .wait_phase("forged", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
        assert_ne!(t["target"], EVIL, "{t:#}");
    }
    // helm's own records: exactly one upgrade per real release (the hostile cluster has none,
    // so `skew` names it; that is the truth, not a loss).
    for name in pf.cluster_names() {
        let h = pf.history(&name).await?;
        assert_eq!(h.len(), 2, "{name}: install + one upgrade: {h:#?}");
        assert_eq!(h[1]["status"], "deployed", "{name}: {h:#?}");
    }

    // Nothing the hostile cluster said reached the store: no event of it, no ignored result,
    // no backup file in its name.
    for e in events(coord).await? {
        assert_ne!(e["target"], EVIL, "{e:#}");
        let text = e.to_string();
        assert!(
            !text.contains("said-by-hostile") && !text.contains("ignored"),
            "{e:#}"
        );
    }
    let backups = coord.data_dir().join("backups").join(EVIL);
    assert!(!backups.exists(), "{} was written", backups.display());

    // Audited once for the session (the rest are counted), and the real agents stayed.
    let audited = coord.ctl().audit_of("session.unexpected_operation").await?;
    assert_eq!(audited.len(), 1, "{audited:#?}");
    assert_eq!(audited[0]["clusterId"], EVIL);
    for name in ["work-1", "work-2"] {
        pf.ctl().wait_connected(name, true).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_agent_is_dropped_and_closes_only_its_session() -> anyhow::Result<()> {
    let fleet = Fleet::start(1).await?;
    fleet.wait_connected(1).await?;
    let coord = &fleet.coordinator;
    let (_creds, mut evil) = join(coord).await?;

    // Progress for made-up operations, chart requests and uploads, as fast as the stream
    // takes them: far past the hard limit.
    let flood = async {
        for i in 0..3000u32 {
            let body = match i % 10 {
                0 => Body::ChartRequest(ChartRequest {
                    sha256: "0".repeat(64),
                }),
                1 => Body::BackupUpload(upload(&format!("made-up.{EVIL}.upgrade-{i}"), 1)),
                _ => progress(&format!("made-up.{EVIL}.upgrade-{i}")),
            };
            if evil.tx.send(msg(body)).await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), flood).await?;
    let status = evil.closing_status(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too many dropped messages"),
        "{status:?}"
    );

    // The store holds none of it; the audit log a few lines, not thousands.
    assert_eq!(events(coord).await?, Vec::<Value>::new());
    assert!(!coord.data_dir().join("backups").join(EVIL).exists());
    let ctl = coord.ctl();
    ctl.wait_audit("session.flood", "too many dropped messages")
        .await?;
    ctl.wait_audit("session.dropped", "more session.unexpected_operation")
        .await?;
    let session_lines = ctl
        .audit()
        .await?
        .into_iter()
        .filter(|e| {
            e["clusterId"] == EVIL
                && e["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("session."))
        })
        .count();
    assert!(
        session_lines <= 5,
        "{session_lines} audit lines for one flood"
    );

    // The real agent never noticed.
    let work = ctl.wait_connected("work-1", true).await?;
    assert_eq!(work["connected"], true);
    Ok(())
}

/// Bytes of the chart the cap test relays: more than the session's buffers hold (32 messages
/// of 256 KiB in the session channel, HTTP/2's 2 MiB stream window), so while the hostile
/// agent does not read, each transfer that started stays in flight.
const BIG_CHART: usize = 16 * 1024 * 1024;
/// Chart requests sent at once; the coordinator's cap is 2 transfers per session.
const REQUESTS: usize = 8;
const CAP: usize = 2;
/// Backup uploads for operations never sent, refused while the transfers fill the channel.
const BACKUPS: usize = 3;

/// What came back for the chart requests: whole transfers, refusals, bytes; and the refusals
/// of backup uploads.
#[derive(Debug, Default)]
struct ChartAnswers {
    served: usize,
    refused: Vec<String>,
    bytes: usize,
    backups_refused: Vec<String>,
}

/// Reads the session until `served` transfers ended, `refused` chart refusals and
/// `backups_refused` backup refusals came (pings and other messages skipped).
async fn chart_answers(
    session: &mut RawSession,
    sha256: &str,
    served: usize,
    refused: usize,
    backups_refused: usize,
) -> anyhow::Result<ChartAnswers> {
    let mut got = ChartAnswers::default();
    tokio::time::timeout(Duration::from_secs(120), async {
        while got.served < served
            || got.refused.len() < refused
            || got.backups_refused.len() < backups_refused
        {
            let m = session.inbound.message().await.map_err(|s| {
                anyhow::anyhow!("the session closed: {s:?}; answers so far {got:?}")
            })?;
            let Some(m) = m else {
                anyhow::bail!("the session ended: {got:?}");
            };
            match m.body {
                Some(coordinator_message::Body::ChartChunk(c)) => {
                    assert_eq!(c.sha256, sha256);
                    if !c.error.is_empty() {
                        got.refused.push(c.error);
                    } else {
                        got.bytes += c.data.len();
                        got.served += usize::from(c.last);
                    }
                }
                Some(coordinator_message::Body::BackupStored(b)) => {
                    got.backups_refused.push(b.error);
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the chart answers did not all come: {got:?}"))??;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_transfers_beyond_the_cap_are_refused_and_the_session_goes_on() -> anyhow::Result<()>
{
    let fleet = Fleet::start(1).await?;
    fleet.wait_connected(1).await?;
    let coord = &fleet.coordinator;
    // A chart in the relay cache, where `plan apply` of a relay plan puts it (as the
    // benchmarks do): the coordinator serves it by digest to any joined agent.
    let chart = vec![7u8; BIG_CHART];
    let sha = sha256_hex(&chart);
    let data_dir = skoala_coordinator::data_dir::DataDir::new(coord.data_dir());
    let path = skoala_coordinator::relay::by_digest(&data_dir, &sha);
    std::fs::create_dir_all(path.parent().expect("folder"))?;
    std::fs::write(&path, &chart)?;
    let (_creds, mut evil) = join(coord).await?;

    // Many transfers asked for at once, and nothing read until the coordinator has answered
    // every request: the transfers it started cannot finish meanwhile.
    let request = || {
        msg(Body::ChartRequest(ChartRequest {
            sha256: sha.clone(),
        }))
    };
    for _ in 0..REQUESTS {
        evil.tx.send(request()).await?;
    }
    let over = (REQUESTS - CAP) as u64;
    wait::until(
        "the requests over the cap refused",
        Duration::from_secs(60),
        || async { (coord.refusals("session.quota_exceeded").await >= over).then_some(()) },
    )
    .await?;
    // Backup uploads refused while the channel is full: the agent waits for each answer too.
    for i in 0..BACKUPS {
        let op = format!("made-up.{EVIL}.upgrade-{i}");
        evil.tx
            .send(msg(Body::BackupUpload(upload(&op, 1))))
            .await?;
    }
    wait::until(
        "the backup uploads refused",
        Duration::from_secs(60),
        || async {
            let n = coord.refusals("session.unexpected_operation").await;
            (n >= BACKUPS as u64).then_some(())
        },
    )
    .await?;

    let got = chart_answers(&mut evil, &sha, CAP, REQUESTS - CAP, BACKUPS).await?;
    assert_eq!(got.served, CAP, "{got:?}");
    assert_eq!(got.bytes, CAP * BIG_CHART, "whole transfers: {got:?}");
    assert_eq!(got.refused.len(), REQUESTS - CAP, "{got:?}");
    for reason in &got.refused {
        assert_eq!(
            reason, "too many chart requests from this agent at once; retry later",
            "{got:?}"
        );
    }
    assert_eq!(
        got.backups_refused,
        vec!["backup not stored: no such operation for this cluster"; BACKUPS],
        "every refused upload answered: {got:?}"
    );
    assert_eq!(
        coord.refusals("session.quota_exceeded").await,
        over,
        "refused exactly the requests over the cap"
    );

    // The session goes on: with the transfers done, a chart is served again.
    evil.tx.send(request()).await?;
    let again = chart_answers(&mut evil, &sha, 1, 0, 0).await?;
    assert_eq!((again.bytes, again.refused.len()), (BIG_CHART, 0));

    // Audited once for the session, naming the cap; the real agent never noticed.
    let ctl = coord.ctl();
    let audited = ctl.audit_of("session.quota_exceeded").await?;
    assert_eq!(audited.len(), 1, "{audited:#?}");
    assert_eq!(audited[0]["clusterId"], EVIL);
    assert!(
        audited[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("transfers in flight")),
        "{audited:#?}"
    );
    ctl.wait_connected("hostile", true).await?;
    ctl.wait_connected("work-1", true).await?;
    Ok(())
}
