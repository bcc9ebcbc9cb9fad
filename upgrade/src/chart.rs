//! Getting the chart: from a repository (`helm repo add` + `helm repo update` + `helm pull`
//! into the session's private folder) or from a `.tgz` the caller delivered (checked against
//! its sha256 before anything else). Either way the result is one local archive whose
//! `Chart.yaml` names the expected chart and version; the CRDs are extracted from it and
//! `helm upgrade` installs it, so both are guaranteed to come from the same bytes.

use std::io::Read;
use std::path::PathBuf;

use crate::backup::sha256_hex;
use crate::helm::{HelmOutput, QUICK, RunHelm};
use crate::spec::{ChartSource, ReleaseSpec};

/// A fetched and checked chart archive.
#[derive(Clone, Debug)]
pub struct FetchedChart {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Why a chart could not be had. `helm` carries the failed command's output for the caller to
/// redact and report.
#[derive(Debug)]
pub struct ChartError {
    pub message: String,
    pub helm: Option<HelmOutput>,
}

impl ChartError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            helm: None,
        }
    }
}

/// Fetches (or verifies) the chart of `spec`.
pub async fn fetch(session: &impl RunHelm, spec: &ReleaseSpec) -> Result<FetchedChart, ChartError> {
    let path = match &spec.source {
        ChartSource::Archive { path, sha256 } => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| ChartError::new(format!("reading {}: {e}", path.display())))?;
            let actual = sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(sha256) {
                return Err(ChartError::new(format!(
                    "chart archive {} has sha256 {actual}, expected {sha256}: refusing it",
                    path.display()
                )));
            }
            path.clone()
        }
        ChartSource::Repository { name, url } => {
            helm_ok(
                session,
                &["repo", "add", name, url],
                &format!("helm repo add {name} {url}"),
            )
            .await?;
            helm_ok(
                session,
                &["repo", "update", name],
                &format!("helm repo update {name} (is {url} reachable?)"),
            )
            .await?;
            let dest = session.work_dir().join("chart");
            std::fs::create_dir_all(&dest)
                .map_err(|e| ChartError::new(format!("creating the chart folder: {e}")))?;
            let reference = format!("{name}/{}", spec.chart);
            let dest_str = dest.to_string_lossy().into_owned();
            helm_ok(
                session,
                &[
                    "pull",
                    &reference,
                    "--version",
                    &spec.version,
                    "-d",
                    &dest_str,
                ],
                &format!("helm pull {reference} --version {}", spec.version),
            )
            .await?;
            dest.join(format!("{}-{}.tgz", spec.chart, spec.version))
        }
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ChartError::new(format!("reading {}: {e}", path.display())))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(pinned) = &spec.chart_sha256
        && !sha256.eq_ignore_ascii_case(pinned)
    {
        return Err(ChartError::new(format!(
            "chart {} {} has sha256 {sha256}, but the plan pins {pinned} (spec.repository.digests.{}): refusing it, nothing was changed",
            spec.chart, spec.version, spec.chart
        )));
    }
    let (name, version) =
        metadata(&bytes).map_err(|e| ChartError::new(format!("{}: {e}", path.display())))?;
    if name != spec.chart || version != spec.version {
        return Err(ChartError::new(format!(
            "{} holds chart {name} {version}, expected {} {}",
            path.display(),
            spec.chart,
            spec.version
        )));
    }
    Ok(FetchedChart {
        sha256,
        path,
        bytes,
    })
}

async fn helm_ok(session: &impl RunHelm, args: &[&str], what: &str) -> Result<(), ChartError> {
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    match session.run(&args, QUICK).await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(ChartError {
            message: format!("{what} failed ({})", out.exit()),
            helm: Some(out),
        }),
        Err(e) => Err(ChartError::new(format!("{what}: {e}"))),
    }
}

/// The `name` and `version` of the top-level `Chart.yaml` of a packaged chart. Decompression
/// stops after as many bytes as a chart may hold ([`crate::crds::MAX_CHART_BYTES`]): a
/// gzip bomb handed over as a chart costs a bounded amount of work, not hours.
pub fn metadata(tgz: &[u8]) -> Result<(String, String), String> {
    metadata_within(tgz, crate::crds::MAX_CHART_BYTES)
}

fn metadata_within(tgz: &[u8], max: u64) -> Result<(String, String), String> {
    let gz = flate2::read::GzDecoder::new(tgz).take(max);
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a chart archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a chart archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad entry: {e}"))?
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() == 2 && parts[1] == "Chart.yaml" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(1024 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| format!("Chart.yaml: {e}"))?;
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|_| "Chart.yaml is not YAML".to_string())?;
            let field = |k: &str| {
                doc.get(k)
                    .and_then(|v| v.as_str())
                    .map(String::from)
                    .ok_or_else(|| format!("Chart.yaml has no {k}"))
            };
            return Ok((field("name")?, field("version")?));
        }
    }
    Err(format!(
        "no Chart.yaml at the top of the first {max} bytes of the archive: not a chart"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chart whose `Chart.yaml` comes after `filler` bytes of zeros (which compress to
    /// almost nothing: the shape of a gzip bomb).
    fn chart_after(filler: usize) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, data).expect("append");
        };
        add("c/filler.bin", &vec![0u8; filler]);
        add("c/Chart.yaml", b"name: c\nversion: 1.0.0\n");
        tar.into_inner().expect("tar").finish().expect("gz")
    }

    #[test]
    fn decompression_stops_at_the_bound() {
        let tgz = chart_after(2 * 1024 * 1024);
        assert!(tgz.len() < 64 * 1024, "compresses well: {}", tgz.len());
        assert_eq!(metadata(&tgz), Ok(("c".to_string(), "1.0.0".to_string())));
        let cut = metadata_within(&tgz, 1024 * 1024).expect_err("past the bound");
        assert!(cut.contains("not a chart"), "{cut}");
    }
}
