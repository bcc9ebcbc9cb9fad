//! Small helpers: random identifiers and Kubernetes timestamps.

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes from the operating system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS generator failing is not something a test server can recover from.
    SystemRandom::new()
        .fill(&mut buf)
        .expect("operating system random generator");
    buf
}

/// A random RFC 4122 version-4 UUID, as Kubernetes uses for `metadata.uid`.
pub fn uuid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A random suffix such as the `x7k2q` of `generateName`-made names and pod names.
pub fn random_suffix(n: usize) -> String {
    random_bytes(n)
        .into_iter()
        .map(|b| SAFE[b as usize % SAFE.len()] as char)
        .collect()
}

/// A stable, URL-safe short hash of `data` (like a pod-template-hash).
pub fn short_hash(data: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    digest
        .iter()
        .take(10)
        .map(|b| SAFE[*b as usize % SAFE.len()] as char)
        .collect()
}

/// A random bearer token (hex, 32 bytes of entropy).
pub fn random_token() -> String {
    hex::encode(random_bytes(32))
}

/// Now, as an RFC 3339 timestamp with second precision (`metav1.Time`).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_v4_shape() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid());
    }

    #[test]
    fn timestamps_parse_back() {
        let t: jiff::Timestamp = now().parse().expect("rfc3339");
        assert!(t <= jiff::Timestamp::now());
    }

    #[test]
    fn short_hash_is_stable() {
        assert_eq!(short_hash(b"abc"), short_hash(b"abc"));
        assert_eq!(short_hash(b"abc").len(), 10);
    }
}
