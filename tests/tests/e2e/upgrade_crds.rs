//! 0.19.2 → 0.20.0, helm 3 and 4: 0.20.0's templates use a field its CRDs add, so with the CRD
//! policy `skip` the upgrade fails (and is rolled back), and with the default (CRDs applied
//! before the upgrade) it succeeds.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::{CrdPolicy, Outcome, ReleaseSpec, Step, crds};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_crd_fields_need_the_crd_step() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("crds-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.2", &custom_values())
            .await?;

        let mut skip = ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0");
        skip.crd_policy = CrdPolicy::Skip;
        let (report, _) = fx.run("op-skip-crds", &skip).await?;
        assert_eq!(report.outcome, Outcome::RolledBack, "{label}: {report:#?}");
        // Helm 4 asks for strict field validation, so the API server rejects the unknown
        // field during the upgrade; helm 3 does not, the server prunes the field and the
        // upgrade "succeeds" with a gutted resource, which verify catches.
        let expected_step = if label == "helm4" {
            Step::Upgrade
        } else {
            Step::Verify
        };
        assert_eq!(
            report.failed_step,
            Some(expected_step),
            "{label}: {}",
            report.message
        );
        assert!(
            report.message.contains("logLevel"),
            "{label}: the failure names the field: {}",
            report.message
        );
        assert!(
            report
                .rollback_message
                .as_deref()
                .is_some_and(|m| m.contains("verified healthy")),
            "{label}: {:?}",
            report.rollback_message
        );
        let after = fx.release("skoala-init").await?;
        assert_eq!(
            (after.chart_version.as_str(), after.status.as_str()),
            ("0.19.2", "deployed"),
            "{label}"
        );

        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.20.0");
        let (report, _) = fx.run("op-with-crds", &spec).await?;
        assert_eq!(report.outcome, Outcome::Succeeded, "{label}: {report:#?}");
        assert_eq!(fx.release("skoala-init").await?.chart_version, "0.20.0");
        assert_eq!(
            fx.image("seata-operator").await?,
            "release.daocloud.io/skoala/seata-operator:v0.20.0"
        );

        // The CRD now has the field, and we manage it.
        let crd = Api::<CustomResourceDefinition>::all(fx.client.clone())
            .get("contourdeployments.projectcontour.io")
            .await?;
        let schema = serde_json::to_value(&crd.spec.versions[0].schema)?;
        assert!(
            schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["envoy"]["properties"]["logLevel"].is_object(),
            "{label}: CRD upgraded"
        );
        let managers: Vec<String> = crd
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            managers.iter().any(|m| m == crds::FIELD_MANAGER),
            "{label}: managers {managers:?}"
        );
    }
    Ok(())
}
