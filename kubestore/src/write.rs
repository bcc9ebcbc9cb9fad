//! Writes to the API server: one lane per object, three classes, one budget.
//!
//! Many tasks write the same objects at once: a cluster's session reports its inventory while
//! the orchestrator records that cluster's rollout progress. Sent independently, two writes to
//! one object race on its `resourceVersion` and one comes back `409 Conflict`. So each object
//! has a *lane*: at most one request in flight, and what is queued behind it is merged into one
//! request (JSON merge patches compose, [`compose`]), whose outcome every merged caller gets.
//! The sink that performs a request can therefore put the `resourceVersion` the previous
//! request returned into the next one: nobody else of ours writes the object in between.
//!
//! A write nothing waits for may be *held* ([`Writer::write_held`]): it waits a little for the
//! next write to its object, which then carries it in the same request. An agent reports its
//! new inventory beside the result the orchestrator is about to store in the same object, so the
//! two become one request instead of two, on an API server whose CPU a rollout is short of.
//!
//! Requests are served by [`Class`] (what gates the coordinator's next action first) under one
//! process-wide [`Budget`]: kube-rs has no client-side rate limit, and a rollout's bursts must
//! neither flood the API server nor starve what must be stored before an upgrade is sent.
//! Every request has a deadline, so a stalled API server fails writes instead of queueing them
//! without end.
//!
//! **Invariant:** the lanes know nothing of what they write. The [`Sink`] decides how a patch
//! reaches the server (which object, which subresource, which precondition, the fence); the
//! lanes decide only when, and with what else merged in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How urgent a write is. Served in this order; within a class, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Must be stored before the coordinator acts: a target entering `running` (its task is
    /// sent only after), a registration (the agent is answered only after), the head of a plan
    /// when a decision changed.
    Gating,
    /// Transitions that must not be lost but gate nothing: results, inventories, certificate
    /// records, log flushes.
    Durable,
    /// Display and bookkeeping, coalesced: counts, connection state, enrolment of pending
    /// targets.
    Coalesced,
}

/// When a write may go: its class, and how long it may be held for the next write to its
/// object to carry it ([`Writer::write_held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Urgency {
    /// The order it is served in.
    pub class: Class,
    /// `None`: it goes as soon as its class and the budget let it.
    pub hold: Option<Duration>,
}

impl From<Class> for Urgency {
    fn from(class: Class) -> Self {
        Urgency { class, hold: None }
    }
}

/// The process-wide limits on writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Requests per second, sustained.
    pub qps: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
    /// Requests in flight at once, over all objects.
    pub concurrency: usize,
    /// How long one request may take before its callers get [`WriteError::TimedOut`].
    pub timeout: Duration,
}

