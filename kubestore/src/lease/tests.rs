//! The election and the fence against an in-process API server for one Lease (real kube-rs
//! requests, `resourceVersion` preconditions, 404/409/403 as the API server answers them), on
//! tokio's paused clock, so every instant below is exact.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::core::ObjectMeta;
use tokio::time::{Instant, sleep_until};

use super::*;

const NS: &str = "fleet";

/// How the fake API server answers writes of the Lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Puts {
    /// Applied and answered at once.
    #[default]
    Answer,
    /// Applied at once, answered after this long (a slow network on the way back).
    AnswerAfter(Duration),
    /// Never answered, never applied (a partition).
    Hang,
    /// Refused with 403, as RBAC without `update` does.
    Forbidden,
}

#[derive(Debug, Default)]
struct Server {
    lease: Option<Lease>,
    rv: u64,
    /// Every write the server applied: when, and the record written.
    writes: Vec<(Instant, LeaseSpec)>,
    /// Writes received (applied or not).
    puts_received: usize,
    puts: Puts,
}

/// One Lease behind a kube-rs client, with the API server's semantics for it.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Server>>);

fn status(code: u16, reason: &str, message: &str) -> http::Response<kube::client::Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: u16, lease: &Lease) -> http::Response<kube::client::Body> {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(lease).unwrap()))
        .unwrap()
}

impl Fake {
    fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(service, NS)
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        self.0.lock().unwrap()
    }

    /// Stores `lease` as the server's object, with a fresh resourceVersion.
    fn store(&self, mut lease: Lease) -> Lease {
        let mut s = self.server();
        s.rv += 1;
        lease.metadata.resource_version = Some(s.rv.to_string());
        lease.metadata.namespace = Some(NS.into());
        s.lease = Some(lease.clone());
        lease
    }

    /// Changes the stored record as another writer would.
    fn edit(&self, f: impl FnOnce(&mut LeaseSpec)) {
        let mut lease = self.server().lease.clone().expect("a Lease");
        let mut spec = lease.spec.take().unwrap_or_default();
        f(&mut spec);
        lease.spec = Some(spec);
        self.store(lease);
    }

    fn record(&self) -> LeaseSpec {
        self.server()
            .lease
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default()
    }

    async fn handle(
        &self,
        req: http::Request<kube::client::Body>,
    ) -> http::Response<kube::client::Body> {
        let method = req.method().clone();
        let body = req.into_body().collect_bytes().await.unwrap();
        if method == http::Method::GET {
            return match self.server().lease.clone() {
                Some(lease) => ok(200, &lease),
                None => status(404, "NotFound", "leases.coordination.k8s.io not found"),
            };
        }
        let lease: Lease = serde_json::from_slice(&body).unwrap();
        if method == http::Method::POST {
            if self.server().lease.is_some() {
                return status(
                    409,
                    "AlreadyExists",
                    "leases.coordination.k8s.io already exists",
                );
            }
            let stored = self.store(lease);
            let spec = stored.spec.clone().unwrap_or_default();
            self.server().writes.push((Instant::now(), spec));
            return ok(201, &stored);
        }
        assert_eq!(method, http::Method::PUT);
        let puts = {
            let mut s = self.server();
            s.puts_received += 1;
            s.puts
        };
        match puts {
            Puts::Hang => std::future::pending::<()>().await,
            Puts::Forbidden => {
                return status(
                    403,
                    "Forbidden",
                    "leases.coordination.k8s.io \"l\" is forbidden: User \"sa\" cannot update resource \"leases\"",
                );
            }
            Puts::Answer | Puts::AnswerAfter(_) => {}
        }
        let current = self.server().lease.clone();
        let Some(current) = current else {
            return status(404, "NotFound", "leases.coordination.k8s.io not found");
        };
        if current.metadata.resource_version != lease.metadata.resource_version {
            return status(409, "Conflict", "the object has been modified");
        }
        let stored = self.store(lease);
        let spec = stored.spec.clone().unwrap_or_default();
        self.server().writes.push((Instant::now(), spec));
        if let Puts::AnswerAfter(delay) = puts {
            tokio::time::sleep(delay).await;
        }
        ok(200, &stored)
    }
}

fn timing() -> Timing {
    Timing {
        // Longer than any deadline below, so only the fence's deadline bounds a renewal.
        request_timeout: Duration::from_secs(60),
        ..Timing::default()
    }
}

fn elector(fake: &Fake, identity: &str) -> Elector {
    let mut config = Config::new(NS, identity);
    config.timing = timing();
    Elector::new(fake.client(), config).unwrap()
}

fn held_by(holder: &str, transitions: i32, renewed: k8s_openapi::jiff::Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `f`, or a panic after a minute of (paused) time: a broken elector fails a test, never hangs it.
async fn within_a_minute<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("did not happen within a minute")
}

