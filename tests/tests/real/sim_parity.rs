//! Keeping `sim/` honest: two lists of scenarios (what helm and kubectl do to our charts, and
//! the custom-resource semantics the kube store relies on, in [`crs`]), each run against a real
//! cluster and against the emulator, must end the same way. A divergence we accept is listed in `KNOWN` (and in
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
    let mut ends = Vec::new();
    for scenario in SCENARIOS {
        let real_end = run(scenario, cluster.admin_kubeconfig(), &repo.url())
            .await
            .with_context(|| format!("{scenario} on the real cluster"))?;
        let sim_end = run(scenario, sim.kubeconfig_path(), &repo.url())
            .await
            .with_context(|| format!("{scenario} on the emulator"))?;
        ends.push((*scenario, real_end, sim_end));
    }
    judge(&ends)
}

/// Fails unless every scenario ended the same way on both, but for those listed in `KNOWN`,
/// which must still diverge (so the list never goes stale).
fn judge(ends: &[(&str, String, String)]) -> anyhow::Result<()> {
    let mut report = String::new();
    let mut diverged = Vec::new();
    for (scenario, real_end, sim_end) in ends {
        if real_end == sim_end {
            report.push_str(&format!("{scenario}: both {real_end}\n"));
        } else {
            report.push_str(&format!(
                "{scenario}: DIVERGED\n  real: {real_end}\n  sim:  {sim_end}\n"
            ));
            diverged.push(*scenario);
        }
    }
    eprintln!("{report}");
    let known: Vec<&str> = KNOWN
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| ends.iter().any(|(e, _, _)| e == s))
        .collect();
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

/// The custom-resource semantics the kube store relies on (docs/design/kube-store.md §3, §4,
/// §8), on the fleet's own CRDs: each scenario's ending is what the store can observe (status
/// codes, reasons, which parts of an object changed, how `generation` and `resourceVersion`
/// moved), so a server that words or numbers things its own way still compares equal.
mod crs {
    use std::time::Duration;

    use anyhow::Context;
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{
        Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
        WatchParams,
    };
    use kube::core::ApiResource;
    use serde_json::{Value, json};
    use skoala_e2e::wait;
    use skoala_kubestore::crd::{self, Kind};

    const NS: &str = "parity-crs";

    /// The scenarios, in the order they run (each uses objects of its own).
    pub const SCENARIOS: &[&str] = &[
        "cr-discovery",
        "cr-create-ignores-status",
        "cr-main-writes-ignore-status",
        "cr-status-writes-change-only-status",
        "cr-generation-moves-with-spec-only",
        "cr-stale-resource-version",
        "cr-finalizers-and-deletion-timestamp",
        "cr-delete-without-finalizers",
        "cr-preserved-and-pruned-fields",
        "cr-metadata-only",
    ];

