//! The coordinator's data directory: where each file lives, and writing secrets safely.
//!
//! ```text
//! DIR/ca.pem           fleet CA certificate (public: the trust bundle)
//! DIR/ca-key.pem       fleet CA private key (0600)
//! DIR/server.pem       coordinator server certificate
//! DIR/server-key.pem   its key (0600)
//! DIR/admin.yaml       operator credential for skoalactl (0600)
//! DIR/store.db         the SQLite store (+ -wal, -shm)
//! DIR/.init/           what `init` writes before publishing it (only while it runs, or
//!                      after it was interrupted: crate::init::recover)
//! ```

use std::path::{Path, PathBuf};

/// The fleet CA certificate's file name (also its key in the kube store's PKI Secret).
pub const CA_CERT: &str = "ca.pem";
/// The fleet CA key's file name.
pub const CA_KEY: &str = "ca-key.pem";
/// The server certificate's file name.
pub const SERVER_CERT: &str = "server.pem";
/// The server key's file name.
pub const SERVER_KEY: &str = "server-key.pem";
/// The operator credential's file name.
pub const ADMIN_CONFIG: &str = "admin.yaml";

/// Paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `ca.pem`: the fleet CA certificate, the trust bundle agents and `skoalactl` get.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join(CA_CERT)
    }
    /// `ca-key.pem`: the fleet CA's private key (0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join(CA_KEY)
    }
    /// `server.pem`: the coordinator's serving certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join(SERVER_CERT)
    }
    /// `server-key.pem`: its private key (0600).
    pub fn server_key(&self) -> PathBuf {
        self.root.join(SERVER_KEY)
    }
    /// `admin.yaml`: the operator's credential for `skoalactl` (0600).
    pub fn admin_config(&self) -> PathBuf {
        self.root.join(ADMIN_CONFIG)
    }
    /// `.init/`: the staging folder of `init`, where it writes before publishing.
    pub fn staging(&self) -> PathBuf {
        self.root.join(".init")
    }
    /// `store.db`: the SQLite store (with its `-wal` and `-shm` files next to it).
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
