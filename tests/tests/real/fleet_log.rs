//! The audit log as `FleetLog` segments on a real API server (`skoala_kubestore::log`): the
//! stream writer stores, seals and rewrites segments through the write lanes behind a real
//! Lease's fence, speaking as a ServiceAccount with only the rights the coordinator gets on
//! `fleetlogs`; a reader finds entries across sealed segments and the open one; a second
//! leader seals what the first left open and continues its ids; the first, once it released
//! the Lease, can write nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ListParams};
use skoala_e2e::real;
use skoala_kubestore::crd::{self, FleetLog, FleetLogSpec, Kind};
use skoala_kubestore::lease::{self, Config, Elector, Leadership};
use skoala_kubestore::log::writer::{FleetLogs, GroupCommit, SegmentSink};
use skoala_kubestore::log::{self, Audit, Entry, LogStream, StreamWriter};
use skoala_kubestore::write::{Budget, Writer};

use crate::crds::cluster_with_crds;
use crate::lease::{account, coordinator_rules};

const NS: &str = real::FLEET_NAMESPACE;

/// What the coordinator needs on its log segments: `patch` (a server-side apply creates or
/// rewrites one), `create` (the API server authorizes an apply that creates as a create
/// too), `get` and `list` (reads, and the segments a new leader continues from).
fn log_rules() -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![crd::GROUP.into()]),
        resources: Some(vec![Kind::FleetLog.plural().into()]),
        verbs: ["patch", "create", "get", "list"]
            .iter()
            .map(|v| v.to_string())
            .collect(),
        ..Default::default()
    }
}

async fn lead(client: &kube::Client, pod: &str) -> anyhow::Result<Leadership> {
    let elector = Elector::new(client.clone(), Config::new(NS, lease::identity(pod)))?;
    Ok(elector.acquire().await?)
}

async fn stored(api: &Api<FleetLog>) -> anyhow::Result<Vec<FleetLog>> {
    Ok(api.list(&ListParams::default()).await?.items)
}

/// An audit entry whose JSON line is about 16 KiB, so 16 of them fill a segment.
fn bulky(n: u64) -> Audit {
    Audit {
        kind: "admin.created".into(),
        cluster_id: String::new(),
        peer: "bootstrap".into(),
        detail: format!("{n:>16000}"),
    }
}

async fn append_all(
    writer: &StreamWriter<Audit>,
    range: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<Vec<u64>> {
    let tasks: Vec<_> = range
        .map(|n| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(1_796_000_000_000 + n as i64, bulky(n)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    // The tasks reach the writer in any order; each gets one id of the range.
    ids.sort_unstable();
    Ok(ids)
}

/// Reads `after..` as a standby would: the index from a list, each segment by GET.
async fn read_all(api: &Api<FleetLog>, after: u64, limit: usize) -> anyhow::Result<Vec<u64>> {
    let index: BTreeMap<u64, String> = stored(api)
        .await?
        .into_iter()
        .filter_map(|s| Some((s.spec.first_id, s.metadata.name?)))
        .collect();
    let entries: Vec<Entry<Audit>> = log::read(&index, &[], after, limit, |name| {
        let api = api.clone();
        async move { api.get(&name).await.map(|s| s.spec) }
    })
    .await?;
    Ok(entries.iter().map(|e| e.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_stored_sealed_read_and_continued_by_the_next_leader_as_a_service_account()
-> anyhow::Result<()> {
    let cluster = cluster_with_crds("fleet-log").await?;
    let mut rules = coordinator_rules();
    rules.insert(0, log_rules());
    let kubeconfig = account(&cluster, NS, "coordinator", rules).await?;
    let client = real::client(&kubeconfig).await?;
    let api: Api<FleetLog> =
        Api::namespaced_with(client.clone(), NS, &Kind::FleetLog.api_resource());

    // The first leader writes 20 entries of 16 KiB: one sealed segment, one open.
    let first = lead(&client, "pod-a").await?;
    let lanes = Writer::start(
        FleetLogs::new(client.clone(), NS, first.fence()),
        Budget::default(),
    );
    let specs: Vec<FleetLogSpec> = stored(&api).await?.into_iter().map(|s| s.spec).collect();
    let writer = StreamWriter::start(
        lanes.clone(),
        LogStream::Audit,
        &specs,
        GroupCommit::default(),
    )
    .await?;
    assert_eq!(
        append_all(&writer, 1..=20).await?,
        (1..=20).collect::<Vec<_>>()
    );
    let segments = stored(&api).await?;
    let shape: Vec<(String, u64, u64, bool)> = segments
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.spec.first_id,
                s.spec.last_id,
                s.spec.sealed,
            )
        })
        .collect();
    assert_eq!(shape.len(), 2, "{shape:?}");
    assert!(shape[0].3 && !shape[1].3, "{shape:?}");
    assert_eq!(shape[0].0, LogStream::Audit.segment_name(1));
    assert_eq!((shape[0].1, shape[1].2), (1, 20));
    assert_eq!(shape[0].2 + 1, shape[1].1);

    // Read back from the server, as a standby reads.
    assert_eq!(read_all(&api, 0, 100).await?, (1..=20).collect::<Vec<_>>());
    assert_eq!(read_all(&api, 15, 3).await?, [16, 17, 18]);

    // The first leader stops gracefully; its fence closes, so its lanes write nothing more.
    let open = segments[1].spec.clone();
    drop(writer);
    first.release().await?;
    let refused = lanes
        .put(&LogStream::Audit.segment_name(open.first_id), &open)
        .await;
    let refused = format!("{:?}", refused.expect_err("a released leader cannot write"));
    assert!(refused.contains("Fenced"), "{refused}");

    // The next leader seals the open segment as it was, then continues after id 20.
    let second = lead(&client, "pod-b").await?;
    let lanes = Writer::start(
        FleetLogs::new(client.clone(), NS, second.fence()),
        Budget::default(),
    );
    let specs: Vec<FleetLogSpec> = stored(&api).await?.into_iter().map(|s| s.spec).collect();
    let writer =
        StreamWriter::start(lanes, LogStream::Audit, &specs, GroupCommit::default()).await?;
    let sealed = api
        .get(&LogStream::Audit.segment_name(open.first_id))
        .await?
        .spec;
    assert_eq!(
        sealed,
        FleetLogSpec {
            sealed: true,
            ..open
        }
    );
    assert_eq!(append_all(&writer, 21..=22).await?, [21, 22]);
    let last = api.get(&LogStream::Audit.segment_name(21)).await?.spec;
    assert_eq!((last.first_id, last.last_id, last.sealed), (21, 22, false));
    assert_eq!(read_all(&api, 0, 100).await?, (1..=22).collect::<Vec<_>>());
    drop(writer);
    second.release().await?;
    Ok(())
}
