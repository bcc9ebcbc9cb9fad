//! `skoalactl admin create|list|revoke`: one admin identity per operator.
//!
//! Each operator gets a certificate of their own (its serial recorded by the coordinator,
//! which checks it on every call), with an expiry, revoked by name when they leave; audit lines
//! name them. `init`'s admin.yaml is the first such identity, `bootstrap`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use skoala_proto::v1::{CreateAdminRequest, ListAdminsRequest, RevokeAdminRequest};
use skoala_support::admin_config::AdminConfig;

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, time_s};

/// An admin identity as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminView {
    pub name: String,
    pub serial: String,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub revoked: bool,
}

/// `skoalactl admin create NAME`: writes the new operator's admin.yaml (0600) to `out`.
pub async fn create(
    admin: &mut Admin,
    name: String,
    expires: Duration,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.admin.yaml")));
    if out.exists() {
        anyhow::bail!("{} exists; choose another --out", out.display());
    }
    let resp = admin
        .client
        .create_admin(CreateAdminRequest {
            name: name.clone(),
            ttl_seconds: expires.as_secs() as i64,
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    AdminConfig {
        endpoint: admin.endpoint.clone(),
        certificate_authority: resp.ca_pem,
        client_certificate: resp.certificate_pem,
        client_key: resp.key_pem,
    }
    .save(&out)?;
    println!(
        "admin {name} created (certificate {}, expires {}): {} holds the credential; hand it to {name} only",
        resp.serial,
        time_s(resp.not_after_unix).unwrap_or_default(),
        out.display()
    );
    Ok(())
}

/// `skoalactl admin list`.
pub async fn list(admin: &mut Admin, format: Format) -> anyhow::Result<()> {
    let resp = admin
        .client
        .list_admins(ListAdminsRequest {})
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let views: Vec<AdminView> = resp
        .admins
        .iter()
        .map(|a| AdminView {
            name: a.name.clone(),
            serial: a.serial.clone(),
            created: time_s(a.created_unix),
            expires: time_s(a.not_after_unix),
            revoked: a.revoked,
        })
        .collect();
    if output::structured(format, &views)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.serial.clone(),
                v.expires.clone().unwrap_or_default(),
                if v.revoked { "revoked" } else { "active" }.to_string(),
            ]
        })
        .collect();
    output::table(&["NAME", "SERIAL", "EXPIRES", "STATE"], &rows);
    Ok(())
}

/// `skoalactl admin revoke NAME`.
pub async fn revoke(admin: &mut Admin, name: String) -> anyhow::Result<()> {
    let resp = admin
        .client
        .revoke_admin(RevokeAdminRequest { name: name.clone() })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    println!(
        "admin {name} revoked ({} certificate(s)): refused from the next call",
        resp.revoked
    );
    Ok(())
}
