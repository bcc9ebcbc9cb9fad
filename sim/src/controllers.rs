//! Controllers: what kube-controller-manager and the kubelet would do, reduced to what clients
//! observe.
//!
//! - A Deployment gets a ReplicaSet named `<deploy>-<pod-template-hash>` whose pod template is
//!   the Deployment's plus the `pod-template-hash` label (Helm 3's `--wait` finds the new
//!   ReplicaSet exactly that way); older ReplicaSets are scaled to zero.
//! - ReplicaSets, StatefulSets, DaemonSets and Jobs get Pods.
//! - A Pod becomes Running and Ready after the configured readiness delay, unless one of its
//!   images matches the never-ready pattern: then it stays Pending with `ImagePullBackOff`.
//!   Job pods end Succeeded.
//! - Workload status (`observedGeneration`, replica counts, `Available`/`Progressing`/`Complete`
//!   conditions, revisions) follows the pods, which is what Helm 4's kstatus wait reads.
//!
//! The loop is event driven: every store event names the objects to reconcile (the object and
//! its controller owner); readiness timers feed the same queue. Reconcilers are idempotent and
//! write only when something changed, so the loop settles.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::selector::LabelSelector;
use crate::store::{Event, EventType, Write};
use crate::util;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    group: String,
    plural: String,
    ns: String,
    name: String,
}

fn key(group: &str, plural: &str, ns: &str, name: &str) -> Key {
    Key {
        group: group.into(),
        plural: plural.into(),
        ns: ns.into(),
        name: name.into(),
    }
}

/// Starts the controller loop; it ends when `shutdown` is cancelled.
pub fn spawn(state: Arc<ApiState>, shutdown: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = state.store.subscribe();
    let ctl = Controller {
        state,
        shutdown: shutdown.clone(),
        queue: tx,
        first_seen: HashMap::new(),
        timers: HashSet::new(),
    };
    tokio::spawn(ctl.run(events, rx, shutdown));
}

struct Controller {
    state: Arc<ApiState>,
    /// Also ends pending timers, so nothing outlives the cluster.
    shutdown: CancellationToken,
    queue: mpsc::UnboundedSender<Key>,
    /// When this controller first saw each pod (by uid): readiness counts from here.
    first_seen: HashMap<String, Instant>,
    /// Pods with a pending readiness timer.
    timers: HashSet<String>,
}

const WORKLOADS: &[(&str, &str)] = &[
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("", "pods"),
];

impl Controller {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut queue: mpsc::UnboundedReceiver<Key>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => match ev {
                    Ok(e) => {
                        for k in self.triggers(&e) {
                            self.reconcile(&k);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(k) = queue.recv() => self.reconcile(&k),
            }
        }
    }

    /// Reconciles every workload object (after missing events).
    fn resync(&mut self) {
        for (g, p) in WORKLOADS {
            let (items, _) = self.state.store.list(g, p, None);
            for o in items {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                self.reconcile(&key(g, p, ns, name));
            }
        }
    }

    /// The objects an event asks to reconcile: the object itself (if it is a workload or a
    /// pod) and its controlling owner.
    fn triggers(&mut self, e: &Event) -> Vec<Key> {
        let mut out = vec![];
        if !WORKLOADS.contains(&(e.group.as_str(), e.plural.as_str())) {
            return out;
        }
        if e.kind == EventType::Deleted {
            if let Some(uid) = e.object["metadata"]["uid"].as_str() {
                self.first_seen.remove(uid);
            }
        } else {
            out.push(key(&e.group, &e.plural, &e.namespace, &e.name));
        }
        if let Some(owner) = controller_owner(&e.object) {
            let (g, p) = match owner["kind"].as_str() {
                Some("Deployment") => ("apps", "deployments"),
                Some("ReplicaSet") => ("apps", "replicasets"),
                Some("StatefulSet") => ("apps", "statefulsets"),
                Some("DaemonSet") => ("apps", "daemonsets"),
                Some("Job") => ("batch", "jobs"),
                _ => return out,
            };
            out.push(key(
                g,
                p,
                &e.namespace,
                owner["name"].as_str().unwrap_or_default(),
            ));
        }
        out
    }

