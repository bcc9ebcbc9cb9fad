//! Keeps `docs/plan-reference.md` true: the field table lists exactly the fields the parser
//! accepts, and every example on the page validates.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use skoala_plan::document::{
    ClusterSelector, IntOrPercent, Metadata, Namespace, PlanSpec, Repository, Strategy, WindowSpec,
};
use skoala_plan::{UpgradePlan, validate};

/// Fields the parser accepts and does not keep, so serialising shows them nowhere.
const ACCEPTED_NOT_KEPT: &[&str] = &["metadata.namespace"];

/// Fields whose values are free-form maps: their keys are data, not fields.
const MAP_FIELDS: &[&str] = &[
    "metadata.labels",
    "metadata.annotations",
    "spec.windows",
    "spec.clusters.matchLabels",
    "spec.repository.digests",
];

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plan-reference.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A document with every field set, so serialising it shows every field the format has.
fn everything() -> UpgradePlan {
    let map = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let window = WindowSpec {
        schedule: Some("0 2 * * SAT".into()),
        duration: Some("4h".into()),
        days: vec!["Sat".into()],
        start_time: Some("02:00".into()),
        end_time: Some("06:00".into()),
        time_zone: Some("UTC".into()),
    };
    UpgradePlan {
        api_version: "fleet.skoala.io/v1alpha1".into(),
        kind: "UpgradePlan".into(),
        metadata: Metadata {
            name: "n".into(),
            labels: map.clone(),
            annotations: map.clone(),
            namespace: Namespace,
        },
        spec: PlanSpec {
            version: "0.19.2".into(),
            repository: Some(Repository {
                name: "skoala".into(),
                url: "https://x".into(),
                digests: map.clone(),
            }),
            chart_source: Some("relay".into()),
            window: Some(window.clone()),
            windows: BTreeMap::from([("w".to_string(), window)]),
            window_label: Some("l".into()),
            strategy: Some(Strategy {
                canary: Some(1),
                max_concurrency: Some(IntOrPercent::Int(1)),
                max_failures: Some(0),
                rollback_on_failure: Some(true),
            }),
            require_approval: Some("none".into()),
            convergence: Some("auto".into()),
            expected_duration: Some("10m".into()),
            clusters: Some(ClusterSelector {
                match_labels: map,
                names: vec!["a".into()],
            }),
        },
    }
}

fn field_paths(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !MAP_FIELDS.contains(&prefix) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                field_paths(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn the_field_table_lists_exactly_the_fields_of_the_format() {
    let mut actual = BTreeSet::new();
    field_paths(
        "",
        &serde_json::to_value(everything()).expect("serialises"),
        &mut actual,
    );
    actual.extend(ACCEPTED_NOT_KEPT.iter().map(|f| f.to_string()));
    // Window objects are documented once, under spec.window; spec.windows is a map of them.
    let documented: BTreeSet<String> = reference()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = actual.difference(&documented).collect();
    // A row for an object (`spec.window`) is fine when fields below it exist.
    let is_object = |d: &String| actual.iter().any(|a| a.starts_with(&format!("{d}.")));
    let stale: Vec<_> = documented
        .difference(&actual)
        .filter(|d| !is_object(d))
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing from docs/plan-reference.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/plan-reference.md documents fields that do not exist: {stale:?}"
    );
}

#[test]
fn every_example_on_the_page_validates() {
    let page = reference();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        blocks.len() >= 3,
        "expected the page's YAML examples, found {}",
        blocks.len()
    );
    for block in blocks {
        // A bare window snippet is checked inside a minimal plan.
        let text = if block.contains("kind: UpgradePlan") {
            block.clone()
        } else {
            format!(
                "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: p}}\nspec:\n  version: 0.19.2\n  {}",
                block.trim()
            )
        };
        let doc = UpgradePlan::from_yaml(&text)
            .unwrap_or_else(|e| panic!("example does not parse: {e}\n{block}"));
        if let Err(e) = validate(&doc) {
            panic!("example does not validate: {e}\n{block}");
        }
    }
}

#[test]
fn a_namespace_in_the_metadata_is_accepted_and_not_kept() {
    let with = "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: p, namespace: skoala-fleet}\nspec: {version: 0.19.2}\n";
    let without = with.replace(", namespace: skoala-fleet", "");
    let doc = UpgradePlan::from_yaml(with).expect("a manifest from git parses");
    assert_eq!(
        Some(&doc),
        UpgradePlan::from_yaml(&without).ok().as_ref(),
        "the same plan"
    );
    assert!(!doc.to_yaml().contains("namespace"), "{}", doc.to_yaml());
    // Still a string, as Kubernetes has it: anything else is a mistake worth an error.
    let odd = with.replace("namespace: skoala-fleet", "namespace: {a: 1}");
    assert!(UpgradePlan::from_yaml(&odd).is_err());
}