impl Default for Budget {
    /// Room for a 1,000-cluster rollout's ~100 writes/s five times over, while a busy API
    /// server's default priority level (`workload-low`) still has room for everyone else.
    fn default() -> Self {
        Budget {
            qps: 500.0,
            burst: 1000,
            concurrency: 32,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The boxed error a [`Sink`] reports.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Performs one merged request. Called for one key at a time (never two requests for the same
/// key at once), so it may carry the `resourceVersion` its previous call returned.
pub trait Sink: Send + Sync + 'static {
    /// Names one object.
    type Key: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static;
    /// Sends `patch` (a JSON merge patch) for `key`.
    fn write(
        &self,
        key: &Self::Key,
        patch: Value,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why a write was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The server refused or failed the request (shared by every write merged into it).
    #[error("the API server did not store the write: {0}")]
    Failed(#[source] Arc<SinkError>),
    /// No answer within [`Budget::timeout`]; the write may or may not have been stored.
    #[error("the API server did not answer within {0:?}; the write may or may not be stored")]
    TimedOut(Duration),
    /// The writer was dropped before the write was sent.
    #[error("the store is shutting down; the write was not sent")]
    Closed(#[source] Closed),
}

/// The writer's task has ended.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the writer has stopped")]
pub struct Closed;

/// `pub type Result<T, E = Error>`, for this module's callers.
pub type Result<T, E = WriteError> = std::result::Result<T, E>;

/// A handle on the lanes; cheap to clone. The lanes stop when every handle is dropped.
pub struct Writer<S: Sink> {
    tx: mpsc::UnboundedSender<Request<S::Key>>,
}

impl<S: Sink> Clone for Writer<S> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
        }
    }
}

struct Request<K> {
    key: K,
    class: Class,
    patch: Value,
    /// How long it may wait for another write to `key` to carry it.
    hold: Option<Duration>,
    done: oneshot::Sender<Result<()>>,
}

impl<S: Sink> Writer<S> {
    /// Starts the lanes on the current runtime.
    pub fn start(sink: S, budget: Budget) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Lanes::new(Arc::new(sink), budget).run(rx));
        Writer { tx }
    }

    /// Writes `patch` (a JSON merge patch) to `key`; returns once the request that carries it
    /// is answered. Writes to one key are applied in the order they were made.
    pub async fn write(&self, key: S::Key, class: Class, patch: Value) -> Result<()> {
        self.queue(key, class, patch).await
    }

    /// [`Writer::write`] for a patch that nothing waits for: it is held up to `hold`, and the
    /// next write to `key` made meanwhile carries it in its own request; once `hold` passes it
    /// goes alone (at once when the lanes shut down). It never holds back a write made after
    /// it: one that cannot be merged into it releases it. Queued in the order of this call,
    /// like [`Writer::queue`].
    pub fn write_held(
        &self,
        key: S::Key,
        class: Class,
        patch: Value,
        hold: Duration,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        self.send(key, class, patch, Some(hold))
    }

    /// Queues `patch` for `key` now, in the order of this call, and returns its answer to be
    /// awaited later or elsewhere: for writes that gate nothing, whose caller must not wait for
    /// them but whose place among the key's writes must still be the order they were made in.
    pub fn queue(
        &self,
        key: S::Key,
        class: Class,
        patch: Value,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        self.send(key, class, patch, None)
    }

    fn send(
        &self,
        key: S::Key,
        class: Class,
        patch: Value,
        hold: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let sent = self
            .tx
            .send(Request {
                key,
                class,
                patch,
                hold,
                done,
            })
            .map_err(|_| WriteError::Closed(Closed));
        async move {
            sent?;
            answer.await.map_err(|_| WriteError::Closed(Closed))?
        }
    }
}

/// What is queued for one key: merged requests, in order. More than one only when a patch
/// could not be merged into the one before it ([`compose`] returned `None`).
#[derive(Default)]
struct Lane {
    queued: VecDeque<Pending>,
    in_flight: bool,
}

struct Pending {
    class: Class,
    /// When the first write merged into it was made: the order within a class.
    seq: u64,
    /// Not sent before this unless a write that is not held is merged into it.
    held: Option<Instant>,
    patch: Value,
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

/// The lanes whose first request waits, filed by when it may go.
struct Waiting<K> {
    /// Keys whose first request may go now, by (class, seq).
    ready: BTreeMap<(Class, u64), K>,
    /// Keys whose first request is held, by (until, seq).
    holding: BTreeMap<(Instant, u64), K>,
}

impl<K: Ord> Waiting<K> {
    fn file(&mut self, key: K, p: &Pending) {
        match p.held {
            Some(until) => self.holding.insert((until, p.seq), key),
            None => self.ready.insert((p.class, p.seq), key),
        };
    }

    /// Takes `key` out of where it was filed as `was` (its first request's class and hold
    /// before a change) and files it again as `p` is now.
    fn refile(&mut self, was: (Class, Option<Instant>), p: &Pending) {
        let key = match was {
            (_, Some(until)) => self.holding.remove(&(until, p.seq)),
            (class, None) => self.ready.remove(&(class, p.seq)),
        };
        if let Some(key) = key {
            self.file(key, p);
        }
    }

