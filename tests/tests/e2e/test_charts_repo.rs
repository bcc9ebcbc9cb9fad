//! The test charts and their repository, with the real helm 3 and 4: `repo add`, `repo update`,
//! `search`, `pull` (byte-identical to what the index promises), `lint` of every packaged
//! version, and the per-version differences (seata-operator and the new CRD field in 0.20.0).
//! `test_charts_install.rs` installs from it into an emulated cluster.

use anyhow::Context as _;
use skoala_e2e::charts::{HelmHome, VERSIONS, start_repo};
use skoala_e2e::tools::helm_versions;

#[tokio::test]
async fn repo_add_update_search_pull_with_both_helms() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let home = HelmHome::new()?;
        home.run(&helm, None, &["repo", "add", "skoala", &repo.url()])
            .await
            .context(label)?;
        home.run(&helm, None, &["repo", "update"])
            .await
            .context(label)?;

        let out = home
            .run(
                &helm,
                None,
                &["search", "repo", "skoala/", "--versions", "-o", "json"],
            )
            .await?;
        let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        let mut listed: Vec<(String, String)> = found
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["version"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        listed.sort();
        let mut expected: Vec<(String, String)> = VERSIONS
            .iter()
            .map(|(c, v)| (format!("skoala/{c}"), v.to_string()))
            .collect();
        expected.sort();
        assert_eq!(listed, expected, "{label}: search lists every version");

        let dest = home.path().join("pulled");
        std::fs::create_dir_all(&dest)?;
        for (chart, version) in VERSIONS {
            home.run(
                &helm,
                None,
                &[
                    "pull",
                    &format!("skoala/{chart}"),
                    "--version",
                    version,
                    "-d",
                    dest.to_str().context("utf-8 path")?,
                ],
            )
            .await
            .with_context(|| format!("{label}: pull {chart} {version}"))?;
            let pulled = std::fs::read(dest.join(format!("{chart}-{version}.tgz")))?;
            let served = repo.chart(chart, version).context("served")?;
            assert_eq!(
                pulled, served.tgz,
                "{label}: {chart} {version} pulled intact"
            );
        }
        // A version that does not exist is a clear helm error.
        let out = home
            .try_run(
                &helm,
                None,
                &[
                    "pull",
                    "skoala/skoala-init",
                    "--version",
                    "9.9.9",
                    "-d",
                    dest.to_str().context("utf-8")?,
                ],
            )
            .await?;
        assert!(!out.status.success(), "{label}: pulling 9.9.9 must fail");
    }
    assert!(repo.requests() > 0);
    Ok(())
}

#[tokio::test]
async fn every_packaged_version_lints_clean_with_both_helms() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let home = HelmHome::new()?;
    for (chart, version) in VERSIONS {
        let path = repo.write_tgz(chart, version, home.path())?;
        for (label, helm) in helm_versions() {
            let out = home
                .try_run(
                    &helm,
                    None,
                    &["lint", "--strict", path.to_str().context("utf-8")?],
                )
                .await?;
            assert!(
                out.status.success(),
                "{label}: helm lint {chart} {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn versions_differ_as_documented() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    let home = HelmHome::new()?;
    let (_, helm) = &helm_versions()[0];
    let render = |version: &'static str| {
        let path = repo.write_tgz("skoala-init", version, home.path());
        let home = &home;
        async move {
            let path = path?;
            let out = home
                .run(
                    helm,
                    None,
                    &[
                        "template",
                        "skoala-init",
                        path.to_str().context("utf-8")?,
                        "-n",
                        "skoala-system",
                        "--include-crds",
                    ],
                )
                .await?;
            anyhow::Ok(String::from_utf8(out.stdout)?)
        }
    };
    for version in ["0.19.0", "0.19.1", "0.19.2"] {
        let manifest = render(version).await?;
        assert!(
            manifest.contains(&format!("skoala-agent:v{version}")),
            "{version}: default tags follow the version"
        );
        assert!(
            !manifest.contains("seata-operator"),
            "{version}: no seata-operator before 0.20"
        );
        assert!(
            !manifest.contains("Envoy's log level"),
            "{version}: the old CRD"
        );
        let gateway = find_kind(&manifest, "ContourDeployment").context("a ContourDeployment")?;
        assert!(
            gateway["spec"]["envoy"].get("logLevel").is_none(),
            "{version}: the ContourDeployment does not use the new field"
        );
        assert!(manifest.contains("name: gateway-api-admission-patch"));
    }
    let manifest = render("0.20.0").await?;
    assert!(manifest.contains("skoala/seata-operator:v0.20.0"));
    assert!(
        manifest.contains("Envoy's log level"),
        "0.20.0's CRD has the new field"
    );
    let gateway = find_kind(&manifest, "ContourDeployment").context("a ContourDeployment")?;
    assert_eq!(
        gateway["spec"]["envoy"]["logLevel"].as_str(),
        Some("info"),
        "0.20.0's ContourDeployment uses it"
    );
    Ok(())
}

/// The first document of `kind` in a multi-document manifest.
fn find_kind(manifest: &str, kind: &str) -> Option<serde_yaml::Value> {
    manifest
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
        .find(|v| v["kind"].as_str() == Some(kind))
}
