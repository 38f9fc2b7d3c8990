//! The OpenID Connect family of redirect connectors: `oidc`, `google-oauth2`, `google-apps`,
//! `waad` (Entra ID), `linkedin`, `windowslive` and `apple` — one engine, a small [`profile`]
//! per provider.
//!
//! The engine, per login:
//! - **begin**: the provider's endpoints (each configurable per connection, else from its
//!   discovery document, cached with the document's HTTP lifetime), then the authorization
//!   request: `response_type=code`, the transaction's `state` and `nonce`, the S256 PKCE
//!   challenge of its verifier, the profile's scopes and parameters (`hd` for Workspace).
//! - **complete**: an upstream `error` (a cancelled login among them) is
//!   [`ConnectorError::Denied`]; otherwise the code is exchanged with `openidconnect` (its
//!   HTTP client is reqwest 0.13, redirects off, passed as an async closure) and the ID
//!   token checked: its signature against the provider's keys (RSA by aws-lc-rs, [`jwk`];
//!   JWKS, cached with their HTTP lifetime and fetched again once when a token names a key
//!   id the cache lacks — a key rotation), an asymmetric algorithm (`none` and shared-secret algorithms are refused),
//!   `iss` (exact, or Microsoft's `{tenantid}` template), `aud`, `azp`, `exp` (one minute of
//!   skew), `iat` (neither in the future nor older than the transaction can be) and `nonce`;
//!   then the profile's own rule (`hd` for Workspace, `tid` for Entra ID). Userinfo is read
//!   when the connection asks, and must be about the same `sub`. Any failure is
//!   [`ConnectorError::Rejected`] and nothing is stored.
//! - The user's id at the source is `sub` (Entra ID: `oid`; `oidc` prefixes the connection's
//!   name, as Auth0's enterprise ids do, since two OIDC providers may reuse a `sub`).
//!   `email_verified` is kept only where the provider asserts it.
//! - Sign in with Apple ([`apple`]): the answer is posted (`response_mode=form_post`); the
//!   client secret is an ES256 JWT made from the team id, the key id and the private key (the
//!   connection's sealed `client_secret`), cached and made again an hour before it expires;
//!   the name arrives in the `user` parameter of the first login only, so the profile is
//!   partial (a later login keeps the stored name).
//! - The front channel (`oidc` with OIDC_CHANNEL_FRONT, Auth0's "Front Channel"): the
//!   authorization request asks `response_type=id_token` with `response_mode=form_post` (no
//!   PKCE, no code); the browser posts the ID token back, and it is checked exactly as a
//!   token endpoint's (its `nonce` binds it to this login). No client secret and no token
//!   endpoint are used, and no access token comes, so userinfo cannot be read.
//! - `private_key_jwt` ([`assertion`], `oidc` with OIDC_CLIENT_AUTH_PRIVATE_KEY_JWT): the code
//!   exchange carries a JWT signed with the connection's sealed `client_assertion_key`
//!   (RS256 or ES256 by aws-lc-rs; `iss` = `sub` = the client id, `aud` the token endpoint, a
//!   fresh `jti`, 60 seconds) instead of the client secret.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apple;
mod assertion;
pub mod backchannel;
mod http;
mod jwk;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreTokenResponse};
use openidconnect::{
    AuthType, AuthUrl, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, IdTokenVerifier, IssuerUrl,
    JsonWebKey as _, JsonWebKeyUse as _, Nonce, OAuth2TokenResponse as _, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, SignatureVerificationError, TokenResponse as _, TokenUrl,
};
use postern_connection::{Resolved, Strategy};
use postern_connector::{
    Begun, Completed, ConnectorError, Connectors, Egress, ExternalProfile, RedirectConnector, RedirectTransaction,
    TEST_CODE, TestReport, TestStep, UpstreamLogout, UpstreamTokens, async_trait, test_code_verdict,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::jwk::{Jwk, KeySet};
use crate::profile::{ClaimRule, IssuerRule, Profile};

/// The strategies this connector serves.
pub const STRATEGIES: [Strategy; 7] = [
    Strategy::Oidc,
    Strategy::GoogleOauth2,
    Strategy::GoogleApps,
    Strategy::Waad,
    Strategy::Linkedin,
    Strategy::Windowslive,
    Strategy::Apple,
];

/// Registers one shared [`OidcConnector`] for every strategy of [`STRATEGIES`], and the
/// sender of Postern's own back-channel logout tokens ([`backchannel`]).
pub fn register(connectors: Connectors, egress: &Egress) -> Connectors {
    let connector: Arc<dyn RedirectConnector> = Arc::new(OidcConnector::with_egress(egress));
    STRATEGIES
        .into_iter()
        .fold(connectors, |c, s| c.with_redirect(s, connector.clone()))
        .with_logout_notifier(Arc::new(backchannel::HttpLogoutNotifier::new(egress)))
}

/// The clock skew allowed on `exp` and `iat`.
const SKEW: Duration = Duration::from_secs(60);
/// The oldest `iat` accepted: an ID token is fetched right after the login it reports.
const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// A document kept until `until`.
struct Cached<T> {
    value: Arc<T>,
    until: Instant,
}

/// The provider's discovery document, as far as the engine reads it.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    #[serde(default)]
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: String,
    #[serde(default)]
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    response_types_supported: Vec<String>,
    #[serde(default)]
    response_modes_supported: Vec<String>,
    /// RP-Initiated Logout's endpoint, where it has one.
    #[serde(default)]
    end_session_endpoint: String,
}

