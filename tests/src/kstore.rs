//! The kube store ([`skoala_kubestore::store::KubeStore`]) as the store conformance suite's
//! [`Factory`]: each fresh store is a new namespace of one emulated cluster (or a real control
//! plane's), with the fleet's CRDs installed and a Lease held, so the store writes behind a
//! live fence as it does in the product.
//!
//! `reopen` is a coordinator restart: the old store is dropped, its Lease released, and a new
//! leader opens the namespace again from what the API server holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::core::{DynamicObject, ObjectMeta};
use skoala_kubestore::crd::{self, Kind};
use skoala_kubestore::lease::{self, Config, Elector, Leadership, Timing};
use skoala_kubestore::store::{KubeStore, Options};
use skoala_store::conformance::{Factory, Refusal};
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

/// Where the stores live: an emulated cluster or a real control plane this factory starts.
enum Server {
    Sim(Box<OnceCell<(skoala_sim::Cluster, kube::Client)>>),
    Real(Box<OnceCell<(skoala_realkube::RealCluster, kube::Client)>>),
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

    /// Stores on a real control plane (`skoala_realkube`), started at the first `fresh`. It
    /// cannot be made to refuse a write: leave the contracts that need [`Factory::refuse`] out
    /// of its list.
    pub fn real() -> Self {
        KubeStores {
            server: Server::Real(Box::default()),
            leaders: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    async fn client(&self) -> kube::Client {
        match &self.server {
            Server::Real(cell) => {
                let (_, client) = cell
                    .get_or_init(|| async {
                        let cluster = crate::real::cluster("fleet-store")
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
                        let client = crate::real::client(cluster.kubeconfig_path())
                            .await
                            .expect("a client");
                        install_crds(&client).await.expect("install the CRDs");
                        (cluster, client)
                    })
                    .await;
                client.clone()
            }
        }
    }

    fn sim_cluster(&self) -> &skoala_sim::Cluster {
        match &self.server {
            Server::Sim(cell) => &cell.get().expect("a store was made").0,
            Server::Real(_) => panic!(
                "a real API server cannot be made to refuse a write: leave the contracts that need one out of the real tier's list"
            ),
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
        let client = self.client().await;
        let namespace = {
            let mut next = self.next.lock().expect("lock");
            *next += 1;
            format!("fleet-{}", *next)
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
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

    /// The emulator's fault rules: every matching request fails with a 500 from now on.
    async fn refuse(&self, store: &KubeStore, refusal: Refusal) {
        let ns = store.namespace();
        let path = match refusal {
            Refusal::Events => format!("/namespaces/{ns}/{}", Kind::FleetLog.plural()),
            Refusal::Target(id) => {
                format!(
                    "/namespaces/{ns}/{}/{id}/status",
                    Kind::FleetCluster.plural()
                )
            }
        };
        self.sim_cluster()
            .faults()
            .fail_next(None, &path, 500, u32::MAX);
    }
}
