//! `skoalactl plan watch` on a terminal: a bar per wave (done/total, failed, running) and a line
//! per cluster with its latest step, redrawn in place about once a second until the plan
//! settles. When stdout is not a terminal, `plan watch` prints plain event lines instead
//! ([`crate::plans::events`]), which is what scripts and CI logs want.
//!
//! The picture is built from two sources: the plan's status (`GetPlan`: each cluster's state
//! and stage) and the event stream (`WatchEvents`: each cluster's latest step). [`render`] is a
//! pure function of both, so it is unit-tested without a coordinator; the redraw is plain ANSI
//! (cursor up, clear to end of screen, line wrap off while drawing so the line count holds).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Duration;

use skoala_proto::v1::{PlanEvent, PlanRef, PlanStatus, WatchEventsRequest};
use skoala_support::names;

use crate::connect::{Admin, explain_status};
use crate::plans::settled;

/// Width of a wave's bar, in cells.
const BAR: usize = 24;
/// How often the status is re-read and the picture redrawn.
const REDRAW: Duration = Duration::from_secs(1);

/// What the picture is drawn from.
#[derive(Debug, Default)]
pub struct WatchState {
    pub status: Option<PlanStatus>,
    /// Target → its latest step or result, in words.
    pub latest: HashMap<String, String>,
    /// The plan reached a final phase.
    pub settled: bool,
}

impl WatchState {
    /// Takes one event into the per-cluster lines.
    pub fn event(&mut self, e: &PlanEvent) {
        if e.target.is_empty() {
            return;
        }
        let text = match e.kind.as_str() {
            "step" => {
                let mut s = format!("step {} {}", e.step, e.state);
                if e.duration_ms > 0 {
                    s.push_str(&format!(" ({:.1}s)", e.duration_ms as f64 / 1000.0));
                }
                if e.state == "failed" && !e.message.is_empty() {
                    s.push_str(&format!(": {}", e.message));
                }
                s
            }
            "task.sent" => "task sent".to_string(),
            // The state itself is the cluster's line's second column.
            "task.result" => {
                let mut parts = Vec::new();
                if !e.step.is_empty() {
                    parts.push(format!("at step {}", e.step));
                }
                if e.duration_ms > 0 {
                    parts.push(format!("after {:.1}s", e.duration_ms as f64 / 1000.0));
                }
                let mut s = parts.join(" ");
                if !e.message.is_empty() && e.state != "succeeded" {
                    s.push_str(&format!(": {}", e.message));
                }
                s
            }
            _ => return,
        };
        self.latest.insert(e.target.clone(), text);
    }
}

/// One stage's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    total: usize,
    done: usize,
    failed: usize,
    running: usize,
}

impl Tally {
    fn add(&mut self, state: &str) {
        self.total += 1;
        match state {
            "succeeded" | "reverted" => self.done += 1,
            "failed" | "rolledBack" => self.failed += 1,
            "running" | "rollingBack" => self.running += 1,
            _ => {}
        }
    }
}

fn bar(label: &str, t: Tally) -> String {
    let cells = |n: usize| (n * BAR).checked_div(t.total).unwrap_or(0);
    let (done, failed) = (cells(t.done), cells(t.failed));
    let running = cells(t.running).min(BAR - done - failed);
    let mut s = format!(
        "  {label:<13} [{}{}{}{}] {}/{}",
        "#".repeat(done),
        "x".repeat(failed),
        ">".repeat(running),
        ".".repeat(BAR - done - failed - running),
        t.done,
        t.total
    );
    if t.failed > 0 {
        s.push_str(&format!(", {} failed", t.failed));
    }
    if t.running > 0 {
        s.push_str(&format!(", {} running", t.running));
    }
    s
}

/// The picture: a heading, a bar per stage (control plane, canary, wave 1, ...), the clusters
/// not started yet, then a line per cluster. Pure.
pub fn render(state: &WatchState) -> Vec<String> {
    let Some(p) = &state.status else {
        return vec!["waiting for the plan's status...".to_string()];
    };
    let mut out = vec![format!("plan {} → {}: {}", p.name, p.version, p.phase)];
    if !p.reason.is_empty() {
        out.push(format!("  {}", p.reason));
    }
    let mut control_plane = Tally::default();
    let mut stages: BTreeMap<i32, Tally> = BTreeMap::new();
    let mut waiting = Vec::new();
    for t in &p.targets {
        if t.target == "control-plane" {
            control_plane.add(&t.state);
        } else if t.stage < 0 {
            waiting.push(t.name.as_str());
        } else {
            stages.entry(t.stage).or_default().add(&t.state);
        }
    }
    out.push(bar("control plane", control_plane));
    for (stage, tally) in &stages {
        let label = if *stage == 0 {
            "canary".to_string()
        } else {
            format!("wave {stage}")
        };
        out.push(bar(&label, *tally));
    }
    if !waiting.is_empty() {
        out.push(format!("  not started   {}", waiting.len()));
    }
    let width = p.targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &p.targets {
        let mut line = format!("  {:<width$}  {:<11}", t.name, t.state);
        if !t.connected {
            line.push_str(" (offline)");
        }
        let detail = match state.latest.get(&t.target) {
            Some(d) if t.state != "pending" => d.clone(),
            _ => t.message.clone(),
        };
        let detail = one_line(&detail);
        if !detail.is_empty() {
            line.push_str(&format!(" {detail}"));
        }
        out.push(line.trim_end().to_string());
    }
    out
}

