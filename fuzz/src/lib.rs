//! `skoala-fuzz`: one function per parser that takes input from outside the process, for
//! libFuzzer to drive and for the test suite to replay.
//!
//! Each target takes arbitrary bytes and must return without panicking, whatever the bytes;
//! where a parser accepts its input, the target also checks a property the product relies on
//! (a parsed plan prints as YAML that parses again; a decoded protobuf message encodes and
//! decodes to itself).
//!
//! # Layout
//!
//! - this crate: the targets ([`TARGETS`]), plain functions over `&[u8]`, built with the
//!   workspace on stable Rust;
//! - `libfuzzer/`: the cargo-fuzz project (its own workspace, nightly, libFuzzer), one
//!   two-line binary per target that calls the function here;
//! - `corpus/<target>/`: the kept corpus, seeds plus what `scripts/fuzz.sh` found and
//!   minimised; `tests/replay.rs` runs every file of it through its target under
//!   `cargo test`, so a crash once found stays fixed.
//!
//! **Invariant:** a target never does I/O beyond memory and never sleeps, so a replay of the
//! whole corpus takes seconds and a fuzzing run measures the parser, not the machine.
#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::time::Duration;

use prost::Message;
use skoala_proto::v1 as pb;

/// A fuzz target: arbitrary bytes in, a panic on a defect.
pub type Target = fn(&[u8]);

/// Every target by name; the names are the folders under `corpus/` and the binaries under
/// `libfuzzer/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("plan_document", plan_document),
    ("window", window),
    ("duration", duration),
    ("helm_release", helm_release),
    ("chart_archive", chart_archive),
    ("agent_messages", agent_messages),
    ("coordinator_messages", coordinator_messages),
    ("admin_messages", admin_messages),
    ("pem", pem),
    ("admin_config", admin_config),
    ("names", names),
    ("log_segment", log_segment),
];

pub mod seeds;

/// Splits `data` at its first `N - 1` `separator`s into `N` text fields (missing ones empty),
/// so one byte string can feed a parser that takes several arguments.
fn fields<const N: usize>(data: &[u8], separator: char) -> [String; N] {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(N, separator);
    std::array::from_fn(|_| parts.next().unwrap_or_default().to_string())
}

/// A fixed instant, so a window's decisions do not depend on when the target runs.
fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_796_000_000).expect("a valid instant")
}

/// An `UpgradePlan` as `skoalactl plan apply` and the admin API read it: YAML, then
/// validation. A document that parses must print as YAML that parses again.
pub fn plan_document(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = skoala_plan::UpgradePlan::from_yaml(text) else {
        return;
    };
    let printed = doc.to_yaml();
    skoala_plan::UpgradePlan::from_yaml(&printed).unwrap_or_else(|e| {
        panic!("a parsed plan printed YAML that does not parse: {e}\n{printed}")
    });
    if let Ok(plan) = skoala_plan::validate(&doc) {
        for window in plan.window.iter().chain(plan.named_windows.values()) {
            let _ = window.next_opening(now());
            let _ = window.decide(now(), jiff::SignedDuration::from_hours(4));
        }
    }
}

/// A maintenance window as a plan spells it: cron schedule, duration and time zone, or days,
/// start, end and time zone; then its decisions at a fixed instant.
pub fn window(data: &[u8]) {
    let [schedule, duration, zone] = fields::<3>(data, '\n');
    let [days, start, end, zone2] = fields::<4>(data, '\n');
    let days: Vec<String> = days.split(',').map(String::from).collect();
    let windows = [
        skoala_plan::Window::cron(&schedule, &duration, &zone),
        skoala_plan::Window::days(&days, &start, &end, &zone2),
    ];
    for w in windows.into_iter().flatten() {
        let _ = w.open_at(now());
        let _ = w.next_opening(now());
        let _ = w.decide(now(), jiff::SignedDuration::from_mins(90));
    }
}

/// The one human-duration parser (every command line and plan document).
pub fn duration(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = skoala_support::duration::parse(&text);
    let _ = skoala_plan::window::parse_duration(&text);
}

/// A Helm release Secret's `release` data (base64, gzip, JSON), as the agent's inventory and
/// the executor read it from a cluster they do not control.
pub fn helm_release(data: &[u8]) {
    let keys = ["image.tag".to_string(), "global.imageTag".to_string()];
    let _ = skoala_upgrade::inventory::decode_release("fuzz", data, &keys);
}

/// A chart archive (tar + gzip) from a repository or the relay: its `Chart.yaml` and its CRDs.
pub fn chart_archive(data: &[u8]) {
    let _ = skoala_upgrade::chart::metadata(data);
    let _ = skoala_upgrade::crds::extract(data);
}

/// Decodes `data` as `M`; if it decodes, re-encoding and decoding must give the same message.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let message = M::decode(data).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a decoded message did not decode after encoding: {e}"));
    assert_eq!(
        message, again,
        "a message changed in an encode/decode round trip"
    );
    Some(message)
}

/// What the coordinator reads from agents: `RegisterRequest` (from anyone, before any
/// identity) and the `Session` stream's `AgentMessage`.
pub fn agent_messages(data: &[u8]) {
    let _ = round_trip::<pb::RegisterRequest>(data);
    let _ = round_trip::<pb::AgentMessage>(data);
}

/// What an agent reads from the coordinator; a task goes on to become the executor's spec
/// (the agent's own checks of a task it is sent).
pub fn coordinator_messages(data: &[u8]) {
    let _ = round_trip::<pb::RegisterResponse>(data);
    if let Some(message) = round_trip::<pb::CoordinatorMessage>(data)
        && let Some(pb::coordinator_message::Body::Task(task)) = message.body
    {
        let _ = skoala_agent::tasks::plan(&task);
    }
}

