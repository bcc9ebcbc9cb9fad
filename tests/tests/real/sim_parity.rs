//! Keeping `sim/` honest: one list of scenarios, run against a real cluster and against the
//! emulator, must end the same way. A divergence we accept is listed in `KNOWN` (and in
//! `sim/README.md`, with why); the test also fails when a listed divergence disappears, so the
//! list never goes stale.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use skoala_e2e::charts::{HelmHome, start_repo};
use skoala_e2e::real;
use skoala_e2e::sim::try_kubectl;
use skoala_e2e::tools::tool;

/// Scenarios whose outcome differs between the emulator and a real API server, on purpose.
/// (scenario, why the difference does not matter for what the emulator is used for)
const KNOWN: &[(&str, &str)] = &[(
    "ssa-conflict",
    "the emulator keeps no managedFields, so server-side apply never reports a conflict between \
     field managers; our product applies CRDs with --force-conflicts (it owns them), so no test \
     of ours depends on conflicts",
)];

/// One scenario's ending, in words both kinds of cluster can be compared on.
async fn run(name: &str, kubeconfig: &Path, repo_url: &str) -> anyhow::Result<String> {
    let kubectl = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = try_kubectl(kubeconfig, &a).await?;
        anyhow::Ok(if out.status.success() {
            "ok".to_string()
        } else {
            classify(&String::from_utf8_lossy(&out.stderr))
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ns = "parity";
    Ok(match name {
        "helm-install-wait" => {
            helm(
                kubeconfig,
                &[
                    "install",
                    "skoala-init",
                    "skoala-init",
                    "--repo",
                    repo_url,
                    "--version",
                    "0.19.0",
                    "-n",
                    ns,
                    "--create-namespace",
                    "--wait",
                    "--timeout",
                    "120s",
                ],
            )
            .await?
        }
        "helm-upgrade-broken-image" => {
            // The vendor's pre-step: the admission Jobs' templates are immutable.
            kubectl(s(&[
                "-n",
                ns,
                "delete",
                "job",
                "gateway-api-admission",
                "gateway-api-admission-patch",
                "--ignore-not-found",
                "--wait=true",
            ]))
            .await?;
            helm(
                kubeconfig,
                &[
                    "upgrade",
                    "skoala-init",
                    "skoala-init",
                    "--repo",
                    repo_url,
                    "--version",
                    "0.19.1",
                    "-n",
                    ns,
                    "--set",
                    "skoala-agent.image.tag=broken",
                    "--wait",
                    "--timeout",
                    "10s",
                ],
            )
            .await?
        }
        "helm-status-after-failed-wait" => {
            let out = helm_out(
                kubeconfig,
                &["status", "skoala-init", "-n", ns, "-o", "json"],
            )
            .await?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            v["info"]["status"].as_str().unwrap_or("?").to_string()
        }
        "helm-rollback-wait" => {
            let r = helm(
                kubeconfig,
                &[
                    "rollback",
                    "skoala-init",
                    "1",
                    "-n",
                    ns,
                    "--wait",
                    "--timeout",
                    "120s",
                ],
            )
            .await?;
            let out = helm_out(
                kubeconfig,
                &["status", "skoala-init", "-n", ns, "-o", "json"],
            )
            .await?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            format!(
                "{r}: revision {} {}",
                v["version"],
                v["info"]["status"].as_str().unwrap_or("?")
            )
        }
        "crd-apply-server-side" => {
            let crd = real_crd_path();
            kubectl(s(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                crd.to_str().unwrap(),
            ]))
            .await?
        }
        "unknown-field-strict" => {
            let cr = write_tmp(
                "cr.yaml",
                &format!(
                    "apiVersion: projectcontour.io/v1alpha1\nkind: ContourDeployment\nmetadata: {{name: strict, namespace: {ns}}}\nspec: {{envoy: {{noSuchField: 1}}}}\n"
                ),
            )?;
            kubectl(s(&[
                "apply",
                "--validate=strict",
                "-f",
                cr.to_str().unwrap(),
            ]))
            .await?
        }
        "unknown-field-pruned" => {
            let cr = write_tmp(
                "cr2.yaml",
                &format!(
                    "apiVersion: projectcontour.io/v1alpha1\nkind: ContourDeployment\nmetadata: {{name: pruned, namespace: {ns}}}\nspec: {{envoy: {{noSuchField: 1}}}}\n"
                ),
            )?;
            let applied = kubectl(s(&[
                "apply",
                "--validate=false",
                "-f",
                cr.to_str().unwrap(),
            ]))
            .await?;
            let out = try_kubectl(
                kubeconfig,
                &[
                    "get",
                    "contourdeployment",
                    "pruned",
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.spec.envoy}",
                ],
            )
            .await?;
            format!(
                "{applied}: spec.envoy={}",
                String::from_utf8_lossy(&out.stdout)
            )
        }
        "ssa-conflict" => {
            kubectl(s(&[
                "create",
                "configmap",
                "owned",
                "-n",
                ns,
                "--from-literal=k=a",
            ]))
            .await?;
            let cm = write_tmp(
                "cm.yaml",
                &format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: owned, namespace: {ns}}}\ndata: {{k: b}}\n"
                ),
            )?;
            kubectl(s(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "-f",
                cm.to_str().unwrap(),
            ]))
            .await?
        }
        "immutable-job-template" => {
            let job = |image: &str| {
                format!(
                    "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: once, namespace: {ns}}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: \"{image}\"}}]\n"
                )
            };
            let a = write_tmp("job1.yaml", &job("busybox:1"))?;
            let b = write_tmp("job2.yaml", &job("busybox:2"))?;
            kubectl(s(&["apply", "-f", a.to_str().unwrap()])).await?;
            kubectl(s(&["apply", "-f", b.to_str().unwrap()])).await?
        }
        "watch-sees-a-create" => {
            let client = real::client(kubeconfig).await?;
            let api: Api<ConfigMap> = Api::namespaced(client, ns);
            let rv = api
                .list(&ListParams::default())
                .await?
                .metadata
                .resource_version
                .context("rv")?;
            let mut stream = api
                .watch(&WatchParams::default().timeout(20), &rv)
                .await?
                .boxed();
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some("watched".into());
            api.create(&PostParams::default(), &cm).await?;
            let first = tokio::time::timeout(Duration::from_secs(20), stream.try_next()).await??;
            match first {
                Some(WatchEvent::Added(o)) => {
                    format!("added {}", o.metadata.name.unwrap_or_default())
                }
                other => format!("{other:?}"),
            }
        }
        "watch-from-an-old-resource-version" => {
            let client = real::client(kubeconfig).await?;
            let api: Api<ConfigMap> = Api::namespaced(client, ns);
            match api.watch(&WatchParams::default().timeout(5), "1").await {
                Err(kube::Error::Api(e)) => format!("refused {}", e.code),
                Err(e) => format!("error {e}"),
                Ok(s) => {
                    let mut s = s.boxed();
                    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                        Ok(Some(Ok(WatchEvent::Error(e)))) => format!("refused {}", e.code),
                        Ok(other) => format!("{other:?}"),
                        Err(_) => "no event".into(),
                    }
                }
            }
        }
        other => anyhow::bail!("no scenario {other}"),
    })
}

