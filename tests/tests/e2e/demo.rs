//! The README's first command, as a newcomer runs it (issue 6): the local fleet demo tells the
//! whole story and exits 0; with `--keep-running` it leaves the fleet up, prints the commands
//! to explore it, and a Ctrl-C from the terminal stops everything, leaving no process behind.
//!
//! `scripts/demo.sh` is `install-tools.sh` + `cargo build` + the `skoala-demo` binary; the
//! suite has done the first two already, so these tests run the binary.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use skoala_e2e::tools::our_bin;
use skoala_e2e::{signal, wait};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_the_whole_story_and_exits_0() {
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(our_bin("skoala-demo"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo finishes within 5 minutes")
    .expect("run skoala-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}: {stdout}\n{stderr}",
        out.status
    );
    // The story, in order: a plan to 0.19.2 over the relay, the late cluster flagged as skew,
    // then converged, and a clean skew report at the end.
    let story = [
        "applying a plan to 0.19.2",
        "chartSource: relay",
        "plan skoala-0-19-2: succeeded",
        "skoalactl skew flags it (exit 1)",
        "work-5    yes         version 0.19.0, control plane has 0.19.2",
        "the fleet, one version everywhere",
        "no skew: every cluster runs 0.19.2",
        "] done",
    ];
    let mut at = 0;
    for line in story {
        let found = stdout[at..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} missing (or out of order) in:\n{stdout}"));
        at += found + line.len();
    }
}

/// Every live descendant of `pid` (zombies are gone already, only not yet reaped).
fn descendants(pid: u32) -> BTreeSet<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, state)) = stat(p)
            && state != 'Z'
        {
            parent_of.push((p, ppid));
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent && found.insert(p) {
                frontier.push(p);
            }
        }
    }
    found
}

/// `(ppid, state)` from `/proc/PID/stat`; `None` once the process is gone.
fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state)| state != 'Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_running_then_ctrl_c_leaves_no_process_behind() {
    let mut demo = tokio::process::Command::new(our_bin("skoala-demo"))
        .arg("--keep-running")
        // Its own process group, as a shell gives a foreground job: Ctrl-C signals the group.
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn skoala-demo");
    let pid = demo.id().expect("a pid");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let ready = tokio::time::timeout(TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("press Ctrl-C to stop everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "the demo never said it keeps running:\n{seen}"
    );
    for command in [
        "export SKOALA_CONFIG=",
        "skoalactl clusters",
        "helm --kubeconfig",
    ] {
        assert!(seen.contains(command), "{command:?} not printed:\n{seen}");
    }

    // The fleet is up: the coordinator and an agent per cluster are its descendants.
    let fleet = descendants(pid);
    assert!(
        fleet.len() >= 6,
        "expected the coordinator and 5 agents among {fleet:?}"
    );

    // Ctrl-C: SIGINT to the foreground process group.
    signal::send(-(pid as i32), libc::SIGINT).unwrap_or_else(|e| panic!("kill -INT -{pid}: {e}"));
    // Drain the rest of its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo stops within a minute of Ctrl-C")
        .expect("wait for the demo");
    assert!(
        status.success() || status.code().is_none(),
        "the demo ended with {status}"
    );

    wait::until(
        "every process the demo started to be gone",
        Duration::from_secs(30),
        || async {
            let left: Vec<u32> = fleet.iter().copied().filter(|&p| alive(p)).collect();
            left.is_empty().then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        let left: Vec<String> = fleet
            .iter()
            .filter(|&&p| alive(p))
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ")
            })
            .collect();
        panic!("{e}; still running: {left:#?}")
    });
}
