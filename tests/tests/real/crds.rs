//! The fleet's CRDs (`skoala_kubestore::crd`) on a real API server, as a cluster admin
//! installs them: the server accepts them (structural schemas, CEL rules within the cost
//! budget), stores today's plan document as `kubectl apply -f` sends it, keeps a typo for our
//! parser to refuse, enforces the CEL rules (plan names, an accepted plan's spec, sealed log
//! segments), writes status only through `/status`, and `kubectl get` shows the columns of the
//! design's tables (docs/design/kube-store.md §4).

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use skoala_e2e::real;
use skoala_e2e::tools::workspace_root;
use skoala_e2e::wait;
use skoala_kubestore::crd::{
    self, Accepted, ClusterPlan, Condition, ConditionStatus, Connection, ConnectionState, Counts,
    FleetClusterStatus, Kind, PlanCondition, Proposed, Release, UpgradePlanStatus,
};
use skoala_plan::{PhaseKind, TargetPhase, UpgradePlan as PlanDocument, validate};
use skoala_realkube::RealCluster;

/// The namespace the objects live in (the coordinator's, as in the README).
const NS: &str = real::FLEET_NAMESPACE;

/// A real cluster with the CRDs installed (server-side apply, as `skoala-coordinator crds |
/// kubectl apply --server-side -f -` does) and established, and the fleet namespace.
pub(crate) async fn cluster_with_crds(name: &str) -> anyhow::Result<RealCluster> {
    let cluster = real::cluster(name).await?;
    let file = cluster.dir().join("crds.yaml");
    std::fs::write(&file, crd::crds_yaml())?;
    cluster
        .kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .await?;
    for kind in Kind::ALL {
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{}.{}", kind.plural(), crd::GROUP),
            ])
            .await?;
    }
    real::namespace(&cluster, NS, &[]).await?;
    Ok(cluster)
}

/// `kubectl apply -f` of `yaml`; kubectl's discovery may not know a just-established kind
/// yet, so "no matches for kind" is retried, every other answer returned.
async fn apply(cluster: &RealCluster, yaml: &str) -> anyhow::Result<Result<String, String>> {
    let file = cluster.dir().join("object.yaml");
    std::fs::write(&file, yaml)?;
    wait::until(
        "kubectl to know the fleet kinds",
        Duration::from_secs(30),
        || async {
            match cluster
                .kubectl(&["apply", "-f", file.to_str().unwrap()])
                .await
            {
                Ok(out) => Some(Ok(out)),
                Err(e) if e.to_string().contains("no matches for kind") => None,
                Err(e) => Some(Err(e.to_string())),
            }
        },
    )
    .await
}

/// `kubectl patch` (a JSON merge patch), optionally of the status subresource.
async fn patch(
    cluster: &RealCluster,
    resource: &str,
    patch: Value,
    status: bool,
) -> Result<String, String> {
    let patch = patch.to_string();
    let mut args = vec!["-n", NS, "patch", resource, "--type=merge", "-p", &patch];
    if status {
        args.push("--subresource=status");
    }
    cluster.kubectl(&args).await.map_err(|e| e.to_string())
}

async fn get_json(cluster: &RealCluster, resource: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        &cluster
            .kubectl(&["-n", NS, "get", resource, "-o", "json"])
            .await?,
    )?)
}

/// The first example of docs/plan-reference.md: the document `skoalactl plan apply -f` takes,
/// and the page whose examples `plan/tests/reference_doc.rs` validates.
fn reference_example() -> String {
    let page = std::fs::read_to_string(workspace_root().join("docs/plan-reference.md")).unwrap();
    let start = page.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let end = start + page[start..].find("```").unwrap();
    let example = page[start..end].to_string();
    assert!(example.contains("kind: UpgradePlan"), "{example}");
    example
}

