//! The object store: every object of every type, as JSON, behind one lock.
//!
//! Like etcd behind a real API server, the store hands out `resourceVersion`s from one
//! cluster-wide counter, so "newer" means "larger" across all types, and every change is
//! published as a watch [`Event`]. A bounded log of recent events lets a watch start from a
//! `resourceVersion` the client got from an earlier list (what kube-rs' watcher and Helm 4's
//! kstatus wait do); older starts get `410 Gone`, as from a compacted etcd.
//!
//! The store knows nothing of types beyond `(group, plural)`: defaulting, validation, patches
//! and status rules live in the API layer, which runs them inside [`Store::write`] so that a
//! read-modify-write is atomic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult};
use crate::util;

/// How many past events a watch can resume from.
const LOG_CAPACITY: usize = 4_096;
/// Per-subscriber buffer; a watcher that falls further behind is cut off and re-lists.
const CHANNEL_CAPACITY: usize = 1_024;

/// A live feed of store events.
pub type Subscription = broadcast::Receiver<Arc<Event>>;

/// `(group, plural)`.
pub type GroupResource = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
    /// The object after the change (for deletes: the last state, with the delete's version).
    pub object: Value,
    /// For updates: the labels before the change (a label-selector watch turns an update
    /// that leaves or enters its selection into DELETED or ADDED).
    pub old_labels: Option<Value>,
    pub rv: u64,
}

/// What a [`Store::write`] closure decided.
pub enum Write {
    /// Store a new object (the key must be free).
    Create(Value),
    /// Replace the existing object.
    Update(Value),
    /// Remove the existing object.
    Delete,
    /// Change nothing; the current object is returned.
    Keep,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<GroupResource, BTreeMap<(String, String), Value>>,
    log: VecDeque<Arc<Event>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn gr(group: &str, plural: &str) -> GroupResource {
    (group.to_string(), plural.to_string())
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                ..Default::default()
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Writes replace whole entries, so a panic elsewhere cannot leave half an object.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest resourceVersion handed out.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&gr(group, plural))?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a type (in one namespace, or all when `namespace` is `None`) and the
    /// list's resourceVersion.
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = match inner.objects.get(&gr(group, plural)) {
            None => vec![],
            Some(m) => m
                .iter()
                .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                .map(|(_, v)| v.clone())
                .collect(),
        };
        (items, inner.rv)
    }

    /// `(group, plural, name)` of every object in `namespace`.
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<(String, String, String)> {
        let inner = self.lock();
        let mut out = vec![];
        for ((g, p), m) in &inner.objects {
            for (ns, name) in m.keys() {
                if ns == namespace {
                    out.push((g.clone(), p.clone(), name.clone()));
                }
            }
        }
        out
    }

    /// `(group, plural, namespace, name)` of every object whose ownerReferences name `uid`.
    pub fn dependents_of(&self, uid: &str) -> Vec<(String, String, String, String)> {
        let inner = self.lock();
        let mut out = vec![];
        for ((g, p), m) in &inner.objects {
            for ((ns, name), obj) in m {
                let owned = obj["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                if owned {
                    out.push((g.clone(), p.clone(), ns.clone(), name.clone()));
                }
            }
        }
        out
    }

    /// Atomically reads the object at the key, lets `decide` choose a [`Write`], applies it,
    /// assigns `resourceVersion` (and `uid`/`creationTimestamp` on create) and publishes the
    /// event. Returns the object as stored (for deletes: as last seen), or `None` when the
    /// decision was `Keep` and there is no object.
    pub fn write<F>(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        decide: F,
    ) -> ApiResult<Option<Value>>
    where
        F: FnOnce(Option<&Value>) -> ApiResult<Write>,
    {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let current = inner
            .objects
            .get(&gr(group, plural))
            .and_then(|m| m.get(&key));
        let decision = decide(current)?;
        let old_labels = current.map(|c| c["metadata"]["labels"].clone());
        let (kind, object) = match decision {
            Write::Keep => return Ok(current.cloned()),
            Write::Create(mut obj) => {
                if current.is_some() {
                    return Err(ApiError::already_exists(group, plural, name));
                }
                inner.rv += 1;
                let meta = meta_mut(&mut obj);
                if meta
                    .get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    meta.insert("uid".into(), json!(util::uuid()));
                }
                meta.insert("creationTimestamp".into(), json!(util::now()));
                meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
                (EventType::Added, obj)
            }
            Write::Update(mut obj) => {
                let Some(old) = current else {
                    return Err(ApiError::not_found(group, plural, name));
                };
                // Identity fields are the server's, whatever the client sent.
                let uid = old["metadata"]["uid"].clone();
                let created = old["metadata"]["creationTimestamp"].clone();
                inner.rv += 1;
                let meta = meta_mut(&mut obj);
                meta.insert("uid".into(), uid);
                meta.insert("creationTimestamp".into(), created);
                meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
                (EventType::Modified, obj)
            }
            Write::Delete => {
                let Some(old) = current else {
                    return Err(ApiError::not_found(group, plural, name));
                };
                let mut obj = old.clone();
                inner.rv += 1;
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(inner.rv.to_string()));
                (EventType::Deleted, obj)
            }
        };
        let rv = inner.rv;
        let objects = inner.objects.entry(gr(group, plural)).or_default();
        if kind == EventType::Deleted {
            objects.remove(&key);
        } else {
            objects.insert(key, object.clone());
        }
        let event = Arc::new(Event {
            kind,
            group: group.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
            object: object.clone(),
            old_labels: if kind == EventType::Modified {
                old_labels
            } else {
                None
            },
            rv,
        });
        if inner.log.len() >= LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(event.clone());
        // Sent under the lock so that subscribe_since() sees every event exactly once.
        let _ = self.tx.send(event);
        Ok(Some(object))
    }

    /// A consistent list of one type plus a subscription to every later event: what a watch
    /// without a resourceVersion (or with `sendInitialEvents`) starts from.
    pub fn list_and_subscribe(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Arc<Event>>) {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let items = match inner.objects.get(&gr(group, plural)) {
            None => vec![],
            Some(m) => m
                .iter()
                .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                .map(|(_, v)| v.clone())
                .collect(),
        };
        (items, inner.rv, rx)
    }

    /// Subscribes to all future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Events after `rv` that are still in the log, plus a subscription to everything later.
    /// Fails with 410 Gone when `rv` is older than the log.
    pub fn subscribe_since(&self, rv: u64) -> ApiResult<(Vec<Arc<Event>>, Subscription)> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        if let Some(first) = inner.log.front()
            && rv + 1 < first.rv
            && inner.log.len() >= LOG_CAPACITY
        {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                first.rv - 1
            )));
        }
        let past = inner.log.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((past, rx))
    }
}

