//! The fleet CA: one self-signed root created by `skoala-coordinator init`, which signs the
//! coordinator's server certificate, the operator's admin certificate and every agent's
//! short-lived client certificate.
//!
//! Who a certificate speaks for is carried in a SPIFFE-style URI subject alternative name, not
//! in the common name alone: `spiffe://skoala-fleet/admin` for operators and
//! `spiffe://skoala-fleet/cluster/<kube-system uid>` for agents. A URI SAN is what the
//! coordinator checks on every call ([`crate::identity`]); the CN is only there for humans
//! reading `openssl x509` output.
//!
//! Agents send a CSR; the coordinator signs *its own* parameters (identity from the join token
//! exchange or from the certificate being renewed) with the public key of the CSR. Nothing the
//! agent writes into the CSR's subject or SANs is trusted.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

/// The trust domain in every identity URI.
pub const TRUST_DOMAIN: &str = "skoala-fleet";
/// URI SAN of operator (admin) certificates.
pub const ADMIN_URI: &str = "spiffe://skoala-fleet/admin";
/// URI SAN prefix of agent certificates; the cluster id follows.
pub const CLUSTER_URI_PREFIX: &str = "spiffe://skoala-fleet/cluster/";
/// URI SAN of the coordinator's server certificate.
pub const COORDINATOR_URI: &str = "spiffe://skoala-fleet/coordinator";

/// Certificates are backdated by this much so a peer whose clock runs a little behind does not
/// reject a certificate that was just issued.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The URI SAN of the agent certificate for `cluster_id`.
pub fn cluster_uri(cluster_id: &str) -> String {
    format!("{CLUSTER_URI_PREFIX}{cluster_id}")
}

/// Errors creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A key or certificate could not be made.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// An agent's CSR does not parse or its signature does not verify.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    /// A DNS name, IP or URI that cannot go into a certificate.
    #[error("invalid name {0:?} for a certificate")]
    BadName(String),
    /// A validity time outside what X.509 can say.
    #[error("invalid time: {0}")]
    Time(String),
}

/// What kind of peer a leaf certificate is for (sets the extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication (the coordinator).
    Server,
    /// TLS client authentication (agents, operators).
    Client,
}

/// Everything that goes into a leaf certificate. Public so tests can mint unusual certificates
/// (expired, foreign CA) with the same code path as the product.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The subject's common name: the cluster id of an agent, a label for the others.
    pub common_name: String,
    /// URI SANs (identities).
    pub uris: Vec<String>,
    /// DNS names and IP addresses (servers).
    pub hosts: Vec<String>,
    /// Start of validity (a little in the past, for peers whose clocks run behind).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Server or client.
    pub usage: Usage,
}

impl LeafSpec {
    /// A spec valid from now (minus clock skew) for `ttl`.
    pub fn new(common_name: impl Into<String>, usage: Usage, ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.into(),
            uris: Vec::new(),
            hosts: Vec::new(),
            not_before: now - CLOCK_SKEW,
            not_after: now + ttl,
            usage,
        }
    }
}

/// A signed certificate and the facts the store records about it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Lower-case hex of the serial number, as [`crate::identity`] reads it back.
    pub serial_hex: String,
    /// End of validity, Unix seconds (what the store records and renewal is timed from).
    pub not_after_unix: i64,
}

/// A certificate together with a freshly generated private key (server and admin credentials,
/// which the coordinator creates itself; agents generate their own keys).
pub struct IssuedWithKey {
    /// The certificate.
    pub issued: Issued,
    /// PEM PKCS#8 private key. Secret: write it 0600, never log it.
    pub key_pem: String,
}

/// The fleet certificate authority.
pub struct FleetCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl FleetCa {
    /// Creates a new CA, valid for `ttl`. Returns it with its private key in PEM.
    pub fn generate(name: &str, ttl: Duration) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, TRUST_DOMAIN);
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - CLOCK_SKEW)?;
        params.not_after = to_offset(now + ttl)?;
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads a CA from its certificate and key (both PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (the trust bundle agents and operators verify the coordinator with).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs `spec` for the public key `key`.
    pub fn sign(&self, spec: &LeafSpec, key: &impl PublicKeyData) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, TRUST_DOMAIN);
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match spec.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        for uri in &spec.uris {
            let ia5 = uri
                .clone()
                .try_into()
                .map_err(|_| PkiError::BadName(uri.clone()))?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        for host in &spec.hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|_| PkiError::BadName(host.clone()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.not_before = to_offset(spec.not_before)?;
        params.not_after = to_offset(spec.not_after)?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_unix: unix(spec.not_after),
        })
    }

    /// Generates a key and signs `spec` for it.
    pub fn issue_with_key(&self, spec: &LeafSpec) -> Result<IssuedWithKey, PkiError> {
        let key = KeyPair::generate()?;
        let issued = self.sign(spec, &key)?;
        Ok(IssuedWithKey {
            issued,
            key_pem: key.serialize_pem(),
        })
    }

    /// The coordinator's server certificate for `hosts` (DNS names or IP addresses).
    pub fn issue_server(&self, hosts: &[String], ttl: Duration) -> Result<IssuedWithKey, PkiError> {
        let mut spec = LeafSpec::new("skoala-coordinator", Usage::Server, ttl);
        spec.hosts = hosts.to_vec();
        spec.uris = vec![COORDINATOR_URI.to_string()];
        self.issue_with_key(&spec)
    }

    /// An operator (admin) client certificate.
    pub fn issue_admin(&self, ttl: Duration) -> Result<IssuedWithKey, PkiError> {
        let mut spec = LeafSpec::new("skoala-admin", Usage::Client, ttl);
        spec.uris = vec![ADMIN_URI.to_string()];
        self.issue_with_key(&spec)
    }

    /// An admin certificate for operator `name` (its common name; the store maps the serial
    /// to the name, and the admin API checks the serial on every call).
    pub fn issue_operator(&self, name: &str, ttl: Duration) -> Result<IssuedWithKey, PkiError> {
        let mut spec = LeafSpec::new(name, Usage::Client, ttl);
        spec.uris = vec![ADMIN_URI.to_string()];
        self.issue_with_key(&spec)
    }

    /// Signs an agent's CSR as the client certificate of `cluster_id`. The CSR's signature is
    /// verified (proof that the agent holds the key); its subject and SANs are ignored.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        cluster_id: &str,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        self.sign(&agent_spec(cluster_id, ttl), &csr.public_key)
    }
}

/// The spec of an agent certificate for `cluster_id`.
pub fn agent_spec(cluster_id: &str, ttl: Duration) -> LeafSpec {
    let mut spec = LeafSpec::new(cluster_id, Usage::Client, ttl);
    spec.uris = vec![cluster_uri(cluster_id)];
    spec
}

/// A PEM CSR for a fresh key (what an agent does; used by tests that play an agent).
/// Returns `(csr_pem, key_pem)`.
pub fn generate_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// A random positive serial number and its hex form. The first byte is kept in 0x01..=0x7f
/// so the DER integer has no sign padding or stripped zero, and the hex we store equals the
/// hex read back from the certificate.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| PkiError::Time(e.to_string()))?
        .as_secs();
    OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| PkiError::Time(e.to_string()))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
