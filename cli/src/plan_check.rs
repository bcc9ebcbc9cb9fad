//! `skoalactl plan check`: the executor's preflight on every cluster a plan selects and on the
//! control plane, as a table. Exit 0 when every reachable cluster passed; offline clusters are
//! listed but do not fail the check (offline is not failed: the plan upgrades them when they
//! come back), nor do clusters the running plan is upgrading right now (`upgrading`); a
//! reachable cluster that failed or did not answer does.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use skoala_plan::ReleaseStatus;
use skoala_proto::v1::{CheckPlanRequest, PreflightResult};

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, dash};

/// What to check: a stored plan or a document.
pub enum Subject {
    Name(String),
    Document(String),
}

/// One cluster's preflight as printed (`-o json|yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    pub name: String,
    pub target: String,
    pub role: String,
    pub reachable: bool,
    pub current_version: String,
    pub current_status: String,
    pub result: String,
    pub step: String,
    pub message: String,
    pub duration_ms: i64,
}

/// The whole check as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckView {
    pub plan: String,
    pub version: String,
    /// Every reachable cluster passed.
    pub ready: bool,
    pub clusters: Vec<CheckRow>,
}

fn row(r: PreflightResult) -> CheckRow {
    CheckRow {
        name: r.name,
        target: r.target,
        role: r.role,
        reachable: r.reachable,
        current_version: r.current_version,
        current_status: r.current_status,
        result: r.result,
        step: r.step,
        message: r.message,
        duration_ms: r.duration_ms,
    }
}

/// Whether this row fails the check: a reachable cluster that did not pass.
fn blocks(r: &CheckRow) -> bool {
    !matches!(r.result.as_str(), "passed" | "offline" | "upgrading")
}

/// Builds the view: control plane first, then clusters by name.
pub fn view(plan: String, version: String, mut rows: Vec<CheckRow>) -> CheckView {
    rows.sort_by(|a, b| {
        (a.role != "control-plane", &a.name).cmp(&(b.role != "control-plane", &b.name))
    });
    CheckView {
        plan,
        version,
        ready: !rows.iter().any(blocks),
        clusters: rows,
    }
}

/// The table and the verdict, as lines (pure, for tests).
pub fn render(v: &CheckView) -> (Vec<String>, Vec<Vec<String>>, String) {
    let header = [
        "CLUSTER",
        "ROLE",
        "REACHABLE",
        "VERSION",
        "RESULT",
        "MESSAGE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows = v
        .clusters
        .iter()
        .map(|r| {
            let status = ReleaseStatus::parse(&r.current_status);
            let version = match r.current_version.as_str() {
                "" => "-".to_string(),
                v if status.is_deployed() || r.current_status.is_empty() => v.to_string(),
                v => format!("{v} ({status})"),
            };
            let message = if r.step.is_empty() || r.result == "passed" {
                dash(&r.message)
            } else {
                format!("step {}: {}", r.step, r.message)
            };
            vec![
                r.name.clone(),
                r.role.clone(),
                if r.reachable { "yes" } else { "no" }.into(),
                version,
                r.result.clone(),
                message,
            ]
        })
        .collect();
    let count = |what: &str| v.clusters.iter().filter(|r| r.result == what).count();
    let mut summary = format!(
        "plan {} → {}: {} passed, {} failed, {} offline",
        v.plan,
        v.version,
        count("passed"),
        count("failed"),
        count("offline")
    );
    let upgrading = count("upgrading");
    if upgrading > 0 {
        summary.push_str(&format!(", {upgrading} being upgraded by the plan"));
    }
    let silent = count("noAnswer");
    if silent > 0 {
        summary.push_str(&format!(", {silent} did not answer"));
    }
    if v.ready {
        summary.push_str(if count("offline") > 0 {
            " — ready (offline clusters are upgraded when they return)"
        } else {
            " — ready"
        });
    } else {
        let names: Vec<&str> = v
            .clusters
            .iter()
            .filter(|r| blocks(r))
            .map(|r| r.name.as_str())
            .collect();
        summary.push_str(&format!(" — NOT ready: {}", names.join(", ")));
    }
    (header, rows, summary)
}

pub async fn check(
    admin: &mut Admin,
    subject: Subject,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (name, document) = match subject {
        Subject::Name(n) => (n, String::new()),
        Subject::Document(d) => (String::new(), d),
    };
    let mut stream = admin
        .client
        .check_plan(CheckPlanRequest {
            name,
            document,
            timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let (mut plan, mut version, mut rows) = (String::new(), String::new(), Vec::new());
    while let Some(r) = stream
        .message()
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
    {
        plan.clone_from(&r.plan);
        version.clone_from(&r.version);
        rows.push(row(r));
    }
    let v = view(plan, version, rows);
    if !output::structured(format, &v)? {
        let (header, rows, summary) = render(&v);
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        output::table(&header, &rows);
        println!("{summary}");
    }
    Ok(if v.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, role: &str, reachable: bool, result: &str) -> CheckRow {
        CheckRow {
            name: name.into(),
            target: name.into(),
            role: role.into(),
            reachable,
            current_version: "0.19.0".into(),
            current_status: "deployed".into(),
            result: result.into(),
            step: String::new(),
            message: String::new(),
            duration_ms: 0,
        }
    }

    #[test]
    fn offline_is_listed_but_does_not_fail_the_check() {
        let v = view(
            "p".into(),
            "0.19.2".into(),
            vec![
                r("work-2", "worker", false, "offline"),
                r("work-1", "worker", true, "passed"),
                r("control-plane", "control-plane", true, "passed"),
            ],
        );
        assert!(v.ready);
        let (_, rows, summary) = render(&v);
        let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["control-plane", "work-1", "work-2"]);
        assert_eq!(rows[2][2], "no");
        assert!(
            summary.contains("1 offline") && summary.contains("ready"),
            "{summary}"
        );
    }

    #[test]
    fn a_failure_names_cluster_step_and_reason() {
        let mut bad = r("work-3", "worker", true, "failed");
        bad.current_status = "failed".into();
        bad.step = "preflight".into();
        bad.message = "release skoala-init revision 2 is failed, not deployed".into();
        let silent = r("work-4", "worker", true, "noAnswer");
        let busy = r("work-5", "worker", true, "upgrading");
        let v = view("p".into(), "0.19.2".into(), vec![bad, silent, busy]);
        assert!(!v.ready);
        let (_, rows, summary) = render(&v);
        assert_eq!(rows[0][3], "0.19.0 (failed)");
        assert_eq!(
            rows[0][5],
            "step preflight: release skoala-init revision 2 is failed, not deployed"
        );
        assert!(summary.ends_with("NOT ready: work-3, work-4"), "{summary}");
        assert!(summary.contains("1 did not answer"), "{summary}");
        assert!(
            summary.contains("1 being upgraded by the plan"),
            "{summary}"
        );
    }
}
