//! Leader election on a `coordination.k8s.io/v1` Lease, with a fence the writer checks before
//! every write (design §5.1 and §5.3; open question 12 says why it is our own and not a crate:
//! the fence needs the instant each successful renewal *started*, which no library exposes).
//!
//! The protocol is client-go's (`tools/leaderelection`), so operators meet the semantics and
//! defaults they know (15 s lease, 10 s renew deadline, 2 s retry period):
//!
//! - **acquire**: read the Lease; take it when it does not exist (create), when its holder is
//!   empty (released), or when its record has not changed for the record's
//!   `leaseDurationSeconds` *as observed on our own monotonic clock*: the time a candidate
//!   waits is measured from when it last saw the record change, never from the holder's
//!   `renewTime`, which was written by another node's wall clock. A candidate that starts
//!   therefore always waits a full lease duration before taking a held Lease, however old its
//!   `renewTime` looks. The write is an update carrying the read `resourceVersion`, so of two
//!   candidates exactly one wins (the other gets 409); `leaseTransitions + 1` is the new
//!   holder's **term** (the creator's term is 0).
//! - **renew** every retry period with the `resourceVersion` we last wrote; a 409 is followed
//!   by a read: another holder means we were superseded, our own record (somebody touched the
//!   object's metadata) is renewed with the fresh `resourceVersion`.
//! - **release** on graceful stop (client-go's `ReleaseOnCancel`): the fence closes first, then
//!   the holder is emptied and `leaseDurationSeconds` set to 1, so a standby takes over at its
//!   next retry instead of waiting out the lease.
//!
//! The **fence** ([`Fence`]) is what the writer consults before each write: open only while
//! `now < start of the last successful renewal + renew deadline`, on the monotonic clock. The
//! start, not the response, counts: the API server applied our write no earlier than we sent
//! it, so every candidate saw the change no earlier than that, and none can take the Lease
//! before `start + lease duration`, which is later than our deadline by `lease duration − renew
//! deadline` (5 s by default). A renewal that answers after the deadline does not reopen the
//! fence: once closed it stays closed, and [`Fence::lost`] resolves so the coordinator exits
//! (§5.3: deposed means exit).
//!
//! Where this departs from client-go: the acquire loop's jitter is at most 20 % of the retry
//! period (client-go adds up to 120 %), so a released Lease is taken within about one retry
//! period as §5.1 promises; and each request is bounded by [`Timing::request_timeout`] and by
//! the fence's deadline, so a hung connection cannot hold the renewer past the point where its
//! answer could matter. An RBAC refusal (401/403) is not retried: it is a configuration error
//! and surfaces as [`Error::Denied`] naming the verb, instead of a candidate that waits forever.
//!
//! **RBAC** the coordinator's ServiceAccount needs, in its namespace: `leases` `get` and
//! `update` with `resourceNames: [skoala-fleet-leader]`, and `leases` `create` *without*
//! `resourceNames` (the API server authorizes a create before the object's name is known, so a
//! create rule narrowed by name never matches). No `delete`: nobody deletes the Lease, which
//! also keeps terms unique (a deleted Lease would start again at `leaseTransitions: 0`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};

/// The Lease the coordinator replicas elect their leader on.
pub const LEASE_NAME: &str = "skoala-fleet-leader";

/// At most this fraction of the retry period is added, at random, to each wait of a candidate,
/// so two candidates started together do not keep colliding.
const JITTER: f64 = 0.2;

