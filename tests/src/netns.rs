//! Linux network namespaces for tests that need a real network boundary: an "agent side" whose
//! only network is its own loopback, so nothing outside can route to it; or, with
//! [`NetNs::create_linked`], one joined to the host by a veth pair that a test can cut and
//! restore (a network partition).
//!
//! Needs root and `ip` (iproute2). A test that asks for a namespace fails loudly when it cannot
//! have one: CI must not go green without running the real thing. Namespaces are deleted on
//! drop, and namespaces left by a killed test run (their creator's pid is gone) are deleted by
//! the next run.

use std::net::Ipv4Addr;
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

    /// A fresh namespace joined to the host by a veth pair on a /30 of its own (see [`Link`]).
    pub fn create_linked() -> anyhow::Result<(Self, Link)> {
        let ns = Self::create()?;
        // The namespace's name is unique among running tests; the host end needs a name of at
        // most 15 bytes that is unique on the host.
        let suffix = ns.name.trim_start_matches(&format!("{PREFIX}-"));
        let host_if = format!("skv{}", suffix.replace('-', "x"));
        anyhow::ensure!(host_if.len() <= 15, "interface name {host_if} too long");
        let (host_ip, ns_ip) = free_subnet()?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "veth0", "netns", &ns.name,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "veth0",
        ])?;
        ip(&["-n", &ns.name, "link", "set", "veth0", "up"])?;
        let link = Link {
            host_if,
            host_ip,
            ns_ip,
        };
        Ok((ns, link))
    }

    /// Runs `program` with `args` (and `env`) inside the namespace; its stdout, or an error
    /// with its stderr unless it exits 0.
    pub async fn output(
        &self,
        program: PathBuf,
        args: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> anyhow::Result<String> {
        let mut cmd = self.command(program.clone());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| anyhow::anyhow!("run {}: {e}", program.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// The veth pair between the host and a namespace ([`NetNs::create_linked`]); removed with
/// the namespace.
#[derive(Debug)]
pub struct Link {
    /// The host end's name.
    host_if: String,
    /// The host end's address: where the namespace reaches the host.
    pub host_ip: Ipv4Addr,
    /// The namespace end's address: where the host reaches the namespace.
    pub ns_ip: Ipv4Addr,
}

impl Link {
    /// Cuts the link: the host end goes down, and every packet either way is dropped without
    /// a word (no RST, no FIN, no ICMP), as in a network partition. Connections stay open on
    /// both sides until a timeout notices.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "down"]).map(drop)
    }

    /// Restores the link after [`Link::cut`].
    pub fn restore(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "up"]).map(drop)
    }

    /// Whether the host end is up.
    pub fn is_up(&self) -> anyhow::Result<bool> {
        let out = ip(&["-o", "link", "show", &self.host_if])?;
        Ok(out.contains(",UP") || out.contains("<UP"))
    }
}

/// A /30 in 10.231.0.0/16 that no interface on the host uses: (host end, namespace end).
fn free_subnet() -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    // Start where this process's pid points, so concurrent test processes rarely race, and
    // past the subnets this process took already (their addresses may not be listed yet).
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() as usize + 4 * TAKEN.fetch_add(1, Ordering::Relaxed) as usize;
    for k in (0..16384).map(|i| (start + i) % 16384) {
        let base = (k * 4) as u32;
        let host = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 231, 0, 0)) + base + 1);
        if !used.contains(&format!("inet {host}/")) {
            let ns = Ipv4Addr::from(u32::from(host) + 1);
            return Ok((host, ns));
        }
    }
    anyhow::bail!("no free /30 in 10.231.0.0/16")
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
