//! Identifiers: UUID v7 for internal ids, random tokens for ids and secrets that users see.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// A new internal id: a UUID v7 (time-ordered, so that ids sort by creation).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A random string of `len` ASCII letters and digits from the OS-seeded CSPRNG.
pub fn random_alphanumeric(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// A random prefixed identifier users see: `prefix_` followed by 24 letters and digits.
pub fn prefixed(prefix: &str) -> String {
    format!("{prefix}_{}", random_alphanumeric(24))
}

/// The SHA-256 digest of a high-entropy secret (API key, client secret). Such secrets are
/// random and long enough that a fast hash is as safe as a slow one, and lets lookups by
/// hash use an index.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares two byte strings in constant time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
