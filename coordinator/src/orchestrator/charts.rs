//! A plan's charts, checked when the plan is applied, so that an unknown version or an
//! unreachable repository is an error naming the chart, the version and the URL at creation —
//! not the same failure in every cluster at 2 a.m.
//!
//! - `chartSource: repo`: every cluster fetches its chart itself, so the coordinator only asks
//!   the repository whether it has `skoala` and `skoala-init` at the plan's version
//!   (`helm show chart --repo URL --version V`, in a private helm home; both at once).
//! - `chartSource: relay`: the coordinator pulls both charts once into its data dir
//!   ([`crate::relay::prepare`]) and the plan carries their digests ([`PlanCharts`]): working
//!   clusters get `skoala-init` over their session, and the control plane installs `skoala`
//!   from the very same file, so each chart is fetched from the repository exactly once.
//!
//! A relay plan keeps its charts only in memory; a restarted coordinator prepares them again,
//! which the on-disk cache answers without the network.

use std::time::Duration;

use skoala_plan::Plan;
use skoala_plan::profile::SKOALA;
use skoala_plan::validate::ChartSource as PlanSource;
use skoala_proto::v1::{self as pb, ChartRepository};
use skoala_upgrade::Helm;

use crate::data_dir::DataDir;
use crate::relay::{self, RelayError, RelayedChart};

/// Bound on asking the repository about one chart. Apply is interactive: a repository that
/// does not answer within this is reported as unreachable rather than left hanging.
const SHOW_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on pulling one chart for the relay.
const PULL_TIMEOUT: Duration = Duration::from_secs(90);

/// The relayed archives of a `chartSource: relay` plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCharts {
    /// `skoala`, installed by the coordinator's own executor.
    pub control_plane: RelayedChart,
    /// `skoala-init`, streamed to the agents.
    pub worker: RelayedChart,
}

impl PlanCharts {
    /// "skoala-init 0.19.2 sha256 1a2b3c4d5e6f (12345 bytes), ..." for events and logs.
    pub fn describe(&self, version: &str) -> String {
        let one = |chart: &str, c: &RelayedChart| {
            format!(
                "{chart} {version} sha256 {} ({} bytes)",
                &c.sha256[..12.min(c.sha256.len())],
                c.size
            )
        };
        format!(
            "{}, {}",
            one(SKOALA.control_plane.chart, &self.control_plane),
            one(SKOALA.worker.chart, &self.worker)
        )
    }
}

/// Why a plan's charts cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartsError {
    /// The repository answered, and does not have a chart at the plan's version.
    #[error("spec.version: {0}")]
    Missing(String),
    /// The repository could not be asked (unreachable, not a chart repository, helm failed).
    #[error("spec.repository.url: {0}")]
    Unavailable(String),
}

/// Checks (repo) or prepares (relay) the charts of `plan`; `Some` for a relay plan.
pub async fn ready(
    helm: &Helm,
    dir: &DataDir,
    plan: &Plan,
) -> Result<Option<PlanCharts>, ChartsError> {
    match plan.chart_source {
        PlanSource::Repo => check_repository(helm, plan).await.map(|()| None),
        PlanSource::Relay => prepare(helm, dir, plan).await.map(Some),
    }
}

