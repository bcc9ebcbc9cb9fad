//! Linux network namespaces for tests that need a real network boundary: an "agent side" whose
//! only network is its own loopback, so nothing outside can route to it.
//!
//! Needs root and `ip` (iproute2). A test that asks for a namespace fails loudly when it cannot
//! have one: CI must not go green without running the real thing. Namespaces are deleted on
//! drop, and namespaces left by a killed test run (their creator's pid is gone) are deleted by
//! the next run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "skoala-e2e";

/// A network namespace with only `lo` (up). Deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace `skoala-e2e-<pid>-<n>`.
    pub fn create() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]).map_err(|e| {
            anyhow::anyhow!(
                "cannot create a network namespace (this test needs root and iproute2): {e}"
            )
        })?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl Into<PathBuf>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.into())
            .kill_on_drop(true);
        cmd
    }

    /// The namespace's network interfaces (`ip -o link` names).
    pub fn interfaces(&self) -> anyhow::Result<Vec<String>> {
        let out = ip(&["-n", &self.name, "-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|s| s.trim().split('@').next().unwrap_or_default().to_string())
            .collect())
    }

    /// The namespace's routes (`ip route show table all`), one per line.
    pub fn routes(&self) -> anyhow::Result<Vec<String>> {
        let out = ip(&["-n", &self.name, "route", "show", "table", "all"])?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Binds a TCP listener *inside* the namespace, for a process living outside it.
    ///
    /// A socket belongs to the namespace of the thread that created it, for life. So a helper
    /// thread enters the namespace (`setns` affects only the calling thread), binds, and hands
    /// the listener back; the helper thread then ends, the socket stays in the namespace.
    #[allow(unsafe_code, reason = "libc has the only setns(2)")]
    pub fn bind_tcp(&self, addr: &str) -> anyhow::Result<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let addr = addr.to_string();
        std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("open {path}: {e}"))?;
            // SAFETY: setns on a valid namespace fd, affecting only this short-lived thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            if rc != 0 {
                anyhow::bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(std::net::TcpListener::bind(&addr)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the setns thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes namespaces of earlier runs whose creating process is gone.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
