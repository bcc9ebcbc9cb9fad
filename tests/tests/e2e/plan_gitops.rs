//! Plans as objects on the kube store (design §4.4–§4.5): `kubectl apply -f plan.yaml` starts
//! a plan as `skoalactl plan apply` does, its annotations pause and resume it, a second object
//! waits for the first plan to finish, an object the plan crate refuses gets the reason in its
//! status while nothing runs, deleting a running plan's object aborts the plan, and
//! `skoalactl`'s verbs write the object's annotations. Sim applies server-side apply as a
//! merge and keeps no field ownership, so a verb's conflict with git's field manager is
//! tested on the real tier only (`tests/real/plan_gitops.rs`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::plans::{
    KUBE_STORE_NAMESPACE, PlanFleet, PlanFleetOptions, PlanView, annotated,
};
use skoala_e2e::sim::kubectl;
use skoala_e2e::wait;

const PLAN_TIMEOUT: Duration = Duration::from_secs(600);

/// `kubectl apply -f` of `yaml` in the coordinator's namespace.
async fn kubectl_apply(pf: &PlanFleet, yaml: &str) -> anyhow::Result<()> {
    let path = pf.plan_file(yaml)?;
    let path = path.to_str().expect("utf-8 path");
    kubectl(
        pf.control_plane.kubeconfig_path(),
        &["apply", "-n", KUBE_STORE_NAMESPACE, "-f", path],
    )
    .await?;
    Ok(())
}

