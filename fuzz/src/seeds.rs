//! Valid inputs for every target, built from the product's own types so they stay valid as
//! the formats change: libFuzzer starts from them (`skoala-fuzz-seeds` writes them into
//! `corpus/`), and the replay test runs them too.

use std::io::Write;
use std::time::Duration;

use prost::Message;
use skoala_proto::v1 as pb;

/// The seeds of the target `name` (none for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "plan_document" => vec![PLAN.as_bytes().to_vec()],
        "window" => vec![
            b"0 2 * * SAT\n4h\nAsia/Shanghai".to_vec(),
            b"Sat,Sun\n02:00\n06:00\nEurope/Berlin".to_vec(),
            b"30 1 * * *\n90m\nAmerica/New_York".to_vec(),
        ],
        "duration" => ["4h", "1h30m", "PT4H", "90m", "2d", "500ms", "1h 30m"]
            .iter()
            .map(|d| d.as_bytes().to_vec())
            .collect(),
        "helm_release" => vec![helm_release()],
        "chart_archive" => vec![chart_archive()],
        "agent_messages" => agent_messages(),
        "coordinator_messages" => coordinator_messages(),
        "admin_messages" => vec![
            pb::ApplyPlanRequest {
                document: PLAN.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ],
        "pem" => pem(),
        "admin_config" => vec![admin_config()],
        "names" => vec![
            b"0a1b2c3d-aaaa-bbbb-cccc-0123456789ab\nprod-eu-1\nfleet.skoala.io/window\nemea"
                .to_vec(),
            b"uid-1\ngke_project_zone_prod\nenv\nprod".to_vec(),
        ],
        "log_segment" => log_segments(),
        _ => Vec::new(),
    }
}

/// The reference plan of docs/plan-reference.md.
const PLAN: &str = r#"apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata:
  name: skoala-0-19-2
  labels: {team: platform}
spec:
  version: 0.19.2
  repository: {name: skoala, url: https://release.daocloud.io/chartrepo/skoala}
  chartSource: relay
  window: {schedule: "0 2 * * SAT", duration: 4h, timeZone: Asia/Shanghai}
  windows:
    emea: {days: [Sat, Sun], startTime: "02:00", endTime: "06:00", timeZone: Europe/Berlin}
  windowLabel: fleet.skoala.io/window
  strategy: {canary: 1, maxConcurrency: 10%, maxFailures: 2, rollbackOnFailure: true}
  requireApproval: beforeWorkers
  convergence: auto
  expectedDuration: 10m
  clusters:
    matchLabels: {env: prod}
"#;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

/// A release record as Helm stores it in its Secret: JSON, gzip, base64.
fn helm_release() -> Vec<u8> {
    use base64::Engine;
    let json = r#"{"name":"skoala-init","namespace":"skoala-system","version":3,
        "info":{"status":"deployed","last_deployed":"2026-12-01T02:00:00Z"},
        "chart":{"metadata":{"name":"skoala-init","version":"0.19.2","appVersion":"0.19.2"},
                 "values":{"image":{"tag":"v0.19.1"}}},
        "config":{"image":{"tag":"v0.19.2"}}}"#;
    base64::engine::general_purpose::STANDARD
        .encode(gzip(json.as_bytes()))
        .into_bytes()
}

/// A packaged chart with a `Chart.yaml` and one CRD, as `helm package` lays it out.
fn chart_archive() -> Vec<u8> {
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
               metadata: {name: gateways.skoala.io}\nspec:\n  group: skoala.io\n  \
               names: {kind: Gateway, plural: gateways}\n  scope: Namespaced\n  versions: []\n";
    let files = [
        (
            "skoala-init/Chart.yaml",
            "apiVersion: v2\nname: skoala-init\nversion: 0.19.2\n",
        ),
        ("skoala-init/values.yaml", "image: {tag: v0.19.2}\n"),
        ("skoala-init/crds/gateway.yaml", crd),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, text.as_bytes())
            .expect("tar in memory");
    }
    gzip(&tar.into_inner().expect("tar in memory"))
}

