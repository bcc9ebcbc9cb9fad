//! Leader election on a real API server (`skoala_kubestore::lease`), each elector speaking as a
//! ServiceAccount whose Role grants exactly what the coordinator will get: `get` and `update`
//! on the Lease by name, `create` on leases. Short durations (3 s lease, 2 s renew deadline,
//! 0.5 s retry) keep each scenario within seconds; every wait is on a condition with a
//! deadline. All electors run in this process, so their instants share one monotonic clock and
//! their order can be asserted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::ObjectMeta;
use skoala_e2e::{real, wait};
use skoala_kubestore::lease::{
    self, Config, Elector, Error, LEASE_NAME, Leadership, Lost, Term, Timing, Verb,
};
use skoala_realkube::RealCluster;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

const NS: &str = "election";

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
    }
}

/// A bound on how long a condition may take on a loaded machine; not an expected duration.
const PATIENCE: Duration = Duration::from_secs(30);

fn rule(verbs: &[&str], names: Option<&[&str]>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The coordinator's rights on its Lease (see the `lease` module's doc): `create` cannot be
/// narrowed by name, so it is a rule of its own.
pub(crate) fn coordinator_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["get", "update"], Some(&[LEASE_NAME])),
        rule(&["create"], None),
    ]
}

/// Creates ServiceAccount `sa` in `ns` with a Role of `rules` bound to it, waits until the
/// API server's authorizer applies them (the first verb of the first rule), and returns the
/// ServiceAccount's kubeconfig.
pub(crate) async fn account(
    cluster: &RealCluster,
    ns: &str,
    sa: &str,
    rules: Vec<PolicyRule>,
) -> anyhow::Result<std::path::PathBuf> {
    let admin = cluster.client().await?;
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(sa),
                ..Default::default()
            },
        )
        .await?;
    let first = rules.first().context("a rule")?.clone();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &Role {
                metadata: meta(sa),
                rules: Some(rules),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(sa),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: sa.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await?;
    // The authorizer reads RBAC from a cache: wait until the binding shows.
    let group = first
        .api_groups
        .as_deref()
        .and_then(<[_]>::first)
        .context("a group")?;
    let kind = first
        .resources
        .as_deref()
        .and_then(<[_]>::first)
        .context("a resource")?;
    let resource = match first.resource_names.as_deref() {
        Some([name, ..]) => format!("{kind}.{group}/{name}"),
        _ => format!("{kind}.{group}"),
    };
    let who = format!("--as=system:serviceaccount:{ns}:{sa}");
    let verb = first.verbs[0].clone();
    wait::until("the Role to apply", PATIENCE, || {
        let (verb, resource, who) = (verb.clone(), resource.clone(), who.clone());
        async move {
            let out = cluster
                .kubectl(&["auth", "can-i", &verb, &resource, "-n", ns, &who])
                .await;
            out.ok().filter(|o| o.trim() == "yes").map(|_| ())
        }
    })
    .await?;
    Ok(cluster.service_account_kubeconfig(ns, sa).await?)
}

/// An elector speaking with `client`, as `<sa>_<random>`.
fn elector(client: kube::Client, sa: &str) -> anyhow::Result<Elector> {
    let mut config = Config::new(NS, lease::identity(sa));
    config.timing = timing();
    Ok(Elector::new(client, config)?)
}

async fn lease_record(cluster: &RealCluster) -> anyhow::Result<LeaseSpec> {
    let leases: Api<Lease> = Api::namespaced(cluster.client().await?, NS);
    Ok(leases.get(LEASE_NAME).await?.spec.unwrap_or_default())
}

/// Waits until the leader's fence deadline is past `instant + renew deadline`: it renewed
/// after `instant`. Fails at once, with the reason, if its term ends instead.
async fn renewed_after(leader: &Leadership, instant: Instant) -> anyhow::Result<()> {
    let fence = leader.fence();
    let later = instant + timing().renew_deadline;
    wait::until("a renewal", PATIENCE, || {
        let fence = fence.clone();
        async move {
            match fence.check() {
                Err(e) => Some(Err(e)),
                Ok(_) => (fence.deadline() > later).then_some(Ok(())),
            }
        }
    })
    .await?
    .context("the leader's term ended while it should have been renewing")
}

