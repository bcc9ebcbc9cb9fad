//! The release inventory, read natively from Helm's release Secrets through kube-rs.
//!
//! Helm (3 and 4, storage driver `secret`, the default) keeps one Secret per release revision:
//! name `sh.helm.release.v1.<release>.v<revision>`, type `helm.sh/release.v1`, labels
//! `owner=helm`, `name=<release>`, `version=<revision>`, `status=<status>`. Its `release` data
//! key holds `base64(gzip(json(release)))`; the API server base64-encodes Secret data once more on
//! the wire, which kube's `ByteString` already undoes, so we see the inner base64 text.
//!
//! Reading the Secrets directly (instead of running `helm list`) means the inventory needs no helm
//! binary, costs one LIST, and — through a watch — notices *any* change within seconds, including
//! an upgrade an operator ran by hand.
//!
//! Secrecy: a release record contains every value of the release, passwords included. This module
//! extracts only the chart metadata, status and the image tags it was asked for; it never logs or
//! returns values, and its errors never quote the record's content.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde::Deserialize;
use skoala_plan::ReleaseStatus;
use skoala_plan::profile::{ReleaseProfile, SKOALA};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Secret type of Helm's release records.
pub const HELM_RELEASE_SECRET_TYPE: &str = "helm.sh/release.v1";

/// A decoded release record larger than this is refused (a gzip bomb must not take us down).
const MAX_RELEASE_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// How long the watch waits for a burst of Secret changes to settle before re-reading: one
/// `helm upgrade` writes the new revision (pending), then updates it (deployed) and marks the
/// previous one superseded.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// Everything that can go wrong while reading the inventory. Never carries release values.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("release Secret {secret}: no `release` data key")]
    MissingData { secret: String },
    #[error("release Secret {secret}: `release` data is not base64")]
    Base64 { secret: String },
    #[error("release Secret {secret}: `release` data is not valid gzip")]
    Gzip { secret: String },
    #[error(
        "release Secret {secret}: decoded release is larger than {MAX_RELEASE_JSON_BYTES} bytes"
    )]
    TooLarge { secret: String },
    /// Only serde's category and position: its full message could quote a value.
    #[error(
        "release Secret {secret}: release JSON is not a Helm release ({category} at line {line}, column {column})"
    )]
    Json {
        secret: String,
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("namespace kube-system has no UID (is this a Kubernetes API server?)")]
    NoKubeSystemUid,
}

/// A release whose inventory is wanted, and which value keys hold its image tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedRelease {
    pub release: String,
    pub namespace: String,
    /// Dotted value paths, e.g. `skoala-agent.image.tag` → `skoala-agent` → `image` → `tag`.
    pub image_tag_keys: Vec<String>,
}

impl TrackedRelease {
    /// A release of a profile (`skoala_plan::profile`), with all its image tag keys.
    pub fn from_profile(profile: &ReleaseProfile) -> Self {
        Self {
            release: profile.release.into(),
            namespace: profile.namespace.into(),
            image_tag_keys: profile
                .image_tag_keys
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }

    /// `skoala-init` in `skoala-system`: what every working cluster's agent reports.
    pub fn skoala_init() -> Self {
        Self::from_profile(&SKOALA.worker)
    }

    /// `skoala` in `skoala-system`: the control plane's release, reported by the coordinator.
    pub fn skoala() -> Self {
        Self::from_profile(&SKOALA.control_plane)
    }
}

/// The state of one release: its latest revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub release: String,
    pub namespace: String,
    pub chart_name: String,
    pub chart_version: String,
    pub app_version: String,
    pub revision: i32,
    pub status: ReleaseStatus,
    /// Image-tag key → tag, for the tracked keys present in the release's values.
    pub image_tags: BTreeMap<String, String>,
    /// `info.last_deployed` of the revision (when helm last wrote it).
    pub updated: Option<jiff::Timestamp>,
}

/// The parts of Helm's release JSON we read. Deliberately no `Debug`: it holds values.
#[derive(Deserialize)]
struct ReleaseRecord {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    version: i32,
    #[serde(default)]
    info: RecordInfo,
    #[serde(default)]
    chart: RecordChart,
    /// The user-supplied values (`-f`, `--set`).
    #[serde(default)]
    config: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RecordInfo {
    #[serde(default)]
    status: String,
    #[serde(default)]
    last_deployed: Option<String>,
}

#[derive(Deserialize, Default)]
struct RecordChart {
    #[serde(default)]
    metadata: RecordChartMetadata,
    /// The chart's default values (`values.yaml`).
    #[serde(default)]
    values: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RecordChartMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default, rename = "appVersion")]
    app_version: String,
}

