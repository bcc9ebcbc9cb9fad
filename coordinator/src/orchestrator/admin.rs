//! The admin API's side: apply a plan, the operator's verbs, and what `skoalactl` reads
//! (plans, their status, skew). Errors are [`Error`]s; the admin API turns them into gRPC
//! codes.

use std::sync::Arc;

use skoala_plan::{PauseOrigin, PhaseKind, Plan, Rollout, UpgradePlan, validate};
use skoala_proto::v1::PlanStatus;
use skoala_upgrade::Helm;

use super::fleet::Snapshot;
use super::saved::{self, Saved};
use super::{Active, Error, Orchestrator, Result, charts, status};
use crate::clock::now_ms;
use skoala_store::{PlanEventRecord, PlanRecord, Store};

impl<S: Store> Orchestrator<S> {
    /// `ApplyPlan`: validates, checks the fleet and the charts, then stores the plan as the
    /// active one together with its `plan.applied` event (one transaction). Nothing is stored
    /// and nothing starts unless every check passed and that write succeeded; re-applying a
    /// stored plan with the same document answers its status and changes nothing.
    pub async fn apply(&self, text: &str, force: bool) -> Result<PlanStatus> {
        self.apply_new(text, force).await.map(|(status, _)| status)
    }

    /// [`Orchestrator::apply`], and whether this call stored the plan (`false`: it was
    /// stored already, by this document). A plan object the coordinator created for
    /// `skoalactl plan apply` is seen by the GitOps reconciler too, which must not take the
    /// operator's apply for its own.
    pub async fn apply_new(&self, text: &str, force: bool) -> Result<(PlanStatus, bool)> {
        let doc = UpgradePlan::from_yaml(text).map_err(Error::Document)?;
        let plan = validate(&doc)?;
        if self.runner.is_none() {
            return Err(Error::NoControlPlane);
        }
        let snap = self.snapshot(Some(&plan)).await?;
        let selected = snap
            .view
            .workers
            .iter()
            .filter(|w| plan.selects(&w.release.name, &w.release.cluster_id, &w.labels))
            .count();
        if selected == 0 {
            return Err(Error::NothingSelected);
        }
        let skew = snap.skew();
        if !skew.is_clean()
            && skew.control_plane_version.as_deref() != Some(plan.version.as_str())
            && !force
        {
            let names: Vec<String> = skew.clusters.iter().map(|c| c.name.clone()).collect();
            return Err(Error::Skewed {
                clusters: names.join(", "),
                version: plan.version.clone(),
                control_plane: skew
                    .control_plane_version
                    .clone()
                    .unwrap_or_else(|| "(none)".into()),
            });
        }

        // Plans are created one at a time, so the stored plans read here stay true until
        // this apply stored its own (the loop only ever rewrites a plan's rollout).
        let _applying = self.applying.lock().await;
        let stored = self.store.plans().await?;
        let old = stored.iter().find(|p| p.name == plan.name);
        // The charts, before anything is stored: an unknown version or an unreachable
        // repository is refused now, naming the chart, the version and the URL. Re-applying a
        // stored plan changes nothing, so it is not checked again.
        let charts = match old {
            Some(_) => None,
            None => self.charts(&plan).await?,
        };

        let mut st = self.state.lock().await;
        if let Some(a) = &st.active
            && a.plan.name != plan.name
            && !a.rollout.phase.is_finished()
        {
            let (phase, _) = status::phase(&a.rollout.phase);
            return Err(Error::Busy {
                active: a.plan.name.clone(),
                phase,
            });
        }
        if let Some(old) = old {
            let same = UpgradePlan::from_yaml(&old.document).ok().as_ref() == Some(&doc);
            if !same {
                return Err(Error::Immutable(plan.name));
            }
            let rollout = saved::joined(&old.name, &old.rollout)?;
            return Ok((
                status::plan_status(old, &plan.version, &rollout, &snap),
                false,
            ));
        }
        let rollout = Rollout::new(&plan);
        let now = now_ms();
        let record = PlanRecord {
            name: plan.name.clone(),
            document: text.to_string(),
            rollout: saved::record(&rollout)?,
            active: true,
            created_ms: now,
            updated_ms: now,
        };
        let event = PlanEventRecord {
            plan: plan.name.clone(),
            kind: "plan.applied".into(),
            state: PhaseKind::ControlPlane.as_str().into(),
            message: match &charts {
                Some(c) => format!(
                    "{selected} working clusters selected, version {}; relaying {}",
                    plan.version,
                    c.describe(&plan.version)
                ),
                None => format!(
                    "{} working clusters selected, version {}",
                    selected, plan.version
                ),
            },
            ..Default::default()
        };
        let last = self.store.put_plan(record.clone(), vec![event]).await?;
        self.last_event.send_replace(last);
        tracing::info!(plan = %plan.name, version = %plan.version, selected, "plan applied");
        let status = status::plan_status(&record, &plan.version, &rollout, &snap);
        self.assigned.replace(rollout.in_flight());
        st.active = Some(Active {
            plan,
            saved: Saved::all(&rollout),
            rollout,
            charts,
        });
        drop(st);
        self.poke();
        Ok((status, true))
    }

    /// Approve, pause, resume, abort or roll back the active plan `name`. The verb takes
    /// effect once it is stored with its event: a failed write changes nothing.
    pub async fn transition(&self, name: &str, verb: Verb) -> Result<PlanStatus> {
        self.transition_recorded(name, verb, |_| async { Ok(()) })
            .await
    }

