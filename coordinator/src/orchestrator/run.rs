//! The rollout loop: one round per change, each round recording what came in, stepping the
//! rollout, persisting it and only then sending (the order invariant 2 needs).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use skoala_plan::profile::SKOALA;
use skoala_plan::validate::ChartSource;
use skoala_plan::{InFlight, OperationId, Plan, Target, TargetEntry, UpgradePlan, validate};
use skoala_proto::v1::{TaskResult, agent_message::Body};
use skoala_upgrade::Helm;

use super::fleet::{CONTROL_PLANE, Snapshot};
use super::saved::{self, Round, Saved};
use super::{
    Active, Delivery, Error, Input, Orchestrator, Result, State, TICK, charts, dispatch, status,
};
use crate::clock::now_ms;
use skoala_store::TASK_RESULT;
use skoala_store::{PlanEventRecord, RolloutWrite, Store, StoreError};
use tokio::sync::mpsc;

impl<S: Store> Orchestrator<S> {
    /// Runs until the process ends: loads the active plan, then steps on every change.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self
            .inbox_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            tracing::error!("the orchestrator is already running");
            return;
        };
        if let Err(e) = self.load().await {
            tracing::error!(error = %e, "cannot load the active plan; plans are stopped until restart");
            return;
        }
        let mut inputs = Vec::new();
        loop {
            tokio::select! {
                Some(i) = rx.recv() => inputs.push(i),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            while let Ok(i) = rx.try_recv() {
                inputs.push(i);
            }
            self.tick(std::mem::take(&mut inputs)).await;
        }
    }

    /// Takes up the active plan where the store has it (after a restart).
    async fn load(&self) -> Result<()> {
        let Some(record) = self.store.plans().await?.into_iter().find(|p| p.active) else {
            return Ok(());
        };
        let doc = UpgradePlan::from_yaml(&record.document).map_err(Error::Document)?;
        let plan = validate(&doc)?;
        let (rollout, saved) = Saved::load(&record.name, &record.rollout)?;
        tracing::info!(plan = %plan.name, "resuming the active plan");
        if plan.chart_source == ChartSource::Relay {
            self.prepare_charts_later(plan.clone());
        }
        self.assigned
            .replace(rollout.in_flight().into_iter().filter(|op| saved.holds(op)));
        self.state.lock().await.active = Some(Active {
            plan,
            rollout,
            saved,
            charts: None,
        });
        Ok(())
    }

    /// After a restart: prepares a relay plan's charts again (the data dir's cache answers
    /// without the network), retrying with a growing pause if even that fails (the cache was
    /// removed and the repository is gone), and hands them to the loop.
    fn prepare_charts_later(&self, plan: Plan) {
        let Some(runner) = self.runner.clone() else {
            return;
        };
        let dir = self.data_dir.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(5);
            loop {
                let prepared = match Helm::detect(&runner.helm, &runner.kubeconfig).await {
                    Ok(helm) => charts::prepare(&helm, &dir, &plan)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("helm: {e}")),
                };
                match prepared {
                    Ok(charts) => {
                        let _ = inbox.send(Input::Charts {
                            plan: plan.name.clone(),
                            charts,
                        });
                        return;
                    }
                    Err(error) => {
                        tracing::error!(plan = %plan.name, %error, retry_in = ?pause, "cannot prepare the plan's relayed charts; its upgrades wait for them");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(300));
                    }
                }
            }
        });
    }

    /// One round: record inputs, step, persist, send.
    ///
    /// A round of progress alone (the agents' `TaskAccepted` and `StepProgress`, 20,000 of
    /// them right after a 10,000-cluster fan-out) only records its events, all of the round's
    /// in one transaction: re-reading the whole fleet and stepping the rollout for them
    /// changes nothing and took the CPU the fan-out's deliveries needed (BENCHMARKS.md).
    async fn tick(&self, inputs: Vec<Input>) {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let mut events = Vec::new();
        let recently_stepped = st.stepped.is_some_and(|at| at.elapsed() < TICK);
        if recently_stepped && !inputs.is_empty() && inputs.iter().all(Input::is_progress) {
            for input in inputs {
                self.take_input(st, input, &mut events);
            }
            let fleet = self.fleet.lock().await;
            for e in &mut events {
                e.target_name = match fleet.last() {
                    Some(snap) => snap.name_of(&e.target),
                    None => e.target.clone(),
                };
            }
            drop(fleet);
            self.append(events).await;
            return;
        }
        let mut laps = Laps::start();
        // Before the results are recorded: their state changes are events too.
        let before = st.active.as_ref().map(|a| a.rollout.clone());
        for input in inputs {
            self.take_input(st, input, &mut events);
        }
        let plan = st.active.as_ref().map(|a| a.plan.clone());
        let expected = self.expected_or_default(plan.as_ref()).await;
        laps.lap("inputs");
        let mut fleet = self.fleet.lock().await;
        let snap = match fleet
            .refresh(&self.sources(), self.clock.now(), expected)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fleet; not stepping the plan");
                return;
            }
        };
        // The view is the round's own: admin reads refresh the cache meanwhile, neither
        // waiting for the other's writes.
        drop(fleet);
        laps.lap("refresh");
        for e in &mut events {
            e.target_name = snap.name_of(&e.target);
        }
        st.stepped = Some(std::time::Instant::now());
        let Some(active) = st.active.as_mut() else {
            self.append(events).await;
            return;
        };
        let before = before.unwrap_or_else(|| active.rollout.clone());
        // What starts is recorded in the rollout itself; `persist` hands each start over once
        // its entry is stored, and `send` whatever else is in flight and stored, as it does
        // after a reconnect or a restart.
        active.rollout.step(&active.plan, &SKOALA, &snap.view);
        laps.lap("step");
        events.extend(status::diff(&before, &active.rollout, &snap));
        laps.lap("diff");
        // Invariant 2: nothing is sent that the store does not have. What could not be
        // stored stays in memory, ahead of the store, and the next round (a tick at most
        // away) stores it and sends it; this round's events are lost, the state is not. What
        // is stored (this round or before) is sent all the same.
        let lost = events.len();
        // Each start is handed over as soon as its own entry is stored, during the write.
        let mut sent = Vec::new();
        let hand_over = HandOver {
            delivery: &mut st.delivery,
            sent: &mut sent,
        };
        if let Err(e) = self.persist(active, events, Some(hand_over)).await {
            tracing::error!(error = %e, plan = %active.plan.name, events_lost = lost, "cannot persist the rollout; sending only what is stored");
        }
        laps.lap("persist");
        self.send(st, &snap, laps, sent).await;
    }

    /// Stores what changed in the rollout, per part and in the order of [`Round`] (the head,
    /// the targets that start nothing, then the targets that start something; a head that
    /// finishes the plan after the targets when nothing starts), then tells
    /// watchers. When the starts take only the slots the round's results free
    /// ([`saved::Saved::carry`]), the results go with the starts, each start carrying the
    /// result whose slot it takes: one round trip for a hand-off instead of two. The head and the settled targets are each one all-or-nothing write, the last
    /// of them carrying `events` when nothing starts; the starts are stored each on its own
    /// ([`Orchestrator::start`]), and `events` follow them. A failed write ends the round's
    /// writes: what it held is written by the next round. Whatever was stored is recorded in
    /// [`Active::saved`], which is what every hand-over checks each operation against. With
    /// `hand_over`, each start is handed to its target as soon as its entry is stored, and
    /// recorded there.
    pub(super) async fn persist(
        &self,
        active: &mut Active,
        events: Vec<PlanEventRecord>,
        hand_over: Option<HandOver<'_>>,
    ) -> Result<(), StoreError> {
        let mut round = active.saved.round(&active.rollout);
        active.saved.carry(&active.plan, &mut round);
        if round.is_empty() {
            if !events.is_empty() {
                let last = self.store.append_plan_events(events).await?;
                self.last_event.send_replace(last);
            }
            return Ok(());
        }
        let Round {
            head,
            settled,
            starting,
        } = round;
        let plan = active.plan.name.clone();
        // When nothing starts, the head goes after the round's settled targets (design §3.3):
        // a reader never sees a phase (finished, paused for a failed canary) beside a target
        // whose result, which the phase follows from, is not stored yet. A crash between
        // leaves the results under the old head, which the next step recomputes. A start
        // still waits for the head (invariant 5: the control plane's success comes first).
        let head = head.map(|h| (Some(h), Vec::new()));
        let settled = (!settled.is_empty()).then_some((None, settled));
        let writes: Vec<_> = if starting.is_empty() {
            settled.into_iter().chain(head).collect()
        } else {
            head.into_iter().chain(settled).collect()
        };
        let mut events = Some(events);
        // The round's events ride with its last all-or-nothing write, or follow its starts.
        let last_write = if starting.is_empty() {
            writes.len().checked_sub(1)
        } else {
            None
        };
        let mut outcome = Ok(0);
        for (i, (head, targets)) in writes.into_iter().enumerate() {
            let write = RolloutWrite {
                plan: plan.clone(),
                head: head.as_ref().map(saved::head_json).transpose()?,
                targets: targets
                    .iter()
                    .map(saved::target_record)
                    .collect::<Result<_, _>>()?,
                events: if Some(i) == last_write {
                    events.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
            };
            match self.store.save_rollout(write).await {
                Ok(last) => {
                    if let Some(head) = head {
                        active.saved.head_stored(head);
                    }
                    active.saved.stored(targets);
                    outcome = Ok(last);
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() && !starting.is_empty() {
            outcome = self.start(active, starting, hand_over).await.map(|()| 0);
            if outcome.is_ok() {
                // They gate nothing: a refusal loses history, never the stored starts.
                self.append(events.take().unwrap_or_default()).await;
            }
        }
        // What the agents may report on follows the store, including a round stored in part.
        let saved = &active.saved;
        self.assigned.replace(
            active
                .rollout
                .in_flight()
                .into_iter()
                .filter(|op| saved.holds(op)),
        );
        let last = outcome?;
        if last > 0 {
            self.last_event.send_replace(last);
        }
        Ok(())
    }

    /// Stores a round's `starting` targets ([`PlanStore::start_targets`]) and, as each one's
    /// entry is stored, records it in [`Active::saved`] and [`Orchestrator::sent_to`]'s set
    /// and hands its operation over (with `hand_over`): on the kube store a burst of starts
    /// is one request per target, and a task waiting for the burst's last write would start
    /// the next burst in step with it.
    async fn start(
        &self,
        active: &mut Active,
        starting: Vec<TargetEntry>,
        mut hand_over: Option<HandOver<'_>>,
    ) -> Result<(), StoreError> {
        let records = starting
            .iter()
            .map(saved::target_record)
            .collect::<Result<Vec<_>, _>>()?;
        let mut entries: HashMap<String, TargetEntry> = starting
            .into_iter()
            .map(|e| (e.cluster_id.clone(), e))
            .collect();
        let (acks, mut acked) = mpsc::unbounded_channel::<String>();
        let stored = move |id: &str| {
            let _ = acks.send(id.to_string());
        };
        let write = self
            .store
            .start_targets(active.plan.name.clone(), records, &stored);
        tokio::pin!(write);
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut write => break outcome,
                Some(id) = acked.recv() => {
                    let more = std::iter::from_fn(|| acked.try_recv().ok());
                    let ids: Vec<String> = std::iter::once(id).chain(more).collect();
                    self.started(active, &mut entries, &ids, hand_over.as_mut());
                }
            }
        };
        let ids: Vec<String> = std::iter::from_fn(|| acked.try_recv().ok()).collect();
        self.started(active, &mut entries, &ids, hand_over.as_mut());
        outcome
    }

    /// The starts `ids` are stored: what [`Orchestrator::start`] does with each.
    fn started(
        &self,
        active: &mut Active,
        entries: &mut HashMap<String, TargetEntry>,
        ids: &[String],
        hand_over: Option<&mut HandOver<'_>>,
    ) {
        let stored: Vec<TargetEntry> = ids.iter().filter_map(|id| entries.remove(id)).collect();
        let ops: Vec<InFlight> = stored
            .iter()
            .filter_map(|e| InFlight::of(Target::Worker(e.cluster_id.clone()), &e.progress.state))
            .collect();
        active.saved.stored(stored);
        self.assigned.add(&ops);
        if let Some(h) = hand_over {
            let sent = self.hand_over(active, h.delivery, ops);
            h.sent.extend(sent);
        }
    }

    async fn append(&self, events: Vec<PlanEventRecord>) {
        if events.is_empty() {
            return;
        }
        match self.store.append_plan_events(events).await {
            Ok(last) => {
                self.last_event.send_replace(last);
            }
            Err(e) => tracing::error!(error = %e, "cannot record plan events"),
        }
    }

    /// Records one input into the rollout and the event list.
    fn take_input(&self, st: &mut State, input: Input, events: &mut Vec<PlanEventRecord>) {
        let (target, body) = match input {
            Input::Agent { cluster_id, body } => (Target::Worker(cluster_id), body),
            Input::ControlPlane(body) => (Target::ControlPlane, body),
            Input::Charts { plan, charts } => {
                if let Some(a) = st.active.as_mut().filter(|a| a.plan.name == plan) {
                    tracing::info!(plan = %plan, charts = %charts.describe(&a.plan.version), "relayed charts ready");
                    a.charts = Some(charts);
                }
                return;
            }
        };
        let target_id = match &target {
            Target::ControlPlane => CONTROL_PLANE.to_string(),
            Target::Worker(id) => id.clone(),
        };
        self.metrics
            .executor_input(target == Target::ControlPlane, &body);
        match body {
            Body::StepProgress(p) => events.push(PlanEventRecord {
                plan: plan_of(&p.operation_id),
                kind: "step".into(),
                target: target_id,
                operation_id: p.operation_id,
                step: p.step,
                state: dispatch::step_phase(p.phase).into(),
                message: p.message,
                duration_ms: p.duration_ms,
                ..Default::default()
            }),
            Body::TaskResult(r) => {
                if target == Target::ControlPlane {
                    st.delivery.cp_running = None;
                }
                if let (Target::Worker(id), Some(release)) = (&target, r.release_after.clone()) {
                    self.sessions.set_release(id, release);
                }
                let started = st.delivery.sent_ms.remove(&r.operation_id);
                st.delivery.delivered.remove(&r.operation_id);
                let (outcome, state) = dispatch::outcome(&r);
                let recorded = st
                    .active
                    .as_mut()
                    .is_some_and(|a| a.rollout.record(&target, &r.operation_id, outcome));
                events.push(result_event(&r, target_id, state, started, recorded));
            }
            Body::TaskAccepted(a) => {
                tracing::debug!(operation = %a.operation_id, "task accepted");
            }
            _ => {}
        }
    }

    /// Hands each of `ops` the store holds to its target, unless it already reached it: a
    /// worker's down its agent's current session (again after a reconnect), the control
    /// plane's once per run. Returns the target and operation id of each handed over.
    fn hand_over(
        &self,
        active: &Active,
        delivery: &mut Delivery,
        ops: impl IntoIterator<Item = InFlight>,
    ) -> Vec<(String, String)> {
        let Delivery {
            delivered,
            cp_running,
            sent_ms,
        } = delivery;
        let (plan, charts) = (&active.plan, active.charts.as_ref());
        let mut sent = Vec::new();
        for op in ops {
            if !active.saved.holds(&op) {
                continue; // its write failed: sent once a round stores it
            }
            let rollback_to = dispatch::rollback_to(&op);
            let id = op.operation_id().to_string();
            match op.target() {
                Target::ControlPlane => {
                    if cp_running.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    let Some(source) = charts::control_plane_source(plan, charts) else {
                        continue; // a relay plan's charts are being prepared
                    };
                    if !self
                        .dispatch
                        .control_plane(plan, source, &id, rollback_to, &self.inbox)
                    {
                        continue; // no control plane here: plans are refused at apply
                    }
                    *cp_running = Some(id.clone());
                    sent_ms.entry(id.clone()).or_insert_with(now_ms);
                    sent.push((CONTROL_PLANE.to_string(), id));
                }
                Target::Worker(cluster) => {
                    let Some(session) = self.dispatch.session(cluster) else {
                        continue; // offline: sent when it comes back
                    };
                    if delivered.get(&id) == Some(&session) {
                        continue;
                    }
                    let Some(source) = charts::worker_source(plan, charts) else {
                        continue; // a relay plan's charts are being prepared
                    };
                    let mut task = dispatch::worker_task(plan, &id, rollback_to, self.helm_timeout);
                    dispatch::set_source(&mut task, source);
                    if !self.dispatch.send(cluster, session, task) {
                        continue; // the session just ended; the next one gets it
                    }
                    delivered.insert(id.clone(), session);
                    sent_ms.entry(id.clone()).or_insert_with(now_ms);
                    sent.push((cluster.clone(), id));
                }
            }
        }
        sent
    }

    /// Hands over every operation in flight that has not reached its target, and records
    /// those and `sent` (handed over earlier in the round) as the round's `task.sent` events.
    async fn send(
        &self,
        st: &mut State,
        snap: &Snapshot,
        mut laps: Laps,
        mut sent: Vec<(String, String)>,
    ) {
        let Some(active) = st.active.as_ref() else {
            return;
        };
        let plan = active.plan.name.clone();
        sent.extend(self.hand_over(active, &mut st.delivery, active.rollout.in_flight()));
        // One line per round, not per task: 10,000 lines after a fan-out cost the CPU the
        // deliveries needed. Each task is still an event (`skoalactl events`) and a debug line.
        // scripts/bench-plan.sh times the hand-off by this line (written after the loop).
        if let Some((target, op)) = sent.first() {
            laps.lap("send");
            tracing::info!(plan = %plan, tasks = sent.len(), first_target = %target, first_operation = %op, round = %laps, "tasks sent");
        }
        let mut events = Vec::new();
        for (target, op) in sent {
            tracing::debug!(plan = %plan, target = %target, operation = %op, "task sent");
            events.push(PlanEventRecord {
                plan: plan.clone(),
                kind: "task.sent".into(),
                target_name: snap.name_of(&target),
                target,
                operation_id: op,
                ..Default::default()
            });
        }
        self.append(events).await;
    }
}

/// Where a round hands its starts over as they are stored, and records what it handed over.
pub(super) struct HandOver<'a> {
    pub delivery: &'a mut Delivery,
    pub sent: &'a mut Vec<(String, String)>,
}

