//! Helpers for the emulator's end-to-end tests (`tests/tests/e2e/sim_*.rs`): running the real
//! `kubectl` against an emulated cluster and reading its JSON output.

use std::path::Path;
use std::process::Output;

use anyhow::Context as _;

/// Runs `.tools/bin/kubectl --kubeconfig <kc> <args>` and returns whatever happened.
pub async fn try_kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    tokio::process::Command::new(crate::tools::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running kubectl {}", args.join(" ")))
}

/// Runs kubectl; fails (with its stderr) unless it exits 0.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let out = try_kubectl(kubeconfig, args).await?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The documented pre-upgrade step of a manual skoala-init upgrade: delete the
/// gateway-api-admission Jobs (their pod templates are immutable and change per version) and
/// wait until they are gone.
pub async fn delete_admission_jobs(kubeconfig: &Path) -> anyhow::Result<()> {
    kubectl(
        kubeconfig,
        &[
            "-n",
            "skoala-system",
            "delete",
            "job",
            "gateway-api-admission",
            "gateway-api-admission-patch",
            "--ignore-not-found",
            "--wait=true",
        ],
    )
    .await?;
    Ok(())
}

/// Parses a command's stdout as JSON.
pub fn stdout_json(out: &Output) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "stdout is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The container images of every Deployment in `kubectl get deploy -o json` output, as
/// `(deployment, image)` pairs.
pub fn deployment_images(list: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for d in list["items"].as_array().into_iter().flatten() {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push((
                name.to_string(),
                c["image"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}
