//! The kube store ([`skoala_kubestore::store::KubeStore`]) as the store conformance suite's
//! [`Factory`]: each fresh store is a new namespace of one emulated cluster (or a real control
//! plane's), with the fleet's CRDs installed and a Lease held, so the store writes behind a
//! live fence as it does in the product.
//!
//! `reopen` is a coordinator restart: the old store is dropped, its Lease released, and a new
//! leader opens the namespace again from what the API server holds.
//!
//! What the kube store does its own way, beyond the suite's contracts, is here too, so the
//! emulator's tests and the real control plane's run the same checks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::core::{DynamicObject, ObjectMeta};
use skoala_kubestore::crd::{self, Kind, UpgradePlan};
use skoala_kubestore::lease::{self, Config, Elector, Leadership, Timing};
use skoala_kubestore::store::{KubeStore, Options};
use skoala_plan::rollout::Progress;
use skoala_plan::{ReleaseStatus, TargetPhase, TargetState};
use skoala_store::conformance::{Factory, Refusal};
use skoala_store::fixtures::{registration, token};
use skoala_store::{
    AuditLog, CertRecord, ClusterState, Cutoffs, IdentityStore, NewAudit, PlanRecord, PlanStore,
    ReleaseSummary, Retention, RolloutRecord, RolloutWrite, TargetRecord,
};
use tokio::sync::OnceCell;

/// Short Lease durations, so a restart in a test takes over at once (the old leader released
/// anyway).
fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
    }
}

