//! Tokens: each tenant's signing keys, their JSON Web Key Set, and the ID and access tokens
//! a login issues.
//!
//! A tenant has one current key (RS256 with a 2048-bit RSA key by default, or EdDSA with
//! Ed25519) and any number of retired keys. Rotation retires the current key; a retired key
//! stays in the key set until every token it signed has expired (its retirement plus the
//! longest token lifetime), so that a relying party never meets a token it cannot verify.
//!
//! Private keys are PKCS#8 documents that the caller stores encrypted; a key's id (`kid`)
//! is the RFC 7638 thumbprint of its public JWK. Tokens are JWTs signed with `jsonwebtoken`
//! on aws-lc, except the access token of a login that names no API (Auth0's behaviour): that
//! one is opaque, its claims sealed (XChaCha20-Poly1305) under the master key and bound to
//! the tenant, good only at the tenant's `/userinfo` endpoint, and costs no signature.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse, RSAKeyParameters, RSAKeyType, ThumbprintHash,
};
use jsonwebtoken::{DecodingKey, Header, Validation};
use postern_common::seal::{MasterKey, SealError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long an ID token is valid by default (Auth0's default: 10 hours).
pub const DEFAULT_ID_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 3600);
/// How long an access token is valid by default (Auth0's default: 24 hours).
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The scopes granted when a login asks for none.
pub const DEFAULT_SCOPE: &str = "openid profile email";
/// The scopes OpenID Connect defines (Core 5.4, 11): kept in a user's token for any
/// audience; other scopes only where the API defines them.
pub const OIDC_SCOPES: [&str; 6] = ["openid", "profile", "email", "address", "phone", "offline_access"];
/// The `token_type` of the access token.
pub const TOKEN_TYPE: &str = "Bearer";
/// How an opaque access token begins (then the URL-safe base64, unpadded, of the sealed
/// claims).
pub const OPAQUE_ACCESS_TOKEN_PREFIX: &str = "pat_";
/// The label binding sealed access tokens to their use (the tenant is the bound part).
const ACCESS_TOKEN_LABEL: &[u8] = b"postern.authn.v1/access-token";

/// The algorithm a signing key signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit RSA keys. The default.
    Rs256,
    /// EdDSA with Ed25519 keys.
    EdDsa,
}

impl Algorithm {
    /// The JOSE name: `RS256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Parses the JOSE name (`RS256`, `EdDSA`), as stored.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "RS256" => Ok(Algorithm::Rs256),
            "EdDSA" => Ok(Algorithm::EdDsa),
            other => Err(Error::UnsupportedAlgorithm(other.to_owned())),
        }
    }
}

/// What can go wrong with keys and tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crypto library could not generate a key.
    #[error("signing key generation failed")]
    KeyGeneration,
    /// A stored private key is not a PKCS#8 document of the expected algorithm.
    #[error("the stored private key is malformed or not a {0} key")]
    MalformedKey(Algorithm),
    /// An algorithm name that Postern does not sign with.
    #[error("unsupported signing algorithm {0:?}: RS256 and EdDSA are supported")]
    UnsupportedAlgorithm(String),
    /// Signing failed.
    #[error("token signing failed: {0}")]
    Signing(jsonwebtoken::errors::Error),
    /// The token's header or claims could not be written as JSON.
    #[error("token encoding failed: {0}")]
    Encoding(serde_json::Error),
    /// The crypto library refused to sign.
    #[error("the signature could not be computed")]
    SignatureFailed,
    /// A token names no key of the key set (or none at all): it was not signed by this
    /// tenant, or by a key that has left the set.
    #[error("the token's key is not in the key set")]
    UnknownKey,
    /// A token failed verification: bad signature, wrong issuer or audience, expired,
    /// malformed, or an algorithm other than its key's.
    #[error("invalid token: {0}")]
    InvalidToken(jsonwebtoken::errors::Error),
    /// The blocking task generating a key was cancelled or panicked.
    #[error("the key generation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An opaque access token could not be sealed.
    #[error("the access token could not be sealed: {0}")]
    Seal(SealError),
    /// An opaque access token is malformed, altered, sealed under another master key, or
    /// issued by another tenant.
    #[error("the access token is malformed, altered, or not issued by this tenant")]
    InvalidOpaqueToken,
    /// An opaque access token has expired.
    #[error("the access token has expired")]
    Expired,
}

/// One of a tenant's signing keys: the private key (PKCS#8) and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// The key id, `kid` in the tokens' header and in the JWK: the RFC 7638 thumbprint of
    /// the public key for generated keys.
    pub kid: String,
    /// The algorithm.
    pub alg: Algorithm,
    /// When the key was created.
    pub created: SystemTime,
    /// When the key starts (or started) signing; `None` for a tenant's *next* key, which
    /// is published ahead of any rotation and signs nothing until one schedules it.
    pub activates: Option<SystemTime>,
    /// When the key stops (or stopped) signing; `None` while no rotation has replaced it.
    pub retired_at: Option<SystemTime>,
    private_pkcs8: Vec<u8>,
    public_jwk: Jwk,
    signer: Signer,
}

