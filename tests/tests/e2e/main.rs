//! The cross-process end-to-end tests, as modules of one test binary.
//!
//! Every test here links the whole product (coordinator, agent, executor, emulator) through
//! the testkit, so one binary per file meant linking it once per file. One binary links it
//! once; a module keeps its old file's name, so a name filter still selects one file:
//!
//! ```text
//! cargo test -p skoala-e2e --test e2e plan_rollout::
//! ```
//!
//! Tests of several files run at the same time in this one process (`--test-threads`, two by
//! default here). They share nothing that the process owns: each starts its own processes,
//! emulated clusters, ports, temporary folders and helm homes, and no test changes the
//! environment, the working directory, signal dispositions or resource limits of the test
//! process. Keep it that way: a test that needs such a change runs it in a child process.
//!
//! A new test file goes next to this one and gets a `mod` line below (the test at the end of
//! this file fails when one is missing). A second binary is only for tests that must not run
//! with these; see `tests/Cargo.toml`.

#![forbid(unsafe_code)]

mod agent_relay;
mod agent_tasks;
mod attack_agent;
mod attack_edge;
mod attack_identity;
mod cli_completion;
mod coordinator_relay;
mod coordinator_retention;
mod demo;
mod fault_disk_full;
mod fault_init;
mod fault_kill_under_load;
mod fault_partition;
mod inventory_helm;
mod link_cli;
mod link_fleet;
mod link_keepalive;
mod link_liveness;
mod link_netns;
mod link_proxy;
mod link_refusals;
mod link_renewal;
mod link_restart;
mod link_streams;
mod load_smoke;
mod metrics;
mod plan_apply;
mod plan_canary;
mod plan_check;
mod plan_control_plane;
mod plan_crash;
mod plan_gitops;
mod plan_offline;
mod plan_relay;
mod plan_rollback;
mod plan_rollout;
mod plan_window;
mod product_charts_install;
mod sim_faults;
mod sim_helm;
mod sim_kube;
mod sim_validation;
mod store_kube;
mod store_kube_plans;
mod store_kube_secrets;
mod store_kube_serve;
mod store_migrate;
mod test_charts_install;
mod test_charts_repo;
mod upgrade_backups;
mod upgrade_basic;
mod upgrade_cli_ops;
mod upgrade_crash;
mod upgrade_crds;
mod upgrade_cross_helm;
mod upgrade_errors;
mod upgrade_lock;
mod upgrade_rollback;
mod upgrade_upload;

/// A file in this folder without its `mod` line would compile into nothing and its tests would
/// silently never run; a `.rs` file directly in `tests/tests/` would be a binary of its own that
/// links the whole product again.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let main = std::fs::read_to_string(here.join("main.rs")).expect("read main.rs");
    let mut missing = vec![];
    for entry in std::fs::read_dir(&here).expect("list tests/e2e") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(module) = name.strip_suffix(".rs")
            && module != "main"
            && !main.lines().any(|l| l == format!("mod {module};"))
        {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "add `mod` lines to tests/e2e/main.rs for {missing:?}"
    );

    let top = here.parent().expect("tests/tests");
    let binaries: Vec<String> = std::fs::read_dir(top)
        .expect("list tests/tests")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    assert!(
        binaries.is_empty(),
        "{binaries:?} in tests/tests/ would each link the product again: make them modules \
         of tests/e2e/ (or see tests/Cargo.toml for a second binary)"
    );
}