/// Installs the fleet's CRDs and waits until the API server serves them.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::crds() {
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let probe: Api<DynamicObject> =
        Api::all_with(client.clone(), &Kind::FleetCluster.api_resource());
    crate::wait::until(
        "the fleet's CRDs to be served",
        Duration::from_secs(60),
        || {
            let probe = probe.clone();
            async move {
                probe
                    .list(&ListParams::default().limit(1))
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Makes namespace `ns` on a given API server and returns a client that speaks there as the
/// coordinator would (its ServiceAccount's rights only).
pub type Account = Box<dyn Fn(String) -> BoxFuture<'static, kube::Client> + Send + Sync>;

/// An emulated control-plane cluster with the fleet's CRDs and the coordinator's namespace
/// `namespace`, and a client of it.
pub async fn control_plane(namespace: &str) -> anyhow::Result<(skoala_sim::Cluster, kube::Client)> {
    let cluster =
        skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("control-plane")).await?;
    let client = crate::kubeapi::client(cluster.kubeconfig_path()).await?;
    install_crds(&client).await?;
    create_namespace(&client, namespace).await?;
    Ok((cluster, client))
}

/// An agent's values backup of `skoala-init` at `generation`, uploaded by operation `op-1`,
/// with the right digest.
pub fn backup_upload(generation: i32, values: &[u8]) -> skoala_proto::v1::BackupUpload {
    use sha2::Digest as _;
    skoala_proto::v1::BackupUpload {
        operation_id: "op-1".into(),
        release: "skoala-init".into(),
        revision: 1,
        values_yaml: values.to_vec(),
        sha256: hex::encode(sha2::Sha256::digest(values)),
        generation,
    }
}

/// Where the stores live: an emulated cluster or a real control plane this factory starts
/// (speaking as admin), or a given API server (speaking as the coordinator's account).
enum Server {
    Sim(Box<OnceCell<(skoala_sim::Cluster, kube::Client)>>),
    Real(Box<OnceCell<(skoala_realkube::RealCluster, kube::Client)>>),
    Given(Account),
}

/// Kube stores for the conformance suite.
pub struct KubeStores {
    server: Server,
    /// The Lease each namespace's store was opened under, released on `reopen`.
    leaders: Mutex<HashMap<String, Leadership>>,
    /// Names the namespaces.
    next: Mutex<u32>,
}

impl KubeStores {
    /// Stores on an emulated cluster, started at the first `fresh`.
    pub fn sim() -> Self {
        KubeStores {
            server: Server::Sim(Box::default()),
            leaders: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    /// Stores on a real control plane (`skoala_realkube`), started at the first `fresh`; it
    /// refuses writes through an admission policy ([`Factory::refuse`]).
    pub fn real() -> Self {
        KubeStores {
            server: Server::Real(Box::default()),
            leaders: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    /// Stores on a given API server (a real control plane): `account` makes each store's
    /// namespace and the client it is opened with. Such a server cannot be made to refuse a
    /// write, so [`Factory::refuse`] panics.
    pub fn given(account: Account) -> Self {
        KubeStores {
            server: Server::Given(account),
            leaders: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    /// A new namespace, and the client a store opens there.
    async fn namespace(&self) -> (kube::Client, String) {
        let namespace = {
            let mut next = self.next.lock().expect("lock");
            *next += 1;
            format!("fleet-{}", *next)
        };
        if let Server::Given(account) = &self.server {
            return (account(namespace.clone()).await, namespace);
        }
        let client = self.client().await;
        create_namespace(&client, &namespace)
            .await
            .expect("create the namespace");
        (client, namespace)
    }

    async fn client(&self) -> kube::Client {
        match &self.server {
            Server::Real(cell) => {
                let (_, client) = cell
                    .get_or_init(|| async {
                        let cluster = crate::kubeapi::cluster("fleet-store")
                            .await
                            .expect("start the real cluster");
                        let client = cluster.client().await.expect("a client");
                        install_crds(&client).await.expect("install the CRDs");
                        (cluster, client)
                    })
                    .await;
                client.clone()
            }
            Server::Sim(cell) => {
                let (_, client) = cell
                    .get_or_init(|| async {
                        let cluster = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new(
                            "fleet-store",
                        ))
                        .await
                        .expect("start the emulated cluster");
                        let client = crate::kubeapi::client(cluster.kubeconfig_path())
                            .await
                            .expect("a client");
                        install_crds(&client).await.expect("install the CRDs");
                        (cluster, client)
                    })
                    .await;
                client.clone()
            }
            Server::Given(_) => unreachable!("a given server's clients come from its account"),
        }
    }

    fn sim_cluster(&self) -> &skoala_sim::Cluster {
        match &self.server {
            Server::Sim(cell) => &cell.get().expect("a store was made").0,
            Server::Real(_) | Server::Given(_) => {
                panic!("only the emulator has fault rules")
            }
        }
    }

    /// Takes the namespace's Lease and opens the store there.
    async fn open(&self, client: kube::Client, namespace: &str) -> KubeStore {
        let mut config = Config::new(namespace, lease::identity("conformance"));
        config.timing = timing();
        let leadership = Elector::new(client.clone(), config)
            .expect("elector")
            .acquire()
            .await
            .expect("lead");
        let options = Options {
            namespace: namespace.to_string(),
            ..Options::default()
        };
        let store = KubeStore::open(client, options, leadership.fence())
            .await
            .expect("open the kube store");
        self.leaders
            .lock()
            .expect("lock")
            .insert(namespace.to_string(), leadership);
        store
    }
}

impl Factory for KubeStores {
    type Store = KubeStore;

    async fn fresh(&self) -> KubeStore {
        let (client, namespace) = self.namespace().await;
        self.open(client, &namespace).await
    }

    async fn reopen(&self, store: KubeStore) -> KubeStore {
        let client = store.client().clone();
        let namespace = store.namespace().to_string();
        drop(store);
        let old = self.leaders.lock().expect("lock").remove(&namespace);
        if let Some(old) = old {
            old.release().await.expect("release the Lease");
        }
        self.open(client, &namespace).await
    }

    /// On the emulator, its fault rules: every matching request fails with a 500 from now
    /// on. On a real control plane, a `ValidatingAdmissionPolicy` bound to the store's
    /// namespace denies the writes, as an admission webhook or a policy of the cluster's owner
    /// would. A given server (the coordinator's account, no admin) cannot refuse.
    async fn refuse(&self, store: &KubeStore, refusal: Refusal) {
        match &self.server {
            Server::Sim(_) => {
                let path = match refusal {
                    Refusal::Events => Kind::FleetLog.plural().to_string(),
                    Refusal::Target(id) => format!("{}/{id}/status", Kind::FleetCluster.plural()),
                };
                self.fail_next(store, &path, u32::MAX);
            }
            Server::Real(_) => admission::refuse(store.client(), store.namespace(), refusal)
                .await
                .expect("refuse through admission"),
            Server::Given(_) => panic!("a given API server cannot be made to refuse writes"),
        }
    }
}

impl KubeStores {
    /// Releases the Lease `store` was opened under, as a leader that stepped down: its fence
    /// closes, and `store` may write nothing more. [`Factory::reopen`] leads again.
    pub async fn depose(&self, store: &KubeStore) {
        let held = self.leaders.lock().expect("lock").remove(store.namespace());
        if let Some(held) = held {
            held.release().await.expect("release the Lease");
        }
    }

    /// Makes the emulator fail the next `count` requests in `store`'s namespace whose path
    /// there contains `path` (`fleetclusters/c1/status`) with a 500, storing nothing: to the
    /// store, a coordinator that crashed before the request looks the same.
    pub fn fail_next(&self, store: &KubeStore, path: &str, count: u32) {
        let ns = store.namespace();
        self.sim_cluster().faults().fail_next(
            None,
            &format!("/namespaces/{ns}/{path}"),
            500,
            count,
        );
    }
}

impl KubeStores {
    /// Makes the emulator answer every request in `store`'s namespace whose path there
    /// contains `path` only after `delay`, from now on: a slow write, landing late.
    pub fn delay(&self, store: &KubeStore, path: &str, delay: std::time::Duration) {
        let ns = store.namespace();
        self.sim_cluster()
            .faults()
            .add_latency(None, &format!("/namespaces/{ns}/{path}"), delay);
    }

    /// How many requests in `store`'s namespace whose path there contains `path`
    /// [`KubeStores::delay`] has slowed down so far.
    pub fn delayed(&self, store: &KubeStore, path: &str) -> u64 {
        let ns = store.namespace();
        self.sim_cluster()
            .faults()
            .delayed(&format!("/namespaces/{ns}/{path}"))
    }
}

/// An audit entry whose JSON line is about 16 KiB, so 16 of them fill a segment.
fn bulky(n: usize) -> NewAudit {
    NewAudit {
        kind: "admin.created".into(),
        peer: "bootstrap".into(),
        detail: format!("{n:>16000}"),
        ..NewAudit::default()
    }
}

/// Retention deletes sealed audit segments past the cutoff, counting their entries, and keeps
/// the newest, so ids go on after a restart; of a cluster's certificate records it drops the
/// expired ones but the current, which the cluster's record names.
pub async fn retention_deletes_whole_sealed_segments_and_expired_certificates_but_the_current(
    stores: &KubeStores,
) {
    let store = stores.fresh().await;
    // Appended at once, so the group commit stores them in a few writes: one sealed segment,
    // the rest in the open one.
    let appends: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(bulky(n)).await })
        })
        .collect();
    for a in appends {
        a.await.expect("the task").expect("appended");
    }

    let t = token(2);
    store.insert_token(t.clone()).await.expect("token");
    // c1 renewed: its first certificate expired at 2,000 s, the renewal runs until far ahead.
    store
        .register(registration(&t, "c1", "01"))
        .await
        .expect("c1");
    store
        .record_certificate(CertRecord {
            serial_hex: "02".into(),
            not_after_unix: 1_000_000_000,
            ..registration(&t, "c1", "02").cert
        })
        .await
        .expect("renewal");
    // c2's only certificate expired too.
    store
        .register(registration(&t, "c2", "03"))
        .await
        .expect("c2");

    let pruned = store
        .prune(Cutoffs {
            audit_before_ms: i64::MAX,
            events_before_ms: 0,
            certificates_expired_before_unix: 1_000_000,
            admins_expired_before_unix: 0,
        })
        .await
        .expect("prune");
    let left: Vec<i64> = store
        .audit(0, 100)
        .await
        .expect("audit")
        .iter()
        .map(|a| a.id)
        .collect();
    assert!(
        pruned.audit > 0 && left.len() + pruned.audit == 20,
        "{pruned:?} {left:?}"
    );
    assert_eq!(
        left,
        ((pruned.audit as i64 + 1)..=20).collect::<Vec<_>>(),
        "the newest segment stays whole"
    );
    assert_eq!(pruned.certificates, 1);
    assert_eq!(store.certificate("01".into()).await.expect("01"), None);
    for (serial, cluster) in [("02", "c1"), ("03", "c2")] {
        let kept = store.certificate(serial.into()).await.expect("cert");
        assert_eq!(kept.map(|c| c.cluster_id), Some(cluster.to_string()));
    }

    let store = stores.reopen(store).await;
    let next = store
        .append_audit(bulky(20))
        .await
        .expect("after a restart");
    assert_eq!(next, 21, "ids go on after the last stored one");
    let c1 = store.cluster("c1".into()).await.expect("c1").expect("c1");
    assert_eq!(c1.cert_serial, "02");
}

/// Refusals on a real API server, by admission policy.
mod admission {
    use std::time::Duration;

    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    use serde_json::json;
    use skoala_kubestore::crd::{self, FleetCluster, FleetLog, Kind};
    use skoala_store::conformance::Refusal;

    /// A `FleetCluster` whose status writes the policy refuses too: written (dry run) until
    /// refused, it tells when the API server enforces the policy.
    const PROBE: &str = "refusal-probe";
    /// What the policy answers: a probe refused with another message was refused for another
    /// reason.
    const MESSAGE: &str = "refused by the conformance suite";

    /// Whether `outcome` is the policy's refusal.
    fn refused<T>(outcome: Result<T, kube::Error>) -> Option<()> {
        outcome
            .err()
            .filter(|e| e.to_string().contains(MESSAGE))
            .map(|_| ())
    }

    fn resource(kind: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ))
    }

    /// Installs a policy denying what `refusal` names in `ns`, and returns once it is enforced.
    pub async fn refuse(client: &kube::Client, ns: &str, refusal: Refusal) -> anyhow::Result<()> {
        let (name, resource_name, operations, expression) = match &refusal {
            Refusal::Events => (
                format!("{ns}-refuse-events"),
                Kind::FleetLog.plural().to_string(),
                vec!["CREATE", "UPDATE"],
                "false".to_string(),
            ),
            Refusal::Target(id) => (
                format!("{ns}-refuse-{id}"),
                format!("{}/status", Kind::FleetCluster.plural()),
                vec!["UPDATE"],
                format!("!(object.metadata.name in ['{id}', '{PROBE}'])"),
            ),
        };
        let policy = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": name },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": [crd::GROUP],
                    "apiVersions": [crd::VERSION],
                    "operations": operations,
                    "resources": [resource_name],
                }]},
                "validations": [{ "expression": expression, "message": MESSAGE }],
            },
        });
        let binding = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": name },
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": { "namespaceSelector": {
                    "matchLabels": { "kubernetes.io/metadata.name": ns },
                }},
            },
        });
        for (kind, object) in [
            ("ValidatingAdmissionPolicy", policy),
            ("ValidatingAdmissionPolicyBinding", binding),
        ] {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
            api.create(&PostParams::default(), &serde_json::from_value(object)?)
                .await?;
        }
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match refusal {
            Refusal::Events => {
                let logs: Api<FleetLog> = Kind::FleetLog.api(client.clone(), ns);
                let probe: FleetLog = serde_json::from_value(json!({
                    "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
                    "kind": Kind::FleetLog.name(),
                    "metadata": { "name": PROBE },
                    "spec": { "stream": "events", "plan": PROBE, "firstId": 1, "lastId": 1,
                              "fromMs": 0, "toMs": 0, "encoding": "gzip+jsonl", "data": "AA==" },
                }))?;
                crate::wait::until(
                    "the policy to refuse log writes",
                    Duration::from_secs(60),
                    || {
                        let (logs, probe, dry) = (logs.clone(), probe.clone(), dry.clone());
                        async move { refused(logs.create(&dry, &probe).await) }
                    },
                )
                .await
            }
            Refusal::Target(_) => {
                let clusters: Api<FleetCluster> = Kind::FleetCluster.api(client.clone(), ns);
                let probe: FleetCluster = serde_json::from_value(json!({
                    "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
                    "kind": Kind::FleetCluster.name(),
                    "metadata": { "name": PROBE },
                    "spec": { "name": PROBE },
                }))?;
                clusters.create(&PostParams::default(), &probe).await?;
                let params = PatchParams {
                    dry_run: true,
                    ..PatchParams::default()
                };
                crate::wait::until(
                    "the policy to refuse target writes",
                    Duration::from_secs(60),
                    || {
                        let (clusters, params) = (clusters.clone(), params.clone());
                        async move {
                            let patch = Patch::Merge(json!({ "status": { "plans": [] } }));
                            refused(clusters.patch_status(PROBE, &params, &patch).await)
                        }
                    },
                )
                .await?;
                clusters.delete(PROBE, &Default::default()).await?;
                Ok(())
            }
        }
    }
}

