//! Issue 14, findings 2, 3, 5 and 6: attacks on identity. A real coordinator and real agents;
//! the attacker is a raw tonic client (the real agent would refuse to misbehave like this).
//! Each test asserts the attack is refused with a clear error, that nothing was lost (the real
//! agent keeps its session, the store keeps the cluster as it was) and that the refusal is
//! audited once.

use std::time::Duration;

use serde_json::Value;
use skoala_e2e::fleet::raw::{self, RawSession, hello};
use skoala_e2e::fleet::{
    AGENT_NAMESPACE, Agent, AgentOptions, Coordinator, Ctl, FLEET_TIMEOUT, prepare_cluster,
};
use skoala_e2e::wait;
use skoala_proto::v1::agent_gateway_client::AgentGatewayClient;
use skoala_proto::v1::{ClusterIdentity, RegisterRequest, agent_message};
use tonic::Code;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The row of the cluster named `name` in `skoalactl clusters -o json`.
async fn row(ctl: &Ctl, name: &str) -> Value {
    ctl.clusters()
        .await
        .expect("clusters")
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster named {name}"))
}

/// How many audit entries of `kind` there are.
async fn count(ctl: &Ctl, kind: &str) -> usize {
    ctl.audit_of(kind).await.expect("audit").len()
}

/// Uses left on join token `token` (`skoalactl token list -o json`).
async fn uses_left(ctl: &Ctl, token: &str) -> u64 {
    let id = token.split_once('.').expect("id.secret").0;
    let tokens = ctl.json(&["token", "list"]).await.expect("token list");
    tokens
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == id)
        .and_then(|t| t["usesLeft"].as_u64())
        .expect("the token is listed")
}

/// Opens a raw session with `creds` and returns how it ended (refused at once, or closed).
async fn session_status(
    coord: &Coordinator,
    creds: &raw::Creds,
    cluster_id: &str,
) -> tonic::Status {
    match RawSession::open(coord, Some(creds), hello(cluster_id))
        .await
        .expect("connect")
    {
        Err(s) => s,
        Ok(mut s) => s.closing_status(CLOSE_TIMEOUT).await.expect("closed"),
    }
}

/// Finding 2: a peer holding a join token (even the very token the victim joined with) tries to
/// register a cluster id that is already registered and connected. Without the defence it got
/// a certificate for the victim's identity, renamed it and kicked the real agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holder_cannot_take_over_a_registered_cluster() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let clusters = skoala_sim::start_clusters(1, "victim")
        .await
        .expect("cluster");
    prepare_cluster(&clusters[0]).await.expect("namespace");
    // Two uses: the victim spends one, and a use left is what the attack needs.
    let shared = ctl.token(2, "1h").await.expect("token");
    let mut agent = Agent::start(
        &coord,
        &clusters[0],
        Some(&shared),
        AgentOptions::named("victim").label("tier", "prod"),
    )
    .expect("agent");
    let before = ctl
        .wait_connected("victim", true)
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let id = before["id"].as_str().expect("id").to_string();
    let fresh = ctl.token(1, "1h").await.expect("token");

    for (token, what) in [
        (&fresh, "a fresh token"),
        (&shared, "the victim's own token"),
    ] {
        let status = raw::register(&coord, token, &id, "attacker")
            .await
            .err()
            .unwrap_or_else(|| panic!("registering over a live cluster with {what} must fail"));
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(
            status.message().contains("already registered"),
            "{what}: {status:?}"
        );
    }

    // Nothing was lost: same name, labels and certificate; the agent never lost its session.
    let after = row(&ctl, "victim").await;
    for field in ["id", "labels", "certificateSerial", "registered"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    assert_eq!(after["connected"], true);
    assert!(
        ctl.clusters()
            .await
            .expect("clusters")
            .iter()
            .all(|c| c["name"] != "attacker")
    );
    let log = agent.log();
    assert!(
        !log.contains("lost the coordinator session"),
        "the real agent was kicked:\n{log}"
    );
    assert_eq!(
        log.matches("connected to the coordinator").count(),
        1,
        "{log}"
    );
    // The refusals spent nothing.
    assert_eq!(uses_left(&ctl, &fresh).await, 1);
    assert_eq!(uses_left(&ctl, &shared).await, 1);
    // Audited once per attempt; no re-registration happened.
    let refused = ctl
        .audit_of("register.takeover_refused")
        .await
        .expect("audit");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e["clusterId"] == id.as_str()));
    assert_eq!(count(&ctl, "cluster.reregistered").await, 0);
    agent.kill();
}

