//! The agent's mTLS identity: its private key, the certificate the coordinator issued for it, and
//! the fleet CA.
//!
//! The key is generated here and never leaves the agent: registration and renewal send only a
//! CSR. The certificate's subject common name is the cluster id (the `kube-system` UID), which
//! is how the coordinator binds a connection to one cluster.

use std::fmt;

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData as _};
use x509_parser::prelude::FromDer as _;

/// Why a key, certificate or CA cannot be used as the agent's identity.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A new key or its CSR could not be made.
    #[error("generate key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate (or CA) does not parse.
    #[error("the certificate is not valid PEM/X.509: {0}")]
    BadCertificate(String),
    /// The private key does not parse.
    #[error("the private key is not valid PEM: {0}")]
    BadKey(String),
    /// The certificate was issued for another key.
    #[error("the certificate does not belong to the private key")]
    KeyMismatch,
    /// The certificate names no cluster.
    #[error("the certificate has no subject common name (cluster id)")]
    NoClusterId,
    /// The certificate lapsed: the agent must register again.
    #[error(
        "the stored certificate expired at {not_after}: the agent was away longer than the certificate's lifetime"
    )]
    Expired {
        /// When it lapsed.
        not_after: jiff::Timestamp,
    },
    /// The certificate belongs to another cluster.
    #[error(
        "the stored certificate is for cluster {stored}, but this is cluster {actual} (was the identity Secret copied from another cluster?)"
    )]
    OtherCluster {
        /// The cluster id in the certificate.
        stored: String,
        /// This cluster's id.
        actual: String,
    },
}

