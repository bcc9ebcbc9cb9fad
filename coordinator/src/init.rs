//! `skoala-coordinator init`: creates a fleet's trust root in a fresh data dir, or with
//! `--store kube` in the Secret `skoala-fleet-pki` ([`run_kube`]).
//!
//! Writes the CA, the coordinator's server certificate and the operator's `admin.yaml`. An
//! existing CA is never replaced silently: replacing it invalidates every agent's certificate,
//! so the operator must say `--overwrite-ca`.
//!
//! On the kube store the Secret is made in one create request, which is all-or-nothing by
//! itself: of two replicas' init containers racing, the API server lets exactly one create it.
//!
//! **Invariant:** the data dir holds all of `init`'s files or none of this run's. A crash or an
//! error half-way (a full disk) must not leave a CA without its server certificate: `serve`
//! would fail on every restart, and `init --if-missing` (the chart's init container) would see
//! the CA and do nothing. The volume is mounted *at* the data dir, so the folder itself cannot
//! be swapped in with one rename; instead `init` writes every file into a staging folder inside
//! it (`DIR/.init/`), syncs them, writes the marker `complete` last, then renames each file
//! into place, `ca.pem` (what says "initialised") last. A staging folder found later (by `init`
//! or `serve`, [`recover`]) is a run that was interrupted: without the marker nothing of it was
//! published and it is removed; with it, the renames are finished.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::data_dir::{DataDir, write_private, write_public};
use crate::pki::FleetCa;
use crate::pki_store::{Pki, PkiStore};
use skoala_kubestore::secrets::{self, Created, PKI_SECRET};
use skoala_store::{AdminRecord, Store};
use skoala_support::admin_config::AdminConfig;

/// What `init` creates.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Extra DNS names / IPs for the server certificate (localhost and loopback are always in).
    pub sans: Vec<String>,
    /// Endpoint written to admin.yaml; defaults to `https://<first SAN or localhost>:7443`.
    pub endpoint: Option<String>,
    /// Replace an existing CA. Off by default: a new CA orphans every agent certificate.
    pub overwrite_ca: bool,
    /// Do nothing when a CA exists already (init containers run on every start).
    pub if_missing: bool,
    /// Lifetime of the fleet CA.
    pub ca_ttl: Duration,
    /// Lifetime of the coordinator's serving certificate.
    pub server_ttl: Duration,
    /// Lifetime of the admin certificate in `admin.yaml`.
    pub admin_ttl: Duration,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initialised {
    /// A new CA and credentials; the path of `admin.yaml`.
    Created(std::path::PathBuf),
    /// A new CA and credentials in the Secret [`PKI_SECRET`] of this namespace.
    CreatedSecret(String),
    /// A CA existed and `if_missing` was set: nothing was written.
    AlreadyThere,
}

/// The hosts always in the server certificate, so loopback tests and port-forwards work.
pub const DEFAULT_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The files `init` publishes, in the order they are renamed into place: `ca.pem` last,
/// because its presence is what says the data dir is initialised.
fn published(dir: &DataDir) -> [std::path::PathBuf; 5] {
    [
        dir.ca_key(),
        dir.server_key(),
        dir.server_cert(),
        dir.admin_config(),
        dir.ca_cert(),
    ]
}

/// Written into the staging folder after every file in it is synced: from then on the run
/// is finished by [`recover`] rather than thrown away.
const COMPLETE: &str = "complete";

/// Runs `init` on the data dir `dir`.
pub fn run(dir: &DataDir, opts: &InitOptions) -> anyhow::Result<Initialised> {
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("cannot create data dir {}", dir.root().display()))?;
    recover(dir)?;
    if dir.ca_cert().exists() {
        if opts.if_missing {
            return Ok(Initialised::AlreadyThere);
        }
        if !opts.overwrite_ca {
            bail!(
                "{} already holds a fleet CA; refusing to replace it because every agent \
                 certificate it signed would stop working. Pass --overwrite-ca if that is what \
                 you want.",
                dir.root().display()
            );
        }
    }
    let pki = generate(opts)?;
    publish_pki(dir, &pki)?;
    Ok(Initialised::Created(dir.admin_config()))
}