/// The endpoints of one login.
#[derive(Debug, Clone)]
struct Endpoints {
    /// The discovered issuer, if a document was read.
    discovered_issuer: String,
    authorization: String,
    token: String,
    userinfo: String,
    jwks: String,
    /// Whether the client authenticates in the body (`client_secret_post`) rather than with
    /// HTTP Basic.
    secret_in_body: bool,
    /// The discovery document, if one was read.
    discovery: Option<Arc<Discovery>>,
}

/// The OpenID Connect engine behind every strategy of [`STRATEGIES`]. Its caches (discovery
/// documents and key sets, by URL) are shared by every connection of every tenant.
pub struct OidcConnector {
    http: http::Http,
    documents: Mutex<HashMap<String, Cached<Discovery>>>,
    keys: Mutex<HashMap<String, Cached<KeySet>>>,
    apple_secrets: apple::Secrets,
}

impl Default for OidcConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for OidcConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConnector").finish_non_exhaustive()
    }
}

fn rejected(reason: &'static str, p: &Profile, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Rejected { reason, message: format!("connection {:?}: {message}", p.connection) }
}

fn unavailable(p: &Profile, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unavailable {
        reason: "UPSTREAM_UNAVAILABLE",
        message: format!("connection {:?}: {message}", p.connection),
    }
}