/// What can go wrong electing a leader, and why a write is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The durations do not satisfy client-go's rules (see [`Timing::validate`]).
    #[error("invalid leader-election timing: {reason}")]
    InvalidTiming {
        /// The rule that failed.
        reason: &'static str,
    },
    /// The API server refused a request on the Lease as unauthorized or forbidden: the
    /// ServiceAccount lacks a right (RBAC). Not retried: waiting would not grant it.
    #[error(
        "the API server refused to {verb} Lease {lease} ({code}): {message}; the coordinator's \
         Role needs `get` and `update` on this Lease by name and `create` on leases"
    )]
    Denied {
        /// The verb that was refused.
        verb: Verb,
        /// `<namespace>/<name>` of the Lease.
        lease: String,
        /// 401 or 403.
        code: u16,
        /// The API server's message (it names the user, verb and resource).
        message: String,
        /// The refusal as kube-rs returned it.
        #[source]
        source: Box<kube::Error>,
    },
    /// Releasing the Lease failed for a reason other than a refusal; the Lease then expires
    /// after its duration, as after a crash.
    #[error("releasing Lease {lease}")]
    Release {
        /// `<namespace>/<name>` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The release request did not answer within the request timeout.
    #[error("releasing Lease {lease}: no answer within {timeout:?}")]
    ReleaseTimeout {
        /// `<namespace>/<name>` of the Lease.
        lease: String,
        /// The request timeout.
        timeout: Duration,
    },
    /// A write was refused by the fence: this process no longer leads (or cannot prove it
    /// does), so it must not write.
    #[error("fenced: term {term} is over ({lost})")]
    Fenced {
        /// The term that ended.
        term: Term,
        /// Why it ended.
        lost: Lost,
    },
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The requests the elector makes on the Lease, for [`Error::Denied`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Reading the Lease.
    Get,
    /// Creating it when it does not exist.
    Create,
    /// Taking, renewing or releasing it.
    Update,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
        })
    }
}

/// A leader's term: the Lease's `leaseTransitions` while it holds it. Every acquisition by a
/// new holder raises it by one, so a write stamped with a term says which leader made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub i32);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a term ended.
#[derive(Clone, Debug)]
pub enum Lost {
    /// The renew deadline passed without a successful renewal (the API server did not answer
    /// in time, or answered with errors).
    Deadline,
    /// A renewal met another holder's record: someone took the Lease.
    Superseded {
        /// The new holder's identity.
        holder: String,
    },
    /// A renewal was refused by RBAC.
    Denied(Arc<Error>),
    /// We released the Lease (graceful stop).
    Released,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Deadline => f.write_str("the renew deadline passed without a renewal"),
            Lost::Superseded { holder } => write!(f, "the Lease is held by {holder}"),
            Lost::Denied(e) => write!(f, "{e}"),
            Lost::Released => f.write_str("the Lease was released"),
        }
    }
}

/// The election's durations. [`Default`] is client-go's (and kube-controller-manager's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long candidates wait, after last seeing the record change, before taking a held
    /// Lease; written into the Lease as `leaseDurationSeconds` (whole seconds).
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal a leader may still write.
    pub renew_deadline: Duration,
    /// How often a candidate tries to acquire and a leader renews.
    pub retry_period: Duration,
    /// The longest one request on the Lease may take before it counts as failed.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// client-go's rules, plus whole seconds for the Lease's duration: the fence is only sound
    /// when the lease outlasts the renew deadline, and a leader must get more than one try
    /// within its renew deadline.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason| Err(Error::InvalidTiming { reason });
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() == 0 {
            return fail("the lease duration must be a whole number of seconds, at least 1");
        }
        if i32::try_from(self.lease_duration.as_secs()).is_err() {
            return fail("the lease duration does not fit leaseDurationSeconds");
        }
        if self.lease_duration <= self.renew_deadline {
            return fail("the lease duration must be longer than the renew deadline");
        }
        if self.renew_deadline.as_secs_f64() <= self.retry_period.as_secs_f64() * (1.0 + JITTER) {
            return fail("the renew deadline must be longer than the retry period with its jitter");
        }
        if self.retry_period.is_zero() || self.request_timeout.is_zero() {
            return fail("the retry period and the request timeout must be positive");
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        // `validate` checked it fits.
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// The retry period plus up to [`JITTER`] of it.
    fn jittered_retry(&self) -> Duration {
        self.retry_period
            .mul_f64(1.0 + JITTER * rand::random::<f64>())
    }
}

/// A holder identity: `<pod name>_<random>`, random per process start, so a restarted
/// container never mistakes the Lease its previous incarnation held for its own.
pub fn identity(pod_name: &str) -> String {
    format!("{pod_name}_{:016x}", rand::random::<u64>())
}

