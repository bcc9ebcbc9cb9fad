//! The kube store's PKI and values backups on a real API server, speaking as a ServiceAccount
//! with only the rights they need on Secrets (`create`, `get`, `list`, `delete`) and the
//! coordinator's Lease rights: two racing `init --store kube --if-missing` make one PKI Secret;
//! backups are created immutable, acknowledged again, refused with other bytes, pruned by a
//! metadata-only list, and the API server itself refuses to change one.

use std::collections::BTreeSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ListParams, Patch, PatchParams};
use skoala_coordinator::backups::Backups;
use skoala_e2e::fleet::coordinator::kube_pki_command;
use skoala_e2e::{kstore, real};
use skoala_kubestore::lease::{self, Config, Elector};
use skoala_kubestore::secrets::{BackupKey, BackupSecrets, PKI_SECRET, VALUES_KEY};

use crate::lease::{account, coordinator_rules};

const NS: &str = real::FLEET_NAMESPACE;

/// What the PKI and the backups need on Secrets, and nothing more.
fn secret_rules() -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: ["create", "get", "list", "delete"]
            .iter()
            .map(|v| v.to_string())
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pki_and_backups_live_in_secrets_with_only_create_get_list_and_delete()
-> anyhow::Result<()> {
    let cluster = real::cluster("fleet-secrets").await?;
    real::namespace(&cluster, NS, &[]).await?;
    let mut rules = coordinator_rules();
    rules.insert(0, secret_rules());
    let kubeconfig = account(&cluster, NS, "coordinator", rules).await?;

    // Two init containers at once: one creates, the other finds it; both succeed.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            kube_pki_command("init", &kubeconfig, NS)
                .arg("--if-missing")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut created = 0;
    for racer in racers {
        let out = racer.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        created += usize::from(stdout.contains("fleet CA created"));
    }
    assert_eq!(created, 1, "exactly one init created the CA");
    let admin = cluster.client().await?;
    let all: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let pki = all.get(PKI_SECRET).await?;
    let show = kube_pki_command("show", &kubeconfig, NS)
        .arg("ca")
        .output()
        .await?;
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert_eq!(show.stdout, pki.data.unwrap_or_default()["ca.pem"].0);

    // Backups, written as the ServiceAccount behind a real Lease's fence.
    let client = real::client(&kubeconfig).await?;
    let leader = Elector::new(client.clone(), Config::new(NS, lease::identity("pod-a")))?
        .acquire()
        .await?;
    let backups = Backups::Secrets(BackupSecrets::new(client.clone(), NS, leader.fence()));
    let first = kstore::backup_upload(1, b"password: s3cret\n");
    assert_eq!(backups.store("c1", &first).await.error, "");
    assert_eq!(
        backups.store("c1", &first).await.error,
        "",
        "the same again"
    );
    let refused = backups
        .store("c1", &kstore::backup_upload(1, b"password: other\n"))
        .await;
    assert!(
        refused.error.contains("never overwritten"),
        "{}",
        refused.error
    );

    // The API server keeps an immutable Secret's data as it is, whoever asks.
    let name = BackupKey {
        cluster_id: "c1".into(),
        release: "skoala-init".into(),
        generation: 1,
        operation_id: "op-1".into(),
    }
    .secret_name();
    let mut changed = all.get(&name).await?;
    changed.metadata.managed_fields = None;
    changed
        .data
        .get_or_insert_default()
        .insert(VALUES_KEY.into(), ByteString(b"tampered: 1\n".to_vec()));
    let patched = all
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": changed.data})),
        )
        .await;
    assert!(patched.is_err(), "an immutable Secret was changed");
    assert_eq!(
        all.get(&name).await?.data.unwrap_or_default()[VALUES_KEY].0,
        first.values_yaml
    );

    for generation in 2..=4 {
        let u = kstore::backup_upload(generation, format!("g: {generation}\n").as_bytes());
        assert_eq!(backups.store("c1", &u).await.error, "");
    }
    assert_eq!(backups.prune_release("c1", "skoala-init", 2).await, 2);
    let kept: BTreeSet<String> = all
        .list(&ListParams::default().labels("fleet.skoala.io/kind=backup"))
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.annotations?.remove("fleet.skoala.io/generation"))
        .collect();
    assert_eq!(kept, BTreeSet::from(["3".to_string(), "4".to_string()]));
    leader.release().await?;
    Ok(())
}