/// A head whose phase is `phase`, its control plane upgraded, as the orchestrator writes it.
pub fn head(plan: &str, phase: skoala_plan::Phase, next_order: u32) -> String {
    let head = skoala_plan::RolloutHead {
        plan: plan.into(),
        phase,
        control_plane: progress(TargetState::Succeeded {
            revision_before: Some(3),
        }),
        approved: vec![0],
        failures_acknowledged: 0,
        enrolled_once: true,
        rollback_ignores_windows: false,
        rolling_back: false,
        next_order,
    };
    serde_json::to_string(&head).expect("a head serializes")
}

fn progress(state: TargetState) -> Progress {
    let started = !matches!(state, TargetState::Pending);
    Progress {
        state,
        attempts: u32::from(started),
        stage: started.then_some(0),
    }
}

/// Target `order` of a plan: `cluster` in `state`, started in the canary stage unless pending.
pub fn target(cluster: &str, order: u32, state: TargetState) -> TargetRecord {
    TargetRecord {
        cluster_id: cluster.into(),
        order,
        phase: TargetPhase::from(&state),
        progress: serde_json::to_string(&progress(state)).expect("a progress serializes"),
    }
}

/// The plan [`a_rollout_awaiting_approval`] stores.
pub const SHOWN_PLAN: &str = "skoala-0-20-0";

