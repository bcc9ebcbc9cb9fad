//! Plans, their rollouts and their events on the API server (design §2.2 *Plans*, §3.2,
//! §3.3): the head in `UpgradePlan.status`, each target in its `FleetCluster.status.plans[]`,
//! events in `FleetLog` segments ([`events`]), the plan-name registry and the active-plan
//! pointer in the `skoala-fleet-state` ConfigMap.
//!
//! **A plan is stored once its name is in the registry.** `put_plan` writes the object and its
//! status, its targets and its events, and the registry and pointer last, in one write: that
//! write is the commit point. A plan whose write failed before it is not listed, whatever
//! parts of it landed, so "a plan is stored with its events or not at all" holds even after a
//! crash; on a refusal, what landed is taken back only so that it takes no room.
//!
//! **One write of a rollout is undone when a part of it fails.** Its head, its targets and its
//! events go to different objects, which no request changes together; so the parts are
//! written in the order of §3.3 (head, targets that start nothing, targets that start
//! something, events) and, when one is refused, those already stored are written back as they
//! were. A crash in between leaves a prefix of the write, which §3.3 shows is safe; the undo
//! is what makes a refusal leave nothing, as the trait promises. Starts
//! (`start_targets`, with the results they carry copies of) are the exception the trait allows:
//! each is its own request and is kept when another is refused, so each can be sent as soon as
//! it lands; what lands in part is safe, as the results a start follows are stored before it
//! or carried by it (design §3.3, *as built*). The events are handed to
//! their log, not awaited (§3.3 step 6, [`events`]): they gate nothing, and a round that
//! waited for the log's next flush would hold its tasks that long.
//!
//! **Invariant:** this part is the only writer of `status.plans` of every `FleetCluster`, of
//! the status fields of `UpgradePlan` it names, and of the state ConfigMap's `activePlan` and
//! `plans`. Merge patches replace whole arrays, so `status.plans` is written whole from the
//! copy here, under [`Plans::writing`]; a target whose cluster has no `FleetCluster` (not
//! registered yet, or a cluster of a test) gets a placeholder object, labelled
//! [`PLACEHOLDER_LABEL`] and without `status.registration`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skoala_plan::UpgradePlan as PlanDocument;
use skoala_store::{
    Cutoffs, PlanEventRecord, PlanRecord, RolloutRecord, RolloutWrite, StoreError, TASK_RESULT,
    TargetRecord,
};

use super::shared::{Key, KindKey, Shared, Target, api_error};
use crate::crd::{self, ClusterPlan, FleetCluster, History, Kind, UpgradePlan};
use crate::write::Class;

mod display;
mod events;

/// The fleet's pointer object (design §2.1).
pub const STATE_CONFIG_MAP: &str = "skoala-fleet-state";
/// Its key naming the active plan (empty: none).
const ACTIVE_KEY: &str = "activePlan";
/// Its key listing every plan name ever accepted, one a line, oldest first.
const REGISTRY_KEY: &str = "plans";
/// Its key naming the store a migration brought the fleet from (absent: none).
const MIGRATED_FROM_KEY: &str = "migratedFrom";
/// The state ConfigMap's key while a migration into the namespace is under way: created with
/// it before the first record is written, removed by the commit. A store finding it refuses
/// to open ([`StoreError::Unfinished`]).
const MIGRATING_KEY: &str = "migrating";
/// How many plans' entries a cluster keeps, the most recent first (design §2.2 *Plans*).
pub const KEPT_PLANS: usize = 5;
/// The label of a `FleetCluster` made only to hold a target's entry.
pub const PLACEHOLDER_LABEL: &str = "fleet.skoala.io/placeholder";

/// The plan part of the store.
pub(super) struct Plans {
    shared: Arc<Shared>,
    /// Held by every write of this part, from the copy it computes from until it is stored
    /// (or undone): two writes computing from the same copy would undo each other.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// What is stored, as this leader wrote or loaded it.
    state: Arc<Mutex<State>>,
    events: events::EventLog,
    /// The printer columns' fields of each plan's status.
    shows: display::Shows,
}

#[derive(Default)]
struct State {
    /// Every stored plan: in the registry, with its `UpgradePlan`.
    plans: BTreeMap<String, Stored>,
    /// Every plan name ever accepted, oldest first (names are never reused).
    registry: Vec<String>,
    /// The active plan.
    active: Option<String>,
    /// Each `FleetCluster`'s `status.plans`, as stored; no key: no object known.
    clusters: HashMap<String, Vec<ClusterPlan>>,
}