/// The Pod name in a holder identity made by [`identity`].
pub fn pod_of(identity: &str) -> &str {
    identity.rsplit_once('_').map_or(identity, |(pod, _)| pod)
}

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct Config {
    /// The namespace (the coordinator's own).
    pub namespace: String,
    /// The Lease's name ([`LEASE_NAME`] in the product).
    pub name: String,
    /// Our holder identity (see [`identity`]).
    pub identity: String,
    /// The durations.
    pub timing: Timing,
}

impl Config {
    /// The product's Lease ([`LEASE_NAME`]) in `namespace`, client-go's durations.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Config {
            namespace: namespace.into(),
            name: LEASE_NAME.into(),
            identity: identity.into(),
            timing: Timing::default(),
        }
    }

    /// `<namespace>/<name>`, for messages.
    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The record as we last saw it change, and when (on our monotonic clock).
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// A candidate: waits for the Lease in [`Elector::acquire`].
pub struct Elector {
    api: Api<Lease>,
    config: Config,
    observed: Option<Observed>,
}

/// What one acquire attempt found.
enum Attempt {
    /// Ours: the Lease as written, when the write started, our term, whom we took it from.
    Won {
        held: Box<Lease>,
        start: Instant,
        term: Term,
        predecessor: Option<String>,
    },
    /// Held by someone else, lost a race, or a transient error: try again later.
    NotYet,
}

impl Elector {
    /// A candidate for `config`'s Lease, speaking with `client`'s credentials.
    pub fn new(client: kube::Client, config: Config) -> Result<Self> {
        config.timing.validate()?;
        Ok(Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        })
    }

    /// Waits until this candidate holds the Lease and returns its [`Leadership`], renewed in
    /// the background from then on. Transient API errors are retried every retry period;
    /// an RBAC refusal ends the wait with [`Error::Denied`].
    pub async fn acquire(mut self) -> Result<Leadership> {
        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "waiting to lead");
        loop {
            if let Attempt::Won {
                held,
                start,
                term,
                predecessor,
            } = self.try_acquire().await?
            {
                return Ok(self.won(held, start, term, predecessor));
            }
            tokio::time::sleep(self.config.timing.jittered_retry()).await;
        }
    }

    async fn try_acquire(&mut self) -> Result<Attempt> {
        let timing = self.config.timing;
        let name = self.config.name.clone();
        let current = match timeout_at(
            Instant::now() + timing.request_timeout,
            self.api.get_opt(&name),
        )
        .await
        {
            Err(_) => {
                tracing::warn!(lease = %name, "reading the Lease timed out");
                return Ok(Attempt::NotYet);
            }
            Ok(Err(e)) => return self.refused_or_retry(Verb::Get, e),
            Ok(Ok(current)) => current,
        };
        let Some(mut lease) = current else {
            let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "skoala-fleet".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                spec: Some(self.record(now.clone(), now, Term(0))),
            };
            let start = Instant::now();
            return match timeout_at(
                start + timing.request_timeout,
                self.api.create(&PostParams::default(), &lease),
            )
            .await
            {
                Err(_) => Ok(Attempt::NotYet),
                Ok(Ok(created)) => Ok(Attempt::Won {
                    held: Box::new(created),
                    start,
                    term: Term(0),
                    predecessor: None,
                }),
                Ok(Err(e)) => self.refused_or_retry(Verb::Create, e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        // The expiry clock restarts whenever the record changes, as seen from here.
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            let holder = spec.holder_identity.clone().unwrap_or_default();
            if self
                .observed
                .as_ref()
                .is_none_or(|o| o.spec.holder_identity.clone().unwrap_or_default() != holder)
            {
                tracing::info!(lease = %name, holder = %holder, "leader observed");
            }
            self.observed = Some(Observed {
                spec: spec.clone(),
                at: Instant::now(),
            });
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        let observed_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        let lease_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        if !holder.is_empty() && !ours && Instant::now() < observed_at + lease_for {
            return Ok(Attempt::NotYet);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        // Our own record (a write of ours whose answer we missed) keeps its term.
        let term = if ours {
            Term(transitions)
        } else {
            Term(transitions.saturating_add(1))
        };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let acquired = match (&spec.acquire_time, ours) {
            (Some(t), true) => t.clone(),
            _ => now.clone(),
        };
        lease.spec = Some(self.record(acquired, now, term));
        let start = Instant::now();
        match timeout_at(
            start + timing.request_timeout,
            self.api.replace(&name, &PostParams::default(), &lease),
        )
        .await
        {
            Err(_) => Ok(Attempt::NotYet),
            Ok(Ok(updated)) => Ok(Attempt::Won {
                held: Box::new(updated),
                start,
                term,
                predecessor: (!holder.is_empty() && !ours).then_some(holder),
            }),
            Ok(Err(e)) => self.refused_or_retry(Verb::Update, e),
        }
    }

    /// The record a holder writes: us, our duration, the given times and term.
    fn record(&self, acquired: MicroTime, renewed: MicroTime, term: Term) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.timing.lease_seconds()),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(term.0),
            ..Default::default()
        }
    }

    fn refused_or_retry(&self, verb: Verb, e: kube::Error) -> Result<Attempt> {
        match denied(&self.config, verb, e) {
            Ok(e) => Err(e),
            Err(e) => {
                // 409: another candidate wrote first; anything else: the API server or the
                // network, which the next attempt may find healthy.
                tracing::warn!(lease = %self.config.name, %verb, error = %e, "could not acquire the Lease");
                Ok(Attempt::NotYet)
            }
        }
    }

    fn won(
        self,
        held: Box<Lease>,
        start: Instant,
        term: Term,
        predecessor: Option<String>,
    ) -> Leadership {
        tracing::info!(lease = %self.config.name, identity = %self.config.identity, %term, "leading");
        let (state, state_rx) = watch::channel(FenceState {
            deadline: start + self.config.timing.renew_deadline,
            lost: None,
        });
        let (stop, stop_rx) = oneshot::channel();
        let renewer = Renewer {
            api: self.api,
            config: self.config.clone(),
            held: *held,
            term,
            state,
        };
        Leadership {
            fence: Fence {
                state: state_rx,
                term,
            },
            since: start,
            identity: self.config.identity,
            predecessor,
            stop: Some(stop),
            task: Some(tokio::spawn(renewer.run(stop_rx))),
        }
    }
}