    fn reconcile(&mut self, k: &Key) {
        match (k.group.as_str(), k.plural.as_str()) {
            ("apps", "deployments") => self.deployment(k),
            ("apps", "replicasets") => self.replica_set(k),
            ("apps", "statefulsets") => self.stateful_set(k),
            ("apps", "daemonsets") => self.daemon_set(k),
            ("batch", "jobs") => self.job(k),
            ("", "pods") => self.pod(k),
            _ => {}
        }
    }

    fn get(&self, k: &Key) -> Option<Value> {
        self.state.store.get(&k.group, &k.plural, &k.ns, &k.name)
    }

    /// Pods (or ReplicaSets) in `ns` controlled by the object with `uid`.
    fn owned(&self, group: &str, plural: &str, ns: &str, uid: &str) -> Vec<Value> {
        let (items, _) = self.state.store.list(group, plural, Some(ns));
        items
            .into_iter()
            .filter(|o| controller_owner(o).is_some_and(|r| r["uid"] == uid))
            .collect()
    }

    /// Replaces `status` of the object at `k` when it differs (keeping condition timestamps
    /// of unchanged conditions).
    fn set_status(&self, k: &Key, mut status: Value) {
        let _ = self
            .state
            .store
            .write(&k.group, &k.plural, &k.ns, &k.name, |cur| {
                let Some(cur) = cur else {
                    return Ok(Write::Keep);
                };
                keep_condition_times(&cur["status"], &mut status);
                if cur["status"] == status {
                    return Ok(Write::Keep);
                }
                let mut new = cur.clone();
                new["status"] = status;
                Ok(Write::Update(new))
            });
    }

    fn create(&self, group: &str, plural: &str, ns: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let _ = self.state.store.write(group, plural, ns, &name, |cur| {
            Ok(if cur.is_some() {
                Write::Keep
            } else {
                Write::Create(obj)
            })
        });
    }

    fn delete(&self, group: &str, plural: &str, ns: &str, name: &str) {
        crate::api::handlers::delete_cascading(&self.state, group, plural, ns, name);
    }

