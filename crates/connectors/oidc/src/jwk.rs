//! An upstream's signing key as `openidconnect` sees it ([`JsonWebKey`]), with RSA
//! signatures checked by aws-lc-rs, the tree's one crypto provider.
//!
//! `openidconnect`'s own key ([`CoreJsonWebKey`]) checks RSA with the pure-Rust `rsa`
//! crate: 230–270 µs for an RS256 ID token on the 2-core VM, about half the cost of
//! Postern's own RS256 signature and 7–9% of a federated login's CPU in a profile;
//! aws-lc-rs checks it in 27 µs. Everything else (the key's id, type, use and algorithm, which keys
//! `openidconnect` tries for a token, and the signatures of other key types) is
//! `CoreJsonWebKey`'s. RSA keys must have 2048 to 8192 bits, as aws-lc-rs's parameters
//! require (NIST has disallowed shorter ones for signatures since 2013).

use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyId, JsonWebKeyUse as _, JwsSigningAlgorithm as _};
use openidconnect::{JsonWebKeySet, SignatureVerificationError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key set of [`Jwk`]s.
pub(crate) type KeySet = JsonWebKeySet<Jwk>;

/// One key of an upstream's key set: `openidconnect`'s, and for an RSA key its modulus and
/// exponent (big-endian, no leading zeros) for aws-lc-rs.
#[derive(Clone, Debug)]
pub(crate) struct Jwk {
    core: CoreJsonWebKey,
    rsa: Option<RsaPublicKeyComponents<Vec<u8>>>,
}

impl Jwk {
    fn of(core: CoreJsonWebKey, json: &serde_json::Value) -> Self {
        let part = |name: &str| -> Option<Vec<u8>> {
            let bytes = URL_SAFE_NO_PAD.decode(json.get(name)?.as_str()?.trim_end_matches('=')).ok()?;
            let first = bytes.iter().position(|b| *b != 0)?;
            Some(bytes[first..].to_vec())
        };
        let rsa = match (json.get("kty").and_then(|k| k.as_str()), part("n"), part("e")) {
            (Some("RSA"), Some(n), Some(e)) => Some(RsaPublicKeyComponents { n, e }),
            _ => None,
        };
        Self { core, rsa }
    }
}

impl<'de> Deserialize<'de> for Jwk {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(deserializer)?;
        let core = CoreJsonWebKey::deserialize(&json).map_err(serde::de::Error::custom)?;
        Ok(Self::of(core, &json))
    }
}

impl Serialize for Jwk {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(serializer)
    }
}

