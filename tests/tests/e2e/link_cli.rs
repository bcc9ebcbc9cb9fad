//! `skoala-coordinator init` and `skoalactl` as an operator meets them: files and modes, clear
//! errors when something is wrong, tokens that never show their secret twice.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use skoala_e2e::fleet::Coordinator;
use skoala_e2e::fleet::raw;
use skoala_e2e::tools::our_bin;
use skoala_support::admin_config::AdminConfig;

#[test]
fn init_keeps_secrets_private_and_refuses_to_replace_a_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let init = |extra: &[&str]| {
        Command::new(our_bin("skoala-coordinator"))
            .arg("init")
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .output()
            .expect("run init")
    };
    let first = init(&["--san", "fleet.example.com"]);
    assert!(first.status.success(), "{first:?}");
    for secret in ["admin.yaml", "ca-key.pem", "server-key.pem"] {
        let mode = std::fs::metadata(data.join(secret))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} must be 0600");
    }
    let config = AdminConfig::load(&data.join("admin.yaml")).expect("admin.yaml parses");
    assert_eq!(config.endpoint, "https://fleet.example.com:7443");
    let ca_before = std::fs::read(data.join("ca.pem")).expect("ca");

    let again = init(&[]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already holds a fleet CA") && stderr.contains("--overwrite-ca"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("ca.pem")).expect("ca"),
        ca_before,
        "the CA is untouched"
    );

    let forced = init(&["--overwrite-ca"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read(data.join("ca.pem")).expect("ca"), ca_before);
}

#[tokio::test]
async fn skoalactl_says_what_is_wrong() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = ctl
        .with_endpoint(&format!("https://127.0.0.1:{port}"))
        .run(&["clusters"])
        .await
        .expect("run");
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!(
            "cannot reach coordinator at https://127.0.0.1:{port}: connection refused"
        )),
        "{}",
        out.stderr
    );

    // An admin certificate from another CA: the coordinator refuses it.
    let mut forged = AdminConfig::load(&coord.admin_config()).expect("admin.yaml");
    let foreign = raw::admin_creds_from(&raw::foreign_ca().expect("ca")).expect("creds");
    forged.client_certificate = foreign.cert_pem;
    forged.client_key = foreign.key_pem;
    let forged_path = coord.scratch().join("forged.yaml");
    forged.save(&forged_path).expect("save");
    let out = ctl
        .with_config(forged_path)
        .run(&["clusters"])
        .await
        .expect("run");
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("coordinator rejected the admin certificate"),
        "{}",
        out.stderr
    );

    // A config whose CA is not the fleet's: skoalactl cannot verify the coordinator.
    let mut wrong_ca = AdminConfig::load(&coord.admin_config()).expect("admin.yaml");
    wrong_ca.certificate_authority = raw::foreign_ca().expect("ca").cert_pem().to_string();
    let wrong_path = coord.scratch().join("wrong-ca.yaml");
    wrong_ca.save(&wrong_path).expect("save");
    let out = ctl
        .with_config(wrong_path)
        .run(&["clusters"])
        .await
        .expect("run");
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("cannot verify the coordinator's certificate"),
        "{}",
        out.stderr
    );

    // A config that does not exist.
    let out = ctl
        .with_config(coord.scratch().join("missing.yaml"))
        .run(&["clusters"])
        .await
        .expect("run");
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}

#[tokio::test]
async fn tokens_are_shown_once_and_listed_without_secrets() {
    let coord = Coordinator::start().await.expect("coordinator");
    let ctl = coord.ctl();
    let token = ctl
        .ok(&[
            "token",
            "create",
            "--ttl",
            "30m",
            "--uses",
            "3",
            "--description",
            "prod-eu",
        ])
        .await
        .expect("create")
        .trim()
        .to_string();
    let (id, secret) = token.split_once('.').expect("id.secret");

    let list = ctl.json(&["token", "list"]).await.expect("list");
    let text = list.to_string();
    assert!(
        !text.contains(secret),
        "token list must not show the secret"
    );
    let entry = &list.as_array().expect("array")[0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["usesLeft"], 3);
    assert_eq!(entry["description"], "prod-eu");

    let table = ctl.ok(&["token", "list"]).await.expect("table");
    assert!(table.contains(id) && table.contains("valid"), "{table}");

    ctl.ok(&["token", "revoke", id]).await.expect("revoke");
    let list = ctl.json(&["token", "list"]).await.expect("list");
    assert_eq!(list[0]["revoked"], true);

    let out = ctl
        .run(&["token", "revoke", "ffffffffffff"])
        .await
        .expect("run");
    assert!(!out.success);
    assert!(
        out.stderr.contains("no join token with id"),
        "{}",
        out.stderr
    );

    let audit = ctl.audit().await.expect("audit");
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["token.created", "token.revoked"]);
    assert!(
        !serde_json::to_string(&audit)
            .expect("json")
            .contains(secret)
    );
}