    /// The keys whose hold ended by `now` (every held one when `now` is `None`).
    fn due(&mut self, now: Option<Instant>) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(entry) = self.holding.first_entry() {
            if now.is_some_and(|now| entry.key().0 > now) {
                break;
            }
            due.push(entry.remove());
        }
        due
    }
}

/// A finished request: its key, and the waiters to answer.
type Finished<K> = (K, Vec<oneshot::Sender<Result<()>>>, Result<()>);

struct Lanes<S: Sink> {
    sink: Arc<S>,
    budget: Budget,
    lanes: HashMap<S::Key, Lane>,
    /// Keys whose first queued request is not in flight.
    waiting: Waiting<S::Key>,
    seq: u64,
    bucket: TokenBucket,
}

impl<S: Sink> Lanes<S> {
    fn new(sink: Arc<S>, budget: Budget) -> Self {
        Lanes {
            sink,
            bucket: TokenBucket::new(budget.qps, budget.burst),
            budget,
            lanes: HashMap::new(),
            waiting: Waiting {
                ready: BTreeMap::new(),
                holding: BTreeMap::new(),
            },
            seq: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request<S::Key>>) {
        let mut flying: JoinSet<Finished<S::Key>> = JoinSet::new();
        let mut open = true;
        loop {
            // Holds end on time, and all at once when no more writes can come to carry them.
            self.release(open.then(Instant::now));
            // Send what the budget allows now.
            let mut wait_for_token = None;
            while flying.len() < self.budget.concurrency && !self.waiting.ready.is_empty() {
                match self.bucket.take(Instant::now()) {
                    Ok(()) => self.send_next(&mut flying),
                    Err(at) => {
                        wait_for_token = Some(at);
                        break;
                    }
                }
            }
            if !open && flying.is_empty() && self.waiting.ready.is_empty() {
                return;
            }
            let hold_ends = self
                .waiting
                .holding
                .first_key_value()
                .map(|((at, _), _)| *at);
            let wake = match (wait_for_token, hold_ends) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let token: Pin<Box<dyn Future<Output = ()> + Send>> = match wake {
                Some(at) => Box::pin(tokio::time::sleep_until(at)),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                request = rx.recv(), if open => match request {
                    Some(r) => self.enqueue(r),
                    None => open = false,
                },
                Some(finished) = flying.join_next(), if !flying.is_empty() => {
                    if let Ok((key, waiters, outcome)) = finished {
                        for w in waiters {
                            let _ = w.send(outcome.clone());
                        }
                        self.landed(key);
                    }
                }
                () = token => {}
            }
        }
    }

    fn enqueue(&mut self, r: Request<S::Key>) {
        self.seq += 1;
        let seq = self.seq;
        let held = r.hold.map(|hold| Instant::now() + hold);
        let lane = self.lanes.entry(r.key.clone()).or_default();
        // The last queued request is the first, filed in `waiting`: a change of its class or
        // hold files it again.
        let filed = lane.queued.len() == 1 && !lane.in_flight;
        // Merge into the last queued request when that keeps the order of effects: earlier
        // requests stay ahead of it, so the object sees the same sequence of patches.
        if let Some(last) = lane.queued.back_mut() {
            let was = (last.class, last.held);
            if let Some(merged) = compose(&last.patch, &r.patch) {
                last.patch = merged;
                last.waiters.push(r.done);
                last.class = last.class.min(r.class);
                // Held only while everything in it may wait: a write that may not takes the
                // held ones along now.
                last.held = last.held.zip(held).map(|(a, b)| a.min(b));
                if filed && (last.class, last.held) != was {
                    self.waiting.refile(was, last);
                }
                return;
            }
            // A held request must not hold back the write behind it.
            if last.held.take().is_some() && filed {
                self.waiting.refile(was, last);
            }
        }
        let pending = Pending {
            class: r.class,
            seq,
            held,
            patch: r.patch,
            waiters: vec![r.done],
        };
        if lane.queued.is_empty() && !lane.in_flight {
            self.waiting.file(r.key, &pending);
        }
        lane.queued.push_back(pending);
    }

    /// Ends the holds due by `now` (every hold when `None`): their lanes' requests may go.
    fn release(&mut self, now: Option<Instant>) {
        for key in self.waiting.due(now) {
            if let Some(first) = self.lanes.get_mut(&key).and_then(|l| l.queued.front_mut()) {
                first.held = None;
                self.waiting.file(key, first);
            }
        }
    }

    fn send_next(&mut self, flying: &mut JoinSet<Finished<S::Key>>) {
        let Some((_, key)) = self.waiting.ready.pop_first() else {
            return;
        };
        let lane = self.lanes.get_mut(&key).expect("a ready key has a lane");
        let pending = lane.queued.pop_front().expect("a ready lane has a request");
        lane.in_flight = true;
        let (sink, timeout) = (Arc::clone(&self.sink), self.budget.timeout);
        flying.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, sink.write(&key, pending.patch)).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(WriteError::Failed(Arc::new(e))),
                Err(_) => Err(WriteError::TimedOut(timeout)),
            };
            (key, pending.waiters, outcome)
        });
    }

    /// `key`'s request was answered: its next one may go.
    fn landed(&mut self, key: S::Key) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.in_flight = false;
        match lane.queued.front() {
            Some(next) => self.waiting.file(key, next),
            None => {
                self.lanes.remove(&key);
            }
        }
    }
}