/// What the coordinator reads from operators on the admin API.
pub fn admin_messages(data: &[u8]) {
    let _ = round_trip::<pb::ApplyPlanRequest>(data);
    let _ = round_trip::<pb::CheckPlanRequest>(data);
    let _ = round_trip::<pb::CreateTokenRequest>(data);
    let _ = round_trip::<pb::RevokeClusterRequest>(data);
    let _ = round_trip::<pb::WatchEventsRequest>(data);
    let _ = round_trip::<pb::ListAuditRequest>(data);
    let _ = round_trip::<pb::UpdateClusterRequest>(data);
    let _ = round_trip::<pb::AllowRejoinRequest>(data);
    let _ = round_trip::<pb::CreateAdminRequest>(data);
    let _ = round_trip::<pb::RevokeAdminRequest>(data);
}

/// A fleet CA to sign with, made once: generating a key per input would measure the key
/// generator, not the parsers.
fn fleet_ca() -> &'static skoala_coordinator::pki::FleetCa {
    static CA: OnceLock<skoala_coordinator::pki::FleetCa> = OnceLock::new();
    CA.get_or_init(|| {
        skoala_coordinator::pki::FleetCa::generate("fuzz", Duration::from_secs(3600))
            .expect("a CA")
            .0
    })
}

/// Separates the fields of a multi-line input (PEM holds newlines; it never holds NUL).
pub const SEPARATOR: char = '\0';

/// PEM from outside: the CSR in a `Register` call (signed only if its signature verifies),
/// an agent's identity Secret (key, certificate, CA, separated by
/// [`SEPARATOR`]) and the coordinator's CA files.
pub fn pem(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = fleet_ca().sign_agent_csr(&text, "fuzz", Duration::from_secs(60));
    let [key, cert, ca] = fields::<3>(data, SEPARATOR);
    if let Ok(creds) = skoala_agent::credentials::Credentials::from_pem(&key, &cert, &ca) {
        let _ = creds.check("fuzz", now());
        let _ = creds.renew_at();
    }
    let _ = skoala_coordinator::pki::FleetCa::from_pem(&cert, &key);
}

/// `admin.yaml`, the operator's credential file that `skoalactl` reads.
pub fn admin_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = skoala_support::admin_config::AdminConfig::from_yaml(&text);
}

/// Cluster ids, names and labels as agents send them in `Register` and `Hello`, and the
/// escaping of whatever a peer chose before it is printed: a name made from a free-form one is
/// valid, and printable or clipped text holds no control character.
pub fn names(data: &[u8]) {
    use skoala_support::names;
    let [id, name, key, value] = fields::<4>(data, '\n');
    let _ = names::cluster_id(&id);
    let _ = names::cluster_name(&name);
    let _ = names::label(&key, &value);
    if let Some(made) = names::name_from(&name) {
        assert!(
            names::cluster_name(&made).is_ok(),
            "name_from made an invalid name {made:?}"
        );
    }
    for shown in [names::printable(&name).into_owned(), names::clipped(&name)] {
        assert!(
            !shown.chars().any(char::is_control),
            "a control character survives escaping: {shown:?}"
        );
    }
}

/// A `FleetLog` segment as the coordinator reads it back from the API server, where anyone
/// with `update` on `fleetlogs` could have written it. Byte 0 picks the stream (bit 0) and
/// whether the rest after the ids is `data` itself (bit 1) or the bytes `data` is the base64
/// of, so the fuzzer mutates the gzip stream directly too; bytes 1..5 are `firstId` and
/// `lastId` (16 bits each, little-endian). A segment that decodes must hold exactly its id
/// range and survive encoding again.
pub fn log_segment(data: &[u8]) {
    use base64::Engine as _;
    use skoala_kubestore::crd::{Encoding, FleetLogSpec, Stream};
    use skoala_kubestore::log::{self, Audit, Event};

    fn round_trip<B: log::Body>(spec: &FleetLogSpec) {
        let Ok(entries) = log::decode::<B>(spec) else {
            return;
        };
        assert_eq!(
            entries.len() as u64,
            spec.last_id - spec.first_id + 1,
            "a decoded segment holds its whole id range"
        );
        let again = FleetLogSpec {
            data: log::encode(&entries).expect("decoded entries encode"),
            ..spec.clone()
        };
        let back = log::decode::<B>(&again).expect("an encoded segment decodes");
        assert_eq!(back, entries, "a segment survives encoding again");
    }

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((ids, payload)) = rest.split_at_checked(4) else {
        return;
    };
    let first_id = u64::from(u16::from_le_bytes([ids[0], ids[1]]));
    let last_id = u64::from(u16::from_le_bytes([ids[2], ids[3]]));
    let events = flags & 1 == 1;
    let spec = FleetLogSpec {
        stream: if events {
            Stream::Events
        } else {
            Stream::Audit
        },
        plan: events.then(|| "p".to_string()),
        first_id,
        last_id,
        from_ms: 0,
        to_ms: 0,
        sealed: true,
        encoding: Encoding::GzipJsonl,
        data: if flags & 2 == 0 {
            base64::engine::general_purpose::STANDARD.encode(payload)
        } else {
            String::from_utf8_lossy(payload).into_owned()
        },
    };
    round_trip::<Audit>(&spec);
    round_trip::<Event>(&spec);
}
