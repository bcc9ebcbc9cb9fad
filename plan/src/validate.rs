//! From a document to a checked [`Plan`]: every field's meaning is checked, defaults are filled
//! in, and every problem is reported at once with the field's path, so an operator fixes a plan
//! in one round trip instead of one error at a time.
//!
//! What needs the fleet (an empty cluster selection, a version the chart source does not have)
//! is checked by the coordinator, which knows the fleet; see [`Plan::select`].

use std::collections::BTreeMap;
use std::fmt;

use jiff::SignedDuration;

use crate::document::{API_VERSION, IntOrPercent, KIND, Repository, UpgradePlan, WindowSpec};
use crate::profile::SKOALA;
use crate::window::{Window, WindowError, parse_duration};

/// The default chart repository's name (the vendor's).
pub const DEFAULT_REPOSITORY_NAME: &str = "skoala";
/// The default chart repository's URL (the vendor's).
pub const DEFAULT_REPOSITORY_URL: &str = "https://release.daocloud.io/chartrepo/skoala";
/// The cluster label that picks a named window unless the plan says otherwise.
pub const DEFAULT_WINDOW_LABEL: &str = "fleet.skoala.io/window";
/// Expected duration of one cluster's upgrade before there is any history.
pub const DEFAULT_EXPECTED_DURATION: SignedDuration = SignedDuration::from_mins(10);

/// One problem in a plan, at a field path like `spec.strategy.maxConcurrency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The document path of the field, e.g. `spec.window.duration`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanErrors(pub Vec<FieldError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plan:")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// Where workers get the chart from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartSource {
    /// Each cluster runs `helm repo add` + `helm repo update`.
    Repo,
    /// The coordinator fetches the chart once and streams it to the agents.
    Relay,
}

/// `requireApproval`: where the rollout waits for `skoalactl plan approve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// Never.
    None,
    /// Once, after the control plane is upgraded.
    BeforeWorkers,
    /// Before every wave of workers (each wave then waits for the previous one to finish).
    BeforeEachWave,
}

/// `convergence`: what happens to clusters that were not there when the plan started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// Offline or late-joining clusters are upgraded in their next window.
    Auto,
    /// Only the clusters selected when the plan started.
    Manual,
}

/// `maxConcurrency`: a count, or a percentage of the selected clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// This many at once.
    Count(u32),
    /// This percentage of the selected clusters, rounded up.
    Percent(u32),
}