    fn deployment(&mut self, k: &Key) {
        let Some(d) = self.get(k) else { return };
        let uid = d["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let template = &d["spec"]["template"];
        let hash = util::short_hash(&serde_json::to_vec(template).unwrap_or_default());
        let rs_name = format!("{}-{hash}", k.name);
        let rss = self.owned("apps", "replicasets", &k.ns, &uid);
        let revision = rss
            .iter()
            .filter_map(|r| {
                r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok())
            })
            .max()
            .unwrap_or(0);
        let new_rs = rss
            .iter()
            .find(|r| r["metadata"]["name"] == rs_name.as_str());
        let spec_of = |r: &Value| r["spec"]["replicas"].as_i64().unwrap_or(0);
        let available_of = |r: &Value| r["status"]["availableReplicas"].as_i64().unwrap_or(0);
        let olds: Vec<&Value> = rss
            .iter()
            .filter(|r| r["metadata"]["name"] != rs_name.as_str())
            .collect();
        let mut old_specs: Vec<i64> = olds.iter().map(|r| spec_of(r)).collect();
        let new_spec = new_rs.map(spec_of).unwrap_or(0);
        let new_available = new_rs.map(available_of).unwrap_or(0);
        let new_target = if d["spec"]["strategy"]["type"] == "Recreate" {
            // Recreate: the old pods go first, then the new ones come.
            old_specs.iter_mut().for_each(|s| *s = 0);
            let old_pods: i64 = olds
                .iter()
                .map(|r| r["status"]["replicas"].as_i64().unwrap_or(0))
                .sum();
            if old_pods == 0 { desired } else { new_spec }
        } else {
            // RollingUpdate, as the deployment controller does it: drop old pods that are not
            // available anyway, surge new pods up to maxSurge, then remove old pods only as far
            // as maxUnavailable allows. A new template that never becomes ready therefore
            // leaves the old pods serving.
            let (surge, unavailable) = surge_and_unavailable(&d, desired);
            for (spec, old) in old_specs.iter_mut().zip(&olds) {
                *spec = (*spec).min(available_of(old));
            }
            let old_total: i64 = old_specs.iter().sum();
            let target = if new_spec >= desired {
                desired
            } else {
                let room = (desired + surge) - (old_total + new_spec);
                desired.min(new_spec + room.max(0))
            };
            let min_available = desired - unavailable;
            let new_unavailable = (target - new_available).max(0);
            let mut budget = (old_total + target - min_available - new_unavailable).max(0);
            for spec in old_specs.iter_mut() {
                let cut = (*spec).min(budget);
                *spec -= cut;
                budget -= cut;
            }
            target
        };
        match new_rs {
            None => {
                let mut tmpl = template.clone();
                tmpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let rs = json!({
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": rs_name,
                        "namespace": k.ns,
                        "generation": 1,
                        "labels": tmpl["metadata"]["labels"],
                        "annotations": {
                            "deployment.kubernetes.io/revision": (revision + 1).to_string(),
                            "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        },
                        "ownerReferences": [owner_ref("apps/v1", "Deployment", &k.name, &uid)],
                    },
                    "spec": {"replicas": new_target, "selector": selector, "template": tmpl},
                    "status": {"replicas": 0, "observedGeneration": 1},
                });
                self.create("apps", "replicasets", &k.ns, rs);
            }
            Some(rs) => {
                let rs_revision =
                    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                        .as_str()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0);
                // A rollback to an older template makes its ReplicaSet the newest revision.
                let bump = (rs_revision < revision).then_some(revision + 1);
                if spec_of(rs) != new_target || bump.is_some() {
                    self.scale_rs(&k.ns, &rs_name, new_target, bump);
                }
            }
        }
        for (old, spec) in olds.iter().zip(old_specs) {
            if spec_of(old) != spec {
                let name = old["metadata"]["name"].as_str().unwrap_or_default();
                self.scale_rs(&k.ns, name, spec, None);
            }
        }
        // Status from the (possibly just created) ReplicaSets.
        let rss = self.owned("apps", "replicasets", &k.ns, &uid);
        let count = |r: &Value, f: &str| r["status"][f].as_i64().unwrap_or(0);
        let sum = |f: &str| rss.iter().map(|r| count(r, f)).sum::<i64>();
        let new_rs = rss
            .iter()
            .find(|r| r["metadata"]["name"] == rs_name.as_str());
        let updated = new_rs.map(|r| count(r, "replicas")).unwrap_or(0);
        let new_available = new_rs.map(|r| count(r, "availableReplicas")).unwrap_or(0);
        let replicas = sum("replicas");
        let ready = sum("readyReplicas");
        let available = sum("availableReplicas");
        let old_pods = replicas - updated;
        let complete = updated == desired && new_available == desired && old_pods == 0;
        let exceeded = !complete && self.progress_deadline_passed(k, &d, new_rs);
        let min_available = desired - max_unavailable(&d, desired);
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"].as_i64().unwrap_or(1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": [
                if available >= min_available {
                    condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
                } else {
                    condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
                },
                if complete {
                    condition("Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{rs_name}\" has successfully progressed."))
                } else if exceeded {
                    condition("Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{rs_name}\" has timed out progressing."))
                } else {
                    condition("Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{rs_name}\" is progressing."))
                },
            ],
        });
        if desired - available > 0 {
            status["unavailableReplicas"] = json!(desired - available);
        }
        for f in [
            "readyReplicas",
            "availableReplicas",
            "updatedReplicas",
            "replicas",
        ] {
            if status[f] == 0 {
                status.as_object_mut().map(|m| m.remove(f));
            }
        }
        self.set_status(k, status);
    }

    /// Whether the rollout to `new_rs` has taken longer than `spec.progressDeadlineSeconds`
    /// (then kstatus, and so Helm 4's wait, reports the Deployment as failed). Schedules a
    /// re-check for when the deadline passes.
    fn progress_deadline_passed(&mut self, k: &Key, d: &Value, new_rs: Option<&Value>) -> bool {
        let Some(rs) = new_rs else { return false };
        let Some(deadline) = d["spec"]["progressDeadlineSeconds"].as_i64() else {
            return false;
        };
        let Some(created) = rs["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            return false;
        };
        let elapsed = jiff::Timestamp::now().as_second() - created.as_second();
        if elapsed > deadline {
            return true;
        }
        let uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
        if self.timers.insert(format!("deadline/{uid}/{deadline}")) {
            let wait = std::time::Duration::from_secs((deadline - elapsed + 1).max(1) as u64);
            self.requeue_after(k, wait);
        }
        false
    }

    /// Reconciles `k` again after `wait` (unless the cluster stops first).
    fn requeue_after(&self, k: &Key, wait: std::time::Duration) {
        let tx = self.queue.clone();
        let k = k.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => { let _ = tx.send(k); }
                _ = shutdown.cancelled() => {}
            }
        });
    }

    fn scale_rs(&self, ns: &str, name: &str, replicas: i64, revision: Option<i64>) {
        let _ = self
            .state
            .store
            .write("apps", "replicasets", ns, name, |cur| {
                let Some(cur) = cur else {
                    return Ok(Write::Keep);
                };
                let mut new = cur.clone();
                new["spec"]["replicas"] = json!(replicas);
                if let Some(r) = revision {
                    new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                        json!(r.to_string());
                }
                let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
                new["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                    json!(replicas.to_string());
                Ok(Write::Update(new))
            });
    }

    /// Creates or deletes pods so that `want` pods exist for an owner; returns the pods.
    fn ensure_pods(
        &self,
        owner: &Value,
        owner_kind: &str,
        ns: &str,
        want: i64,
        extra_labels: Value,
    ) -> Vec<Value> {
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
        let owner_name = owner["metadata"]["name"].as_str().unwrap_or_default();
        let mut pods = self.owned("", "pods", ns, uid);
        let have = pods.len() as i64;
        if have < want {
            for _ in have..want {
                let pod = self.pod_from_template(
                    owner,
                    owner_kind,
                    ns,
                    &format!("{owner_name}-{}", util::random_suffix(5)),
                    &extra_labels,
                );
                self.create("", "pods", ns, pod);
            }
            pods = self.owned("", "pods", ns, uid);
        } else if have > want {
            // Remove not-ready pods first, as a ReplicaSet does.
            pods.sort_by_key(pod_ready);
            for p in pods.iter().take((have - want) as usize) {
                self.delete(
                    "",
                    "pods",
                    ns,
                    p["metadata"]["name"].as_str().unwrap_or_default(),
                );
            }
            pods = self.owned("", "pods", ns, uid);
        }
        pods
    }

    fn pod_from_template(
        &self,
        owner: &Value,
        owner_kind: &str,
        ns: &str,
        name: &str,
        extra_labels: &Value,
    ) -> Value {
        let template = &owner["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
            for (k, v) in extra {
                l.insert(k.clone(), v.clone());
            }
        }
        let api_version = owner["apiVersion"].as_str().unwrap_or("apps/v1");
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!("sim-node-1");
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [owner_ref(
                    api_version, owner_kind,
                    owner["metadata"]["name"].as_str().unwrap_or_default(),
                    owner["metadata"]["uid"].as_str().unwrap_or_default(),
                )],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        })
    }

    fn replica_set(&mut self, k: &Key) {
        let Some(rs) = self.get(k) else { return };
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1);
        let pods = self.ensure_pods(&rs, "ReplicaSet", &k.ns, want, json!({}));
        let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
        let sel = LabelSelector::from_json(&rs["spec"]["selector"]);
        let labeled = pods.iter().filter(|p| sel.matches(p)).count() as i64;
        let mut status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": labeled,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
        });
        for f in ["readyReplicas", "availableReplicas", "fullyLabeledReplicas"] {
            if status[f] == 0 {
                status.as_object_mut().map(|m| m.remove(f));
            }
        }
        self.set_status(k, status);
    }

    fn stateful_set(&mut self, k: &Key) {
        let Some(sts) = self.get(k) else { return };
        let uid = sts["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let want = sts["spec"]["replicas"].as_i64().unwrap_or(1);
        let revision = format!(
            "{}-{}",
            k.name,
            util::short_hash(&serde_json::to_vec(&sts["spec"]["template"]).unwrap_or_default())
        );
        let existing = self.owned("", "pods", &k.ns, &uid);
        let ordinal = |p: &Value| {
            p["metadata"]["name"]
                .as_str()
                .and_then(|n| n.rsplit('-').next())
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(i64::MAX)
        };
        // Scale down: ordinals at or above `replicas` go.
        for p in existing.iter().filter(|p| ordinal(p) >= want) {
            self.delete(
                "",
                "pods",
                &k.ns,
                p["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
        // RollingUpdate replaces one stale pod at a time, highest ordinal first (down to the
        // partition), and only while every pod is ready: a broken template stops the rollout
        // at its first pod. OnDelete leaves stale pods alone.
        let strategy = &sts["spec"]["updateStrategy"];
        if strategy["type"] != "OnDelete" {
            let partition = strategy["rollingUpdate"]["partition"].as_i64().unwrap_or(0);
            let current: Vec<&Value> = existing.iter().filter(|p| ordinal(p) < want).collect();
            let all_ready = current.len() as i64 == want && current.iter().all(|p| pod_ready(p));
            let stale = current
                .iter()
                .filter(|p| {
                    ordinal(p) >= partition
                        && p["metadata"]["labels"]["controller-revision-hash"] != revision.as_str()
                })
                .max_by_key(|p| ordinal(p));
            if let Some(p) = stale
                && all_ready
            {
                self.delete(
                    "",
                    "pods",
                    &k.ns,
                    p["metadata"]["name"].as_str().unwrap_or_default(),
                );
            }
        }
        for i in 0..want {
            let name = format!("{}-{i}", k.name);
            if self.state.store.get("", "pods", &k.ns, &name).is_none() {
                let labels = json!({
                    "controller-revision-hash": revision,
                    "statefulset.kubernetes.io/pod-name": name,
                    "apps.kubernetes.io/pod-index": i.to_string(),
                });
                let pod = self.pod_from_template(&sts, "StatefulSet", &k.ns, &name, &labels);
                self.create("", "pods", &k.ns, pod);
            }
        }
        let pods = self.owned("", "pods", &k.ns, &uid);
        let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
        let updated = pods
            .iter()
            .filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == revision.as_str())
            .count() as i64;
        let done = updated == want && ready == want;
        let current = if done {
            revision.clone()
        } else {
            sts["status"]["currentRevision"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| revision.clone())
        };
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"].as_i64().unwrap_or(1),
            "replicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": if done { updated } else { pods.len() as i64 - updated },
            "updatedReplicas": updated,
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": 0,
        });
        self.set_status(k, status);
    }

    fn daemon_set(&mut self, k: &Key) {
        let Some(ds) = self.get(k) else { return };
        let uid = ds["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let hash =
            util::short_hash(&serde_json::to_vec(&ds["spec"]["template"]).unwrap_or_default());
        for p in self.owned("", "pods", &k.ns, &uid) {
            if p["metadata"]["labels"]["controller-revision-hash"] != hash.as_str() {
                self.delete(
                    "",
                    "pods",
                    &k.ns,
                    p["metadata"]["name"].as_str().unwrap_or_default(),
                );
            }
        }
        // One node: one pod.
        let pods = self.ensure_pods(
            &ds,
            "DaemonSet",
            &k.ns,
            1,
            json!({"controller-revision-hash": hash}),
        );
        let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
        let status = json!({
            "observedGeneration": ds["metadata"]["generation"].as_i64().unwrap_or(1),
            "desiredNumberScheduled": 1,
            "currentNumberScheduled": pods.len(),
            "updatedNumberScheduled": pods.len(),
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": 1 - ready,
            "numberMisscheduled": 0,
        });
        self.set_status(k, status);
    }

    fn job(&mut self, k: &Key) {
        let Some(job) = self.get(k) else { return };
        if job_finished(&job) {
            return;
        }
        let uid = job["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
        let mut pods = self.owned("", "pods", &k.ns, &uid);
        if pods.is_empty() && job["spec"]["suspend"].as_bool() != Some(true) {
            let labels = json!({
                "job-name": k.name,
                "batch.kubernetes.io/job-name": k.name,
                "controller-uid": uid,
                "batch.kubernetes.io/controller-uid": uid,
            });
            for _ in 0..completions.max(1) {
                let name = format!("{}-{}", k.name, util::random_suffix(5));
                let pod = self.pod_from_template(&job, "Job", &k.ns, &name, &labels);
                self.create("", "pods", &k.ns, pod);
            }
            pods = self.owned("", "pods", &k.ns, &uid);
        }
        let succeeded = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Succeeded")
            .count() as i64;
        let active = pods.len() as i64 - succeeded;
        let start = job["status"]["startTime"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(util::now);
        let mut status = json!({"startTime": start, "active": active, "ready": 0});
        if succeeded > 0 {
            status["succeeded"] = json!(succeeded);
        }
        if active == 0 {
            status.as_object_mut().map(|m| m.remove("active"));
        }
        if succeeded >= completions {
            status["completionTime"] = json!(util::now());
            status["conditions"] = json!([
                condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
        }
        self.set_status(k, status);
    }

    fn pod(&mut self, k: &Key) {
        let Some(pod) = self.get(k) else { return };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed")
            || !pod["metadata"]["deletionTimestamp"].is_null()
        {
            return;
        }
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let pattern = &self.state.behaviour.never_ready_image;
        let broken: Vec<&Value> = containers
            .iter()
            .filter(|c| {
                !pattern.is_empty()
                    && c["image"]
                        .as_str()
                        .is_some_and(|i| i.contains(pattern.as_str()))
            })
            .collect();
        let job_pod = controller_owner(&pod).is_some_and(|o| o["kind"] == "Job");
        let now = Instant::now();
        let first = *self.first_seen.entry(uid.clone()).or_insert(now);
        let delay = self.state.behaviour.readiness_delay;
        let due = now.duration_since(first) >= delay;
        if broken.is_empty() && !due {
            if self.timers.insert(uid.clone()) {
                self.requeue_after(k, delay.saturating_sub(now.duration_since(first)));
            }
            return;
        }
        self.timers.remove(&uid);
        let started = util::now();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let name = c["name"].clone();
                let image = c["image"].clone();
                let is_broken = broken.iter().any(|b| b["name"] == name);
                if is_broken {
                    json!({"name": name, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
                           "state": {"waiting": {"reason": "ImagePullBackOff",
                                                 "message": format!("Back-off pulling image {image}")}}})
                } else if job_pod {
                    json!({"name": name, "image": image, "imageID": image, "ready": false, "started": false, "restartCount": 0,
                           "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}}})
                } else {
                    json!({"name": name, "image": image, "imageID": image, "ready": true, "started": true, "restartCount": 0,
                           "state": {"running": {"startedAt": started}}})
                }
            })
            .collect();
        let (phase, ready) = if !broken.is_empty() {
            ("Pending", false)
        } else if job_pod {
            ("Succeeded", false)
        } else {
            ("Running", true)
        };
        let flag = |b: bool| if b { "True" } else { "False" };
        let mut status = json!({
            "phase": phase,
            "hostIP": "10.0.0.1",
            "podIP": format!("10.244.0.{}", util::random_bytes(1)[0].max(2)),
            "qosClass": "BestEffort",
            "startTime": pod["status"]["startTime"].as_str().map(String::from).unwrap_or_else(util::now),
            "conditions": [
                condition("PodScheduled", "True", "", ""),
                condition("Initialized", "True", "", ""),
                condition("ContainersReady", flag(ready), if ready { "" } else { "ContainersNotReady" }, ""),
                condition("Ready", flag(ready), if ready { "" } else { "ContainersNotReady" }, ""),
            ],
            "containerStatuses": statuses,
        });
        // Keep the pod IP stable across reconciles.
        if let Some(ip) = pod["status"]["podIP"].as_str() {
            status["podIP"] = json!(ip);
        }
        // The kubelet's event for an image that cannot be pulled (once per pod), which is
        // what `kubectl describe` and `kubectl get events` show an operator.
        if let Some(b) = broken.first()
            && pod["status"]["containerStatuses"].is_null()
        {
            let image = b["image"].as_str().unwrap_or_default();
            self.record_event(
                &pod,
                "Warning",
                "Failed",
                &format!("Failed to pull image \"{image}\": not found (ErrImagePull)"),
            );
        }
        self.set_status(k, status);
    }

    /// Creates a core/v1 Event about `obj`.
    fn record_event(&self, obj: &Value, ty: &str, reason: &str, message: &str) {
        let m = &obj["metadata"];
        let ns = m["namespace"].as_str().unwrap_or("default").to_string();
        let now = util::now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{}", m["name"].as_str().unwrap_or_default(), util::random_suffix(10)),
                "namespace": ns,
            },
            "involvedObject": {
                "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": m["name"],
                "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"],
            },
            "type": ty,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": "sim-node-1"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": "sim-node-1",
        });
        self.create("", "events", &ns, event);
    }
}

fn job_finished(job: &Value) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
    })
}

