//! `private_key_jwt` client authentication (OpenID Connect Core 9, RFC 7523 §2.2): the token
//! request carries a JWT the client signs with its private key instead of a shared secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SecureRandom as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: it is made for one request.
pub const LIFETIME: Duration = Duration::from_secs(60);

/// The key a connection signs its assertions with, and the `kid` the provider knows it by.
#[derive(Clone)]
pub struct AssertionKey {
    /// PKCS#8 PEM.
    pub pem: String,
    /// Empty for none.
    pub key_id: String,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey").field("pem", &"<redacted>").field("key_id", &self.key_id).finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kid: &'a str,
}

/// The DER of a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`): a client assertion
/// key, or Sign in with Apple's `.p8`.
pub(crate) fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PRIVATE KEY-----")
        .and_then(|rest| rest.trim_end().strip_suffix("-----END PRIVATE KEY-----"))
        .ok_or("not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)")?;
    let text: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(text).map_err(|e| format!("the PEM's base64 is broken: {e}"))
}

/// The two kinds of key an assertion is signed with.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A client assertion for `client_id` at `audience` (the token endpoint), made at `now`:
/// RS256 with an RSA key, ES256 with a P-256 one.
pub fn sign(key: &AssertionKey, client_id: &str, audience: &str, now: SystemTime) -> Result<String, String> {
    let der = pkcs8_der(&key.pem).map_err(|e| format!("the client assertion key: {e}"))?;
    let signer = match RsaKeyPair::from_pkcs8(&der) {
        Ok(k) => Signer::Rsa(k),
        Err(_) => Signer::Ec(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| "the client assertion key is neither an RSA key nor an EC P-256 key")?,
        ),
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let iat = now.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti).map_err(|_| "no randomness for the assertion's jti")?;
    let claims = Claims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        jti: URL_SAFE_NO_PAD.encode(jti),
        iat,
        exp: iat + LIFETIME.as_secs(),
    };
    let alg = match signer {
        Signer::Rsa(_) => "RS256",
        Signer::Ec(_) => "ES256",
    };
    let header = serde_json::to_vec(&Header { alg, typ: "JWT", kid: &key.key_id }).map_err(|e| e.to_string())?;
    let claims = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let cannot = |_| "the client assertion key cannot sign".to_owned();
    let signature = match signer {
        Signer::Rsa(k) => {
            let mut out = vec![0; k.public_modulus_len()];
            k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out).map_err(cannot)?;
            out
        }
        Signer::Ec(k) => k.sign(&rng, input.as_bytes()).map_err(cannot)?.as_ref().to_vec(),
    };
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn pem(der: &[u8]) -> String {
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
    }

    fn parts(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
        let mut it = jwt.split('.');
        let (h, c, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let json = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        (json(h), json(c), URL_SAFE_NO_PAD.decode(s).unwrap(), format!("{h}.{c}"))
    }

    #[test]
    fn an_assertion_is_signed_by_the_key_with_the_claims_of_rfc_7523() {
        let now = SystemTime::now();
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
        let key = AssertionKey { pem: pem(rsa_der.as_ref()), key_id: "k1".into() };
        let jwt = sign(&key, "client-1", "https://op.example/token", now).unwrap();
        let (header, claims, signature, input) = parts(&jwt);
        assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("RS256"), Some("k1")));
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("client-1"), Some("client-1")));
        assert_eq!(claims["aud"], "https://op.example/token");
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa.public_key().as_ref());
        assert!(public.verify(input.as_bytes(), &signature).is_ok());
        assert!(public.verify(b"another input", &signature).is_err());
        let again = parts(&sign(&key, "client-1", "https://op.example/token", now).unwrap()).1;
        assert_ne!(claims["jti"], again["jti"], "a fresh jti each time");

        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let ec_der = ec.to_pkcs8v1().unwrap();
        let key = AssertionKey { pem: pem(ec_der.as_ref()), key_id: String::new() };
        let (header, _, signature, input) = parts(&sign(&key, "client-1", "aud", now).unwrap());
        assert_eq!(header["alg"], "ES256");
        assert!(header.get("kid").is_none());
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, ec.public_key().as_ref());
        assert!(public.verify(input.as_bytes(), &signature).is_ok());

        assert!(sign(&AssertionKey { pem: "nope".into(), key_id: String::new() }, "c", "a", now).is_err());
    }
}