/// Decodes the `release` data of a Helm release Secret (as kube returns it: the inner base64
/// text) into the release's inventory, extracting the tags at `image_tag_keys`.
///
/// `secret` names the Secret in errors only.
pub fn decode_release(
    secret: &str,
    data: &[u8],
    image_tag_keys: &[String],
) -> Result<ReleaseInfo, InventoryError> {
    let record = decode_record(secret, data)?;
    let image_tags = image_tag_keys
        .iter()
        .filter_map(|key| {
            // User-supplied values override the chart's defaults, as in helm's coalescing.
            let tag = record
                .config
                .as_ref()
                .and_then(|c| lookup_scalar(c, key))
                .or_else(|| {
                    record
                        .chart
                        .values
                        .as_ref()
                        .and_then(|v| lookup_scalar(v, key))
                })?;
            Some((key.clone(), tag))
        })
        .collect();
    Ok(ReleaseInfo {
        release: record.name,
        namespace: record.namespace,
        chart_name: record.chart.metadata.name,
        chart_version: record.chart.metadata.version,
        app_version: record.chart.metadata.app_version,
        revision: record.version,
        status: record.info.status.into(),
        image_tags,
        updated: record
            .info
            .last_deployed
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
    })
}

fn decode_record(secret: &str, data: &[u8]) -> Result<ReleaseRecord, InventoryError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    // Helm always base64-encodes; tolerate a record that is already raw gzip or JSON too.
    let raw = if data.starts_with(&GZIP_MAGIC) || data.starts_with(b"{") {
        data.to_vec()
    } else {
        let text: Vec<u8> = data
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| InventoryError::Base64 {
                secret: secret.into(),
            })?
    };
    let json = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_RELEASE_JSON_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|_| InventoryError::Gzip {
                secret: secret.into(),
            })?;
        if out.len() as u64 > MAX_RELEASE_JSON_BYTES {
            return Err(InventoryError::TooLarge {
                secret: secret.into(),
            });
        }
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| InventoryError::Json {
        secret: secret.into(),
        category: match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        },
        line: e.line(),
        column: e.column(),
    })
}

/// The scalar at a dotted path (`a.b.c`) as a string; `None` for a missing path or a map/list.
fn lookup_scalar(values: &serde_json::Value, dotted: &str) -> Option<String> {
    let mut at = values;
    for part in dotted.split('.') {
        at = at.as_object()?.get(part)?;
    }
    match at {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The revision a release Secret holds, from its `version` label (what helm itself sorts by).
fn revision_label(secret: &Secret) -> Option<i32> {
    secret
        .metadata
        .labels
        .as_ref()?
        .get("version")?
        .parse()
        .ok()
}

/// Reads the latest revision of one tracked release; `None` when it is not installed.
pub async fn read_release(
    client: &Client,
    tracked: &TrackedRelease,
) -> Result<Option<ReleaseInfo>, InventoryError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &tracked.namespace);
    let selector = format!("owner=helm,name={}", tracked.release);
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    let candidates = list.items.into_iter().filter(|s| {
        s.type_.as_deref() == Some(HELM_RELEASE_SECRET_TYPE)
            && s.data.as_ref().is_some_and(|d| d.contains_key("release"))
    });
    // Decode only the newest by label; a Secret without the label is decoded to learn its
    // revision (hand-made or foreign records), which is rare and still correct.
    let mut best: Option<ReleaseInfo> = None;
    let mut labelled: Vec<(i32, Secret)> = Vec::new();
    for secret in candidates {
        match revision_label(&secret) {
            Some(rev) => labelled.push((rev, secret)),
            None => {
                let info = decode_secret(&secret, &tracked.image_tag_keys)?;
                if best.as_ref().is_none_or(|b| info.revision > b.revision) {
                    best = Some(info);
                }
            }
        }
    }
    if let Some((rev, secret)) = labelled.into_iter().max_by_key(|(rev, _)| *rev)
        && best.as_ref().is_none_or(|b| rev > b.revision)
    {
        best = Some(decode_secret(&secret, &tracked.image_tag_keys)?);
    }
    Ok(best)
}

