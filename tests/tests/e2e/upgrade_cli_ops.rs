//! The `skoala-upgrade` binary's other operations, helm 3 and 4: `--preflight` checks and
//! changes nothing (exit 0, or 1 with the reason for a version that does not exist), and
//! `--rollback-to 0` returns the release to the previous deployed revision, verified, with a
//! backup taken first; re-running the same operation id does nothing.

use std::process::Output;

use skoala_e2e::charts::{UpgradeFixture, custom_values, start_repo};
use skoala_e2e::tools::{helm_versions, our_bin};
use skoala_upgrade::{ReleaseStatus, backup};

async fn run(fx: &UpgradeFixture, args: &[&str]) -> Output {
    tokio::process::Command::new(our_bin("skoala-upgrade"))
        .arg("--kubeconfig")
        .arg(fx.cluster.kubeconfig_path())
        .arg("--helm")
        .arg(&fx.helm)
        .args(["--timeout-secs", "120"])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run skoala-upgrade")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn revision_and_version(fx: &UpgradeFixture) -> (i32, String) {
    let info = fx.release("skoala-init").await.expect("release");
    (info.revision, info.chart_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_and_rollback_from_the_command_line() {
    let repo = start_repo().await.expect("chart repository");
    let url = repo.url();
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("cli-ops-{label}")),
        )
        .await
        .expect("fixture");
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await
            .expect("install");
        let upgrade = run(
            &fx,
            &[
                "--operation-id",
                "up",
                "--version",
                "0.19.1",
                "--repo-url",
                &url,
            ],
        )
        .await;
        assert!(upgrade.status.success(), "{label}: {}", text(&upgrade));

        let pre = run(
            &fx,
            &[
                "--operation-id",
                "pre",
                "--version",
                "0.19.2",
                "--repo-url",
                &url,
                "--preflight",
            ],
        )
        .await;
        assert!(pre.status.success(), "{label}: {}", text(&pre));
        assert!(text(&pre).contains("outcome: succeeded"), "{}", text(&pre));
        let missing = run(
            &fx,
            &[
                "--operation-id",
                "pre-missing",
                "--version",
                "9.9.9",
                "--repo-url",
                &url,
                "--preflight",
            ],
        )
        .await;
        assert_eq!(
            missing.status.code(),
            Some(1),
            "{label}: {}",
            text(&missing)
        );
        assert!(text(&missing).contains("Chart"), "{}", text(&missing));
        assert_eq!(
            revision_and_version(&fx).await,
            (2, "0.19.1".to_string()),
            "{label}: preflight changed nothing"
        );
        let backups_before = backup::list(&fx.client, "skoala-system", "skoala-init")
            .await
            .expect("backups")
            .len();

        let rollback = run(&fx, &["--operation-id", "rb", "--rollback-to", "0"]).await;
        assert!(rollback.status.success(), "{label}: {}", text(&rollback));
        assert_eq!(
            revision_and_version(&fx).await,
            (3, "0.19.0".to_string()),
            "{label}: rolled back to the first revision's chart as revision 3"
        );
        let info = fx.release("skoala-init").await.expect("release");
        assert_eq!(info.status, ReleaseStatus::Deployed);
        assert_eq!(
            backup::list(&fx.client, "skoala-system", "skoala-init")
                .await
                .expect("backups")
                .len(),
            backups_before + 1,
            "{label}: a backup before the rollback"
        );

        let again = run(&fx, &["--operation-id", "rb", "--rollback-to", "0"]).await;
        assert!(again.status.success(), "{label}: {}", text(&again));
        assert_eq!(
            revision_and_version(&fx).await,
            (3, "0.19.0".to_string()),
            "{label}: the same operation id does nothing"
        );
    }
}
