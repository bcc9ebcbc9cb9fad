//! `skoala-coordinator init`: creates a fleet's trust root in a fresh data dir.
//!
//! Writes the CA, the coordinator's server certificate and the operator's `admin.yaml`. An
//! existing CA is never replaced silently: replacing it invalidates every agent's certificate,
//! so the operator must say `--overwrite-ca`.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::data_dir::{DataDir, write_private, write_public};
use crate::pki::FleetCa;
use crate::store::{AdminRecord, Store};
use skoala_support::admin_config::AdminConfig;

/// What `init` creates.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where the CA, the server credential and `admin.yaml` go.
    pub data_dir: DataDir,
    /// Extra DNS names / IPs for the server certificate (localhost and loopback are always in).
    pub sans: Vec<String>,
    /// Endpoint written to admin.yaml; defaults to `https://<first SAN or localhost>:7443`.
    pub endpoint: Option<String>,
    /// Replace an existing CA. Off by default: a new CA orphans every agent certificate.
    pub overwrite_ca: bool,
    /// Lifetime of the fleet CA.
    pub ca_ttl: Duration,
    /// Lifetime of the coordinator's serving certificate.
    pub server_ttl: Duration,
    /// Lifetime of the admin certificate in `admin.yaml`.
    pub admin_ttl: Duration,
}

/// The hosts always in the server certificate, so loopback tests and port-forwards work.
pub const DEFAULT_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Runs `init`. Returns the path of admin.yaml.
pub fn run(opts: &InitOptions) -> anyhow::Result<std::path::PathBuf> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("cannot create data dir {}", dir.root().display()))?;
    if dir.ca_cert().exists() && !opts.overwrite_ca {
        bail!(
            "{} already holds a fleet CA; refusing to replace it because every agent certificate \
             it signed would stop working. Pass --overwrite-ca if that is what you want.",
            dir.root().display()
        );
    }
    let (ca, ca_key_pem) = FleetCa::generate("skoala-fleet CA", opts.ca_ttl)?;
    let mut hosts: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in &opts.sans {
        if !hosts.contains(san) {
            hosts.push(san.clone());
        }
    }
    let server = ca.issue_server(&hosts, opts.server_ttl)?;
    let admin = ca.issue_admin(opts.admin_ttl)?;

    write_private(&dir.ca_key(), ca_key_pem.as_bytes())
        .with_context(|| format!("writing {}", dir.ca_key().display()))?;
    write_public(&dir.ca_cert(), ca.cert_pem().as_bytes())
        .with_context(|| format!("writing {}", dir.ca_cert().display()))?;
    write_private(&dir.server_key(), server.key_pem.as_bytes())
        .with_context(|| format!("writing {}", dir.server_key().display()))?;
    write_public(&dir.server_cert(), server.issued.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", dir.server_cert().display()))?;

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
    config.save(&dir.admin_config())?;
    Ok(dir.admin_config())
}

/// The admin `init` writes to `admin.yaml`, as the store knows it.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap";

/// Records the certificate in `DATA/admin.yaml` as the admin `bootstrap` when the store does
/// not know it yet: after `init` (also `--overwrite-ca`, which replaces the earlier bootstrap
/// certificate), or in a data dir from before admins were recorded, whose operator would
/// otherwise be locked out. A bootstrap certificate once revoked stays revoked. Every other
/// admin is made with `skoalactl admin create`. (Whoever can write the data dir owns the
/// coordinator anyway: docs/security.md.)
pub(crate) async fn record_bootstrap_admin<S: Store>(
    store: &S,
    dir: &DataDir,
) -> anyhow::Result<()> {
    if !dir.admin_config().exists() {
        return Ok(());
    }
    let config = AdminConfig::load(&dir.admin_config())?;
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
