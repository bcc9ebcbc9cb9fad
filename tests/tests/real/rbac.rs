//! Least privilege, proven on real RBAC: what each chart's ServiceAccount may do, as the API
//! server answers `kubectl auth can-i --list`, equals a table checked into the repo
//! (`tests/expected/*-rbac.txt`), so a rule added to or removed from a chart fails here. And
//! both charts' pods pass the `restricted` Pod Security profile.
//!
//! After a deliberate change of a chart's RBAC, `SKOALA_BLESS=1` rewrites the tables; the diff
//! is then reviewed like code.

use std::time::Duration;

use skoala_e2e::real::{self, FLEET_NAMESPACE, Helm, RELEASE_NAMESPACE};
use skoala_e2e::tools::workspace_root;
use skoala_e2e::wait;
use skoala_realkube::RealCluster;

/// The namespaces whose rights are listed: the fleet's, the releases', and one of nobody's.
const NAMESPACES: [&str; 3] = [FLEET_NAMESPACE, RELEASE_NAMESPACE, "default"];

async fn install_both(cluster: &RealCluster, extra: &[&str]) -> anyhow::Result<()> {
    let coordinator = real::product_chart("skoala-fleet-coordinator");
    let agent = real::product_chart("skoala-fleet-agent");
    let mut c = vec![
        "install",
        "skoala-fleet",
        coordinator.to_str().unwrap(),
        "-n",
        FLEET_NAMESPACE,
    ];
    c.extend(extra);
    real::helm(cluster, Helm::V4, &c).await?;
    let mut a = vec![
        "install",
        "skoala-fleet-agent",
        agent.to_str().unwrap(),
        "-n",
        FLEET_NAMESPACE,
    ];
    a.extend(real::PLACEHOLDER_AGENT_VALUES);
    a.extend(extra);
    real::helm(cluster, Helm::V4, &a).await?;
    Ok(())
}

/// `kubectl auth can-i --list` for the ServiceAccount in each of [`NAMESPACES`], one rule a
/// line, columns separated by single spaces.
async fn rights(cluster: &RealCluster, service_account: &str) -> anyhow::Result<String> {
    let mut table = String::new();
    let who = format!("--as=system:serviceaccount:{FLEET_NAMESPACE}:{service_account}");
    for ns in NAMESPACES {
        let out = cluster
            .kubectl(&["auth", "can-i", "--list", "-n", ns, &who])
            .await?;
        table.push_str(&format!("# namespace {ns}\n"));
        // The header first, then the rules in a stable order.
        let mut lines: Vec<String> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let rules = lines.split_off(1.min(lines.len()));
        let mut rules = rules;
        rules.sort();
        rules.dedup();
        for line in lines.into_iter().chain(rules) {
            table.push_str(&line);
            table.push('\n');
        }
    }
    Ok(table)
}

fn compare(name: &str, actual: &str) {
    let path = workspace_root().join(format!("tests/expected/{name}-rbac.txt"));
    if std::env::var_os("SKOALA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SKOALA_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let removed: Vec<_> = expected.lines().filter(|l| !actual.contains(l)).collect();
        let added: Vec<_> = actual.lines().filter(|l| !expected.contains(l)).collect();
        panic!(
            "the {name}'s rights differ from {}:\nonly expected: {removed:#?}\nonly granted: {added:#?}\n\
             (a deliberate change: SKOALA_BLESS=1, then review the diff)",
            path.display()
        );
    }
}

