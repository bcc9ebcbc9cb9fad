//! The kube store's file-like Secrets on an emulated control-plane cluster: the fleet's PKI
//! (`init --store kube`, `show --store kube`, `serve --store kube` reading it) and values
//! backups as immutable Secrets, so two replicas on different nodes share one CA and a backup
//! survives the node of the leader that stored it. A plan run on the kube store stores every
//! agent's upload, and the control plane's own, that way.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use skoala_coordinator::backups::Backups;
use skoala_e2e::fleet::coordinator::kube_pki_command;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::fleet::{Coordinator, CoordinatorOptions, h2raw};
use skoala_e2e::{kstore, real};
use skoala_kubestore::lease::{self, Config, Elector};
use skoala_kubestore::secrets::{BackupKey, BackupSecrets, PKI_SECRET, VALUES_KEY};
use skoala_support::admin_config::AdminConfig;

const NS: &str = real::FLEET_NAMESPACE;

/// Bound on one plan in the emulated fleet.
const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn secrets(client: &kube::Client, selector: &str) -> anyhow::Result<Vec<Secret>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

#[tokio::test]
async fn racing_inits_on_the_kube_store_make_one_pki_secret_and_both_succeed() -> anyhow::Result<()>
{
    let (cp, client) = kstore::control_plane(NS).await?;
    let kubeconfig = cp.kubeconfig_path();

    // Two replicas' init containers, started together.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            kube_pki_command("init", kubeconfig, NS)
                .arg("--if-missing")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut outs = Vec::new();
    for racer in racers {
        outs.push(racer.wait_with_output().await?);
    }
    for out in &outs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let said: BTreeSet<bool> = outs
        .iter()
        .map(|o| text(&o.stdout).contains("fleet CA created"))
        .collect();
    assert_eq!(
        said,
        BTreeSet::from([false, true]),
        "exactly one created the CA: {:?}",
        outs.iter().map(|o| text(&o.stdout)).collect::<Vec<_>>()
    );

    let pki = secrets(&client, "fleet.skoala.io/kind=pki").await?;
    assert_eq!(pki.len(), 1, "one PKI Secret");
    let data = pki[0].data.clone().unwrap_or_default();
    assert_eq!(pki[0].metadata.name.as_deref(), Some(PKI_SECRET));
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "admin.yaml",
            "ca-key.pem",
            "ca.pem",
            "server-key.pem",
            "server.pem"
        ]
    );

    // Without --if-missing an existing CA is an error, and it is not replaced.
    let again = kube_pki_command("init", kubeconfig, NS).output().await?;
    assert!(!again.status.success(), "a second init must not succeed");
    assert!(
        text(&again.stderr).contains("already holds a fleet CA"),
        "{}",
        text(&again.stderr)
    );
    let after = secrets(&client, "fleet.skoala.io/kind=pki").await?;
    assert_eq!(
        after[0].metadata.resource_version, pki[0].metadata.resource_version,
        "the PKI Secret was not written again"
    );

    // `show` prints what the Secret holds.
    let ca = kube_pki_command("show", kubeconfig, NS)
        .arg("ca")
        .output()
        .await?;
    assert!(ca.status.success(), "{}", text(&ca.stderr));
    assert_eq!(ca.stdout, data["ca.pem"].0);
    let admin = kube_pki_command("show", kubeconfig, NS)
        .arg("admin-config")
        .output()
        .await?;
    assert!(admin.status.success(), "{}", text(&admin.stderr));
    let config = AdminConfig::from_yaml(&text(&admin.stdout))?;
    assert_eq!(config.certificate_authority.as_bytes(), data["ca.pem"].0);

    // A namespace without a PKI says how to make one.
    kstore::create_namespace(&client, "elsewhere").await?;
    let none = kube_pki_command("show", kubeconfig, "elsewhere")
        .arg("ca")
        .output()
        .await?;
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("init --store kube"),
        "{}",
        text(&none.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn replicas_on_the_kube_store_serve_with_the_one_server_credential_of_the_secret()
-> anyhow::Result<()> {
    let (cp, _client) = kstore::control_plane(NS).await?;
    let opts = CoordinatorOptions {
        kubeconfig: Some(cp.kubeconfig_path().to_path_buf()),
        kube_store: Some(NS.to_string()),
        ..Default::default()
    };
    let mut first = Coordinator::start_with(opts.clone()).await?;
    for file in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "admin.yaml",
    ] {
        assert!(
            !first.data_dir().join(file).exists(),
            "{file} is not in the data dir on --store kube"
        );
    }
    // The handshake verifies the server certificate against the CA `show ca` printed.
    h2raw::connect(&first, None).await?;

    // Another replica, on a node of its own (a fresh data dir): its init finds the PKI, and
    // once it leads it serves the same credential, so clients trust it with the first's CA.
    first.terminate().await?;
    let second = Coordinator::start_with(opts).await?;
    assert_eq!(
        std::fs::read(second.ca_file())?,
        std::fs::read(first.ca_file())?,
        "one fleet CA"
    );
    h2raw::connect(&second, None).await?;
    assert!(second.log().contains("leading"), "{}", second.log());
    Ok(())
}

