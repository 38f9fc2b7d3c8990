//! Encryption at rest under the master key (`POSTERN_MASTER_KEY`): XChaCha20-Poly1305, for
//! every service that keeps a secret it must read back (the registry's connection secrets,
//! the authenticator's signing keys).
//!
//! A sealed value is `version (1 byte) ‖ nonce (24 bytes) ‖ ciphertext and tag`. The nonce is
//! random (at 192 bits, random nonces never collide in practice). The associated data is
//! `label ‖ version ‖ (len ‖ part)*` with 4-byte big-endian lengths: the label names the use
//! (`postern.authn.v1/signing-key`) and the parts bind the value to its owner (tenant, key
//! id), so that a sealed value copied onto another row fails to open instead of lending its
//! secret there. This is byte for byte the format of the registry's connection secrets
//! (label `postern.connections.v1/secrets`, parts tenant and connection id).
//!
//! Rotation: a [`MasterKey`] may carry previous keys ([`MasterKey::with_previous`]). It seals
//! with the current key only, and opens with the current key, then each previous one, so
//! that values sealed before a rotation still open while [`MasterKey::reseal`] moves them
//! under the current key.

use std::str::FromStr;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, Key, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// The format version this code writes.
pub const FORMAT_V1: u8 = 1;
/// The length of a master key, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a key could not be loaded or a value could not be sealed or opened. No variant
/// carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The master key text or bytes are not a 32-byte key.
    #[error("invalid master key: {0}")]
    InvalidKey(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The sealed value is too short to hold a version, a nonce and a tag.
    #[error("sealed value is malformed ({0} bytes)")]
    Malformed(usize),
    /// The sealed value was written in a format this version does not read.
    #[error("sealed value has format version {0}; this version of Postern reads version 1")]
    UnsupportedVersion(u8),
    /// Authentication failed: wrong master key, wrong owner, or tampering.
    #[error("sealed value failed to decrypt: wrong master key, wrong owner, or altered data")]
    Decrypt,
    /// Encryption failed.
    #[error("the value could not be encrypted")]
    Encrypt,
}

/// The master key, and the previous keys it still opens values with during a rotation. Its
/// bytes never print (`Debug` shows `MasterKey(<redacted>)`) and are wiped from memory when
/// it drops.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    /// Keys values may still be sealed under (a rotation under way); never used to seal.
    previous: std::sync::Arc<Vec<Zeroizing<[u8; KEY_LEN]>>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Which key opened a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedUnder {
    /// The current key.
    Current,
    /// One of the previous keys: the value should be re-sealed ([`MasterKey::reseal`]).
    Previous,
}

impl MasterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, SealError> {
        let key = Key::<XChaCha20Poly1305>::try_generate().map_err(|_| SealError::Random)?;
        Self::from_bytes(key.as_slice())
    }

    /// A key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::InvalidKey(format!("must be {KEY_LEN} bytes, got {}", bytes.len())))?;
        Ok(Self { key: Zeroizing::new(array), previous: std::sync::Arc::new(Vec::new()) })
    }

    /// This key, still opening values sealed under `previous` (a rotation: the new key as
    /// current, the old ones as previous). A previous key equal to the current one is left
    /// out; only the current key of each given one counts.
    pub fn with_previous(self, previous: impl IntoIterator<Item = MasterKey>) -> Self {
        let mut keys: Vec<Zeroizing<[u8; KEY_LEN]>> = Vec::new();
        for p in previous {
            if p.key.as_slice() != self.key.as_slice() && !keys.iter().any(|k| k.as_slice() == p.key.as_slice()) {
                keys.push(p.key);
            }
        }
        Self { previous: std::sync::Arc::new(keys), ..self }
    }

    /// How many previous keys this key still opens values with.
    pub fn previous_keys(&self) -> usize {
        self.previous.len()
    }

    /// A key from text: 64 hex digits, or the base64 of 32 bytes (standard or URL-safe,
    /// padded or not). Surrounding whitespace is ignored. The error never quotes the text.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let text = text.trim();
        if text.is_empty() {
            return Err(SealError::InvalidKey("is empty; give 64 hex digits or the base64 of 32 bytes".into()));
        }
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = Zeroizing::new(hex::decode(text).map_err(|_| SealError::InvalidKey("is not hex".into()))?);
            return Self::from_bytes(&bytes);
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(text) {
                let bytes = Zeroizing::new(bytes);
                return Self::from_bytes(&bytes).map_err(|_| {
                    SealError::InvalidKey(format!("decodes to {} bytes; a master key is {KEY_LEN} bytes", bytes.len()))
                });
            }
        }
        Err(SealError::InvalidKey(format!(
            "is neither 64 hex digits nor base64 ({} characters); generate one with `openssl rand -base64 32`",
            text.chars().count()
        )))
    }

    /// The key as standard padded base64, to write into a key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.key.as_slice()))
    }

    fn cipher(key: &[u8; KEY_LEN]) -> Result<XChaCha20Poly1305, SealError> {
        XChaCha20Poly1305::new_from_slice(key.as_slice())
            .map_err(|_| SealError::InvalidKey(format!("must be {KEY_LEN} bytes")))
    }

    /// Encrypts `plaintext` for the use `label`, bound to the owner `parts`.
    pub fn seal(&self, label: &[u8], parts: &[&str], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = XNonce::try_generate().map_err(|_| SealError::Random)?;
        let ad = associated_data(label, FORMAT_V1, parts);
        let ciphertext = Self::cipher(&self.key)?
            .encrypt(&nonce, Payload { msg: plaintext, aad: &ad })
            .map_err(|_| SealError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts what [`MasterKey::seal`] wrote with the same label and parts, under the
    /// current key or a previous one.
    pub fn open(&self, label: &[u8], parts: &[&str], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_telling(label, parts, sealed).map(|(plaintext, _)| plaintext)
    }

    /// [`MasterKey::open`], telling which key opened the value.
    pub fn open_telling(
        &self,
        label: &[u8],
        parts: &[&str],
        sealed: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, SealedUnder), SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed(0))?;
        if version != FORMAT_V1 {
            return Err(SealError::UnsupportedVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed(sealed.len()));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Malformed(sealed.len()))?;
        let ad = associated_data(label, version, parts);
        let keys = std::iter::once((&self.key, SealedUnder::Current))
            .chain(self.previous.iter().map(|k| (k, SealedUnder::Previous)));
        for (key, under) in keys {
            if let Ok(plaintext) = Self::cipher(key)?.decrypt(&nonce, Payload { msg: ciphertext, aad: &ad }) {
                return Ok((Zeroizing::new(plaintext), under));
            }
        }
        Err(SealError::Decrypt)
    }

    /// The value sealed again under the current key when a previous key sealed it; `None`
    /// when the current key did already (nothing to write).
    pub fn reseal(&self, label: &[u8], parts: &[&str], sealed: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        match self.open_telling(label, parts, sealed)? {
            (_, SealedUnder::Current) => Ok(None),
            (plaintext, SealedUnder::Previous) => self.seal(label, parts, &plaintext).map(Some),
        }
    }
}