/// Rights nobody of ours may hold, whatever the table says.
fn assert_never(name: &str, table: &str) {
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let verbs = line.rsplit_once('[').map(|(_, v)| v).unwrap_or_default();
        for forbidden in ["bind", "escalate", "impersonate", "*"] {
            assert!(
                !verbs.split([' ', ']']).any(|v| v == forbidden),
                "the {name} may {forbidden}: {line}"
            );
        }
        let resource = line.split(' ').next().unwrap_or_default();
        if ["pods", "daemonsets.apps", "pods/exec"].contains(&resource) {
            assert!(
                !verbs.contains("create"),
                "the {name} may create {resource}: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_charts_service_account_has_exactly_the_rights_in_its_table() -> anyhow::Result<()> {
    let cluster = real::cluster("rbac").await?;
    real::namespace(&cluster, FLEET_NAMESPACE, &[]).await?;
    real::namespace(&cluster, RELEASE_NAMESPACE, &[]).await?;
    install_both(&cluster, &[]).await?;
    for (name, sa) in [
        ("agent", "skoala-fleet-agent"),
        ("coordinator", "skoala-fleet-coordinator"),
    ] {
        let table = rights(&cluster, sa).await?;
        assert_never(name, &table);
        compare(name, &table);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kube_store_the_coordinator_has_exactly_the_rights_in_its_table()
-> anyhow::Result<()> {
    let cluster = real::cluster("rbac-kube").await?;
    real::namespace(&cluster, FLEET_NAMESPACE, &[]).await?;
    real::namespace(&cluster, RELEASE_NAMESPACE, &[]).await?;
    let coordinator = real::product_chart("skoala-fleet-coordinator");
    real::helm(
        &cluster,
        Helm::V4,
        &[
            "install",
            "skoala-fleet",
            coordinator.to_str().unwrap(),
            "-n",
            FLEET_NAMESPACE,
            "--set",
            "store.type=kube",
        ],
    )
    .await?;
    let table = rights(&cluster, "skoala-fleet-coordinator").await?;
    assert_never("coordinator on the kube store", &table);
    compare("coordinator-kube", &table);
    Ok(())
}

/// Pods our charts' Deployments made in `ns`, or the ReplicaSets' FailedCreate messages.
async fn pods_or_refusals(cluster: &RealCluster, ns: &str) -> anyhow::Result<(usize, String)> {
    let pods = cluster
        .kubectl(&["-n", ns, "get", "pods", "-o", "name"])
        .await?;
    let events = cluster
        .kubectl(&[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "reason=FailedCreate",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await?;
    Ok((pods.lines().count(), events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_charts_pods_are_admitted_under_the_restricted_pod_security_profile()
-> anyhow::Result<()> {
    let cluster = real::cluster("podsec").await?;
    let restricted = [("pod-security.kubernetes.io/enforce", "restricted")];
    real::namespace(&cluster, FLEET_NAMESPACE, &restricted).await?;
    real::namespace(&cluster, RELEASE_NAMESPACE, &[]).await?;
    install_both(&cluster, &[]).await?;
    // Both Deployments' pods get created (admission passed); the coordinator's may then wait
    // for its volume, which is scheduling, not admission.
    let (pods, refusals) = wait::until(
        "a pod of each chart in the restricted namespace",
        Duration::from_secs(120),
        || async {
            let (pods, refusals) = pods_or_refusals(&cluster, FLEET_NAMESPACE).await.ok()?;
            (pods >= 2 || !refusals.is_empty()).then_some((pods, refusals))
        },
    )
    .await?;
    assert!(refusals.is_empty(), "refused under restricted: {refusals}");
    assert_eq!(pods, 2, "one pod per chart");

    // The check can fail: the same chart with a container allowed to escalate is refused.
    real::namespace(&cluster, "negative-control", &restricted).await?;
    let agent = real::product_chart("skoala-fleet-agent");
    let mut loose = vec![
        "install",
        "loose-agent",
        agent.to_str().unwrap(),
        "-n",
        "negative-control",
        "--set",
        "fullnameOverride=loose-agent",
        "--set",
        "securityContext.allowPrivilegeEscalation=true",
    ];
    loose.extend(real::PLACEHOLDER_AGENT_VALUES);
    real::helm(&cluster, Helm::V4, &loose).await?;
    let refusals = wait::until(
        "the loosened pod to be refused",
        Duration::from_secs(120),
        || async {
            let (_, refusals) = pods_or_refusals(&cluster, "negative-control").await.ok()?;
            (!refusals.is_empty()).then_some(refusals)
        },
    )
    .await?;
    assert!(refusals.contains("violates PodSecurity"), "{refusals}");
    Ok(())
}