impl State {
    /// Records `plan` as stored, active or not; returns the plan that was active before.
    fn accept(&mut self, plan: &PlanRecord, stored: Stored) -> Option<String> {
        if !self.registry.contains(&plan.name) {
            self.registry.push(plan.name.clone());
        }
        self.plans.insert(plan.name.clone(), stored);
        if plan.active {
            self.active.replace(plan.name.clone())
        } else if self.active.as_deref() == Some(plan.name.as_str()) {
            self.active.take()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
struct Stored {
    document: String,
    head: Option<Value>,
    history: History,
    created_ms: i64,
    updated_ms: i64,
}

/// A write that landed, and how to take it back.
enum Done {
    /// A plan's status fields before the write.
    PlanStatus { name: String, before: Value },
    /// A cluster's `status.plans` before the write.
    Cluster {
        id: String,
        before: Vec<ClusterPlan>,
    },
    /// An `UpgradePlan` this call created.
    Created { name: String },
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// An argument the store cannot keep as given.
fn invalid(what: String) -> StoreError {
    StoreError::Corrupt(what)
}

/// A head or a target's progress as the status holds it: a JSON object.
fn object(what: &str, text: &str) -> Result<Value, StoreError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid(format!("{what} is not a JSON object: {text:?}"))),
        Err(e) => Err(invalid(format!("{what} is not JSON ({e}): {text:?}"))),
    }
}

fn head_value(plan: &str, head: &str) -> Result<Option<Value>, StoreError> {
    if head.is_empty() {
        return Ok(None);
    }
    object(&format!("the rollout head of plan {plan}"), head).map(Some)
}

fn head_text(head: &Option<Value>) -> String {
    head.as_ref().map(Value::to_string).unwrap_or_default()
}

fn entry(plan: &str, t: &TargetRecord) -> Result<ClusterPlan, StoreError> {
    Ok(ClusterPlan {
        plan: plan.to_string(),
        order: t.order,
        state: t.phase,
        progress: object(
            &format!("the progress of {} in plan {plan}", t.cluster_id),
            &t.progress,
        )?,
    })
}

/// `entries` with `plan`'s entry set to `new` (or removed), most recent plan first, at most
/// [`KEPT_PLANS`].
fn with_entry(entries: &[ClusterPlan], plan: &str, new: Option<ClusterPlan>) -> Vec<ClusterPlan> {
    let mut out: Vec<ClusterPlan> = entries.to_vec();
    match (out.iter().position(|e| e.plan == plan), new) {
        (Some(i), Some(new)) => out[i] = new,
        (Some(i), None) => {
            out.remove(i);
        }
        (None, Some(new)) => out.insert(0, new),
        (None, None) => {}
    }
    out.truncate(KEPT_PLANS);
    out
}

/// How much `events` adds to each plan's upgrade history: succeeded upgrades with a duration,
/// the same filter SQLite's mean uses.
fn history_deltas(events: &[PlanEventRecord]) -> BTreeMap<String, History> {
    let mut out: BTreeMap<String, History> = BTreeMap::new();
    for e in events {
        if e.kind == TASK_RESULT
            && e.state == "succeeded"
            && e.duration_ms > 0
            && e.operation_id.contains(".upgrade-")
        {
            let h = out.entry(e.plan.clone()).or_default();
            h.upgrades += 1;
            h.upgrade_millis += e.duration_ms.unsigned_abs();
        }
    }
    out
}

/// `into` with the top-level fields of `fields` set: both are JSON objects.
fn merge(into: &mut Value, fields: &Value) {
    if let (Some(into), Some(fields)) = (into.as_object_mut(), fields.as_object()) {
        into.extend(fields.clone());
    }
}

fn history_value(h: &History) -> Value {
    serde_json::to_value(h).expect("history serializes")
}

/// How long a plan's upgrade history waits for the plan object's next write to carry it: a
/// rollout's rounds come milliseconds apart, each adding to the history, and the counts the
/// plan shows are written at most every [`display::INTERVAL`] while they change. A leader that
/// dies loses at most this much of the statistic (estimates read it), never a result.
const HISTORY_HOLD: Duration = display::INTERVAL;

fn plan_key(name: &str) -> Key {
    Key {
        kind: KindKey::UpgradePlan,
        name: name.to_string(),
        target: Target::Status,
    }
}

fn cluster_key(id: &str) -> Key {
    Key {
        kind: KindKey::FleetCluster,
        name: id.to_string(),
        target: Target::Status,
    }
}

impl Plans {
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let (registry, active) = read_state(&shared).await?;
        let plan_api: Api<UpgradePlan> = typed(&shared, Kind::UpgradePlan);
        let objects = plan_api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing upgrade plans", e))?;
        let mut plans = BTreeMap::new();
        let mut shown = HashMap::new();
        for object in objects.items {
            let Some(name) = object.metadata.name.clone() else {
                continue;
            };
            if !registry.contains(&name) {
                continue;
            }
            let status = object.status.clone().unwrap_or_default();
            shown.insert(name.clone(), display::stored(&status));
            let created_ms = status
                .accepted
                .as_ref()
                .map(|a| a.at.as_millisecond())
                .unwrap_or_default();
            plans.insert(
                name,
                Stored {
                    document: document_text(&object)?,
                    head: status.rollout,
                    history: status.history.unwrap_or_default(),
                    created_ms,
                    updated_ms: created_ms,
                },
            );
        }
        let cluster_api: Api<FleetCluster> = typed(&shared, Kind::FleetCluster);
        let clusters = cluster_api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing fleet clusters", e))?
            .items
            .into_iter()
            .filter_map(|c| {
                let plans = c.status.map(|s| s.plans).unwrap_or_default();
                c.metadata.name.map(|n| (n, plans))
            })
            .collect();
        let segments = events::list(&shared).await?;
        let events = events::EventLog::load(&shared, &segments).await?;
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        let state = Arc::new(Mutex::new(State {
            plans,
            registry,
            active: active.filter(|a| !a.is_empty()),
            clusters,
        }));
        Ok(Plans {
            shows: display::Shows::new(
                Arc::clone(&shared),
                Arc::clone(&state),
                Arc::clone(&writing),
                shown,
            ),
            shared,
            writing,
            state,
            events,
        })
    }