/// Where one round's time went, logged with its `tasks sent` line (`round="refresh=1ms
/// step=40ms persist=62ms send=20ms"`): a slow fan-out names its slow part without a profiler.
struct Laps {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        Laps {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, took)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{what}={}ms", took.as_millis())?;
        }
        Ok(())
    }
}

/// The plan an operation id belongs to; empty for a text that is not an operation id.
fn plan_of(operation_id: &str) -> String {
    operation_id
        .parse::<OperationId>()
        .map(|id| id.plan().to_string())
        .unwrap_or_default()
}

fn result_event(
    r: &TaskResult,
    target: String,
    state: &str,
    started_ms: Option<i64>,
    recorded: bool,
) -> PlanEventRecord {
    let mut message = r.message.clone();
    if !r.rollback_message.is_empty() {
        message.push_str(&format!("; rollback: {}", r.rollback_message));
    }
    if !recorded {
        message = format!("(ignored: not a running operation of the active plan) {message}");
    }
    PlanEventRecord {
        plan: plan_of(&r.operation_id),
        kind: TASK_RESULT.into(),
        target,
        operation_id: r.operation_id.clone(),
        step: r.failed_step.clone(),
        // Only upgrades that ran here count towards the history of durations.
        state: if recorded {
            state.into()
        } else {
            format!("{state}.ignored")
        },
        message,
        duration_ms: started_ms.map(|s| now_ms() - s).unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