/// A token bucket over tokio's clock (paused in tests).
struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_sec: qps.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says when the next one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = (1.0 - self.tokens) / self.per_sec;
            Err(now + Duration::from_secs_f64(missing))
        }
    }
}

/// One JSON merge patch (RFC 7386) with the effect of applying `first`, then `second`, or
/// `None` when no single merge patch has it: `second` sets an object where `first` deleted or
/// replaced the value with a non-object (applied alone, the object would merge with what the
/// server has instead of replacing it).
pub fn compose(first: &Value, second: &Value) -> Option<Value> {
    let (Value::Object(a), Value::Object(b)) = (first, second) else {
        // A non-object patch replaces the whole target; so does a patch after it.
        return match second {
            Value::Object(_) => None,
            other => Some(other.clone()),
        };
    };
    let mut out: Map<String, Value> = a.clone();
    for (k, v2) in b {
        let merged = match (a.get(k), v2) {
            (Some(v1 @ Value::Object(_)), Value::Object(_)) => compose(v1, v2)?,
            // An object after a deletion or a scalar: merging it alone would keep the
            // server's other fields, which the first patch removed.
            (Some(_), Value::Object(_)) => return None,
            (_, v) => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Some(Value::Object(out))
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`, or `None` when they are
/// equal. Objects are patched field by field (a field `new` lacks becomes `null`), anything
/// else is replaced whole: a store that knows an object part as it wrote it sends only what
/// changed, and leaves fields other writers own (another part's status fields) untouched.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    let (Value::Object(a), Value::Object(b)) = (old, new) else {
        return Some(new.clone());
    };
    let mut out = Map::new();
    for (k, v) in b {
        let changed = match a.get(k) {
            Some(was) => diff(was, v),
            None => Some(v.clone()),
        };
        if let Some(c) = changed {
            out.insert(k.clone(), c);
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.insert(k.clone(), Value::Null);
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use tokio::sync::Semaphore;

    use super::*;

    /// Records every request; each waits for a permit of `gate` when one is given, and fails
    /// when its patch has `"fail": true`.
    #[derive(Clone, Default)]
    struct Recorder {
        sent: Arc<Mutex<Vec<(String, Value, Instant)>>>,
        in_flight: Arc<Mutex<HashMap<String, usize>>>,
        most_in_flight: Arc<AtomicUsize>,
        gate: Option<Arc<Semaphore>>,
    }

    impl Recorder {
        fn gated() -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            (
                Recorder {
                    gate: Some(Arc::clone(&gate)),
                    ..Recorder::default()
                },
                gate,
            )
        }

        fn sent(&self) -> Vec<(String, Value)> {
            let sent = self.sent.lock().expect("lock");
            sent.iter()
                .map(|(k, v, _)| (k.clone(), v.clone()))
                .collect()
        }
    }

    impl Sink for Recorder {
        type Key = String;
        async fn write(&self, key: &String, patch: Value) -> Result<(), SinkError> {
            /// Counts the request out when it ends, answered or abandoned at its deadline.
            struct Flying<'a>(&'a Mutex<HashMap<String, usize>>, &'a String);
            impl Drop for Flying<'_> {
                fn drop(&mut self) {
                    if let Some(n) = self.0.lock().expect("lock").get_mut(self.1) {
                        *n -= 1;
                    }
                }
            }
            {
                let mut in_flight = self.in_flight.lock().expect("lock");
                let n = in_flight.entry(key.clone()).or_default();
                *n += 1;
                assert_eq!(*n, 1, "two requests in flight for {key}");
                let total = in_flight.values().sum::<usize>();
                self.most_in_flight.fetch_max(total, Ordering::SeqCst);
            }
            let _flying = Flying(&self.in_flight, key);
            self.sent
                .lock()
                .expect("lock")
                .push((key.clone(), patch.clone(), Instant::now()));
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate").forget();
            }
            if patch.get("fail") == Some(&Value::Bool(true)) {
                return Err("the server said no".into());
            }
            Ok(())
        }
    }

    fn budget() -> Budget {
        Budget {
            qps: 1_000.0,
            burst: 1_000,
            concurrency: 8,
            timeout: Duration::from_secs(2),
        }
    }

    /// Lets the lanes' task run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_queued_behind_one_in_flight_become_one_request_with_both() {
        let (sink, gate) = Recorder::gated();
        let writer = Writer::start(sink.clone(), budget());
        let first = tokio::spawn({
            let w = writer.clone();
            async move { w.write("c1".into(), Class::Durable, json!({"a": 1})).await }
        });
        settle().await;
        let second = tokio::spawn({
            let w = writer.clone();
            async move { w.write("c1".into(), Class::Durable, json!({"b": 2})).await }
        });
        let third = tokio::spawn({
            let w = writer.clone();
            async move {
                w.write(
                    "c1".into(),
                    Class::Coalesced,
                    json!({"b": 3, "c": {"d": 4}}),
                )
                .await
            }
        });
        settle().await;
        gate.add_permits(2);
        first.await.expect("join").expect("first");
        second.await.expect("join").expect("second");
        third.await.expect("join").expect("third");
        assert_eq!(
            sink.sent(),
            vec![
                ("c1".to_string(), json!({"a": 1})),
                ("c1".to_string(), json!({"b": 3, "c": {"d": 4}})),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_every_write_merged_into_the_request() {
        let (sink, gate) = Recorder::gated();
        let writer = Writer::start(sink.clone(), budget());
        let blocker = tokio::spawn({
            let w = writer.clone();
            async move { w.write("c1".into(), Class::Durable, json!({"a": 1})).await }
        });
        settle().await;
        let merged: Vec<_> = [json!({"fail": true}), json!({"b": 1})]
            .into_iter()
            .map(|p| {
                let w = writer.clone();
                tokio::spawn(async move { w.write("c1".into(), Class::Durable, p).await })
            })
            .collect();
        settle().await;
        gate.add_permits(2);
        blocker.await.expect("join").expect("the first write");
        for m in merged {
            let outcome = m.await.expect("join");
            assert!(matches!(outcome, Err(WriteError::Failed(_))), "{outcome:?}");
        }
        // The lane goes on after a failure.
        gate.add_permits(1);
        writer
            .write("c1".into(), Class::Durable, json!({"c": 1}))
            .await
            .expect("a later write");
    }

    #[tokio::test(start_paused = true)]
    async fn gating_writes_go_before_older_coalesced_ones() {
        let (sink, gate) = Recorder::gated();
        let writer = Writer::start(
            sink.clone(),
            Budget {
                concurrency: 1,
                ..budget()
            },
        );
        let mut tasks = Vec::new();
        for (key, class) in [
            ("busy", Class::Durable),
            ("count-1", Class::Coalesced),
            ("count-2", Class::Coalesced),
            ("result", Class::Durable),
            ("running", Class::Gating),
        ] {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                w.write(key.into(), class, json!({})).await
            }));
            settle().await;
        }
        gate.add_permits(5);
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        let order: Vec<String> = sink.sent().into_iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["busy", "running", "result", "count-1", "count-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_the_rate_and_the_requests_in_flight() {
        let sink = Recorder::default();
        let writer = Writer::start(
            sink.clone(),
            Budget {
                qps: 10.0,
                burst: 5,
                concurrency: 3,
                timeout: Duration::from_secs(2),
            },
        );
        let start = Instant::now();
        let tasks: Vec<_> = (0..25)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move {
                    w.write(format!("c{i}"), Class::Durable, json!({"i": i}))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        let sent = sink.sent.lock().expect("lock").clone();
        assert_eq!(sent.len(), 25);
        // Five go at once (the burst), the other twenty at ten per second.
        let last = sent.iter().map(|(_, _, at)| *at).max().expect("sent");
        let took = last.duration_since(start);
        assert!(
            took >= Duration::from_millis(1_990) && took < Duration::from_millis(2_200),
            "{took:?}"
        );
        assert!(sink.most_in_flight.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_times_out_and_the_lane_goes_on() {
        let (sink, gate) = Recorder::gated();
        let writer = Writer::start(sink.clone(), budget());
        let stuck = writer
            .write("c1".into(), Class::Gating, json!({"a": 1}))
            .await;
        assert!(
            matches!(stuck, Err(WriteError::TimedOut(d)) if d == Duration::from_secs(2)),
            "{stuck:?}"
        );
        gate.add_permits(1);
        writer
            .write("c1".into(), Class::Gating, json!({"a": 2}))
            .await
            .expect("the next write");
        assert_eq!(sink.sent().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_patch_that_cannot_be_merged_waits_for_its_own_request() {
        let (sink, gate) = Recorder::gated();
        let writer = Writer::start(sink.clone(), budget());
        let mut tasks = Vec::new();
        for patch in [
            json!({"a": 1}),
            json!({"s": null}),
            json!({"s": {"x": 1}}),
            json!({"t": 1}),
        ] {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                w.write("c1".into(), Class::Durable, patch).await
            }));
            settle().await;
        }
        gate.add_permits(3);
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        assert_eq!(
            sink.sent(),
            vec![
                ("c1".to_string(), json!({"a": 1})),
                ("c1".to_string(), json!({"s": null})),
                ("c1".to_string(), json!({"s": {"x": 1}, "t": 1})),
            ]
        );
    }

    const HOLD: Duration = Duration::from_millis(250);

    /// Starts `write_held` of `patch` to `key` on its own task.
    fn held(
        writer: &Writer<Recorder>,
        key: &str,
        patch: Value,
    ) -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(writer.write_held(key.to_string(), Class::Durable, patch, HOLD))
    }

    /// When each request went, after `began`.
    fn sent_after(sink: &Recorder, began: Instant) -> Vec<(String, Value, Duration)> {
        let sent = sink.sent.lock().expect("lock");
        sent.iter()
            .map(|(k, v, at)| (k.clone(), v.clone(), *at - began))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_write_rides_in_the_request_of_the_next_write_to_its_object() {
        let sink = Recorder::default();
        let writer = Writer::start(sink.clone(), budget());
        let began = Instant::now();
        let inventory = held(&writer, "c1", json!({"inventory": "v2"}));
        let other = held(&writer, "c2", json!({"inventory": "v2"}));
        settle().await;
        tokio::time::sleep(HOLD / 5).await;
        assert!(sink.sent().is_empty(), "held: nothing sent yet");
        writer
            .write("c1".into(), Class::Durable, json!({"plans": ["done"]}))
            .await
            .expect("the result");
        inventory
            .await
            .expect("join")
            .expect("the inventory, answered with it");
        assert_eq!(
            sent_after(&sink, began),
            [(
                "c1".to_string(),
                json!({"inventory": "v2", "plans": ["done"]}),
                HOLD / 5
            )],
            "one request for both, sent with the write that carried the held one"
        );
        other.await.expect("join").expect("the other");
        assert_eq!(
            sent_after(&sink, began)[1],
            ("c2".to_string(), json!({"inventory": "v2"}), HOLD),
            "a held write nothing carries goes alone once its hold ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_writes_to_one_object_merge_and_go_when_the_first_hold_ends() {
        let sink = Recorder::default();
        let writer = Writer::start(sink.clone(), budget());
        let began = Instant::now();
        let first = held(&writer, "c1", json!({"release": {"status": "pending"}}));
        settle().await;
        tokio::time::sleep(HOLD / 2).await;
        let second = held(&writer, "c1", json!({"release": {"status": "deployed"}}));
        first.await.expect("join").expect("first");
        second.await.expect("join").expect("second");
        assert_eq!(
            sent_after(&sink, began),
            [(
                "c1".to_string(),
                json!({"release": {"status": "deployed"}}),
                HOLD
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_ride_with_a_held_one_is_not_held_back_by_it() {
        let sink = Recorder::default();
        let writer = Writer::start(sink.clone(), budget());
        let began = Instant::now();
        let first = held(&writer, "c1", json!({"release": null}));
        settle().await;
        writer
            .write(
                "c1".into(),
                Class::Gating,
                json!({"release": {"status": "deployed"}}),
            )
            .await
            .expect("the write behind it");
        first.await.expect("join").expect("the held one");
        assert_eq!(
            sent_after(&sink, began),
            [
                ("c1".to_string(), json!({"release": null}), Duration::ZERO),
                (
                    "c1".to_string(),
                    json!({"release": {"status": "deployed"}}),
                    Duration::ZERO
                ),
            ],
            "both at once, in the order they were made"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_write_goes_at_once_when_the_lanes_shut_down() {
        let sink = Recorder::default();
        let writer = Writer::start(sink.clone(), budget());
        let began = Instant::now();
        let inventory = held(&writer, "c1", json!({"inventory": "v2"}));
        settle().await;
        drop(writer);
        inventory.await.expect("join").expect("stored");
        assert_eq!(
            sent_after(&sink, began),
            [("c1".to_string(), json!({"inventory": "v2"}), Duration::ZERO)]
        );
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        match rng.random_range(0..if depth == 0 { 3 } else { 5 }) {
            0 => Value::Null,
            1 => json!(rng.random_range(0..3)),
            2 => json!(["x", rng.random_range(0..2)]),
            _ => {
                let mut m = Map::new();
                for _ in 0..rng.random_range(0..4) {
                    let k = ["a", "b", "c"][rng.random_range(0..3)].to_string();
                    m.insert(k, random_value(rng, depth - 1));
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn a_composed_patch_has_the_effect_of_both_in_order() {
        let mut rng = StdRng::seed_from_u64(15);
        let mut composed = 0;
        for _ in 0..20_000 {
            let doc = random_value(&mut rng, 3);
            let (p1, p2) = (random_value(&mut rng, 3), random_value(&mut rng, 3));
            let mut one_by_one = doc.clone();
            json_patch::merge(&mut one_by_one, &p1);
            json_patch::merge(&mut one_by_one, &p2);
            if let Some(p) = compose(&p1, &p2) {
                composed += 1;
                let mut at_once = doc.clone();
                json_patch::merge(&mut at_once, &p);
                assert_eq!(at_once, one_by_one, "doc {doc}, {p1} then {p2} as {p}");
            }
        }
        // Most pairs compose; refusing everything would pass the check above.
        assert!(composed > 10_000, "{composed}");
    }

    /// A stored document as merge patches leave it: no `null` field (a patch's `null`
    /// deletes).
    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    #[test]
    fn a_diff_applied_to_the_old_document_gives_the_new_one() {
        let mut rng = StdRng::seed_from_u64(16);
        for _ in 0..20_000 {
            let old = without_nulls(random_value(&mut rng, 3));
            let new = without_nulls(random_value(&mut rng, 3));
            match diff(&old, &new) {
                Some(patch) => {
                    let mut patched = old.clone();
                    json_patch::merge(&mut patched, &patch);
                    assert_eq!(patched, new, "{old} to {new} by {patch}");
                }
                None => assert_eq!(old, new),
            }
        }
        assert_eq!(
            diff(
                &json!({"a": {"b": 1, "c": 2}, "d": 1}),
                &json!({"a": {"b": 1}, "d": 1})
            ),
            Some(json!({"a": {"c": null}})),
            "only what changed"
        );
    }
}