const SCENARIOS: &[&str] = &[
    "helm-install-wait",
    "helm-upgrade-broken-image",
    "helm-status-after-failed-wait",
    "helm-rollback-wait",
    "crd-apply-server-side",
    "unknown-field-strict",
    "unknown-field-pruned",
    "ssa-conflict",
    "immutable-job-template",
    "watch-sees-a-create",
    "watch-from-an-old-resource-version",
];

/// The class of a refusal, not its wording: each server words errors its own way.
fn classify(stderr: &str) -> String {
    let s = stderr.to_lowercase();
    for (needle, class) in [
        ("field is immutable", "refused: immutable"),
        ("unknown field", "refused: unknown field"),
        ("conflict", "refused: conflict"),
        ("forbidden", "refused: forbidden"),
        ("not found", "refused: not found"),
        ("already exists", "refused: already exists"),
    ] {
        if s.contains(needle) {
            return class.into();
        }
    }
    format!("refused: {}", stderr.trim())
}

async fn helm_out(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let home = HelmHome::new()?;
    let out = home
        .command(&tool("helm"), Some(kubeconfig))
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn helm(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let home = HelmHome::new()?;
    let out = home
        .command(&tool("helm"), Some(kubeconfig))
        .args(args)
        .output()
        .await?;
    Ok(if out.status.success() {
        "ok".into()
    } else {
        let e = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if e.contains("context deadline exceeded")
            || e.contains("timed out")
            || e.contains("timeout")
        {
            "failed: timed out waiting".into()
        } else {
            classify(&e).replacen("refused", "failed", 1)
        }
    })
}

fn real_crd_path() -> std::path::PathBuf {
    skoala_e2e::charts::charts_dir().join(
        "skoala-init/charts/contour-provisioner/crds/contourdeployments.projectcontour.io.yaml",
    )
}

fn write_tmp(name: &str, content: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sim-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(name);
    std::fs::write(&p, content)?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_and_a_real_cluster_end_every_scenario_the_same_way() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let cluster = real::cluster("parity").await?;
    let sim = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("parity")).await?;
    let mut report = String::new();
    let mut diverged = Vec::new();
    for scenario in SCENARIOS {
        let real_end = run(scenario, cluster.admin_kubeconfig(), &repo.url())
            .await
            .with_context(|| format!("{scenario} on the real cluster"))?;
        let sim_end = run(scenario, sim.kubeconfig_path(), &repo.url())
            .await
            .with_context(|| format!("{scenario} on the emulator"))?;
        report.push_str(&format!("{scenario}: real={real_end:?} sim={sim_end:?}\n"));
        if real_end != sim_end {
            diverged.push(*scenario);
        }
    }
    eprintln!("{report}");
    let known: Vec<&str> = KNOWN.iter().map(|(s, _)| *s).collect();
    let unexpected: Vec<_> = diverged.iter().filter(|s| !known.contains(s)).collect();
    assert!(
        unexpected.is_empty(),
        "the emulator diverges from a real cluster in {unexpected:?}:\n{report}"
    );
    let healed: Vec<_> = known.iter().filter(|s| !diverged.contains(s)).collect();
    assert!(
        healed.is_empty(),
        "{healed:?} no longer diverge: remove them from KNOWN and sim/README.md:\n{report}"
    );
    Ok(())
}