impl Concurrency {
    /// How many clusters may upgrade at once out of `selected`: at least 1.
    pub fn resolve(self, selected: usize) -> usize {
        let n = match self {
            Concurrency::Count(n) => n as usize,
            Concurrency::Percent(p) => (selected * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

/// A checked plan with every default filled in.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `metadata.name`.
    pub name: String,
    /// The chart version `X.Y.Z`.
    pub version: String,
    /// The repository's name for `helm repo add`.
    pub repository_name: String,
    /// The repository's URL.
    pub repository_url: String,
    /// `spec.repository.digests`: chart name → lower-case hex sha256 its archive must have.
    pub chart_digests: BTreeMap<String, String>,
    /// Whether workers pull the chart themselves or get it relayed.
    pub chart_source: ChartSource,
    /// `None`: no window, upgrades may start at any time.
    pub window: Option<Window>,
    /// `spec.windows`, by name.
    pub named_windows: BTreeMap<String, Window>,
    /// The cluster label that picks a window from `named_windows`.
    pub window_label: String,
    /// How many clusters are upgraded alone first.
    pub canary: u32,
    /// How many upgrade at once after the canaries.
    pub max_concurrency: Concurrency,
    /// More failed clusters than this pause the plan.
    pub max_failures: u32,
    /// Roll a failed cluster back to its previous revision.
    pub rollback_on_failure: bool,
    /// Where the rollout waits for an operator.
    pub require_approval: Approval,
    /// Whether clusters that come later are upgraded too.
    pub convergence: Convergence,
    /// How long one upgrade is expected to take; `None`: from history, else
    /// [`DEFAULT_EXPECTED_DURATION`].
    pub expected_duration: Option<SignedDuration>,
    /// `spec.clusters.matchLabels`.
    pub match_labels: BTreeMap<String, String>,
    /// `spec.clusters.names`.
    pub names: Vec<String>,
    /// The document as written, kept so `plan get` shows what the operator applied.
    pub document: UpgradePlan,
}

impl Plan {
    /// The sha256 `chart`'s archive must have, when the plan pins one.
    pub fn chart_digest(&self, chart: &str) -> Option<String> {
        self.chart_digests.get(chart).cloned()
    }

    /// The image tag every value key gets for this plan's version.
    pub fn image_tag(&self) -> String {
        format!("v{}", self.version)
    }

    /// Whether a cluster with this name, id and labels is covered by the plan.
    pub fn selects(&self, name: &str, id: &str, labels: &BTreeMap<String, String>) -> bool {
        let by_labels = self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        let by_name = self.names.is_empty() || self.names.iter().any(|n| n == name || n == id);
        by_labels && by_name
    }

    /// The window that applies to a cluster with these labels: the named window its
    /// `window_label` names, else the default window. `Err` names a window the plan lacks.
    pub fn window_for(&self, labels: &BTreeMap<String, String>) -> Result<Option<&Window>, String> {
        match labels.get(&self.window_label) {
            Some(name) => match self.named_windows.get(name) {
                Some(w) => Ok(Some(w)),
                None => Err(format!(
                    "the cluster's label {}={name} names a window the plan does not define",
                    self.window_label
                )),
            },
            None => Ok(self.window.as_ref()),
        }
    }
}

/// `spec.repository.digests`: one well-formed sha256 per chart the plan installs, and both
/// of them for a repository over plain `http://` (its index and archives could be changed by
/// anyone on the path; https and oci are authenticated by TLS). Returns chart → hex.
fn check_digests(r: &Repository, err: &mut impl FnMut(&str, String)) -> BTreeMap<String, String> {
    let charts = [SKOALA.control_plane.chart, SKOALA.worker.chart];
    let mut digests = BTreeMap::new();
    for (chart, digest) in &r.digests {
        let field = format!("spec.repository.digests.{chart}");
        if !charts.contains(&chart.as_str()) {
            err(
                &field,
                format!("a plan installs only the charts {}", charts.join(" and ")),
            );
            continue;
        }
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            err(
                &field,
                format!(
                    "must be a sha256, 64 hex digits (optionally after `sha256:`), got {digest:?}"
                ),
            );
            continue;
        }
        digests.insert(chart.clone(), hex.to_ascii_lowercase());
    }
    if r.url.starts_with("http://") {
        for chart in charts.iter().filter(|c| !r.digests.contains_key(**c)) {
            err(
                &format!("spec.repository.digests.{chart}"),
                format!(
                    "required: the repository {} is plain http://, so the plan must pin the sha256 of the {chart} archive at its version (`sha256sum {chart}-<version>.tgz`), or use an https:// or oci:// repository",
                    r.url
                ),
            );
        }
    }
    digests
}

/// Checks a document and fills in defaults.
pub fn validate(doc: &UpgradePlan) -> Result<Plan, PlanErrors> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };

    if doc.api_version != API_VERSION {
        err(
            "apiVersion",
            format!("must be {API_VERSION:?}, got {:?}", doc.api_version),
        );
    }
    if doc.kind != KIND {
        err("kind", format!("must be {KIND:?}, got {:?}", doc.kind));
    }
    if let Err(m) = check_name(&doc.metadata.name) {
        err("metadata.name", m);
    }
    let spec = &doc.spec;
    if let Err(m) = check_version(&spec.version) {
        err("spec.version", m);
    }

    let (repository_name, repository_url) = match &spec.repository {
        Some(r) => {
            if r.name.trim().is_empty() {
                err("spec.repository.name", "must not be empty".into());
            }
            if !(r.url.starts_with("https://")
                || r.url.starts_with("http://")
                || r.url.starts_with("oci://"))
            {
                err(
                    "spec.repository.url",
                    format!("must be an http(s):// or oci:// URL, got {:?}", r.url),
                );
            }
            (r.name.clone(), r.url.clone())
        }
        None => (
            DEFAULT_REPOSITORY_NAME.to_string(),
            DEFAULT_REPOSITORY_URL.to_string(),
        ),
    };
    let chart_digests = match &spec.repository {
        Some(r) => check_digests(r, &mut err),
        None => BTreeMap::new(),
    };

    let chart_source = match spec.chart_source.as_deref() {
        None | Some("repo") => ChartSource::Repo,
        Some("relay") => ChartSource::Relay,
        Some(other) => {
            err(
                "spec.chartSource",
                format!("must be repo or relay, got {other:?}"),
            );
            ChartSource::Repo
        }
    };

