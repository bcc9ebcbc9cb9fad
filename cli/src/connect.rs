//! Connecting to the coordinator's admin API with the admin certificate, and turning transport
//! failures into sentences an operator can act on.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use skoala_proto::v1::fleet_admin_client::FleetAdminClient;
use skoala_support::admin_config::AdminConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// An admin client and the endpoint it talks to (for error messages).
pub struct Admin {
    pub client: FleetAdminClient<Channel>,
    pub endpoint: String,
}

/// Loads `config` (with `endpoint` overriding the one in the file) and connects.
pub async fn connect(config: &Path, endpoint: Option<&str>) -> anyhow::Result<Admin> {
    let cfg = AdminConfig::load(config)?;
    let endpoint = endpoint
        .unwrap_or(&cfg.endpoint)
        .trim_end_matches('/')
        .to_string();
    if !endpoint.starts_with("https://") {
        bail!("endpoint {endpoint:?} must start with https:// (the coordinator only speaks TLS)");
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.certificate_authority))
        .identity(Identity::from_pem(&cfg.client_certificate, &cfg.client_key));
    let channel = Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .tls_config(tls)
        .with_context(|| format!("invalid TLS settings in {}", config.display()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!(explain_transport(&endpoint, &chain(&e))))?;
    Ok(Admin {
        client: FleetAdminClient::new(channel),
        endpoint,
    })
}

/// The error and all its causes, joined.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Drops the layers' repeated "transport error" prefixes that say nothing.
fn tidy(detail: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in detail.split(": ") {
        if part == "transport error" || parts.last() == Some(&part) {
            continue;
        }
        parts.push(part);
    }
    parts.join(": ")
}

/// Classifies a connection failure.
pub fn explain_transport(endpoint: &str, detail: &str) -> String {
    let detail = &tidy(detail);
    let lower = detail.to_lowercase();
    if lower.contains("connection refused") {
        format!(
            "cannot reach coordinator at {endpoint}: connection refused (is `skoala-coordinator serve` running there?)"
        )
    } else if lower.contains("received fatal alert") || lower.contains("alert") {
        format!(
            "coordinator rejected the admin certificate: {detail} (is it the admin.yaml of this fleet, and not expired?)"
        )
    } else if lower.contains("unknownissuer")
        || lower.contains("invalid peer certificate")
        || lower.contains("notvalidforname")
    {
        format!(
            "cannot verify the coordinator's certificate at {endpoint}: {detail} (does certificateAuthority in the config belong to this fleet, and was the host given to `init --san`?)"
        )
    } else if lower.contains("timed out") || lower.contains("deadline") {
        format!("cannot reach coordinator at {endpoint}: timed out ({detail})")
    } else {
        format!("cannot reach coordinator at {endpoint}: {detail}")
    }
}

/// Turns a failed call into an error naming what the coordinator said.
pub fn explain_status(endpoint: &str, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let detail = match status.source() {
        Some(src) => format!("{}: {}", status.message(), chain(src)),
        None => status.message().to_string(),
    };
    match status.code() {
        Code::Unavailable | Code::Unknown if status.source().is_some() => {
            anyhow::anyhow!(explain_transport(endpoint, &detail))
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            anyhow::anyhow!("coordinator rejected the admin certificate: {detail}")
        }
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => {
            anyhow::anyhow!("{detail}")
        }
        code => anyhow::anyhow!("coordinator at {endpoint} answered {code:?}: {detail}"),
    }
}
