//! The values files of `helm upgrade`: the backup and our overrides (image tags over extra
//! values), written 0600 and removed when dropped.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use crate::spec::ReleaseSpec;

/// The backup as a values file: `helm get values` prints `null` for a release without user
/// values, which is not a map.
pub(super) fn backup_values(values: &[u8]) -> Vec<u8> {
    match serde_yaml::from_slice::<serde_yaml::Value>(values) {
        Ok(serde_yaml::Value::Null) => b"{}\n".to_vec(),
        _ => values.to_vec(),
    }
}

/// The values we lay over the backup: the extra values, then the image tags at their keys.
pub(super) fn overrides_yaml(spec: &ReleaseSpec) -> String {
    use serde_yaml::{Mapping, Value};
    let mut root = spec.extra_values.clone().unwrap_or_default();
    for key in &spec.image_tag_keys {
        let parts: Vec<&str> = key.split('.').collect();
        let mut at = &mut root;
        for part in &parts[..parts.len() - 1] {
            let entry = at
                .entry(Value::String((*part).into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !entry.is_mapping() {
                *entry = Value::Mapping(Mapping::new());
            }
            at = entry.as_mapping_mut().expect("just made a mapping");
        }
        at.insert(
            Value::String(parts[parts.len() - 1].into()),
            Value::String(spec.tag()),
        );
    }
    serde_yaml::to_string(&Value::Mapping(root)).expect("a mapping of strings serialises")
}

/// A 0600 file that is removed when dropped.
pub(super) struct SecretFile {
    pub(super) path: PathBuf,
}

impl SecretFile {
    pub(super) fn write(path: PathBuf, bytes: &[u8]) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let file = SecretFile { path };
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(file)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ChartSource;
    use crate::spec::ReleaseSpec;

    #[test]
    fn overrides_set_every_tag_over_extra_values() {
        let mut spec = ReleaseSpec::skoala_init(
            ChartSource::Repository {
                name: "skoala".into(),
                url: "http://127.0.0.1:1".into(),
            },
            "0.19.2",
        );
        spec.extra_values = Some(
            serde_yaml::from_str(
                "skoala-agent:\n  image:\n    tag: old\n  logLevel: debug\nnacos-operator: 3\n",
            )
            .expect("yaml"),
        );
        let out: serde_yaml::Value = serde_yaml::from_str(&overrides_yaml(&spec)).expect("yaml");
        assert_eq!(
            out["skoala-agent"]["image"]["tag"].as_str(),
            Some("v0.19.2")
        );
        assert_eq!(out["skoala-agent"]["logLevel"].as_str(), Some("debug"));
        assert_eq!(
            out["nacos-operator"]["image"]["tag"].as_str(),
            Some("v0.19.2")
        );
        assert_eq!(
            out["sentinel-operator"]["image"]["tag"].as_str(),
            Some("v0.19.2")
        );
    }

    #[test]
    fn null_backup_becomes_an_empty_map() {
        assert_eq!(backup_values(b"null\n"), b"{}\n");
        assert_eq!(backup_values(b"a: 1\n"), b"a: 1\n");
    }

    #[test]
    fn secret_files_are_0600_and_removed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.yaml");
        let f = SecretFile::write(path.clone(), b"password: x\n").expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(f);
        assert!(!path.exists());
    }
}
