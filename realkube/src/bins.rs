//! Where the control-plane binaries are.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The folder `scripts/install-kube.sh` built, checked to hold every binary.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `<dir>/bin/<name>` for each component; `<dir>/kwok-stages.yaml` for kwok.
    dir: PathBuf,
}

/// Every binary a cluster runs, and kubectl for TokenRequests.
const NAMES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
];

impl Binaries {
    /// `$SKOALA_KUBE_DIR`, else `.tools/kube` of the checkout (the link `install-kube.sh`
    /// leaves). A missing binary is an error naming the script, never a silent skip.
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("SKOALA_KUBE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("realkube/ has a parent")
                    .join(".tools/kube")
            });
        Self::at(dir)
    }

    /// The binaries in `dir` (`dir/bin/...`), checked.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self> {
        let this = Binaries { dir: dir.into() };
        for name in NAMES {
            let path = this.bin(name);
            if !path.is_file() {
                return Err(Error::Missing {
                    what: name.to_string(),
                    path,
                });
            }
        }
        let stages = this.kwok_stages();
        if !stages.is_file() {
            return Err(Error::Missing {
                what: "kwok's stage configuration".into(),
                path: stages,
            });
        }
        Ok(this)
    }

    /// Path of one binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// The Stages kwok runs (assembled by `install-kube.sh` from the kwok module).
    pub fn kwok_stages(&self) -> PathBuf {
        self.dir.join("kwok-stages.yaml")
    }

    /// The kubectl built with the control plane (same version as the API server).
    pub fn kubectl(&self) -> PathBuf {
        self.bin("kubectl")
    }
}
