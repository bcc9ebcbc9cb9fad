//! Records for the tests of the store, of its backends (the conformance suite) and of what
//! reads a store.

use crate::{CertRecord, Claim, Registration, TokenRecord};

/// A registration of `cluster` with `token` at t = 1,000 s, its certificate `serial`
/// valid until 2,000 s.
pub fn registration(token: &TokenRecord, cluster: &str, serial: &str) -> Registration {
    Registration {
        claim: Claim {
            token_id: token.id.clone(),
            token_sha256: token.secret_sha256.clone(),
            now_unix: 1_000,
            cluster_id: cluster.into(),
            name: format!("name-{cluster}"),
            labels: [("env".to_string(), "prod".to_string())].into(),
            agent_version: "0.1.0".into(),
            proven_serial: None,
        },
        cert: CertRecord {
            serial_hex: serial.into(),
            cluster_id: cluster.into(),
            issued_unix: 1_000,
            not_after_unix: 2_000,
            revoked_unix: None,
            first_session_unix: None,
        },
    }
}

/// Token `abcd` with `uses` uses, valid from 900 s to 1,500 s.
pub fn token(uses: u32) -> TokenRecord {
    TokenRecord {
        id: "abcd".into(),
        secret_sha256: "hash".into(),
        created_unix: 900,
        expires_unix: 1_500,
        uses_allowed: uses,
        uses_left: uses,
        revoked: false,
        description: String::new(),
    }
}