/// The private key parsed once, so that signing a token does not parse (and re-validate)
/// the key again: for RSA that parse costs more than the signature itself.
#[derive(Clone)]
enum Signer {
    Rsa(std::sync::Arc<RsaKeyPair>),
    Ed25519(std::sync::Arc<Ed25519KeyPair>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created", &self.created)
            .field("retired_at", &self.retired_at)
            .field("private_pkcs8", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new current key: a 2048-bit RSA key for RS256, an Ed25519 key for EdDSA.
    /// RSA generation takes tens to hundreds of milliseconds; call it off the async runtime
    /// (`spawn_blocking`).
    pub fn generate(alg: Algorithm, now: SystemTime) -> Result<Self, Error> {
        let pkcs8 = match alg {
            Algorithm::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| Error::KeyGeneration)?;
                let der = pair.as_der().map_err(|_| Error::KeyGeneration)?;
                der.as_ref().to_vec()
            }
            Algorithm::EdDsa => {
                // PKCS#8 v1 (private key only), the form `openssl genpkey` writes.
                let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).map_err(|_| Error::KeyGeneration)?;
                doc.as_ref().to_vec()
            }
        };
        let jwk = public_jwk(alg, &pkcs8)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|_| Error::KeyGeneration)?;
        Self::from_stored(kid, alg, pkcs8, now, Some(now), None)
    }

    /// [`generate`](Self::generate) on the blocking pool, for async callers (rotation, a
    /// tenant's first key).
    pub async fn generate_async(alg: Algorithm, now: SystemTime) -> Result<Self, Error> {
        tokio::task::spawn_blocking(move || Self::generate(alg, now)).await?
    }

    /// Rebuilds a key from what the store kept: its id, algorithm, decrypted PKCS#8 DER
    /// private key and dates. The public JWK is derived from the private key.
    pub fn from_stored(
        kid: String,
        alg: Algorithm,
        private_pkcs8: Vec<u8>,
        created: SystemTime,
        activates: Option<SystemTime>,
        retired_at: Option<SystemTime>,
    ) -> Result<Self, Error> {
        let mut jwk = public_jwk(alg, &private_pkcs8)?;
        jwk.common.key_id = Some(kid.clone());
        let signer = match alg {
            Algorithm::Rs256 => Signer::Rsa(std::sync::Arc::new(
                RsaKeyPair::from_pkcs8(&private_pkcs8).map_err(|_| Error::MalformedKey(alg))?,
            )),
            Algorithm::EdDsa => Signer::Ed25519(std::sync::Arc::new(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&private_pkcs8).map_err(|_| Error::MalformedKey(alg))?,
            )),
        };
        Ok(SigningKey { kid, alg, created, activates, retired_at, private_pkcs8, public_jwk: jwk, signer })
    }

    /// The private key as PKCS#8 DER: store it encrypted, never log it.
    pub fn private_pkcs8_der(&self) -> &[u8] {
        &self.private_pkcs8
    }

    /// The private key as a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn private_pkcs8_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.private_pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The public key as a JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public_jwk
    }

    /// The public JWK as JSON, as published in the key set.
    pub fn public_jwk_json(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(&self.public_jwk).unwrap_or_default()
    }

    /// Whether this key signs new tokens at `now`: activated, and not yet retired.
    pub fn is_current(&self, now: SystemTime) -> bool {
        self.activates.is_some_and(|t| t <= now) && self.retired_at.is_none_or(|t| now < t)
    }

    /// Whether this is the tenant's next key: published, signing nothing, until a rotation
    /// schedules it.
    pub fn is_next(&self) -> bool {
        self.activates.is_none()
    }

    /// Whether a rotation has scheduled this key to sign from a time after `now`.
    pub fn is_scheduled(&self, now: SystemTime) -> bool {
        self.activates.is_some_and(|t| now < t)
    }

    /// The key as a *next* key: published, not signing.
    #[must_use]
    pub fn into_next(mut self) -> Self {
        self.activates = None;
        self
    }

    /// Stops the key signing from `now` on (rotation).
    pub fn retire(&mut self, now: SystemTime) {
        self.retired_at.get_or_insert(now);
    }

    /// When a retired key leaves the key set: its retirement plus the longest token
    /// lifetime. `None` for the current key.
    pub fn expire_time(&self, max_token_lifetime: Duration) -> Option<SystemTime> {
        self.retired_at.map(|t| t + max_token_lifetime)
    }

    /// Whether the key belongs in the key set at `now`: current, or retired but some token
    /// it signed may still be valid.
    pub fn is_published(&self, now: SystemTime, max_token_lifetime: Duration) -> bool {
        self.expire_time(max_token_lifetime).is_none_or(|expiry| now < expiry)
    }

    /// Signs `claims` as a JWT with this key (`alg` and `kid` in the header).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, Error> {
        self.sign_typed(claims, "JWT")
    }

    /// [`SigningKey::sign`], the header's `typ` being `typ` (`logout+jwt` for a back-channel
    /// logout token, as its specification recommends, so that it passes for no other token).
    pub fn sign_typed<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, Error> {
        let mut header = Header::new(self.alg.jwt());
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(Error::Encoding)?);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(Error::Encoding)?));
        let signature = match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &SystemRandom::new(), token.as_bytes(), &mut sig)
                    .map_err(|_| Error::SignatureFailed)?;
                sig
            }
            Signer::Ed25519(pair) => pair.sign(token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

fn public_jwk(alg: Algorithm, pkcs8: &[u8]) -> Result<Jwk, Error> {
    let algorithm = match alg {
        Algorithm::Rs256 => {
            let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| Error::MalformedKey(alg))?;
            let public = pair.public_key();
            AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            })
        }
        Algorithm::EdDsa => {
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| Error::MalformedKey(alg))?;
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            })
        }
    };
    let key_algorithm = match alg {
        Algorithm::Rs256 => KeyAlgorithm::RS256,
        Algorithm::EdDsa => KeyAlgorithm::EdDSA,
    };
    Ok(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(key_algorithm),
            ..CommonParameters::default()
        },
        algorithm,
    })
}

