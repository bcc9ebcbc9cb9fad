//! `skoalactl completion bash|zsh|fish` as an operator uses it, and `skoalactl` in a pipeline
//! whose reader goes away early. Bash is on every machine this suite runs on, so the bash
//! script is not just generated but loaded into a real bash and asked for completions; zsh and
//! fish are not installed here, so their scripts are checked for what each shell needs to
//! load them.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};

use skoala_e2e::tools::our_bin;

fn completion(shell: &str) -> String {
    let out = Command::new(our_bin("skoalactl"))
        .args(["completion", shell])
        .output()
        .expect("run skoalactl completion");
    assert!(out.status.success(), "completion {shell}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 script")
}

/// What bash offers after `words` (the last one being completed), with the script loaded.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_skoalactl skoalactl '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words
            .get(words.len().wrapping_sub(2))
            .copied()
            .unwrap_or(""),
    );
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &program])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "bash: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_plan_verbs_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("skoalactl.bash");
    std::fs::write(&script, completion("bash")).expect("write the script");

    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(syntax.status.success(), "bash -n: {syntax:?}");

    let top = bash_completes(&script, &["skoalactl", "pl"]);
    assert_eq!(top, vec!["plan".to_string()], "skoalactl pl<TAB>");

    let verbs = bash_completes(&script, &["skoalactl", "plan", ""]);
    for verb in [
        "apply", "create", "list", "get", "check", "watch", "approve", "pause", "resume", "abort",
        "rollback",
    ] {
        assert!(
            verbs.iter().any(|v| v == verb),
            "skoalactl plan <TAB> lacks {verb}: {verbs:?}"
        );
    }

    let flags = bash_completes(&script, &["skoalactl", "plan", "create", "--"]);
    for flag in ["--version", "--window", "--canary", "--max-concurrency"] {
        assert!(
            flags.iter().any(|f| f == flag),
            "skoalactl plan create --<TAB> lacks {flag}: {flags:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_are_loadable_by_their_shells() {
    let zsh = completion("zsh");
    assert!(
        zsh.starts_with("#compdef skoalactl"),
        "zsh loads a completion file by its #compdef line: {}",
        zsh.lines().next().unwrap_or("")
    );
    assert!(zsh.contains("'plan:"), "zsh script lists the plan command");

    let fish = completion("fish");
    let completes = fish
        .lines()
        .filter(|l| l.starts_with("complete -c skoalactl"))
        .count();
    assert!(completes > 50, "fish script has {completes} complete lines");
    assert!(
        fish.lines()
            .any(|l| l.starts_with("complete -c skoalactl") && l.contains("-a \"check\"")),
        "fish script offers plan check"
    );

    let unknown = Command::new(our_bin("skoalactl"))
        .args(["completion", "tcsh"])
        .output()
        .expect("run skoalactl");
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("tcsh") && stderr.contains("bash"),
        "names the bad value and the good ones: {stderr}"
    );
}

/// `skoalactl … | head -1`: the reader closes the pipe early. The tool must end like any Unix
/// tool (quietly, by SIGPIPE), not panic with a backtrace about a broken pipe.
#[test]
fn a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    // The reader is gone before skoalactl writes a byte: every write fails with EPIPE.
    drop(reader);
    let out = Command::new(our_bin("skoalactl"))
        .args(["completion", "bash"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run skoalactl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "ended by SIGPIPE: {:?}, stderr: {stderr}",
        out.status
    );
}
