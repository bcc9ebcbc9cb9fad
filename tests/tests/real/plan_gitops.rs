//! Plans as objects on a real control plane (design §4.4–§4.5, issue 15's first "done when"):
//! the coordinator chart installed with `store.type=kube` (two replicas, the ServiceAccount's
//! rights), a real working cluster and two emulated ones. Plans are applied with `kubectl
//! apply -f plan.yaml -n skoala-fleet`, their progress read with `kubectl get upgradeplans`
//! and `kubectl get fleetclusters` (a plan's counts are of its working clusters, the control
//! plane aside), and every verb is given once by `kubectl annotate` and once by `skoalactl`:
//! pause, resume, approve, abort. `skoalactl`'s verbs write the object's annotations with
//! server-side apply: refused, naming `kubectl-annotate`, where that manager owns them, taken
//! over with `--force`; field ownership exists only on a real API server.
//!
//! `kubectl` speaks as the cluster's admin (the person who owns the control-plane cluster
//! and its git repository); `skoalactl` with the operator credential read by `show
//! admin-config --store kube`.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use skoala_e2e::fleet::plans::{PlanView, annotated, target};
use skoala_e2e::real::fleet::{RealFleet, RealFleetOptions, Store};
use skoala_e2e::real::{FLEET_NAMESPACE, Helm};
use skoala_e2e::wait;

use crate::crds::cells;
use crate::store_columns::cell_where;

const PLAN_TIMEOUT: Duration = Duration::from_secs(300);

/// `kubectl apply -f` of `yaml` in the fleet's namespace, as a GitOps tool or a person would.
async fn kubectl_apply(fleet: &RealFleet, yaml: &str) -> anyhow::Result<()> {
    let path = fleet.plan_file(yaml)?;
    let path = path.to_str().expect("utf-8 path");
    fleet
        .control_plane
        .kubectl(&["apply", "-n", FLEET_NAMESPACE, "-f", path])
        .await?;
    Ok(())
}

/// `kubectl annotate --overwrite` of plan `name` with `annotation` (`key=value`).
async fn annotate(fleet: &RealFleet, name: &str, annotation: &str) -> anyhow::Result<()> {
    fleet
        .control_plane
        .kubectl(&[
            "annotate",
            "--overwrite",
            "-n",
            FLEET_NAMESPACE,
            "upgradeplans.fleet.skoala.io",
            name,
            annotation,
        ])
        .await?;
    Ok(())
}

/// `kubectl get <kind>` in the fleet's namespace, as cells.
async fn get(fleet: &RealFleet, kind: &str) -> anyhow::Result<String> {
    Ok(cells(
        &fleet
            .control_plane
            .kubectl(&["get", kind, "-n", FLEET_NAMESPACE])
            .await?,
    ))
}

/// Waits until `kubectl get upgradeplans` shows plan `name` with these cells.
async fn shown(fleet: &RealFleet, name: &str, want: &[(&str, &str)]) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let r = wait::until(
        &format!("kubectl get upgradeplans: {name} with {want:?}"),
        PLAN_TIMEOUT,
        || async {
            let table = get(fleet, "upgradeplans").await.ok()?;
            let ok = table
                .lines()
                .skip(1)
                .any(|l| l.starts_with(&format!("{name} |")))
                && want
                    .iter()
                    .all(|(h, v)| cell_where(&table, "NAME", name, h) == *v);
            *last.lock().ok()? = table;
            ok.then_some(())
        },
    )
    .await;
    r.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n{}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}

/// The `Accepted` condition of object `name`, once `done` holds for it.
async fn accepted(
    fleet: &RealFleet,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let r = wait::until(
        &format!("{name}: Accepted {what}"),
        PLAN_TIMEOUT,
        || async {
            let o = plan_object(fleet, name).await.ok()?;
            let c = o["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted")
                .cloned();
            *last.lock().ok()? = o;
            c.filter(|c| done(c))
        },
    )
    .await;
    r.with_context(|| {
        format!(
            "the object: {:#}\n{}",
            last.lock().map(|l| l.clone()).unwrap_or_default(),
            fleet.logs()
        )
    })
}

