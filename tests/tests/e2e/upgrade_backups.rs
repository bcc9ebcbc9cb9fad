//! Backup generations in the cluster: never overwritten (a taken name moves on to the next
//! generation), the newest five kept, each checksummed; a tampered backup is reported, never
//! used.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use skoala_upgrade::backup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_are_kept_never_overwritten_and_checked() -> anyhow::Result<()> {
    let cluster = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("backups")).await?;
    let client = cluster.client().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");

    // Someone already holds the name of generation 2: it must be skipped, not overwritten.
    let squatter = Secret {
        metadata: ObjectMeta {
            name: Some(backup::secret_name("skoala-init", 2)),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "x".to_string(),
            ByteString(b"keep me".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &squatter).await?;

    let mut taken = Vec::new();
    for i in 0..7 {
        let values = format!("generation-input: {i}\n");
        let b = backup::store(
            &client,
            "default",
            "skoala-init",
            &format!("op-{i}"),
            "0.19.0",
            values.as_bytes(),
        )
        .await?;
        assert_eq!(b.sha256, backup::sha256_hex(values.as_bytes()));
        taken.push(b);
    }
    let generations: Vec<u32> = taken.iter().map(|b| b.generation).collect();
    assert_eq!(
        generations,
        [1, 3, 4, 5, 6, 7, 8],
        "generation 2 was taken, so it is skipped"
    );
    let squatted = secrets.get(&backup::secret_name("skoala-init", 2)).await?;
    assert_eq!(
        squatted.data.expect("data")["x"].0,
        b"keep me",
        "never overwritten"
    );

    let kept = backup::list(&client, "default", "skoala-init").await?;
    let kept_generations: Vec<u32> = kept.iter().map(|s| s.backup.generation).collect();
    assert_eq!(
        kept_generations,
        [4, 5, 6, 7, 8],
        "the newest {} are kept",
        backup::KEEP
    );
    assert_eq!(kept.last().map(|s| s.operation_id.as_str()), Some("op-6"));
    let found = backup::find_for_operation(&client, "default", "skoala-init", "op-5").await?;
    assert_eq!(found.as_ref(), Some(&taken[5]));

    // Backups are immutable Secrets; a tampered one (recreated with other content) is an
    // error when read, never silently used.
    let name = backup::secret_name("skoala-init", 8);
    let patch = serde_json::json!({"metadata": {"annotations": {backup::SHA256_ANNOTATION: "0".repeat(64)}}});
    secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let err = backup::list(&client, "default", "skoala-init")
        .await
        .expect_err("tampered");
    assert!(err.to_string().contains(&name), "{err}");
    Ok(())
}
