//! Encryption at rest of connection secrets: XChaCha20-Poly1305 under a 32-byte master key
//! (`POSTERN_MASTER_KEY`).
//!
//! Each sealed value is `version (1 byte) ‖ nonce (24 bytes) ‖ ciphertext and tag`. The
//! nonce is random; at 192 bits, random nonces never collide in practice. The tenant and the
//! connection id are bound as associated data, so a sealed value copied onto another
//! connection (or another tenant's) fails to open instead of lending its secrets there.
//!
//! The version byte leaves room for another algorithm or a key rotation scheme: a future
//! version can be read next to this one.

use std::str::FromStr;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, Key, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::domain::{Secrets, SecretsFormatError};

/// The format version this code writes.
pub const FORMAT_V1: u8 = 1;
/// The length of a master key, in bytes.
pub const KEY_LEN: usize = 32;
/// The length of a nonce, in bytes.
const NONCE_LEN: usize = 24;
/// The length of the Poly1305 tag, in bytes.
const TAG_LEN: usize = 16;
/// The label that starts the associated data, so that these ciphertexts serve nothing else.
const AD_LABEL: &[u8] = b"postern.connections.v1/secrets";

/// Why a key could not be loaded or a value could not be sealed or opened. No variant
/// carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The master key text or bytes are not a 32-byte key.
    #[error("invalid master key: {0}")]
    InvalidKey(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The sealed value is too short to hold a version, a nonce and a tag.
    #[error("sealed secrets are malformed ({0} bytes)")]
    Malformed(usize),
    /// The sealed value was written in a format this version does not read.
    #[error("sealed secrets have format version {0}; this version of Postern reads version 1")]
    UnsupportedVersion(u8),
    /// Authentication failed: wrong master key, wrong tenant or connection, or tampering.
    #[error("sealed secrets failed to decrypt: wrong master key, wrong connection, or altered data")]
    Decrypt,
    /// Encryption failed (a message too long for the cipher).
    #[error("secrets could not be encrypted")]
    Encrypt,
    /// The decrypted plaintext is not a set of secrets.
    #[error(transparent)]
    Format(#[from] SecretsFormatError),
}

/// The master key that encrypts every connection secret. Its bytes never print: `Debug`
/// shows `MasterKey(<redacted>)`; they are wiped from memory when it drops.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, SecretsError> {
        let key = Key::<XChaCha20Poly1305>::try_generate().map_err(|_| SecretsError::Random)?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(key.as_slice());
        Ok(Self(bytes))
    }

    /// A key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SecretsError::InvalidKey(format!("must be {KEY_LEN} bytes, got {}", bytes.len())))?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// A key from text: 64 hex digits, or the base64 of 32 bytes (standard or URL-safe
    /// alphabet, padded or not). Surrounding whitespace (a trailing newline in a key file) is
    /// ignored. The error never quotes the text.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretsError::InvalidKey("is empty; give 64 hex digits or the base64 of 32 bytes".into()));
        }
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = Zeroizing::new(hex::decode(text).map_err(|_| SecretsError::InvalidKey("is not hex".into()))?);
            return Self::from_bytes(&bytes);
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(text) {
                let bytes = Zeroizing::new(bytes);
                return Self::from_bytes(&bytes).map_err(|_| {
                    SecretsError::InvalidKey(format!(
                        "decodes to {} bytes; a master key is {KEY_LEN} bytes",
                        bytes.len()
                    ))
                });
            }
        }
        Err(SecretsError::InvalidKey(format!(
            "is neither 64 hex digits nor base64 ({} characters); generate one with `openssl rand -base64 32`",
            text.chars().count()
        )))
    }

    /// The key as standard padded base64, to write into the data directory when Postern
    /// generates it on first start.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_slice()))
    }

    fn cipher(&self) -> Result<XChaCha20Poly1305, SecretsError> {
        XChaCha20Poly1305::new_from_slice(self.0.as_slice())
            .map_err(|_| SecretsError::InvalidKey(format!("must be {KEY_LEN} bytes")))
    }

    /// Encrypts `plaintext` for the connection `connection_id` of `tenant`.
    pub fn seal(&self, tenant: &str, connection_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let nonce = XNonce::try_generate().map_err(|_| SecretsError::Random)?;
        let ad = associated_data(FORMAT_V1, tenant, connection_id);
        let ciphertext =
            self.cipher()?.encrypt(&nonce, Payload { msg: plaintext, aad: &ad }).map_err(|_| SecretsError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts what [`MasterKey::seal`] wrote for the same tenant and connection.
    pub fn open(&self, tenant: &str, connection_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretsError::Malformed(0))?;
        if version != FORMAT_V1 {
            return Err(SecretsError::UnsupportedVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Malformed(sealed.len()));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretsError::Malformed(sealed.len()))?;
        let ad = associated_data(version, tenant, connection_id);
        self.cipher()?
            .decrypt(&nonce, Payload { msg: ciphertext, aad: &ad })
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::Decrypt)
    }

    /// Encrypts a connection's secrets as one value, for the store.
    pub fn seal_secrets(&self, tenant: &str, connection_id: &str, secrets: &Secrets) -> Result<Vec<u8>, SecretsError> {
        self.seal(tenant, connection_id, &secrets.to_bytes())
    }

    /// Decrypts what [`MasterKey::seal_secrets`] wrote.
    pub fn open_secrets(&self, tenant: &str, connection_id: &str, sealed: &[u8]) -> Result<Secrets, SecretsError> {
        let plaintext = self.open(tenant, connection_id, sealed)?;
        Ok(Secrets::from_bytes(&plaintext)?)
    }
}

