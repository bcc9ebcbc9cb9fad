//! The wall time of issue 5's six-cluster upgrade, two ways, on identical fresh fleets (one
//! emulated control plane with `skoala` 0.19.0, six emulated working clusters with
//! `skoala-init` 0.19.0, an agent each, the real helm 4):
//!
//! 1. **plan**: `skoalactl plan apply` of a relay plan to 0.19.2 (canary 1, then the other five
//!    at once), until `plan get` says `succeeded`. Includes the coordinator pulling both charts,
//!    the control-plane upgrade, backups uploaded before every upgrade, CRDs, verification.
//! 2. **by hand**: the vendor's procedure, one cluster after another, as an operator types it
//!    (`../shared/seed/online-upgrade.md`): back up the values (with `-o yaml`: the literal
//!    `get values > x.yaml` breaks `helm upgrade -f` on a release without user values), `helm repo add` + `repo update`,
//!    delete the immutable admission Jobs, `helm pull` the chart and apply its CRDs
//!    server-side, `helm upgrade --install … --set <tags> -f <backup> --wait` (the `--wait`
//!    stands in for the operator looking at the pods before moving on; the plan verifies
//!    health too).
//!
//! A measurement, not a test: it prints figures and asserts only that both ways reached
//! 0.19.2.
//!
//! ```sh
//! cargo run -p skoala-e2e --example six_clusters   # our binaries are the debug builds, as in the tests
//! ```

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skoala_e2e::charts::HelmHome;
use skoala_e2e::fleet::plans::{PlanFleet, PlanFleetOptions, PlanView};
use skoala_e2e::sim::kubectl;
use skoala_e2e::tools::tool;
use skoala_plan::profile::{ReleaseProfile, SKOALA};

const VERSION: &str = "0.19.2";
const TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = PlanFleetOptions {
        workers: 6,
        ..Default::default()
    };

    let pf = PlanFleet::start(options.clone()).await?;
    let yaml = pf
        .plan_yaml(
            "six",
            VERSION,
            "strategy: {canary: 1, maxConcurrency: 100%, maxFailures: 0}",
        )
        .replace("chartSource: repo", "chartSource: relay");
    let started = Instant::now();
    let applied = pf.apply(&yaml).await?;
    anyhow::ensure!(applied.success, "plan apply: {}", applied.stderr);
    pf.wait_phase("six", &["succeeded"], TIMEOUT).await?;
    let plan = started.elapsed();
    pf.wait_versions(VERSION, TIMEOUT).await?;
    drop(pf);

    let pf = PlanFleet::start(options).await?;
    let url = pf.repo.url();
    let mut clusters = vec![("control-plane".to_string(), &SKOALA.control_plane)];
    clusters.extend(
        pf.fleet
            .clusters
            .iter()
            .map(|c| (c.name().to_string(), &SKOALA.worker)),
    );
    let started = Instant::now();
    for (name, release) in &clusters {
        by_hand(&pf.kubeconfig(name)?, release, &url)
            .await
            .with_context(|| format!("{name} by hand"))?;
    }
    let manual = started.elapsed();
    pf.wait_versions(VERSION, TIMEOUT).await?;

    println!("six working clusters + the control plane, 0.19.0 -> {VERSION}, helm 4:");
    println!(
        "  plan (relay, canary 1, then 5 at once):  {:.1} s",
        plan.as_secs_f64()
    );
    println!(
        "  by hand, one cluster after another:      {:.1} s",
        manual.as_secs_f64()
    );
    println!("  $ cargo run -p skoala-e2e --example six_clusters");
    Ok(())
}

/// The documented procedure for one release, typed by an operator.
async fn by_hand(kubeconfig: &Path, release: &ReleaseProfile, url: &str) -> anyhow::Result<()> {
    let helm = tool("helm");
    let home = HelmHome::new()?;
    let ns = release.namespace;
    // 1. back up the values. `-o yaml`: the documented `get values > x.yaml` writes a
    // "USER-SUPPLIED VALUES:" header, and for a release without user values a `null` under
    // it, which `helm upgrade -f x.yaml` then refuses to parse.
    let values = home
        .run(
            &helm,
            Some(kubeconfig),
            &["-n", ns, "get", "values", release.release, "-o", "yaml"],
        )
        .await?;
    let values = if values.stdout.trim_ascii() == b"null" {
        b"{}\n".to_vec()
    } else {
        values.stdout
    };
    let backup = home.path().join(format!("{}.yaml", release.release));
    std::fs::write(&backup, &values)?;
    // 2. + 3. the repository
    home.run(&helm, None, &["repo", "add", "skoala", url])
        .await?;
    home.run(&helm, None, &["repo", "update"]).await?;
    // The later docs' pre-upgrade step: the immutable Jobs.
    for job in release.delete_jobs {
        kubectl(
            kubeconfig,
            &["-n", ns, "delete", "job", job, "--ignore-not-found"],
        )
        .await?;
    }
    // 5. (done first, as operators learned to) the CRDs the chart ships
    let chart = format!("skoala/{}", release.chart);
    let pulled = home.path().join("pulled");
    let untar = pulled.display().to_string();
    let version = format!("--version={VERSION}");
    home.run(
        &helm,
        None,
        &["pull", &chart, &version, "--untar", "--untardir", &untar],
    )
    .await?;
    for crds in crd_dirs(&pulled)? {
        let dir = crds.display().to_string();
        kubectl(kubeconfig, &["apply", "--server-side", "-f", &dir]).await?;
    }
    // 4. the upgrade
    let backup = backup.display().to_string();
    let mut args = vec![
        "upgrade",
        "--install",
        "--create-namespace",
        "-n",
        ns,
        release.release,
        &chart,
        &version,
        "-f",
        &backup,
        "--wait",
        "--timeout",
        "120s",
    ];
    let tags: Vec<String> = release
        .image_tag_keys
        .iter()
        .map(|k| format!("{k}=v{VERSION}"))
        .collect();
    for t in &tags {
        args.extend(["--set", t.as_str()]);
    }
    home.run(&helm, Some(kubeconfig), &args).await?;
    Ok(())
}

/// Every `crds` folder inside an unpacked chart (subcharts included).
fn crd_dirs(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "crds") {
            found.push(path);
        } else {
            found.extend(crd_dirs(&path)?);
        }
    }
    Ok(found)
}