/// aws-lc-rs's parameters for an RSA algorithm; `None` for the other key types.
fn rsa_parameters(alg: &CoreJwsSigningAlgorithm) -> Option<&'static RsaParameters> {
    use CoreJwsSigningAlgorithm as A;
    Some(match alg {
        A::RsaSsaPkcs1V15Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        A::RsaSsaPkcs1V15Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        A::RsaSsaPkcs1V15Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        A::RsaSsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        A::RsaSsaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
        A::RsaSsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl JsonWebKey for Jwk {
    type KeyUse = CoreJsonWebKeyUse;
    type SigningAlgorithm = CoreJwsSigningAlgorithm;

    fn key_id(&self) -> Option<&JsonWebKeyId> {
        self.core.key_id()
    }

    fn key_type(&self) -> &<CoreJwsSigningAlgorithm as openidconnect::JwsSigningAlgorithm>::KeyType {
        self.core.key_type()
    }

    fn key_use(&self) -> Option<&CoreJsonWebKeyUse> {
        self.core.key_use()
    }

    fn signing_alg(&self) -> JsonWebKeyAlgorithm<&CoreJwsSigningAlgorithm> {
        self.core.signing_alg()
    }

    fn new_symmetric(key: Vec<u8>) -> Self {
        Self { core: CoreJsonWebKey::new_symmetric(key), rsa: None }
    }

    fn verify_signature(
        &self,
        alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureVerificationError> {
        let Some(parameters) = rsa_parameters(alg) else {
            return self.core.verify_signature(alg, message, signature);
        };
        // The checks of `CoreJsonWebKey::verify_signature`, before any arithmetic.
        let invalid = |why: &str| Err(SignatureVerificationError::InvalidKey(why.to_owned()));
        if self.key_use().is_some_and(|u| !u.allows_signature()) {
            return invalid("key usage not permitted for digital signatures");
        }
        if alg.key_type().as_ref() != Some(self.key_type()) {
            return invalid("key type does not match signature algorithm");
        }
        match self.signing_alg() {
            JsonWebKeyAlgorithm::Unspecified => {}
            JsonWebKeyAlgorithm::Algorithm(a) if a == alg => {}
            JsonWebKeyAlgorithm::Algorithm(_) => return invalid("incompatible key algorithm"),
            JsonWebKeyAlgorithm::Unsupported => return invalid("key algorithm is not a signing algorithm"),
        }
        let Some(key) = &self.rsa else { return invalid("the RSA key has no valid modulus and exponent") };
        let bits = key.n.len() * 8 - key.n.first().map_or(0, |b| b.leading_zeros() as usize);
        if !(2048..=8192).contains(&bits) {
            return invalid(&format!("the RSA key has {bits} bits; keys of 2048 to 8192 bits are accepted"));
        }
        key.verify(parameters, message, signature)
            .map_err(|_| SignatureVerificationError::CryptoError("bad signature".to_owned()))
    }

    fn hash_bytes(&self, bytes: &[u8], alg: &CoreJwsSigningAlgorithm) -> Result<Vec<u8>, String> {
        self.core.hash_bytes(bytes, alg)
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
    use serde_json::json;

    use super::*;

    const RS256: CoreJwsSigningAlgorithm = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A fresh RSA key and its JWK with `extra` members.
    fn rsa_key(extra: serde_json::Value) -> (RsaKeyPair, serde_json::Value) {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("key");
        let public: RsaPublicKeyComponents<Vec<u8>> = pair.public_key().into();
        let mut jwk = json!({"kty": "RSA", "kid": "k1", "n": b64(&public.n), "e": b64(&public.e)});
        for (k, v) in extra.as_object().expect("object") {
            jwk[k] = v.clone();
        }
        (pair, jwk)
    }

    fn sign(pair: &RsaKeyPair, alg: &'static dyn signature::RsaEncoding, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(alg, &SystemRandom::new(), message, &mut sig).expect("signed");
        sig
    }

    fn key(jwk: &serde_json::Value) -> Jwk {
        serde_json::from_value(jwk.clone()).expect("a key")
    }

    #[test]
    fn rsa_signatures_are_checked_as_openidconnect_checks_them() {
        let (pair, jwk) = rsa_key(json!({"use": "sig", "alg": "RS256"}));
        let (ours, theirs) = (key(&jwk), serde_json::from_value::<CoreJsonWebKey>(jwk).expect("core key"));
        let good = sign(&pair, &signature::RSA_PKCS1_SHA256, b"header.payload");
        let mut bad = good.clone();
        bad[10] ^= 1;
        for (message, sig) in [(&b"header.payload"[..], &good), (b"header.payload", &bad), (b"header.other", &good)] {
            assert_eq!(
                ours.verify_signature(&RS256, message, sig).is_ok(),
                theirs.verify_signature(&RS256, message, sig).is_ok(),
                "the same verdict as openidconnect's own key"
            );
        }
        assert!(ours.verify_signature(&RS256, b"header.payload", &good).is_ok());
        assert!(ours.verify_signature(&RS256, b"header.payload", &bad).is_err());
        // A key published for RS256 checks no other algorithm.
        let pss = sign(&pair, &signature::RSA_PSS_SHA256, b"header.payload");
        let refused = ours.verify_signature(&CoreJwsSigningAlgorithm::RsaSsaPssSha256, b"header.payload", &pss);
        assert!(matches!(refused, Err(SignatureVerificationError::InvalidKey(_))), "{refused:?}");
    }

    #[test]
    fn pss_and_the_longer_hashes_are_checked() {
        let (pair, jwk) = rsa_key(json!({}));
        let k = key(&jwk);
        let cases: [(&'static dyn signature::RsaEncoding, CoreJwsSigningAlgorithm); 4] = [
            (&signature::RSA_PKCS1_SHA384, CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384),
            (&signature::RSA_PKCS1_SHA512, CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512),
            (&signature::RSA_PSS_SHA256, CoreJwsSigningAlgorithm::RsaSsaPssSha256),
            (&signature::RSA_PSS_SHA512, CoreJwsSigningAlgorithm::RsaSsaPssSha512),
        ];
        for (encoding, alg) in cases {
            let sig = sign(&pair, encoding, b"m");
            assert!(k.verify_signature(&alg, b"m", &sig).is_ok(), "{alg:?}");
            assert!(k.verify_signature(&RS256, b"m", &sig).is_err(), "{alg:?} is not RS256");
        }
    }

    #[test]
    fn keys_not_for_signatures_or_not_rsa_are_refused() {
        let (pair, jwk) = rsa_key(json!({"use": "enc"}));
        let sig = sign(&pair, &signature::RSA_PKCS1_SHA256, b"m");
        assert!(matches!(
            key(&jwk).verify_signature(&RS256, b"m", &sig),
            Err(SignatureVerificationError::InvalidKey(_))
        ));
        // An EC key is not an RS256 key, whatever its coordinates.
        let ec = json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])});
        assert!(key(&ec).verify_signature(&RS256, b"m", &sig).is_err());
        // An RSA key whose modulus is not base64url is read (as openidconnect reads it) and
        // verifies nothing.
        let (_, mut broken) = rsa_key(json!({}));
        broken["n"] = json!("not base64url!");
        assert!(key(&broken).verify_signature(&RS256, b"m", &sig).is_err());
    }

    #[test]
    fn short_rsa_keys_are_refused_by_name() {
        // A 1024-bit modulus (the check comes before any arithmetic, so any odd number will do).
        let mut n = vec![0xC5; 128];
        n[127] |= 1;
        let jwk = json!({"kty": "RSA", "kid": "short", "n": b64(&n), "e": b64(&[1, 0, 1])});
        let refused = key(&jwk).verify_signature(&RS256, b"m", &[0; 128]);
        let Err(SignatureVerificationError::InvalidKey(why)) = refused else { panic!("{refused:?}") };
        assert!(why.contains("1024 bits") && why.contains("2048 to 8192"), "{why}");
    }

    #[test]
    fn a_key_set_skips_keys_it_cannot_read() {
        let (_, jwk) = rsa_key(json!({}));
        let set: KeySet = serde_json::from_value(json!({"keys": [jwk, {"kty": 7}]})).expect("a set");
        assert_eq!(set.keys().len(), 1);
    }
}
