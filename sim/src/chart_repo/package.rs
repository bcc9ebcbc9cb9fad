//! Packaging the test chart sources into the `.tgz` files `helm package` makes.
//!
//! `tests/charts/versions.yaml` lists each chart's versions; a version is the chart's source
//! folder with some paths left out and an overlay folder laid over it, and every `Chart.yaml`
//! in it (the chart's and its subcharts') stamped with the version. See that file's comment.
//! The archive layout is `helm package`'s: one top folder named after the chart, subcharts
//! unpacked under `charts/`. Archives are deterministic (fixed mtimes, sorted entries), so a
//! chart's digest is stable across runs.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Name of the file that lists the chart versions, in the charts folder.
pub const VERSIONS_FILE: &str = "versions.yaml";

/// Modification time of every archive entry (2024-01-01T00:00:00Z): fixed so digests are stable.
const MTIME: u64 = 1_704_067_200;

/// One packaged chart version.
#[derive(Clone, Debug)]
pub struct PackagedChart {
    /// Chart name (`skoala-init`).
    pub name: String,
    /// Chart version (`0.19.2`).
    pub version: String,
    /// `appVersion` (equal to the version for the test charts).
    pub app_version: String,
    /// Chart API version (`v2`).
    pub api_version: String,
    /// The chart's description.
    pub description: String,
    /// The gzipped tar archive.
    pub tgz: Vec<u8>,
    /// Lower-case hex sha256 of `tgz` (the `digest` in `index.yaml`).
    pub digest: String,
}

impl PackagedChart {
    /// The archive's file name, as `helm package` names it: `<name>-<version>.tgz`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.tgz", self.name, self.version)
    }
}

/// How one version differs from the chart's source folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionSpec {
    version: String,
    #[serde(default)]
    without: Vec<String>,
    #[serde(default)]
    overlay: Option<String>,
}

/// Packages every chart version listed in `<charts_dir>/versions.yaml`.
pub fn package_all(charts_dir: &Path) -> io::Result<Vec<PackagedChart>> {
    let manifest = charts_dir.join(VERSIONS_FILE);
    let text = std::fs::read_to_string(&manifest).map_err(|e| with_path(e, "read", &manifest))?;
    let charts: BTreeMap<String, Vec<VersionSpec>> =
        serde_yaml::from_str(&text).map_err(|e| invalid(format!("{}: {e}", manifest.display())))?;
    let mut out = Vec::new();
    for (name, versions) in &charts {
        for spec in versions {
            out.push(package_one(charts_dir, name, spec)?);
        }
    }
    Ok(out)
}

fn package_one(charts_dir: &Path, name: &str, spec: &VersionSpec) -> io::Result<PackagedChart> {
    let mut files = read_tree(&charts_dir.join(name))?;
    files.retain(|path, _| {
        !spec
            .without
            .iter()
            .any(|w| path == w || path.starts_with(&format!("{}/", w.trim_end_matches('/'))))
    });
    if let Some(overlay) = &spec.overlay {
        files.extend(read_tree(&charts_dir.join(overlay))?);
    }

    // Stamp every Chart.yaml; a chart's dependencies are the subcharts still present.
    let chart_files: Vec<String> = files
        .keys()
        .filter(|p| *p == "Chart.yaml" || p.ends_with("/Chart.yaml"))
        .cloned()
        .collect();
    for chart_file in &chart_files {
        let prefix = chart_file.trim_end_matches("Chart.yaml");
        let present = |dep: &str| files.contains_key(&format!("{prefix}charts/{dep}/Chart.yaml"));
        let stamped = stamp(&files[chart_file], &spec.version, present)
            .map_err(|e| invalid(format!("{name}/{chart_file}: {e}")))?;
        files.insert(chart_file.clone(), stamped);
    }

    let meta: ChartMeta = serde_yaml::from_slice(
        files
            .get("Chart.yaml")
            .ok_or_else(|| invalid(format!("{name}: no Chart.yaml")))?,
    )
    .map_err(|e| invalid(format!("{name}/Chart.yaml: {e}")))?;
    if meta.name != name {
        return Err(invalid(format!(
            "{name}/Chart.yaml names the chart {:?}",
            meta.name
        )));
    }

    let tgz = tgz(name, &files)?;
    let digest = format!("{:x}", Sha256::digest(&tgz));
    Ok(PackagedChart {
        name: meta.name,
        version: spec.version.clone(),
        app_version: spec.version.clone(),
        api_version: meta.api_version,
        description: meta.description,
        tgz,
        digest,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChartMeta {
    api_version: String,
    name: String,
    #[serde(default)]
    description: String,
}

/// Sets `version` and `appVersion`, keeps only the dependencies `present` says exist, and
/// stamps their versions too.
fn stamp(
    chart_yaml: &[u8],
    version: &str,
    present: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, serde_yaml::Error> {
    use serde_yaml::Value;
    let mut doc: serde_yaml::Mapping = serde_yaml::from_slice(chart_yaml)?;
    doc.insert("version".into(), Value::String(version.into()));
    doc.insert("appVersion".into(), Value::String(version.into()));
    if let Some(Value::Sequence(deps)) = doc.get_mut("dependencies") {
        deps.retain(|d| d.get("name").and_then(Value::as_str).is_some_and(&present));
        for dep in deps.iter_mut() {
            if let Value::Mapping(dep) = dep {
                dep.insert("version".into(), Value::String(version.into()));
            }
        }
    }
    Ok(serde_yaml::to_string(&doc)?.into_bytes())
}

/// Every file under `root`, keyed by its `/`-separated path relative to `root`.
fn read_tree(root: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| with_path(e, "list", &dir))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| invalid(e.to_string()))?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path).map_err(|e| with_path(e, "read", &path))?;
                out.insert(rel, bytes);
            }
        }
    }
    Ok(out)
}

/// A gzipped tar with every file under the folder `<name>/`, in path order.
fn tgz(name: &str, files: &BTreeMap<String, Vec<u8>>) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{name}/{path}"), bytes.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_sets_versions_and_drops_missing_dependencies() {
        let chart = b"apiVersion: v2\nname: x\nversion: 9.9.9\ndependencies:\n- name: a\n  version: 9.9.9\n- name: b\n  version: 9.9.9\n";
        let out = stamp(chart, "0.19.1", |d| d == "a").expect("stamp");
        let doc: serde_yaml::Value = serde_yaml::from_slice(&out).expect("yaml");
        assert_eq!(doc["version"].as_str(), Some("0.19.1"));
        assert_eq!(doc["appVersion"].as_str(), Some("0.19.1"));
        let deps = doc["dependencies"].as_sequence().expect("deps");
        assert_eq!(deps.len(), 1);
        assert_eq!(deps[0]["name"].as_str(), Some("a"));
        assert_eq!(deps[0]["version"].as_str(), Some("0.19.1"));
    }
}