fn decode_secret(secret: &Secret, keys: &[String]) -> Result<ReleaseInfo, InventoryError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| InventoryError::MissingData {
            secret: name.clone(),
        })?;
    decode_release(&name, &data.0, keys)
}

/// Reads one revision of a release (Helm's `sh.helm.release.v1.<release>.v<revision>`
/// Secret); `None` when that revision is not (or no longer) kept.
pub async fn read_revision(
    client: &Client,
    tracked: &TrackedRelease,
    revision: i32,
) -> Result<Option<ReleaseInfo>, InventoryError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &tracked.namespace);
    let name = format!("sh.helm.release.v1.{}.v{revision}", tracked.release);
    match api.get_opt(&name).await? {
        Some(secret) => Ok(Some(decode_secret(&secret, &tracked.image_tag_keys)?)),
        None => Ok(None),
    }
}

/// Reads the latest revision of every tracked release that is installed, in `tracked` order.
pub async fn read_inventory(
    client: &Client,
    tracked: &[TrackedRelease],
) -> Result<Vec<ReleaseInfo>, InventoryError> {
    let mut out = Vec::with_capacity(tracked.len());
    for t in tracked {
        if let Some(info) = read_release(client, t).await? {
            out.push(info);
        }
    }
    Ok(out)
}

/// The UID of the cluster's `kube-system` namespace: the cluster's identity in the fleet.
pub async fn kube_system_uid(client: &Client) -> Result<String, InventoryError> {
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    ns.metadata.uid.ok_or(InventoryError::NoKubeSystemUid)
}

/// A live inventory: read once at start, then kept current by a watch on the release Secrets.
///
/// Dropping it stops the watch.
pub struct InventoryWatch {
    rx: watch::Receiver<Vec<ReleaseInfo>>,
    task: JoinHandle<()>,
}

impl InventoryWatch {
    /// Reads the inventory (so a missing permission fails here, loudly) and starts watching.
    pub async fn start(
        client: Client,
        tracked: Vec<TrackedRelease>,
    ) -> Result<Self, InventoryError> {
        let initial = read_inventory(&client, &tracked).await?;
        let (tx, rx) = watch::channel(initial);
        let task = tokio::spawn(watch_loop(client, tracked, tx));
        Ok(Self { rx, task })
    }

    /// The inventory as last read.
    pub fn current(&self) -> Vec<ReleaseInfo> {
        self.rx.borrow().clone()
    }

    /// A receiver that is notified whenever the inventory changes.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ReleaseInfo>> {
        self.rx.clone()
    }
}

