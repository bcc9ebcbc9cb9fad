//! The chart's CRDs: extracted from every `crds/` folder and server-side applied.
//!
//! Helm installs the files under a chart's `crds/` folders on first install only and never
//! upgrades them, and skoala-init ships them in subcharts (`charts/contour-provisioner/crds/`).
//! [`extract`] walks the packaged chart, including subcharts that are themselves packaged
//! (`charts/*.tgz`), and returns every `CustomResourceDefinition` document. [`apply`] server-side
//! applies them with our field manager (forcing conflicts: we are the CRDs' owner of record, as
//! the documented `kubectl apply` was) — or, with `dry_run`, only asks the server whether it
//! would accept them. CRDs are never deleted.

use std::io::Read;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize as _;

/// Our field manager for everything we apply.
pub const FIELD_MANAGER: &str = "skoala-fleet";

/// A chart archive holding more than this (uncompressed) is refused: it is not a chart.
pub(crate) const MAX_CHART_BYTES: u64 = 256 * 1024 * 1024;

/// Problems reading CRDs out of a chart.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("chart archive: {0}")]
    Archive(std::io::Error),
    #[error("chart archive is larger than {MAX_CHART_BYTES} bytes uncompressed")]
    TooLarge,
    /// Names the file and position only: a CRD file holds no values, but keep the habit.
    #[error("{file}: not a valid CustomResourceDefinition ({reason})")]
    Invalid { file: String, reason: String },
    #[error("apply CRD {name}: {source}")]
    Apply { name: String, source: kube::Error },
}

/// One CRD from the chart, with the file it came from.
#[derive(Clone, Debug)]
pub struct ChartCrd {
    /// Path inside the archive (`skoala-init/charts/contour-provisioner/crds/x.yaml`).
    pub file: String,
    pub crd: CustomResourceDefinition,
}

impl ChartCrd {
    pub fn name(&self) -> String {
        self.crd.metadata.name.clone().unwrap_or_default()
    }
}

/// Every CRD in the packaged chart `tgz`, in archive order.
pub fn extract(tgz: &[u8]) -> Result<Vec<ChartCrd>, CrdError> {
    let mut out = Vec::new();
    extract_into(tgz, "", &mut out, 0)?;
    Ok(out)
}

fn extract_into(
    tgz: &[u8],
    outer: &str,
    out: &mut Vec<ChartCrd>,
    depth: u32,
) -> Result<(), CrdError> {
    // Subcharts nest (a subchart's subcharts); a deeper archive is not a real chart.
    if depth > 8 {
        return Err(CrdError::Archive(std::io::Error::other(
            "subcharts nested too deep",
        )));
    }
    let gz = flate2::read::GzDecoder::new(tgz).take(MAX_CHART_BYTES + 1);
    let mut archive = tar::Archive::new(gz);
    let mut total = 0u64;
    for entry in archive.entries().map_err(CrdError::Archive)? {
        let mut entry = entry.map_err(CrdError::Archive)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(CrdError::Archive)?
            .to_string_lossy()
            .into_owned();
        total += entry.size();
        if total > MAX_CHART_BYTES {
            return Err(CrdError::TooLarge);
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let is_crd_file = is_in_crds_folder(&parts)
            && [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| path.ends_with(ext));
        let is_subchart_archive =
            parts.len() >= 3 && parts[parts.len() - 2] == "charts" && path.ends_with(".tgz");
        if !is_crd_file && !is_subchart_archive {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(CrdError::Archive)?;
        let shown = format!("{outer}{path}");
        if is_subchart_archive {
            extract_into(&bytes, &format!("{shown}:"), out, depth + 1)?;
        } else {
            parse_crds(&shown, &bytes, out)?;
        }
    }
    Ok(())
}

/// `<chart>/crds/…` or `<chart>/charts/<sub>/crds/…` at any depth: the folder right under a
/// chart root. A `crds` folder inside `templates/` is not one.
fn is_in_crds_folder(parts: &[&str]) -> bool {
    // Chart roots sit at index 0, then at i+2 for every `charts` at index i+1.
    let mut root = 0;
    loop {
        match parts.get(root + 1) {
            Some(&"crds") => return parts.len() > root + 2,
            Some(&"charts") if parts.len() > root + 3 => root += 2,
            _ => return false,
        }
    }
}

fn parse_crds(file: &str, bytes: &[u8], out: &mut Vec<ChartCrd>) -> Result<(), CrdError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CrdError::Invalid {
        file: file.into(),
        reason: "not UTF-8".into(),
    })?;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(file, &e))?;
        if value.is_null() {
            continue; // an empty document between `---` separators
        }
        if value.get("kind").and_then(|k| k.as_str()) != Some("CustomResourceDefinition") {
            // Helm installs whatever is in crds/; we only own CRDs.
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_yaml::from_value(value).map_err(|e| invalid(file, &e))?;
        if crd.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err(CrdError::Invalid {
                file: file.into(),
                reason: "no metadata.name".into(),
            });
        }
        out.push(ChartCrd {
            file: file.into(),
            crd,
        });
    }
    Ok(())
}