/// Key + certificate + CA, as PEM, with the facts we need from the certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    key_pem: String,
    /// The client certificate the coordinator issued.
    pub cert_pem: String,
    /// The fleet CA, which the coordinator's server certificate must chain to.
    pub ca_pem: String,
    /// The certificate's subject common name.
    pub cluster_id: String,
    /// The certificate's serial: the coordinator accepts a session only with a serial it
    /// issued to this cluster.
    pub serial_hex: String,
    /// The start of the certificate's validity.
    pub not_before: jiff::Timestamp,
    /// The end of its validity; renewal starts at two thirds of the lifetime.
    pub not_after: jiff::Timestamp,
    /// When this process got the certificate (read it from the Secret, or received it).
    obtained: jiff::Timestamp,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster_id", &self.cluster_id)
            .field("serial", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Validates and assembles credentials: the certificate must parse, carry a common name, and
    /// belong to the key.
    pub fn from_pem(key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<Self, CredentialsError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| CredentialsError::BadKey(e.to_string()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| CredentialsError::BadCertificate(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
            .map_err(|e| CredentialsError::BadCertificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CredentialsError::KeyMismatch);
        }
        let cluster_id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or(CredentialsError::NoClusterId)?
            .to_string();
        let ts = |t: x509_parser::time::ASN1Time| {
            jiff::Timestamp::from_second(t.timestamp())
                .map_err(|e| CredentialsError::BadCertificate(e.to_string()))
        };
        Ok(Self {
            key_pem: key_pem.to_string(),
            cert_pem: cert_pem.to_string(),
            ca_pem: ca_pem.to_string(),
            cluster_id,
            serial_hex: cert.raw_serial_as_string().replace(':', ""),
            not_before: ts(cert.validity().not_before)?,
            not_after: ts(cert.validity().not_after)?,
            obtained: jiff::Timestamp::now(),
        })
    }

    /// The private key (PEM). Only for the TLS stack and the identity Secret: never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Whether these credentials can be used for `cluster_id` at `now`.
    pub fn check(&self, cluster_id: &str, now: jiff::Timestamp) -> Result<(), CredentialsError> {
        if self.cluster_id != cluster_id {
            return Err(CredentialsError::OtherCluster {
                stored: self.cluster_id.clone(),
                actual: cluster_id.to_string(),
            });
        }
        if now >= self.not_after {
            return Err(CredentialsError::Expired {
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// When to ask for a new certificate: at two thirds of the lifetime, so a renewal that fails
    /// has a third of the lifetime left to be retried.
    ///
    /// The lifetime counts from when we got the certificate, not from `notBefore`: CAs backdate
    /// `notBefore` against clock skew, and counting from it would make every fresh certificate
    /// look due for renewal at once (a renewal loop).
    pub fn renew_at(&self) -> jiff::Timestamp {
        let start = self.not_before.max(self.obtained);
        let life = self.not_after.duration_since(start);
        start.checked_add(life * 2 / 3).unwrap_or(self.not_after)
    }
}

/// A freshly generated key and the CSR for it, waiting for the coordinator's certificate.
pub struct PendingKey {
    key: KeyPair,
    /// The CSR to send in `Register` or a renewal.
    pub csr_pem: String,
}

impl PendingKey {
    /// A new ECDSA P-256 key and a CSR whose common name is `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, CredentialsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, cluster_id);
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key, csr_pem })
    }

    /// Combines the key with the certificate issued for it.
    pub fn complete(self, cert_pem: &str, ca_pem: &str) -> Result<Credentials, CredentialsError> {
        Credentials::from_pem(&self.key.serialize_pem(), cert_pem, ca_pem)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer};

    /// A throwaway CA that signs CSRs like the coordinator does, for tests.
    pub(crate) struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pub pem: String,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "test fleet CA");
            let pem = params.self_signed(&key).expect("self-sign").pem();
            Self {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        pub(crate) fn sign(&self, csr_pem: &str, valid_for: jiff::SignedDuration) -> String {
            let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).expect("csr");
            let now = jiff::Timestamp::now();
            let t = |ts: jiff::Timestamp| {
                rcgen::date_time_ymd(1970, 1, 1)
                    + std::time::Duration::from_secs(ts.as_second().try_into().expect("positive"))
            };
            csr.params.not_before = t(now - jiff::SignedDuration::from_secs(60));
            csr.params.not_after = t(now + valid_for);
            csr.signed_by(&self.issuer).expect("sign").pem()
        }
    }

    #[test]
    fn csr_round_trip_binds_key_and_cluster() {
        let ca = TestCa::new();
        let pending = PendingKey::generate("uid-1").expect("generate");
        let cert = ca.sign(&pending.csr_pem, jiff::SignedDuration::from_hours(24));
        let creds = pending.complete(&cert, &ca.pem).expect("complete");
        assert_eq!(creds.cluster_id, "uid-1");
        let now = jiff::Timestamp::now();
        creds.check("uid-1", now).expect("valid");
        assert!(matches!(
            creds.check("uid-2", now),
            Err(CredentialsError::OtherCluster { .. })
        ));
        let later = now + jiff::SignedDuration::from_hours(25);
        let err = creds.check("uid-1", later).expect_err("expired");
        assert!(err.to_string().contains("expired at"), "{err}");
        // Renewal at 2/3 of the lifetime, counted from receipt: the test CA backdates notBefore
        // by a minute, which must not pull the renewal forward.
        let renew = creds.renew_at().duration_since(creds.obtained);
        let life = creds.not_after.duration_since(creds.obtained);
        assert_eq!(renew, life * 2 / 3);
        assert!(creds.renew_at() > now + jiff::SignedDuration::from_hours(15));
        assert!(!format!("{creds:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn refuses_a_certificate_for_another_key() {
        let ca = TestCa::new();
        let a = PendingKey::generate("uid-1").expect("generate");
        let b = PendingKey::generate("uid-1").expect("generate");
        let cert_for_a = ca.sign(&a.csr_pem, jiff::SignedDuration::from_hours(1));
        assert!(matches!(
            b.complete(&cert_for_a, &ca.pem),
            Err(CredentialsError::KeyMismatch)
        ));
    }
}
