//! Why a plan has nothing in flight: the first question of an operator paged at 3 a.m. ("is
//! it stuck?") answered in one sentence, from the same facts the rollout decides on.
//!
//! A rollout that is upgrading or waiting for its windows has phase `controlPlane` or
//! `workers` either way; the difference is only visible in the targets. [`waiting_reason`]
//! says which clusters wait for what: their window (and when it next opens, in the window's
//! own time zone), their agent (offline), a window that never fits the expected upgrade time,
//! or a window name the plan does not define.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use crate::rollout::{FleetView, Phase, Rollout, TargetState};
use crate::validate::Plan;
use crate::window::{StartDecision, Window};

/// Why nothing of `rollout` runs although clusters are pending; `None` when something is in
/// flight, nothing is pending, or the phase has its own reason (paused, approval, finished).
///
/// ```
/// # use skoala_plan::{FleetView, Rollout, UpgradePlan, validate, ClusterRelease};
/// # use skoala_plan::waiting::waiting_reason;
/// let plan = validate(&UpgradePlan::from_yaml(r#"
/// apiVersion: fleet.skoala.io/v1alpha1
/// kind: UpgradePlan
/// metadata: {name: p}
/// spec:
///   version: 0.19.2
///   window: {days: [Sat], startTime: "02:00", endTime: "06:00", timeZone: Asia/Shanghai}
/// "#)?)?;
/// let rollout = Rollout::new(&plan);
/// let fleet = FleetView {
///     now: "2026-11-25T12:00:00Z".parse()?, // a Wednesday
///     expected: jiff::SignedDuration::from_mins(10),
///     control_plane: ClusterRelease {
///         cluster_id: "control-plane".into(),
///         name: "control-plane".into(),
///         connected: true,
///         release: None,
///     },
///     workers: Vec::new(),
/// };
/// assert_eq!(
///     waiting_reason(&rollout, &plan, &fleet).as_deref(),
///     Some("waiting: the control plane for its window, next open 2026-11-28 02:00 Asia/Shanghai")
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn waiting_reason(rollout: &Rollout, plan: &Plan, fleet: &FleetView) -> Option<String> {
    if !matches!(rollout.phase, Phase::ControlPlane | Phase::Workers) {
        return None;
    }
    let busy = |s: &TargetState| {
        matches!(
            s,
            TargetState::Running { .. } | TargetState::RollingBack { .. }
        )
    };
    if busy(&rollout.control_plane.state) || rollout.workers.iter().any(|(_, p)| busy(&p.state)) {
        return None;
    }

    if rollout.phase == Phase::ControlPlane {
        if rollout.control_plane.state != TargetState::Pending {
            return None;
        }
        let why = if !fleet.control_plane.connected {
            "the control plane is not reachable".to_string()
        } else {
            match plan.window.as_ref() {
                None => return None,
                Some(w) => match closed(w, fleet.now, fleet.expected)? {
                    Closed::Until(opens) => format!(
                        "the control plane for its window, next open {}",
                        local(w, opens)
                    ),
                    Closed::Never => format!(
                        "the control plane: no opening of its window fits the expected upgrade \
                         time of {}",
                        minutes(fleet.expected)
                    ),
                },
            }
        };
        return Some(format!("waiting: {why}"));
    }

    let views: HashMap<&str, _> = fleet
        .workers
        .iter()
        .map(|w| (w.release.cluster_id.as_str(), w))
        .collect();
    let (mut offline, mut never, mut unknown_window) = (0usize, 0usize, 0usize);
    // The earliest next opening among clusters waiting for a window, and how many wait.
    let mut for_window: Option<(Timestamp, &Window)> = None;
    let mut waiting_for_window = 0usize;
    for (id, progress) in &rollout.workers {
        if progress.state != TargetState::Pending {
            continue;
        }
        let Some(view) = views.get(id.as_str()) else {
            offline += 1;
            continue;
        };
        if !view.release.connected {
            offline += 1;
            continue;
        }
        match plan.window_for(&view.labels) {
            Err(_) => unknown_window += 1,
            Ok(None) => {}
            Ok(Some(w)) => match closed(w, fleet.now, fleet.expected) {
                None => {}
                Some(Closed::Never) => never += 1,
                Some(Closed::Until(opens)) => {
                    waiting_for_window += 1;
                    if for_window.is_none_or(|(t, _)| opens < t) {
                        for_window = Some((opens, w));
                    }
                }
            },
        }
    }
    let mut parts = Vec::new();
    if let Some((opens, w)) = for_window {
        parts.push(format!(
            "{} for their window, next open {}",
            clusters(waiting_for_window),
            local(w, opens)
        ));
    }
    if offline > 0 {
        parts.push(format!(
            "{} offline (upgraded when their agent is back, in their window)",
            clusters(offline)
        ));
    }
    if never > 0 {
        parts.push(format!(
            "{} whose window never fits the expected upgrade time of {}",
            clusters(never),
            minutes(fleet.expected)
        ));
    }
    if unknown_window > 0 {
        parts.push(format!(
            "{} whose label `{}` names a window the plan does not define",
            clusters(unknown_window),
            plan.window_label
        ));
    }
    (!parts.is_empty()).then(|| format!("waiting: {}", parts.join("; ")))
}

enum Closed {
    /// Closed (or too short for the upgrade) until this opening.
    Until(Timestamp),
    Never,
}

/// `None` when an upgrade may start now.
fn closed(w: &Window, now: Timestamp, expected: SignedDuration) -> Option<Closed> {
    match w.decide(now, expected) {
        StartDecision::Start { .. } => None,
        StartDecision::Wait { next } => Some(Closed::Until(next.opens)),
        StartDecision::Never => Some(Closed::Never),
    }
}

fn local(w: &Window, t: Timestamp) -> String {
    match jiff::tz::TimeZone::get(w.time_zone()) {
        Ok(tz) => format!(
            "{} {}",
            t.to_zoned(tz).strftime("%Y-%m-%d %H:%M"),
            w.time_zone()
        ),
        Err(_) => t.to_string(),
    }
}

fn clusters(n: usize) -> String {
    if n == 1 {
        "1 cluster".into()
    } else {
        format!("{n} clusters")
    }
}

fn minutes(d: SignedDuration) -> String {
    format!("{} min", (d.as_secs() + 59) / 60)
}