fn at(rfc3339: &str) -> jiff::Timestamp {
    rfc3339.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_the_reference_plan_stores_what_our_parser_reads_back_as_the_same_plan()
-> anyhow::Result<()> {
    let cluster = cluster_with_crds("crds-apply").await?;

    // The reference document, with the namespace a manifest in git carries.
    let example = reference_example();
    let with_namespace = example.replacen(
        "  name: skoala-0-19-2\n",
        &format!("  name: skoala-0-19-2\n  namespace: {NS}\n"),
        1,
    );
    assert_ne!(with_namespace, example, "the example names skoala-0-19-2");
    apply(&cluster, &with_namespace)
        .await?
        .map_err(anyhow::Error::msg)?;
    let plans: Api<crd::UpgradePlan> = Api::namespaced_with(
        cluster.client().await?,
        NS,
        &Kind::UpgradePlan.api_resource(),
    );
    let stored = plans.get("skoala-0-19-2").await?;
    let read_back = crd::document(&stored)?;
    let original = PlanDocument::from_yaml(&example)?;
    assert_eq!(read_back, original, "stored: {stored:#?}");
    assert_eq!(
        format!("{:?}", validate(&read_back)?),
        format!("{:?}", validate(&original)?)
    );

    // A typo is kept, so our parser refuses it naming the field, as `plan apply -f` does.
    let typo = example
        .replacen("name: skoala-0-19-2", "name: typo", 1)
        .replacen("maxConcurrency: 10%", "maxConcurency: 10%", 1);
    assert_ne!(typo, example);
    apply(
        &cluster,
        &typo.replace("metadata:\n", &format!("metadata:\n  namespace: {NS}\n")),
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    let stored = plans.get("typo").await?;
    assert_eq!(
        stored.spec["strategy"]["maxConcurency"],
        json!("10%"),
        "{stored:#?}"
    );
    let refused = crd::document(&stored).unwrap_err();
    assert!(refused.to_string().contains("maxConcurency"), "{refused}");

    // A name with a dot is refused by the CEL rule, with its message.
    let dotted = with_namespace.replacen("name: skoala-0-19-2", "name: skoala-0.19.2", 1);
    let refused = apply(&cluster, &dotted).await?.unwrap_err();
    assert!(
        refused.contains("metadata.name must be 1-63 lowercase letters, digits or '-'"),
        "{refused}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_plans_spec_and_a_sealed_segment_cannot_change_and_status_moves_only_through_status()
-> anyhow::Result<()> {
    let cluster = cluster_with_crds("crds-rules").await?;
    let plan = format!(
        "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: p1, namespace: {NS}}}\n\
         spec:\n  version: 0.19.2\n  strategy: {{maxConcurency: 3}}\n"
    );
    apply(&cluster, &plan).await?.map_err(anyhow::Error::msg)?;

    // Before acceptance the spec may be fixed in place.
    patch(
        &cluster,
        "upgradeplan/p1",
        json!({"spec": {"version": "0.19.3"}}),
        false,
    )
    .await
    .map_err(anyhow::Error::msg)?;

    // Status sent with the main resource is ignored; through /status it is stored.
    patch(
        &cluster,
        "upgradeplan/p1",
        json!({"status": {"phase": "failed"}}),
        false,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let stored = get_json(&cluster, "upgradeplan/p1").await?;
    assert!(stored.get("status").is_none(), "{stored:#}");
    let plans: Api<crd::UpgradePlan> = Api::namespaced_with(
        cluster.client().await?,
        NS,
        &Kind::UpgradePlan.api_resource(),
    );
    let status = UpgradePlanStatus {
        accepted: Some(Accepted {
            generation: 2,
            at: at("2026-12-03T10:00:00Z"),
        }),
        active: true,
        phase: Some(PhaseKind::ControlPlane),
        rollout: Some(json!({"plan": "p1", "aFieldTheCrdDoesNotKnow": {"x": 1}})),
        ..Default::default()
    };
    plans
        .patch_status(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    let stored = get_json(&cluster, "upgradeplan/p1").await?;
    let read: UpgradePlanStatus = serde_json::from_value(stored["status"].clone())?;
    assert_eq!(read, status, "nothing of the typed status is pruned");

    // Accepted: a spec change is refused with the coordinator's own words.
    let refused = patch(
        &cluster,
        "upgradeplan/p1",
        json!({"spec": {"version": "0.19.4"}}),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains(&format!("plan p1 {}", skoala_plan::IMMUTABLE_PLAN)),
        "{refused}"
    );
    // CEL's equality covers the fields the schema does not declare but preserves: changing
    // only the typo is refused too.
    let refused = patch(
        &cluster,
        "upgradeplan/p1",
        json!({"spec": {"strategy": {"maxConcurency": 4}}}),
        false,
    )
    .await
    .unwrap_err();
    assert!(refused.contains(skoala_plan::IMMUTABLE_PLAN), "{refused}");
    // Metadata and status still change (annotations are the verbs).
    patch(
        &cluster,
        "upgradeplan/p1",
        json!({"metadata": {"annotations": {"fleet.skoala.io/paused": "true"}}}),
        false,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    patch(
        &cluster,
        "upgradeplan/p1",
        json!({"status": {"phase": "paused"}}),
        true,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let stored = get_json(&cluster, "upgradeplan/p1").await?;
    assert_eq!(stored["spec"]["version"], json!("0.19.3"));
    assert_eq!(stored["status"]["phase"], json!("paused"));

    // A FleetLog segment: rewritten while open, frozen once sealed.
    let segment = |sealed: bool, last: u64| {
        format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: FleetLog\nmetadata: {{name: events-p1-1, namespace: {NS}}}\n\
             spec: {{stream: events, plan: p1, firstId: 1, lastId: {last}, fromMs: 1, toMs: 2, sealed: {sealed}, encoding: gzip+jsonl, data: H4sIAAAAAAAAAwMAAAAAAAAAAAA=}}\n"
        )
    };
    apply(&cluster, &segment(false, 1))
        .await?
        .map_err(anyhow::Error::msg)?;
    apply(&cluster, &segment(true, 2))
        .await?
        .map_err(anyhow::Error::msg)?;
    let refused = apply(&cluster, &segment(true, 3)).await?.unwrap_err();
    assert!(
        refused.contains("a sealed log segment cannot change"),
        "{refused}"
    );
    let refused = apply(&cluster, &segment(false, 2)).await?.unwrap_err();
    assert!(
        refused.contains("a sealed log segment cannot change"),
        "{refused}"
    );
    let stored = get_json(&cluster, "fleetlog/events-p1-1").await?;
    assert_eq!(stored["spec"]["lastId"], json!(2));
    Ok(())
}

/// `kubectl get` output as cells (split at the header's column starts, where kubectl's
/// tabwriter aligns them), relative times masked, one ` | `-joined line per row.
pub(crate) fn cells(table: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|(i, c)| *c != ' ' && (*i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    // kubectl's relative times: `5s`, `3m2s`, `2d3h`, `400d`.
    let is_age = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_digit())
            && s.ends_with(|c: char| "smhdy".contains(c))
            && s.chars().all(|c| c.is_ascii_digit() || "smhdy".contains(c))
    };
    std::iter::once(header)
        .chain(lines)
        .map(|line| {
            let mut row = Vec::new();
            for (n, start) in starts.iter().enumerate() {
                let end = starts
                    .get(n + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                let cell = line.get(*start..end).unwrap_or_default().trim();
                row.push(if is_age(cell) { "<age>" } else { cell });
            }
            row.join(" | ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_the_columns_of_the_design_with_values_from_the_status()
-> anyhow::Result<()> {
    let cluster = cluster_with_crds("crds-columns").await?;
    let client = cluster.client().await?;

    apply(
        &cluster,
        &format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: skoala-0-19-2, namespace: {NS}}}\nspec: {{version: 0.19.2}}\n"
        ),
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    let plans: Api<crd::UpgradePlan> =
        Api::namespaced_with(client.clone(), NS, &Kind::UpgradePlan.api_resource());
    let status = UpgradePlanStatus {
        accepted: Some(Accepted {
            generation: 1,
            at: at("2026-12-03T10:00:00Z"),
        }),
        active: true,
        phase: Some(PhaseKind::Workers),
        stage: Some(2),
        counts: Some(Counts {
            total: 1001,
            succeeded: 330,
            failed: 2,
            ..Default::default()
        }),
        waiting: "2 clusters for their window".into(),
        conditions: vec![Condition {
            type_: PlanCondition::Accepted,
            status: ConditionStatus::True,
            observed_generation: Some(1),
            last_transition_time: at("2026-12-03T10:00:00Z"),
            reason: "Accepted".into(),
            message: String::new(),
        }],
        ..Default::default()
    };
    plans
        .patch_status(
            "skoala-0-19-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;

    apply(
        &cluster,
        &format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: FleetCluster\n\
             metadata: {{name: 3f2a9c1e, namespace: {NS}, labels: {{fleet.skoala.io/name: prod-eu-1, env: prod}}}}\n\
             spec: {{name: prod-eu-1, labels: {{env: prod}}}}\n"
        ),
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    let clusters: Api<crd::FleetCluster> =
        Api::namespaced_with(client, NS, &Kind::FleetCluster.api_resource());
    let status = FleetClusterStatus {
        agent: Some(crd::Agent {
            agent_version: "0.1.0".into(),
            helm_version: "v4.0.0".into(),
        }),
        release: Some(Release {
            chart_version: "0.19.0".into(),
            status: skoala_plan::ReleaseStatus::Deployed,
            revision: 4,
        }),
        proposed: Some(Proposed {
            name: Some("prod-eu-2".into()),
            labels: Default::default(),
        }),
        connection: Some(Connection {
            state: ConnectionState::Online,
            since: at("2026-12-01T00:00:00Z"),
        }),
        plans: vec![ClusterPlan {
            plan: "skoala-0-19-2".into(),
            order: 17,
            state: TargetPhase::Running,
            progress: json!({"state": {"state": "running"}, "attempts": 1, "stage": 2}),
        }],
        ..Default::default()
    };
    clusters
        .patch_status(
            "3f2a9c1e",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;

    let get = |args: &'static [&'static str]| {
        let cluster = &cluster;
        async move {
            let mut all = vec!["-n", NS, "get"];
            all.extend(args);
            anyhow::Ok(cells(&cluster.kubectl(&all).await?))
        }
    };
    assert_eq!(
        get(&["upgradeplans"]).await?,
        "NAME | VERSION | PHASE | STAGE | SUCCEEDED | FAILED | TOTAL | AGE\n\
         skoala-0-19-2 | 0.19.2 | workers | 2 | 330 | 2 | 1001 | <age>"
    );
    assert_eq!(
        get(&["upgradeplans", "-o", "wide"]).await?,
        "NAME | VERSION | PHASE | STAGE | SUCCEEDED | FAILED | TOTAL | ACTIVE | ACCEPTED | WAITING | AGE\n\
         skoala-0-19-2 | 0.19.2 | workers | 2 | 330 | 2 | 1001 | true | True | 2 clusters for their window | <age>"
    );
    assert_eq!(
        get(&["fleetclusters"]).await?,
        "NAME | CLUSTER | CONNECTED | VERSION | RELEASE | PLAN | PLAN-STATE | AGE\n\
         3f2a9c1e | prod-eu-1 | Online | 0.19.0 | deployed | skoala-0-19-2 | running | <age>"
    );
    assert_eq!(
        get(&["fleetclusters", "-o", "wide"]).await?,
        "NAME | CLUSTER | CONNECTED | VERSION | RELEASE | PLAN | PLAN-STATE | AGENT | PROPOSED | SINCE | AGE\n\
         3f2a9c1e | prod-eu-1 | Online | 0.19.0 | deployed | skoala-0-19-2 | running | 0.1.0 | prod-eu-2 | <age> | <age>"
    );
    // The cluster's labels, mirrored into metadata, select it.
    let selected = cluster
        .kubectl(&[
            "-n",
            NS,
            "get",
            "fleetclusters",
            "-l",
            "env=prod",
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(selected.trim(), "fleetcluster.fleet.skoala.io/3f2a9c1e");
    Ok(())
}
