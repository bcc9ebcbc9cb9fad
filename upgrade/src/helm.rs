//! The helm CLI: finding it, isolating it, and speaking both majors' flags.
//!
//! [`Helm::detect`] runs `helm version` once and remembers the major (3 or 4). Every operation
//! then opens a [`HelmSession`]: a private, 0700 temporary folder used as helm's config, cache,
//! data and repository homes (`HELM_CONFIG_HOME`, `HELM_CACHE_HOME`, `HELM_DATA_HOME`,
//! `HELM_REPOSITORY_CONFIG`, `HELM_REPOSITORY_CACHE`), so parallel operations and the user's
//! `~/.config/helm` never see each other's repositories, and the working files (values, the
//! chart) live in a place that disappears with the session.
//!
//! Everything that runs helm for an operation takes a [`RunHelm`]: a [`HelmSession`] in the
//! product, a fake in the executor's unit tests.
//!
//! Flag differences handled here (helm 4 renamed or changed them):
//! - wait: helm 3 `--wait`; helm 4 `--wait=watcher` (a bare `--wait` still means watcher in
//!   4.1, but its default is `hookOnly`, so being explicit keeps the meaning if that changes).
//! - helm 4 installs with server-side apply and upgrades with `--server-side=auto` (the method
//!   of the release's previous revision), so releases installed by either major upgrade the
//!   way they were installed; we leave that default alone.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long helm may overrun its own `--timeout` before we kill it: helm's timeout bounds the
/// wait, not the chart download and API calls before it.
const OVERRUN: Duration = Duration::from_secs(120);

/// Environment variables helm still sees; everything else is cleared so the caller's
/// `HELM_*` settings cannot redirect it.
const PASS_THROUGH: &[&str] = &[
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "TMPDIR",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Bound for the quick commands (`version`, `get values`, `repo add`, ...).
pub const QUICK: Duration = Duration::from_secs(120);

/// Failures to run helm at all (a non-zero exit is not one: see [`HelmOutput`]).
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    #[error("cannot run helm at {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("helm {command} did not finish within {after:?} and was killed")]
    Timeout { command: String, after: Duration },
    #[error("`helm version` printed {output:?}, which is not a helm 3 or 4 version")]
    UnknownVersion { output: String },
    #[error("cannot create helm's private home folder: {0}")]
    Home(std::io::Error),
}

/// A helm binary, its version, and the kubeconfig it talks through.
#[derive(Clone, Debug)]
pub struct Helm {
    path: PathBuf,
    kubeconfig: PathBuf,
    version: String,
    major: u32,
}

impl Helm {
    /// Finds out which helm `path` is (`helm version --template {{.Version}}`).
    ///
    /// `kubeconfig` is the file helm talks to the cluster through; an empty path means none
    /// (helm then uses `KUBECONFIG` or, in a pod, its service account).
    pub async fn detect(
        path: impl Into<PathBuf>,
        kubeconfig: impl Into<PathBuf>,
    ) -> Result<Helm, HelmError> {
        let path = path.into();
        let home = tempfile::Builder::new()
            .prefix("skoala-helm-")
            .tempdir()
            .map_err(HelmError::Home)?;
        let out = run_raw(
            &path,
            home.path(),
            None,
            &["version".into(), "--template".into(), "{{.Version}}".into()],
            QUICK,
        )
        .await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major = parse_major(&text).ok_or(HelmError::UnknownVersion {
            output: text.chars().take(80).collect(),
        })?;
        Ok(Helm {
            path,
            kubeconfig: kubeconfig.into(),
            version: text,
            major,
        })
    }

    /// The version helm reported (`v4.1.4`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// 3 or 4.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens an isolated session (private helm homes and a work folder).
    pub fn session(&self) -> Result<HelmSession, HelmError> {
        let home = tempfile::Builder::new()
            .prefix("skoala-helm-")
            .tempdir()
            .map_err(HelmError::Home)?;
        let work = home.path().join("work");
        std::fs::create_dir(&work).map_err(HelmError::Home)?;
        Ok(HelmSession {
            helm: self.clone(),
            home,
            work,
        })
    }

    /// The flags that make `upgrade`/`rollback` wait for readiness (Jobs included).
    pub fn wait_flags(&self) -> Vec<OsString> {
        wait_flags(self.major)
    }

    /// A helm that was never run, for fakes: `version` as `helm version` would print it.
    #[cfg(test)]
    pub(crate) fn assumed(version: &str) -> Helm {
        Helm {
            path: PathBuf::from("helm"),
            kubeconfig: PathBuf::new(),
            version: version.into(),
            major: parse_major(version).expect("a helm 3 or 4 version"),
        }
    }
}

/// `--wait` per helm major.
pub(crate) fn wait_flags(major: u32) -> Vec<OsString> {
    let wait = if major >= 4 {
        "--wait=watcher"
    } else {
        "--wait"
    };
    vec![wait.into(), "--wait-for-jobs".into()]
}

/// `--timeout` in helm's duration syntax.
pub(crate) fn timeout_flag(t: Duration) -> OsString {
    format!("--timeout={}s", t.as_secs().max(1)).into()
}