    /// Installs the fleet's CRDs as `skoala-coordinator crds | kubectl apply --server-side`
    /// does, waits until the group is served, and creates the scenarios' namespace.
    pub async fn install(client: &kube::Client) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for c in crd::crds() {
            let name = c.metadata.name.clone().context("crd name")?;
            crds.patch(
                &name,
                &PatchParams::apply("sim-parity").force(),
                &Patch::Apply(&c),
            )
            .await?;
        }
        wait::until(
            "the fleet's resources to be served",
            Duration::from_secs(60),
            || async {
                let list = client
                    .list_api_group_resources(&format!("{}/{}", crd::GROUP, crd::VERSION))
                    .await
                    .ok()?;
                (list.resources.len() >= Kind::ALL.len()).then_some(())
            },
        )
        .await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
            )
            .await?;
        Ok(())
    }

    fn api(client: &kube::Client, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), NS, &kind.api_resource())
    }

    fn object(kind: Kind, name: &str, rest: Value) -> anyhow::Result<DynamicObject> {
        let ar: ApiResource = kind.api_resource();
        let mut v = json!({"apiVersion": ar.api_version, "kind": ar.kind,
                           "metadata": {"name": name, "namespace": NS}});
        for (k, val) in rest.as_object().into_iter().flatten() {
            match (k.as_str(), val) {
                ("metadata", Value::Object(m)) => {
                    for (mk, mv) in m {
                        v["metadata"][mk] = mv.clone();
                    }
                }
                _ => v[k] = val.clone(),
            }
        }
        Ok(serde_json::from_value(v)?)
    }

    /// An API refusal as `code reason: message`; success as `ok`.
    fn refusal<T>(r: Result<T, kube::Error>) -> anyhow::Result<String> {
        match r {
            Ok(_) => Ok("ok".into()),
            Err(kube::Error::Api(e)) => Ok(format!("{} {}: {}", e.code, e.reason, e.message)),
            Err(e) => Err(e.into()),
        }
    }

    fn rv(o: &Value) -> u64 {
        o["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// What changed from `before` to `after`, in the words the store cares about.
    fn changes(before: &DynamicObject, after: &DynamicObject) -> String {
        let (b, a) = (
            serde_json::to_value(before).unwrap_or_default(),
            serde_json::to_value(after).unwrap_or_default(),
        );
        let mut out = vec![];
        let generation = |o: &Value| o["metadata"]["generation"].as_i64().unwrap_or(0);
        match generation(&a) - generation(&b) {
            0 => {}
            d => out.push(format!("generation {d:+}")),
        }
        if rv(&a) != rv(&b) {
            out.push(if rv(&a) > rv(&b) {
                "resourceVersion grew".into()
            } else {
                "resourceVersion shrank".into()
            });
        }
        for part in ["spec", "status"] {
            if a.get(part) != b.get(part) {
                out.push(format!("{part} changed"));
            }
        }
        for field in [
            "labels",
            "annotations",
            "finalizers",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            if a["metadata"].get(field) != b["metadata"].get(field) {
                out.push(format!("metadata.{field} changed"));
            }
        }
        if out.is_empty() {
            "nothing changed".into()
        } else {
            out.join(", ")
        }
    }

    async fn merge(
        api: &Api<DynamicObject>,
        name: &str,
        patch: Value,
    ) -> Result<DynamicObject, kube::Error> {
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    }

    async fn merge_status(
        api: &Api<DynamicObject>,
        name: &str,
        patch: Value,
    ) -> Result<DynamicObject, kube::Error> {
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    }

    fn plan(name: &str) -> anyhow::Result<DynamicObject> {
        object(
            Kind::UpgradePlan,
            name,
            json!({"spec": {"version": "0.19.2"}}),
        )
    }

    /// One scenario's ending, one line per step.
    pub async fn run(name: &str, client: &kube::Client) -> anyhow::Result<String> {
        let plans = api(client, Kind::UpgradePlan);
        let pp = PostParams::default();
        let mut out: Vec<String> = vec![];
        match name {
            "cr-discovery" => {
                let list = client
                    .list_api_group_resources(&format!("{}/{}", crd::GROUP, crd::VERSION))
                    .await?;
                let mut rows: Vec<String> = list
                    .resources
                    .iter()
                    .map(|r| {
                        let mut verbs = r.verbs.clone();
                        verbs.sort();
                        format!(
                            "{} kind={} namespaced={} categories={:?} shortNames={:?} verbs={verbs:?}",
                            r.name, r.kind, r.namespaced, r.categories, r.short_names
                        )
                    })
                    .collect();
                rows.sort();
                out.extend(rows);
                // Namespaced: served under a namespace, listed across all of them.
                plans.create(&pp, &plan("listed")?).await?;
                let all: Api<DynamicObject> =
                    Api::all_with(client.clone(), &Kind::UpgradePlan.api_resource());
                let names: Vec<String> = all
                    .list(&Default::default())
                    .await?
                    .items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect();
                out.push(format!("listed in all namespaces: {names:?}"));
            }
            "cr-create-ignores-status" => {
                let mut p = plan("with-status")?;
                p.data["status"] = json!({"phase": "failed", "active": true});
                let created = plans.create(&pp, &p).await?;
                let v = serde_json::to_value(&created)?;
                out.push(format!(
                    "created: generation={} status={}",
                    v["metadata"]["generation"], v["status"]
                ));
            }
            "cr-main-writes-ignore-status" => {
                let created = plans.create(&pp, &plan("main-status")?).await?;
                let after = merge(
                    &plans,
                    "main-status",
                    json!({"status": {"phase": "failed"}}),
                )
                .await?;
                out.push(format!("status only: {}", changes(&created, &after)));
                let after2 = merge(
                    &plans,
                    "main-status",
                    json!({"spec": {"version": "0.19.3"}, "status": {"phase": "failed"}}),
                )
                .await?;
                out.push(format!("spec and status: {}", changes(&after, &after2)));
                let mut whole = after2.clone();
                whole.data["status"] = json!({"phase": "failed"});
                let replaced = plans.replace("main-status", &pp, &whole).await?;
                out.push(format!(
                    "update with status: {}",
                    changes(&after2, &replaced)
                ));
            }
            "cr-status-writes-change-only-status" => {
                let created = plans.create(&pp, &plan("status-only")?).await?;
                let after = merge_status(
                    &plans,
                    "status-only",
                    json!({"spec": {"version": "9.9.9"},
                           "metadata": {"labels": {"x": "y"}, "annotations": {"a": "b"}},
                           "status": {"phase": "workers"}}),
                )
                .await?;
                out.push(format!("status patch: {}", changes(&created, &after)));
                let same = merge_status(
                    &plans,
                    "status-only",
                    json!({"status": {"phase": "workers"}}),
                )
                .await?;
                out.push(format!("same status again: {}", changes(&after, &same)));
                let mut whole = same.clone();
                whole.data["status"] = json!({"phase": "paused"});
                whole.data["spec"] = json!({"version": "1.0.0"});
                let replaced = plans.replace_status("status-only", &pp, &whole).await?;
                out.push(format!("status update: {}", changes(&same, &replaced)));
                let cleared = merge_status(&plans, "status-only", json!({"status": null})).await?;
                out.push(format!(
                    "status removed: {} status={}",
                    changes(&replaced, &cleared),
                    cleared.data["status"]
                ));
            }
            "cr-generation-moves-with-spec-only" => {
                let created = plans.create(&pp, &plan("generation")?).await?;
                let mut last = created.clone();
                for (what, patch) in [
                    (
                        "annotation",
                        json!({"metadata": {"annotations": {"fleet.skoala.io/paused": "true"}}}),
                    ),
                    ("label", json!({"metadata": {"labels": {"env": "prod"}}})),
                    (
                        "finalizer",
                        json!({"metadata": {"finalizers": ["fleet.skoala.io/in-flight"]}}),
                    ),
                    ("spec", json!({"spec": {"version": "0.19.3"}})),
                    ("same spec", json!({"spec": {"version": "0.19.3"}})),
                    ("new spec field", json!({"spec": {"maxConcurency": 2}})),
                ] {
                    let after = merge(&plans, "generation", patch).await?;
                    out.push(format!("{what}: {}", changes(&last, &after)));
                    last = after;
                }
                out.push(format!(
                    "generation at creation: {:?}",
                    created.metadata.generation
                ));
            }
            "cr-stale-resource-version" => {
                let created = plans.create(&pp, &plan("stale")?).await?;
                let stale = created.metadata.resource_version.clone().context("rv")?;
                let fresh = merge(
                    &plans,
                    "stale",
                    json!({"metadata": {"annotations": {"a": "1"}}}),
                )
                .await?;
                let current = fresh.metadata.resource_version.clone().context("rv")?;
                let with_rv = |rv: &str, body: Value| {
                    let mut b = body;
                    b["metadata"]["resourceVersion"] = json!(rv);
                    b
                };
                out.push(format!(
                    "merge patch, stale: {}",
                    refusal(
                        merge(
                            &plans,
                            "stale",
                            with_rv(&stale, json!({"spec": {"version": "1.0.0"}}))
                        )
                        .await
                    )?
                ));
                out.push(format!(
                    "status merge patch, stale: {}",
                    refusal(
                        merge_status(
                            &plans,
                            "stale",
                            with_rv(&stale, json!({"status": {"phase": "workers"}}))
                        )
                        .await
                    )?
                ));
                let mut old = created.clone();
                old.data["spec"] = json!({"version": "2.0.0"});
                out.push(format!(
                    "update, stale: {}",
                    refusal(plans.replace("stale", &pp, &old).await)?
                ));
                out.push(format!(
                    "status update, stale: {}",
                    refusal(plans.replace_status("stale", &pp, &old).await)?
                ));
                let mut unconditional = old.clone();
                unconditional.metadata.resource_version = None;
                out.push(format!(
                    "update without resourceVersion: {}",
                    refusal(plans.replace("stale", &pp, &unconditional).await)?
                ));
                out.push(format!(
                    "merge patch without resourceVersion: {}",
                    refusal(
                        merge(
                            &plans,
                            "stale",
                            json!({"metadata": {"annotations": {"b": "2"}}})
                        )
                        .await
                    )?
                ));
                let now = plans.get("stale").await?;
                let ok = merge(
                    &plans,
                    "stale",
                    with_rv(
                        now.metadata.resource_version.as_deref().unwrap_or_default(),
                        json!({"spec": {"version": "1.0.0"}}),
                    ),
                )
                .await?;
                out.push(format!("merge patch, current: {}", changes(&now, &ok)));
                out.push(format!("stale != current: {}", stale != current));
            }
            "cr-finalizers-and-deletion-timestamp" => {
                let clusters = api(client, Kind::FleetCluster);
                let c = object(
                    Kind::FleetCluster,
                    "held",
                    json!({"metadata": {"finalizers": ["fleet.skoala.io/in-flight"]},
                           "spec": {"name": "held", "labels": {}}}),
                )?;
                let created = clusters.create(&pp, &c).await?;
                let mut events = clusters
                    .watch(
                        &WatchParams::default()
                            .fields("metadata.name=held")
                            .timeout(30),
                        created.metadata.resource_version.as_deref().unwrap_or("0"),
                    )
                    .await?
                    .boxed();
                let deleted = clusters.delete("held", &DeleteParams::default()).await?;
                let deleted = match deleted.either(Ok, Err) {
                    Ok(o) => {
                        out.push(format!("delete: object, {}", changes(&created, &o)));
                        o
                    }
                    Err(s) => anyhow::bail!("delete answered a Status: {s:?}"),
                };
                out.push(format!(
                    "deletionGracePeriodSeconds={:?}",
                    deleted.metadata.deletion_grace_period_seconds
                ));
                let got = clusters.get("held").await?;
                out.push(format!("still there: {}", changes(&deleted, &got)));
                let again = clusters.delete("held", &DeleteParams::default()).await?;
                match again.either(Ok, Err) {
                    Ok(o) => out.push(format!("delete again: object, {}", changes(&got, &o))),
                    Err(s) => out.push(format!("delete again: status {:?}", s.reason)),
                }
                out.push(format!(
                    "add a finalizer while terminating: {}",
                    refusal(merge(&clusters, "held", json!({"metadata": {"finalizers": ["fleet.skoala.io/in-flight", "other.io/x"]}})).await)?
                ));
                let before = clusters.get("held").await?;
                let edited = merge(&clusters, "held", json!({"spec": {"name": "renamed"}})).await?;
                out.push(format!(
                    "spec change while terminating: {}",
                    changes(&before, &edited)
                ));
                let status = merge_status(
                    &clusters,
                    "held",
                    json!({"status": {"revokedAt": "2026-12-03T10:00:00Z"}}),
                )
                .await?;
                out.push(format!(
                    "status change while terminating: {}",
                    changes(&edited, &status)
                ));
                let last =
                    merge(&clusters, "held", json!({"metadata": {"finalizers": null}})).await?;
                out.push(format!(
                    "last finalizer removed: answer {}",
                    changes(&status, &last)
                ));
                out.push(format!(
                    "get after: {}",
                    refusal(clusters.get("held").await)?
                ));
                let mut kinds = vec![];
                while let Some(e) = tokio::time::timeout(Duration::from_secs(30), events.try_next())
                    .await
                    .context("watch event")??
                {
                    let (kind, o) = match e {
                        WatchEvent::Added(o) => ("ADDED", o),
                        WatchEvent::Modified(o) => ("MODIFIED", o),
                        WatchEvent::Deleted(o) => ("DELETED", o),
                        other => {
                            kinds.push(format!("{other:?}"));
                            break;
                        }
                    };
                    let v = serde_json::to_value(&o)?;
                    kinds.push(format!(
                        "{kind}(finalizers={} deleting={})",
                        v["metadata"]["finalizers"],
                        !v["metadata"]["deletionTimestamp"].is_null()
                    ));
                    if kind == "DELETED" {
                        break;
                    }
                }
                out.push(format!("watch: {}", kinds.join(" ")));
            }
            "cr-delete-without-finalizers" => {
                plans.create(&pp, &plan("gone")?).await?;
                let answer = match plans
                    .delete("gone", &DeleteParams::default())
                    .await?
                    .either(Ok, Err)
                {
                    Ok(o) => format!(
                        "object deleting={}",
                        o.metadata.deletion_timestamp.is_some()
                    ),
                    Err(s) => format!("status {:?}", s.status),
                };
                out.push(format!("delete: {answer}"));
                out.push(format!("get after: {}", refusal(plans.get("gone").await)?));
                out.push(format!(
                    "delete again: {}",
                    refusal(plans.delete("gone", &DeleteParams::default()).await)?
                ));
            }
            "cr-preserved-and-pruned-fields" => {
                let mut p = plan("fields")?;
                p.data["spec"]["strategy"] =
                    json!({"maxConcurency": 3, "nested": {"deep": [1, {"x": true}]}});
                p.data["spec"]["typo"] = json!("kept?");
                p.data["topLevel"] = json!("pruned?");
                let created = plans.create(&pp, &p).await?;
                out.push(format!("spec: {}", created.data["spec"]));
                out.push(format!(
                    "top level kept: {}",
                    created.data.get("topLevel").is_some()
                ));
                let st = merge_status(
                    &plans,
                    "fields",
                    json!({"status": {"phase": "workers", "bogus": 1,
                                      "rollout": {"plan": "fields", "unknown": {"x": 1}},
                                      "counts": {"total": 3, "pending": 3, "offline": 0,
                                                 "running": 0, "succeeded": 0, "failed": 0,
                                                 "rollingBack": 0, "rolledBack": 0,
                                                 "reverted": 0, "bogus": 2}}}),
                )
                .await?;
                out.push(format!("status: {}", st.data["status"]));
                // Status is validated like the rest: required fields of a status part.
                let refused = merge_status(
                    &plans,
                    "fields",
                    json!({"status": {"counts": {"total": 3, "pending": null}}}),
                )
                .await;
                out.push(format!(
                    "status missing a required field: {}",
                    match refused {
                        Err(kube::Error::Api(e)) => format!("{} {}", e.code, e.reason),
                        other => format!("{other:?}"),
                    }
                ));
                let logs = api(client, Kind::FleetLog);
                let l = object(
                    Kind::FleetLog,
                    "events-fields-1",
                    json!({"spec": {"stream": "events", "plan": "fields", "firstId": 1, "lastId": 1,
                                    "fromMs": 1, "toMs": 2, "sealed": false, "encoding": "gzip+jsonl",
                                    "data": "H4sIAAAAAAAAAwMAAAAAAAAAAAA=", "bogus": 1}}),
                )?;
                let created = logs.create(&pp, &l).await?;
                out.push(format!(
                    "log spec keys: {:?}",
                    created.data["spec"]
                        .as_object()
                        .map(|m| m.keys().collect::<Vec<_>>())
                ));
            }
            "cr-metadata-only" => {
                let mut p = plan("meta")?;
                p.metadata.labels = Some([("env".to_string(), "prod".to_string())].into());
                let created = plans.create(&pp, &p).await?;
                let list = plans
                    .list_metadata(&ListParams::default().labels("env=prod"))
                    .await?;
                let raw = serde_json::to_value(&list.items)?;
                out.push(format!(
                    "list: {}/{} items={}",
                    list.types.api_version,
                    list.types.kind,
                    raw.as_array().map_or(0, Vec::len)
                ));
                let item = &raw[0];
                out.push(format!(
                    "item: {}/{} name={} generation={}",
                    item["apiVersion"],
                    item["kind"],
                    item["metadata"]["name"],
                    item["metadata"]["generation"]
                ));
                let one = serde_json::to_value(plans.get_metadata("meta").await?)?;
                out.push(format!("get: {}/{}", one["apiVersion"], one["kind"]));
                let mut events = plans
                    .watch_metadata(
                        &WatchParams::default()
                            .fields("metadata.name=meta")
                            .timeout(30),
                        created.metadata.resource_version.as_deref().unwrap_or("0"),
                    )
                    .await?
                    .boxed();
                merge(
                    &plans,
                    "meta",
                    json!({"metadata": {"annotations": {"a": "b"}}}),
                )
                .await?;
                match tokio::time::timeout(Duration::from_secs(30), events.try_next())
                    .await
                    .context("watch event")??
                {
                    Some(WatchEvent::Modified(o)) => {
                        let v = serde_json::to_value(&o)?;
                        out.push(format!(
                            "watch: MODIFIED {}/{} annotations={}",
                            v["apiVersion"], v["kind"], v["metadata"]["annotations"]
                        ));
                    }
                    other => out.push(format!("watch: {other:?}")),
                }
            }
            other => anyhow::bail!("no scenario {other}"),
        }
        Ok(out.join("\n  "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_and_a_real_cluster_treat_the_fleets_custom_resources_the_same_way()
-> anyhow::Result<()> {
    let cluster = real::cluster("parity-crs").await?;
    let sim = skoala_sim::Cluster::start(skoala_sim::ClusterConfig::new("parity-crs")).await?;
    let real_client = cluster.client().await?;
    let sim_client = sim.client().await?;
    crs::install(&real_client).await.context("real")?;
    crs::install(&sim_client).await.context("emulator")?;
    let mut ends = Vec::new();
    for scenario in crs::SCENARIOS {
        // A step the server refuses unexpectedly is an ending too, compared like any other.
        let end = |r: anyhow::Result<String>| r.unwrap_or_else(|e| format!("error: {e:?}"));
        let real_end = end(crs::run(scenario, &real_client).await);
        let sim_end = end(crs::run(scenario, &sim_client).await);
        ends.push((*scenario, real_end, sim_end));
    }
    judge(&ends)
}