fn agent_messages() -> Vec<Vec<u8>> {
    use pb::agent_message::Body;
    let hello = pb::AgentMessage {
        cluster_id: "prod-1".into(),
        body: Some(Body::Hello(pb::Hello {
            agent_version: "0.1.0".into(),
            identity: Some(identity()),
            ..Default::default()
        })),
    };
    let result = pb::AgentMessage {
        cluster_id: "prod-1".into(),
        body: Some(Body::TaskResult(pb::TaskResult {
            operation_id: "plan_skoala-0-19-2_1.prod-1".into(),
            message: "upgraded".into(),
            ..Default::default()
        })),
    };
    let register = pb::RegisterRequest {
        token: "skt_abc".into(),
        identity: Some(identity()),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".into(),
        ..Default::default()
    };
    vec![
        hello.encode_to_vec(),
        result.encode_to_vec(),
        register.encode_to_vec(),
    ]
}

fn identity() -> pb::ClusterIdentity {
    pb::ClusterIdentity {
        cluster_id: "prod-1".into(),
        name: "prod-1".into(),
        labels: [("env".to_string(), "prod".to_string())].into(),
    }
}

fn coordinator_messages() -> Vec<Vec<u8>> {
    use pb::coordinator_message::Body;
    let source = pb::ChartSource {
        source: Some(pb::chart_source::Source::Repository(pb::ChartRepository {
            name: "skoala".into(),
            url: "https://release.daocloud.io/chartrepo/skoala".into(),
        })),
    };
    let task = pb::CoordinatorMessage {
        body: Some(Body::Task(pb::Task {
            operation_id: "plan_skoala-0-19-2_1.prod-1".into(),
            kind: pb::TaskKind::Upgrade as i32,
            release: Some(pb::ReleaseSpec {
                release: "skoala-init".into(),
                namespace: "skoala-system".into(),
                chart_name: "skoala-init".into(),
                version: "0.19.2".into(),
                source: Some(source),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    vec![task.encode_to_vec()]
}

fn pem() -> Vec<Vec<u8>> {
    let sep = crate::SEPARATOR;
    let (csr, key) = skoala_coordinator::pki::generate_csr("prod-1").expect("a CSR");
    let ca = crate::fleet_ca();
    let issued = ca
        .sign_agent_csr(&csr, "prod-1", Duration::from_secs(3600))
        .expect("signed");
    let identity = format!("{key}{sep}{}{sep}{}", issued.cert_pem, ca.cert_pem());
    vec![csr.into_bytes(), identity.into_bytes()]
}

fn admin_config() -> Vec<u8> {
    let config = skoala_support::admin_config::AdminConfig {
        endpoint: "https://coordinator.skoala-system:7443".into(),
        certificate_authority: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            .into(),
        client_certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        client_key: "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n".into(),
    };
    serde_yaml::to_string(&config)
        .expect("admin.yaml as YAML")
        .into_bytes()
}

/// Segments as the writer stores them: an audit segment (as the bytes its `data` is the
/// base64 of, and as `data` itself) and a plan's events.
fn log_segments() -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use skoala_kubestore::log::{self, Audit, Entry, Event};

    fn seed(flags: u8, first: u16, last: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flags];
        out.extend(first.to_le_bytes());
        out.extend(last.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }
    let audit: Vec<Entry<Audit>> = (1..=3)
        .map(|id| Entry {
            id,
            at_ms: 1_796_000_000_000 + id as i64,
            body: Audit {
                kind: "cluster.registered".into(),
                cluster_id: "0a1b2c3d-aaaa-bbbb-cccc-0123456789ab".into(),
                peer: "10.0.0.7:4411".into(),
                detail: format!("token {id}"),
            },
        })
        .collect();
    let events: Vec<Entry<Event>> = (7..=8)
        .map(|id| Entry {
            id,
            at_ms: 1_796_000_000_000,
            body: Event {
                kind: "task.result".into(),
                target: "0a1b2c3d".into(),
                target_name: "prod-eu-1".into(),
                operation_id: "skoala-0-19-2.0a1b2c3d.upgrade-1".into(),
                step: "verify".into(),
                state: "succeeded".into(),
                message: "upgraded".into(),
                duration_ms: 93_000,
            },
        })
        .collect();
    let audit_data = log::encode(&audit).expect("seed entries encode");
    let events_data = log::encode(&events).expect("seed entries encode");
    let raw = |data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("our own base64")
    };
    vec![
        seed(0, 1, 3, &raw(&audit_data)),
        seed(2, 1, 3, audit_data.as_bytes()),
        seed(1, 7, 8, &raw(&events_data)),
    ]
}