impl Drop for InventoryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the helm Secrets of every namespace with a tracked release; after each burst of
/// changes, re-reads the inventory and publishes it if it differs.
async fn watch_loop(
    client: Client,
    tracked: Vec<TrackedRelease>,
    tx: watch::Sender<Vec<ReleaseInfo>>,
) {
    let names: BTreeSet<String> = tracked.iter().map(|t| t.release.clone()).collect();
    let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &tracked {
        by_namespace
            .entry(&t.namespace)
            .or_default()
            .push(&t.release);
    }
    let streams = by_namespace.into_iter().map(|(ns, releases)| {
        // An equality selector when we can (every API server supports it), else filter below.
        let selector = match releases.as_slice() {
            [one] => format!("owner=helm,name={one}"),
            _ => "owner=helm".to_string(),
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut failing = false;
    loop {
        // Wait for a relevant change.
        let Some(event) = events.next().await else {
            return;
        };
        let relevant = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => is_tracked(&s, &names),
            // A (re)list completed: objects may have changed while the watch was down.
            Ok(watcher::Event::InitDone) => true,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watching Helm release Secrets failed; retrying");
                    failing = true;
                }
                false
            }
        };
        if !relevant {
            continue;
        }
        // Let the burst settle, draining (but not buffering) further events meanwhile.
        let settle = tokio::time::sleep(WATCH_DEBOUNCE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                more = events.next() => if more.is_none() { return },
            }
        }
        match read_inventory(&client, &tracked).await {
            Ok(now) => {
                if failing {
                    tracing::info!("reading Helm release Secrets works again");
                    failing = false;
                }
                tx.send_if_modified(|cur| {
                    if *cur == now {
                        false
                    } else {
                        *cur = now;
                        true
                    }
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "reading Helm release Secrets failed; retrying on the next change");
                    failing = true;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

fn is_tracked(secret: &Secret, names: &BTreeSet<String>) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("name"))
        .is_some_and(|n| names.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Encodes a release JSON the way helm's storage driver does: gzip, then base64.
    fn helm_encode(json: &serde_json::Value) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&serde_json::to_vec(json).expect("serialise"))
            .expect("gzip");
        let compressed = gz.finish().expect("gzip finish");
        base64::engine::general_purpose::STANDARD
            .encode(compressed)
            .into_bytes()
    }

    fn record() -> serde_json::Value {
        serde_json::json!({
            "name": "skoala-init",
            "namespace": "skoala-system",
            "version": 3,
            "info": {
                "first_deployed": "2025-01-02T03:04:05.123456789+08:00",
                "last_deployed": "2025-02-03T04:05:06.5Z",
                "deleted": "",
                "description": "Upgrade complete",
                "status": "deployed"
            },
            "chart": {
                "metadata": {"name": "skoala-init", "version": "0.19.2", "appVersion": "0.19.2", "apiVersion": "v2"},
                "values": {
                    "skoala-agent": {"image": {"tag": "v0.19.0"}},
                    "nacos-operator": {"image": {"tag": "v0.19.0", "registry": "x"}},
                    "sentinel-operator": {"image": {"tag": 1.5}},
                    "password": "chart-default-secret"
                }
            },
            "config": {
                "skoala-agent": {"image": {"tag": "v0.19.2"}},
                "db": {"password": "hunter2"}
            },
            "manifest": "---\n",
        })
    }

    fn keys() -> Vec<String> {
        TrackedRelease::skoala_init().image_tag_keys
    }

    #[test]
    fn decodes_a_helm_encoded_record() {
        let info = decode_release("s", &helm_encode(&record()), &keys()).expect("decode");
        assert_eq!(info.release, "skoala-init");
        assert_eq!(info.namespace, "skoala-system");
        assert_eq!(info.chart_name, "skoala-init");
        assert_eq!(info.chart_version, "0.19.2");
        assert_eq!(info.app_version, "0.19.2");
        assert_eq!(info.revision, 3);
        assert_eq!(info.status, ReleaseStatus::Deployed);
        assert_eq!(
            info.updated,
            Some("2025-02-03T04:05:06.5Z".parse().expect("ts"))
        );
        // User values win over chart defaults; numbers become strings; missing keys are absent.
        let tags: Vec<(&str, &str)> = info
            .image_tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            tags,
            vec![
                ("nacos-operator.image.tag", "v0.19.0"),
                ("sentinel-operator.image.tag", "1.5"),
                ("skoala-agent.image.tag", "v0.19.2"),
            ]
        );
    }

    #[test]
    fn accepts_go_timestamps_with_offsets_and_nanoseconds() {
        let mut r = record();
        r["info"]["last_deployed"] = "2025-01-02T03:04:05.123456789+08:00".into();
        let info = decode_release("s", &helm_encode(&r), &keys()).expect("decode");
        assert_eq!(
            info.updated,
            Some("2025-01-01T19:04:05.123456789Z".parse().expect("ts"))
        );
    }

    #[test]
    fn errors_never_quote_values() {
        // A record of the wrong shape whose offending field is a secret.
        let mut r = record();
        r["version"] = "hunter2".into();
        let err = decode_release("s", &helm_encode(&r), &keys()).expect_err("must fail");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("unexpected shape"), "{text}");
    }

    #[test]
    fn rejects_garbage_clearly() {
        let err = decode_release("sh.helm.release.v1.x.v1", b"%%%not base64", &keys())
            .expect_err("must fail");
        assert!(matches!(err, InventoryError::Base64 { .. }), "{err}");
        let not_gzip = base64::engine::general_purpose::STANDARD.encode([0x1f, 0x8b, 1, 2, 3]);
        let err = decode_release("x", not_gzip.as_bytes(), &keys()).expect_err("must fail");
        assert!(matches!(err, InventoryError::Gzip { .. }), "{err}");
    }

    #[test]
    fn looks_up_dotted_paths_only_to_scalars() {
        let v = serde_json::json!({"a": {"b": {"c": "x"}, "l": [1]}});
        assert_eq!(lookup_scalar(&v, "a.b.c").as_deref(), Some("x"));
        assert_eq!(lookup_scalar(&v, "a.b"), None);
        assert_eq!(lookup_scalar(&v, "a.l"), None);
        assert_eq!(lookup_scalar(&v, "a.z.c"), None);
    }
}