/// Writes `pki` into the data dir `dir` all or nothing: staged, synced, marked complete, then
/// published (see the module doc). `init` writes a new one; `migrate` one from the kube store.
pub fn publish_pki(dir: &DataDir, pki: &Pki) -> anyhow::Result<()> {
    let staging = DataDir::new(dir.staging());
    let staged = (|| -> anyhow::Result<()> {
        std::fs::create_dir(staging.root())
            .with_context(|| format!("creating {}", staging.root().display()))?;
        write_private(&staging.ca_key(), pki.ca_key_pem.as_bytes())
            .with_context(|| format!("writing {}", staging.ca_key().display()))?;
        write_public(&staging.ca_cert(), pki.ca_pem.as_bytes())
            .with_context(|| format!("writing {}", staging.ca_cert().display()))?;
        write_private(&staging.server_key(), pki.server_key_pem.as_bytes())
            .with_context(|| format!("writing {}", staging.server_key().display()))?;
        write_public(&staging.server_cert(), pki.server_pem.as_bytes())
            .with_context(|| format!("writing {}", staging.server_cert().display()))?;
        if let Some(admin) = &pki.admin_yaml {
            write_private(&staging.admin_config(), admin.as_bytes())
                .with_context(|| format!("writing {}", staging.admin_config().display()))?;
        }
        sync_dir(staging.root())?;
        let marker = staging.root().join(COMPLETE);
        write_private(&marker, b"").with_context(|| format!("writing {}", marker.display()))?;
        sync_dir(staging.root())
    })();
    if let Err(e) = staged {
        // Best effort: what is left is removed by the next `init` or `serve` anyway.
        let _ = std::fs::remove_dir_all(staging.root());
        return Err(e.context(format!(
            "writing the PKI failed; nothing was published to {}",
            dir.root().display()
        )));
    }
    publish(dir)
}

/// Runs `init` on the PKI's home: [`run`] on a data dir, [`run_kube`] on the Secret.
pub async fn run_in(home: &PkiStore, opts: &InitOptions) -> anyhow::Result<Initialised> {
    match home {
        PkiStore::DataDir(dir) => run(dir, opts),
        PkiStore::Secret { client, namespace } => run_kube(client, namespace, opts).await,
    }
}

/// Runs `init --store kube`: the PKI as the Secret [`PKI_SECRET`] in `namespace`, made in one
/// create. An existing Secret is never replaced: with `if_missing` that is success, without it
/// an error.
pub async fn run_kube(
    client: &kube::Client,
    namespace: &str,
    opts: &InitOptions,
) -> anyhow::Result<Initialised> {
    if opts.overwrite_ca {
        bail!(
            "--overwrite-ca is not supported with --store kube: to start the fleet over with a \
             new CA (every agent certificate stops working), delete Secret \
             {namespace}/{PKI_SECRET} and run init again"
        );
    }
    let pki = generate(opts)?;
    match secrets::create_pki(client, namespace, &pki.files()).await? {
        Created::Created => Ok(Initialised::CreatedSecret(namespace.to_string())),
        Created::AlreadyExists if opts.if_missing => Ok(Initialised::AlreadyThere),
        Created::AlreadyExists => bail!(
            "Secret {namespace}/{PKI_SECRET} already holds a fleet CA; refusing to replace it \
             because every agent certificate it signed would stop working (pass --if-missing \
             to accept the one there)"
        ),
    }
}

/// A new CA, the server credential it signs for `opts.sans` and the operator's `admin.yaml`.
fn generate(opts: &InitOptions) -> anyhow::Result<Pki> {
    let (ca, ca_key_pem) = FleetCa::generate("skoala-fleet CA", opts.ca_ttl)?;
    let mut hosts: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in &opts.sans {
        if !hosts.contains(san) {
            hosts.push(san.clone());
        }
    }
    let server = ca.issue_server(&hosts, opts.server_ttl)?;
    let admin = ca.issue_admin(opts.admin_ttl)?;
    let endpoint = opts.endpoint.clone().unwrap_or_else(|| {
        let host = opts.sans.first().map(String::as_str).unwrap_or("localhost");
        format!("https://{host}:7443")
    });
    let config = AdminConfig {
        endpoint,
        certificate_authority: ca.cert_pem().to_string(),
        client_certificate: admin.issued.cert_pem,
        client_key: admin.key_pem,
    };
    Ok(Pki {
        ca_pem: ca.cert_pem().to_string(),
        ca_key_pem,
        server_pem: server.issued.cert_pem,
        server_key_pem: server.key_pem,
        admin_yaml: Some(config.to_yaml().context("writing admin.yaml")?),
    })
}

/// Clears what an interrupted `init` left in the data dir (see the module doc): a staging
/// folder without its marker is removed, one with it is published. Both are logged. Called by
/// `init` and by `serve` before they read the data dir.
pub fn recover(dir: &DataDir) -> anyhow::Result<()> {
    let staging = dir.staging();
    if !staging.exists() {
        return Ok(());
    }
    if staging.join(COMPLETE).exists() {
        tracing::warn!(
            staging = %staging.display(),
            "an earlier init was interrupted while publishing its files; finishing it"
        );
        publish(dir)
    } else {
        tracing::warn!(
            staging = %staging.display(),
            "removing a partial init left by an interrupted `skoala-coordinator init`; \
             nothing of it had been published"
        );
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the partial init {}", staging.display()))
    }
}

/// Renames the staged files into the data dir (those not moved yet, so a second call after
/// a crash finishes the first), syncs it, and removes the staging folder.
fn publish(dir: &DataDir) -> anyhow::Result<()> {
    let staging = dir.staging();
    for path in published(dir) {
        let name = path.file_name().context("a data dir file has a name")?;
        let from = staging.join(name);
        if from.exists() {
            std::fs::rename(&from, &path)
                .with_context(|| format!("publishing {}", path.display()))?;
        }
    }
    sync_dir(dir.root())?;
    std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    sync_dir(dir.root())
}

