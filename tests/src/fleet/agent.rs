//! A `skoala-agent` process for one emulated cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::coordinator::Coordinator;
use super::{die_with_parent, tail};
use crate::tools::{our_bin, tool};

/// How an agent is started.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--cluster-name`.
    pub name: String,
    /// `--label k=v` each.
    pub labels: Vec<(String, String)>,
    /// Extra environment (e.g. `HTTPS_PROXY`).
    pub env: Vec<(String, String)>,
    /// Extra flags.
    pub args: Vec<String>,
    /// `--coordinator` instead of the coordinator's own endpoint (e.g. a name only a proxy
    /// resolves).
    pub coordinator_url: Option<String>,
    /// `--max-backoff` [default: 2s, so tests see reconnects quickly].
    pub max_backoff: Option<String>,
    /// Run the agent inside this network namespace (`ip netns exec`; see `crate::netns`).
    pub netns: Option<String>,
}

impl AgentOptions {
    /// An agent reporting cluster name `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Adds a flag.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
}

/// Where an agent dials, and where its log goes.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    /// `https://host:port` of the coordinator.
    pub url: &'a str,
    /// The fleet CA (PEM file).
    pub ca_file: &'a Path,
    /// The agent writes `agent-<name>.log` here.
    pub log_dir: &'a Path,
}

/// A running (or stopped) agent.
pub struct Agent {
    netns: Option<String>,
    cmd_args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    name: String,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent for `cluster` against `coordinator`. `token` may be `None` for an agent
    /// whose identity Secret already exists in the cluster.
    pub fn start(
        coordinator: &Coordinator,
        cluster: &skoala_sim::Cluster,
        token: Option<&str>,
        opts: AgentOptions,
    ) -> anyhow::Result<Agent> {
        let endpoint = coordinator.endpoint();
        Self::start_at(
            Endpoint {
                url: &endpoint,
                ca_file: &coordinator.ca_file(),
                log_dir: coordinator.scratch(),
            },
            cluster.kubeconfig_path(),
            token,
            opts,
        )
    }

    /// Starts an agent for the cluster at `kubeconfig` against any coordinator.
    pub fn start_at(
        coordinator: Endpoint<'_>,
        kubeconfig: &Path,
        token: Option<&str>,
        opts: AgentOptions,
    ) -> anyhow::Result<Agent> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--coordinator".into(),
            opts.coordinator_url
                .clone()
                .unwrap_or_else(|| coordinator.url.to_string())
                .into(),
            "--ca-file".into(),
            coordinator.ca_file.into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
            "--cluster-name".into(),
            opts.name.clone().into(),
            "--helm".into(),
            tool("helm").into(),
            "--heartbeat".into(),
            "2s".into(),
            "--max-backoff".into(),
            opts.max_backoff
                .clone()
                .unwrap_or_else(|| "2s".into())
                .into(),
        ];
        if let Some(t) = token {
            args.push("--token".into());
            args.push(t.into());
        }
        for (k, v) in &opts.labels {
            args.push("--label".into());
            args.push(format!("{k}={v}").into());
        }
        args.extend(opts.args.iter().map(Into::into));
        let log = coordinator.log_dir.join(format!("agent-{}.log", opts.name));
        let mut agent = Agent {
            netns: opts.netns,
            cmd_args: args,
            env: opts.env,
            log,
            name: opts.name,
            child: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the agent: the child is the agent itself.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(our_bin("skoala-agent"));
                c
            }
            None => Command::new(our_bin("skoala-agent")),
        };
        cmd.args(&self.cmd_args)
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("SKOALA_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().context("spawning skoala-agent")?);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again with the same flags (the identity Secret in the cluster survives).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Adds flags for the next (re)start, e.g. another `--label`.
    pub fn add_args(&mut self, args: &[&str]) {
        self.cmd_args.extend(args.iter().map(Into::into));
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process has exited; returns its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The cluster name it reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The end of the agent's log (all runs).
    pub fn log(&self) -> String {
        tail(&self.log, 8 * 1024)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
