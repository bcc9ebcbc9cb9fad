//! Gauges computed at scrape time from the fleet snapshot and the stored plans: clusters by
//! state, skew, versions in use, and the active plan's progress.
//!
//! Computed, not kept in sync by hand: the orchestrator's fleet view (live sessions, else the
//! stored inventory, plus the control plane's own watch) and the stored rollout are the truth
//! that `skoalactl status`/`skew`/`plan status` show, so the graphs can never disagree with the
//! CLI. They are handed in as a [`FleetState`]. A scrape every 15 s costs one read of the
//! clusters and plans tables.

use std::collections::{BTreeMap, HashSet};

use skoala_plan::{FleetView, PhaseKind, SkewReport};
use skoala_proto::v1::PlanStatus;

use skoala_support::prometheus::{Kind, Writer};

/// What the gauges are computed from, as `skoalactl` shows it.
pub struct FleetState {
    /// The fleet view the rollout steps on.
    pub view: FleetView,
    /// Its skew (invariant 3), as `skoalactl skew` reports it.
    pub skew: SkewReport,
    /// The statuses of the plans marked active in the store (at most one in practice: one
    /// plan at a time).
    pub active_plans: Vec<PlanStatus>,
}

/// Every working cluster is in exactly one of these (checked in this order): `offline` (no
/// live session), `upgrading` (the active plan runs an operation on it, or its release is
/// `pending-*`), `failed` (its release is in any other state than `deployed`), `missing`
/// (connected, but no `skoala-init` release reported), `connected` (connected, deployed,
/// nothing running).
pub const CLUSTER_STATES: &[&str] = &["connected", "upgrading", "failed", "missing", "offline"];

/// A plan's target (the control plane or a working cluster) is in exactly one of these.
/// `offline` is a `pending` target whose cluster is not connected: it waits for its agent.
pub const PLAN_TARGET_STATES: &[&str] = &[
    "pending",
    "offline",
    "running",
    "succeeded",
    "failed",
    "rollingBack",
    "rolledBack",
    "reverted",
];

/// Why clusters are skewed (`skoala_plan::SkewReason`'s kinds).
pub const SKEW_REASONS: &[&str] = &[
    "version",
    "status",
    "imageTag",
    "missing",
    "offline",
    "controlPlane",
];

/// One active plan's gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanGauges {
    pub name: String,
    pub version: String,
    pub phase: String,
    /// State → targets, every state of [`PLAN_TARGET_STATES`] present.
    pub targets: BTreeMap<&'static str, u64>,
}

/// Everything this module exposes, computed from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetGauges {
    pub clusters: BTreeMap<&'static str, u64>,
    pub control_plane_connected: bool,
    pub skewed: u64,
    pub skew_reasons: BTreeMap<&'static str, u64>,
    /// (release, chart version) → clusters carrying it.
    pub versions: BTreeMap<(String, String), u64>,
    pub plans: Vec<PlanGauges>,
}