fn controller_owner(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
}

fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    })
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn condition(ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = util::now();
    let mut c =
        json!({"type": ty, "status": status, "lastTransitionTime": now, "lastUpdateTime": now});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    c
}

/// Carries timestamps over from `old` conditions whose type, status and reason are unchanged,
/// so that a status without real change compares equal (and is not rewritten).
fn keep_condition_times(old: &Value, new: &mut Value) {
    let Some(new_conds) = new["conditions"].as_array_mut() else {
        return;
    };
    let old_conds = old["conditions"].as_array();
    for c in new_conds {
        let same = old_conds.and_then(|os| {
            os.iter().find(|o| {
                o["type"] == c["type"] && o["status"] == c["status"] && o["reason"] == c["reason"]
            })
        });
        if let Some(o) = same {
            for f in ["lastTransitionTime", "lastUpdateTime", "lastProbeTime"] {
                match o.get(f) {
                    Some(v) => c[f] = v.clone(),
                    None => {
                        c.as_object_mut().map(|m| m.remove(f));
                    }
                }
            }
        }
    }
    // Job completion time and pod start time are also stamps, not state.
    for f in ["completionTime", "startTime"] {
        if new.get(f).is_some() && old.get(f).is_some() {
            new[f] = old[f].clone();
        }
    }
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate Deployment, resolved against `replicas`
/// (surge rounds up, unavailability down; both zero would deadlock, so unavailability is 1).
fn surge_and_unavailable(d: &Value, replicas: i64) -> (i64, i64) {
    let resolve = |v: &Value, round_up: bool| match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(p) => p
            .trim_end_matches('%')
            .parse::<i64>()
            .map(|pct| {
                let x = pct * replicas;
                if round_up { (x + 99) / 100 } else { x / 100 }
            })
            .unwrap_or(0),
        _ => 0,
    };
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = resolve(&ru["maxSurge"], true);
    let unavailable = resolve(&ru["maxUnavailable"], false).min(replicas);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// `maxUnavailable` of a RollingUpdate Deployment, resolved against `replicas`.
fn max_unavailable(d: &Value, replicas: i64) -> i64 {
    let s = &d["spec"]["strategy"];
    if s["type"] != "RollingUpdate" || replicas == 0 {
        return 0;
    }
    let v = &s["rollingUpdate"]["maxUnavailable"];
    let n = match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(p) => p
            .trim_end_matches('%')
            .parse::<i64>()
            .map(|pct| pct * replicas / 100)
            .unwrap_or(0),
        _ => 0,
    };
    n.min(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_rounds_down_like_kubernetes() {
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}}}});
        assert_eq!(max_unavailable(&d, 1), 0);
        assert_eq!(max_unavailable(&d, 4), 1);
        let r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        assert_eq!(max_unavailable(&r, 4), 0);
    }

    #[test]
    fn unchanged_conditions_keep_their_timestamps() {
        let old = json!({"conditions": [{"type": "Available", "status": "True", "reason": "R", "lastTransitionTime": "t0"}]});
        let mut new = json!({"conditions": [condition("Available", "True", "R", "")]});
        keep_condition_times(&old, &mut new);
        assert_eq!(new["conditions"][0]["lastTransitionTime"], "t0");
        assert!(new["conditions"][0].get("lastUpdateTime").is_none());
    }
}