/// The `UpgradePlan` object `name` as the API server holds it.
async fn object(kubeconfig: &Path, name: &str) -> anyhow::Result<Value> {
    let out = kubectl(
        kubeconfig,
        &[
            "get",
            "upgradeplans.fleet.skoala.io",
            name,
            "-n",
            KUBE_STORE_NAMESPACE,
            "-o",
            "json",
        ],
    )
    .await?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The `Accepted` condition of object `name`, once it has one with `reason`.
async fn accepted(pf: &PlanFleet, name: &str, reason: &str) -> anyhow::Result<Value> {
    let kubeconfig = pf.control_plane.kubeconfig_path();
    wait::until(
        &format!("{name}: Accepted with reason {reason}"),
        PLAN_TIMEOUT,
        || async {
            let o = object(kubeconfig, name).await.ok()?;
            o["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted" && c["reason"] == reason)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_applied_with_kubectl_pause_by_annotation_queue_behind_each_other_and_succeed()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 3,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "gitops",
        "0.19.1",
        "strategy: {canary: 1, maxConcurrency: 1}",
    );
    kubectl_apply(&pf, &annotated(&yaml, "fleet.skoala.io/paused: \"true\"")).await?;
    let paused = pf.wait_phase("gitops", &["paused"], PLAN_TIMEOUT).await?;
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fleet.skoala.io/paused")),
        "{paused:#}"
    );
    let condition = accepted(&pf, "gitops", "Accepted").await?;
    assert_eq!(condition["status"], "True", "{condition:#}");

    // A second plan while the first is paused: it waits, stored nowhere yet.
    kubectl_apply(&pf, &pf.plan_yaml("gitops-next", "0.19.2", "")).await?;
    let queued = accepted(&pf, "gitops-next", "Queued").await?;
    assert_eq!(queued["status"], "Unknown", "{queued:#}");
    assert!(
        !pf.ctl().run(&["plan", "get", "gitops-next"]).await?.success,
        "a queued plan is not stored"
    );

    annotate(&pf, "gitops", "fleet.skoala.io/paused=false").await?;
    let plan = pf
        .wait_phase("gitops", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    for t in plan["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    let next = pf
        .wait_phase("gitops-next", &["succeeded"], PLAN_TIMEOUT)
        .await?;
    assert_eq!(next["version"], "0.19.2", "{next:#}");
    let events = pf
        .ctl()
        .ok(&["events", "--plan", "gitops", "-o", "json"])
        .await?;
    let events = events
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["plan.applied", "plan.paused", "plan.resumed"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let audit = pf.ctl().run(&["audit"]).await?;
    assert!(
        audit.stdout.contains("kubernetes"),
        "the audit log names the actor:\n{}",
        audit.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_plan_object_is_refused_in_its_status_and_nothing_runs() -> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 1,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml("typo", "0.19.2", "maxConcurency: 1");
    kubectl_apply(&pf, &yaml).await?;
    let kubeconfig = pf.control_plane.kubeconfig_path();
    let condition = wait::until("the refusal in the status", PLAN_TIMEOUT, || async {
        let o = object(kubeconfig, "typo").await.ok()?;
        let c = o["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted")?
            .clone();
        Some(c)
    })
    .await?;
    assert_eq!(condition["status"], "False", "{condition:#}");
    assert_eq!(condition["reason"], "InvalidSpec", "{condition:#}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxConcurency")),
        "the message names the field: {condition:#}"
    );
    let get = pf.ctl().run(&["plan", "get", "typo"]).await?;
    assert!(!get.success, "no plan is stored: {}", get.stdout);
    for name in ["control-plane", "work-1"] {
        let h = pf.history(name).await?;
        assert_eq!(h.len(), 1, "{name} was not upgraded: {h:#?}");
    }
    Ok(())
}

/// `kubectl annotate` of plan `name` with `annotation` (`key=value`).
async fn annotate(pf: &PlanFleet, name: &str, annotation: &str) -> anyhow::Result<()> {
    kubectl(
        pf.control_plane.kubeconfig_path(),
        &[
            "annotate",
            "--overwrite",
            "-n",
            KUBE_STORE_NAMESPACE,
            "upgradeplans.fleet.skoala.io",
            name,
            annotation,
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_stage_approves_the_canaries_and_abort_stops_the_plan_before_the_next_wave()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "gated",
        "0.19.2",
        "requireApproval: beforeEachWave\nstrategy: {canary: 1, maxConcurrency: 1}",
    );
    kubectl_apply(&pf, &yaml).await?;
    let waiting = pf
        .wait_phase("gated", &["awaitingApproval"], PLAN_TIMEOUT)
        .await?;
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("canaries")),
        "{waiting:#}"
    );

    annotate(&pf, "gated", "fleet.skoala.io/approved-stage=0").await?;
    let waiting = wait::until(
        "the canary upgraded and wave 1 awaited",
        PLAN_TIMEOUT,
        || async {
            let p = pf.plan("gated").await.ok()?;
            let wave = p["reason"].as_str()?.contains("wave 1");
            (p["phase"] == "awaitingApproval" && wave).then_some(p)
        },
    )
    .await?;

    annotate(&pf, "gated", "fleet.skoala.io/abort=true").await?;
    let aborted = pf.wait_phase("gated", &["aborted"], PLAN_TIMEOUT).await?;
    let states: Vec<&str> = aborted["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "succeeded").count(),
        2,
        "the control plane and the canary, nothing after the abort: {aborted:#}\nbefore: {waiting:#}"
    );
    let workers = ["work-1", "work-2"];
    let mut upgraded = 0;
    for name in workers {
        upgraded += pf.history(name).await?.len() - 1;
    }
    assert_eq!(upgraded, 1, "one working cluster upgraded: the canary");
    let object = object(pf.control_plane.kubeconfig_path(), "gated").await?;
    assert_eq!(
        object["status"]["control"]["approvedThrough"], 0,
        "what the leader handled is stored: {:#}",
        object["status"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_plans_object_aborts_it_and_the_object_waits_for_the_running_upgrade()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        kube_store: true,
        // The canary's upgrade must outlast the reconciler's passes (2 s each) between its
        // start and the read of the terminating object below, on a loaded machine too.
        worker_readiness_delay: Some(Duration::from_secs(20)),
        ..Default::default()
    })
    .await?;
    let yaml = pf.plan_yaml(
        "doomed",
        "0.19.2",
        "strategy: {canary: 1, maxConcurrency: 1}",
    );
    kubectl_apply(&pf, &yaml).await?;
    wait::until("the canary upgrading", PLAN_TIMEOUT, || async {
        let p = pf.plan("doomed").await.ok()?;
        p["targets"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == "work-1" && t["state"] == "running")
            .then_some(())
    })
    .await?;
    let kubeconfig = pf.control_plane.kubeconfig_path();
    // The reconciler holds a running plan's object at its next pass (every 2 s).
    wait::until(
        "the running plan's object held by the finalizer",
        PLAN_TIMEOUT,
        || async {
            let held = object(kubeconfig, "doomed").await.ok()?;
            (held["metadata"]["finalizers"] == serde_json::json!(["fleet.skoala.io/in-flight"]))
                .then_some(())
        },
    )
    .await?;

    kubectl(
        kubeconfig,
        &[
            "delete",
            "--wait=false",
            "-n",
            KUBE_STORE_NAMESPACE,
            "upgradeplans.fleet.skoala.io",
            "doomed",
        ],
    )
    .await?;
    let aborted = pf.wait_phase("doomed", &["aborted"], PLAN_TIMEOUT).await?;
    let terminating = object(kubeconfig, "doomed").await;
    wait::until("the object gone", PLAN_TIMEOUT, || async {
        let out = kubectl(
            kubeconfig,
            &[
                "get",
                "upgradeplans.fleet.skoala.io",
                "-n",
                KUBE_STORE_NAMESPACE,
                "-o",
                "name",
            ],
        )
        .await
        .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    })
    .await?;
    assert!(
        terminating.is_ok_and(|o| o["metadata"]["deletionTimestamp"].is_string()),
        "the object stays terminating while the canary's upgrade runs"
    );
    assert_eq!(
        pf.history("work-1").await?.len(),
        2,
        "the running upgrade finished: {aborted:#}"
    );
    assert_eq!(
        pf.history("work-2").await?.len(),
        1,
        "nothing new started after the deletion: {aborted:#}"
    );
    Ok(())
}

/// Waits until plan `name` has an event of `kind` whose message contains `text`.
async fn event(pf: &PlanFleet, name: &str, kind: &str, text: &str) -> anyhow::Result<Value> {
    wait::until(
        &format!("{name}: {kind} event with {text:?}"),
        PLAN_TIMEOUT,
        || async {
            pf.events(name).await.ok()?.into_iter().find(|e| {
                e["kind"] == kind && e["message"].as_str().is_some_and(|m| m.contains(text))
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skoalactl_verbs_on_the_kube_store_write_the_plan_objects_annotations_which_the_reconciler_keeps()
-> anyhow::Result<()> {
    let pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        kube_store: true,
        ..Default::default()
    })
    .await?;
    let name = "verbs";
    kubectl_apply(
        &pf,
        &pf.plan_yaml(name, "0.19.1", "requireApproval: beforeWorkers"),
    )
    .await?;
    pf.wait_phase(name, &["awaitingApproval"], PLAN_TIMEOUT)
        .await?;
    let kubeconfig = pf.control_plane.kubeconfig_path();
    let annotations = |o: &Value| o["metadata"]["annotations"].clone();

    let out = pf.ctl().run(&["plan", "pause", name]).await?;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let o = object(kubeconfig, name).await?;
    assert_eq!(annotations(&o)["fleet.skoala.io/paused"], "true", "{o:#}");
    let out = kubectl(
        kubeconfig,
        &[
            "get",
            "upgradeplans.fleet.skoala.io",
            name,
            "-n",
            KUBE_STORE_NAMESPACE,
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    )
    .await?;
    let managers = String::from_utf8(out.stdout)?;
    let managers: Vec<&str> = managers.split_whitespace().collect();
    assert!(
        managers
            .iter()
            .any(|m| m.starts_with("skoala-coordinator/admin/")),
        "applied as the operator: {managers:?}"
    );
    // A pre-approval is evaluated with the pause: once it is announced, the reconciler read
    // the object after the verb and kept the pause.
    annotate(&pf, name, "fleet.skoala.io/approved-stage=5").await?;
    event(&pf, name, "plan.preapproved", "5").await?;
    let p = pf.plan(name).await?;
    assert_eq!(p["phase"], "paused", "{p:#}");

    let out = pf.ctl().run(&["plan", "resume", name]).await?;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let o = object(kubeconfig, name).await?;
    let a = annotations(&o);
    assert_eq!(a["fleet.skoala.io/paused"], "false", "{o:#}");
    assert_eq!(
        a["fleet.skoala.io/approved-stage"], "5",
        "the other annotations stay: {o:#}"
    );
    let token = a["fleet.skoala.io/resume"].clone();
    assert!(token.is_string(), "a resume token: {o:#}");
    assert_eq!(
        o["status"]["control"]["observedResume"], token,
        "the verb's token is handled already: {o:#}"
    );
    let p = pf.wait_phase(name, &["succeeded"], PLAN_TIMEOUT).await?;
    let kinds: Vec<String> = pf
        .events(name)
        .await?
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "plan.resumed").count(),
        1,
        "resumed once, by skoalactl: {kinds:?}\n{p:#}"
    );
    Ok(())
}