    let window = spec.window.as_ref().and_then(|w| match window_from(w) {
        Ok(w) => Some(w),
        Err(e) => {
            err("spec.window", e.to_string());
            None
        }
    });
    let mut named_windows = BTreeMap::new();
    for (name, w) in &spec.windows {
        match window_from(w) {
            Ok(w) => {
                named_windows.insert(name.clone(), w);
            }
            Err(e) => err(&format!("spec.windows.{name}"), e.to_string()),
        }
    }
    let window_label = spec
        .window_label
        .clone()
        .unwrap_or_else(|| DEFAULT_WINDOW_LABEL.to_string());

    let strategy = spec.strategy.clone().unwrap_or_default();
    let max_concurrency = match &strategy.max_concurrency {
        None => Concurrency::Percent(10),
        Some(IntOrPercent::Int(0)) => {
            err("spec.strategy.maxConcurrency", "must be at least 1".into());
            Concurrency::Count(1)
        }
        Some(IntOrPercent::Int(n)) => Concurrency::Count(*n),
        Some(IntOrPercent::Str(s)) => match parse_concurrency(s) {
            Ok(c) => c,
            Err(m) => {
                err("spec.strategy.maxConcurrency", m);
                Concurrency::Count(1)
            }
        },
    };

    let require_approval = match spec.require_approval.as_deref() {
        None | Some("none") => Approval::None,
        Some("beforeWorkers") => Approval::BeforeWorkers,
        Some("beforeEachWave") => Approval::BeforeEachWave,
        Some(other) => {
            err(
                "spec.requireApproval",
                format!("must be none, beforeWorkers or beforeEachWave, got {other:?}"),
            );
            Approval::None
        }
    };
    let convergence = match spec.convergence.as_deref() {
        None | Some("auto") => Convergence::Auto,
        Some("manual") => Convergence::Manual,
        Some(other) => {
            err(
                "spec.convergence",
                format!("must be auto or manual, got {other:?}"),
            );
            Convergence::Auto
        }
    };
    let expected_duration =
        spec.expected_duration
            .as_deref()
            .and_then(|d| match parse_duration(d) {
                Ok(d) => Some(d),
                Err(m) => {
                    err("spec.expectedDuration", m);
                    None
                }
            });

    let (match_labels, names) = match &spec.clusters {
        Some(c) => (c.match_labels.clone(), c.names.clone()),
        None => (BTreeMap::new(), Vec::new()),
    };

    // A window too short for even one upgrade can never make progress.
    let expected = expected_duration.unwrap_or(DEFAULT_EXPECTED_DURATION);
    let all_windows = window.iter().map(|w| ("spec.window".to_string(), w)).chain(
        named_windows
            .iter()
            .map(|(n, w)| (format!("spec.windows.{n}"), w)),
    );
    let mut too_short = Vec::new();
    for (field, w) in all_windows {
        if w.decide(jiff::Timestamp::now(), expected) == crate::window::StartDecision::Never {
            too_short.push(FieldError {
                field,
                message: format!(
                    "no opening is long enough for one upgrade (expected duration {expected:#})"
                ),
            });
        }
    }
    errors.extend(too_short);

    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }
    Ok(Plan {
        name: doc.metadata.name.clone(),
        version: spec.version.clone(),
        repository_name,
        repository_url,
        chart_digests,
        chart_source,
        window,
        named_windows,
        window_label,
        canary: strategy.canary.unwrap_or(1),
        max_concurrency,
        max_failures: strategy.max_failures.unwrap_or(0),
        rollback_on_failure: strategy.rollback_on_failure.unwrap_or(true),
        require_approval,
        convergence,
        expected_duration,
        match_labels,
        names,
        document: doc.clone(),
    })
}

fn window_from(w: &WindowSpec) -> Result<Window, WindowError> {
    let tz = w.time_zone.as_deref().unwrap_or("UTC");
    match (
        &w.schedule,
        &w.duration,
        w.days.is_empty(),
        &w.start_time,
        &w.end_time,
    ) {
        (Some(s), Some(d), true, None, None) => Window::cron(s, d, tz),
        (None, None, false, Some(start), Some(end)) => Window::days(&w.days, start, end, tz),
        (Some(_), None, ..) => Err(WindowError::Shape(" (schedule needs duration)")),
        (Some(_), Some(_), ..) => Err(WindowError::Shape(" (not both)")),
        (None, ..) if w.days.is_empty() => Err(WindowError::Shape(" (days is empty)")),
        _ => Err(WindowError::Shape(" (days needs startTime and endTime)")),
    }
}

