//! One operation at a time per release: a `coordination.k8s.io` Lease in the release
//! namespace, `skoala-fleet-<release>`, held by the operation id and renewed while it runs.
//!
//! Without it, a second executor (an operator running `skoala-upgrade` by hand while the agent
//! works, a coordinator fail-over re-sending a task under a new id) could find the release
//! `pending-upgrade` because of the *first* executor's live helm, mistake it for a crash, and
//! roll it back under its feet. With it, a release is only recovered by the holder of the
//! lease, by the same operation re-delivered, or once the holder stopped renewing (the process
//! died: the lease expires after [`LEASE_SECONDS`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::ObjectMeta;
use tokio::task::JoinHandle;

/// How long a lease stays valid without renewal.
pub const LEASE_SECONDS: i32 = 60;
/// How often a held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);

/// The Lease name of a release.
pub fn lease_name(release: &str) -> String {
    format!("skoala-fleet-{release}")
}

/// A held lease; renewed in the background until [`ReleaseLock::release`] or drop.
pub struct ReleaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: JoinHandle<()>,
}

/// Why the lock was not acquired.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live operation holds it (its Lease was renewed within the lease duration).
    #[error("operation {holder} holds release lock {name} (renewed {renewed}); try again later")]
    Held {
        /// The Lease.
        name: String,
        /// The operation holding it.
        holder: String,
        /// When it last renewed it.
        renewed: String,
    },
    /// The Lease could not be read or written.
    #[error("release lock {name}: {source}")]
    Kube {
        /// The Lease.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

impl ReleaseLock {
    /// Takes the release's lease for `holder` (an operation id). Succeeds when the lease is
    /// absent, expired, released, or already held by `holder`.
    pub async fn acquire(
        client: &kube::Client,
        namespace: &str,
        release: &str,
        holder: &str,
    ) -> Result<ReleaseLock, LockError> {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let name = lease_name(release);
        let kube_err = |source| LockError::Kube {
            name: name.clone(),
            source,
        };
        // A few rounds: losing a create/replace race to another executor ends in `Held`.
        for _ in 0..3 {
            let now = jiff::Timestamp::now();
            match api.get_opt(&name).await.map_err(kube_err)? {
                None => {
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
                        spec: Some(spec(holder, now, 0)),
                    };
                    match api.create(&PostParams::default(), &lease).await {
                        Ok(_) => return Ok(Self::held(api, name, holder)),
                        Err(kube::Error::Api(e)) if e.code == 409 => continue,
                        Err(e) => return Err(kube_err(e)),
                    }
                }
                Some(mut lease) => {
                    let current = lease.spec.clone().unwrap_or_default();
                    let current_holder = current.holder_identity.clone().unwrap_or_default();
                    let renewed = current.renew_time.as_ref().map(|t| t.0);
                    let duration = current.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
                    let expired = renewed
                        .is_none_or(|r| now.as_second() - r.as_second() > i64::from(duration));
                    if !(current_holder.is_empty() || current_holder == holder || expired) {
                        return Err(LockError::Held {
                            name,
                            holder: current_holder,
                            renewed: renewed.map_or("never".into(), |r| r.to_string()),
                        });
                    }
                    let transitions = current.lease_transitions.unwrap_or(0)
                        + i32::from(current_holder != holder);
                    lease.spec = Some(spec(holder, now, transitions));
                    match api.replace(&name, &PostParams::default(), &lease).await {
                        Ok(_) => return Ok(Self::held(api, name, holder)),
                        Err(kube::Error::Api(e)) if e.code == 409 => continue,
                        Err(e) => return Err(kube_err(e)),
                    }
                }
            }
        }
        Err(LockError::Held {
            name,
            holder: "another executor".into(),
            renewed: "just now".into(),
        })
    }

    fn held(api: Api<Lease>, name: String, holder: &str) -> ReleaseLock {
        let renewer = tokio::spawn(renew(api.clone(), name.clone(), holder.to_string()));
        ReleaseLock {
            api,
            name,
            holder: holder.into(),
            renewer,
        }
    }

    /// Stops renewing and gives the lease up (best effort: an unreleased lease expires).
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some(lease)) = self.api.get_opt(&self.name).await
            && lease.spec.and_then(|s| s.holder_identity).as_deref() == Some(self.holder.as_str())
        {
            let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn spec(holder: &str, now: jiff::Timestamp, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Renews the lease while it is ours; stops when someone else holds it.
async fn renew(api: Api<Lease>, name: String, holder: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Ok(Some(mut lease)) = api.get_opt(&name).await else {
            continue;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(holder.as_str()) {
            tracing::warn!(lease = %name, "release lock taken over by another operation");
            return;
        }
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        lease.spec = Some(spec);
        if let Err(e) = api.replace(&name, &PostParams::default(), &lease).await {
            tracing::warn!(lease = %name, error = %e, "could not renew the release lock");
        }
    }
}
