//! One component process: its log file, and a life tied to ours.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{Error, Result, io};

/// A running component. Killed (SIGKILL) when dropped, and by the kernel if our process dies
/// first ([`die_with_parent`]), so a crashed test never leaves a cluster behind.
pub(crate) struct Proc {
    pub name: &'static str,
    child: tokio::process::Child,
    /// stdout and stderr, for the error when it exits early and for a failing test's message.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin args...` with its output in `dir/<name>.log`.
    pub fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Components read nothing of ours from the environment: no KUBECONFIG, no proxy.
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir);
        die_with_parent(&mut cmd);
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        Ok(Proc { name, child, log })
    }

    /// The process id, for reading its memory.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// An error if the process has exited (it never should while the cluster runs).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name,
                status: status.to_string(),
                log_tail: tail(&self.log, 3000),
            }),
            Err(e) => Err(Error::Io {
                what: format!("checking on {}", self.name),
                source: e,
            }),
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Makes a child die with its parent (Linux `PR_SET_PDEATHSIG`), so no component outlives a
/// killed test or demo.
#[allow(
    unsafe_code,
    reason = "libc has the only prctl(2); Command::pre_exec is unsafe"
)]
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; this is the
    // documented way to tie a child's life to its parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last `max` bytes of a log file (or why it cannot be read).
pub(crate) fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Resident memory of a process in bytes (`VmRSS`), 0 if it is gone.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