    /// [`Orchestrator::transition`], calling `record` once the verb passed on a copy of the
    /// rollout and before it takes effect: a refusal from `record` changes nothing. `record`
    /// is given the stage an approval approves. The kube store writes the verb on the plan's
    /// object there (design §4.4), so the GitOps reconciler, which cannot evaluate the object
    /// meanwhile, never reads an annotation that contradicts the verb.
    pub async fn transition_recorded<F, Fut>(
        &self,
        name: &str,
        verb: Verb,
        record: F,
    ) -> Result<PlanStatus>
    where
        F: FnOnce(Option<u32>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut st = self.state.lock().await;
        let Some(active) = st.active.as_mut().filter(|a| a.plan.name == name) else {
            return Err(self.not_active(name).await);
        };
        let mut rollout = active.rollout.clone();
        let mut approved = None;
        let done = match verb {
            Verb::Approve => rollout.approve().map(|stage| {
                approved = Some(stage);
                format!("stage {stage} approved")
            }),
            Verb::Pause => rollout
                .pause("paused by an operator", PauseOrigin::Operator)
                .map(|()| "paused by an operator; running upgrades finish".into()),
            Verb::Resume => rollout.resume().map(|()| "resumed".into()),
            Verb::Abort => rollout
                .abort()
                .map(|()| "aborted; running upgrades finish, nothing new starts".into()),
            Verb::Rollback => rollout
                .start_rollback(true)
                .map(|()| "rolling back: workers first, then the control plane".into()),
        }
        .map_err(Error::Refused)?;
        record(approved).await?;
        self.verbs_recorded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (phase, _) = status::phase(&rollout.phase);
        let event = PlanEventRecord {
            plan: name.to_string(),
            kind: format!("plan.{}", verb.as_str()),
            state: phase.into(),
            message: done,
            ..Default::default()
        };
        self.commit(active, rollout, vec![event]).await?;
        tracing::info!(plan = name, verb = verb.as_str(), "plan transition");
        drop(st);
        self.poke();
        // Let the round the verb started go first: tokio runs the task just woken from this
        // worker's LIFO slot, which no other worker may steal, only once this one yields, and
        // the status below copies the fleet view before its first await; without the yield an
        // approval's fan-out waited for the reply (BENCHMARKS.md).
        tokio::task::yield_now().await;
        self.status(name).await
    }

    /// Makes `rollout` the active plan's once it is stored with `events`: a failed write
    /// changes nothing.
    pub(super) async fn commit(
        &self,
        active: &mut Active,
        rollout: Rollout,
        events: Vec<PlanEventRecord>,
    ) -> Result<()> {
        let before = std::mem::replace(&mut active.rollout, rollout);
        // Nothing is handed over here: the round the caller pokes sends what this stored.
        if let Err(e) = self.persist(active, events, None).await {
            active.rollout = before;
            return Err(e.into());
        }
        Ok(())
    }

    async fn not_active(&self, name: &str) -> Error {
        match self.store.plans().await {
            Ok(all) if all.iter().any(|p| p.name == name) => Error::NotActive(name.to_string()),
            Ok(_) => Error::NotFound(name.to_string()),
            Err(e) => e.into(),
        }
    }

    /// Every plan, oldest first.
    pub async fn list(&self) -> Result<Vec<PlanStatus>> {
        let snap = self.snapshot(None).await?;
        let records = self.store.plans().await?;
        Ok(records
            .iter()
            .filter_map(|r| stored_status(r, &snap))
            .collect())
    }

    /// One plan.
    pub async fn status(&self, name: &str) -> Result<PlanStatus> {
        let snap = self.snapshot(None).await?;
        let records = self.store.plans().await?;
        let record = records
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        stored_status(record, &snap).ok_or_else(|| Error::Unreadable(name.to_string()))
    }

    /// The fleet view now and the statuses of the active plans as stored: what the metrics'
    /// scrape-time gauges are computed from, the same `skoalactl` shows.
    pub async fn fleet_and_active_plans(&self) -> Result<(Arc<Snapshot>, Vec<PlanStatus>)> {
        let snap = self.snapshot(None).await?;
        let active = self
            .store
            .plans()
            .await?
            .iter()
            .filter(|r| r.active)
            .filter_map(|r| stored_status(r, &snap))
            .collect();
        Ok((snap, active))
    }

    /// The fleet's skew right now.
    pub async fn skew(&self) -> Result<(skoala_plan::SkewReport, Arc<Snapshot>)> {
        let snap = self.snapshot(None).await?;
        Ok((snap.skew(), snap))
    }

    /// Checks (repo) or prepares (relay) `plan`'s charts with the coordinator's helm.
    async fn charts(&self, plan: &Plan) -> Result<Option<charts::PlanCharts>> {
        let Some(runner) = &self.runner else {
            return Ok(None);
        };
        let helm = Helm::detect(&runner.helm, &runner.kubeconfig)
            .await
            .map_err(|source| Error::Helm {
                helm: runner.helm.display().to_string(),
                source,
            })?;
        Ok(charts::ready(&helm, &self.data_dir, plan).await?)
    }
}

/// A stored plan as the API shows it (the rollout in the store is current: it is saved
/// before anything is acted on).
fn stored_status(r: &PlanRecord, snap: &Snapshot) -> Option<PlanStatus> {
    let version = UpgradePlan::from_yaml(&r.document).ok()?.spec.version;
    let rollout = saved::joined(&r.name, &r.rollout).ok()?;
    Some(status::plan_status(r, &version, &rollout, snap))
}

/// An operator's verb on a plan.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Approve,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Verb {
    /// The verb in the event log (`plan.<verb>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Approve => "approved",
            Verb::Pause => "paused",
            Verb::Resume => "resumed",
            Verb::Abort => "aborted",
            Verb::Rollback => "rollback",
        }
    }
}