fn invalid(file: &str, e: &serde_yaml::Error) -> CrdError {
    let reason = match e.location() {
        Some(l) => format!("YAML error at line {}, column {}", l.line(), l.column()),
        None => "YAML error".into(),
    };
    CrdError::Invalid {
        file: file.into(),
        reason,
    }
}

/// Server-side applies every CRD with [`FIELD_MANAGER`], forcing conflicts; with `dry_run`
/// the server validates without persisting. Returns the applied names.
pub async fn apply(
    client: &kube::Client,
    crds: &[ChartCrd],
    dry_run: bool,
) -> Result<Vec<String>, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    let mut names = Vec::new();
    for c in crds {
        let name = c.name();
        let mut crd = c.crd.clone();
        // Apply only what the file says; never send a stale resourceVersion or status.
        crd.metadata.resource_version = None;
        crd.metadata.managed_fields = None;
        crd.status = None;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| CrdError::Apply {
                name: name.clone(),
                source,
            })?;
        names.push(name);
    }
    Ok(names)
}

/// Charts for tests: a CRD and a packager.
#[cfg(test)]
pub(crate) mod fixtures {
    /// A valid CRD, `widgets.example.io`.
    pub(crate) const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.io\nspec:\n  group: example.io\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object}\n";

    /// A gzipped tar of `files` (path, content), as `helm package` writes one.
    pub(crate) fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, *bytes).expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gzip")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{CRD, tgz};
    use super::*;

    #[test]
    fn finds_crds_in_the_chart_and_every_subchart() {
        let other = CRD
            .replace("widgets", "gadgets")
            .replace("Widget", "Gadget");
        let third = CRD.replace("widgets", "gizmos").replace("Widget", "Gizmo");
        let nested = tgz(&[
            ("inner/Chart.yaml", b"name: inner"),
            ("inner/crds/g.yaml", third.as_bytes()),
        ]);
        let chart = tgz(&[
            ("top/Chart.yaml", b"name: top"),
            ("top/crds/w.yaml", CRD.as_bytes()),
            ("top/charts/sub/Chart.yaml", b"name: sub"),
            (
                "top/charts/sub/crds/multi.yaml",
                format!(
                    "---\n{other}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n"
                )
                .as_bytes(),
            ),
            ("top/charts/inner-1.0.0.tgz", &nested),
            // Not CRD folders: a template named crds, a README.
            ("top/templates/crds/x.yaml", CRD.as_bytes()),
            ("top/crds/README.md", b"docs"),
        ]);
        let crds = extract(&chart).expect("extract");
        let names: Vec<String> = crds.iter().map(ChartCrd::name).collect();
        assert_eq!(
            names,
            [
                "widgets.example.io",
                "gadgets.example.io",
                "gizmos.example.io"
            ]
        );
        assert_eq!(crds[2].file, "top/charts/inner-1.0.0.tgz:inner/crds/g.yaml");
    }

    #[test]
    fn invalid_crd_names_the_file_not_the_content() {
        let chart = tgz(&[(
            "top/crds/bad.yaml",
            b"kind: CustomResourceDefinition\nspec: [secret-ish\n",
        )]);
        let err = extract(&chart).expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("top/crds/bad.yaml"), "{msg}");
        assert!(!msg.contains("secret-ish"), "{msg}");
    }

    #[test]
    fn crds_folder_detection() {
        assert!(is_in_crds_folder(&["c", "crds", "a.yaml"]));
        assert!(is_in_crds_folder(&["c", "charts", "s", "crds", "a.yaml"]));
        assert!(!is_in_crds_folder(&["c", "templates", "crds", "a.yaml"]));
        assert!(!is_in_crds_folder(&["c", "charts", "crds", "a.yaml"]));
        assert!(!is_in_crds_folder(&["c", "crds"]));
    }
}