fn parse_concurrency(s: &str) -> Result<Concurrency, String> {
    let bad = || format!("must be a number or a percentage like 10%, got {s:?}");
    if let Some(p) = s.strip_suffix('%') {
        let p: u32 = p.trim().parse().map_err(|_| bad())?;
        if p == 0 || p > 100 {
            return Err(format!("percentage must be between 1% and 100%, got {s:?}"));
        }
        Ok(Concurrency::Percent(p))
    } else {
        match s.trim().parse::<u32>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(Concurrency::Count(n)),
            Err(_) => Err(bad()),
        }
    }
}

/// Plan names become keys and CLI arguments: DNS-1123 labels, like Kubernetes object names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit; got {name:?}"
        ))
    }
}

/// Chart versions are `X.Y.Z` (an optional `-pre` suffix allowed); tags derive as `vX.Y.Z`, so
/// a leading `v` is a mistake worth naming.
fn check_version(v: &str) -> Result<(), String> {
    if let Some(bare) = v.strip_prefix('v') {
        return Err(format!(
            "give the chart version without the 'v' (image tags get it): {bare:?}"
        ));
    }
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!("must be a chart version like 0.19.2, got {v:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {name: skoala-0-19-2}
spec:
  version: 0.19.2
  repository: {name: skoala, url: https://release.daocloud.io/chartrepo/skoala}
  chartSource: relay
  window: {schedule: "0 2 * * SAT", duration: 4h, timeZone: Asia/Shanghai}
  strategy: {canary: 1, maxConcurrency: 10%, maxFailures: 2, rollbackOnFailure: true}
  clusters: {matchLabels: {env: prod}}
"#;

    /// `EXAMPLE` with another `repository` line.
    fn with_repository(repository: &str) -> Result<Plan, PlanErrors> {
        let yaml = EXAMPLE.replace(
            "  repository: {name: skoala, url: https://release.daocloud.io/chartrepo/skoala}",
            &format!("  repository: {repository}"),
        );
        validate(&UpgradePlan::from_yaml(&yaml).expect("parses"))
    }

    #[test]
    fn a_plain_http_repository_needs_a_digest_for_each_chart() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let refused = with_repository("{name: skoala, url: http://charts.example}")
            .expect_err("http without digests");
        let text = refused.to_string();
        for field in [
            "spec.repository.digests.skoala:",
            "spec.repository.digests.skoala-init:",
        ] {
            assert!(text.contains(field), "{text}");
        }
        assert!(text.contains("plain http://"), "{text}");
        let half = with_repository(&format!(
            "{{name: skoala, url: http://charts.example, digests: {{skoala: {a}}}}}"
        ))
        .expect_err("one chart unpinned");
        assert!(
            half.to_string()
                .contains("spec.repository.digests.skoala-init:")
                && !half.to_string().contains("spec.repository.digests.skoala:"),
            "{half}"
        );

        let pinned = with_repository(&format!(
            "{{name: skoala, url: http://charts.example, digests: {{skoala: \"sha256:{a}\", skoala-init: {b}}}}}"
        ))
        .expect("both pinned");
        assert_eq!(pinned.chart_digest("skoala"), Some(a.clone()));
        assert_eq!(
            pinned.chart_digest("skoala-init"),
            Some(b.to_ascii_lowercase()),
            "kept as lower-case hex"
        );

        for bad in [
            format!("{{skoala: {a}, skoala-init: nope}}"),
            format!("{{skoala: {a}, skoala-init: {b}, other: {a}}}"),
            format!("{{skoala: \"md5:{a}\", skoala-init: {b}}}"),
        ] {
            let refused = with_repository(&format!(
                "{{name: skoala, url: http://charts.example, digests: {bad}}}"
            ))
            .expect_err("a malformed digest or an unknown chart");
            assert!(
                refused.to_string().contains("spec.repository.digests."),
                "{refused}"
            );
        }
    }

    #[test]
    fn https_and_oci_repositories_need_no_digest() {
        for url in ["https://charts.example", "oci://registry.example/charts"] {
            let plan = with_repository(&format!("{{name: skoala, url: {url}}}")).expect(url);
            assert!(plan.chart_digests.is_empty());
        }
    }

    #[test]
    fn the_design_example_validates_with_its_settings() {
        let doc = UpgradePlan::from_yaml(EXAMPLE).expect("parses");
        let plan = validate(&doc).expect("valid");
        assert_eq!(plan.version, "0.19.2");
        assert_eq!(plan.image_tag(), "v0.19.2");
        assert_eq!(plan.chart_source, ChartSource::Relay);
        assert_eq!(plan.max_concurrency, Concurrency::Percent(10));
        assert_eq!(plan.max_concurrency.resolve(300), 30);
        assert_eq!(plan.max_concurrency.resolve(5), 1);
        assert_eq!(plan.max_failures, 2);
        assert_eq!(
            plan.window.as_ref().map(|w| w.time_zone()),
            Some("Asia/Shanghai")
        );
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        assert!(plan.selects("a", "uid-a", &prod));
        assert!(!plan.selects("b", "uid-b", &BTreeMap::new()));
    }

    #[test]
    fn defaults_fill_in_for_a_minimal_plan() {
        let plan = validate(&UpgradePlan::new("p", "0.20.0")).expect("valid");
        assert_eq!(plan.repository_url, DEFAULT_REPOSITORY_URL);
        assert_eq!(plan.chart_source, ChartSource::Repo);
        assert!(plan.window.is_none());
        assert_eq!(
            (plan.canary, plan.max_failures, plan.rollback_on_failure),
            (1, 0, true)
        );
        assert_eq!(plan.require_approval, Approval::None);
        assert_eq!(plan.convergence, Convergence::Auto);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let yaml = r#"
apiVersion: fleet.skoala.io/v1
kind: UpgradePlan
metadata: {name: Bad_Name}
spec:
  version: v0.19.2
  chartSource: carrier-pigeon
  window: {schedule: "0 2 30 2 *", duration: 4h}
  strategy: {maxConcurrency: "0%"}
  requireApproval: always
"#;
        let errs = validate(&UpgradePlan::from_yaml(yaml).expect("parses")).expect_err("invalid");
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "apiVersion",
                "metadata.name",
                "spec.version",
                "spec.chartSource",
                "spec.window",
                "spec.strategy.maxConcurrency",
                "spec.requireApproval"
            ]
        );
        let text = errs.to_string();
        assert!(
            text.contains("spec.window: the window never opens"),
            "{text}"
        );
        assert!(text.contains("without the 'v'"), "{text}");
    }

    #[test]
    fn a_typo_in_a_field_name_is_an_error_naming_it() {
        let yaml = EXAMPLE.replace("maxConcurrency", "maxConcurency");
        let err = UpgradePlan::from_yaml(&yaml)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("maxConcurency"), "{err}");
        assert!(err.contains("spec.strategy"), "{err}");
    }

    #[test]
    fn a_window_shorter_than_one_upgrade_is_rejected() {
        let mut doc = UpgradePlan::new("p", "0.19.2");
        doc.spec.window = Some(WindowSpec {
            schedule: Some("0 2 * * *".into()),
            duration: Some("5m".into()),
            ..WindowSpec::default()
        });
        let errs = validate(&doc).expect_err("too short");
        assert_eq!(errs.0[0].field, "spec.window");
        doc.spec.expected_duration = Some("3m".into());
        assert!(
            validate(&doc).is_ok(),
            "fits when upgrades are known to be quick"
        );
    }

    #[test]
    fn clusters_pick_named_windows_by_label() {
        let yaml = r#"
apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {name: p}
spec:
  version: 0.19.2
  window: {days: [Sat], startTime: "02:00", endTime: "06:00", timeZone: Asia/Shanghai}
  windows:
    emea: {days: [Sat], startTime: "02:00", endTime: "06:00", timeZone: Europe/Berlin}
"#;
        let plan = validate(&UpgradePlan::from_yaml(yaml).expect("parses")).expect("valid");
        let emea = BTreeMap::from([(DEFAULT_WINDOW_LABEL.to_string(), "emea".to_string())]);
        let w = plan.window_for(&emea).expect("known").expect("a window");
        assert_eq!(w.time_zone(), "Europe/Berlin");
        let w = plan
            .window_for(&BTreeMap::new())
            .expect("known")
            .expect("a window");
        assert_eq!(w.time_zone(), "Asia/Shanghai");
        let mars = BTreeMap::from([(DEFAULT_WINDOW_LABEL.to_string(), "mars".to_string())]);
        assert!(plan.window_for(&mars).is_err());
    }

    #[test]
    fn documents_round_trip_through_yaml() {
        let doc = UpgradePlan::from_yaml(EXAMPLE).expect("parses");
        let again = UpgradePlan::from_yaml(&doc.to_yaml()).expect("parses its own output");
        assert_eq!(doc, again);
    }
}