fn zeroes(keys: &[&'static str]) -> BTreeMap<&'static str, u64> {
    keys.iter().map(|k| (*k, 0)).collect()
}

fn bump(map: &mut BTreeMap<&'static str, u64>, key: &str) {
    if let Some((_, n)) = map.iter_mut().find(|(k, _)| **k == key) {
        *n += 1;
    }
}

/// Computes the gauges.
pub fn compute(state: &FleetState) -> FleetGauges {
    let active_plans = &state.active_plans;
    let running: HashSet<&str> = active_plans
        .iter()
        .flat_map(|p| p.targets.iter())
        .filter(|t| t.state == "running" || t.state == "rollingBack")
        .map(|t| t.target.as_str())
        .collect();

    let mut clusters = zeroes(CLUSTER_STATES);
    let mut versions: BTreeMap<(String, String), u64> = BTreeMap::new();
    for w in &state.view.workers {
        let r = &w.release;
        let state = match &r.release {
            _ if !r.connected => "offline",
            _ if running.contains(r.cluster_id.as_str()) => "upgrading",
            Some(rel) if rel.status.is_pending() => "upgrading",
            Some(rel) if !rel.status.is_deployed() => "failed",
            None => "missing",
            Some(_) => "connected",
        };
        bump(&mut clusters, state);
        if let Some(rel) = &r.release {
            *versions
                .entry((
                    skoala_plan::profile::SKOALA.worker.release.to_string(),
                    rel.chart_version.clone(),
                ))
                .or_default() += 1;
        }
    }
    let cp = &state.view.control_plane;
    if let Some(rel) = &cp.release {
        *versions
            .entry((
                skoala_plan::profile::SKOALA
                    .control_plane
                    .release
                    .to_string(),
                rel.chart_version.clone(),
            ))
            .or_default() += 1;
    }

    let skew = &state.skew;
    let mut skew_reasons = zeroes(SKEW_REASONS);
    for c in &skew.clusters {
        let mut seen = HashSet::new();
        for reason in &c.reasons {
            let kind = match reason {
                skoala_plan::skew::SkewReason::Version { .. } => "version",
                skoala_plan::skew::SkewReason::Status { .. } => "status",
                skoala_plan::skew::SkewReason::ImageTag { .. } => "imageTag",
                skoala_plan::skew::SkewReason::Missing => "missing",
                skoala_plan::skew::SkewReason::Offline => "offline",
                skoala_plan::skew::SkewReason::ControlPlane { .. } => "controlPlane",
            };
            // A cluster with two wrong image tags is one cluster skewed by image tags.
            if seen.insert(kind) {
                bump(&mut skew_reasons, kind);
            }
        }
    }

    let plans = active_plans
        .iter()
        .map(|p| {
            let mut targets = zeroes(PLAN_TARGET_STATES);
            for t in &p.targets {
                let state = if t.state == "pending" && !t.connected {
                    "offline"
                } else {
                    t.state.as_str()
                };
                bump(&mut targets, state);
            }
            PlanGauges {
                name: p.name.clone(),
                version: p.version.clone(),
                phase: p.phase.clone(),
                targets,
            }
        })
        .collect();

    FleetGauges {
        clusters,
        control_plane_connected: cp.connected,
        skewed: skew.clusters.len() as u64,
        skew_reasons,
        versions,
        plans,
    }
}

impl FleetGauges {
    pub fn render(&self, w: &mut Writer) {
        w.family(
            "skoala_clusters",
            Kind::Gauge,
            "Registered working clusters by state (connected, upgrading, failed, missing, offline; each cluster in exactly one).",
        );
        for (state, n) in &self.clusters {
            w.sample("skoala_clusters", &[("state", state)], *n as f64);
        }
        w.single(
            "skoala_control_plane_connected",
            Kind::Gauge,
            "1 while the coordinator can read its own control-plane cluster's releases.",
            if self.control_plane_connected {
                1.0
            } else {
                0.0
            },
        );
        w.single(
            "skoala_skewed_clusters",
            Kind::Gauge,
            "Clusters (the control plane included) not on the control plane's version, not deployed, or with wrong image tags; 0 means one version everywhere.",
            self.skewed as f64,
        );
        w.family(
            "skoala_skewed_clusters_by_reason",
            Kind::Gauge,
            "Skewed clusters by reason (a cluster may count under several reasons).",
        );
        for (reason, n) in &self.skew_reasons {
            w.sample(
                "skoala_skewed_clusters_by_reason",
                &[("reason", reason)],
                *n as f64,
            );
        }
        w.family(
            "skoala_release_versions",
            Kind::Gauge,
            "Clusters by release (skoala on the control plane, skoala-init on workers) and chart version, from the last reported inventories.",
        );
        for ((release, version), n) in &self.versions {
            w.sample(
                "skoala_release_versions",
                &[("release", release), ("version", version)],
                *n as f64,
            );
        }
        w.family(
            "skoala_plan_info",
            Kind::Gauge,
            "The active plan and its target version (always 1).",
        );
        for p in &self.plans {
            w.sample(
                "skoala_plan_info",
                &[("plan", &p.name), ("version", &p.version)],
                1.0,
            );
        }
        w.family(
            "skoala_plan_phase",
            Kind::Gauge,
            "The active plan's phase: 1 for the current phase, 0 for the others.",
        );
        for p in &self.plans {
            for phase in PhaseKind::ALL.map(PhaseKind::as_str) {
                let v = if p.phase == phase { 1.0 } else { 0.0 };
                w.sample(
                    "skoala_plan_phase",
                    &[("plan", &p.name), ("phase", phase)],
                    v,
                );
            }
        }
        w.family(
            "skoala_plan_clusters",
            Kind::Gauge,
            "The active plan's targets (control plane and working clusters) by state; offline = pending and not connected.",
        );
        for p in &self.plans {
            for (state, n) in &p.targets {
                w.sample(
                    "skoala_plan_clusters",
                    &[("plan", &p.name), ("state", state)],
                    *n as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};
    use skoala_plan::profile::SKOALA;
    use skoala_plan::{ClusterRelease, ReleaseState, Target, WorkerView};
    use skoala_proto::v1::PlanTarget;

    use super::*;

    fn release(version: &str, status: &str, keys: &[&str]) -> Option<ReleaseState> {
        Some(ReleaseState {
            chart_version: version.into(),
            status: status.into(),
            image_tags: keys
                .iter()
                .map(|k| (k.to_string(), format!("v{version}")))
                .collect(),
        })
    }

    fn worker(id: &str, connected: bool, rel: Option<ReleaseState>) -> WorkerView {
        WorkerView {
            release: ClusterRelease {
                cluster_id: id.into(),
                name: id.into(),
                connected,
                release: rel,
            },
            labels: Default::default(),
        }
    }

    /// The state a scrape is handed: `workers`, the control plane at 0.19.2, their skew.
    fn state(workers: Vec<WorkerView>, active_plans: Vec<PlanStatus>) -> FleetState {
        let cp_keys = SKOALA.control_plane.image_tag_keys;
        let control_plane = ClusterRelease {
            cluster_id: Target::ControlPlane.to_string(),
            name: Target::ControlPlane.to_string(),
            connected: true,
            release: release("0.19.2", "deployed", cp_keys),
        };
        let releases: Vec<ClusterRelease> = workers.iter().map(|w| w.release.clone()).collect();
        let skew = skoala_plan::skew(
            &control_plane,
            cp_keys,
            &releases,
            SKOALA.worker.image_tag_keys,
        );
        FleetState {
            view: FleetView {
                now: Timestamp::UNIX_EPOCH,
                expected: SignedDuration::from_mins(10),
                control_plane,
                workers,
            },
            skew,
            active_plans,
        }
    }

    fn target(id: &str, state: &str, connected: bool) -> PlanTarget {
        PlanTarget {
            target: id.into(),
            name: id.into(),
            state: state.into(),
            connected,
            ..Default::default()
        }
    }

    #[test]
    fn each_cluster_counts_once_and_skew_is_the_reports() {
        let keys = SKOALA.worker.image_tag_keys;
        let workers = vec![
            worker("ok", true, release("0.19.2", "deployed", keys)),
            worker("old", true, release("0.19.0", "deployed", keys)),
            worker("busy", true, release("0.19.0", "deployed", keys)),
            worker("pending", true, release("0.19.0", "pending-upgrade", keys)),
            worker("broken", true, release("0.19.2", "failed", keys)),
            worker("empty", true, None),
            worker("away", false, release("0.19.0", "deployed", keys)),
        ];
        let plan = PlanStatus {
            name: "p".into(),
            version: "0.19.2".into(),
            phase: "workers".into(),
            targets: vec![
                target(&Target::ControlPlane.to_string(), "succeeded", true),
                target("ok", "succeeded", true),
                target("busy", "running", true),
                target("old", "pending", true),
                target("away", "pending", false),
                target("broken", "failed", true),
            ],
            ..Default::default()
        };
        let g = compute(&state(workers, vec![plan]));
        let want: BTreeMap<&str, u64> = [
            ("connected", 2), // ok, old
            ("upgrading", 2), // busy (plan), pending (helm)
            ("failed", 1),
            ("missing", 1),
            ("offline", 1),
        ]
        .into();
        assert_eq!(g.clusters, want);
        assert_eq!(g.clusters.values().sum::<u64>(), 7, "one state per cluster");
        // Every worker but "ok" is skewed; the control plane is fine.
        assert_eq!(g.skewed, 6);
        assert_eq!(g.skew_reasons["version"], 4); // old, busy, pending, away
        assert_eq!(g.skew_reasons["status"], 2); // pending, broken
        assert_eq!(g.skew_reasons["missing"], 1);
        assert_eq!(g.skew_reasons["offline"], 1);
        assert_eq!(g.versions[&("skoala".into(), "0.19.2".into())], 1);
        assert_eq!(g.versions[&("skoala-init".into(), "0.19.0".into())], 4);
        assert_eq!(g.versions[&("skoala-init".into(), "0.19.2".into())], 2);

        let p = &g.plans[0];
        assert_eq!(p.targets["succeeded"], 2);
        assert_eq!(p.targets["running"], 1);
        assert_eq!(p.targets["pending"], 1);
        assert_eq!(p.targets["offline"], 1);
        assert_eq!(p.targets["failed"], 1);
        assert_eq!(p.targets.len(), PLAN_TARGET_STATES.len());

        let mut w = Writer::default();
        g.render(&mut w);
        let text = w.finish();
        assert!(text.contains("skoala_plan_phase{plan=\"p\",phase=\"workers\"} 1\n"));
        assert!(text.contains("skoala_plan_phase{plan=\"p\",phase=\"succeeded\"} 0\n"));
        assert!(text.contains("skoala_plan_clusters{plan=\"p\",state=\"offline\"} 1\n"));
        assert!(text.contains("skoala_clusters{state=\"upgrading\"} 2\n"));
        assert!(text.contains("skoala_skewed_clusters 6\n"));
        assert!(text.contains("skoala_plan_info{plan=\"p\",version=\"0.19.2\"} 1\n"));
    }

    #[test]
    fn a_clean_fleet_has_no_skew_and_no_plan_series() {
        let keys = SKOALA.worker.image_tag_keys;
        let workers = vec![worker("a", true, release("0.19.2", "deployed", keys))];
        let g = compute(&state(workers, Vec::new()));
        assert_eq!(g.skewed, 0);
        assert!(g.skew_reasons.values().all(|n| *n == 0));
        let mut w = Writer::default();
        g.render(&mut w);
        let text = w.finish();
        assert!(text.contains("# TYPE skoala_plan_clusters gauge\n"));
        assert!(!text.contains("skoala_plan_clusters{"));
    }
}
