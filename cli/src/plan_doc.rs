//! `skoalactl plan create`: an UpgradePlan document from flags, the same document an operator
//! would write by hand (and keep in git), checked with the coordinator's own validation.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use skoala_plan::UpgradePlan;
use skoala_plan::document::{ClusterSelector, IntOrPercent, Repository, Strategy, WindowSpec};

/// The flags of `plan create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// The plan's name (metadata.name), e.g. skoala-0-19-2.
    pub name: String,
    /// Target chart version X.Y.Z; image tags become vX.Y.Z.
    #[arg(long)]
    pub version: String,
    /// Maintenance window: 'schedule=0 2 * * SAT,duration=4h,timeZone=Asia/Shanghai' or
    /// 'days=Sat;Sun,startTime=02:00,endTime=06:00,timeZone=Asia/Shanghai'.
    #[arg(long, value_name = "SPEC")]
    pub window: Option<String>,
    /// How many clusters are upgraded alone first [default: 1].
    #[arg(long)]
    pub canary: Option<u32>,
    /// Clusters at once after the canaries: N or P% [default: 10%].
    #[arg(long, value_name = "N|P%")]
    pub max_concurrency: Option<String>,
    /// Pause the plan when more than N clusters failed [default: 0].
    #[arg(long, value_name = "N")]
    pub max_failures: Option<u32>,
    /// Only clusters with this label (repeatable, ANDed).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    pub selectors: Vec<String>,
    /// Where workers get the chart: repo (each cluster pulls) or relay (via the coordinator).
    #[arg(long, value_name = "repo|relay")]
    pub chart_source: Option<String>,
    /// Chart repository URL [default: the vendor's].
    #[arg(long, value_name = "URL")]
    pub repository_url: Option<String>,
    /// The sha256 of a chart archive at --version (repeatable: skoala and skoala-init);
    /// required for an http:// repository URL.
    #[arg(
        long = "chart-digest",
        value_name = "CHART=SHA256",
        requires = "repository_url"
    )]
    pub chart_digests: Vec<String>,
    /// none | beforeWorkers | beforeEachWave.
    #[arg(long, value_name = "WHEN")]
    pub require_approval: Option<String>,
}

/// Parses `k=v,k=v`; a comma inside a cron field (`SAT,SUN`) belongs to the previous value.
fn window(text: &str) -> anyhow::Result<WindowSpec> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in text.split(',') {
        match part.split_once('=') {
            Some((k, v)) => pairs.push((k.trim().to_string(), v.trim().to_string())),
            None => match pairs.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(part.trim());
                }
                None => bail!("--window: expected key=value, got {part:?}"),
            },
        }
    }
    let mut w = WindowSpec::default();
    for (k, v) in pairs {
        match k.as_str() {
            "schedule" => w.schedule = Some(v),
            "duration" => w.duration = Some(v),
            "timeZone" => w.time_zone = Some(v),
            "startTime" => w.start_time = Some(v),
            "endTime" => w.end_time = Some(v),
            "days" => w.days = v.split(';').map(|d| d.trim().to_string()).collect(),
            other => bail!(
                "--window: unknown key {other:?} (schedule, duration, days, startTime, endTime, timeZone)"
            ),
        }
    }
    Ok(w)
}

/// `KEY=VALUE` flag values (`--selector`, `--chart-digest`) as a map; `shape` names the form
/// in the error.
fn pairs(items: &[String], flag: &str, shape: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("{flag} {item:?}: expected {shape}"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Builds and validates the document.
pub fn build(a: &CreateArgs) -> anyhow::Result<UpgradePlan> {
    let mut doc = UpgradePlan::new(&a.name, &a.version);
    let s = &mut doc.spec;
    if let Some(w) = &a.window {
        s.window = Some(window(w)?);
    }
    if a.canary.is_some() || a.max_concurrency.is_some() || a.max_failures.is_some() {
        s.strategy = Some(Strategy {
            canary: a.canary,
            max_concurrency: a.max_concurrency.as_ref().map(|m| match m.parse::<u32>() {
                Ok(n) => IntOrPercent::Int(n),
                Err(_) => IntOrPercent::Str(m.clone()),
            }),
            max_failures: a.max_failures,
            rollback_on_failure: None,
        });
    }
    if !a.selectors.is_empty() {
        s.clusters = Some(ClusterSelector {
            match_labels: pairs(&a.selectors, "--selector", "KEY=VALUE")?,
            names: Vec::new(),
        });
    }
    s.chart_source = a.chart_source.clone();
    s.require_approval = a.require_approval.clone();
    if let Some(url) = &a.repository_url {
        let digests = pairs(&a.chart_digests, "--chart-digest", "CHART=SHA256")?;
        s.repository = Some(Repository {
            name: "skoala".into(),
            url: url.clone(),
            digests,
        });
    }
    skoala_plan::validate(&doc)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cron_window_keeps_its_commas() {
        let w =
            window("schedule=0 2 * * SAT,SUN,duration=4h,timeZone=Asia/Shanghai").expect("parses");
        assert_eq!(w.schedule.as_deref(), Some("0 2 * * SAT,SUN"));
        assert_eq!(w.duration.as_deref(), Some("4h"));
        assert_eq!(w.time_zone.as_deref(), Some("Asia/Shanghai"));
    }

    #[test]
    fn flags_make_a_valid_document() {
        let args = CreateArgs {
            name: "p".into(),
            version: "0.19.2".into(),
            window: Some("schedule=0 2 * * SAT,duration=4h,timeZone=Asia/Shanghai".into()),
            canary: Some(1),
            max_concurrency: Some("10%".into()),
            max_failures: Some(2),
            selectors: vec!["env=prod".into()],
            chart_source: Some("repo".into()),
            repository_url: None,
            chart_digests: Vec::new(),
            require_approval: None,
        };
        let doc = build(&args).expect("valid");
        let back = UpgradePlan::from_yaml(&doc.to_yaml()).expect("round trip");
        assert_eq!(back, doc);
        let bad = CreateArgs {
            max_concurrency: Some("lots".into()),
            ..args
        };
        let err = build(&bad).expect_err("invalid concurrency").to_string();
        assert!(err.contains("maxConcurrency"), "{err}");
    }
}