/// The key set of a tenant: the public JWKs of its keys that are published at `now`
/// (the current key and the retired keys some token may still need).
pub fn jwks(keys: &[SigningKey], now: SystemTime, max_token_lifetime: Duration) -> JwkSet {
    JwkSet {
        keys: keys.iter().filter(|k| k.is_published(now, max_token_lifetime)).map(|k| k.public_jwk.clone()).collect(),
    }
}

/// [`jwks`] as the JSON document served at `/<tenant>/.well-known/jwks.json`.
pub fn jwks_json(keys: &[SigningKey], now: SystemTime, max_token_lifetime: Duration) -> String {
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(&jwks(keys, now, max_token_lifetime)).unwrap_or_default()
}

/// A tenant's issuer: the public URL, then `/<tenant>/` (`https://id.example.com/acme/`).
pub fn issuer(public_url: &str, tenant: &str) -> String {
    format!("{}/{tenant}/", public_url.trim_end_matches('/'))
}

/// The tenant's userinfo endpoint, `<issuer>userinfo`: also an audience of every JWT access
/// token, since `openid` is always granted.
pub fn userinfo_endpoint(issuer: &str) -> String {
    format!("{issuer}userinfo")
}

/// The OpenID Provider metadata of a tenant (OpenID Connect Discovery 1.0), served at
/// `/<tenant>/.well-known/openid-configuration`. `algorithms` are those of the published
/// keys. It lists exactly what the provider's routes (`postern-provider`) serve under the
/// issuer: nothing it names answers 404.
pub fn openid_configuration(issuer: &str, algorithms: &[Algorithm]) -> serde_json::Value {
    let mut algs: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
    if algs.is_empty() {
        algs.push(Algorithm::Rs256.as_str());
    }
    algs.sort_unstable();
    algs.dedup();
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}authorize"),
        "token_endpoint": format!("{issuer}oauth/token"),
        "revocation_endpoint": format!("{issuer}oauth/revoke"),
        "end_session_endpoint": format!("{issuer}oidc/logout"),
        "userinfo_endpoint": userinfo_endpoint(issuer),
        "jwks_uri": format!("{issuer}.well-known/jwks.json"),
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "http://auth0.com/oauth/grant-type/passwordless/otp"
        ],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post", "web_message"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "scopes_supported": ["openid", "profile", "email", "phone", "offline_access"],
        "claims_supported": [
            "iss", "aud", "sub", "iat", "exp", "auth_time", "nonce", "email", "email_verified", "name",
            "given_name", "family_name", "nickname", "picture", "updated_at", "phone_number",
            "phone_number_verified"
        ],
    })
}

/// The profile claims of an ID token (OpenID Connect standard claims). `None` is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileClaims {
    /// The user's email address (scope `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the email address is verified (scope `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// The user's full name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's given name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// The user's family name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// The user's casual name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// The URL of the user's picture (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    /// When the profile was last changed, in seconds since the epoch (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    /// The user's groups in a directory whose connection reads them (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The user's phone number, E.164 (scope `phone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// Whether the phone number is verified (scope `phone`): a passwordless SMS login
    /// verifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_verified: Option<bool>,
}

impl ProfileClaims {
    /// Keeps only the claims the scopes grant (OpenID Connect Core 5.4): `email` gives email
    /// and email_verified, `phone` phone_number and phone_number_verified, `profile` the
    /// others.
    pub fn for_scope(self, scope: &str) -> Self {
        let has = |s: &str| scope.split_whitespace().any(|x| x == s);
        let (email, profile, phone) = (has("email"), has("profile"), has("phone"));
        ProfileClaims {
            email: self.email.filter(|_| email),
            email_verified: self.email_verified.filter(|_| email),
            name: self.name.filter(|_| profile),
            given_name: self.given_name.filter(|_| profile),
            family_name: self.family_name.filter(|_| profile),
            nickname: self.nickname.filter(|_| profile),
            picture: self.picture.filter(|_| profile),
            updated_at: self.updated_at.filter(|_| profile),
            groups: self.groups.filter(|_| profile),
            phone_number: self.phone_number.filter(|_| phone),
            phone_number_verified: self.phone_number_verified.filter(|_| phone),
        }
    }
}

/// The claims of an ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    /// The issuer: `<public URL>/<tenant>/`.
    pub iss: String,
    /// The audience: the client_id.
    pub aud: String,
    /// The subject: the user_id.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// The nonce the application sent with an authorization request, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The profile claims the scopes grant.
    #[serde(flatten)]
    pub profile: ProfileClaims,
}

