//! One operation at a time per release, helm 3 and 4: while another operation holds the
//! release lock (a live executor renewing its Lease), a run is refused before anything
//! changes; once the holder is gone (released, or its lease expired because it died), the run
//! proceeds.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::lock::{ReleaseLock, lease_name};
use skoala_upgrade::{Outcome, ReleaseSpec, Step};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_release_lock_refuses_other_operations() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("lock-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;
        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");

        // A live holder.
        let held =
            ReleaseLock::acquire(&fx.client, "skoala-system", "skoala-init", "op-other").await?;
        let (r, _) = fx.run("op-second", &spec).await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Refused, Some(Step::Preflight)),
            "{label}: {r:#?}"
        );
        assert!(r.message.contains("op-other"), "{label}: {}", r.message);
        assert_eq!(
            fx.release("skoala-init").await?,
            before,
            "{label}: nothing changed"
        );

        // The holder died: its lease was last renewed long ago.
        drop(held);
        let leases: Api<Lease> = Api::namespaced(fx.client.clone(), "skoala-system");
        let patch = serde_json::json!({"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}});
        leases
            .patch(
                &lease_name("skoala-init"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let (r, _) = fx.run("op-second", &spec).await?;
        assert_eq!(r.outcome, Outcome::Succeeded, "{label}: {r:#?}");
        // Released at the end of the run.
        assert!(
            leases.get_opt(&lease_name("skoala-init")).await?.is_none(),
            "{label}"
        );
    }
    Ok(())
}