fn parse_major(version: &str) -> Option<u32> {
    let major: u32 = version.strip_prefix('v')?.split('.').next()?.parse().ok()?;
    (3..=4).contains(&major).then_some(major)
}

/// The result of one helm run that started.
#[derive(Debug)]
pub struct HelmOutput {
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// Unredacted: callers must pass it through a [`crate::redact::Redactor`] before showing it.
    pub stderr: String,
}

impl HelmOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// How helm ended, for messages: `exit code 1`, or `killed by a signal`.
    pub fn exit(&self) -> String {
        match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".into(),
        }
    }
}

/// Runs helm for one operation. [`HelmSession`] is the real one; the executor's unit tests put
/// a fake helm behind it.
pub trait RunHelm: Send + Sync {
    /// The helm that runs: its version and per-major flags.
    fn helm(&self) -> &Helm;

    /// A private folder for the operation's values files and charts.
    fn work_dir(&self) -> &Path;

    /// Runs helm with `args`, bounded by `timeout` (plus a margin for commands that carry
    /// their own `--timeout`).
    fn run(
        &self,
        args: &[OsString],
        timeout: Duration,
    ) -> impl Future<Output = Result<HelmOutput, HelmError>> + Send;
}

/// Private helm homes and a work folder for one operation; removed on drop.
pub struct HelmSession {
    helm: Helm,
    home: tempfile::TempDir,
    work: PathBuf,
}

impl HelmSession {
    /// The helm this session runs.
    pub fn helm(&self) -> &Helm {
        &self.helm
    }

    /// A private folder (inside a 0700 folder) for values files and charts.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Runs helm with `args` (plus `--kubeconfig`), bounded by `timeout` (+ an overrun margin
    /// for commands that carry their own `--timeout`).
    pub async fn run(&self, args: &[OsString], timeout: Duration) -> Result<HelmOutput, HelmError> {
        run_raw(
            &self.helm.path,
            self.home.path(),
            Some(&self.helm.kubeconfig),
            args,
            timeout + OVERRUN,
        )
        .await
    }
}

impl RunHelm for HelmSession {
    fn helm(&self) -> &Helm {
        HelmSession::helm(self)
    }

    fn work_dir(&self) -> &Path {
        HelmSession::work_dir(self)
    }

    fn run(
        &self,
        args: &[OsString],
        timeout: Duration,
    ) -> impl Future<Output = Result<HelmOutput, HelmError>> + Send {
        HelmSession::run(self, args, timeout)
    }
}

/// Points helm's configuration, cache, data and repository files into `home`, so that a run
/// reads and writes no helm state but its own (not the user's, not another operation's).
pub fn isolate_home<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env(
            "HELM_REPOSITORY_CONFIG",
            home.join("config/repositories.yaml"),
        )
        .env("HELM_REPOSITORY_CACHE", home.join("cache/repository"))
}

async fn run_raw(
    path: &Path,
    home: &Path,
    kubeconfig: Option<&Path>,
    args: &[OsString],
    timeout: Duration,
) -> Result<HelmOutput, HelmError> {
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    isolate_home(&mut cmd, home)
        .env("HELM_DRIVER", "secret")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Passed through: proxies and CA bundles for reaching a chart repository, and the
    // in-cluster API location (an agent running in a pod has no kubeconfig file).
    for var in PASS_THROUGH {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    match kubeconfig {
        Some(kc) if !kc.as_os_str().is_empty() => {
            cmd.arg(OsStr::new("--kubeconfig")).arg(kc);
        }
        // No kubeconfig given: helm finds the cluster as kubectl would (KUBECONFIG, or the
        // pod's service account).
        _ => {
            if let Some(v) = std::env::var_os("KUBECONFIG") {
                cmd.env("KUBECONFIG", v);
            }
        }
    }
    let child = cmd.spawn().map_err(|source| HelmError::Spawn {
        path: path.to_path_buf(),
        source,
    })?;
    let command = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(HelmOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(source)) => Err(HelmError::Spawn {
            path: path.to_path_buf(),
            source,
        }),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => Err(HelmError::Timeout {
            command,
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reads_as_prose() {
        let out = |code| HelmOutput {
            code,
            stdout: Vec::new(),
            stderr: String::new(),
        };
        assert_eq!(out(Some(1)).exit(), "exit code 1");
        assert_eq!(out(None).exit(), "killed by a signal");
    }

    #[test]
    fn majors() {
        assert_eq!(parse_major("v4.1.4"), Some(4));
        assert_eq!(parse_major("v3.17.3"), Some(3));
        assert_eq!(parse_major("v2.16.0"), None);
        assert_eq!(parse_major("4.1.4"), None);
    }

    #[test]
    fn wait_flags_per_major() {
        assert_eq!(wait_flags(3), ["--wait", "--wait-for-jobs"]);
        assert_eq!(wait_flags(4), ["--wait=watcher", "--wait-for-jobs"]);
        assert_eq!(timeout_flag(Duration::from_secs(90)), "--timeout=90s");
    }
}