/// Finding 2: the control plane's id is the coordinator's own; a worker registered under it
/// would write backups and report inventory in the control plane's name.
#[tokio::test]
async fn nobody_registers_as_the_control_plane() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl.token(1, "1h").await.expect("token");
    let status = raw::register(&coord, &token, "control-plane", "control-plane")
        .await
        .err()
        .expect("the control plane's id is reserved");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("reserved"), "{status:?}");
    assert_eq!(uses_left(&ctl, &token).await, 1);
    let clusters = ctl.clusters().await.expect("clusters");
    assert!(
        clusters
            .iter()
            .all(|c| c["controlPlane"] == true || c["id"] != "control-plane"),
        "{clusters:?}"
    );
    let entries = ctl.audit_of("register.bad_identity").await.expect("audit");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(count(&ctl, "cluster.registered").await, 0);
}

/// Finding 2, the legitimate paths: an agent proving its current key may register again (its
/// old certificate is revoked at once), and an operator's `cluster rejoin` lets a cluster that
/// lost its key join again with a token — here the real agent, its identity Secret deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registration_needs_the_old_key_or_an_operator() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl.token(3, "1h").await.expect("token");

    // Proof of the old key: the current certificate presented on Register.
    let old = raw::register(&coord, &token, "uid-moving", "moving")
        .await
        .expect("register");
    let mut live = RawSession::open(&coord, Some(&old), hello("uid-moving"))
        .await
        .expect("connect")
        .expect("session");
    let channel = raw::channel(&coord, Some(&old)).await.expect("channel");
    let new = raw::register_on(channel, &token, "uid-moving", "moving")
        .await
        .expect("re-registration proving the old key");
    let status = live.closing_status(CLOSE_TIMEOUT).await.expect("closed");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = session_status(&coord, &old, "uid-moving").await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    RawSession::open(&coord, Some(&new), hello("uid-moving"))
        .await
        .expect("connect")
        .expect("the new certificate is good");
    ctl.wait_audit("cluster.reregistered", "proved")
        .await
        .expect("audited");

    // The real agent loses its identity Secret: refused (the cluster is live), until an
    // operator allows it back.
    let clusters = skoala_sim::start_clusters(1, "lost")
        .await
        .expect("cluster");
    prepare_cluster(&clusters[0]).await.expect("namespace");
    let mut agent = Agent::start(
        &coord,
        &clusters[0],
        Some(&token),
        AgentOptions::named("lost"),
    )
    .expect("agent");
    let first = ctl
        .wait_connected("lost", true)
        .await
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    agent.kill();
    delete_identity_secret(&clusters[0]).await;
    agent.restart().expect("restart");
    wait::until("the agent to give up", FLEET_TIMEOUT, || async {
        agent.log().contains("already registered").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    ctl.wait_audit("register.takeover_refused", "lost")
        .await
        .expect("audited");
    let out = ctl
        .ok(&["cluster", "rejoin", "lost"])
        .await
        .expect("rejoin");
    assert!(out.contains("lost"), "{out}");
    agent.kill();
    agent.restart().expect("restart");
    wait::until("the agent to register again", FLEET_TIMEOUT, || async {
        let row = row(&ctl, "lost").await;
        (row["connected"] == true && row["certificateSerial"] != first["certificateSerial"])
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let after = row(&ctl, "lost").await;
    assert_eq!(after["id"], first["id"]);
    assert_eq!(after["registered"], first["registered"]);
    ctl.wait_audit("cluster.rejoin_allowed", "lost")
        .await
        .expect("audited");
    agent.kill();
}

/// A Register call with any identity and CSR (the real agent refuses to send such names and
/// always sends a good CSR).
async fn register_as(
    coord: &Coordinator,
    token: &str,
    identity: ClusterIdentity,
    csr_pem: Option<&str>,
) -> Result<(), tonic::Status> {
    let channel = raw::channel(coord, None)
        .await
        .map_err(|e| tonic::Status::unavailable(raw::chain(&e)))?;
    let csr_pem = match csr_pem {
        Some(csr) => csr.to_string(),
        None => {
            skoala_coordinator::pki::generate_csr(&identity.cluster_id)
                .expect("csr")
                .0
        }
    };
    AgentGatewayClient::new(channel)
        .register(RegisterRequest {
            token: token.to_string(),
            csr_pem,
            identity: Some(identity),
            agent_version: "raw".into(),
        })
        .await
        .map(|_| ())
}

fn identity(id: &str, name: &str, labels: &[(&str, &str)]) -> ClusterIdentity {
    ClusterIdentity {
        cluster_id: id.to_string(),
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// A Register call with any CSR.
async fn register_with_csr(
    coord: &Coordinator,
    token: &str,
    cluster_id: &str,
    csr_pem: &str,
) -> Result<(), tonic::Status> {
    register_as(coord, token, identity(cluster_id, "", &[]), Some(csr_pem)).await
}

/// Finding 5: ids, names and labels reach operators' terminals, plan selectors and file names.
/// Escape sequences, the control plane's name, upper case, oversized strings, bad labels and a
/// second cluster with a taken name are refused at Register and in a Hello; nothing of them
/// reaches the store, and `skoalactl` escapes control characters in what it prints.
#[tokio::test]
async fn odd_names_and_labels_are_refused() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl.token(20, "1h").await.expect("token");
    let creds = raw::register(&coord, &token, "uid-first", "first")
        .await
        .expect("a good name registers");
    let long = "a".repeat(300);
    let cases = [
        identity("uid-esc", "evil\u{1b}[2J\u{1b}]0;pwned\u{7}", &[]),
        identity("uid-upper", "Prod", &[]),
        identity("uid-long", &long, &[]),
        identity("UID-Upper", "fine", &[]),
        identity("uid\u{1b}[1m", "fine-2", &[]),
        identity("uid-cp", "control-plane", &[]),
        identity("uid-label", "labelled", &[("tier", "canary\u{1b}[0m")]),
        identity("uid-key", "keyed", &[("-bad", "x")]),
    ];
    for case in &cases {
        let status = register_as(&coord, &token, case.clone(), None)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{case:?}: {status:?}");
        assert!(!status.message().contains('\u{1b}'), "{status:?}");
    }
    let status = register_as(&coord, &token, identity("uid-twin", "first", &[]), None)
        .await
        .expect_err("a taken name is refused");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // A Hello cannot rename into any of that either.
    let mut hello_msg = hello("uid-first");
    if let Some(agent_message::Body::Hello(h)) = &mut hello_msg.body {
        h.identity = Some(identity("uid-first", "0\u{1b}[2J", &[("ring", "0")]));
    }
    let _session = RawSession::open(&coord, Some(&creds), hello_msg)
        .await
        .expect("connect")
        .expect("the session itself is fine");
    ctl.wait_audit("cluster.relabel_refused", "first")
        .await
        .expect("audited");

    // Nothing reached the store: one cluster, as registered; no token use spent.
    let clusters = ctl.clusters().await.expect("clusters");
    let workers: Vec<&Value> = clusters
        .iter()
        .filter(|c| c["controlPlane"] != true)
        .collect();
    assert_eq!(workers.len(), 1, "{clusters:?}");
    assert_eq!(workers[0]["name"], "first");
    assert_eq!(workers[0]["labels"], serde_json::json!({}));
    assert_eq!(uses_left(&ctl, &token).await, 19);
    assert_eq!(count(&ctl, "register.bad_identity").await, cases.len());
    assert_eq!(count(&ctl, "register.name_taken").await, 1);
    assert_eq!(count(&ctl, "cluster.relabel_refused").await, 1);
    // What skoalactl prints holds no escape sequence, whatever was stored (a token's
    // description is the operator's own free text).
    ctl.ok(&[
        "token",
        "create",
        "--description",
        "\u{1b}[2Jhidden\u{1b}[8m",
    ])
    .await
    .expect("token");
    for args in [&["audit"][..], &["token", "list"], &["clusters"]] {
        let out = ctl.ok(args).await.expect("skoalactl");
        assert!(
            !out.contains('\u{1b}'),
            "{args:?} printed an escape:\n{out}"
        );
    }
    let out = ctl.ok(&["token", "list"]).await.expect("token list");
    assert!(out.contains("\\u{1b}[2Jhidden"), "{out}");
}

/// Finding 6: Register checks the token (and whether the cluster may register at all) before
/// it does any work for the caller: a made-up token with a CSR the CA would have to parse and
/// sign is refused for the token; without the defence the CSR was handled first.
#[tokio::test]
async fn refusals_come_before_any_work() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl.token(2, "1h").await.expect("token");
    let id = token.split_once('.').expect("id.secret").0;
    let made_up = format!("{id}.not-the-secret");
    let status = register_with_csr(&coord, &made_up, "uid-cheap", "not a CSR")
        .await
        .expect_err("a made-up token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A cluster that may not register is refused before its CSR is looked at, too.
    raw::register(&coord, &token, "uid-taken", "taken")
        .await
        .expect("register");
    let other = ctl.token(1, "1h").await.expect("token");
    let status = register_with_csr(&coord, &other, "uid-taken", "not a CSR")
        .await
        .expect_err("a live cluster is not registered again");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    assert_eq!(uses_left(&ctl, &token).await, 1);
    assert_eq!(uses_left(&ctl, &other).await, 1);
    assert_eq!(count(&ctl, "register.unknown_token").await, 1);
    assert_eq!(count(&ctl, "register.takeover_refused").await, 1);
    assert!(
        count(&ctl, "register.bad_csr").await == 0,
        "the CSR was handled before the token or the cluster was checked"
    );
    let clusters = ctl.clusters().await.expect("clusters");
    assert!(
        clusters.iter().all(|c| c["id"] != "uid-cheap"),
        "{clusters:?}"
    );
}

/// Finding 3: one admin identity per operator, with an expiry, revoked by name and checked on
/// every call; audit lines name the operator. Without the defence any certificate the fleet CA
/// signed with the admin URI was admin for its whole life, and nothing could revoke it.
#[tokio::test]
async fn admins_are_per_operator_and_revoked_by_name() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let path = coord.scratch().join("alice.admin.yaml");
    let out = ctl
        .ok(&[
            "admin",
            "create",
            "alice",
            "--expires",
            "7d",
            "--out",
            path.to_str().expect("utf-8"),
        ])
        .await
        .expect("admin create");
    assert!(out.contains("alice"), "{out}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the credential is a secret");
    }
    let alice = ctl.with_config(path.clone());
    let token = alice.token(1, "1h").await.expect("alice is an admin");
    let token_id = token.split_once('.').expect("id.secret").0.to_string();
    let created = ctl
        .wait_audit("token.created", &token_id)
        .await
        .expect("audited");
    assert!(
        created["peer"]
            .as_str()
            .is_some_and(|p| p.contains("admin alice")),
        "{created}"
    );
    let second = coord.scratch().join("alice-2.admin.yaml");
    let twice = ctl
        .run(&[
            "admin",
            "create",
            "alice",
            "--out",
            second.to_str().expect("utf-8"),
        ])
        .await
        .expect("run");
    assert!(!twice.success, "a live admin name is unique");
    assert!(twice.stderr.contains("exists"), "{}", twice.stderr);
    assert!(!second.exists());

    let admins = ctl.json(&["admin", "list"]).await.expect("admin list");
    let mut names: Vec<&str> = admins
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bootstrap"], "{admins}");

    ctl.ok(&["admin", "revoke", "alice"]).await.expect("revoke");
    let refused = alice.run(&["clusters"]).await.expect("run");
    assert!(!refused.success, "a revoked admin is refused");
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);

    // A certificate the fleet CA signed with the admin URI, never given to an operator (what
    // a leaked CA signing or an old copy of a key would be): refused.
    let ca = raw::fleet_ca(&coord).expect("ca");
    let stray = raw::admin_creds_from(&ca).expect("creds");
    let status = raw::admin_client(&coord, Some(&stray))
        .await
        .expect("channel")
        .list_clusters(skoala_proto::v1::ListClustersRequest {})
        .await
        .expect_err("an unrecorded admin certificate is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Nothing lost: the bootstrap admin still works, alice's token is still there, and each
    // refusal is audited once.
    assert_eq!(uses_left(&ctl, &token).await, 1);
    assert_eq!(count(&ctl, "admin.certificate_revoked").await, 1);
    assert_eq!(count(&ctl, "admin.unknown_certificate").await, 1);
    let revoked = ctl
        .wait_audit("admin.revoked", "alice")
        .await
        .expect("audited");
    assert!(
        revoked["peer"]
            .as_str()
            .is_some_and(|p| p.contains("admin bootstrap")),
        "{revoked}"
    );
}

async fn delete_identity_secret(cluster: &skoala_sim::Cluster) {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};
    let client = cluster.client().await.expect("client");
    let secrets: Api<Secret> = Api::namespaced(client, AGENT_NAMESPACE);
    secrets
        .delete("skoala-fleet-agent-identity", &DeleteParams::default())
        .await
        .expect("delete the identity Secret");
}

/// Finding 5: a joined agent (or whoever holds its key) restarts with labels that put its
/// cluster into a plan's canary selector. Labels are the operator's: the agent's new labels
/// are only its *proposal*, shown and audited once, and the plan does not select the cluster;
/// the operator's `skoalactl cluster label` does. Without the defence the Hello relabelled
/// the cluster and the plan took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_relabel_itself_into_a_plan_only_an_operator_can() {
    use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
    // Wednesday noon and a Saturday window: an applied plan waits, nothing is upgraded.
    let mut pf = PlanFleet::start(PlanFleetOptions {
        workers: 2,
        clock: Some("2026-11-25T12:00:00Z".into()),
        ..Default::default()
    })
    .await
    .expect("fleet");
    let ctl = pf.ctl();
    let plan = pf.plan_yaml(
        "canaries",
        "0.19.2",
        "window: {days: [Sat], startTime: \"02:00\", endTime: \"04:00\", timeZone: UTC}\nclusters: {matchLabels: {ring: canary}}",
    );

    let agent = &mut pf.fleet.agents[1];
    agent.add_args(&["--label", "ring=canary"]);
    agent.restart().expect("restart");
    let proposed = wait::until(
        "work-2's hello with its new label",
        FLEET_TIMEOUT,
        || async {
            let c = ctl
                .clusters()
                .await
                .ok()?
                .into_iter()
                .find(|c| c["name"] == "work-2")?;
            (c["connected"] == true
                && (c["proposed"]["labels"]["ring"] == "canary" || c["labels"]["ring"] == "canary"))
                .then_some(c)
        },
    )
    .await
    .expect("the agent reconnected with its new label");
    assert_eq!(
        proposed["labels"],
        serde_json::json!({"fleet": "test", "index": "2"}),
        "an agent's hello does not change its cluster's labels: {proposed:#}"
    );
    assert_eq!(proposed["proposed"]["name"], "work-2");
    assert_eq!(proposed["proposed"]["labels"]["ring"], "canary");
    let table = ctl.ok(&["clusters"]).await.expect("clusters");
    let line = table
        .lines()
        .find(|l| l.starts_with("work-2 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(table.contains("PROPOSED"), "{table}");
    assert!(
        line.contains("labels fleet=test,index=2,ring=canary"),
        "{table}"
    );
    ctl.wait_audit("cluster.identity_proposed", "ring")
        .await
        .expect("the proposal is audited");

    let refused = pf.apply(&plan).await.expect("apply");
    assert!(
        !refused.success
            && refused
                .stderr
                .contains("spec.clusters: the selection matches no registered working cluster"),
        "the agent's own label must not select it:\n{}\n{}",
        refused.stdout,
        refused.stderr
    );

    // The operator's word: validated, unique names, audited with the operator's name.
    let bad = ctl
        .run(&["cluster", "label", "work-2", "Ring=\u{1b}[2J"])
        .await
        .expect("run");
    assert!(
        !bad.success && bad.stderr.contains("label"),
        "{}",
        bad.stderr
    );
    let taken = ctl
        .run(&["cluster", "rename", "work-2", "work-1"])
        .await
        .expect("run");
    assert!(
        !taken.success && taken.stderr.contains("taken"),
        "{}",
        taken.stderr
    );
    ctl.ok(&["cluster", "label", "work-2", "ring=canary", "index-"])
        .await
        .expect("label");
    let labelled = row(&ctl, "work-2").await;
    assert_eq!(
        labelled["labels"],
        serde_json::json!({"fleet": "test", "ring": "canary"}),
        "{labelled:#}"
    );
    assert!(
        labelled["proposed"]["labels"]["index"] == "2",
        "the proposal differs (index) and stays: {labelled:#}"
    );
    let audited = ctl
        .wait_audit("cluster.relabelled", "ring")
        .await
        .expect("the operator's change is audited");
    assert!(
        audited["peer"]
            .as_str()
            .is_some_and(|p| p.contains("admin bootstrap")),
        "audited with the operator's name: {audited:#}"
    );

    let applied = pf.apply(&plan).await.expect("apply");
    assert!(applied.success, "{}", applied.stderr);
    let stored = pf.plan("canaries").await.expect("plan");
    let names: Vec<&str> = stored["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .filter(|n| *n != "control-plane")
        .collect();
    assert_eq!(names, ["work-2"], "{stored:#}");

    assert_eq!(count(&ctl, "cluster.identity_proposed").await, 1);
    assert_eq!(count(&ctl, "cluster.relabelled").await, 1);
    // The agent kept its session throughout.
    assert!(row(&ctl, "work-2").await["connected"] == true);
}