fn misconfigured(p: &Profile, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::FailedPrecondition {
        reason: "CONNECTION_MISCONFIGURED",
        message: format!("connection {:?}: {message}", p.connection),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a cache, not an invariant: keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first `max` characters of an upstream's text, for a message.
fn short(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl OidcConnector {
    /// A connector with empty caches, connecting under the built-in egress policy.
    pub fn new() -> Self {
        Self::with_egress(&Egress::default())
    }

    /// A connector with empty caches, connecting only where `egress` allows.
    pub fn with_egress(egress: &Egress) -> Self {
        Self {
            http: http::client(egress),
            documents: Mutex::default(),
            keys: Mutex::default(),
            apple_secrets: apple::Secrets::default(),
        }
    }

    async fn discovery(&self, p: &Profile) -> Result<Arc<Discovery>, ConnectorError> {
        let url = &p.discovery_url;
        if let Some(c) = lock(&self.documents).get(url)
            && c.until > Instant::now()
        {
            return Ok(c.value.clone());
        }
        let fetched = http::get_json(&self.http, &p.connection, "discovery document", url, None).await?;
        let doc: Discovery = serde_json::from_value(fetched.json)
            .map_err(|e| unavailable(p, format!("the discovery document at {url} is not valid: {e}")))?;
        let doc = Arc::new(doc);
        lock(&self.documents)
            .insert(url.clone(), Cached { value: doc.clone(), until: Instant::now() + fetched.max_age });
        Ok(doc)
    }

    async fn endpoints(&self, p: &Profile) -> Result<Endpoints, ConnectorError> {
        let exact_issuer = matches!(p.issuer, IssuerRule::Exact(_));
        let complete = !p.authorization_endpoint.is_empty()
            && (p.front_channel || !p.token_endpoint.is_empty())
            && !p.jwks_uri.is_empty();
        let doc = if complete && exact_issuer { None } else { Some(self.discovery(p).await?) };
        let pick = |own: &str, found: Option<&str>| -> String {
            if own.is_empty() { found.unwrap_or_default().to_owned() } else { own.to_owned() }
        };
        let d = doc.as_deref();
        let e = Endpoints {
            discovered_issuer: d.map(|d| d.issuer.clone()).unwrap_or_default(),
            authorization: pick(&p.authorization_endpoint, d.map(|d| d.authorization_endpoint.as_str())),
            token: pick(&p.token_endpoint, d.map(|d| d.token_endpoint.as_str())),
            userinfo: pick(&p.userinfo_endpoint, d.map(|d| d.userinfo_endpoint.as_str())),
            jwks: pick(&p.jwks_uri, d.map(|d| d.jwks_uri.as_str())),
            secret_in_body: d.is_some_and(|d| {
                let m = &d.token_endpoint_auth_methods_supported;
                !m.is_empty()
                    && !m.iter().any(|x| x == "client_secret_basic")
                    && m.iter().any(|x| x == "client_secret_post")
            }),
            discovery: doc.clone(),
        };
        for (what, value) in [("authorization endpoint", &e.authorization), ("token endpoint", &e.token)] {
            // The front channel never calls the token endpoint.
            if value.is_empty() && !(p.front_channel && what == "token endpoint") {
                return Err(misconfigured(p, format!("the provider names no {what}; set it on the connection")));
            }
        }
        if e.jwks.is_empty() {
            return Err(misconfigured(p, "the provider names no jwks_uri; set it on the connection"));
        }
        Ok(e)
    }

    /// The key set at `url`: cached, or fetched when the cache has none, it expired, or
    /// `refresh` (a token named a key the cached set lacks).
    async fn key_set(&self, p: &Profile, url: &str, refresh: bool) -> Result<Arc<KeySet>, ConnectorError> {
        if !refresh
            && let Some(c) = lock(&self.keys).get(url)
            && c.until > Instant::now()
        {
            return Ok(c.value.clone());
        }
        let fetched = http::get_json(&self.http, &p.connection, "signing keys", url, None).await?;
        let set: KeySet = serde_json::from_value(fetched.json)
            .map_err(|e| unavailable(p, format!("the signing keys at {url} are not a JWK set: {e}")))?;
        let set = Arc::new(set);
        lock(&self.keys).insert(url.to_owned(), Cached { value: set.clone(), until: Instant::now() + fetched.max_age });
        tracing::debug!(connection = %p.connection, url, refresh, "upstream signing keys fetched");
        Ok(set)
    }

    /// The client secret of the token request: the connection's, or Apple's JWT.
    fn client_secret(&self, p: &Profile, e: &Endpoints) -> Result<String, ConnectorError> {
        let Some(key) = &p.apple else { return Ok(p.client_secret.expose().to_owned()) };
        let audience = match &p.issuer {
            IssuerRule::Exact(i) => i.as_str(),
            _ => e.discovered_issuer.as_str(),
        };
        self.apple_secrets
            .get(key, &p.client_id, audience, p.client_secret.expose(), SystemTime::now())
            .map_err(|why| misconfigured(p, format!("the Sign in with Apple key cannot sign the client secret: {why}")))
    }

    /// The `client_assertion_type` and `client_assertion` of a token request authenticated by
    /// `private_key_jwt`, its `aud` the token endpoint; none otherwise.
    fn client_assertion(&self, p: &Profile, e: &Endpoints) -> Result<Vec<(&'static str, String)>, ConnectorError> {
        let Some(key) = &p.client_assertion else { return Ok(Vec::new()) };
        let jwt = assertion::sign(key, &p.client_id, &e.token, SystemTime::now())
            .map_err(|why| misconfigured(p, format!("the client assertion cannot be made: {why}")))?;
        Ok(vec![("client_assertion_type", assertion::JWT_BEARER.to_owned()), ("client_assertion", jwt)])
    }

    fn client(
        &self,
        p: &Profile,
        e: &Endpoints,
        tx: &RedirectTransaction,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
        >,
        ConnectorError,
    > {
        let bad = |what: &str, e: &dyn std::fmt::Display| misconfigured(p, format!("{what} is not a URL: {e}"));
        let issuer = match &p.issuer {
            IssuerRule::Exact(i) => i.clone(),
            _ => e.discovered_issuer.clone(),
        };
        let client = CoreClient::new(
            ClientId::new(p.client_id.clone()),
            IssuerUrl::new(issuer).map_err(|x| bad("the issuer", &x))?,
            CoreJsonWebKeySet::new(Vec::new()),
        );
        // With private_key_jwt no secret is sent: the assertion goes in the body with the
        // client id ([`OidcConnector::client_assertion`]).
        let client = match p.client_assertion {
            Some(_) => client,
            None => client.set_client_secret(ClientSecret::new(self.client_secret(p, e)?)),
        };
        let client = client
            .set_auth_uri(AuthUrl::new(e.authorization.clone()).map_err(|x| bad("the authorization endpoint", &x))?)
            .set_token_uri(TokenUrl::new(e.token.clone()).map_err(|x| bad("the token endpoint", &x))?)
            .set_redirect_uri(RedirectUrl::new(tx.callback_url.clone()).map_err(|x| bad("the callback URL", &x))?)
            // Apple takes the client secret in the body only.
            .set_auth_type(if e.secret_in_body || p.apple.is_some() || p.client_assertion.is_some() {
                AuthType::RequestBody
            } else {
                AuthType::BasicAuth
            });
        Ok(client)
    }

    /// TestConnection's `client_authentication` step: a code no provider issued
    /// ([`TEST_CODE`]) exchanged with the client's credentials, as a login sends them (for
    /// Apple, the client secret JWT made from the team id, key id and private key). A provider
    /// authenticates the client before it looks at the code (RFC 6749 §3.2.1, §4.1.3):
    /// `invalid_grant` says the client was accepted, `invalid_client` that it was not.
    async fn try_client(&self, p: &Profile, e: &Endpoints) -> Result<String, String> {
        let tx = RedirectTransaction {
            state: String::new(),
            nonce: String::new(),
            code_verifier: String::new(),
            callback_url: TEST_CALLBACK.into(),
            login_hint: String::new(),
            upstream_params: Vec::new(),
            extra_scopes: Vec::new(),
            data: Value::Null,
        };
        let client = self.client(p, e, &tx).map_err(|x| x.to_string())?;
        let http_client = self.http.clone();
        let send = move |request: openidconnect::HttpRequest| http::execute(http_client.clone(), request);
        let mut request = client.exchange_code(AuthorizationCode::new(TEST_CODE.to_owned()));
        for (name, value) in self.client_assertion(p, e).map_err(|x| x.to_string())? {
            request = request.add_extra_param(name, value);
        }
        let answer = request.request_async(&send).await;
        let token = &e.token;
        let client_id = &p.client_id;
        let credentials = if p.apple.is_some() {
            "check the connection's client_id, team_id, key_id and private key"
        } else if p.client_assertion.is_some() {
            "check the connection's client_id, client_assertion_key and client_assertion_key_id: the provider must \
             hold the key's public half for this client"
        } else {
            "check the connection's client_id and client_secret"
        };
        let r = match answer {
            Ok(_) => return Err(format!("{token} issued tokens for a code nobody issued: it cannot be trusted")),
            Err(RequestTokenError::ServerResponse(r)) => r,
            Err(RequestTokenError::Parse(..)) => {
                return Err(format!("{token} answered without an OAuth 2.0 error: is it the token endpoint?"));
            }
            Err(RequestTokenError::Request(err)) => return Err(format!("{token} cannot be reached ({err})")),
            Err(RequestTokenError::Other(err)) => return Err(format!("{token} failed ({})", short(&err, 200))),
        };
        let error = r.error().as_ref();
        let said =
            format!("{error}{}", r.error_description().map(|d| format!(": {}", short(d, 200))).unwrap_or_default());
        test_code_verdict(token, client_id, error, &said, credentials)
    }

    /// Checks the ID token with `keys`; `Err(None)` when it names a key the set lacks.
    fn verify(
        p: &Profile,
        issuer: &str,
        keys: &KeySet,
        id_token: &CoreIdToken,
        nonce: &str,
    ) -> Result<(), Option<ConnectorError>> {
        let issuer = IssuerUrl::new(issuer.to_owned())
            .map_err(|e| Some(misconfigured(p, format!("the issuer is not a URL: {e}"))))?;
        let now = SystemTime::now();
        let verifier = IdTokenVerifier::<Jwk>::new_confidential_client(
            ClientId::new(p.client_id.clone()),
            ClientSecret::new(p.client_secret.expose().to_owned()),
            issuer,
            keys.clone(),
        )
        .require_issuer_match(!matches!(p.issuer, IssuerRule::DiscoveredTemplate))
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ])
        .set_time_fn(move || chrono::DateTime::<chrono::Utc>::from(now - SKEW))
        .set_issue_time_verifier_fn(move |iat| {
            let iat = SystemTime::from(iat);
            if iat > now + SKEW {
                Err("issued in the future (iat)".to_owned())
            } else if iat + MAX_AGE < now {
                Err("issued too long ago (iat)".to_owned())
            } else {
                Ok(())
            }
        });
        match id_token.claims(&verifier, &Nonce::new(nonce.to_owned())) {
            Ok(_) => Ok(()),
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => Err(None),
            // openidconnect's message for a signature names no reason; its source does.
            Err(ClaimsVerificationError::SignatureVerification(why)) => Err(Some(rejected(
                "ID_TOKEN_INVALID",
                p,
                format!("the ID token was refused: its signature does not verify ({why})"),
            ))),
            Err(e) => Err(Some(rejected("ID_TOKEN_INVALID", p, format!("the ID token was refused: {e}")))),
        }
    }

    /// Exchanges the code and checks what came back: the ID token's claims and the tokens.
    async fn exchange(
        &self,
        p: &Profile,
        e: &Endpoints,
        code: &str,
        tx: &RedirectTransaction,
    ) -> Result<(Map<String, Value>, CoreTokenResponse), ConnectorError> {
        let client = self.client(p, e, tx)?;
        let http_client = self.http.clone();
        let send = move |request: openidconnect::HttpRequest| http::execute(http_client.clone(), request);
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(tx.code_verifier.clone()));
        for (name, value) in self.client_assertion(p, e)? {
            request = request.add_extra_param(name, value);
        }
        let answer = request.request_async(&send).await;
        let response = match answer {
            Ok(r) => r,
            Err(RequestTokenError::ServerResponse(r)) => {
                let description = r.error_description().map(|d| format!(": {}", short(d, 200))).unwrap_or_default();
                return Err(rejected(
                    "UPSTREAM_TOKEN_REFUSED",
                    p,
                    format!("the provider refused the code ({}{description})", r.error().as_ref()),
                ));
            }
            Err(RequestTokenError::Parse(err, _)) => {
                return Err(rejected(
                    "UPSTREAM_TOKEN_INVALID",
                    p,
                    format!("the provider's token response is not valid: {}", short(&err.to_string(), 300)),
                ));
            }
            Err(RequestTokenError::Request(err)) => {
                tracing::warn!(connection = %p.connection, error = %err, "token endpoint unreachable");
                return Err(unavailable(p, format!("the provider's token endpoint cannot be reached ({err})")));
            }
            Err(RequestTokenError::Other(err)) => {
                return Err(unavailable(p, format!("the provider's token endpoint failed ({})", short(&err, 200))));
            }
        };
        let id_token = response
            .id_token()
            .ok_or_else(|| rejected("ID_TOKEN_MISSING", p, "the provider answered no ID token (is openid a scope?)"))?;
        let claims = self.verified_claims(p, e, id_token, &tx.nonce).await?;
        Ok((claims, response))
    }

    /// The claims of `id_token` once it is checked: its signature by a key of the provider's
    /// set (fetched once more when the token names a key the cached set lacks: the provider
    /// may have rotated), `iss`, `aud`, `exp`, `iat`, `nonce`, then [`check_claims`].
    async fn verified_claims(
        &self,
        p: &Profile,
        e: &Endpoints,
        id_token: &CoreIdToken,
        nonce: &str,
    ) -> Result<Map<String, Value>, ConnectorError> {
        let issuer = match &p.issuer {
            IssuerRule::Exact(i) => i.clone(),
            _ => e.discovered_issuer.clone(),
        };
        let keys = self.key_set(p, &e.jwks, false).await?;
        match Self::verify(p, &issuer, &keys, id_token, nonce) {
            Ok(()) => {}
            Err(Some(err)) => return Err(err),
            Err(None) => {
                let keys = self.key_set(p, &e.jwks, true).await?;
                match Self::verify(p, &issuer, &keys, id_token, nonce) {
                    Ok(()) => {}
                    Err(Some(err)) => return Err(err),
                    Err(None) => {
                        return Err(rejected(
                            "ID_TOKEN_INVALID",
                            p,
                            "the ID token was refused: it is signed by a key the provider does not publish",
                        ));
                    }
                }
            }
        }
        let claims = payload(id_token).ok_or_else(|| rejected("ID_TOKEN_INVALID", p, "the ID token is malformed"))?;
        check_claims(p, e, &claims)?;
        Ok(claims)
    }
}

impl OidcConnector {
    /// The front channel's answer: the ID token posted back by the browser, checked as the
    /// back channel checks the token endpoint's (signature, `iss`, `aud`, `exp`, `iat`, and the
    /// `nonce` of this very login, which is what binds a token that travelled through the
    /// browser to it). No access token comes with it: nothing else is read.
    async fn complete_front(
        &self,
        p: &Profile,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<Completed, ConnectorError> {
        let jwt = params.get("id_token").filter(|t| !t.is_empty() && t.len() <= 16 * 1024).ok_or_else(|| {
            rejected(
                "UPSTREAM_ANSWER_INVALID",
                p,
                "the provider's answer carries neither an ID token nor an error (the front channel posts the ID \
                 token: response_type=id_token, response_mode=form_post)",
            )
        })?;
        let id_token: CoreIdToken = serde_json::from_value(Value::String(jwt.clone()))
            .map_err(|_| rejected("ID_TOKEN_INVALID", p, "the ID token is not a JWT"))?;
        let e = self.endpoints(p).await?;
        let claims = self.verified_claims(p, &e, &id_token, &tx.nonce).await?;
        let profile = external_profile(p, &claims)?;
        let tokens = p.store_tokens.then(|| UpstreamTokens {
            access_token: String::new(),
            refresh_token: String::new(),
            id_token: jwt.clone(),
            token_type: String::new(),
            scope: String::new(),
            expires_at: claims.get("exp").and_then(Value::as_u64),
        });
        let upstream_session = logout_session(jwt);
        Ok(Completed { profile, tokens, partial_profile: false, one_time_id: None, upstream_session })
    }
}

/// What the provider's logout needs of a login: its ID token, sent back as `id_token_hint`
/// (which some providers require, Okta among them).
fn logout_session(id_token: &str) -> Option<String> {
    (!id_token.is_empty()).then(|| serde_json::json!({ "id_token": id_token }).to_string())
}

/// Whether the provider's discovery document lets the front channel work: the `id_token`
/// response type and the `form_post` response mode, where it lists them.
fn front_channel_support(e: &Endpoints) -> Result<String, String> {
    let Some(Discovery { response_types_supported: types, response_modes_supported: modes, .. }) =
        e.discovery.as_deref()
    else {
        return Ok("every endpoint is set on the connection: the provider's support is not listed".into());
    };
    if !types.is_empty() && !types.iter().any(|t| t == "id_token") {
        return Err(format!(
            "the provider does not list the response type id_token (it lists [{}]): use OIDC_CHANNEL_BACK",
            types.join(", ")
        ));
    }
    if !modes.is_empty() && !modes.iter().any(|m| m == "form_post") {
        return Err(format!(
            "the provider does not list the response mode form_post (it lists [{}]): use OIDC_CHANNEL_BACK",
            modes.join(", ")
        ));
    }
    Ok("the provider answers ID tokens by form post (response_type=id_token, response_mode=form_post)".into())
}

/// The claims of a (verified) ID token, all of them.
fn payload(id_token: &CoreIdToken) -> Option<Map<String, Value>> {
    let Value::String(jwt) = serde_json::to_value(id_token).ok()? else { return None };
    let body = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> &'a str {
    claims.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// `azp`, Microsoft's issuer template and `tid`, Google's `hd`: what `openidconnect` leaves
/// to the client.
fn check_claims(p: &Profile, e: &Endpoints, claims: &Map<String, Value>) -> Result<(), ConnectorError> {
    // OpenID Connect Core 3.1.3.7, 4 and 5: several audiences need an azp, and an azp must
    // be this client.
    let audiences = match claims.get("aud") {
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    };
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != p.client_id => {
            return Err(rejected(
                "ID_TOKEN_INVALID",
                p,
                format!(
                    "the ID token was refused: its authorized party (azp) {:?} is not this client",
                    short(azp, 100)
                ),
            ));
        }
        None if audiences > 1 => {
            return Err(rejected("ID_TOKEN_INVALID", p, "the ID token was refused: several audiences and no azp"));
        }
        _ => {}
    }
    let tid = text(claims, "tid");
    if p.issuer == IssuerRule::DiscoveredTemplate {
        let expected = profile::templated_issuer(&e.discovered_issuer, tid);
        if tid.is_empty() || text(claims, "iss") != expected {
            return Err(rejected(
                "ID_TOKEN_INVALID",
                p,
                format!("the ID token was refused: its issuer is not {expected:?} (tid {:?})", short(tid, 64)),
            ));
        }
    }
    match &p.claims {
        ClaimRule::None => {}
        ClaimRule::HostedDomain(domains) => {
            let hd = text(claims, "hd").to_ascii_lowercase();
            if hd.is_empty() {
                return Err(rejected(
                    "DOMAIN_NOT_ALLOWED",
                    p,
                    "the account is not a Google Workspace account (no hd claim); only the connection's domains may \
                     log in",
                ));
            }
            if !domains.contains(&hd) {
                return Err(rejected(
                    "DOMAIN_NOT_ALLOWED",
                    p,
                    format!("the account's Workspace domain {:?} is not one the connection allows", short(&hd, 100)),
                ));
            }
        }
        ClaimRule::Tenant(expected) => {
            // Configured by domain: the directory is the discovered issuer's.
            let ok = if expected.is_empty() {
                !tid.is_empty() && e.discovered_issuer.contains(&format!("/{tid}/"))
            } else {
                tid == expected
            };
            if !ok {
                return Err(rejected(
                    "TENANT_NOT_ALLOWED",
                    p,
                    format!("the account's directory (tid {:?}) is not the connection's", short(tid, 64)),
                ));
            }
        }
        ClaimRule::Tenants { allowed, organizations_only } => {
            let personal = tid == profile::MICROSOFT_CONSUMERS_TENANT;
            if (*organizations_only && personal) || (!allowed.is_empty() && !allowed.iter().any(|a| a == tid)) {
                return Err(rejected(
                    "TENANT_NOT_ALLOWED",
                    p,
                    format!("the account's directory (tid {:?}) is not one the connection allows", short(tid, 64)),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a claim asserts `true` (a boolean, or the string some providers send).
fn asserted(claims: &Map<String, Value>, name: &str) -> bool {
    match claims.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The claims that describe the protocol exchange, not the user: not kept.
const PROTOCOL_CLAIMS: &[&str] =
    &["iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "azp", "auth_time", "sid", "jti", "acr", "amr"];

/// The user an ID token's (and userinfo's) claims describe.
fn external_profile(p: &Profile, claims: &Map<String, Value>) -> Result<ExternalProfile, ConnectorError> {
    let mut id = text(claims, p.id_claim);
    if id.is_empty() {
        id = text(claims, "sub");
    }
    if id.is_empty() || id.len() > 255 {
        return Err(rejected("ID_TOKEN_INVALID", p, format!("the ID token has no usable {:?} claim", p.id_claim)));
    }
    let source_id = if p.strategy == Strategy::Oidc { format!("{}|{id}", p.connection) } else { id.to_owned() };
    let mut email = text(claims, "email").to_owned();
    if email.is_empty() && p.strategy == Strategy::Waad {
        // Entra ID sends the sign-in name (UPN) when the account has no mail attribute.
        let upn = text(claims, "preferred_username");
        if upn.contains('@') {
            upn.clone_into(&mut email);
        }
    }
    let profile = postern_connector::Profile {
        email_verified: p.trusts_email_verified && !email.is_empty() && asserted(claims, "email_verified"),
        email,
        username: String::new(),
        name: text(claims, "name").to_owned(),
        given_name: text(claims, "given_name").to_owned(),
        family_name: text(claims, "family_name").to_owned(),
        nickname: text(claims, "nickname").to_owned(),
        picture: text(claims, "picture").to_owned(),
        ..postern_connector::Profile::default()
    };
    let raw: Map<String, Value> = claims
        .iter()
        .filter(|(k, _)| !PROTOCOL_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(ExternalProfile {
        source_id,
        profile,
        raw: Value::Object(raw),
        user_metadata: Map::new(),
        app_metadata: Map::new(),
    })
}

/// The redirect URI TestConnection's exchange names (the made-up code was issued for none).
const TEST_CALLBACK: &str = "https://postern.invalid/login/callback";

/// The S256 PKCE challenge of a verifier.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[async_trait]
impl RedirectConnector for OidcConnector {
    /// Tries the connection without logging anyone in: `discovery` (the provider's
    /// endpoints, its discovery document fetched afresh unless the connection sets every
    /// endpoint itself), `keys` (the key set fetched afresh, and the keys in it that can
    /// check an ID token's signature), then `client_authentication` (the client's
    /// credentials tried at the token endpoint with a made-up code), or for the front channel
    /// `front_channel` (the provider lists the `id_token` response type and `form_post`).
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let p = Profile::of(conn)?;
        let started = Instant::now();
        lock(&self.documents).remove(&p.discovery_url);
        let endpoints = self.endpoints(&p).await;
        let mut steps = vec![TestStep::of(
            "discovery",
            started,
            endpoints
                .as_ref()
                .map(|e| format!("authorization {}, token {}, keys {}", e.authorization, e.token, e.jwks))
                .map_err(|e| format!("{e} (discovery document {})", p.discovery_url)),
        )];
        if let Ok(e) = &endpoints {
            let started = Instant::now();
            let keys = self.key_set(&p, &e.jwks, true).await.map_err(|e| e.to_string()).and_then(|set| {
                let usable: Vec<String> = set
                    .keys()
                    .iter()
                    .filter(|k| k.key_use().is_none_or(|u| u.allows_signature()))
                    .map(|k| k.key_id().map_or_else(|| "(no kid)".to_owned(), |id| id.to_string()))
                    .collect();
                if usable.is_empty() {
                    Err(format!("the key set at {} has no key for signatures", e.jwks))
                } else {
                    Ok(format!("{} signing key(s): {}", usable.len(), usable.join(", ")))
                }
            });
            steps.push(TestStep::of("keys", started, keys));
            if steps.iter().all(|s| s.ok) {
                let started = Instant::now();
                if p.front_channel {
                    steps.push(TestStep::of("front_channel", started, front_channel_support(e)));
                } else {
                    steps.push(TestStep::of("client_authentication", started, self.try_client(&p, e).await));
                }
            }
        }
        Ok(TestReport::of(steps))
    }

    /// OpenID Connect RP-Initiated Logout: the discovery document's `end_session_endpoint`
    /// with the connection's `client_id`, the login's ID token as `id_token_hint` and, when
    /// the logout returns to the application,
    /// `post_logout_redirect_uri` (which the provider must have registered for the client)
    /// and `state`. `None` when the provider names no such endpoint (Google, for one) or the
    /// connection sets every endpoint itself (no document is read).
    async fn logout(
        &self,
        _tenant: &str,
        conn: &Resolved,
        logout: &UpstreamLogout<'_>,
    ) -> Result<Option<String>, ConnectorError> {
        let (return_to, state) = (logout.return_to, logout.state);
        let p = Profile::of(conn)?;
        let e = self.endpoints(&p).await?;
        let Some(endpoint) = e.discovery.as_deref().map(|d| d.end_session_endpoint.as_str()).filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let mut url = url::Url::parse(endpoint)
            .map_err(|x| misconfigured(&p, format!("the end_session_endpoint is not a URL: {x}")))?;
        let hint = serde_json::from_str::<Value>(logout.session)
            .ok()
            .and_then(|v| v.get("id_token").and_then(Value::as_str).map(str::to_owned));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &p.client_id);
            if let Some(hint) = &hint {
                q.append_pair("id_token_hint", hint);
            }
            if !return_to.is_empty() {
                q.append_pair("post_logout_redirect_uri", return_to);
                if !state.is_empty() {
                    q.append_pair("state", state);
                }
            }
        }
        Ok(Some(url.to_string()))
    }

    async fn begin(&self, _tenant: &str, conn: &Resolved, tx: &RedirectTransaction) -> Result<Begun, ConnectorError> {
        let p = Profile::of(conn)?;
        let e = self.endpoints(&p).await?;
        let mut url = url::Url::parse(&e.authorization)
            .map_err(|x| misconfigured(&p, format!("the authorization endpoint is not a URL: {x}")))?;
        {
            let mut q = url.query_pairs_mut();
            if p.front_channel {
                // The implicit flow: the ID token alone, posted back (never in a URL).
                q.append_pair("response_type", "id_token").append_pair("response_mode", "form_post");
            } else {
                q.append_pair("response_type", "code");
            }
            q.append_pair("client_id", &p.client_id)
                .append_pair("redirect_uri", &tx.callback_url)
                .append_pair("scope", &postern_connector::with_extra_scopes(&p.scopes, &tx.extra_scopes).join(" "))
                .append_pair("state", &tx.state)
                .append_pair("nonce", &tx.nonce);
            if !p.front_channel {
                q.append_pair("code_challenge", &s256(&tx.code_verifier)).append_pair("code_challenge_method", "S256");
            }
            if !tx.login_hint.is_empty() {
                q.append_pair("login_hint", &tx.login_hint);
            }
            for (k, v) in &p.extra_parameters {
                q.append_pair(k, v);
            }
        }
        postern_connector::add_upstream_params(&mut url, &tx.upstream_params);
        Ok(Begun::redirect(url.to_string()))
    }

    async fn complete(
        &self,
        _tenant: &str,
        conn: &Resolved,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<Completed, ConnectorError> {
        let p = Profile::of(conn)?;
        if let Some(error) = params.get("error") {
            let description =
                params.get("error_description").map(|d| format!(": {}", short(d, 200))).unwrap_or_default();
            return Err(ConnectorError::Denied {
                message: format!(
                    "connection {:?}: the provider answered {}{description}",
                    p.connection,
                    short(error, 64)
                ),
            });
        }
        if p.front_channel {
            return self.complete_front(&p, params, tx).await;
        }
        let code = params.get("code").filter(|c| !c.is_empty() && c.len() <= 4096).ok_or_else(|| {
            rejected("UPSTREAM_ANSWER_INVALID", &p, "the provider's answer carries neither a code nor an error")
        })?;
        let e = self.endpoints(&p).await?;
        let (mut claims, response) = self.exchange(&p, &e, code, tx).await?;
        if p.fetch_userinfo && !e.userinfo.is_empty() {
            let info = http::get_json(
                &self.http,
                &p.connection,
                "userinfo",
                &e.userinfo,
                Some(response.access_token().secret().as_str()),
            )
            .await?
            .json;
            let Value::Object(info) = info else {
                return Err(rejected("USERINFO_INVALID", &p, "the provider's userinfo is not a JSON object"));
            };
            if text(&info, "sub") != text(&claims, "sub") {
                return Err(rejected("USERINFO_INVALID", &p, "the provider's userinfo is about another subject"));
            }
            for (k, v) in info {
                if !PROTOCOL_CLAIMS.contains(&k.as_str()) {
                    claims.insert(k, v);
                }
            }
        }
        let mut profile = external_profile(&p, &claims)?;
        if p.apple.is_some()
            && let Some(user) = params.get("user")
        {
            apple::first_login_name(&mut profile, user);
        }
        let raw_id_token = response
            .id_token()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let upstream_session = logout_session(&raw_id_token);
        let tokens = p.store_tokens.then(|| UpstreamTokens {
            access_token: response.access_token().secret().clone(),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()).unwrap_or_default(),
            id_token: raw_id_token,
            token_type: "Bearer".into(),
            scope: response
                .scopes()
                .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            expires_at: response
                .expires_in()
                .and_then(|d| SystemTime::now().checked_add(d)?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())),
        });
        Ok(Completed { profile, tokens, partial_profile: p.apple.is_some(), one_time_id: None, upstream_session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_prints_no_client_secret() {
        let p = profile(Strategy::Oidc, ClaimRule::None, IssuerRule::Discovered);
        let printed = format!("{p:?}");
        assert!(printed.contains("client_secret") && !printed.contains("the-client-secret"), "{printed}");
    }

    fn profile(strategy: Strategy, claims: ClaimRule, issuer: IssuerRule) -> Profile {
        Profile {
            connection: "c".into(),
            strategy,
            client_id: "client".into(),
            client_secret: postern_connection::secret::Secret::new("the-client-secret"),
            discovery_url: String::new(),
            issuer,
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            userinfo_endpoint: String::new(),
            jwks_uri: String::new(),
            fetch_userinfo: false,
            scopes: vec![],
            extra_parameters: vec![],
            id_claim: "sub",
            trusts_email_verified: true,
            claims,
            store_tokens: false,
            apple: None,
            front_channel: false,
            client_assertion: None,
        }
    }

    fn endpoints(issuer: &str) -> Endpoints {
        Endpoints {
            discovered_issuer: issuer.into(),
            authorization: String::new(),
            token: String::new(),
            userinfo: String::new(),
            jwks: String::new(),
            secret_in_body: false,
            discovery: None,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[track_caller]
    fn check(p: &Profile, e: &Endpoints, c: Value, expected: Option<&str>) {
        match (check_claims(p, e, &claims(c)), expected) {
            (Ok(()), None) => {}
            (Err(ConnectorError::Rejected { reason, .. }), Some(r)) => assert_eq!(reason, r),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn azp_and_audiences() {
        let p = profile(Strategy::Oidc, ClaimRule::None, IssuerRule::Discovered);
        let e = endpoints("https://op");
        check(&p, &e, serde_json::json!({"aud": "client"}), None);
        check(&p, &e, serde_json::json!({"aud": "client", "azp": "client"}), None);
        check(&p, &e, serde_json::json!({"aud": "client", "azp": "other"}), Some("ID_TOKEN_INVALID"));
        check(&p, &e, serde_json::json!({"aud": ["client", "api"]}), Some("ID_TOKEN_INVALID"));
        check(&p, &e, serde_json::json!({"aud": ["client", "api"], "azp": "client"}), None);
    }

    #[test]
    fn workspace_domains() {
        let p = profile(
            Strategy::GoogleApps,
            ClaimRule::HostedDomain(vec!["fabrikam.example".into(), "fabrikam.test".into()]),
            IssuerRule::Exact("https://accounts.google.com".into()),
        );
        let e = endpoints("");
        check(&p, &e, serde_json::json!({"hd": "fabrikam.example"}), None);
        check(&p, &e, serde_json::json!({"hd": "Fabrikam.Test"}), None);
        check(&p, &e, serde_json::json!({"hd": "contoso.example"}), Some("DOMAIN_NOT_ALLOWED"));
        // A personal account with an address of the domain is still refused.
        check(&p, &e, serde_json::json!({"email": "a@fabrikam.example"}), Some("DOMAIN_NOT_ALLOWED"));
    }

    #[test]
    fn entra_directories() {
        let tid = "2b8f1c1e-0000-4000-8000-000000000001";
        let other = "2b8f1c1e-0000-4000-8000-000000000002";
        let single = profile(Strategy::Waad, ClaimRule::Tenant(tid.into()), IssuerRule::Discovered);
        let e = endpoints(&format!("https://login.microsoftonline.com/{tid}/v2.0"));
        check(&single, &e, serde_json::json!({"tid": tid}), None);
        check(&single, &e, serde_json::json!({"tid": other}), Some("TENANT_NOT_ALLOWED"));
        check(&single, &e, serde_json::json!({}), Some("TENANT_NOT_ALLOWED"));
        let by_domain = profile(Strategy::Waad, ClaimRule::Tenant(String::new()), IssuerRule::Discovered);
        check(&by_domain, &e, serde_json::json!({"tid": tid}), None);
        check(&by_domain, &e, serde_json::json!({"tid": other}), Some("TENANT_NOT_ALLOWED"));

        let multi = profile(
            Strategy::Waad,
            ClaimRule::Tenants { allowed: vec![tid.into()], organizations_only: true },
            IssuerRule::DiscoveredTemplate,
        );
        let t = endpoints("https://login.microsoftonline.com/{tenantid}/v2.0");
        let iss = |t: &str| format!("https://login.microsoftonline.com/{t}/v2.0");
        check(&multi, &t, serde_json::json!({"tid": tid, "iss": iss(tid)}), None);
        check(&multi, &t, serde_json::json!({"tid": other, "iss": iss(other)}), Some("TENANT_NOT_ALLOWED"));
        check(&multi, &t, serde_json::json!({"tid": tid, "iss": iss(other)}), Some("ID_TOKEN_INVALID"));
        let any = profile(
            Strategy::Waad,
            ClaimRule::Tenants { allowed: vec![], organizations_only: true },
            IssuerRule::DiscoveredTemplate,
        );
        check(&any, &t, serde_json::json!({"tid": other, "iss": iss(other)}), None);
        let personal = profile::MICROSOFT_CONSUMERS_TENANT;
        check(&any, &t, serde_json::json!({"tid": personal, "iss": iss(personal)}), Some("TENANT_NOT_ALLOWED"));
    }

    #[test]
    fn profiles_from_claims() {
        let p = profile(Strategy::Oidc, ClaimRule::None, IssuerRule::Discovered);
        let c = claims(serde_json::json!({
            "sub": "u1", "email": "a@b.example", "email_verified": true, "name": "A B", "nonce": "n", "iss": "x"
        }));
        let e = external_profile(&p, &c).expect("profile");
        assert_eq!(e.source_id, "c|u1");
        assert!(e.profile.email_verified);
        assert_eq!(e.profile.name, "A B");
        assert!(e.raw.get("nonce").is_none() && e.raw.get("iss").is_none());
        let mut ms = profile(Strategy::Waad, ClaimRule::None, IssuerRule::Discovered);
        ms.id_claim = "oid";
        ms.trusts_email_verified = false;
        let c = claims(serde_json::json!({
            "sub": "pairwise", "oid": "object", "preferred_username": "a@fabrikam.example", "email_verified": true
        }));
        let e = external_profile(&ms, &c).expect("profile");
        assert_eq!(e.source_id, "object");
        assert_eq!(e.profile.email, "a@fabrikam.example");
        assert!(!e.profile.email_verified, "Microsoft asserts no verified email");
        let c = claims(serde_json::json!({"email": "x@y"}));
        assert!(matches!(external_profile(&p, &c), Err(ConnectorError::Rejected { .. })));
    }
}