/// The claims of a JWT access token (a login that named an API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuer: `<public URL>/<tenant>/`.
    pub iss: String,
    /// The audiences: the API's identifier, then the tenant's userinfo endpoint. Written as
    /// an array; read from an array or a single string.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// The subject: the user_id.
    pub sub: String,
    /// The authorized party: the client_id.
    pub azp: String,
    /// The granted scopes, space separated.
    pub scope: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(a) => a,
    })
}

/// The claims sealed in an opaque access token (a login that named no API). No issuer nor
/// audience: the seal binds the token to its tenant, and it is good only at `/userinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpaqueAccessClaims {
    /// The subject: the user_id.
    pub sub: String,
    /// The authorized party: the client_id.
    pub azp: String,
    /// The granted scopes, space separated.
    pub scope: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// The signing key that was the tenant's current key at issue: the token is good only
    /// while that key is published, so the tokens of a deleted tenant do not serve a later
    /// tenant of the same name (whose keys are new).
    pub kid: String,
}

/// Seals `claims` into an opaque access token of `tenant`: [`OPAQUE_ACCESS_TOKEN_PREFIX`],
/// then the URL-safe base64 (unpadded) of the claims as JSON sealed under `master` with the
/// access-token label, bound to the tenant.
pub fn seal_access_token(master: &MasterKey, tenant: &str, claims: &OpaqueAccessClaims) -> Result<String, Error> {
    let json = serde_json::to_vec(claims).map_err(Error::Encoding)?;
    let sealed = master.seal(ACCESS_TOKEN_LABEL, &[tenant], &json).map_err(Error::Seal)?;
    Ok(format!("{OPAQUE_ACCESS_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)))
}

/// Whether `token` has the form of an opaque access token (not whether it opens).
pub fn is_opaque_access_token(token: &str) -> bool {
    token.starts_with(OPAQUE_ACCESS_TOKEN_PREFIX)
}

/// Opens an opaque access token of `tenant` and checks its expiry at `now` (no leeway).
/// Fails with [`Error::InvalidOpaqueToken`] for anything that is not an intact token sealed
/// under `master` for this tenant, and [`Error::Expired`] for an expired one.
pub fn open_access_token(
    master: &MasterKey,
    tenant: &str,
    token: &str,
    now: SystemTime,
) -> Result<OpaqueAccessClaims, Error> {
    let encoded = token.strip_prefix(OPAQUE_ACCESS_TOKEN_PREFIX).ok_or(Error::InvalidOpaqueToken)?;
    // A login's token is a few hundred characters; refuse to decode anything far larger.
    if encoded.len() > 4096 {
        return Err(Error::InvalidOpaqueToken);
    }
    let sealed = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| Error::InvalidOpaqueToken)?;
    let json = master.open(ACCESS_TOKEN_LABEL, &[tenant], &sealed).map_err(|_| Error::InvalidOpaqueToken)?;
    let claims: OpaqueAccessClaims = serde_json::from_slice(&json).map_err(|_| Error::InvalidOpaqueToken)?;
    if unix_seconds(now) >= claims.exp {
        return Err(Error::Expired);
    }
    Ok(claims)
}

/// How long the tokens of a login are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// The ID token's lifetime.
    pub id_token: Duration,
    /// The access token's lifetime (the login's `expires_in`).
    pub access_token: Duration,
}

impl Lifetimes {
    /// Auth0's defaults: 10 hours for ID tokens, 24 hours for access tokens.
    pub const DEFAULT: Lifetimes =
        Lifetimes { id_token: DEFAULT_ID_TOKEN_LIFETIME, access_token: DEFAULT_ACCESS_TOKEN_LIFETIME };

    /// The longest of the two: how long a retired key must stay published.
    pub fn max(&self) -> Duration {
        self.id_token.max(self.access_token)
    }
}

/// What a successful login needs signed (or sealed).
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The tenant's name: an opaque access token is bound to it.
    pub tenant: &'a str,
    /// Seals the opaque access token.
    pub master: &'a MasterKey,
    /// The tenant's issuer ([`issuer`]).
    pub issuer: &'a str,
    /// The client the user logged in to.
    pub client_id: &'a str,
    /// The API the access token is for; `None` (or empty) means none: the access token is
    /// then opaque, good only at the userinfo endpoint.
    pub audience: Option<&'a str>,
    /// The user's id (`auth0|…`).
    pub user_id: &'a str,
    /// The requested scopes; empty means [`DEFAULT_SCOPE`]. `openid` is always granted.
    pub scope: &'a str,
    /// The user's profile; filtered by the scopes.
    pub profile: ProfileClaims,
    /// The nonce to echo in the ID token, if any.
    pub nonce: Option<&'a str>,
    /// The time of issue.
    pub now: SystemTime,
    /// How long the tokens are valid.
    pub lifetimes: Lifetimes,
}

/// The tokens of a login, as the Login response carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The signed ID token.
    pub id_token: String,
    /// The access token: opaque (sealed) without an audience, a signed JWT with one.
    pub access_token: String,
    /// Always [`TOKEN_TYPE`].
    pub token_type: &'static str,
    /// The access token's lifetime in seconds.
    pub expires_in: u64,
    /// The granted scopes, space separated.
    pub scope: String,
}

/// The granted scopes: the requested ones (or [`DEFAULT_SCOPE`]) with `openid` first,
/// without duplicates.
pub fn normalize_scope(scope: &str) -> String {
    let requested = if scope.trim().is_empty() { DEFAULT_SCOPE } else { scope };
    let mut granted = vec!["openid"];
    for s in requested.split_whitespace() {
        if !granted.contains(&s) {
            granted.push(s);
        }
    }
    granted.join(" ")
}