async fn joined(task: JoinHandle<lease::Result<Leadership>>) -> anyhow::Result<Leadership> {
    Ok(tokio::time::timeout(PATIENCE, task)
        .await
        .context("the standby never led")???)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_electors_one_leads_and_after_a_crash_the_other_leads_only_once_the_fence_closed()
-> anyhow::Result<()> {
    let cluster = real::cluster("lease-crash").await?;
    real::namespace(&cluster, NS, &[]).await?;
    let kubeconfig = account(&cluster, NS, "coordinator", coordinator_rules()).await?;
    let client = real::client(&kubeconfig).await?;

    // (a) Both start together; exactly one leads.
    let mut a = tokio::spawn(elector(client.clone(), "pod-a")?.acquire());
    let mut b = tokio::spawn(elector(client.clone(), "pod-b")?.acquire());
    wait::until("a leader", PATIENCE, || {
        let done = a.is_finished() || b.is_finished();
        async move { done.then_some(()) }
    })
    .await?;
    if !a.is_finished() {
        std::mem::swap(&mut a, &mut b);
    }
    let leader = a.await??;
    let standby = b;
    let started = Instant::now();
    // Long enough for the standby to take an unrenewed lease twice over.
    renewed_after(&leader, started + 2 * timing().lease_duration).await?;
    assert!(!standby.is_finished(), "two leaders at once");
    let record = lease_record(&cluster).await?;
    assert_eq!(record.holder_identity.as_deref(), Some(leader.identity()));
    assert_eq!(record.lease_duration_seconds, Some(3));

    // (b) The leader dies without releasing: its renewer stops, as under SIGKILL.
    let fence = leader.fence();
    let term = leader.term();
    let old = leader.identity().to_string();
    drop(leader);
    let killed = Instant::now();
    let closes_at = fence.deadline();
    let closed = tokio::spawn(async move {
        let lost = fence.lost().await;
        (Instant::now(), lost)
    });
    let successor = joined(standby).await?;
    let took_at = successor.since();
    let (closed_at, lost) = closed.await?;
    assert!(matches!(lost, Lost::Deadline), "{lost:?}");
    assert!(
        closes_at < took_at && closed_at < took_at,
        "the successor's acquiring write was sent {:?} after the kill, the old fence closed at \
         {:?} (observed {:?})",
        took_at - killed,
        closes_at - killed,
        closed_at - killed,
    );
    // It waited a full lease from the old leader's last renewal (which started at the fence's
    // deadline minus the renew deadline), and not much longer.
    let t = timing();
    assert!(took_at >= closes_at - t.renew_deadline + t.lease_duration);
    assert!(
        took_at - killed <= t.lease_duration + 2 * t.retry_period + Duration::from_secs(2),
        "took over {:?} after the kill",
        took_at - killed
    );
    assert_eq!(
        successor.term(),
        Term(term.0 + 1),
        "the term went up by one"
    );
    assert_eq!(successor.predecessor(), Some(old.as_str()));
    let record = lease_record(&cluster).await?;
    assert_eq!(
        record.holder_identity.as_deref(),
        Some(successor.identity())
    );
    assert_eq!(record.lease_transitions, Some(successor.term().0));
    successor.release().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_by_the_standby_within_about_one_retry_period()
-> anyhow::Result<()> {
    let cluster = real::cluster("lease-release").await?;
    real::namespace(&cluster, NS, &[]).await?;
    let kubeconfig = account(&cluster, NS, "coordinator", coordinator_rules()).await?;
    let client = real::client(&kubeconfig).await?;
    let leader = elector(client.clone(), "pod-a")?.acquire().await?;
    let standby = tokio::spawn(elector(client.clone(), "pod-b")?.acquire());
    renewed_after(&leader, Instant::now() + timing().retry_period).await?;
    assert!(!standby.is_finished(), "two leaders at once");

    let fence = leader.fence();
    let term = leader.term();
    leader.release().await?;
    let released = Instant::now();
    assert!(
        matches!(
            fence.check(),
            Err(Error::Fenced {
                lost: Lost::Released,
                ..
            })
        ),
        "the fence closes on release: {:?}",
        fence.check()
    );
    let successor = joined(standby).await?;
    let after = successor.since() - released;
    // One retry period with its jitter (at most 0.6 s), plus a request on a busy machine.
    assert!(
        after <= Duration::from_millis(1600),
        "took the released Lease {after:?} after the release (a lease is 3 s)"
    );
    assert_eq!(successor.term(), Term(term.0 + 1));
    assert_eq!(
        successor.predecessor(),
        None,
        "a released Lease has no holder"
    );
    successor.release().await?;
    let record = lease_record(&cluster).await?;
    assert_eq!(record.holder_identity, None);
    assert_eq!(record.lease_duration_seconds, Some(1));
    Ok(())
}

/// A TCP relay to the API server that can be cut like a network partition: after
/// [`Relay::cut`] no byte passes on open connections and new ones are accepted but never
/// connected, so requests hang instead of failing fast.
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Dropped with the relay's task: every connection closes with it.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                connections.spawn(async move {
                    if *cut_rx.borrow() {
                        return std::future::pending::<()>().await;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        cut = cut_rx.wait_for(|cut| *cut) => cut.is_ok(),
                    };
                    if cut {
                        // Both sockets stay open and silent, as behind a partition.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Ok(Relay { addr, cut, task })
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_fences_itself_by_its_deadline() -> anyhow::Result<()>
{
    let cluster = real::cluster("lease-cut").await?;
    real::namespace(&cluster, NS, &[]).await?;
    let kubeconfig = account(&cluster, NS, "coordinator", coordinator_rules()).await?;
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], cluster.port()))).await?;
    // The same ServiceAccount, through the relay (the serving certificate names 127.0.0.1).
    let mut kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    for named in &mut kc.clusters {
        if let Some(c) = named.cluster.as_mut() {
            c.server = Some(format!("https://{}", relay.addr));
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let cut_off = kube::Client::try_from(config)?;
    let direct = real::client(&kubeconfig).await?;

    let leader = elector(cut_off, "pod-a")?.acquire().await?;
    let standby = tokio::spawn(elector(direct, "pod-b")?.acquire());
    renewed_after(&leader, Instant::now() + timing().retry_period).await?;
    assert!(!standby.is_finished(), "two leaders at once");

    relay.cut();
    let cut = Instant::now();
    let lost = tokio::time::timeout(PATIENCE, leader.lost())
        .await
        .context("the cut-off leader never noticed")?;
    let noticed = Instant::now();
    assert!(matches!(lost, Lost::Deadline), "{lost:?}");
    let fence = leader.fence();
    assert!(fence.check().is_err(), "a write would still be allowed");
    // Only renewals that started before the cut can have moved the deadline.
    assert!(
        fence.deadline() <= cut + timing().renew_deadline,
        "the fence closed {:?} after the cut",
        fence.deadline() - cut
    );
    assert!(
        noticed - cut <= timing().renew_deadline + Duration::from_secs(1),
        "lost resolved {:?} after the cut",
        noticed - cut
    );
    let successor = joined(standby).await?;
    assert!(
        successor.since() > fence.deadline(),
        "led before the old fence closed"
    );
    assert_eq!(successor.term(), Term(leader.term().0 + 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_update_right_the_elector_fails_naming_it_instead_of_waiting()
-> anyhow::Result<()> {
    let cluster = real::cluster("lease-rbac").await?;
    real::namespace(&cluster, NS, &[]).await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client().await?, NS);
    let no_update = account(
        &cluster,
        NS,
        "no-update",
        vec![rule(&["get"], Some(&[LEASE_NAME])), rule(&["create"], None)],
    )
    .await?;
    let client = real::client(&no_update).await?;

    // A released Lease exists: taking it is an update, refused.
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    lease_duration_seconds: Some(1),
                    ..Default::default()
                }),
            },
        )
        .await?;
    let err = tokio::time::timeout(PATIENCE, elector(client.clone(), "pod-a")?.acquire())
        .await
        .context("the elector hung instead of failing")?
        .err()
        .context("led without the update right")?;
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
    let message = err.to_string();
    assert!(
        message.contains(&format!("refused to update Lease {NS}/{LEASE_NAME} (403)"))
            && message.contains("cannot update resource \"leases\""),
        "{message}"
    );

    // No Lease: creating it works, and the first renewal ends the term with the same reason.
    leases.delete(LEASE_NAME, &DeleteParams::default()).await?;
    let leader = elector(client, "pod-a")?.acquire().await?;
    let lost = tokio::time::timeout(PATIENCE, leader.lost())
        .await
        .context("the term never ended")?;
    assert!(
        matches!(&lost, Lost::Denied(e) if matches!(**e, Error::Denied { verb: Verb::Update, .. })),
        "{lost:?}"
    );
    assert!(leader.fence().check().is_err());

    // A create narrowed by name is never granted: the API server authorizes a create before
    // it knows the object's name. This is why the coordinator's Role has `create` on its own.
    leases.delete(LEASE_NAME, &DeleteParams::default()).await?;
    let named = account(
        &cluster,
        NS,
        "named-create",
        vec![rule(&["get", "update", "create"], Some(&[LEASE_NAME]))],
    )
    .await?;
    let err = tokio::time::timeout(
        PATIENCE,
        elector(real::client(&named).await?, "pod-a")?.acquire(),
    )
    .await
    .context("the elector hung instead of failing")?
    .err()
    .context("created a Lease with a create right narrowed by name")?;
    assert!(
        matches!(
            err,
            Error::Denied {
                verb: Verb::Create,
                code: 403,
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}
