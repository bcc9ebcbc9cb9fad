//! The repository's `index.yaml`, in the format `helm repo index` writes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::package::PackagedChart;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    api_version: &'static str,
    entries: BTreeMap<&'a str, Vec<Entry<'a>>>,
    generated: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    api_version: &'a str,
    app_version: &'a str,
    created: &'a str,
    description: &'a str,
    digest: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Relative to the repository URL; helm resolves it against the URL it added.
    urls: Vec<String>,
    version: &'a str,
}

/// Renders `index.yaml` for `charts`, newest version first per chart, as helm orders it.
/// `now` (RFC 3339) is used as both `created` and `generated`.
pub fn render(charts: &[PackagedChart], now: &str) -> String {
    let mut entries: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for c in charts {
        entries.entry(&c.name).or_default().push(Entry {
            api_version: &c.api_version,
            app_version: &c.app_version,
            created: now,
            description: &c.description,
            digest: &c.digest,
            name: &c.name,
            kind: "application",
            urls: vec![c.file_name()],
            version: &c.version,
        });
    }
    for versions in entries.values_mut() {
        versions.sort_by_key(|e| std::cmp::Reverse(version_key(e.version)));
    }
    let index = Index {
        api_version: "v1",
        entries,
        generated: now,
    };
    serde_yaml::to_string(&index).expect("an index of strings always serialises")
}

/// Numeric ordering of `X.Y.Z` (a pre-release suffix sorts as its numeric part).
fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("0.20.0") > version_key("0.19.10"));
        assert!(version_key("0.19.10") > version_key("0.19.2"));
    }
}
