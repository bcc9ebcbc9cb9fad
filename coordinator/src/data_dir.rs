//! The coordinator's data directory: where each file lives, and writing secrets safely.
//!
//! ```text
//! DIR/ca.pem           fleet CA certificate (public: the trust bundle)
//! DIR/ca-key.pem       fleet CA private key (0600)
//! DIR/server.pem       coordinator server certificate
//! DIR/server-key.pem   its key (0600)
//! DIR/admin.yaml       operator credential for skoalactl (0600)
//! DIR/store.db         the SQLite store (+ -wal, -shm)
//! ```

use std::path::{Path, PathBuf};

/// Paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server-key.pem")
    }
    pub fn admin_config(&self) -> PathBuf {
        self.root.join("admin.yaml")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store.db")
    }
}

pub use skoala_support::fs::write_private;

/// Writes a public file (certificates), atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
