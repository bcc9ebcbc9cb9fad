//! `skoalactl` as a process, with a coordinator's admin credential.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::tools::our_bin;

/// One `skoalactl` call must finish within this (it has its own 10 s connect timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of one invocation.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit status 0.
    pub success: bool,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

/// Runs `skoalactl --config ADMIN --endpoint URL ...`.
#[derive(Debug, Clone)]
pub struct Ctl {
    config: PathBuf,
    endpoint: String,
}

impl Ctl {
    /// `skoalactl` with the credential `config` against `endpoint`.
    pub fn new(config: PathBuf, endpoint: String) -> Self {
        Self { config, endpoint }
    }

    /// The same CLI with another admin credential (e.g. a forged one).
    pub fn with_config(&self, config: PathBuf) -> Self {
        Self {
            config,
            endpoint: self.endpoint.clone(),
        }
    }

    /// The same CLI against another endpoint.
    pub fn with_endpoint(&self, endpoint: &str) -> Self {
        Self {
            config: self.config.clone(),
            endpoint: endpoint.to_string(),
        }
    }

    /// Runs with `args`, whatever the exit status.
    /// The command `run` would start, for long-running invocations (`plan watch`,
    /// `events --follow`) that the caller bounds itself.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(our_bin("skoalactl"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .env_remove("SKOALA_CONFIG")
            .env_remove("SKOALA_ENDPOINT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `skoalactl ARGS` and returns what happened, whatever the exit status.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CtlOutput> {
        let mut cmd = tokio::process::Command::new(our_bin("skoalactl"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .env_remove("SKOALA_CONFIG")
            .env_remove("SKOALA_ENDPOINT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("skoalactl {args:?} did not finish in {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("running skoalactl {args:?}"))?;
        Ok(CtlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs and requires success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        if !out.success {
            bail!("skoalactl {args:?} failed: {}", out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Runs with `-o json` appended and parses stdout.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all).await?;
        serde_json::from_str(&out).with_context(|| format!("skoalactl {all:?} printed: {out}"))
    }

    /// `plan apply -f PATH`, retried while the coordinator refuses it (until it has read
    /// every cluster's inventory, a plan is refused as skewed or selecting nothing); fails
    /// with the last refusal after `timeout`.
    pub async fn apply_when_ready(&self, path: &Path, timeout: Duration) -> anyhow::Result<()> {
        let path = path.to_str().context("utf-8 path")?;
        let last = Mutex::new(String::new());
        let applied = crate::wait::until(&format!("{path} applied"), timeout, || async {
            let out = self.run(&["plan", "apply", "-f", path]).await.ok()?;
            let ok = out.success;
            *last.lock().unwrap_or_else(PoisonError::into_inner) = out.stderr;
            ok.then_some(())
        })
        .await;
        applied.map_err(|e| {
            let last = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
            anyhow::anyhow!("{e}; last refusal: {last}")
        })
    }

    /// `token create --uses N --ttl TTL`; returns the token.
    pub async fn token(&self, uses: u32, ttl: &str) -> anyhow::Result<String> {
        let out = self
            .ok(&["token", "create", "--uses", &uses.to_string(), "--ttl", ttl])
            .await?;
        Ok(out.trim().to_string())
    }

    /// `clusters -o json`.
    pub async fn clusters(&self) -> anyhow::Result<Vec<Value>> {
        match self.json(&["clusters"]).await? {
            Value::Array(v) => Ok(v),
            other => bail!("clusters -o json is not a list: {other}"),
        }
    }

    /// Waits until `clusters` shows the cluster named `name` as `connected` (or not); returns
    /// its row. An agent killed without a goodbye shows disconnected only after the
    /// coordinator's liveness timeout, hence the generous deadline.
    pub async fn wait_connected(&self, name: &str, connected: bool) -> anyhow::Result<Value> {
        let state = if connected {
            "connected"
        } else {
            "disconnected"
        };
        crate::wait::until(
            &format!("{name} shown {state}"),
            Duration::from_secs(90),
            || async {
                self.clusters()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|c| c["name"] == name && c["connected"] == connected)
            },
        )
        .await
    }

    /// `audit -o json`.
    pub async fn audit(&self) -> anyhow::Result<Vec<Value>> {
        match self.json(&["audit"]).await? {
            Value::Array(v) => Ok(v),
            other => bail!("audit -o json is not a list: {other}"),
        }
    }

    /// Audit events of `kind`.
    pub async fn audit_of(&self, kind: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .audit()
            .await?
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect())
    }

    /// Waits until an audit event of `kind` exists whose detail contains `needle`; returns it.
    pub async fn wait_audit(&self, kind: &str, needle: &str) -> anyhow::Result<Value> {
        crate::wait::until(
            &format!("an audit entry {kind} mentioning {needle:?}"),
            Duration::from_secs(60),
            || async {
                self.audit_of(kind).await.ok()?.into_iter().find(|e| {
                    e["detail"].as_str().is_some_and(|d| d.contains(needle))
                        || e["clusterId"].as_str().is_some_and(|d| d.contains(needle))
                })
            },
        )
        .await
    }
}