/// Pulls (or finds in the cache) both charts of a relay plan.
pub async fn prepare(helm: &Helm, dir: &DataDir, plan: &Plan) -> Result<PlanCharts, ChartsError> {
    let pull = |chart: &'static str| async move {
        let url = &plan.repository_url;
        let pulled = tokio::time::timeout(
            PULL_TIMEOUT,
            relay::prepare(url, chart, &plan.version, helm, dir),
        )
        .await;
        match pulled {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(relay_error(chart, &plan.version, url, e)),
            Err(_) => Err(ChartsError::Unavailable(format!(
                "the coordinator cannot relay {chart} {}: helm pull from {url} did not finish within {PULL_TIMEOUT:?}",
                plan.version
            ))),
        }
    };
    let (cp, worker) = tokio::join!(pull(SKOALA.control_plane.chart), pull(SKOALA.worker.chart));
    match (cp, worker) {
        (Ok(control_plane), Ok(worker)) => Ok(PlanCharts {
            control_plane,
            worker,
        }),
        (Err(a), Err(b)) => Err(both(a, b)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Asks the repository whether it has both charts at the plan's version.
async fn check_repository(helm: &Helm, plan: &Plan) -> Result<(), ChartsError> {
    let show = |chart: &'static str| async move {
        let url = &plan.repository_url;
        let version = &plan.version;
        let session = helm
            .session()
            .map_err(|e| ChartsError::Unavailable(format!("helm: {e}")))?;
        let args: Vec<std::ffi::OsString> =
            ["show", "chart", chart, "--repo", url, "--version", version]
                .iter()
                .map(Into::into)
                .collect();
        // `run`'s own bound includes a long overrun margin for upgrades; apply needs a short one
        // (the child is killed when the future is dropped).
        match tokio::time::timeout(SHOW_TIMEOUT, session.run(&args, SHOW_TIMEOUT)).await {
            Ok(Ok(out)) if out.success() => Ok(()),
            Ok(Ok(out)) => Err(helm_said(chart, version, url, &out.stderr)),
            Ok(Err(e)) => Err(ChartsError::Unavailable(format!(
                "cannot check {chart} {version} in {url}: {e}"
            ))),
            Err(_) => Err(ChartsError::Unavailable(format!(
                "cannot check {chart} {version} in {url}: the repository did not answer within {SHOW_TIMEOUT:?}"
            ))),
        }
    };
    let (cp, worker) = tokio::join!(show(SKOALA.control_plane.chart), show(SKOALA.worker.chart));
    match (cp, worker) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(a), Err(b)) => Err(both(a, b)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// The last lines of helm's stderr, on one line.
fn last_words(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Whether helm's words say the repository answered without that chart version.
fn says_missing(stderr: &str) -> bool {
    // helm 3 and 4: `chart "skoala-init" version "9.9.9" not found in <url> repository`
    stderr.contains("not found")
}

fn helm_said(chart: &str, version: &str, url: &str, stderr: &str) -> ChartsError {
    let said = last_words(stderr);
    if says_missing(stderr) {
        ChartsError::Missing(format!(
            "the repository {url} has no chart {chart} at version {version} (helm: {said})"
        ))
    } else {
        ChartsError::Unavailable(format!(
            "cannot check {chart} {version} in the repository {url} (helm: {said})"
        ))
    }
}

fn relay_error(chart: &str, version: &str, url: &str, e: RelayError) -> ChartsError {
    match &e {
        RelayError::Pull { stderr, .. } if says_missing(stderr) => ChartsError::Missing(format!(
            "the repository {url} has no chart {chart} at version {version}, so the coordinator cannot relay it ({e})"
        )),
        _ => ChartsError::Unavailable(format!(
            "the coordinator cannot relay {chart} {version} from {url}: {e}"
        )),
    }
}

/// Both charts failed: one error naming both (missing wins: it is what the operator fixes).
fn both(a: ChartsError, b: ChartsError) -> ChartsError {
    match (a, b) {
        (ChartsError::Missing(a), ChartsError::Missing(b)) => {
            ChartsError::Missing(format!("{a}; and {b}"))
        }
        (m @ ChartsError::Missing(_), _) | (_, m @ ChartsError::Missing(_)) => m,
        (ChartsError::Unavailable(a), ChartsError::Unavailable(_)) => ChartsError::Unavailable(a),
    }
}

/// Where a working cluster's task takes `skoala-init` from; `None` while a relay plan's
/// charts are not prepared (its tasks wait rather than fall back to a repository the
/// cluster may have no route to).
pub fn worker_source(plan: &Plan, charts: Option<&PlanCharts>) -> Option<pb::chart_source::Source> {
    match plan.chart_source {
        PlanSource::Repo => Some(pb::chart_source::Source::Repository(ChartRepository {
            name: plan.repository_name.clone(),
            url: plan.repository_url.clone(),
        })),
        PlanSource::Relay => charts.map(|c| {
            pb::chart_source::Source::Relay(pb::RelayedChart {
                sha256: c.worker.sha256.clone(),
                size: c.worker.size,
            })
        }),
    }
}

/// Where the control plane's executor takes `skoala` from; `None` as for
/// [`worker_source`].
pub fn control_plane_source(
    plan: &Plan,
    charts: Option<&PlanCharts>,
) -> Option<skoala_upgrade::ChartSource> {
    match plan.chart_source {
        PlanSource::Repo => Some(skoala_upgrade::ChartSource::Repository {
            name: plan.repository_name.clone(),
            url: plan.repository_url.clone(),
        }),
        PlanSource::Relay => charts.map(|c| skoala_upgrade::ChartSource::Archive {
            path: c.control_plane.path.clone(),
            sha256: c.control_plane.sha256.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_FOUND: &str = "Error: chart \"skoala-init\" version \"9.9.9\" not found in http://127.0.0.1:1 repository\n";
    const REFUSED: &str = "Error: looks like \"http://127.0.0.1:1\" is not a valid chart repository or cannot be reached: Get \"http://127.0.0.1:1/index.yaml\": dial tcp 127.0.0.1:1: connect: connection refused\n";

    #[test]
    fn helms_words_decide_between_a_missing_version_and_an_unreachable_repository() {
        let e = helm_said("skoala-init", "9.9.9", "http://127.0.0.1:1", NOT_FOUND);
        assert!(matches!(e, ChartsError::Missing(_)), "{e:?}");
        let text = e.to_string();
        for want in [
            "spec.version",
            "skoala-init",
            "9.9.9",
            "http://127.0.0.1:1",
            "not found",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }

        let e = helm_said("skoala", "0.19.2", "http://127.0.0.1:1", REFUSED);
        assert!(matches!(e, ChartsError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[test]
    fn two_failures_make_one_error_and_a_missing_chart_wins() {
        let m = |s: &str| ChartsError::Missing(s.into());
        let u = |s: &str| ChartsError::Unavailable(s.into());
        assert_eq!(both(m("a"), m("b")), m("a; and b"));
        assert_eq!(both(u("a"), m("b")), m("b"));
        assert_eq!(both(u("a"), u("b")), u("a"));
    }
}