/// `skoalactl plan <verb> <name>` (`verb` may carry flags: `pause --force`), which must
/// succeed.
async fn ctl_verb(fleet: &RealFleet, verb: &str, name: &str) -> anyhow::Result<()> {
    let mut args = vec!["plan"];
    args.extend(verb.split_whitespace());
    args.push(name);
    let out = fleet.ctl().run(&args).await?;
    anyhow::ensure!(
        out.success,
        "skoalactl plan {verb} {name}: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// `skoalactl plan <verb> <name>`, which must be refused because `manager` owns the
/// annotation the verb writes; the plan's phase stays `phase`.
async fn ctl_refused(
    fleet: &RealFleet,
    verb: &str,
    name: &str,
    manager: &str,
    phase: &str,
) -> anyhow::Result<()> {
    let out = fleet.ctl().run(&["plan", verb, name]).await?;
    anyhow::ensure!(
        !out.success && out.stderr.contains(&format!("managed by {manager}")),
        "skoalactl plan {verb} {name} is refused naming {manager}: {}{}",
        out.stdout,
        out.stderr
    );
    let p = fleet.plan(name).await?;
    anyhow::ensure!(p["phase"] == phase, "{name} unchanged: {p:#}");
    Ok(())
}

/// Plan `name`'s `UpgradePlan` object, as `kubectl get -o json` shows it.
async fn plan_object(fleet: &RealFleet, name: &str) -> anyhow::Result<Value> {
    let out = fleet
        .control_plane
        .kubectl(&[
            "get",
            "upgradeplans.fleet.skoala.io",
            name,
            "-n",
            FLEET_NAMESPACE,
            "-o",
            "json",
        ])
        .await?;
    Ok(serde_json::from_str(&out)?)
}

/// The `fleet.skoala.io/*` annotations of plan `name`'s object.
async fn annotations(fleet: &RealFleet, name: &str) -> anyhow::Result<Value> {
    let object = plan_object(fleet, name).await?;
    let all = object["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(all
        .into_iter()
        .filter(|(k, _)| k.starts_with("fleet.skoala.io/"))
        .collect())
}

/// Annotates plan `name` with a pre-approval of `stage` and waits until the leader announced
/// it: a pass of the reconciler evaluated the object after what came before.
async fn preapproved(fleet: &RealFleet, name: &str, stage: u32) -> anyhow::Result<()> {
    annotate(
        fleet,
        name,
        &format!("fleet.skoala.io/approved-stage={stage}"),
    )
    .await?;
    wait::until(
        &format!("{name}: stage {stage} pre-approved"),
        PLAN_TIMEOUT,
        || async {
            let events = fleet.events(name).await.ok()?;
            events
                .iter()
                .any(|e| {
                    e["kind"] == "plan.preapproved"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains(&format!("to {stage} ")))
                })
                .then_some(())
        },
    )
    .await
    .with_context(|| fleet.logs())
}

/// Waits until plan `name` awaits an approval whose reason names `stage` (`canaries`,
/// `wave 1`, …).
async fn awaiting(fleet: &RealFleet, name: &str, stage: &str) -> anyhow::Result<Value> {
    wait::until(
        &format!("{name} awaiting the approval of the {stage}"),
        PLAN_TIMEOUT,
        || async {
            let p = fleet.plan(name).await.ok()?;
            let reason = p["reason"].as_str()?.contains(stage);
            (p["phase"] == "awaitingApproval" && reason).then_some(p)
        },
    )
    .await
    .with_context(|| fleet.logs())
}

/// The states of the plan's targets, by name.
fn states(plan: &Value) -> Vec<(String, String)> {
    plan["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_applied_with_kubectl_run_to_the_end_and_obey_each_verb_from_kubectl_and_skoalactl()
-> anyhow::Result<()> {
    let fleet = RealFleet::start(RealFleetOptions {
        coordinator_helm: Helm::V4,
        real_workers: vec![Helm::V4],
        sim_workers: 2,
        store: Store::Kube,
        // A worker's upgrade lasts long enough to pause the plan while it runs.
        sim_readiness_delay: Some(Duration::from_secs(6)),
        ..Default::default()
    })
    .await?;
    let workers = ["real-1", "sim-1", "sim-2"];

    // 1. Applied paused from git; `paused: "false"` lets it run; approved by skoalactl.
    let a = "gitops-a";
    let yaml = fleet.plan_yaml(
        a,
        "0.19.1",
        "requireApproval: beforeWorkers\nstrategy: {canary: 1, maxConcurrency: 2}",
    );
    kubectl_apply(
        &fleet,
        &annotated(&yaml, "fleet.skoala.io/paused: \"true\""),
    )
    .await?;
    let paused = fleet.wait_phase(a, &["paused"], PLAN_TIMEOUT).await?;
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fleet.skoala.io/paused")),
        "{paused:#}"
    );
    shown(
        &fleet,
        a,
        &[("VERSION", "0.19.1"), ("PHASE", "paused"), ("TOTAL", "3")],
    )
    .await?;
    annotate(&fleet, a, "fleet.skoala.io/paused=false").await?;
    awaiting(&fleet, a, "canaries").await?;
    shown(
        &fleet,
        a,
        &[("PHASE", "awaitingApproval"), ("SUCCEEDED", "0")],
    )
    .await?;
    ctl_verb(&fleet, "approve", a).await?;
    let done = fleet.wait_phase(a, &["succeeded"], PLAN_TIMEOUT).await?;
    assert!(
        states(&done).iter().all(|(_, s)| s == "succeeded"),
        "{done:#}"
    );
    shown(
        &fleet,
        a,
        &[("PHASE", "succeeded"), ("SUCCEEDED", "3"), ("FAILED", "0")],
    )
    .await?;
    // A session stores an agent's later inventory reports a moment after them, off its loop
    // (ARCHITECTURE: the stored inventory lags the live one by design): waited for, bounded.
    let want = ["0.19.1", "deployed", a, "succeeded"];
    let last = std::sync::Mutex::new(String::new());
    let rows = wait::until(
        "kubectl get fleetclusters: every worker deployed",
        PLAN_TIMEOUT,
        || async {
            let clusters = get(&fleet, "fleetclusters").await.ok()?;
            let all = workers.iter().all(|w| {
                ["VERSION", "RELEASE", "PLAN", "PLAN-STATE"]
                    .map(|h| cell_where(&clusters, "CLUSTER", w, h))
                    == want
            });
            *last.lock().ok()? = clusters;
            all.then_some(())
        },
    )
    .await;
    assert!(
        rows.is_ok(),
        "{rows:?}\n{}",
        last.lock().map(|l| l.clone()).unwrap_or_default()
    );

    // 2. Approved by annotation, paused and resumed by skoalactl while the canary runs,
    // approved again by skoalactl, aborted by annotation before the last wave.
    let b = "gitops-b";
    kubectl_apply(
        &fleet,
        &fleet.plan_yaml(
            b,
            "0.19.2",
            "requireApproval: beforeEachWave\nstrategy: {canary: 1, maxConcurrency: 1}",
        ),
    )
    .await?;
    awaiting(&fleet, b, "canaries").await?;
    annotate(&fleet, b, "fleet.skoala.io/approved-stage=0").await?;
    // The canary: the first worker the approval started (running, or already done).
    let canary = wait::until("the canary started", PLAN_TIMEOUT, || async {
        let p = fleet.plan(b).await.ok()?;
        states(&p)
            .into_iter()
            .find(|(n, s)| workers.contains(&n.as_str()) && (s == "running" || s == "succeeded"))
            .map(|(n, _)| n)
    })
    .await?;
    ctl_verb(&fleet, "pause", b).await?;
    let a_b = annotations(&fleet, b).await?;
    assert_eq!(a_b["fleet.skoala.io/paused"], "true", "{a_b:#}");
    // The pause holds (the verb wrote `paused: "true"` on the object) while the canary's
    // upgrade finishes, and nothing else starts.
    let held = wait::until(
        "the canary done, the plan still paused",
        PLAN_TIMEOUT,
        || async {
            let p = fleet.plan(b).await.ok()?;
            let done = target(&p, &canary).ok()?["state"] == "succeeded";
            (done && p["phase"] == "paused").then_some(p)
        },
    )
    .await
    .with_context(|| fleet.logs())?;
    let running: Vec<_> = states(&held)
        .into_iter()
        .filter(|(_, s)| s == "running")
        .collect();
    assert!(running.is_empty(), "nothing starts while paused: {held:#}");
    shown(&fleet, b, &[("PHASE", "paused"), ("SUCCEEDED", "1")]).await?;
    ctl_verb(&fleet, "resume", b).await?;
    let a_b = annotations(&fleet, b).await?;
    assert_eq!(a_b["fleet.skoala.io/paused"], "false", "{a_b:#}");
    assert!(a_b["fleet.skoala.io/resume"].is_string(), "{a_b:#}");
    awaiting(&fleet, b, "wave 1").await?;
    // `kubectl annotate` owns the approval: skoalactl says so, and takes it with --force.
    ctl_refused(&fleet, "approve", b, "kubectl-annotate", "awaitingApproval").await?;
    ctl_verb(&fleet, "approve --force", b).await?;
    let a_b = annotations(&fleet, b).await?;
    assert_eq!(a_b["fleet.skoala.io/approved-stage"], "1", "{a_b:#}");
    awaiting(&fleet, b, "wave 2").await?;
    shown(
        &fleet,
        b,
        &[
            ("PHASE", "awaitingApproval"),
            ("STAGE", "1"),
            ("SUCCEEDED", "2"),
        ],
    )
    .await?;

    // A third plan while the second waits: queued on its object, stored nowhere yet. Forced:
    // the aborted plan leaves the fleet skewed (a worker still on 0.19.1).
    let c = "gitops-c";
    let yaml = fleet.plan_yaml(c, "0.20.0", "requireApproval: beforeWorkers");
    kubectl_apply(&fleet, &annotated(&yaml, "fleet.skoala.io/force: \"true\"")).await?;
    let queued = accepted(&fleet, c, "Queued", |c| c["reason"] == "Queued").await?;
    assert_eq!(queued["status"], "Unknown", "{queued:#}");

    annotate(&fleet, b, "fleet.skoala.io/abort=true").await?;
    let aborted = fleet.wait_phase(b, &["aborted"], PLAN_TIMEOUT).await?;
    let succeeded = states(&aborted)
        .iter()
        .filter(|(_, s)| s == "succeeded")
        .count();
    assert_eq!(
        succeeded, 3,
        "the control plane, the canary and wave 1; nothing after the abort: {aborted:#}"
    );
    shown(&fleet, b, &[("PHASE", "aborted"), ("SUCCEEDED", "2")]).await?;

    // 3. The queued plan starts once the aborted one finished; aborted by skoalactl.
    let accepted_c = accepted(&fleet, c, "decided", |c| c["reason"] != "Queued").await?;
    assert_eq!(accepted_c["status"], "True", "{accepted_c:#}");
    awaiting(&fleet, c, "canaries").await?;
    // Paused and resumed by `kubectl annotate` while it waits, then aborted by skoalactl.
    annotate(&fleet, c, "fleet.skoala.io/paused=true").await?;
    fleet.wait_phase(c, &["paused"], PLAN_TIMEOUT).await?;
    shown(&fleet, c, &[("PHASE", "paused")]).await?;
    annotate(&fleet, c, "fleet.skoala.io/paused=false").await?;
    awaiting(&fleet, c, "canaries").await?;
    // `paused: "false"` from `kubectl annotate` would lift a pause from skoalactl: refused,
    // naming that manager; forced, the pause is the object's and outlasts two evaluations.
    ctl_refused(&fleet, "pause", c, "kubectl-annotate", "awaitingApproval").await?;
    ctl_verb(&fleet, "pause --force", c).await?;
    let a_c = annotations(&fleet, c).await?;
    assert_eq!(a_c["fleet.skoala.io/paused"], "true", "{a_c:#}");
    for stage in [5, 6] {
        preapproved(&fleet, c, stage).await?;
        let p = fleet.plan(c).await?;
        assert_eq!(p["phase"], "paused", "after pre-approving {stage}: {p:#}");
    }
    ctl_verb(&fleet, "abort", c).await?;
    let a_c = annotations(&fleet, c).await?;
    assert_eq!(a_c["fleet.skoala.io/abort"], "true", "{a_c:#}");
    fleet.wait_phase(c, &["aborted"], PLAN_TIMEOUT).await?;
    shown(&fleet, c, &[("PHASE", "aborted"), ("SUCCEEDED", "0")]).await?;
    for w in workers {
        let h = fleet.history(w).await?;
        assert!(
            h.iter()
                .all(|r| !r["chart"].as_str().unwrap_or_default().ends_with("0.20.0")),
            "{w} was not upgraded by the aborted plan: {h:#?}"
        );
    }

    for (plan, kinds) in [
        (
            b,
            [
                "plan.approved",
                "plan.paused",
                "plan.resumed",
                "plan.aborted",
            ],
        ),
        (
            c,
            [
                "plan.applied",
                "plan.paused",
                "plan.resumed",
                "plan.aborted",
            ],
        ),
    ] {
        let events = fleet.events(plan).await?;
        let seen: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        for kind in kinds {
            assert!(seen.contains(&kind), "{plan}: {kind} in {seen:?}");
        }
    }
    let audit = fleet.ctl().run(&["audit"]).await?;
    assert!(
        audit.stdout.contains("kubernetes"),
        "the audit log names the annotations' actor:\n{}",
        audit.stdout
    );
    Ok(())
}
