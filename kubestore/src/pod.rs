//! Which replica's Pod the agents' Service sends them to (design §5.4): the leader labels its
//! own Pod [`ROLE_LABEL`]`=leader` when its term starts and takes the label off its
//! predecessor's Pod; a replica that starts takes it off its own, in case it led before a
//! restart. The standby's Pod stays Ready (rolling updates and PodDisruptionBudgets count
//! Ready Pods) but is no endpoint of the agents' Service, which selects the label.
//!
//! RBAC: `get` and `patch` on `pods` in the coordinator's namespace (Pod names are generated,
//! so `resourceNames` cannot narrow it).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The label the agents' Service selects on.
pub const ROLE_LABEL: &str = "fleet.skoala.io/role";
/// Its value on the leader's Pod.
pub const LEADER: &str = "leader";

/// Why a Pod could not be labelled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the patch.
    #[error("labelling Pod {namespace}/{pod}: {source}")]
    Patch {
        /// The Pod's namespace.
        namespace: String,
        /// The Pod.
        pod: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// `pub type Result<T, E = Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Labels `pod` as the leader's, then takes the label off `predecessor`'s Pod (if it is
/// another and still exists): agents are sent to us, and no longer to a Pod on a dead node
/// that has not been marked unready yet.
pub async fn mark_leader(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    predecessor: Option<&str>,
) -> Result<()> {
    set(client, namespace, pod, Some(LEADER)).await?;
    if let Some(old) = predecessor.filter(|old| *old != pod) {
        set(client, namespace, old, None).await?;
    }
    Ok(())
}

/// Takes the leader label off `pod` (a replica starting as a standby).
pub async fn unmark(client: &kube::Client, namespace: &str, pod: &str) -> Result<()> {
    set(client, namespace, pod, None).await
}

/// Sets or removes the label; a Pod that does not exist (gone with its node) is left alone.
async fn set(client: &kube::Client, namespace: &str, pod: &str, value: Option<&str>) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({ "metadata": { "labels": { ROLE_LABEL: value } } });
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Patch {
            namespace: namespace.into(),
            pod: pod.into(),
            source,
        }),
    }
}