/// Stores through `store` what a rollout of plan [`SHOWN_PLAN`] (version 0.20.0) leaves after
/// its canaries: registered cluster `w1` upgraded (its inventory showing release 0.20.0,
/// `deployed`, revision 5), `w2` failed, `w3` not started, and the plan awaiting approval of
/// wave 1. Returns once the plan's status shows the three targets: what
/// `kubectl get upgradeplans,fleetclusters` then prints is the store's to show.
pub async fn a_rollout_awaiting_approval(store: &KubeStore) -> anyhow::Result<()> {
    let t = token(1);
    store.insert_token(t.clone()).await?;
    store.register(registration(&t, "w1", "01")).await?;
    let state = ClusterState {
        agent_version: "0.2.0".into(),
        helm_version: "v4.0.0".into(),
        inventory: vec![1, 2, 3],
        release: Some(ReleaseSummary {
            chart_version: "0.20.0".into(),
            status: ReleaseStatus::Deployed,
            revision: 5,
        }),
    };
    store.set_cluster_state("w1".into(), state).await?;
    let plan = PlanRecord {
        name: SHOWN_PLAN.into(),
        document: format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {SHOWN_PLAN}}}\nspec: {{version: 0.20.0}}\n"
        ),
        rollout: RolloutRecord {
            head: head(SHOWN_PLAN, skoala_plan::Phase::Workers, 3),
            targets: vec![
                target("w1", 0, TargetState::Pending),
                target("w2", 1, TargetState::Pending),
                target("w3", 2, TargetState::Pending),
            ],
        },
        active: true,
        created_ms: 1_000,
        updated_ms: 1_000,
    };
    store.put_plan(plan, Vec::new()).await?;
    store
        .save_rollout(RolloutWrite {
            plan: SHOWN_PLAN.into(),
            head: Some(head(
                SHOWN_PLAN,
                skoala_plan::Phase::AwaitingApproval { stage: 1 },
                3,
            )),
            targets: vec![
                target(
                    "w1",
                    0,
                    TargetState::Succeeded {
                        revision_before: Some(4),
                    },
                ),
                target(
                    "w2",
                    1,
                    TargetState::Failed {
                        message: "the hook timed out".into(),
                    },
                ),
            ],
            events: Vec::new(),
        })
        .await?;
    let plans: Api<UpgradePlan> = Kind::UpgradePlan.api(store.client().clone(), store.namespace());
    crate::wait::until(
        "the plan's status to count its targets",
        Duration::from_secs(30),
        || {
            let plans = plans.clone();
            async move {
                let status = plans.get(SHOWN_PLAN).await.ok()?.status?;
                let counts = status.counts?;
                (counts.succeeded == 1 && counts.failed == 1 && counts.pending == 1).then_some(())
            }
        },
    )
    .await
}
/// What the GitOps reconciler reads and writes of an `UpgradePlan` the coordinator did not
/// create: the document (or why there is none), the `Accepted` condition for a generation,
/// `status.control`, and the in-flight finalizer next to another controller's, which stays.
/// Run on sim and on a real API server, whose schema validation judges the status writes.
pub async fn plan_objects_carry_the_leaders_decision_its_finalizer_and_what_it_handled(
    stores: &KubeStores,
) {
    use skoala_kubestore::store::{IN_FLIGHT_FINALIZER, Judgement, Refusal as Refused};

    let store = stores.fresh().await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        store.client().clone(),
        store.namespace(),
        &Kind::UpgradePlan.api_resource(),
    );
    let object: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
        "kind": Kind::UpgradePlan.name(),
        "metadata": {
            "name": "from-git",
            "finalizers": ["example.com/keep"],
            "annotations": { "fleet.skoala.io/paused": "true" },
        },
        "spec": { "version": "1.2.3", "maxConcurency": 1 },
    }))
    .expect("an object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    let read = |store: KubeStore| async move {
        store
            .plan_objects()
            .await
            .expect("list")
            .into_iter()
            .find(|o| o.name == "from-git")
            .expect("listed")
    };

    let o = read(store.clone()).await;
    assert!(!store.is_stored_plan("from-git"));
    assert_eq!(o.annotations["fleet.skoala.io/paused"], "true");
    let why = o.document.clone().expect_err("a typo is no document");
    assert!(why.contains("maxConcurency"), "{why}");
    assert_eq!(o.verdict, None);

    let refused = Judgement::Refused(Refused {
        reason: skoala_kubestore::store::RefusalReason::InvalidSpec,
        message: why,
    });
    store
        .judge_plan_object("from-git", o.generation, &refused)
        .await
        .expect("refusal written");
    let v = read(store.clone()).await.verdict.expect("a verdict");
    assert_eq!(
        (v.accepted, v.reason.as_str(), v.generation),
        (Some(false), "InvalidSpec", Some(o.generation))
    );
    store
        .judge_plan_object(
            "from-git",
            o.generation,
            &Judgement::Queued {
                behind: "earlier".into(),
            },
        )
        .await
        .expect("queued written");
    let v = read(store.clone()).await.verdict.expect("a verdict");
    assert_eq!((v.accepted, v.reason.as_str()), (None, "Queued"));

    let observed = skoala_plan::control::Observed {
        observed_resume: Some("2026-12-04T17:00".into()),
        approved_through: Some(2),
    };
    store
        .observe_plan_control("from-git", &observed)
        .await
        .expect("control written");
    let o = read(store.clone()).await;
    assert_eq!(o.observed, observed);

    store.hold_plan_object(&o, true).await.expect("held");
    let o = read(store.clone()).await;
    assert_eq!(o.finalizers, ["example.com/keep", IN_FLIGHT_FINALIZER]);
    // A stale read is refused rather than dropping a finalizer written since.
    let stale = o.clone();
    store.hold_plan_object(&o, false).await.expect("released");
    assert!(store.hold_plan_object(&stale, true).await.is_err());
    let o = read(store.clone()).await;
    assert_eq!(o.finalizers, ["example.com/keep"]);
}
