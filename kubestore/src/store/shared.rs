//! What every part of the store uses: the client, the namespace, the fence, and one writer for
//! merge patches of our objects.

use std::future::Future;

use kube::api::{Api, ListParams, ObjectList, Patch, PatchParams};
use kube::core::DynamicObject;
use serde_json::Value;
use skoala_store::StoreError;

use crate::crd::Kind;
use crate::lease::Fence;
use crate::write::{self, Budget, SinkError, Urgency, Writer};

/// How a [`KubeStore`](super::KubeStore) is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator's namespace: every object of the fleet lives there.
    pub namespace: String,
    /// The process's write budget.
    pub budget: Budget,
}

/// One object's part a merge patch goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Target {
    /// `spec` and `metadata` (labels, annotations, finalizers).
    Object,
    /// The status subresource.
    Status,
}

/// Names one object and the part written; a lane per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    /// `FleetCluster` or `UpgradePlan`.
    pub kind: KindKey,
    /// `metadata.name`.
    pub name: String,
    /// Which part.
    pub target: Target,
}

/// [`Kind`] with the ordering a lane key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum KindKey {
    /// `FleetCluster`.
    FleetCluster,
    /// `UpgradePlan`.
    UpgradePlan,
}

impl KindKey {
    fn kind(self) -> Kind {
        match self {
            KindKey::FleetCluster => Kind::FleetCluster,
            KindKey::UpgradePlan => Kind::UpgradePlan,
        }
    }
}

/// The [`write::Sink`] of merge patches to `FleetCluster` and `UpgradePlan` objects, refused
/// once the fence closes.
pub(crate) struct Objects {
    client: kube::Client,
    namespace: String,
    fence: Fence,
}

impl write::Sink for Objects {
    type Key = Key;

    async fn write(&self, key: &Key, patch: Value) -> Result<(), SinkError> {
        self.fence.check()?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &key.kind.kind().api_resource(),
        );
        let params = PatchParams::default();
        match key.target {
            Target::Object => api.patch(&key.name, &params, &Patch::Merge(patch)).await?,
            Target::Status => {
                api.patch_status(&key.name, &params, &Patch::Merge(patch))
                    .await?
            }
        };
        Ok(())
    }
}

/// The store's shared context.
pub(crate) struct Shared {
    /// Speaks with the coordinator's own ServiceAccount token.
    pub client: kube::Client,
    /// The coordinator's namespace.
    pub namespace: String,
    /// Open while this process leads; every write checks it first.
    pub fence: Fence,
    /// Merge patches of fleet objects, one lane per object part, under the process's budget.
    pub objects: Writer<Objects>,
    /// The budget, for the writers the parts start themselves (log segments).
    pub budget: Budget,
}

impl Shared {
    pub fn new(client: kube::Client, options: Options, fence: Fence) -> Self {
        let objects = Writer::start(
            Objects {
                client: client.clone(),
                namespace: options.namespace.clone(),
                fence: fence.clone(),
            },
            options.budget,
        );
        Shared {
            client,
            namespace: options.namespace,
            fence,
            objects,
            budget: options.budget,
        }
    }

    /// An `Api` of `K` in the fleet's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Fails with [`StoreError::Fenced`] once this process no longer leads: called before
    /// every write that does not go through [`Shared::objects`].
    pub fn check_fence(&self) -> Result<(), StoreError> {
        self.fence
            .check()
            .map(|_| ())
            .map_err(|e| StoreError::Fenced(Box::new(e)))
    }

    /// Merge-patches `key` as a write of that urgency (a [`write::Class`], or one with a
    /// hold); returns once stored.
    pub async fn patch(
        &self,
        key: Key,
        urgency: impl Into<Urgency>,
        patch: Value,
    ) -> Result<(), StoreError> {
        let what = writing(&key);
        let Urgency { class, hold } = urgency.into();
        let written = match hold {
            Some(hold) => self.objects.write_held(key, class, patch, hold).await,
            None => self.objects.write(key, class, patch).await,
        };
        written.map_err(|e| api_error(what, e))
    }

    /// Queues a merge patch of `key` now, behind the object's earlier writes, and returns its
    /// answer to be awaited later: for a caller that must queue it under a lock (which keeps
    /// the order) but not wait for the API server while holding it.
    pub fn queue(
        &self,
        key: Key,
        class: write::Class,
        patch: Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let what = writing(&key);
        let answer = self.objects.queue(key, class, patch);
        async move { answer.await.map_err(|e| api_error(what, e)) }
    }
}

/// What a write of `key` is doing, for its error.
fn writing(key: &Key) -> String {
    format!(
        "writing {} {} ({:?})",
        key.kind.kind().name(),
        key.name,
        key.target
    )
}

/// A [`StoreError::Api`] saying what was being done.
pub(crate) fn api_error(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Api {
        what: what.into(),
        source: Box::new(source),
    }
}

/// Every object a list returns, page by page (`list` is called with each page's
/// parameters): a fleet's thousands of objects in one response would be one huge allocation
/// on both ends.
pub(crate) async fn list_all<K, F, Fut>(
    what: &str,
    params: ListParams,
    list: F,
) -> Result<Vec<K>, StoreError>
where
    K: Clone,
    F: Fn(ListParams) -> Fut,
    Fut: Future<Output = kube::Result<ObjectList<K>>>,
{
    let mut out = Vec::new();
    list_each(what, params, list, |k| out.push(k)).await?;
    Ok(out)
}

/// [`list_all`], handing each object to `each` as its page arrives, for a caller that keeps
/// only part of each.
pub(crate) async fn list_each<K, F, Fut>(
    what: &str,
    params: ListParams,
    list: F,
    mut each: impl FnMut(K),
) -> Result<(), StoreError>
where
    K: Clone,
    F: Fn(ListParams) -> Fut,
    Fut: Future<Output = kube::Result<ObjectList<K>>>,
{
    let mut params = params.limit(100);
    loop {
        let page = list(params.clone())
            .await
            .map_err(|e| api_error(format!("listing {what}"), e))?;
        page.items.into_iter().for_each(&mut each);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(()),
        }
    }
}