/// `obj.metadata` as a mutable map, created when missing.
pub fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn versions_grow_across_types_and_events_are_logged() {
        let s = Store::new();
        let a = s
            .write("", "configmaps", "default", "a", |_| {
                Ok(Write::Create(cm("a")))
            })
            .expect("create")
            .expect("object");
        let b = s
            .write("", "secrets", "default", "b", |_| {
                Ok(Write::Create(cm("b")))
            })
            .expect("create")
            .expect("object");
        let rv = |o: &Value| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
        };
        assert!(rv(&b) > rv(&a));
        assert!(a["metadata"]["uid"].as_str().is_some());
        let (past, _rx) = s.subscribe_since(rv(&a).expect("rv")).expect("since");
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].name, "b");
    }

    #[test]
    fn watching_from_a_compacted_version_is_gone() {
        let s = Store::new();
        for i in 0..LOG_CAPACITY + 10 {
            s.write("", "configmaps", "default", &format!("c{i}"), |_| {
                Ok(Write::Create(cm(&format!("c{i}"))))
            })
            .expect("create");
        }
        let e = s.subscribe_since(2).expect_err("compacted");
        assert_eq!(e.code, 410);
        let (past, _rx) = s.subscribe_since(s.current_rv() - 3).expect("recent");
        assert_eq!(past.len(), 3);
    }

    #[test]
    fn create_twice_is_already_exists_and_update_keeps_uid() {
        let s = Store::new();
        let a = s
            .write("", "configmaps", "default", "a", |_| {
                Ok(Write::Create(cm("a")))
            })
            .expect("create")
            .expect("object");
        let e = s
            .write("", "configmaps", "default", "a", |_| {
                Ok(Write::Create(cm("a")))
            })
            .expect_err("exists");
        assert_eq!(e.reason, "AlreadyExists");
        let mut changed = cm("a");
        changed["metadata"]["uid"] = json!("forged");
        let u = s
            .write("", "configmaps", "default", "a", |_| {
                Ok(Write::Update(changed))
            })
            .expect("update")
            .expect("object");
        assert_eq!(u["metadata"]["uid"], a["metadata"]["uid"]);
    }
}
