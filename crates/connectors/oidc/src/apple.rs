//! Sign in with Apple's two quirks: the client secret is a short-lived ES256 JWT the client
//! makes from its private key, and the user's name arrives once, in the first login's `user`
//! parameter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_connector::ExternalProfile;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::profile::AppleKey;

/// How long a client secret JWT is valid (Apple allows up to six months).
pub const SECRET_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A secret with less than this left is made again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// The claims of the client secret JWT, as Apple documents them.
#[derive(Serialize)]
struct ClientSecretClaims<'a> {
    iss: &'a str,
    iat: u64,
    exp: u64,
    aud: &'a str,
    sub: &'a str,
}

/// Makes the client secret JWT: `iss` the team id, `sub` the client (Services) id, `aud`
/// Apple's issuer, signed ES256 with the key `kid`.
pub fn client_secret(
    key: &AppleKey,
    client_id: &str,
    audience: &str,
    private_key_pem: &str,
    now: SystemTime,
) -> Result<String, String> {
    let iat = now.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = ClientSecretClaims {
        iss: &key.team_id,
        iat,
        exp: iat + SECRET_LIFETIME.as_secs(),
        aud: audience,
        sub: client_id,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.key_id.clone());
    let der = crate::assertion::pkcs8_der(private_key_pem).map_err(|e| format!("{e}; Apple's .p8 file is one"))?;
    let signing = jsonwebtoken::EncodingKey::from_ec_der(&der);
    jsonwebtoken::encode(&header, &claims, &signing)
        .map_err(|e| format!("not a P-256 private key in PKCS#8 PEM (Apple's .p8 file): {e}"))
}

/// The client secrets made, kept until an hour before they expire.
#[derive(Default)]
pub(crate) struct Secrets(Mutex<HashMap<String, (String, SystemTime)>>);

impl Secrets {
    /// A valid client secret for this key and client: the one made before, unless it is
    /// about to expire.
    pub(crate) fn get(
        &self,
        key: &AppleKey,
        client_id: &str,
        audience: &str,
        private_key_pem: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        // The key's digest is part of the name: a new key makes a new secret at once.
        let digest = Sha256::digest(private_key_pem.as_bytes());
        let name = format!("{}|{}|{client_id}|{audience}|{digest:x}", key.team_id, key.key_id);
        let mut cache = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((jwt, expires)) = cache.get(&name)
            && now + RENEW_BEFORE < *expires
        {
            return Ok(jwt.clone());
        }
        let jwt = client_secret(key, client_id, audience, private_key_pem, now)?;
        cache.insert(name, (jwt.clone(), now + SECRET_LIFETIME));
        Ok(jwt)
    }
}

/// Fills the name Apple posts with the first login (`user`: `{"name": {"firstName",
/// "lastName"}, "email"}`) into the profile, where the ID token has none.
pub(crate) fn first_login_name(profile: &mut ExternalProfile, user: &str) {
    let Ok(serde_json::Value::Object(user)) = serde_json::from_str::<serde_json::Value>(user) else { return };
    let name = user.get("name").and_then(serde_json::Value::as_object);
    let part = |k: &str| {
        name.and_then(|n| n.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .trim()
            .chars()
            .take(150)
            .collect::<String>()
    };
    let (given, family) = (part("firstName"), part("lastName"));
    let p = &mut profile.profile;
    if p.given_name.is_empty() {
        p.given_name.clone_from(&given);
    }
    if p.family_name.is_empty() {
        p.family_name.clone_from(&family);
    }
    if p.name.is_empty() {
        p.name =
            [given.as_str(), family.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
    }
    if let serde_json::Value::Object(raw) = &mut profile.raw {
        for (k, v) in [("given_name", &p.given_name), ("family_name", &p.family_name), ("name", &p.name)] {
            if !v.is_empty() {
                raw.entry(k).or_insert_with(|| serde_json::Value::String(v.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    // A P-256 key made for these tests only (`openssl genpkey -algorithm EC -pkeyopt
    // ec_paramgen_curve:P-256`).
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzjGef1p6d0ONrBXM
ZwvQA1leXukGBh+rD3WLyUs1qNShRANCAATw8AeqG7RSNo++7Qc9s9uguOgos/J/
o7Gr6dgbivR05F2MqfXS0bfC0EGUgC6+VqyVxFZkZ9C0YL89euP30zq/
-----END PRIVATE KEY-----
";

    fn key() -> AppleKey {
        AppleKey { team_id: "TEAM123456".into(), key_id: "KEY1234567".into() }
    }

    #[test]
    fn the_client_secret_is_an_es256_jwt_apple_accepts() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jwt = client_secret(&key(), "com.fabrikam.web", "https://appleid.apple.com", KEY, now).expect("signed");
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
        let public = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8PAHqhu0UjaPvu0HPbPboLjoKLPy
f6Oxq+nYG4r0dORdjKn10tG3wtBBlIAuvlaslcRWZGfQtGC/PXrj99M6vw==
-----END PUBLIC KEY-----
";
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["https://appleid.apple.com"]);
        v.set_issuer(&["TEAM123456"]);
        v.validate_exp = false;
        // The SubjectPublicKeyInfo ends with the point: 0x04, x, y.
        use base64::Engine as _;
        let body: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = base64::engine::general_purpose::STANDARD.decode(body).expect("base64");
        let point = &spki[spki.len() - 64..];
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[..32]), URL_SAFE_NO_PAD.encode(&point[32..]));
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_ec_components(&x, &y).expect("public key"),
            &v,
        )
        .expect("verifies with the key's public half");
        assert_eq!(decoded.claims["sub"], "com.fabrikam.web");
        assert_eq!(decoded.claims["exp"].as_u64(), Some(1_800_000_000 + SECRET_LIFETIME.as_secs()));
        assert!(client_secret(&key(), "c", "a", "not a key", now).is_err());
    }

    #[test]
    fn secrets_are_reused_then_renewed_before_they_expire() {
        let secrets = Secrets::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = secrets.get(&key(), "c", "a", KEY, t0).expect("made");
        assert_eq!(secrets.get(&key(), "c", "a", KEY, t0 + Duration::from_secs(60)).expect("kept"), first);
        let late = t0 + SECRET_LIFETIME - RENEW_BEFORE;
        assert_ne!(secrets.get(&key(), "c", "a", KEY, late).expect("renewed"), first, "made again before expiry");
    }

    #[test]
    fn the_first_login_name_is_taken_from_the_user_parameter() {
        let mut p = ExternalProfile {
            source_id: "000123.abc".into(),
            profile: postern_connector::Profile { email: "x@privaterelay.appleid.com".into(), ..Default::default() },
            raw: serde_json::json!({"sub": "000123.abc"}),
            user_metadata: Default::default(),
            app_metadata: Default::default(),
        };
        first_login_name(
            &mut p,
            r#"{"name":{"firstName":"Jane","lastName":"Doe"},"email":"x@privaterelay.appleid.com"}"#,
        );
        assert_eq!((p.profile.given_name.as_str(), p.profile.family_name.as_str()), ("Jane", "Doe"));
        assert_eq!(p.profile.name, "Jane Doe");
        assert_eq!(p.raw["name"], "Jane Doe");
        first_login_name(&mut p, "not json");
        assert_eq!(p.profile.name, "Jane Doe");
    }
}
