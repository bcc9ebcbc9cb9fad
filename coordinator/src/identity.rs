//! Who is calling: the identity in a peer's client certificate, and the per-RPC checks built on
//! it.
//!
//! The TLS layer has already verified the chain to the fleet CA and the validity period (an
//! expired or foreign certificate never reaches a handler). Client certificates are *optional*
//! at the TLS layer because `Register` must work without one; every other RPC calls
//! [`require_admin`] or [`require_agent`] first.

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::pki::{ADMIN_URI, CLUSTER_URI_PREFIX};

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// An operator (`skoalactl`).
    Admin { serial_hex: String },
    /// The agent of one cluster.
    Agent {
        cluster_id: String,
        serial_hex: String,
    },
}

/// Why a request's certificate does not identify an allowed peer.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate cannot be parsed")]
    Unparseable,
    #[error("the client certificate carries no skoala-fleet identity")]
    NoIdentity,
}

/// Reads the identity from a DER certificate.
pub fn peer_from_der(der: &[u8]) -> Result<Peer, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    let serial_hex = hex::encode(cert.raw_serial());
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?
        .ok_or(IdentityError::NoIdentity)?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if *uri == ADMIN_URI {
                return Ok(Peer::Admin { serial_hex });
            }
            if let Some(id) = uri.strip_prefix(CLUSTER_URI_PREFIX)
                && !id.is_empty()
            {
                return Ok(Peer::Agent {
                    cluster_id: id.to_string(),
                    serial_hex,
                });
            }
        }
    }
    Err(IdentityError::NoIdentity)
}

/// The identity of the caller of `request`.
pub fn peer_of<T>(request: &Request<T>) -> Result<Peer, IdentityError> {
    let certs = request.peer_certs().ok_or(IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    peer_from_der(leaf.as_ref())
}

/// The remote address of the caller, for audit entries.
pub fn remote_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A refusal: the status to return and the audit entry to write.
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub kind: &'static str,
    pub cluster_id: String,
    pub detail: String,
}

/// Requires an admin certificate; agents are refused.
pub fn require_admin<T>(request: &Request<T>) -> Result<String, Refusal> {
    match peer_of(request) {
        Ok(Peer::Admin { serial_hex }) => Ok(serial_hex),
        Ok(Peer::Agent {
            cluster_id,
            serial_hex,
        }) => Err(Refusal {
            status: Status::permission_denied(
                "the admin API requires an admin certificate; an agent certificate was presented",
            ),
            kind: "admin.agent_certificate",
            cluster_id,
            detail: format!("agent certificate {serial_hex} used on the admin API"),
        }),
        Err(e) => Err(missing(e, "admin API")),
    }
}

/// Requires an agent certificate; returns `(cluster_id, serial_hex)`.
pub fn require_agent<T>(request: &Request<T>) -> Result<(String, String), Refusal> {
    match peer_of(request) {
        Ok(Peer::Agent {
            cluster_id,
            serial_hex,
        }) => Ok((cluster_id, serial_hex)),
        Ok(Peer::Admin { serial_hex }) => Err(Refusal {
            status: Status::permission_denied(
                "the agent session requires an agent certificate; an admin certificate was presented",
            ),
            kind: "session.admin_certificate",
            cluster_id: String::new(),
            detail: format!("admin certificate {serial_hex} used on Session"),
        }),
        Err(e) => Err(missing(e, "agent session")),
    }
}

fn missing(e: IdentityError, what: &str) -> Refusal {
    let kind = match e {
        IdentityError::NoCertificate => "tls.no_client_certificate",
        _ => "tls.bad_client_certificate",
    };
    Refusal {
        status: Status::unauthenticated(format!(
            "the {what} requires a client certificate issued by the fleet CA: {e}"
        )),
        kind,
        cluster_id: String::new(),
        detail: format!("{what}: {e}"),
    }
}