/// `Ok(Error::Denied)` when `e` is an RBAC refusal, else `Err(e)` back.
fn denied(config: &Config, verb: Verb, e: kube::Error) -> Result<Error, kube::Error> {
    match &e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => Ok(Error::Denied {
            verb,
            lease: config.lease(),
            code: status.code,
            message: status.message.clone(),
            source: Box::new(e),
        }),
        _ => Err(e),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// What the renewer tells the fences.
#[derive(Clone, Debug)]
struct FenceState {
    /// Start of the last successful renewal (or of the acquiring write) + renew deadline.
    deadline: Instant,
    /// Set once the term ended; never cleared.
    lost: Option<Lost>,
}

/// The writer's check: is this process still the leader, by its own deadline? Cheap (no API
/// call) and clonable; every write path holds one.
#[derive(Clone, Debug)]
pub struct Fence {
    state: watch::Receiver<FenceState>,
    term: Term,
}

impl Fence {
    /// The term to stamp into a write, if a write may be sent now; [`Error::Fenced`] once the
    /// deadline passed or the term ended otherwise. Call it before every write.
    pub fn check(&self) -> Result<Term> {
        let state = self.state.borrow();
        let lost = match &state.lost {
            Some(lost) => lost.clone(),
            // Read under the lock the renewer extends the deadline under, so a deadline that
            // was seen passing is never extended afterwards.
            None if Instant::now() < state.deadline => return Ok(self.term),
            None => Lost::Deadline,
        };
        Err(Error::Fenced {
            term: self.term,
            lost,
        })
    }

    /// This leadership's term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The instant after which no write may be sent unless a renewal extends it; a writer may
    /// bound its request with it.
    pub fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// Resolves when the term ends: the deadline passed without a renewal (also when the
    /// renewer is gone), another holder was seen, RBAC refused a renewal, or the Lease was
    /// released. The coordinator exits on it (§5.3).
    pub async fn lost(&self) -> Lost {
        let mut rx = self.state.clone();
        loop {
            let (deadline, lost) = {
                let s = rx.borrow_and_update();
                (s.deadline, s.lost.clone())
            };
            if let Some(lost) = lost {
                return lost;
            }
            if Instant::now() >= deadline {
                return Lost::Deadline;
            }
            tokio::select! {
                () = sleep_until(deadline) => {}
                changed = rx.changed() => if changed.is_err() {
                    // The renewer is gone (dropped, aborted): nothing extends the deadline.
                    if let Some(lost) = rx.borrow().lost.clone() {
                        return lost;
                    }
                    sleep_until(deadline).await;
                    return Lost::Deadline;
                }
            }
        }
    }
}

/// A held Lease, renewed in the background. [`Leadership::release`] is the graceful stop;
/// dropping it stops renewing *without* releasing (what a crash does): the fence then closes
/// at its deadline and a standby takes over once the lease expires.
pub struct Leadership {
    fence: Fence,
    /// When the acquiring write was sent; see [`Leadership::since`].
    since: Instant,
    identity: String,
    predecessor: Option<String>,
    /// Asks the renewer to stop; dropped (with the renewer aborted) on drop.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Renewer>>,
}

impl Leadership {
    /// The fence every write checks.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// This leadership's term.
    pub fn term(&self) -> Term {
        self.fence.term
    }

    /// When the write that took the Lease was sent: the API server applied it no earlier, so
    /// the term started no earlier than this instant.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Our holder identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The holder we took the Lease from (its Pod is `identity.rsplit_once('_')`'s first
    /// part), or `None` when the Lease was new or released.
    pub fn predecessor(&self) -> Option<&str> {
        self.predecessor.as_deref()
    }

    /// Resolves when the term ends (see [`Fence::lost`]).
    pub async fn lost(&self) -> Lost {
        self.fence.lost().await
    }

    /// The graceful stop: lets a renewal in flight finish, stops renewing, closes the fence,
    /// then releases the Lease (empty holder, `leaseDurationSeconds: 1`) so a standby takes it
    /// at its next retry. Call it after sessions are closed and writes stopped. A Lease
    /// someone else already holds is left alone.
    pub async fn release(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(renewer) => renewer.release().await,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The background half of a [`Leadership`]: renews, and tells the fences.
struct Renewer {
    api: Api<Lease>,
    config: Config,
    /// The Lease as the API server last returned it to us (its `resourceVersion` is the
    /// precondition of the next write).
    held: Lease,
    term: Term,
    state: watch::Sender<FenceState>,
}

/// What one renewal found.
enum Renewal {
    /// Renewed; the write started at this instant.
    Renewed(Instant),
    /// The term is over.
    Over(Lost),
    /// No answer or an error; try again while the deadline allows.
    Failed,
}

impl Renewer {
    /// Renews every retry period until the term ends or a stop is asked; then, for a stop,
    /// hands itself back so [`Leadership::release`] can release with the held version.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Renewer {
        loop {
            let next = Instant::now() + self.config.timing.retry_period;
            tokio::select! {
                _ = &mut stop => return self,
                () = sleep_until(next) => {}
            }
            let lost = match self.renew().await {
                Renewal::Renewed(start) => self.extend(start),
                Renewal::Over(lost) => Some(lost),
                Renewal::Failed => (Instant::now() >= self.deadline()).then_some(Lost::Deadline),
            };
            if let Some(lost) = lost {
                tracing::warn!(lease = %self.config.name, term = %self.term, %lost, "no longer leading");
                self.end(lost);
                let _ = stop.await;
                return self;
            }
        }
    }

    fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// Moves the deadline to `start + renew deadline`, unless it already passed: a renewal
    /// that answers late never reopens a closed fence.
    fn extend(&self, start: Instant) -> Option<Lost> {
        let mut too_late = false;
        self.state.send_if_modified(|s| {
            if s.lost.is_some() {
                return false;
            }
            if Instant::now() >= s.deadline {
                too_late = true;
                return false;
            }
            s.deadline = s.deadline.max(start + self.config.timing.renew_deadline);
            true
        });
        too_late.then_some(Lost::Deadline)
    }

    fn end(&self, lost: Lost) {
        self.state.send_if_modified(|s| {
            if s.lost.is_some() {
                return false;
            }
            s.lost = Some(lost);
            true
        });
    }

    /// One renewal: our record with the held `resourceVersion`; on 409 a read decides between
    /// superseded and a fresh version of our own record (then one more write).
    async fn renew(&mut self) -> Renewal {
        let deadline = self.deadline();
        for _ in 0..2 {
            let start = Instant::now();
            if start >= deadline {
                return Renewal::Over(Lost::Deadline);
            }
            // No answer after the deadline could help: the fence is closed by then.
            let until = deadline.min(start + self.config.timing.request_timeout);
            let mut lease = self.held.clone();
            let mut spec = lease.spec.clone().unwrap_or_default();
            spec.holder_identity = Some(self.config.identity.clone());
            spec.lease_duration_seconds = Some(self.config.timing.lease_seconds());
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            spec.lease_transitions = Some(self.term.0);
            lease.spec = Some(spec);
            let params = PostParams::default();
            let put = self.api.replace(&self.config.name, &params, &lease);
            let e = match timeout_at(until, put).await {
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, "renewing the Lease timed out");
                    return Renewal::Failed;
                }
                Ok(Ok(renewed)) => {
                    self.held = renewed;
                    return Renewal::Renewed(start);
                }
                Ok(Err(e)) => e,
            };
            if !is_conflict(&e) {
                return match denied(&self.config, Verb::Update, e) {
                    Ok(refused) => Renewal::Over(Lost::Denied(Arc::new(refused))),
                    Err(e) => {
                        tracing::warn!(lease = %self.config.name, error = %e, "renewing the Lease failed");
                        Renewal::Failed
                    }
                };
            }
            let read = timeout_at(until, self.api.get_opt(&self.config.name)).await;
            match read {
                Ok(Ok(Some(current))) => {
                    let holder = current
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.clone())
                        .unwrap_or_default();
                    if holder != self.config.identity {
                        return Renewal::Over(Lost::Superseded { holder });
                    }
                    self.held = current;
                }
                Ok(Ok(None)) => {
                    return Renewal::Over(Lost::Superseded {
                        holder: String::new(),
                    });
                }
                Ok(Err(e)) => {
                    return match denied(&self.config, Verb::Get, e) {
                        Ok(refused) => Renewal::Over(Lost::Denied(Arc::new(refused))),
                        Err(_) => Renewal::Failed,
                    };
                }
                Err(_) => return Renewal::Failed,
            }
        }
        Renewal::Failed
    }

    /// Closes the fence, then empties the holder and shortens the lease to 1 s, on the held
    /// `resourceVersion`: a 409 means another holder wrote since, and the Lease is not ours to
    /// release.
    async fn release(self) -> Result<()> {
        self.end(Lost::Released);
        let Some(spec) = self.held.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut lease = self.held.clone();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(self.term.0),
            ..Default::default()
        });
        let timeout = self.config.timing.request_timeout;
        let params = PostParams::default();
        let put = self.api.replace(&self.config.name, &params, &lease);
        match timeout_at(Instant::now() + timeout, put).await {
            Err(_) => Err(Error::ReleaseTimeout {
                lease: self.config.lease(),
                timeout,
            }),
            Ok(Ok(_)) => {
                tracing::info!(lease = %self.config.name, term = %self.term, "released the Lease");
                Ok(())
            }
            Ok(Err(e)) if is_conflict(&e) || matches!(&e, kube::Error::Api(s) if s.code == 404) => {
                Ok(())
            }
            Ok(Err(e)) => Err(match denied(&self.config, Verb::Update, e) {
                Ok(refused) => refused,
                Err(source) => Error::Release {
                    lease: self.config.lease(),
                    source: Box::new(source),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests;