/// helm's messages span lines; a redrawn picture needs one row per line (the terminal cuts
/// what is wider than the screen: `plan get` has the whole message).
fn one_line(s: &str) -> String {
    const MAX: usize = 400;
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    match joined.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// Draws `lines` over the `drawn` lines drawn last time.
fn redraw(drawn: &mut usize, lines: &[String]) {
    let mut out = std::io::stdout().lock();
    let mut buf = String::new();
    if *drawn > 0 {
        buf.push_str(&format!("\x1b[{}A", *drawn));
    }
    // Clear to the end of the screen; no line wrap, so each line is one row.
    buf.push_str("\r\x1b[J\x1b[?7l");
    for l in lines {
        // What agents chose (names, helm's messages) must not move the cursor.
        buf.push_str(&names::printable(l));
        buf.push('\n');
    }
    buf.push_str("\x1b[?7h");
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
    *drawn = lines.len();
}

/// `plan watch NAME` on a terminal.
pub async fn watch(admin: &mut Admin, name: String) -> anyhow::Result<()> {
    let endpoint = admin.endpoint.clone();
    let mut stream = admin
        .client
        .watch_events(WatchEventsRequest {
            plan: name.clone(),
            after_id: 0,
            follow: true,
        })
        .await
        .map_err(|s| explain_status(&endpoint, s))?
        .into_inner();
    let mut state = WatchState::default();
    let mut drawn = 0;
    let mut tick = tokio::time::interval(REDRAW);
    let mut open = true;
    loop {
        tokio::select! {
            m = stream.message(), if open => match m.map_err(|s| explain_status(&endpoint, s))? {
                Some(e) => {
                    state.event(&e);
                    if settled(&e, &name) {
                        state.settled = true;
                    }
                    // Catching up on old events: draw once the burst is over (next tick).
                    if !state.settled {
                        continue;
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                println!();
                return Ok(());
            }
        }
        let status = admin
            .client
            .get_plan(PlanRef {
                name: name.clone(),
                force: false,
            })
            .await
            .map_err(|s| explain_status(&endpoint, s))?
            .into_inner();
        state.status = Some(status);
        redraw(&mut drawn, &render(&state));
        if state.settled || !open {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skoala_proto::v1::PlanTarget;

    fn target(name: &str, stage: i32, state: &str) -> PlanTarget {
        PlanTarget {
            target: if name == "control-plane" {
                name.into()
            } else {
                format!("id-{name}")
            },
            name: name.into(),
            state: state.into(),
            stage,
            connected: true,
            ..Default::default()
        }
    }

    fn state() -> WatchState {
        let mut offline = target("work-6", -1, "pending");
        offline.connected = false;
        WatchState {
            status: Some(PlanStatus {
                name: "to-0-19-2".into(),
                version: "0.19.2".into(),
                phase: "workers".into(),
                targets: vec![
                    target("control-plane", 0, "succeeded"),
                    target("work-1", 0, "succeeded"),
                    target("work-2", 1, "succeeded"),
                    target("work-3", 1, "failed"),
                    target("work-4", 1, "running"),
                    target("work-5", -1, "pending"),
                    offline,
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_bar_per_wave_with_done_total_failed_and_running() {
        let lines = render(&state());
        assert_eq!(lines[0], "plan to-0-19-2 → 0.19.2: workers");
        assert_eq!(lines[1], "  control plane [########################] 1/1");
        assert_eq!(lines[2], "  canary        [########################] 1/1");
        assert_eq!(
            lines[3],
            "  wave 1        [########xxxxxxxx>>>>>>>>] 1/3, 1 failed, 1 running"
        );
        assert_eq!(lines[4], "  not started   2");
        assert_eq!(lines.len(), 5 + 7, "{lines:#?}");
    }

    #[test]
    fn a_line_per_cluster_with_its_latest_step() {
        let mut s = state();
        s.event(&PlanEvent {
            kind: "step".into(),
            target: "id-work-4".into(),
            step: "upgrade".into(),
            state: "started".into(),
            ..Default::default()
        });
        s.event(&PlanEvent {
            kind: "task.result".into(),
            target: "id-work-3".into(),
            step: "verify".into(),
            state: "rolledBack".into(),
            message: "helm upgrade failed:\nnacos-operator not ready\n\ncontext deadline exceeded"
                .into(),
            ..Default::default()
        });
        s.event(&PlanEvent {
            kind: "task.result".into(),
            target: "id-work-2".into(),
            state: "succeeded".into(),
            duration_ms: 5200,
            ..Default::default()
        });
        let lines = render(&s);
        let line = |name: &str| {
            lines
                .iter()
                .find(|l| l.trim_start().starts_with(name))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            line("work-4"),
            "  work-4         running     step upgrade started"
        );
        assert_eq!(
            line("work-3"),
            "  work-3         failed      at step verify: helm upgrade failed: | nacos-operator not ready | context deadline exceeded",
            "one row per cluster, however many lines helm wrote"
        );
        assert_eq!(line("work-2"), "  work-2         succeeded   after 5.2s");
        assert_eq!(line("work-6"), "  work-6         pending     (offline)");
        assert_eq!(line("work-5"), "  work-5         pending");
    }

    #[test]
    fn before_the_first_status_it_says_so() {
        assert_eq!(render(&WatchState::default()).len(), 1);
    }
}