#[tokio::test(start_paused = true)]
async fn no_write_is_allowed_after_the_deadline_while_the_renewal_is_still_in_flight() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let leader = elector(&fake, "a").acquire().await.unwrap();
    let fence = leader.fence();
    assert_eq!(fence.check().unwrap(), Term(0), "the creator's term");
    // Every renewal from now on is sent and never answered.
    fake.server().puts = Puts::Hang;
    sleep_until(t0 + secs(9.999)).await;
    assert!(fake.server().puts_received >= 1, "a renewal is in flight");
    assert!(fence.check().is_ok(), "still inside the deadline");
    sleep_until(t0 + secs(10.0)).await;
    assert!(
        matches!(
            fence.check(),
            Err(Error::Fenced {
                term: Term(0),
                lost: Lost::Deadline
            })
        ),
        "the deadline is start of the acquiring write + 10 s: {:?}",
        fence.check()
    );
    let lost = within_a_minute(fence.lost()).await;
    assert!(matches!(lost, Lost::Deadline), "{lost:?}");
    assert_eq!(
        Instant::now(),
        t0 + secs(10.0),
        "lost resolves at the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_start_of_a_renewal_not_from_its_answer() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let leader = elector(&fake, "a").acquire().await.unwrap();
    fake.server().puts = Puts::AnswerAfter(secs(1.0));
    // The first renewal starts at 2 s (one retry period) and is answered at 3 s.
    sleep_until(t0 + secs(3.5)).await;
    assert_eq!(fake.server().writes.len(), 2, "created, then renewed once");
    assert_eq!(
        leader.fence().deadline(),
        t0 + secs(12.0),
        "2 s start + 10 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_answered_after_the_deadline_never_reopens_the_fence() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let leader = elector(&fake, "a").acquire().await.unwrap();
    let fence = leader.fence();
    // Renewals reach the server (its record moves on) but the answers come 9 s late: the
    // first one, sent at 2 s, would answer at 11 s with a deadline of 12 s if it counted.
    fake.server().puts = Puts::AnswerAfter(secs(9.0));
    let lost = within_a_minute(fence.lost()).await;
    assert!(matches!(lost, Lost::Deadline), "{lost:?}");
    assert_eq!(Instant::now(), t0 + secs(10.0));
    sleep_until(t0 + secs(11.5)).await;
    assert!(
        fake.server().writes.len() >= 2,
        "the server applied the renewal"
    );
    assert!(fence.check().is_err(), "a late answer reopened the fence");
    sleep_until(t0 + secs(30.0)).await;
    assert!(fence.check().is_err(), "a closed fence stays closed");
}

#[tokio::test(start_paused = true)]
async fn a_candidate_waits_a_lease_duration_from_when_it_saw_the_record_change_not_from_renew_time()
{
    let fake = Fake::default();
    // The holder's clock says it renewed an hour ago: that is not trusted.
    let an_hour_ago =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
    fake.store(held_by("other_1", 4, an_hour_ago));
    let t0 = Instant::now();
    let candidate = tokio::spawn(elector(&fake, "b").acquire());
    // The holder renews at 10 s (its renewTime now a day in the future: not trusted either).
    sleep_until(t0 + secs(10.0)).await;
    assert!(
        !candidate.is_finished(),
        "took a held Lease before 15 s of seeing it unchanged"
    );
    let tomorrow =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24);
    fake.edit(|s| s.renew_time = Some(MicroTime(tomorrow)));
    let leader = within_a_minute(candidate).await.unwrap().unwrap();
    let taken = Instant::now();
    // Seen changed at the first attempt at or after 10 s (attempts are ≤ 2.4 s apart).
    assert!(
        taken >= t0 + secs(25.0) && taken <= t0 + secs(10.0 + 2.4 + 15.0 + 2.4),
        "taken at {:?}",
        taken - t0
    );
    assert_eq!(leader.term(), Term(5), "leaseTransitions + 1");
    assert_eq!(leader.predecessor(), Some("other_1"));
    let record = fake.record();
    assert_eq!(record.holder_identity.as_deref(), Some("b"));
    assert_eq!(record.lease_transitions, Some(5));
    assert_eq!(record.lease_duration_seconds, Some(15));
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_at_the_standbys_next_attempt_with_the_next_term() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let a = elector(&fake, "a").acquire().await.unwrap();
    let a_fence = a.fence();
    let b = tokio::spawn(elector(&fake, "b").acquire());
    sleep_until(t0 + secs(5.0)).await;
    assert!(
        !b.is_finished(),
        "the standby waits while the leader renews"
    );
    a.release().await.unwrap();
    let released = Instant::now();
    assert!(matches!(
        a_fence.check(),
        Err(Error::Fenced {
            lost: Lost::Released,
            ..
        })
    ));
    let record = fake.record();
    assert_eq!(record.holder_identity, None, "released: no holder");
    assert_eq!(record.lease_duration_seconds, Some(1));
    assert_eq!(record.lease_transitions, Some(0), "the term is kept");
    let b = within_a_minute(b).await.unwrap().unwrap();
    assert!(
        Instant::now() - released <= secs(2.4),
        "one jittered retry period"
    );
    assert_eq!(b.term(), Term(1));
    assert_eq!(b.predecessor(), None, "a released Lease has no predecessor");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_meets_another_holder_ends_the_term_at_once() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let a = elector(&fake, "a").acquire().await.unwrap();
    fake.edit(|s| {
        s.holder_identity = Some("thief".into());
        s.lease_transitions = Some(1);
    });
    let lost = within_a_minute(a.lost()).await;
    assert!(
        matches!(&lost, Lost::Superseded { holder } if holder == "thief"),
        "{lost:?}"
    );
    assert_eq!(
        Instant::now(),
        t0 + secs(2.0),
        "at the first renewal, not the deadline"
    );
    assert!(a.fence().check().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leadership_stops_renewing_and_its_fence_closes_at_its_deadline() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let a = elector(&fake, "a").acquire().await.unwrap();
    sleep_until(t0 + secs(2.5)).await;
    let fence = a.fence();
    let deadline = fence.deadline();
    assert_eq!(deadline, t0 + secs(12.0), "renewed once, at 2 s");
    drop(a);
    let writes = fake.server().writes.len();
    let lost = within_a_minute(fence.lost()).await;
    assert!(matches!(lost, Lost::Deadline), "{lost:?}");
    assert_eq!(Instant::now(), deadline);
    assert_eq!(
        fake.server().writes.len(),
        writes,
        "no renewal after the drop"
    );
    assert_eq!(
        fake.record().holder_identity.as_deref(),
        Some("a"),
        "not released"
    );
}

#[tokio::test(start_paused = true)]
async fn an_rbac_refusal_is_an_error_naming_the_verb_not_a_wait() {
    // Taking an existing, released Lease needs `update`.
    let fake = Fake::default();
    fake.store(held_by("", 2, k8s_openapi::jiff::Timestamp::now()));
    fake.server().puts = Puts::Forbidden;
    let err = within_a_minute(elector(&fake, "a").acquire())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            Error::Denied {
                verb: Verb::Update,
                code: 403,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("refused to update Lease fleet/skoala-fleet-leader"),
        "{err}"
    );

    // Creating works, renewing is refused: the term ends at the first renewal, with the reason.
    let fake = Fake::default();
    let t0 = Instant::now();
    let a = elector(&fake, "a").acquire().await.unwrap();
    fake.server().puts = Puts::Forbidden;
    let lost = within_a_minute(a.lost()).await;
    assert!(
        matches!(&lost, Lost::Denied(e) if matches!(**e, Error::Denied { verb: Verb::Update, .. })),
        "{lost:?}"
    );
    assert_eq!(Instant::now(), t0 + secs(2.0));
}

#[test]
fn timings_that_would_make_the_fence_unsound_are_refused() {
    assert!(Timing::default().validate().is_ok());
    let bad = [
        Timing {
            renew_deadline: Duration::from_secs(15),
            ..Timing::default()
        },
        Timing {
            lease_duration: secs(15.5),
            ..Timing::default()
        },
        Timing {
            retry_period: Duration::from_secs(9),
            ..Timing::default()
        },
    ];
    for t in bad {
        assert!(
            matches!(t.validate(), Err(Error::InvalidTiming { .. })),
            "{t:?}"
        );
    }
}

#[test]
fn an_identity_is_the_pod_name_and_a_random_suffix() {
    let (a, b) = (
        identity("coordinator-7d9-x2"),
        identity("coordinator-7d9-x2"),
    );
    assert_ne!(a, b, "random per process start");
    let (pod, suffix) = a.rsplit_once('_').unwrap();
    assert_eq!(pod, "coordinator-7d9-x2");
    assert_eq!(suffix.len(), 16);
}

#[test]
fn the_pod_is_read_back_out_of_a_holder_identity() {
    let id = identity("skoala-coordinator-7d9f8-x2x4q");
    assert_eq!(pod_of(&id), "skoala-coordinator-7d9f8-x2x4q");
    assert_ne!(
        id,
        identity("skoala-coordinator-7d9f8-x2x4q"),
        "random per start"
    );
    assert_eq!(pod_of("no-suffix"), "no-suffix");
}
