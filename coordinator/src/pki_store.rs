//! Where the fleet's trust root lives (design §7, `PkiStore`): the data dir's files on the
//! SQLite store, the Secret `skoala-fleet-pki` on the kube store, where every replica reads the
//! same CA and server credential and the data dir is only a cache.
//!
//! Both hold the same five files under the same names ([`crate::data_dir`]'s constants), so
//! `migrate` copies the PKI verbatim and agents keep their certificates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use skoala_kubestore::secrets::{self, PKI_SECRET};

use crate::data_dir::{ADMIN_CONFIG, CA_CERT, CA_KEY, DataDir, SERVER_CERT, SERVER_KEY};

/// The trust root `init` makes: PEM texts and the operator's `admin.yaml`.
#[derive(Clone)]
pub struct Pki {
    /// The fleet CA certificate, the trust bundle agents and `skoalactl` get.
    pub ca_pem: String,
    /// The fleet CA's private key.
    pub ca_key_pem: String,
    /// The coordinator's serving certificate.
    pub server_pem: String,
    /// Its private key.
    pub server_key_pem: String,
    /// The operator's credential for `skoalactl`. `init` always makes it; an operator may
    /// delete it from a data dir once they copied it away, and the coordinator still serves.
    pub admin_yaml: Option<String>,
}

/// The files a coordinator cannot serve without, by name.
pub const REQUIRED: [&str; 4] = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY];

impl Pki {
    /// The files by name, as the PKI Secret's `data` holds them.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (CA_CERT, Some(&self.ca_pem)),
            (CA_KEY, Some(&self.ca_key_pem)),
            (SERVER_CERT, Some(&self.server_pem)),
            (SERVER_KEY, Some(&self.server_key_pem)),
            (ADMIN_CONFIG, self.admin_yaml.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, text)| Some((name.to_string(), text?.as_bytes().to_vec())))
        .collect()
    }

    /// The PKI from its files by name; every one of [`REQUIRED`] must be there, all as UTF-8.
    pub fn from_files(mut files: BTreeMap<String, Vec<u8>>) -> anyhow::Result<Pki> {
        let mut take = |name: &str| -> anyhow::Result<Option<String>> {
            files
                .remove(name)
                .map(|bytes| {
                    String::from_utf8(bytes).with_context(|| format!("{name} is not text"))
                })
                .transpose()
        };
        let mut require = |name: &str| -> anyhow::Result<String> {
            take(name)?.with_context(|| format!("the PKI has no {name}"))
        };
        Ok(Pki {
            ca_pem: require(CA_CERT)?,
            ca_key_pem: require(CA_KEY)?,
            server_pem: require(SERVER_CERT)?,
            server_key_pem: require(SERVER_KEY)?,
            admin_yaml: take(ADMIN_CONFIG)?,
        })
    }
}

/// Where a coordinator's PKI is kept.
#[derive(Clone)]
pub enum PkiStore {
    /// Files in the data dir (`--store sqlite`).
    DataDir(DataDir),
    /// The Secret `skoala-fleet-pki` in the coordinator's namespace (`--store kube`).
    Secret {
        /// Speaks to the control-plane cluster.
        client: kube::Client,
        /// The coordinator's namespace.
        namespace: String,
    },
}

impl PkiStore {
    /// The Secret in `namespace` of the control-plane cluster: `kubeconfig`, else
    /// `KUBECONFIG`'s, else the pod's own.
    pub async fn secret(kubeconfig: Option<PathBuf>, namespace: String) -> anyhow::Result<Self> {
        let client = crate::control_plane::connect(kubeconfig).await?;
        Ok(PkiStore::Secret { client, namespace })
    }

    /// The PKI `init` made; an error saying how to make it when there is none. (On the data
    /// dir, `serve` first finishes or clears an interrupted `init`: `crate::init::recover`.)
    pub async fn load(&self) -> anyhow::Result<Pki> {
        match self {
            PkiStore::DataDir(dir) => {
                let mut files = BTreeMap::new();
                for name in REQUIRED.into_iter().chain([ADMIN_CONFIG]) {
                    let path = dir.root().join(name);
                    if name == ADMIN_CONFIG && !path.exists() {
                        continue;
                    }
                    let bytes = std::fs::read(&path).with_context(|| {
                        format!(
                            "cannot read {} (did you run `skoala-coordinator init --data-dir {}`?)",
                            path.display(),
                            dir.root().display()
                        )
                    })?;
                    files.insert(name.to_string(), bytes);
                }
                Pki::from_files(files)
            }
            PkiStore::Secret { client, namespace } => {
                let files = secrets::load_pki(client, namespace)
                    .await
                    .with_context(|| format!("loading the fleet's PKI from namespace {namespace}"))?
                    .with_context(|| {
                        format!(
                            "there is no Secret {namespace}/{PKI_SECRET} (did you run \
                             `skoala-coordinator init --store kube --namespace {namespace}`?)"
                        )
                    })?;
                Pki::from_files(files).with_context(|| format!("Secret {namespace}/{PKI_SECRET}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pki_round_trips_through_its_files_and_refuses_a_missing_one() {
        let pki = Pki {
            ca_pem: "ca".into(),
            ca_key_pem: "ca key".into(),
            server_pem: "server".into(),
            server_key_pem: "server key".into(),
            admin_yaml: Some("admin".into()),
        };
        let files = pki.files();
        assert_eq!(
            files.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "admin.yaml",
                "ca-key.pem",
                "ca.pem",
                "server-key.pem",
                "server.pem"
            ],
            "the data dir's file names"
        );
        let back = Pki::from_files(files.clone()).expect("whole");
        assert_eq!(back.files(), files);

        let mut without_admin = files.clone();
        without_admin.remove(ADMIN_CONFIG);
        let back = Pki::from_files(without_admin.clone()).expect("admin.yaml is optional");
        assert_eq!((back.files(), back.admin_yaml), (without_admin, None));

        let mut partial = files;
        partial.remove(CA_KEY);
        let e = Pki::from_files(partial).err().expect("incomplete");
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
    }
}