impl FromStr for MasterKey {
    type Err = SecretsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `label ‖ version ‖ len(tenant) ‖ tenant ‖ len(connection) ‖ connection`, lengths as 4-byte
/// big-endian, so that no two (tenant, connection) pairs share associated data.
fn associated_data(version: u8, tenant: &str, connection_id: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_LABEL.len() + 9 + tenant.len() + connection_id.len());
    ad.extend_from_slice(AD_LABEL);
    ad.push(version);
    for part in [tenant, connection_id] {
        ad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Secret, secret::names};

    fn key() -> MasterKey {
        MasterKey::generate().unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let sealed = k.seal("fabrikam-internal", "con_abc", b"hunter2").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 7 + TAG_LEN);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("fabrikam-internal", "con_abc", &sealed).unwrap().as_slice(), b"hunter2");
        // A fresh nonce each time.
        assert_ne!(sealed, k.seal("fabrikam-internal", "con_abc", b"hunter2").unwrap());
    }

    #[test]
    fn secrets_round_trip() {
        let k = key();
        let mut s = Secrets::new();
        s.insert(names::BIND_PASSWORD, Secret::new("p@ss"));
        let sealed = k.seal_secrets("t", "con_1", &s).unwrap();
        assert_eq!(k.open_secrets("t", "con_1", &sealed).unwrap(), s);
    }

    #[test]
    fn wrong_associated_data_fails() {
        let k = key();
        let sealed = k.seal("fabrikam-internal", "con_abc", b"x").unwrap();
        for (tenant, conn) in
            [("fabrikam-public", "con_abc"), ("fabrikam-internal", "con_abd"), ("fabrikam-internalcon_", "abc")]
        {
            assert!(matches!(k.open(tenant, conn, &sealed), Err(SecretsError::Decrypt)), "{tenant} {conn}");
        }
        assert!(matches!(key().open("fabrikam-internal", "con_abc", &sealed), Err(SecretsError::Decrypt)));
    }

    #[test]
    fn tampering_fails() {
        let k = key();
        let sealed = k.seal("t", "con_1", b"secret value").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(matches!(k.open("t", "con_1", &bad), Err(SecretsError::Decrypt)), "byte {i}");
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert!(matches!(k.open("t", "con_1", &bad), Err(SecretsError::UnsupportedVersion(2))));
        assert!(matches!(k.open("t", "con_1", &sealed[..sealed.len() - 1]), Err(SecretsError::Decrypt)));
        assert!(matches!(k.open("t", "con_1", &sealed[..20]), Err(SecretsError::Malformed(20))));
        assert!(matches!(k.open("t", "con_1", &[]), Err(SecretsError::Malformed(0))));
    }

    #[test]
    fn debug_redacts_and_errors_do_not_quote_keys() {
        let k = MasterKey::from_bytes(&[0xAB; KEY_LEN]).unwrap();
        let shown = format!("{k:?}");
        assert_eq!(shown, "MasterKey(<redacted>)");
        assert!(!shown.to_lowercase().contains("abab"));
        let err = MasterKey::parse("not-a-key-but-secret-looking-text!").unwrap_err().to_string();
        assert!(!err.contains("secret-looking"), "{err}");
    }

    #[test]
    fn parse_accepts_hex_and_base64() {
        let k = key();
        let b64 = k.to_base64();
        let from_b64 = MasterKey::parse(&format!("{}\n", b64.as_str())).unwrap();
        let from_hex = MasterKey::parse(&hex::encode(k.0.as_slice())).unwrap();
        let url_no_pad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.0.as_slice());
        let from_url: MasterKey = url_no_pad.parse().unwrap();
        for other in [from_b64, from_hex, from_url] {
            assert_eq!(other.0.as_slice(), k.0.as_slice());
        }
        assert!(MasterKey::parse("").is_err());
        assert!(MasterKey::parse(&"ab".repeat(31)).is_err());
        assert!(MasterKey::parse("aGVsbG8=").is_err());
        assert!(MasterKey::from_bytes(&[0; 31]).is_err());
    }
}
