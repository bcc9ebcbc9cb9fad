//! Join tokens: `<id>.<secret>`.
//!
//! The id is public (listed by `skoalactl token list`, used to revoke, written to the audit
//! log); the secret is 32 random bytes shown once at creation. The store keeps only the SHA-256
//! of the secret, so a copy of the data dir does not let anyone join the fleet.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};

/// A freshly generated token: the full string to hand to the operator once, and what to store.
pub struct NewToken {
    /// `<id>.<secret>`. Secret: print it once, never log it.
    pub token: String,
    pub id: String,
    pub secret_sha256: String,
}

/// Generates a new token.
pub fn generate() -> NewToken {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut id[..]);
    rng.fill(&mut secret[..]);
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewToken {
        token: format!("{id}.{secret}"),
        secret_sha256: hash(&secret),
        id,
    }
}

/// Splits a presented token into `(id, sha256 of the secret)`. `None` when it is not shaped
/// like a token at all.
pub fn parse(token: &str) -> Option<(String, String)> {
    let (id, secret) = token.trim().split_once('.')?;
    if id.is_empty() || secret.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((id.to_string(), hash(secret)))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = generate();
        assert_eq!(
            parse(&t.token),
            Some((t.id.clone(), t.secret_sha256.clone()))
        );
        assert!(
            !t.secret_sha256
                .contains(t.token.split_once('.').expect("dot").1)
        );
        assert_eq!(parse("no-dot"), None);
        assert_eq!(parse("zz.secret"), None);
    }
}
