//! The release inventory (`skoala_upgrade::inventory`) reads what the real helm 3 and helm 4
//! write: install, hand-made upgrade, rollback and uninstall against an emulated cluster, each
//! seen by the watch within seconds, image tags taken from the release's values.

use std::time::{Duration, Instant};

use skoala_e2e::charts::{HelmHome, image_tag_args, start_repo};
use skoala_e2e::sim::delete_admission_jobs;
use skoala_e2e::tools::helm_versions;
use skoala_e2e::wait;
use skoala_sim::{Cluster, ClusterConfig};
use skoala_upgrade::ReleaseStatus;
use skoala_upgrade::inventory::{self, InventoryWatch, ReleaseInfo, TrackedRelease};

/// A value an operator set at install time; it must never reach the inventory.
const PASSWORD: &str = "inv3ntory-s3cret";

/// "Within seconds", with room for a loaded 2-core CI machine.
const SEEN_WITHIN: Duration = Duration::from_secs(15);

/// Waits until the watch publishes an inventory satisfying `ok`; returns it and how long it took.
async fn seen(
    watch: &InventoryWatch,
    what: &str,
    ok: impl Fn(&[ReleaseInfo]) -> bool,
) -> (Vec<ReleaseInfo>, Duration) {
    let started = Instant::now();
    let rx = watch.subscribe();
    let inv = wait::until(what, SEEN_WITHIN, || {
        let now = rx.borrow().clone();
        let ok = ok(&now);
        async move { ok.then_some(now) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last inventory: {:?}", watch.current()));
    (inv, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_follows_what_real_helm_does() {
    let repo = start_repo().await.expect("chart repository");
    let url = repo.url();
    for (label, helm) in helm_versions() {
        let cluster = Cluster::start(ClusterConfig::new(format!("inventory-{label}")))
            .await
            .expect("emulated cluster");
        let kc = cluster.kubeconfig_path();
        let client = cluster.client().await.expect("client");
        let home = HelmHome::new().expect("helm home");
        let values = home.path().join("custom.yaml");
        std::fs::write(
            &values,
            format!("skoala-agent:\n  auth:\n    password: {PASSWORD}\n"),
        )
        .expect("values file");
        let values = values.to_str().expect("utf-8");

        assert_eq!(
            inventory::kube_system_uid(&client).await.expect("uid"),
            cluster.kube_system_uid(),
            "{label}"
        );

        // Nothing installed yet: an empty inventory, not an error.
        let watch = InventoryWatch::start(client.clone(), vec![TrackedRelease::skoala_init()])
            .await
            .expect("start the watch");
        assert!(watch.current().is_empty(), "{label}: {:?}", watch.current());

        let tags = image_tag_args("0.19.0");
        let mut extra = vec!["-f", values];
        extra.extend(tags.iter().map(String::as_str));
        home.install_from_repo(&helm, kc, &url, "skoala-init", "0.19.0", &extra)
            .await
            .expect("helm install");
        let (inv, took) = seen(&watch, "the install", |i| {
            i.first()
                .is_some_and(|r| r.status == ReleaseStatus::Deployed)
        })
        .await;
        let r = &inv[0];
        assert_eq!(
            (
                r.release.as_str(),
                r.namespace.as_str(),
                r.chart_name.as_str()
            ),
            ("skoala-init", "skoala-system", "skoala-init"),
            "{label}"
        );
        assert_eq!(
            (r.chart_version.as_str(), r.app_version.as_str()),
            ("0.19.0", "0.19.0")
        );
        assert_eq!(r.revision, 1, "{label}");
        for key in [
            "nacos-operator.image.tag",
            "skoala-agent.image.tag",
            "sentinel-operator.image.tag",
        ] {
            assert_eq!(
                r.image_tags.get(key).map(String::as_str),
                Some("v0.19.0"),
                "{label} {key}"
            );
        }
        let updated = r.updated.expect("last_deployed").as_second();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!(
            (now - updated).abs() < 300,
            "{label}: updated {updated}, now {now}"
        );
        assert!(
            !format!("{inv:?}").contains(PASSWORD),
            "values must not leak into the inventory"
        );
        eprintln!("{label}: install seen after {took:?}");

        // A hand-made upgrade, outside any tool of ours, that fails: the admission Jobs are
        // immutable (the documented pre-upgrade step was skipped). Helm records a failed
        // revision, and the inventory must say so.
        let mut upgrade: Vec<String> = [
            "upgrade",
            "skoala-init",
            "skoala-init",
            "--repo",
            &url,
            "--version",
            "0.19.1",
            "-n",
            "skoala-system",
            "--reuse-values",
        ]
        .map(String::from)
        .to_vec();
        upgrade.extend(image_tag_args("0.19.1"));
        let upgrade: Vec<&str> = upgrade.iter().map(String::as_str).collect();
        let out = home
            .try_run(&helm, Some(kc), &upgrade)
            .await
            .expect("run helm");
        assert!(
            !out.status.success(),
            "{label}: the upgrade was expected to fail"
        );
        let (inv, took) = seen(&watch, "the failed upgrade", |i| {
            i.first()
                .is_some_and(|r| r.revision == 2 && r.status == ReleaseStatus::Failed)
        })
        .await;
        assert_eq!(inv[0].chart_version, "0.19.1", "{label}");
        eprintln!("{label}: failed upgrade seen after {took:?}");

        // The documented pre-upgrade step, then the same upgrade succeeds.
        delete_admission_jobs(kc)
            .await
            .expect("delete the admission Jobs");
        home.run(&helm, Some(kc), &upgrade)
            .await
            .expect("helm upgrade");
        let (inv, took) = seen(&watch, "the hand-made upgrade", |i| {
            i.first()
                .is_some_and(|r| r.revision == 3 && r.status == ReleaseStatus::Deployed)
        })
        .await;
        assert_eq!(inv[0].chart_version, "0.19.1", "{label}");
        assert_eq!(
            inv[0].image_tags["skoala-agent.image.tag"], "v0.19.1",
            "{label}"
        );
        eprintln!("{label}: hand-made upgrade seen after {took:?}");

        // A rollback is a new revision with the old chart.
        delete_admission_jobs(kc)
            .await
            .expect("delete the admission Jobs");
        home.run(
            &helm,
            Some(kc),
            &["rollback", "skoala-init", "1", "-n", "skoala-system"],
        )
        .await
        .expect("helm rollback");
        let (inv, _) = seen(&watch, "the rollback", |i| {
            i.first()
                .is_some_and(|r| r.revision == 4 && r.status == ReleaseStatus::Deployed)
        })
        .await;
        assert_eq!(inv[0].chart_version, "0.19.0", "{label}");
        assert_eq!(
            inv[0].image_tags["skoala-agent.image.tag"], "v0.19.0",
            "{label}"
        );

        // The one-shot read agrees with the watch.
        let read = inventory::read_inventory(&client, &[TrackedRelease::skoala_init()])
            .await
            .expect("read");
        assert_eq!(read, watch.current(), "{label}");

        home.run(
            &helm,
            Some(kc),
            &["uninstall", "skoala-init", "-n", "skoala-system"],
        )
        .await
        .expect("helm uninstall");
        seen(&watch, "the uninstall", |i| i.is_empty()).await;
    }
}