fn key(cluster: &str, u: &skoala_proto::v1::BackupUpload) -> BackupKey {
    BackupKey {
        cluster_id: cluster.into(),
        release: u.release.clone(),
        generation: i64::from(u.generation),
        operation_id: u.operation_id.clone(),
    }
}

/// The generations of the backups of `cluster`'s release, read from their annotations.
async fn generations(client: &kube::Client, cluster: &str) -> anyhow::Result<BTreeSet<i64>> {
    let selector = format!(
        "fleet.skoala.io/kind=backup,fleet.skoala.io/cluster={cluster},fleet.skoala.io/release=skoala-init"
    );
    Ok(secrets(client, &selector)
        .await?
        .iter()
        .filter_map(|s| {
            s.metadata.annotations.as_ref()?["fleet.skoala.io/generation"]
                .parse()
                .ok()
        })
        .collect())
}

#[tokio::test]
async fn backups_are_immutable_secrets_never_overwritten_pruned_and_kept_across_leaders()
-> anyhow::Result<()> {
    let (_cp, client) = kstore::control_plane(NS).await?;
    let leader = Elector::new(client.clone(), Config::new(NS, lease::identity("first")))?
        .acquire()
        .await?;
    let backups = Backups::Secrets(BackupSecrets::new(client.clone(), NS, leader.fence()));

    let first = kstore::backup_upload(2, b"password: s3cret\n");
    let ack = backups.store("cluster-a", &first).await;
    assert_eq!(ack.error, "");
    assert_eq!(
        (ack.generation, ack.sha256.as_str()),
        (2, first.sha256.as_str())
    );
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let name = key("cluster-a", &first).secret_name();
    let stored = api.get(&name).await?;
    assert_eq!(stored.immutable, Some(true));
    assert_eq!(
        stored.data.clone().unwrap_or_default()[VALUES_KEY].0,
        first.values_yaml
    );
    let labels = stored.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["fleet.skoala.io/kind"], "backup");
    assert_eq!(labels["fleet.skoala.io/cluster"], "cluster-a");
    assert_eq!(labels["fleet.skoala.io/release"], "skoala-init");

    // The same upload again is acknowledged; different bytes under its name are refused, and
    // the refusal does not echo them.
    assert_eq!(backups.store("cluster-a", &first).await.error, "");
    let other = kstore::backup_upload(2, b"password: other\n");
    let refused = backups.store("cluster-a", &other).await;
    assert!(
        refused.error.contains("never overwritten"),
        "{}",
        refused.error
    );
    assert!(!refused.error.contains("other"), "{}", refused.error);
    assert_eq!(
        api.get(&name).await?.data.unwrap_or_default()[VALUES_KEY].0,
        first.values_yaml,
        "the first copy stays"
    );

    // Damaged or unsafe uploads never reach the API server.
    let mut damaged = kstore::backup_upload(5, b"a: 1\n");
    damaged.values_yaml = b"a: 2\n".to_vec();
    assert!(
        backups
            .store("cluster-a", &damaged)
            .await
            .error
            .contains("damaged")
    );
    let mut unsafe_name = kstore::backup_upload(5, b"a: 1\n");
    unsafe_name.release = "../x".into();
    assert!(
        !backups
            .store("cluster-a", &unsafe_name)
            .await
            .error
            .is_empty()
    );
    assert_eq!(
        generations(&client, "cluster-a").await?,
        BTreeSet::from([2])
    );

    // Only the newest generations of each cluster's release are kept.
    for (cluster, generation) in [
        ("cluster-a", 1),
        ("cluster-a", 10),
        ("cluster-a", 3),
        ("cluster-b", 1),
    ] {
        let u = kstore::backup_upload(generation, format!("g: {generation}\n").as_bytes());
        assert_eq!(backups.store(cluster, &u).await.error, "");
    }
    assert_eq!(
        backups.prune_release("cluster-a", "skoala-init", 2).await,
        2
    );
    assert_eq!(
        generations(&client, "cluster-a").await?,
        BTreeSet::from([3, 10]),
        "10 is newer than 3"
    );
    assert_eq!(backups.prune(1).await, 1, "the sweep: cluster-a's 3 goes");
    assert_eq!(
        generations(&client, "cluster-a").await?,
        BTreeSet::from([10])
    );
    assert_eq!(
        generations(&client, "cluster-b").await?,
        BTreeSet::from([1]),
        "another cluster's are its own"
    );

    // A new leader (the first one's node is gone) finds the backup: an agent re-sending it
    // after the failover is acknowledged. The deposed one writes nothing.
    leader.release().await?;
    let ten = kstore::backup_upload(10, b"g: 10\n");
    let deposed = backups
        .store("cluster-a", &kstore::backup_upload(11, b"g: 11\n"))
        .await;
    assert!(!deposed.error.is_empty(), "a deposed leader stores nothing");
    let next = Elector::new(client.clone(), Config::new(NS, lease::identity("second")))?
        .acquire()
        .await?;
    let after = Backups::Secrets(BackupSecrets::new(client.clone(), NS, next.fence()));
    assert_eq!(after.store("cluster-a", &ten).await.error, "");
    assert_eq!(
        generations(&client, "cluster-a").await?,
        BTreeSet::from([10])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_on_the_kube_store_keeps_every_values_backup_as_a_secret_and_none_on_disk()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let applied = pf.apply(&pf.plan_yaml("up", "0.19.2", "")).await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    pf.wait_phase("up", &["succeeded"], PLAN_TIMEOUT).await?;

    // Each agent's upload, and the coordinator's own for the control plane, before each
    // upgrade: one backup of generation 1 per cluster.
    let client = real::client(pf.control_plane.kubeconfig_path()).await?;
    let stored = secrets(&client, "fleet.skoala.io/kind=backup").await?;
    let mut releases = BTreeSet::new();
    for s in &stored {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations["fleet.skoala.io/generation"], "1");
        let values = &s.data.clone().unwrap_or_default()[VALUES_KEY].0;
        serde_yaml::from_slice::<serde_yaml::Value>(values)?;
        releases.insert(labels["fleet.skoala.io/release"].clone());
    }
    assert_eq!(stored.len(), 3, "a backup per cluster: {stored:?}");
    assert_eq!(
        releases,
        BTreeSet::from(["skoala".to_string(), "skoala-init".to_string()])
    );
    assert!(
        !pf.fleet.coordinator.data_dir().join("backups").exists(),
        "no backup in the data dir on --store kube"
    );
    Ok(())
}