/// Makes the entries created or renamed in `dir` survive a crash.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// The admin `init` writes to `admin.yaml`, as the store knows it.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap";

/// Records the certificate in the PKI's `admin.yaml` as the admin `bootstrap` when the store
/// does not know it yet: after `init` (also `--overwrite-ca`, which replaces the earlier
/// bootstrap certificate), or in a data dir from before admins were recorded, whose operator
/// would otherwise be locked out. A bootstrap certificate once revoked stays revoked. Every
/// other admin is made with `skoalactl admin create`. (Whoever can write the data dir, or the
/// PKI Secret, owns the coordinator anyway: docs/security.md.)
pub(crate) async fn record_bootstrap_admin<S: Store>(
    store: &S,
    admin_yaml: Option<&str>,
) -> anyhow::Result<()> {
    let Some(admin_yaml) = admin_yaml else {
        return Ok(());
    };
    let config = AdminConfig::from_yaml(admin_yaml).context("parsing admin.yaml")?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(config.client_certificate.as_bytes())
        .map_err(|e| anyhow::anyhow!("the certificate in admin.yaml: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the certificate in admin.yaml: {e}"))?;
    let serial_hex = hex::encode(cert.raw_serial());
    if store.admin(serial_hex.clone()).await?.is_some() {
        return Ok(());
    }
    store
        .revoke_admin(BOOTSTRAP_ADMIN.to_string(), crate::clock::now_unix())
        .await?;
    let record = AdminRecord {
        name: BOOTSTRAP_ADMIN.to_string(),
        serial_hex,
        created_unix: crate::clock::now_unix(),
        not_after_unix: cert.validity().not_after.timestamp(),
        revoked_unix: None,
    };
    store.insert_admin(record, crate::clock::now_unix()).await?;
    tracing::info!(
        admin = BOOTSTRAP_ADMIN,
        "recorded the admin certificate of admin.yaml"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> InitOptions {
        InitOptions {
            sans: vec!["fleet.example.com".into()],
            endpoint: None,
            overwrite_ca: false,
            if_missing: false,
            ca_ttl: Duration::from_secs(3600),
            server_ttl: Duration::from_secs(3600),
            admin_ttl: Duration::from_secs(3600),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const ALL: [&str; 5] = [
        "admin.yaml",
        "ca-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ];

    #[test]
    fn init_publishes_every_file_once_and_never_replaces_a_ca_unasked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        let opts = options();
        let done = run(&dir, &opts).expect("init");
        assert_eq!(done, Initialised::Created(tmp.path().join("admin.yaml")));
        assert_eq!(entries(tmp.path()), ALL, "no staging folder left");
        let ca = std::fs::read(tmp.path().join("ca.pem")).expect("ca");

        let again = run(&dir, &opts).expect_err("a second init");
        assert!(
            again.to_string().contains("already holds a fleet CA"),
            "{again}"
        );
        let if_missing = InitOptions {
            if_missing: true,
            ..opts.clone()
        };
        assert_eq!(
            run(&dir, &if_missing).expect("init"),
            Initialised::AlreadyThere
        );
        assert_eq!(std::fs::read(tmp.path().join("ca.pem")).expect("ca"), ca);
    }

    #[test]
    fn a_partial_init_is_cleared_and_a_complete_one_finished() {
        // Killed while writing: two files staged, no marker. Nothing was published, so the
        // leftover goes, and `--if-missing` (the chart's init container) really initialises.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir(dir.staging()).expect("staging");
        for name in ["ca-key.pem", "ca.pem"] {
            std::fs::write(dir.staging().join(name), "half").expect("staged");
        }
        recover(&dir).expect("recover");
        assert_eq!(entries(tmp.path()), Vec::<String>::new());
        let opts = InitOptions {
            if_missing: true,
            ..options()
        };
        assert!(matches!(run(&dir, &opts), Ok(Initialised::Created(_))));
        assert_eq!(entries(tmp.path()), ALL);

        // Killed while publishing: the marker written, two files already renamed. The run is
        // finished, so the CA and the key next to it are the same run's.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir(dir.staging()).expect("staging");
        for name in ALL {
            std::fs::write(dir.staging().join(name), format!("new {name}")).expect("staged");
        }
        std::fs::write(dir.staging().join(COMPLETE), "").expect("marker");
        for name in ["ca-key.pem", "server-key.pem"] {
            std::fs::rename(dir.staging().join(name), tmp.path().join(name)).expect("moved");
        }
        recover(&dir).expect("recover");
        assert_eq!(entries(tmp.path()), ALL);
        for name in ALL {
            let text = std::fs::read_to_string(tmp.path().join(name)).expect("read");
            assert_eq!(text, format!("new {name}"));
        }
    }
}