impl FromStr for MasterKey {
    type Err = SealError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn associated_data(label: &[u8], version: u8, parts: &[&str]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(label.len() + 1 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    ad.extend_from_slice(label);
    ad.push(version);
    for part in parts {
        ad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &[u8] = b"postern.test/seal";

    #[test]
    fn round_trip_and_binding() {
        let k = MasterKey::generate().unwrap();
        let sealed = k.seal(LABEL, &["fabrikam", "kid-1"], b"private key").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(k.open(LABEL, &["fabrikam", "kid-1"], &sealed).unwrap().as_slice(), b"private key");
        assert!(matches!(k.open(LABEL, &["fabrikam", "kid-2"], &sealed), Err(SealError::Decrypt)));
        assert!(matches!(k.open(LABEL, &["fabrikamkid-1", ""], &sealed), Err(SealError::Decrypt)));
        assert!(matches!(k.open(b"other", &["fabrikam", "kid-1"], &sealed), Err(SealError::Decrypt)));
        let other = MasterKey::generate().unwrap();
        assert!(matches!(other.open(LABEL, &["fabrikam", "kid-1"], &sealed), Err(SealError::Decrypt)));
        assert!(matches!(k.open(LABEL, &[], &sealed[..10]), Err(SealError::Malformed(10))));
    }

    #[test]
    fn rotation_opens_with_previous_keys_and_reseals_under_the_current_one() {
        let old = MasterKey::generate().unwrap();
        let new = MasterKey::generate().unwrap();
        let sealed = old.seal(LABEL, &["fabrikam", "kid-1"], b"private key").unwrap();
        assert!(matches!(new.open(LABEL, &["fabrikam", "kid-1"], &sealed), Err(SealError::Decrypt)));
        let rotating = new.clone().with_previous([old.clone(), new.clone(), old.clone()]);
        assert_eq!(rotating.previous_keys(), 1, "the current key and duplicates are left out");
        let (plaintext, under) = rotating.open_telling(LABEL, &["fabrikam", "kid-1"], &sealed).unwrap();
        assert_eq!((plaintext.as_slice(), under), (&b"private key"[..], SealedUnder::Previous));
        assert!(matches!(rotating.open(LABEL, &["fabrikam", "kid-2"], &sealed), Err(SealError::Decrypt)));
        let resealed = rotating.reseal(LABEL, &["fabrikam", "kid-1"], &sealed).unwrap().expect("re-sealed");
        assert_eq!(new.open(LABEL, &["fabrikam", "kid-1"], &resealed).unwrap().as_slice(), b"private key");
        assert!(old.open(LABEL, &["fabrikam", "kid-1"], &resealed).is_err(), "sealed under the new key only");
        assert!(rotating.reseal(LABEL, &["fabrikam", "kid-1"], &resealed).unwrap().is_none(), "nothing to do");
        let fresh = rotating.seal(LABEL, &["t"], b"x").unwrap();
        assert!(new.open(LABEL, &["t"], &fresh).is_ok() && old.open(LABEL, &["t"], &fresh).is_err());
        assert_eq!(format!("{rotating:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn parse_and_redaction() {
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::parse(&format!("{}\n", k.to_base64().as_str())).unwrap();
        assert_eq!(again.key.as_slice(), k.key.as_slice());
        assert_eq!(MasterKey::parse(&hex::encode(k.key.as_slice())).unwrap().key.as_slice(), k.key.as_slice());
        assert!(MasterKey::parse("").is_err());
        assert!(MasterKey::parse("aGVsbG8=").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