/// The `at_hash` of an ID token issued with `access_token` (OpenID Connect Core 3.1.3.6):
/// the base64url of the left half of the access token's hash under the hash of the ID
/// token's `alg` (SHA-256 for RS256; SHA-512 for EdDSA with Ed25519, as the OpenID
/// Foundation's errata and certified relying parties read it).
pub fn at_hash(alg: Algorithm, access_token: &str) -> String {
    let digest_alg = match alg {
        Algorithm::Rs256 => &aws_lc_rs::digest::SHA256,
        Algorithm::EdDsa => &aws_lc_rs::digest::SHA512,
    };
    let digest = aws_lc_rs::digest::digest(digest_alg, access_token.as_bytes());
    let bytes = digest.as_ref();
    URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() / 2])
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs the ID token of a login with `key`, and makes its access token: without an
/// audience an opaque token sealed under the master key (no signature), with one a JWT
/// signed with `key` whose `aud` is [audience, [`userinfo_endpoint`]].
pub fn issue(key: &SigningKey, request: &TokenRequest<'_>) -> Result<Issued, Error> {
    let scope = normalize_scope(request.scope);
    let iat = unix_seconds(request.now);
    let id = IdTokenClaims {
        iss: request.issuer.to_owned(),
        aud: request.client_id.to_owned(),
        sub: request.user_id.to_owned(),
        iat,
        exp: iat + request.lifetimes.id_token.as_secs(),
        nonce: request.nonce.map(str::to_owned),
        profile: request.profile.clone().for_scope(&scope),
    };
    let exp = iat + request.lifetimes.access_token.as_secs();
    let access_token = match request.audience.filter(|a| !a.is_empty()) {
        Some(audience) => key.sign(&AccessTokenClaims {
            iss: request.issuer.to_owned(),
            aud: vec![audience.to_owned(), userinfo_endpoint(request.issuer)],
            sub: request.user_id.to_owned(),
            azp: request.client_id.to_owned(),
            scope: scope.clone(),
            iat,
            exp,
        })?,
        None => seal_access_token(
            request.master,
            request.tenant,
            &OpaqueAccessClaims {
                sub: request.user_id.to_owned(),
                azp: request.client_id.to_owned(),
                scope: scope.clone(),
                iat,
                exp,
                kid: key.kid.clone(),
            },
        )?,
    };
    Ok(Issued {
        id_token: key.sign(&id)?,
        access_token,
        token_type: TOKEN_TYPE,
        expires_in: request.lifetimes.access_token.as_secs(),
        scope,
    })
}