    /// Whether `name` is a stored plan.
    pub fn is_stored(&self, name: &str) -> bool {
        self.state.lock().expect("lock").plans.contains_key(name)
    }

    /// Notes that cluster `id`'s `FleetCluster` exists (it registered), so that its first plan
    /// entry is a status write alone: without it, each cluster registered since this replica
    /// loaded would first cost a placeholder create refused with a conflict.
    pub fn cluster_exists(&self, id: &str) {
        self.state
            .lock()
            .expect("lock")
            .clusters
            .entry(id.to_string())
            .or_default();
    }

    /// Whether `name` was ever accepted.
    pub fn is_registered(&self, name: &str) -> bool {
        self.state
            .lock()
            .expect("lock")
            .registry
            .iter()
            .any(|n| n == name)
    }

    pub async fn put_plan(
        &self,
        plan: PlanRecord,
        events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        let _writing = self.writing.lock().await;
        self.shared.check_fence()?;
        let doc = PlanDocument::from_yaml(&plan.document).map_err(|e| {
            invalid(format!(
                "the document of plan {} is not a plan document: {e}",
                plan.name
            ))
        })?;
        if doc.metadata.name != plan.name {
            return Err(invalid(format!(
                "the document of plan {} names plan {}",
                plan.name, doc.metadata.name
            )));
        }
        let head = head_value(&plan.name, &plan.rollout.head)?;
        let targets = plan
            .rollout
            .targets
            .iter()
            .map(|t| Ok((t.cluster_id.clone(), entry(&plan.name, t)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut done = Vec::new();
        let outcome = self
            .put_parts(&plan, &doc, head.clone(), targets, events, &mut done)
            .await;
        let result = match outcome {
            Ok((document, history, last)) => {
                let stored = Stored {
                    document,
                    head,
                    history,
                    created_ms: plan.created_ms,
                    updated_ms: plan.updated_ms,
                };
                let previous = self.state.lock().expect("lock").accept(&plan, stored);
                if let Some(previous) = previous.filter(|p| *p != plan.name) {
                    self.show_inactive(&previous).await;
                }
                Ok(last)
            }
            Err(e) => {
                self.undo(done).await;
                Err(e)
            }
        };
        self.shows.follow(&plan.name);
        result
    }

    /// `put_plan`'s writes, in order; the registry last. Returns the document and the upgrade
    /// history as stored, and the last event's id.
    async fn put_parts(
        &self,
        plan: &PlanRecord,
        doc: &PlanDocument,
        head: Option<Value>,
        targets: Vec<(String, ClusterPlan)>,
        events: Vec<PlanEventRecord>,
        done: &mut Vec<Done>,
    ) -> Result<(String, History, i64), StoreError> {
        let (object, created) = self.plan_object(doc).await?;
        if created {
            done.push(Done::Created {
                name: plan.name.clone(),
            });
        }
        let document = document_text(&object)?;
        let previous = self
            .state
            .lock()
            .expect("lock")
            .plans
            .get(&plan.name)
            .cloned();
        let mut history = previous
            .as_ref()
            .map(|p| p.history.clone())
            .unwrap_or_default();
        if let Some(delta) = history_deltas(&events).get(&plan.name) {
            history.upgrades += delta.upgrades;
            history.upgrade_millis += delta.upgrade_millis;
        }
        let accepted_at = jiff::Timestamp::from_millisecond(plan.created_ms).map_err(|e| {
            invalid(format!(
                "plan {} created at {}: {e}",
                plan.name, plan.created_ms
            ))
        })?;
        let shown = self.shows.riding(&plan.name, head.as_ref());
        let mut status = json!({
            "accepted": {
                "generation": object.metadata.generation.unwrap_or(1),
                "at": accepted_at,
            },
            "active": plan.active,
            "rollout": head,
            "history": history_value(&history),
        });
        merge(&mut status, &shown);
        self.shared
            .patch(
                plan_key(&plan.name),
                Class::Gating,
                json!({ "status": status }),
            )
            .await?;
        self.shows.rode(&plan.name, shown);
        if let Some(p) = &previous {
            done.push(Done::PlanStatus {
                name: plan.name.clone(),
                before: json!({
                    "rollout": p.head,
                    "history": history_value(&p.history),
                }),
            });
        }
        // The record's rollout is the plan's, whole: entries of clusters it does not name go.
        let mut changes: Vec<(String, Option<ClusterPlan>)> = {
            let st = self.state.lock().expect("lock");
            st.clusters
                .iter()
                .filter(|(id, entries)| {
                    entries.iter().any(|e| e.plan == plan.name)
                        && !targets.iter().any(|(t, _)| t == *id)
                })
                .map(|(id, _)| (id.clone(), None))
                .collect()
        };
        changes.extend(targets.into_iter().map(|(id, e)| (id, Some(e))));
        self.write_targets(&plan.name, changes, done).await?;
        let last = self.events.append(events, now_ms()).await?;
        self.write_state(&plan.name, plan.active).await?;
        Ok((document, history, last))
    }

    /// The plan's `UpgradePlan`, created from `doc` when there is none; whether it was.
    async fn plan_object(&self, doc: &PlanDocument) -> Result<(UpgradePlan, bool), StoreError> {
        let api: Api<UpgradePlan> = typed(&self.shared, Kind::UpgradePlan);
        let name = &doc.metadata.name;
        let spec = serde_json::to_value(&doc.spec)
            .map_err(|e| invalid(format!("the spec of plan {name}: {e}")))?;
        let object: UpgradePlan = serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
            "kind": Kind::UpgradePlan.name(),
            "metadata": {
                "name": name,
                "labels": doc.metadata.labels,
                "annotations": doc.metadata.annotations,
            },
            "spec": spec,
        }))
        .map_err(|e| invalid(format!("plan {name} as an object: {e}")))?;
        self.shared.check_fence()?;
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => return Ok((created, true)),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_error(format!("creating upgrade plan {name}"), e)),
        }
        let existing = api
            .get(name)
            .await
            .map_err(|e| api_error(format!("reading upgrade plan {name}"), e))?;
        // An object of that name (applied with kubectl, or left by a write that failed) is
        // this plan only if it holds this document.
        let same = crd::document(&existing).is_ok_and(|d| d.spec == doc.spec);
        if !same {
            return Err(invalid(format!(
                "an UpgradePlan named {name} exists with another document"
            )));
        }
        Ok((existing, false))
    }

    /// Writes each cluster's `status.plans` with `plan`'s entry set (or removed), those that
    /// start nothing first, then the starts: a start is never stored before the results of
    /// the same write. Records each landed write in `done`.
    async fn write_targets(
        &self,
        plan: &str,
        changes: Vec<(String, Option<ClusterPlan>)>,
        done: &mut Vec<Done>,
    ) -> Result<(), StoreError> {
        let (starting, settled): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .partition(|(_, e)| e.as_ref().is_some_and(|e| e.state.is_starting()));
        for (group, class) in [(settled, Class::Durable), (starting, Class::Gating)] {
            if group.is_empty() {
                continue;
            }
            let writes = group
                .into_iter()
                .map(|(id, new)| self.write_entry(plan, id, new, class));
            let mut failure = None;
            for (id, before, outcome) in futures::future::join_all(writes).await {
                match outcome {
                    Ok(()) => done.push(Done::Cluster {
                        id,
                        before: before.unwrap_or_default(),
                    }),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets cluster `id`'s entry of `plan` to `new` (`None`: removes it) from the copy here,
    /// and keeps the result in the copy once stored. Returns the entries it had before (`None`:
    /// no object was known), for an undo.
    async fn write_entry(
        &self,
        plan: &str,
        id: String,
        new: Option<ClusterPlan>,
        class: Class,
    ) -> (String, Option<Vec<ClusterPlan>>, Result<(), StoreError>) {
        let before = self.state.lock().expect("lock").clusters.get(&id).cloned();
        let after = with_entry(before.as_deref().unwrap_or_default(), plan, new);
        let outcome = self
            .write_cluster(&id, before.is_some(), class, &after)
            .await;
        if outcome.is_ok() {
            self.state
                .lock()
                .expect("lock")
                .clusters
                .insert(id.clone(), after);
        }
        (id, before, outcome)
    }

    /// Stores `entries` as cluster `id`'s `status.plans`, creating a placeholder object first
    /// when none is known.
    async fn write_cluster(
        &self,
        id: &str,
        known: bool,
        class: Class,
        entries: &[ClusterPlan],
    ) -> Result<(), StoreError> {
        if !known {
            self.placeholder(id).await?;
        }
        self.shared
            .patch(
                cluster_key(id),
                class,
                json!({ "status": { "plans": entries } }),
            )
            .await
    }

    /// Creates a `FleetCluster` for `id` that holds nothing but targets: no name, no
    /// registration. One that exists already (the cluster registered meanwhile) is used.
    async fn placeholder(&self, id: &str) -> Result<(), StoreError> {
        let api: Api<FleetCluster> = typed(&self.shared, Kind::FleetCluster);
        let object: FleetCluster = serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
            "kind": Kind::FleetCluster.name(),
            "metadata": { "name": id, "labels": { PLACEHOLDER_LABEL: "true" } },
            "spec": { "name": "" },
        }))
        .map_err(|e| invalid(format!("cluster {id} as an object: {e}")))?;
        self.shared.check_fence()?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(api_error(format!("creating fleet cluster {id}"), e)),
        }
    }

    /// Stores the registry with `plan` in it and the active-plan pointer, in one write: the
    /// commit point of `put_plan`.
    async fn write_state(&self, plan: &str, active: bool) -> Result<(), StoreError> {
        let (mut registry, pointer) = {
            let st = self.state.lock().expect("lock");
            (st.registry.clone(), st.active.clone())
        };
        if !registry.iter().any(|n| n == plan) {
            registry.push(plan.to_string());
        }
        let pointer = match (active, pointer) {
            (true, _) => plan.to_string(),
            (false, Some(p)) if p == plan => String::new(),
            (false, p) => p.unwrap_or_default(),
        };
        let data = json!({
            ACTIVE_KEY: pointer,
            REGISTRY_KEY: registry.iter().map(|n| format!("{n}\n")).collect::<String>(),
        });
        let api: Api<ConfigMap> = self.shared.api();
        self.shared.check_fence()?;
        let what = "writing the fleet's state ConfigMap";
        match patch_state(&api, &data).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_error(what, e)),
        }
        self.shared.check_fence()?;
        api.create(&PostParams::default(), &state_map(data))
            .await
            .map(|_| ())
            .map_err(|e| api_error(what, e))
    }

    /// `status.active: false` on the plan the pointer no longer names. Only shown (the
    /// pointer is the truth), so a failure is logged, not returned.
    async fn show_inactive(&self, plan: &str) {
        let patch = json!({ "status": { "active": false } });
        if let Err(e) = self
            .shared
            .patch(plan_key(plan), Class::Coalesced, patch)
            .await
        {
            tracing::warn!(plan, error = %e, "cannot mark the plan inactive in its status");
        }
    }

    /// Writes back what `done` changed, newest first. What cannot be written back stays as
    /// stored (and is logged): the copy here keeps following the server.
    async fn undo(&self, done: Vec<Done>) {
        for d in done.into_iter().rev() {
            match d {
                Done::PlanStatus { name, before } => {
                    let patch = json!({ "status": before });
                    match self
                        .shared
                        .patch(plan_key(&name), Class::Gating, patch)
                        .await
                    {
                        Ok(()) => {
                            if let Some(p) = self.state.lock().expect("lock").plans.get_mut(&name) {
                                p.head = before.get("rollout").cloned().filter(|v| !v.is_null());
                                if let Some(h) = before
                                    .get("history")
                                    .and_then(|h| serde_json::from_value(h.clone()).ok())
                                {
                                    p.history = h;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(plan = %name, error = %e, "cannot undo a refused write's head");
                        }
                    }
                }
                Done::Cluster { id, before } => {
                    match self.write_cluster(&id, true, Class::Gating, &before).await {
                        Ok(()) => {
                            self.state.lock().expect("lock").clusters.insert(id, before);
                        }
                        Err(e) => {
                            tracing::error!(cluster = %id, error = %e, "cannot undo a refused write's target");
                        }
                    }
                }
                Done::Created { name } => {
                    let api: Api<UpgradePlan> = typed(&self.shared, Kind::UpgradePlan);
                    if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                        tracing::error!(plan = %name, error = %e, "cannot delete the object of a plan that was not stored");
                    }
                }
            }
        }
    }

    pub async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let st = self.state.lock().expect("lock");
        let mut targets: HashMap<&str, Vec<TargetRecord>> = HashMap::new();
        for (id, entries) in &st.clusters {
            for e in entries {
                targets.entry(&e.plan).or_default().push(TargetRecord {
                    cluster_id: id.clone(),
                    order: e.order,
                    phase: e.state,
                    progress: e.progress.to_string(),
                });
            }
        }
        let mut out: Vec<PlanRecord> = st
            .plans
            .iter()
            .map(|(name, p)| {
                let mut targets = targets.remove(name.as_str()).unwrap_or_default();
                targets.sort_by(|a, b| (a.order, &a.cluster_id).cmp(&(b.order, &b.cluster_id)));
                PlanRecord {
                    name: name.clone(),
                    document: p.document.clone(),
                    rollout: RolloutRecord {
                        head: head_text(&p.head),
                        targets,
                    },
                    active: st.active.as_deref() == Some(name.as_str()),
                    created_ms: p.created_ms,
                    updated_ms: p.updated_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        Ok(out)
    }

    pub async fn save_rollout(&self, write: RolloutWrite) -> Result<i64, StoreError> {
        let _writing = self.writing.lock().await;
        self.shared.check_fence()?;
        if !self
            .state
            .lock()
            .expect("lock")
            .plans
            .contains_key(&write.plan)
        {
            return Err(invalid(format!("no plan named {:?}", write.plan)));
        }
        let head = match &write.head {
            Some(h) => Some(head_value(&write.plan, h)?),
            None => None,
        };
        let changes = write
            .targets
            .iter()
            .map(|t| Ok((t.cluster_id.clone(), Some(entry(&write.plan, t)?))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut done = Vec::new();
        let outcome = async {
            self.write_heads(&write.plan, head.clone(), &write.events, &mut done)
                .await?;
            self.write_targets(&write.plan, changes, &mut done).await?;
            self.events.hand_off(write.events.clone(), now_ms()).await
        }
        .await;
        let result = match outcome {
            Ok(last) => {
                if let Some(p) = self.state.lock().expect("lock").plans.get_mut(&write.plan) {
                    p.updated_ms = now_ms();
                }
                Ok(last)
            }
            Err(e) => {
                self.undo(done).await;
                Err(e)
            }
        };
        self.shows.follow(&write.plan);
        result
    }

    /// Stores each of `targets` (all entering `running` or `rollingBack`) with a request of its
    /// own, all at once under the write budget, and names each to `stored` as soon as its
    /// request is answered: a burst of starts is as fast as the API server, and its first
    /// task need not wait for its last write. Nothing is undone: a start stored is a start
    /// the orchestrator may send, and one refused (or timed out, so perhaps stored) is written
    /// again by its next round, with the same operation id.
    pub async fn start_targets(
        &self,
        plan: &str,
        targets: Vec<TargetRecord>,
        stored: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        self.shared.check_fence()?;
        if !self.state.lock().expect("lock").plans.contains_key(plan) {
            return Err(invalid(format!("no plan named {plan:?}")));
        }
        let mut writes = futures::stream::FuturesUnordered::new();
        for t in &targets {
            let new = entry(plan, t)?;
            writes.push(self.write_entry(plan, t.cluster_id.clone(), Some(new), Class::Gating));
        }
        let mut failure = None;
        while let Some((id, _, outcome)) = writes.next().await {
            match outcome {
                Ok(()) => stored(&id),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(p) = self.state.lock().expect("lock").plans.get_mut(plan) {
            p.updated_ms = now_ms();
        }
        self.shows.follow(plan);
        failure.map_or(Ok(()), Err)
    }

    /// Writes `plan`'s head (when given) and the upgrade history `events` add to each stored
    /// plan they name, one status write per plan, and keeps the copy with them.
    async fn write_heads(
        &self,
        plan: &str,
        head: Option<Option<Value>>,
        events: &[PlanEventRecord],
        done: &mut Vec<Done>,
    ) -> Result<(), StoreError> {
        let deltas = history_deltas(events);
        let mut names: Vec<&str> = deltas.keys().map(String::as_str).collect();
        if head.is_some() && !names.contains(&plan) {
            names.push(plan);
        }
        for name in names {
            let Some(before) = self.state.lock().expect("lock").plans.get(name).cloned() else {
                // Events of a plan that is not stored add to no history.
                continue;
            };
            let mut after = before.clone();
            if let Some(d) = deltas.get(name) {
                after.history.upgrades += d.upgrades;
                after.history.upgrade_millis += d.upgrade_millis;
            }
            let mut status = json!({ "history": history_value(&after.history) });
            if head.is_none() || name != plan {
                // The history alone (upgrades counted and timed, for estimates) gates nothing:
                // queued in order behind this object's earlier writes, not awaited, so a round
                // does not wait one more round trip before its next tasks; and held for the
                // object's next write (the counts, at most `HISTORY_HOLD` later), so a rollout
                // does not patch its plan once per round besides. A refused patch leaves the stored
                // statistic behind; the next one carries the whole of it.
                let answer = self.shared.objects.write_held(
                    plan_key(name),
                    Class::Durable,
                    json!({ "status": status }),
                    HISTORY_HOLD,
                );
                let what = format!("writing the history of plan {name}");
                tokio::spawn(async move {
                    if let Err(e) = answer.await {
                        tracing::warn!(error = %api_error(what, e), "a plan's upgrade history was not stored");
                    }
                });
                if let Some(p) = self.state.lock().expect("lock").plans.get_mut(name) {
                    p.history = after.history;
                }
                continue;
            }
            let mut shown = None;
            if name == plan
                && let Some(h) = &head
            {
                after.head = h.clone();
                status["rollout"] = json!(h);
                let fields = self.shows.riding(name, h.as_ref());
                merge(&mut status, &fields);
                shown = Some(fields);
            }
            let class = if head.is_some() && name == plan {
                Class::Gating
            } else {
                Class::Durable
            };
            self.shared
                .patch(plan_key(name), class, json!({ "status": status }))
                .await?;
            if let Some(fields) = shown {
                self.shows.rode(name, fields);
            }
            done.push(Done::PlanStatus {
                name: name.to_string(),
                before: json!({
                    "rollout": before.head,
                    "history": history_value(&before.history),
                }),
            });
            if let Some(p) = self.state.lock().expect("lock").plans.get_mut(name) {
                p.head = after.head;
                p.history = after.history;
            }
        }
        Ok(())
    }

    pub async fn append_events(&self, events: Vec<PlanEventRecord>) -> Result<i64, StoreError> {
        let _writing = self.writing.lock().await;
        self.shared.check_fence()?;
        let mut done = Vec::new();
        let outcome = async {
            self.write_heads("", None, &events, &mut done).await?;
            self.events.hand_off(events.clone(), now_ms()).await
        }
        .await;
        if outcome.is_err() {
            self.undo(done).await;
        }
        outcome
    }

    pub async fn events(
        &self,
        plan: String,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        self.events.read(&plan, after_id, limit).await
    }

    pub async fn mean_upgrade_ms(&self) -> Result<Option<i64>, StoreError> {
        let st = self.state.lock().expect("lock");
        let (n, ms) = st.plans.values().fold((0u64, 0u64), |(n, ms), p| {
            (n + p.history.upgrades, ms + p.history.upgrade_millis)
        });
        Ok((n > 0).then(|| (ms as f64 / n as f64).round() as i64))
    }

    /// How many plan events retention deleted.
    pub async fn prune(&self, cutoffs: &Cutoffs) -> Result<usize, StoreError> {
        let active = self.state.lock().expect("lock").active.clone();
        self.events
            .prune(&self.shared, cutoffs, active.as_deref())
            .await
    }
}

impl Plans {
    /// Writes a migration's plans as they are into a namespace that holds none, all but the
    /// commit point ([`Plans::commit_import`]): each `UpgradePlan` from its document with its
    /// status (accepted at `created_ms`, active, the head, the upgrade history of its
    /// events), each cluster's entries of its [`KEPT_PLANS`] most recent plans (a placeholder
    /// object for a cluster not in `registered`), and the events with their ids. Returns how
    /// many targets were written. The store reads them once opened again.
    pub async fn import(
        &self,
        plans: &[PlanRecord],
        events: &[PlanEventRecord],
        registered: &std::collections::HashSet<String>,
    ) -> Result<usize, StoreError> {
        let _writing = self.writing.lock().await;
        let history = history_deltas(events);
        for p in plans {
            let doc = PlanDocument::from_yaml(&p.document).map_err(|e| {
                invalid(format!(
                    "the document of plan {} is not a plan document: {e}",
                    p.name
                ))
            })?;
            let (object, created) = self.plan_object(&doc).await?;
            if !created {
                return Err(StoreError::NotEmpty(format!(
                    "UpgradePlan {} exists",
                    p.name
                )));
            }
            let accepted_at = jiff::Timestamp::from_millisecond(p.created_ms).map_err(|e| {
                invalid(format!("plan {} created at {}: {e}", p.name, p.created_ms))
            })?;
            let status = json!({
                "accepted": {
                    "generation": object.metadata.generation.unwrap_or(1),
                    "at": accepted_at,
                },
                "active": p.active,
                "rollout": head_value(&p.name, &p.rollout.head)?,
                "history": history_value(&history.get(&p.name).cloned().unwrap_or_default()),
            });
            self.shared
                .patch(
                    plan_key(&p.name),
                    Class::Durable,
                    json!({ "status": status }),
                )
                .await?;
        }
        let mut entries: BTreeMap<&str, Vec<ClusterPlan>> = BTreeMap::new();
        // The most recent plan first, as `with_entry` keeps them.
        for p in plans.iter().rev() {
            for t in &p.rollout.targets {
                let kept = entries.entry(&t.cluster_id).or_default();
                if kept.len() < KEPT_PLANS {
                    kept.push(entry(&p.name, t)?);
                }
            }
        }
        let targets = entries.values().map(Vec::len).sum();
        let writes: Vec<_> = entries
            .iter()
            .map(|(id, kept)| {
                self.write_cluster(id, registered.contains(*id), Class::Durable, kept)
            })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(super::identity::IMPORTS_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        self.events.import(events).await?;
        Ok(targets)
    }

    /// Marks the namespace as a migration's target before its first record is written: the
    /// state ConfigMap, created holding only [`MIGRATING_KEY`], so a failure part-way leaves a
    /// namespace every store refuses to open rather than a fleet with pieces missing. A
    /// ConfigMap already there (another migration got here first) is refused.
    pub async fn begin_import(&self, migrated_from: &str) -> Result<(), StoreError> {
        let map = state_map(json!({ MIGRATING_KEY: migrated_from }));
        let api: Api<ConfigMap> = self.shared.api();
        self.shared.check_fence()?;
        match api.create(&PostParams::default(), &map).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(StoreError::NotEmpty(format!(
                "ConfigMap {STATE_CONFIG_MAP} exists"
            ))),
            Err(e) => Err(api_error("creating the fleet's state ConfigMap", e)),
        }
    }

    /// The commit point of a migration into this namespace: the registry of `plans` (in
    /// their order) and the active-plan pointer, in one write of the state ConfigMap, which
    /// notes where the fleet came from and drops [`begin_import`](Self::begin_import)'s mark.
    /// Plans are listed only once it is stored.
    pub async fn commit_import(
        &self,
        plans: &[PlanRecord],
        migrated_from: &str,
    ) -> Result<(), StoreError> {
        let active = plans.iter().find(|p| p.active).map(|p| p.name.as_str());
        let data = json!({
            ACTIVE_KEY: active.unwrap_or_default(),
            REGISTRY_KEY: plans.iter().map(|p| format!("{}\n", p.name)).collect::<String>(),
            MIGRATED_FROM_KEY: migrated_from,
            MIGRATING_KEY: null,
        });
        let api: Api<ConfigMap> = self.shared.api();
        self.shared.check_fence()?;
        patch_state(&api, &data)
            .await
            .map(|_| ())
            .map_err(|e| api_error("committing the fleet's state ConfigMap", e))
    }

    /// Whether this part holds anything: a plan name ever accepted, or an entry of a plan in
    /// any cluster. What a migration into the namespace refuses.
    pub fn holds_records(&self) -> Option<String> {
        let st = self.state.lock().expect("lock");
        if let Some(name) = st.registry.first() {
            return Some(format!("plan {name} is registered"));
        }
        st.clusters
            .iter()
            .find(|(_, entries)| !entries.is_empty())
            .map(|(id, _)| format!("FleetCluster {id} holds plan entries"))
    }
}

/// An `Api` of one of the fleet's kinds in the fleet's namespace, typed.
fn typed<K>(shared: &Shared, kind: Kind) -> Api<K>
where
    K: kube::Resource<
            DynamicType = kube::core::ApiResource,
            Scope = kube::core::DynamicResourceScope,
        >,
{
    kind.api(shared.client.clone(), &shared.namespace)
}

/// The document a stored plan shows (`plan get -o yaml`): rebuilt from its object (design
/// §4.1), so a plan applied with kubectl and one applied with `skoalactl` read the same.
fn document_text(object: &UpgradePlan) -> Result<String, StoreError> {
    crd::document(object).map(|d| d.to_yaml()).map_err(|e| {
        StoreError::Corrupt(format!(
            "upgrade plan {} holds no plan document: {e}",
            object.metadata.name.as_deref().unwrap_or_default()
        ))
    })
}

/// The state ConfigMap holding `data`, to create.
fn state_map(data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": { "name": STATE_CONFIG_MAP },
        "data": data,
    }))
    .expect("a ConfigMap")
}

/// Merges `data` into the state ConfigMap's (a `null` removes a key).
async fn patch_state(api: &Api<ConfigMap>, data: &Value) -> kube::Result<ConfigMap> {
    api.patch(
        STATE_CONFIG_MAP,
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": data })),
    )
    .await
}

/// The registry and the active plan from the state ConfigMap (none yet: empty). A namespace
/// a migration began to fill and never committed is refused, with how to empty it.
async fn read_state(shared: &Shared) -> Result<(Vec<String>, Option<String>), StoreError> {
    let api: Api<ConfigMap> = shared.api();
    let map = api
        .get_opt(STATE_CONFIG_MAP)
        .await
        .map_err(|e| api_error("reading the fleet's state ConfigMap", e))?;
    let data = map.and_then(|m| m.data).unwrap_or_default();
    if let Some(from) = data.get(MIGRATING_KEY) {
        let ns = &shared.namespace;
        return Err(StoreError::Unfinished(format!(
            "ConfigMap {ns}/{STATE_CONFIG_MAP} marks a migration from {from:?} that failed \
             part-way. The source store still holds the whole fleet: empty this namespace \
             (kubectl -n {ns} delete upgradeplans,fleetclusters,fleetlogs --all; kubectl -n {ns} \
             delete secrets -l 'fleet.skoala.io/kind in (join-token,admin,backup)'; kubectl -n \
             {ns} delete configmap {STATE_CONFIG_MAP}) and run the migration again"
        )));
    }
    let registry = data
        .get(REGISTRY_KEY)
        .map(|r| {
            r.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok((registry, data.get(ACTIVE_KEY).cloned()))
}
