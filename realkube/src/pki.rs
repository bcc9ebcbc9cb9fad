//! The cluster's certificates: a CA, the API server's serving certificate, client certificates
//! for the admin and the controllers, and the ServiceAccount token signing key.
//!
//! Identities are what a kubeadm cluster uses, so RBAC's bootstrap bindings apply unchanged:
//! `O=system:masters` for the admin (bypasses RBAC), `CN=system:kube-controller-manager` and
//! `CN=system:kube-scheduler` for the controllers (bound by the default ClusterRoleBindings).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Error, Result, io};

/// The first address of the service range the API server is given: the `kubernetes` Service's
/// ClusterIP, which in-cluster clients may use as a name in the certificate.
pub(crate) const SERVICE_RANGE: &str = "10.96.0.0/24";
const KUBERNETES_SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));

/// Paths of the files written into the cluster's folder.
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub ca_pem: String,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// ECDSA P-256, PKCS#8: signs ServiceAccount tokens.
    pub service_account_key: PathBuf,
    /// Its public half, which verifies them (the API server reads no public key from a PKCS#8
    /// private key file).
    pub service_account_pub: PathBuf,
    pub admin: ClientCert,
    pub controller_manager: ClientCert,
    pub scheduler: ClientCert,
}

/// A client certificate and its key, as PEM, and where they were written.
pub(crate) struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Pki { what, source }
}

pub(crate) fn write_private(dir: &Path, name: &str, content: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(content.as_bytes())
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

impl Pki {
    /// Generates everything for the cluster `name` into `dir`.
    pub fn generate(name: &str, dir: &Path) -> Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA"))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("skoala-realkube {name} CA"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(pki_err("CA"))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(pki_err("serving certificate"))?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving
            .subject_alt_names
            .push(SanType::IpAddress(KUBERNETES_SERVICE_IP));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.use_authority_key_identifier_extension = true;
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate().map_err(pki_err("serving key"))?;
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .map_err(pki_err("serving certificate"))?;

        let sa_key = KeyPair::generate().map_err(pki_err("ServiceAccount signing key"))?;

        let client = |cn: &str, org: Option<&str>| -> Result<ClientCert> {
            let mut p = CertificateParams::new(Vec::<String>::new())
                .map_err(pki_err("client certificate"))?;
            p.distinguished_name.push(DnType::CommonName, cn);
            if let Some(o) = org {
                p.distinguished_name.push(DnType::OrganizationName, o);
            }
            p.use_authority_key_identifier_extension = true;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().map_err(pki_err("client key"))?;
            let cert = p
                .signed_by(&key, &issuer)
                .map_err(pki_err("client certificate"))?;
            Ok(ClientCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };

        Ok(Pki {
            ca_cert: write_private(dir, "ca.crt", &ca_cert.pem())?,
            ca_pem: ca_cert.pem(),
            serving_cert: write_private(dir, "apiserver.crt", &serving_cert.pem())?,
            serving_key: write_private(dir, "apiserver.key", &serving_key.serialize_pem())?,
            service_account_key: write_private(dir, "sa.key", &sa_key.serialize_pem())?,
            service_account_pub: write_private(dir, "sa.pub", &sa_key.public_key_pem())?,
            admin: client("skoala-realkube-admin", Some("system:masters"))?,
            controller_manager: client("system:kube-controller-manager", None)?,
            scheduler: client("system:kube-scheduler", None)?,
        })
    }
}