/// Verifies a token as a relying party would: finds its key in `jwks` by `kid`, checks
/// that the header's algorithm is the key's, the signature, `iss`, `aud`, and `exp` (at
/// the system clock, with no leeway), then answers the claims.
pub fn verify<T: DeserializeOwned>(token: &str, jwks: &JwkSet, issuer: &str, audience: &str) -> Result<T, Error> {
    let header = jsonwebtoken::decode_header(token).map_err(Error::InvalidToken)?;
    let kid = header.kid.ok_or(Error::UnknownKey)?;
    let jwk = jwks.find(&kid).ok_or(Error::UnknownKey)?;
    let alg = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => jsonwebtoken::Algorithm::RS256,
        Some(KeyAlgorithm::EdDSA) => jsonwebtoken::Algorithm::EdDSA,
        _ => return Err(Error::UnknownKey),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(Error::InvalidToken)?;
    // Only the key's own algorithm: a header naming another one fails here.
    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<T>(token, &key, &validation).map(|data| data.claims).map_err(Error::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    const ISSUER: &str = "https://id.example.com/fabrikam-public/";
    const TENANT: &str = "fabrikam-public";
    const CLIENT: &str = "client-portal";
    const USERINFO: &str = "https://id.example.com/fabrikam-public/userinfo";

    fn master() -> &'static MasterKey {
        static MASTER: std::sync::OnceLock<MasterKey> = std::sync::OnceLock::new();
        MASTER.get_or_init(|| MasterKey::generate().unwrap())
    }

    fn alice() -> ProfileClaims {
        ProfileClaims {
            email: Some("alice@fabrikam.com".into()),
            email_verified: Some(true),
            name: Some("Alice Liddell".into()),
            given_name: Some("Alice".into()),
            family_name: Some("Liddell".into()),
            nickname: Some("alice".into()),
            picture: Some("https://example.com/alice.png".into()),
            updated_at: Some(1_700_000_000),
            groups: None,
            phone_number: Some("+14155550123".into()),
            phone_number_verified: Some(true),
        }
    }

    fn request(now: SystemTime) -> TokenRequest<'static> {
        TokenRequest {
            tenant: TENANT,
            master: master(),
            issuer: ISSUER,
            client_id: CLIENT,
            audience: None,
            user_id: "auth0|0193",
            scope: "",
            profile: alice(),
            nonce: None,
            now,
            lifetimes: Lifetimes::DEFAULT,
        }
    }

    fn both() -> [Algorithm; 2] {
        [Algorithm::Rs256, Algorithm::EdDsa]
    }

    #[tokio::test]
    async fn generate_off_the_runtime() {
        let key = SigningKey::generate_async(Algorithm::Rs256, SystemTime::now()).await.unwrap();
        assert!(key.is_current(SystemTime::now()));
        assert_eq!(key.alg, Algorithm::Rs256);
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_access_tokens_hash() {
        // OpenID Connect Core A.3 (the example's access token and at_hash, RS256).
        assert_eq!(at_hash(Algorithm::Rs256, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"), "77QmUPtjPfzWtF2AnpK9RQ");
        assert_eq!(at_hash(Algorithm::EdDsa, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y").len(), 43, "32 bytes");
    }

    #[test]
    fn issuer_of_a_tenant() {
        assert_eq!(issuer("https://id.example.com", "acme"), "https://id.example.com/acme/");
        assert_eq!(issuer("https://id.example.com/", "acme"), "https://id.example.com/acme/");
    }

    #[test]
    fn sign_and_verify_against_the_key_set() {
        for alg in both() {
            let now = SystemTime::now();
            let key = SigningKey::generate(alg, now).unwrap();
            let set = jwks(std::slice::from_ref(&key), now, Lifetimes::DEFAULT.max());
            // As a third party: the key set as fetched over HTTP, parsed from JSON.
            let fetched: JwkSet =
                serde_json::from_str(&jwks_json(std::slice::from_ref(&key), now, Lifetimes::DEFAULT.max())).unwrap();
            assert_eq!(fetched, set);

            let tokens = issue(&key, &request(now)).unwrap();
            assert_eq!(tokens.token_type, "Bearer");
            assert_eq!(tokens.expires_in, 86_400);
            assert_eq!(tokens.scope, "openid profile email");

            let header = jsonwebtoken::decode_header(&tokens.id_token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(header.alg, alg.jwt());

            let id: IdTokenClaims = verify(&tokens.id_token, &fetched, ISSUER, CLIENT).unwrap();
            assert_eq!(id.iss, ISSUER);
            assert_eq!(id.aud, CLIENT);
            assert_eq!(id.sub, "auth0|0193");
            assert_eq!(id.exp - id.iat, 36_000);
            // The phone claims are the `phone` scope's, which was not asked.
            assert_eq!(id.profile, ProfileClaims { phone_number: None, phone_number_verified: None, ..alice() });

            // Without an audience the access token is opaque: not a JWT, sealed for the tenant.
            assert!(tokens.access_token.starts_with(OPAQUE_ACCESS_TOKEN_PREFIX));
            assert_ne!(tokens.access_token.split('.').count(), 3);
            assert!(verify::<AccessTokenClaims>(&tokens.access_token, &fetched, ISSUER, CLIENT).is_err());
            let access = open_access_token(master(), TENANT, &tokens.access_token, now).unwrap();
            assert_eq!(access.sub, "auth0|0193");
            assert_eq!(access.azp, CLIENT);
            assert_eq!(access.scope, "openid profile email");
            assert_eq!(access.exp - access.iat, 86_400);
        }
    }

    #[test]
    fn the_raw_claims_are_what_a_relying_party_expects() {
        let now = SystemTime::now();
        let key = SigningKey::generate(Algorithm::EdDsa, now).unwrap();
        let tokens = issue(&key, &TokenRequest { scope: "openid email", nonce: Some("n-1"), ..request(now) }).unwrap();
        let set = jwks(&[key], now, Lifetimes::DEFAULT.max());
        let raw: serde_json::Value = verify(&tokens.id_token, &set, ISSUER, CLIENT).unwrap();
        let object = raw.as_object().unwrap();
        let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["aud", "email", "email_verified", "exp", "iat", "iss", "nonce", "sub"]);
        assert_eq!(raw["email_verified"], true);
    }

    #[test]
    fn access_token_for_an_api() {
        let now = SystemTime::now();
        let key = SigningKey::generate(Algorithm::EdDsa, now).unwrap();
        let tokens = issue(
            &key,
            &TokenRequest { audience: Some("https://api.fabrikam.com"), scope: "read:timesheets", ..request(now) },
        )
        .unwrap();
        let set = jwks(&[key], now, Lifetimes::DEFAULT.max());
        let access: AccessTokenClaims = verify(&tokens.access_token, &set, ISSUER, "https://api.fabrikam.com").unwrap();
        assert_eq!(access.scope, "openid read:timesheets");
        assert_eq!(access.azp, CLIENT);
        // For the API and, since `openid` is always granted, for the userinfo endpoint.
        assert_eq!(access.aud, ["https://api.fabrikam.com", USERINFO]);
        let raw: serde_json::Value = verify(&tokens.access_token, &set, ISSUER, USERINFO).unwrap();
        assert_eq!(raw["aud"], serde_json::json!(["https://api.fabrikam.com", USERINFO]));
        // Not an opaque token.
        assert!(!is_opaque_access_token(&tokens.access_token));
        // The ID token is still for the client, and the scope grants no profile claims.
        let id: IdTokenClaims = verify(&tokens.id_token, &set, ISSUER, CLIENT).unwrap();
        assert_eq!(id.profile, ProfileClaims::default());
        assert!(matches!(
            verify::<AccessTokenClaims>(&tokens.access_token, &set, ISSUER, CLIENT),
            Err(Error::InvalidToken(_))
        ));
    }

    #[test]
    fn opaque_access_tokens_open_only_for_their_tenant_intact_and_in_time() {
        let now = SystemTime::now();
        let key = SigningKey::generate(Algorithm::EdDsa, now).unwrap();
        let token = issue(&key, &TokenRequest { scope: "openid email", ..request(now) }).unwrap().access_token;
        let encoded = token.strip_prefix(OPAQUE_ACCESS_TOKEN_PREFIX).unwrap();
        assert!(!encoded.contains(['=', '+', '/']), "URL-safe base64 without padding: {token}");
        let claims = open_access_token(master(), TENANT, &token, now).unwrap();
        assert_eq!(
            claims,
            OpaqueAccessClaims {
                sub: "auth0|0193".into(),
                azp: CLIENT.into(),
                scope: "openid email".into(),
                iat: unix_seconds(now),
                exp: unix_seconds(now) + 86_400,
                kid: key.kid.clone(),
            }
        );
        // Another tenant, another master key.
        assert!(matches!(open_access_token(master(), "contoso", &token, now), Err(Error::InvalidOpaqueToken)));
        let other = MasterKey::generate().unwrap();
        assert!(matches!(open_access_token(&other, TENANT, &token, now), Err(Error::InvalidOpaqueToken)));
        // Any changed character, a cut, no prefix, garbage.
        let mut bytes = token.clone().into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        for bad in [tampered.as_str(), &token[..token.len() - 4], encoded, "pat_", "pat_!!!", ""] {
            assert!(matches!(open_access_token(master(), TENANT, bad, now), Err(Error::InvalidOpaqueToken)), "{bad}");
        }
        // Expired: at its exp and later.
        let later = now + Duration::from_secs(86_400);
        assert!(matches!(open_access_token(master(), TENANT, &token, later), Err(Error::Expired)));
    }

    #[test]
    fn expired_tokens_fail() {
        for alg in both() {
            let now = SystemTime::now();
            let key = SigningKey::generate(alg, now).unwrap();
            let past = now - Duration::from_secs(2 * 86_400);
            let tokens = issue(&key, &request(past)).unwrap();
            let set = jwks(&[key], now, Lifetimes::DEFAULT.max());
            let err = verify::<IdTokenClaims>(&tokens.id_token, &set, ISSUER, CLIENT).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidToken(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature),
                "{err:?}"
            );
        }
    }

    #[test]
    fn wrong_issuer_or_audience_fails() {
        let now = SystemTime::now();
        let key = SigningKey::generate(Algorithm::EdDsa, now).unwrap();
        let tokens = issue(&key, &request(now)).unwrap();
        let set = jwks(&[key], now, Lifetimes::DEFAULT.max());
        assert!(verify::<IdTokenClaims>(&tokens.id_token, &set, "https://id.example.com/other/", CLIENT).is_err());
        assert!(verify::<IdTokenClaims>(&tokens.id_token, &set, ISSUER, "another-client").is_err());
    }

    #[test]
    fn another_tenants_key_set_fails() {
        for alg in both() {
            let now = SystemTime::now();
            let ours = SigningKey::generate(alg, now).unwrap();
            let theirs = SigningKey::generate(alg, now).unwrap();
            let tokens = issue(&ours, &request(now)).unwrap();
            let their_set = jwks(std::slice::from_ref(&theirs), now, Lifetimes::DEFAULT.max());
            assert!(matches!(
                verify::<IdTokenClaims>(&tokens.id_token, &their_set, ISSUER, CLIENT),
                Err(Error::UnknownKey)
            ));
            // Even a key set whose key carries our kid does not verify our signature.
            let mut impostor = their_set.clone();
            impostor.keys[0].common.key_id = Some(ours.kid.clone());
            assert!(matches!(
                verify::<IdTokenClaims>(&tokens.id_token, &impostor, ISSUER, CLIENT),
                Err(Error::InvalidToken(_))
            ));
        }
    }

    #[test]
    fn tampered_and_algorithm_swapped_tokens_fail() {
        let now = SystemTime::now();
        let rsa = SigningKey::generate(Algorithm::Rs256, now).unwrap();
        let tokens = issue(&rsa, &request(now)).unwrap();
        let set = jwks(std::slice::from_ref(&rsa), now, Lifetimes::DEFAULT.max());
        // Change the payload, keep the signature.
        let mut parts: Vec<String> = tokens.id_token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "auth0|admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(verify::<IdTokenClaims>(&parts.join("."), &set, ISSUER, CLIENT).is_err());
        // A header that names HS256 with the RSA key's kid.
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"public?")).unwrap();
        assert!(verify::<IdTokenClaims>(&forged, &set, ISSUER, CLIENT).is_err());
        // No kid at all.
        let unnamed = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"x"),
        )
        .unwrap();
        assert!(matches!(verify::<IdTokenClaims>(&unnamed, &set, ISSUER, CLIENT), Err(Error::UnknownKey)));
    }

    #[test]
    fn stored_keys_round_trip() {
        for alg in both() {
            let now = SystemTime::now();
            let key = SigningKey::generate(alg, now).unwrap();
            let stored = SigningKey::from_stored(
                key.kid.clone(),
                alg,
                key.private_pkcs8_der().to_vec(),
                key.created,
                Some(key.created),
                None,
            )
            .unwrap();
            assert_eq!(stored.public_jwk(), key.public_jwk());
            let token = stored
                .sign(&serde_json::json!({"iss": ISSUER, "aud": CLIENT, "sub": "u", "iat": 1, "exp": 9_999_999_999u64}))
                .unwrap();
            let set = jwks(std::slice::from_ref(&key), now, Lifetimes::DEFAULT.max());
            let _: serde_json::Value = verify(&token, &set, ISSUER, CLIENT).unwrap();

            let pem = key.private_pkcs8_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && pem.ends_with("-----END PRIVATE KEY-----\n"));
            assert!(pem.lines().all(|l| l.len() <= 64));

            let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk_json()).unwrap();
            assert_eq!(jwk["kid"], key.kid.as_str());
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none(), "no private part in the JWK");
            assert_eq!(key.kid, key.public_jwk().thumbprint(ThumbprintHash::SHA256).unwrap());
            assert!(format!("{key:?}").contains("<redacted>"));
        }
        let rsa = SigningKey::generate(Algorithm::Rs256, SystemTime::now()).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&rsa.public_jwk_json()).unwrap();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap().len(), 256);
        let ed = SigningKey::generate(Algorithm::EdDsa, SystemTime::now()).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&ed.public_jwk_json()).unwrap();
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
    }

    #[test]
    fn malformed_stored_keys_are_errors() {
        let now = SystemTime::now();
        let ed = SigningKey::generate(Algorithm::EdDsa, now).unwrap();
        let rsa = SigningKey::generate(Algorithm::Rs256, now).unwrap();
        let cases: [(Algorithm, Vec<u8>); 4] = [
            (Algorithm::Rs256, ed.private_pkcs8_der().to_vec()),
            (Algorithm::EdDsa, rsa.private_pkcs8_der().to_vec()),
            (Algorithm::Rs256, vec![]),
            (Algorithm::EdDsa, vec![0x30, 0x82, 0xff]),
        ];
        for (alg, der) in cases {
            assert!(matches!(
                SigningKey::from_stored("k".into(), alg, der, now, Some(now), None),
                Err(Error::MalformedKey(_))
            ));
        }
        let der = rsa.private_pkcs8_der();
        for cut in [0, 1, 2, 5, 20, der.len() - 1] {
            let truncated = der[..cut].to_vec();
            assert!(
                matches!(
                    SigningKey::from_stored("k".into(), Algorithm::Rs256, truncated, now, Some(now), None),
                    Err(Error::MalformedKey(_))
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rotation_keeps_the_retired_key_until_its_tokens_expire() {
        let t0 = SystemTime::now();
        let lifetime = Lifetimes::DEFAULT.max();
        let mut old = SigningKey::generate(Algorithm::Rs256, t0).unwrap();
        let old_token = issue(&old, &request(t0)).unwrap().id_token;

        let t1 = t0 + Duration::from_secs(3600);
        old.retire(t1);
        let new = SigningKey::generate(Algorithm::EdDsa, t1).unwrap();
        assert!(!old.is_current(t1) && new.is_current(t1) && old.is_current(t1 - Duration::from_secs(1)));
        assert_eq!(old.expire_time(lifetime), Some(t1 + lifetime));
        assert_eq!(new.expire_time(lifetime), None);

        let keys = [new.clone(), old.clone()];
        let set = jwks(&keys, t1, lifetime);
        assert_eq!(set.keys.len(), 2);
        let _: IdTokenClaims = verify(&old_token, &set, ISSUER, CLIENT).unwrap();

        let later = jwks(&keys, t1 + lifetime, lifetime);
        assert_eq!(later.keys.len(), 1);
        assert_eq!(later.keys[0].common.key_id.as_deref(), Some(new.kid.as_str()));
        assert!(matches!(verify::<IdTokenClaims>(&old_token, &later, ISSUER, CLIENT), Err(Error::UnknownKey)));

        // Retiring twice keeps the first date.
        old.retire(t1 + Duration::from_secs(5));
        assert_eq!(old.retired_at, Some(t1));
    }

    #[test]
    fn scopes_and_discovery() {
        assert_eq!(normalize_scope(""), "openid profile email");
        assert_eq!(normalize_scope("email openid email"), "openid email");
        assert_eq!(normalize_scope("read:x"), "openid read:x");
        assert_eq!(alice().for_scope("openid").clone(), ProfileClaims::default());
        let phone = alice().for_scope("openid phone");
        assert_eq!((phone.phone_number.as_deref(), phone.phone_number_verified), (Some("+14155550123"), Some(true)));
        assert_eq!((phone.email, phone.name), (None, None));
        assert_eq!(alice().for_scope("openid profile email").phone_number, None);

        let doc = openid_configuration(ISSUER, &[Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Rs256]);
        assert_eq!(doc["issuer"], ISSUER);
        assert_eq!(doc["jwks_uri"], "https://id.example.com/fabrikam-public/.well-known/jwks.json");
        assert_eq!(doc["userinfo_endpoint"], USERINFO);
        assert_eq!(doc["id_token_signing_alg_values_supported"], serde_json::json!(["EdDSA", "RS256"]));
        assert_eq!(
            openid_configuration(ISSUER, &[])["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );
        assert_eq!("EdDSA".parse::<Algorithm>().unwrap(), Algorithm::EdDsa);
        assert!("HS256".parse::<Algorithm>().is_err());
    }
}
