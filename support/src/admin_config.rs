//! `admin.yaml`: the operator's credential for `skoalactl`, written by
//! `skoala-coordinator init` (mode 0600: it holds the admin private key).
//!
//! ```yaml
//! endpoint: https://coordinator.example:7443
//! certificateAuthority: |   # the fleet CA, to verify the coordinator
//!   -----BEGIN CERTIFICATE-----
//! clientCertificate: |      # the admin certificate (URI SAN spiffe://skoala-fleet/admin)
//!   -----BEGIN CERTIFICATE-----
//! clientKey: |              # its private key
//!   -----BEGIN PRIVATE KEY-----
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The contents of `admin.yaml`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminConfig {
    /// `https://HOST:PORT` of the coordinator.
    pub endpoint: String,
    /// PEM of the fleet CA.
    pub certificate_authority: String,
    /// PEM of the admin client certificate.
    pub client_certificate: String,
    /// PEM of the admin private key. Secret.
    pub client_key: String,
}

// Hand-written so the key can never end up in a log line through `{:?}`.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("endpoint", &self.endpoint)
            .field("client_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Errors reading or writing `admin.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an `admin.yaml` (not YAML, or a field missing).
    #[error("{path} is not a skoala admin config: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What the YAML parser found.
        source: serde_yaml::Error,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl AdminConfig {
    /// Reads `admin.yaml`.
    pub fn load(path: &Path) -> Result<Self, AdminConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| AdminConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parses the text of an `admin.yaml`.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// Writes `admin.yaml` with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AdminConfigError> {
        let write_err = |source| AdminConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = self
            .to_yaml()
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
        crate::fs::write_private(path, text.as_bytes()).map_err(write_err)
    }

    /// The text of an `admin.yaml`, as [`AdminConfig::save`] writes it (and as the kube
    /// store's PKI Secret holds it).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let text = serde_yaml::to_string(self)?;
        Ok(format!(
            "# skoalactl credential for this fleet (admin certificate and key). Keep it secret.\n{text}"
        ))
    }
}
