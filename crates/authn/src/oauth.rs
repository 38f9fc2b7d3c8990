//! The OpenID provider of each tenant, as RPCs (`OAuthService`): the authorization request,
//! the hosted page's login and signup, SSO sessions and logout, the token endpoint's grants
//! and revocation. The HTTP routes of `postern-provider` call these (the browser steps are
//! internal); `ExchangeToken` and `RevokeToken` are public twins of the token and revocation
//! endpoints, sharing this code path.
//!
//! Every bearer secret made here (transaction id, CSRF token, code, session id, refresh
//! token) is 256 random bits, handed out once and stored as its SHA-256 digest
//! ([`store::oauth`](crate::store::oauth)). Time comes from the configured
//! [`Clock`], so that expiry rules are tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_common::error::{
    Violations, failed_precondition, internal, invalid_field, not_found, permission_denied, status,
};
use postern_common::ids::constant_time_eq;
use postern_common::principal::principal;
use postern_common::time::Clock;
use postern_common::validate::truncate;
use postern_proto::authn::v1 as pb;
use postern_proto::connections::v1 as conn_pb;
use postern_proto::tenant::v1 as tenant_pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};

use crate::AuthnApi;
use crate::clients::ResolvedClient;
use crate::passwordless::{CodeLogin, CodeStart, LinkTarget, Links, RecipientInput, SendKind};
use crate::store::Store;
use crate::store::oauth::{
    CodeGrant, LoginGrant, NewTransaction, Redeemed, RefreshGrant, Revoked, Rotated, UsesUp, secret_digest,
};
use crate::tokens::{self, ProfileClaims};

pub(crate) mod federation;

/// How long the provider's grants and sessions last.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// Where time comes from.
    pub clock: Clock,
    /// How long a login transaction waits for the hosted page (10 minutes).
    pub transaction_lifetime: Duration,
    /// How long an authorization code may be exchanged (60 seconds).
    pub code_lifetime: Duration,
    /// How long an SSO session lives without use (Auth0's default: 3 days).
    pub session_idle: Duration,
    /// How long an SSO session lives at most (Auth0's default: 7 days).
    pub session_absolute: Duration,
    /// How long a refresh token lives without use (Auth0's default: 15 days).
    pub refresh_idle: Duration,
    /// How long a family of rotated refresh tokens lives at most (Auth0's default: 30 days).
    pub refresh_absolute: Duration,
}

impl OAuthConfig {
    /// The defaults above, on `clock`.
    pub fn new(clock: Clock) -> Self {
        const DAY: u64 = 86_400;
        Self {
            clock,
            transaction_lifetime: Duration::from_secs(600),
            code_lifetime: Duration::from_secs(60),
            session_idle: Duration::from_secs(3 * DAY),
            session_absolute: Duration::from_secs(7 * DAY),
            refresh_idle: Duration::from_secs(15 * DAY),
            refresh_absolute: Duration::from_secs(30 * DAY),
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The handlers of `OAuthService`, over the authenticator's state and login orchestration.
#[derive(Clone)]
pub struct OAuthApi {
    authn: AuthnApi,
    oauth: OAuthConfig,
}

/// A new bearer secret: 256 random bits, base64url.
fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand_bytes())
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    // aws-lc's CSPRNG; it fails only if the OS has no entropy, which no server survives.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        tracing::error!("the system's random number generator failed");
    }
    b
}

/// The secrets of a browser login's SSO session and code, made before they are stored
/// ([`LoginGrant`] holds their digests).
struct NewLogin {
    session: String,
    session_hash: String,
    code: String,
    code_hash: String,
    /// When the user authenticated.
    now: i64,
}

/// The redirect that carries `code` back to `request`'s application, with its `state`.
fn code_answer(request: &AuthRequest, code: String) -> pb::Redirect {
    let mut parameters = HashMap::from([("code".to_owned(), code)]);
    if !request.state.is_empty() {
        parameters.insert("state".into(), request.state.clone());
    }
    pb::Redirect { uri: request.redirect_uri.clone(), response_mode: request.response_mode.clone(), parameters }
}

/// The validated authorization request a transaction and a code carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    response_mode: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    connection: String,
    login_hint: String,
    audience: String,
    /// The request's parameters that a connection's `upstream_params` may pass on besides
    /// the fields above (`prompt`, `max_age`, `ui_locales`, ...: [`OtherParams`]), by name,
    /// as given; only those given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    upstream: BTreeMap<String, String>,
}

impl AuthRequest {
    /// The values of the application's request by parameter name, for a connection's
    /// `upstream_params` (the names of `UpstreamParam::ALIASES`).
    fn forwardable(&self) -> BTreeMap<String, String> {
        let mut all = self.upstream.clone();
        for (name, value) in [
            ("client_id", self.client_id.as_str()),
            ("response_type", "code"),
            ("audience", self.audience.as_str()),
            ("login_hint", self.login_hint.as_str()),
        ] {
            if !value.is_empty() {
                all.insert(name.to_owned(), value.to_owned());
            }
        }
        all
    }
}

/// The parameters of an authorization request Postern does not act on itself, kept only for
/// a connection's `upstream_params`.
#[derive(Debug, Clone, Copy, Default)]
struct OtherParams<'a> {
    ui_locales: &'a str,
    acr_values: &'a str,
    display: &'a str,
    resource: &'a str,
    id_token_hint: &'a str,
    /// Auth0's `connection_scope`: upstream scopes for this login, by commas or spaces.
    connection_scope: &'a str,
}

/// The longest value of each of [`OtherParams`] but `connection_scope`.
const OTHER_PARAM_MAX: usize = 4096;

/// The name under which an [`AuthRequest`] keeps the login's `connection_scope` (space
/// separated), among its `upstream` values.
pub(crate) const CONNECTION_SCOPE: &str = "connection_scope";

/// The scopes of a `connection_scope` (commas or spaces between them): at most 50, each 1 to
/// 128 printable ASCII characters; empty for none.
fn connection_scopes(value: &str) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = value.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if scopes.len() > 50 {
        return Err(format!("connection_scope holds at most 50 scopes; got {}", scopes.len()));
    }
    match scopes.iter().find(|s| s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic())) {
        Some(bad) => Err(format!(
            "connection_scope: {:?} is not a scope: 1 to 128 printable characters, separated by commas or spaces",
            bad.chars().take(64).collect::<String>()
        )),
        None => Ok(scopes),
    }
}

/// The OAuth 2.0 error codes of RFC 6749 (4.1.2.1 and 5.2) as `ErrorInfo` reasons.
mod reason {
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const INVALID_CLIENT: &str = "INVALID_CLIENT";
    pub const INVALID_GRANT: &str = "INVALID_GRANT";
    pub const UNAUTHORIZED_CLIENT: &str = "UNAUTHORIZED_CLIENT";
    pub const UNSUPPORTED_GRANT_TYPE: &str = "UNSUPPORTED_GRANT_TYPE";
    pub const INVALID_SCOPE: &str = "INVALID_SCOPE";
    pub const ACCESS_DENIED: &str = "ACCESS_DENIED";
}

/// Auth0's grant of a passwordless code at the token endpoint.
pub const PASSWORDLESS_OTP_GRANT: &str = "http://auth0.com/oauth/grant-type/passwordless/otp";

fn invalid_grant(message: impl Into<String>) -> Status {
    status(Code::FailedPrecondition, reason::INVALID_GRANT, message)
}

fn invalid_client(message: impl Into<String>) -> Status {
    status(Code::Unauthenticated, reason::INVALID_CLIENT, message)
}

fn invalid_request(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let mut details = tonic_types::ErrorDetails::new();
    details.add_bad_request_violation(field, message.clone());
    details.set_error_info(reason::INVALID_REQUEST, postern_common::error::ERROR_DOMAIN, HashMap::new());
    <Status as tonic_types::StatusExt>::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        details,
    )
}

/// Whether `s` is a PKCE verifier or S256 challenge: 43 to 128 unreserved characters.
fn pkce_shaped(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The S256 challenge of a PKCE verifier.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn has_scope(scope: &str, s: &str) -> bool {
    scope.split_whitespace().any(|x| x == s)
}

/// Whole seconds since the epoch of `t`, microseconds since the epoch (0 before it).
pub(crate) fn seconds(t: i64) -> u64 {
    u64::try_from(t.div_euclid(1_000_000)).unwrap_or(0)
}

/// The ID token of the code flow: the login's claims plus `nonce`, `auth_time`, `at_hash`
/// (OpenID Connect Core 3.1.3.6) and `sid` (the SSO session, as in Front-Channel Logout 3).
#[derive(Serialize, Deserialize)]
struct IdToken {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    auth_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(flatten)]
    profile: ProfileClaims,
}

/// The access token of `client_credentials` (Auth0's shape).
#[derive(Serialize)]
struct ClientAccessToken<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
    scope: &'a str,
    gty: &'static str,
    azp: &'a str,
}

/// The scopes of a `client_credentials` token for `audience` (Auth0's rule): the client
/// needs a grant for the API (an unknown API is refused the same way), and every scope
/// asked must be granted; asking none gets every granted scope. PERMISSION_DENIED with
/// reason ACCESS_DENIED (the token endpoint's 403 `access_denied`) otherwise.
fn granted_scopes(client: &ResolvedClient, audience: &str, requested: &str) -> Result<String, Status> {
    let Some(grant) = client.grant(audience) else {
        return Err(postern_common::error::status_with_metadata(
            Code::PermissionDenied,
            reason::ACCESS_DENIED,
            format!(
                "Client is not authorized to access {:?}. You need to create a client-grant associated to this API.",
                truncate(audience, 512)
            ),
            [("audience", truncate(audience, 512))],
        ));
    };
    let mut asked: Vec<&str> = Vec::new();
    for s in requested.split_whitespace() {
        if !asked.contains(&s) {
            asked.push(s);
        }
    }
    if asked.is_empty() {
        return Ok(grant.scopes.join(" "));
    }
    let missing: Vec<&str> = asked.iter().copied().filter(|s| !grant.scopes.iter().any(|g| g == s)).collect();
    if !missing.is_empty() {
        let list = truncate(&missing.join(", "), 1024).to_owned();
        return Err(postern_common::error::status_with_metadata(
            Code::PermissionDenied,
            reason::ACCESS_DENIED,
            format!("Client has not been granted scopes: {list}"),
            [("scopes", list.as_str())],
        ));
    }
    Ok(asked.join(" "))
}

/// The claims an `id_token_hint` must carry.
#[derive(Deserialize)]
struct Hint {
    aud: String,
}

/// A user's tokens to issue.
struct UserTokens<'a> {
    tenant: &'a str,
    client_id: &'a str,
    user_id: &'a str,
    scope: &'a str,
    audience: &'a str,
    nonce: &'a str,
    auth_time: i64,
    /// The digest of the SSO session the login started (empty: none).
    session_hash: &'a str,
    /// The user, when the caller read it already (read here otherwise).
    user: Option<&'a crate::domain::User>,
}

/// The `sid` of an SSO session: stable for the session's life, the same in every ID token
/// it yields, and neither its cookie nor the digest the store looks it up by (a relying
/// party holding `sid` can present nothing with it).
pub fn session_id(session_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"postern.authn.v1/sid\0");
    h.update(session_hash.as_bytes());
    URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
}

impl OAuthApi {
    /// Handlers over `authn`'s state (store, keys, peers) and login orchestration.
    pub fn new(authn: AuthnApi, oauth: OAuthConfig) -> Self {
        Self { authn, oauth }
    }

    fn store(&self) -> &Store {
        &self.authn.store
    }

    fn now(&self) -> i64 {
        self.oauth.clock.now_micros()
    }

    fn issuer(&self, tenant: &str) -> String {
        self.authn.issuer(tenant)
    }

    /// The client, or the status the caller shows on an error page (never a redirect):
    /// remembered while the tenant event log says nothing of it
    /// ([`ClientChecks`](crate::clients::ClientChecks)), asked of the tenant service
    /// otherwise.
    async fn client(&self, tenant: &str, client_id: &str) -> Result<Arc<ResolvedClient>, Status> {
        self.authn.resolve_client(tenant, client_id).await.map_err(|s| match s.code() {
            Code::NotFound | Code::InvalidArgument => {
                not_found("CLIENT_NOT_FOUND", format!("tenant {tenant:?} has no client {:?}", truncate(client_id, 64)))
            }
            _ => {
                tracing::warn!(code = ?s.code(), message = s.message(), "tenant service call failed");
                Status::unavailable("the tenant service is unavailable; retry shortly")
            }
        })
    }

    /// Authenticates a client at the token or revocation endpoint: its secret when
    /// confidential; a public client has none (PKCE stands in for it).
    async fn authenticate_client(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &str,
    ) -> Result<Arc<ResolvedClient>, Status> {
        if client_id.is_empty() {
            return Err(invalid_client("client authentication failed: no client_id"));
        }
        let client = self.client(tenant, client_id).await.map_err(|s| match s.code() {
            Code::NotFound => invalid_client("client authentication failed: unknown client"),
            _ => s,
        })?;
        if client.confidential || !secret.is_empty() {
            self.authn.verify_client(tenant, client_id, secret).await.map_err(|s| match s.code() {
                Code::Unauthenticated | Code::NotFound | Code::InvalidArgument => {
                    invalid_client("client authentication failed: wrong or missing client secret")
                }
                _ => s,
            })?;
        }
        Ok(client)
    }

    /// A new code for `request`'s client, granted to `user_id` authenticated at
    /// `auth_time` in the session `session_hash`, as the redirect that carries it.
    async fn code_redirect(
        &self,
        tenant: &str,
        request: &AuthRequest,
        user_id: &str,
        session_hash: &str,
        auth_time: i64,
    ) -> Result<pb::Redirect, Status> {
        let code = new_secret();
        let now = self.now();
        let grant = CodeGrant {
            client_id: request.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            user_id: user_id.to_owned(),
            scope: request.scope.clone(),
            audience: request.audience.clone(),
            nonce: request.nonce.clone(),
            code_challenge: request.code_challenge.clone(),
            session_hash: session_hash.to_owned(),
            auth_time,
        };
        let expire = now.saturating_add(micros(self.oauth.code_lifetime));
        self.store().create_code(tenant, &secret_digest(&code), &grant, now, expire).await?;
        Ok(code_answer(request, code))
    }

    /// The session and code secrets of a login that just authenticated, made now.
    fn new_login(&self) -> NewLogin {
        let (session, code) = (new_secret(), new_secret());
        NewLogin {
            session_hash: secret_digest(&session),
            code_hash: secret_digest(&code),
            session,
            code,
            now: self.now(),
        }
    }

    /// What `login` writes for `request` (with the user's record when the login writes
    /// one): its session and code, and the login transaction it `uses` up.
    fn login_grant<'a>(
        &self,
        login: &'a NewLogin,
        request: &'a AuthRequest,
        uses: Option<UsesUp<'a>>,
    ) -> LoginGrant<'a> {
        let now = login.now;
        LoginGrant {
            uses,
            upstream_tokens: None,
            connection: "",
            upstream_session: "",
            now,
            session_hash: &login.session_hash,
            session_idle_expire: now.saturating_add(micros(self.oauth.session_idle)),
            session_absolute_expire: now.saturating_add(micros(self.oauth.session_absolute)),
            code_hash: &login.code_hash,
            code_expire: now.saturating_add(micros(self.oauth.code_lifetime)),
            client_id: &request.client_id,
            redirect_uri: &request.redirect_uri,
            scope: &request.scope,
            audience: &request.audience,
            nonce: &request.nonce,
            code_challenge: &request.code_challenge,
        }
    }

    /// The answer of a login whose grant is stored: the session cookie and the code's
    /// redirect.
    fn login_answer(&self, tenant: &str, request: &AuthRequest, user_id: &str, login: NewLogin) -> pb::LoggedIn {
        tracing::info!(tenant = %tenant, user_id = %user_id, client_id = %request.client_id, "browser login");
        pb::LoggedIn {
            redirect: Some(code_answer(request, login.code)),
            session: login.session,
            session_max_age: i64::try_from(self.oauth.session_absolute.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Starts a session for a user who just authenticated (its record written already),
    /// uses up the hosted page's login transaction (`transaction_hash`, the digest of its
    /// id), and answers the code: all in one write. A transaction another tab completed
    /// first is FAILED_PRECONDITION `LOGIN_TRANSACTION_USED`, and nothing is written.
    async fn logged_in(
        &self,
        tenant: &str,
        request: &AuthRequest,
        user_id: &str,
        transaction_hash: &str,
    ) -> Result<pb::LoggedIn, Status> {
        let login = self.new_login();
        let grant = self.login_grant(&login, request, Some(UsesUp::Page(transaction_hash)));
        self.store().create_login_grant(tenant, user_id, &grant).await?;
        Ok(self.login_answer(tenant, request, user_id, login))
    }

    /// The live transaction `transaction` of `tenant` and its request, checking `csrf`
    /// when given.
    async fn transaction(&self, tenant: &str, transaction: &str, csrf: Option<&str>) -> Result<AuthRequest, Status> {
        let gone = || {
            not_found(
                "LOGIN_TRANSACTION_NOT_FOUND",
                "this login page has expired or was already used; go back to the application and sign in again",
            )
        };
        if transaction.is_empty() || transaction.len() > 128 {
            return Err(gone());
        }
        let stored =
            self.store().transaction(tenant, &secret_digest(transaction), self.now()).await?.ok_or_else(gone)?;
        if let Some(csrf) = csrf
            && !constant_time_eq(secret_digest(csrf).as_bytes(), stored.csrf_hash.as_bytes())
        {
            return Err(permission_denied("CSRF_TOKEN_INVALID", "the form's CSRF token does not belong to this login"));
        }
        serde_json::from_str(&stored.request).map_err(|e| internal(&e))
    }

    /// Checks that `connection` may be used for the transaction's request.
    fn check_connection(request: &AuthRequest, connection: &str) -> Result<(), Status> {
        if !request.connection.is_empty() && request.connection != connection {
            return Err(permission_denied(
                "CONNECTION_NOT_ALLOWED",
                format!("this login is limited to connection {:?}", request.connection),
            ));
        }
        Ok(())
    }

    /// The tokens of a user for a grant: an ID token with `nonce` and `auth_time`, an
    /// access token (a JWT for an audience, otherwise opaque).
    async fn user_tokens(&self, t: &UserTokens<'_>) -> Result<tokens::Issued, Status> {
        let read;
        let user = match t.user {
            Some(user) => user,
            None => {
                read = self.store().get_user(t.tenant, t.user_id).await?;
                read.as_ref().ok_or_else(|| invalid_grant("the user of this grant no longer exists"))?
            }
        };
        if user.blocked {
            return Err(invalid_grant("the user of this grant is blocked"));
        }
        let key = self.authn.keys.current(t.tenant).await?;
        let issuer = self.issuer(t.tenant);
        let lifetimes = self.authn.keys.lifetimes();
        // The API is checked again at every issue: one deleted since the authorization (or
        // the refresh token) no longer gets tokens, and scopes it stopped defining go.
        let scope = self.authn.api_scope(t.tenant, t.audience, t.scope).await?;
        let profile = crate::login::claims_of(user);
        let iat = seconds(self.now());
        let exp = iat + lifetimes.access_token.as_secs();
        // The access token follows Login's rules: a JWT for an API, otherwise opaque.
        let access_token = if t.audience.is_empty() {
            tokens::seal_access_token(
                &self.authn.config.master_key,
                t.tenant,
                &tokens::OpaqueAccessClaims {
                    sub: t.user_id.to_owned(),
                    azp: t.client_id.to_owned(),
                    scope: scope.clone(),
                    iat,
                    exp,
                    kid: key.kid.clone(),
                },
            )
        } else {
            key.sign(&tokens::AccessTokenClaims {
                iss: issuer.clone(),
                aud: vec![t.audience.to_owned(), tokens::userinfo_endpoint(&issuer)],
                sub: t.user_id.to_owned(),
                azp: t.client_id.to_owned(),
                scope: scope.clone(),
                iat,
                exp,
            })
        }
        .map_err(|e| internal(&e))?;
        let id = IdToken {
            iss: issuer.clone(),
            aud: t.client_id.to_owned(),
            sub: t.user_id.to_owned(),
            iat,
            exp: iat + lifetimes.id_token.as_secs(),
            auth_time: seconds(t.auth_time),
            nonce: (!t.nonce.is_empty()).then(|| t.nonce.to_owned()),
            at_hash: Some(tokens::at_hash(key.alg, &access_token)),
            sid: (!t.session_hash.is_empty()).then(|| session_id(t.session_hash)),
            profile: profile.for_scope(&scope),
        };
        Ok(tokens::Issued {
            id_token: key.sign(&id).map_err(|e| internal(&e))?,
            access_token,
            token_type: tokens::TOKEN_TYPE,
            expires_in: lifetimes.access_token.as_secs(),
            scope,
        })
    }

    fn token_response(issued: tokens::Issued, refresh_token: String, id_token: bool) -> pb::ExchangeTokenResponse {
        pb::ExchangeTokenResponse {
            access_token: issued.access_token,
            id_token: if id_token { issued.id_token } else { String::new() },
            refresh_token,
            token_type: issued.token_type.to_owned(),
            expires_in: i64::try_from(issued.expires_in).unwrap_or(i64::MAX),
            scope: issued.scope,
        }
    }

    async fn authorization_code(
        &self,
        req: &pb::ExchangeTokenRequest,
        client: &tenant_pb::Client,
        audit: &mut ExchangeAudit<'_>,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        if req.code.is_empty() {
            return Err(invalid_request("code", "is required for grant_type=authorization_code"));
        }
        if req.redirect_uri.is_empty() {
            return Err(invalid_request("redirect_uri", "is required for grant_type=authorization_code"));
        }
        let family = postern_common::ids::new_id();
        let code_hash = secret_digest(&req.code);
        // The code is read, checked and its tokens made before it is used up, so that its use,
        // its first refresh token and the exchange's audit event are one write.
        let Some((grant, user)) = self.store().peek_code_with_user(&req.tenant, &code_hash, self.now()).await? else {
            return Err(self.refuse_code(req, &code_hash, &family, audit).await);
        };
        audit.user_id.clone_from(&grant.user_id);
        if let Err(refused) = Self::check_code(req, client, &grant) {
            // A code presented with the wrong client, redirect URI or verifier is used up
            // all the same: whoever holds it does not get to try again.
            self.store().redeem_code(&req.tenant, &code_hash, &family, self.now()).await?;
            return Err(refused);
        }
        let Some(user) = user else { return Err(invalid_grant("the user of this grant no longer exists")) };
        let issued = self
            .user_tokens(&UserTokens {
                tenant: &req.tenant,
                client_id: &grant.client_id,
                user_id: &grant.user_id,
                scope: &grant.scope,
                audience: &grant.audience,
                nonce: &grant.nonce,
                auth_time: grant.auth_time,
                session_hash: &grant.session_hash,
                user: Some(&user),
            })
            .await?;
        let now = self.now();
        // With offline_access, the first refresh token of the family: the token, its digest
        // (what is stored) and its grant.
        let refresh = has_scope(&grant.scope, "offline_access").then(|| {
            let token = new_secret();
            let refresh = RefreshGrant {
                family_id: family.clone(),
                client_id: grant.client_id.clone(),
                user_id: grant.user_id.clone(),
                scope: grant.scope.clone(),
                audience: grant.audience.clone(),
                nonce: grant.nonce.clone(),
                auth_time: grant.auth_time,
                session_hash: grant.session_hash.clone(),
                family_expire: now.saturating_add(micros(self.oauth.refresh_absolute)),
            };
            (secret_digest(&token), token, refresh)
        });
        let idle_expire = now.saturating_add(micros(self.oauth.refresh_idle));
        let first = self
            .store()
            .auditing(audit.event(None).into_iter().collect())
            .use_authorization_code(
                &req.tenant,
                &code_hash,
                &family,
                now,
                refresh.as_ref().map(|(hash, _, grant)| (hash.as_str(), grant, idle_expire)),
            )
            .await?;
        if !first {
            // Another exchange used the code since it was read: a replay after all.
            return Err(self.refuse_code(req, &code_hash, &family, audit).await);
        }
        audit.written = true;
        let refresh_token = refresh.map(|(_, token, _)| token).unwrap_or_default();
        Ok(Self::token_response(issued, refresh_token, true))
    }

    /// The answer to a code that is not (or no longer) unused: used before (a replay, whose
    /// tokens are revoked), expired or unknown.
    async fn refuse_code(
        &self,
        req: &pb::ExchangeTokenRequest,
        code_hash: &str,
        family: &str,
        audit: &mut ExchangeAudit<'_>,
    ) -> Status {
        match self.store().redeem_code(&req.tenant, code_hash, family, self.now()).await {
            Ok(Redeemed::Replayed { user_id: replayed }) => {
                audit.user_id.clone_from(&replayed);
                tracing::warn!(tenant = %req.tenant, client_id = %req.client_id, "authorization code replayed: its refresh tokens are revoked");
                invalid_grant("the authorization code was already used; the tokens it issued are revoked")
            }
            // Granted cannot follow a read that found the code used, expired or unknown (or a
            // use that lost to another); answered as an unknown code all the same.
            Ok(Redeemed::Unknown | Redeemed::Granted(_)) => {
                invalid_grant("the authorization code is invalid or expired")
            }
            Err(e) => e.into(),
        }
    }

    /// Whether `req` may exchange the code of `grant`: the client it was issued to, the
    /// redirect URI of its request, and the PKCE verifier of its challenge.
    fn check_code(req: &pb::ExchangeTokenRequest, client: &tenant_pb::Client, grant: &CodeGrant) -> Result<(), Status> {
        if grant.client_id != client.client_id {
            return Err(invalid_grant("the authorization code was issued to another client"));
        }
        if grant.redirect_uri != req.redirect_uri {
            return Err(invalid_grant("redirect_uri differs from the authorization request's"));
        }
        if grant.code_challenge.is_empty() {
            if !client.confidential {
                return Err(invalid_grant("a public client's code must be bound to a PKCE challenge"));
            }
        } else {
            if req.code_verifier.is_empty() {
                return Err(invalid_grant("code_verifier is required: the authorization request had a code_challenge"));
            }
            if !pkce_shaped(&req.code_verifier)
                || !constant_time_eq(s256(&req.code_verifier).as_bytes(), grant.code_challenge.as_bytes())
            {
                return Err(invalid_grant("code_verifier does not match the code_challenge"));
            }
        }
        Ok(())
    }

    async fn refresh(
        &self,
        req: &pb::ExchangeTokenRequest,
        client: &tenant_pb::Client,
        user_id: &mut String,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        if req.refresh_token.is_empty() {
            return Err(invalid_request("refresh_token", "is required for grant_type=refresh_token"));
        }
        let next = new_secret();
        let rotated = self
            .store()
            .rotate_refresh_token(
                &req.tenant,
                &secret_digest(&req.refresh_token),
                &secret_digest(&next),
                self.now(),
                micros(self.oauth.refresh_idle),
            )
            .await?;
        let grant = match rotated {
            Rotated::Rotated(g) => g,
            Rotated::Reused { user_id: reused } => {
                user_id.clone_from(&reused);
                tracing::warn!(tenant = %req.tenant, client_id = %req.client_id, "refresh token reused: its family is revoked");
                return Err(invalid_grant("the refresh token was already used; every token of its grant is revoked"));
            }
            Rotated::Unknown => return Err(invalid_grant("the refresh token is invalid, expired or revoked")),
        };
        user_id.clone_from(&grant.user_id);
        if grant.client_id != client.client_id {
            // Presented by another client: treat the token as stolen.
            self.store().revoke_refresh_token(&req.tenant, &secret_digest(&next), &grant.client_id).await?;
            return Err(invalid_grant("the refresh token was issued to another client"));
        }
        let scope = if req.scope.trim().is_empty() {
            grant.scope.clone()
        } else {
            if let Some(extra) = req.scope.split_whitespace().find(|s| !has_scope(&grant.scope, s)) {
                return Err(status(
                    Code::InvalidArgument,
                    reason::INVALID_SCOPE,
                    format!("scope {:?} was not granted; ask for a subset of {:?}", truncate(extra, 64), grant.scope),
                ));
            }
            req.scope.clone()
        };
        let issued = self
            .user_tokens(&UserTokens {
                tenant: &req.tenant,
                client_id: &grant.client_id,
                user_id: &grant.user_id,
                scope: &scope,
                audience: &grant.audience,
                nonce: &grant.nonce,
                auth_time: grant.auth_time,
                session_hash: &grant.session_hash,
                user: None,
            })
            .await?;
        Ok(Self::token_response(issued, next, has_scope(&scope, "openid")))
    }

    async fn client_credentials(
        &self,
        req: &pb::ExchangeTokenRequest,
        client: &ResolvedClient,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        if client.app_type != tenant_pb::AppType::MachineToMachine as i32 || !client.confidential {
            return Err(status(
                Code::PermissionDenied,
                reason::UNAUTHORIZED_CLIENT,
                "client_credentials is only for machine-to-machine clients (APP_TYPE_MACHINE_TO_MACHINE)",
            ));
        }
        let audience = req.audience.trim();
        if audience.is_empty() {
            return Err(invalid_request("audience", "is required: the identifier of the API the token is for"));
        }
        let scope = granted_scopes(client, audience, &req.scope)?;
        let key = self.authn.keys.current(&req.tenant).await?;
        let issuer = self.issuer(&req.tenant);
        let lifetime = self.authn.keys.lifetimes().access_token;
        let iat = seconds(self.now());
        let claims = ClientAccessToken {
            iss: &issuer,
            sub: format!("{}@clients", client.client_id),
            aud: audience,
            iat,
            exp: iat + lifetime.as_secs(),
            scope: &scope,
            gty: "client-credentials",
            azp: &client.client_id,
        };
        let access_token = key.sign(&claims).map_err(|e| internal(&e))?;
        metrics::counter!("postern_authn_client_credentials_total").increment(1);
        Ok(pb::ExchangeTokenResponse {
            access_token,
            id_token: String::new(),
            refresh_token: String::new(),
            token_type: tokens::TOKEN_TYPE.to_owned(),
            expires_in: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
            scope,
        })
    }

    /// Validates an authorization request up to the redirect URI (errors: an error page),
    /// then the rest ([`OAuthApi::authorization_request`]; errors: back to the application).
    async fn validate_authorization(
        &self,
        req: &pb::StartAuthorizationRequest,
    ) -> Result<(Arc<ResolvedClient>, Result<AuthRequest, Refusal>), Status> {
        let mut v = Violations::new();
        v.check("tenant", postern_common::validate::tenant_name(&req.tenant));
        if req.client_id.is_empty() {
            v.add("client_id", "is required");
        }
        if req.redirect_uri.is_empty() {
            v.add("redirect_uri", "is required");
        }
        v.into_result()?;
        let client = self.client(&req.tenant, &req.client_id).await?;
        if !client.callbacks.iter().any(|c| c == &req.redirect_uri) {
            return Err(invalid_field("redirect_uri", CALLBACK_MISMATCH));
        }
        let params = AuthParams {
            tenant: &req.tenant,
            redirect_uri: &req.redirect_uri,
            response_type: &req.response_type,
            response_mode: &req.response_mode,
            scope: &req.scope,
            state: &req.state,
            nonce: &req.nonce,
            code_challenge: &req.code_challenge,
            code_challenge_method: &req.code_challenge_method,
            connection: &req.connection,
            login_hint: &req.login_hint,
            prompt: &req.prompt,
            max_age: req.max_age,
            audience: &req.audience,
            other: OtherParams {
                ui_locales: &req.ui_locales,
                acr_values: &req.acr_values,
                display: &req.display,
                resource: &req.resource,
                id_token_hint: &req.id_token_hint,
                connection_scope: &req.connection_scope,
            },
        };
        let checked = self.authorization_request(&client, &params).await?;
        Ok((client, checked))
    }

    /// Validates the parameters of an authorization request whose client and redirect URI
    /// passed: `/authorize`'s, or a magic link's started over gRPC, so that both follow one
    /// rule. A refusal names the OAuth error and the parameter; `Err` is an outage (of the
    /// tenant service, asked about the audience).
    async fn authorization_request(
        &self,
        client: &ResolvedClient,
        p: &AuthParams<'_>,
    ) -> Result<Result<AuthRequest, Refusal>, Status> {
        let response_mode = match p.response_mode {
            "form_post" => "form_post",
            "web_message" => "web_message",
            _ => "query",
        };
        let fail = |error: &'static str, parameter: &'static str, description: &str| {
            Err(Refusal { error, parameter, description: description.to_owned() })
        };
        let o = p.other;
        let others = [
            ("ui_locales", o.ui_locales),
            ("acr_values", o.acr_values),
            ("display", o.display),
            ("resource", o.resource),
            ("id_token_hint", o.id_token_hint),
        ];
        let connection_scope = connection_scopes(o.connection_scope);
        let checked = if !matches!(p.response_mode, "" | "query" | "form_post" | "web_message") {
            fail("invalid_request", "response_mode", "response_mode must be query, form_post or web_message")
        } else if p.response_mode == "web_message" && !web_origin(p.redirect_uri) {
            fail(
                "invalid_request",
                "response_mode",
                "response_mode web_message posts the answer to the redirect URI's origin: the redirect URI must be \
                 an http or https URL",
            )
        } else if p.response_type != "code" {
            fail("unsupported_response_type", "response_type", "response_type must be code")
        } else if client.app_type == tenant_pb::AppType::MachineToMachine as i32 {
            fail(
                "unauthorized_client",
                "client_id",
                "a machine-to-machine client cannot use the authorization code flow",
            )
        } else if !has_scope(p.scope, "openid") {
            fail("invalid_scope", "scope", "scope must include openid")
        } else if let Err(why) = Prompt::parse(p.prompt) {
            fail("invalid_request", "prompt", why)
        } else if p.max_age.is_some_and(|m| m < 0) {
            fail("invalid_request", "max_age", "max_age must be zero or more seconds")
        } else if !p.code_challenge_method.is_empty() && p.code_challenge_method != "S256" {
            fail("invalid_request", "code_challenge_method", "code_challenge_method must be S256")
        } else if !p.code_challenge.is_empty() && !pkce_shaped(p.code_challenge) {
            fail(
                "invalid_request",
                "code_challenge",
                "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            )
        } else if p.code_challenge.is_empty() && !client.confidential {
            fail(
                "invalid_request",
                "code_challenge",
                "code_challenge (PKCE, S256) is required for single-page and native applications",
            )
        } else if p.nonce.len() > 512 || p.state.len() > 2048 || p.login_hint.len() > 254 {
            let parameter = if p.nonce.len() > 512 {
                "nonce"
            } else if p.state.len() > 2048 {
                "state"
            } else {
                "login_hint"
            };
            fail("invalid_request", parameter, "state, nonce or login_hint is too long")
        } else if let Some((parameter, _)) = others.iter().find(|(_, v)| v.len() > OTHER_PARAM_MAX) {
            fail(
                "invalid_request",
                parameter,
                "ui_locales, acr_values, display, resource and id_token_hint are each at most 4096 characters",
            )
        } else if let Err(description) = connection_scope.as_ref() {
            fail("invalid_request", "connection_scope", description)
        } else if let Err(refused) = self.authn.api_scope(p.tenant, p.audience, p.scope).await {
            // Auth0's answer to an audience that names none of the tenant's APIs; an outage
            // of the tenant service is an error page, not a redirect.
            if refused.code() != Code::PermissionDenied {
                return Err(refused);
            }
            fail("access_denied", "audience", refused.message())
        } else {
            Ok(AuthRequest {
                client_id: client.client_id.clone(),
                redirect_uri: p.redirect_uri.to_owned(),
                response_mode: response_mode.to_owned(),
                scope: tokens::normalize_scope(p.scope),
                state: p.state.to_owned(),
                nonce: p.nonce.to_owned(),
                code_challenge: p.code_challenge.to_owned(),
                connection: p.connection.to_owned(),
                login_hint: p.login_hint.to_owned(),
                audience: p.audience.to_owned(),
                upstream: others
                    .into_iter()
                    .chain([("prompt", p.prompt), ("response_mode", p.response_mode)])
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .chain(p.max_age.map(|m| ("max_age".to_owned(), m.to_string())))
                    .chain(connection_scope.ok().map(|s| (CONNECTION_SCOPE.to_owned(), s.join(" "))))
                    .filter(|(_, v)| !v.is_empty())
                    .collect(),
            })
        };
        Ok(checked)
    }

    /// Stores a login transaction for `request` (the hosted page's, or one a magic link
    /// completes), living `lifetime`: its id and CSRF token, handed out once.
    async fn new_transaction(
        &self,
        tenant: &str,
        request: &AuthRequest,
        lifetime: Duration,
    ) -> Result<(String, String), Status> {
        let now = self.now();
        let transaction = new_secret();
        let csrf = new_secret();
        let json = serde_json::to_string(request).map_err(|e| internal(&e))?;
        self.store()
            .create_transaction(&NewTransaction {
                tenant,
                id_hash: &secret_digest(&transaction),
                csrf_hash: &secret_digest(&csrf),
                client_id: &request.client_id,
                request: &json,
                now,
                expire_time: now.saturating_add(micros(lifetime)),
            })
            .await?;
        Ok((transaction, csrf))
    }

    /// The login transaction a magic link started over gRPC completes: the application's
    /// `auth_params`, validated as `/authorize` validates its query (a refusal is the
    /// caller's INVALID_ARGUMENT naming the `auth_params.` field, or for an unknown
    /// audience the PERMISSION_DENIED of `Login`), limited to `connection`, living as long
    /// as the link (`link_lifetime`) when that is longer than a page's transaction. Answers
    /// the digests of the transaction's id and CSRF token (no browser holds the token: the
    /// link cannot be bound to one).
    pub(crate) async fn link_transaction(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        recipient: &str,
        params: Option<&pb::PasswordlessAuthParams>,
        link_lifetime: Duration,
    ) -> Result<LinkTransaction, Status> {
        let Some(params) = params else {
            return Err(invalid_field(
                "auth_params",
                "is required to send a magic link: the authorization request the link completes (redirect_uri, \
                 scope, state, nonce, PKCE challenge, audience), as the application would send it to /authorize",
            ));
        };
        if params.redirect_uri.is_empty() {
            return Err(invalid_field(
                "auth_params.redirect_uri",
                "is required: where the link sends the browser back",
            ));
        }
        if params.response_mode == "web_message" {
            return Err(invalid_field(
                "auth_params.response_mode",
                "must be query or form_post: a magic link opens in a tab of its own, with no window that a \
                 web_message could be posted to",
            ));
        }
        let client = self.client(tenant, client_id).await?;
        if !client.callbacks.iter().any(|c| c == &params.redirect_uri) {
            return Err(invalid_field("auth_params.redirect_uri", CALLBACK_MISMATCH));
        }
        let p = AuthParams {
            tenant,
            redirect_uri: &params.redirect_uri,
            response_type: or_default(&params.response_type, "code"),
            response_mode: &params.response_mode,
            scope: or_default(&params.scope, tokens::DEFAULT_SCOPE),
            state: &params.state,
            nonce: &params.nonce,
            code_challenge: &params.code_challenge,
            code_challenge_method: &params.code_challenge_method,
            connection,
            login_hint: recipient,
            prompt: "",
            max_age: None,
            audience: &params.audience,
            other: OtherParams::default(),
        };
        let request = match self.authorization_request(&client, &p).await? {
            Ok(r) => r,
            Err(refused) if refused.error == "access_denied" => {
                return Err(status(Code::PermissionDenied, reason::ACCESS_DENIED, refused.description));
            }
            Err(refused) => {
                return Err(invalid_field(format!("auth_params.{}", refused.parameter), refused.description));
            }
        };
        let lifetime = self.oauth.transaction_lifetime.max(link_lifetime);
        let (transaction, csrf) = self.new_transaction(tenant, &request, lifetime).await?;
        Ok(LinkTransaction { transaction_hash: secret_digest(&transaction), csrf_hash: secret_digest(&csrf) })
    }
}

/// What an authorization request is refused with: the OAuth error, the parameter at fault
/// and why.
#[derive(Debug)]
struct Refusal {
    error: &'static str,
    parameter: &'static str,
    description: String,
}

/// `value`, or `default` when it is empty.
fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// The answer to a redirect URI that is none of the client's callbacks.
const CALLBACK_MISMATCH: &str = "is not one of the client's registered callback URLs (they must match exactly)";

/// An authorization request's parameters past its client: `/authorize`'s query, or a magic
/// link's `auth_params`.
struct AuthParams<'a> {
    tenant: &'a str,
    redirect_uri: &'a str,
    response_type: &'a str,
    response_mode: &'a str,
    scope: &'a str,
    state: &'a str,
    nonce: &'a str,
    code_challenge: &'a str,
    code_challenge_method: &'a str,
    connection: &'a str,
    login_hint: &'a str,
    prompt: &'a str,
    max_age: Option<i64>,
    audience: &'a str,
    other: OtherParams<'a>,
}

/// The login transaction a magic link completes, by the digests of its id and CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct LinkTransaction {
    /// The digest of the transaction's id.
    pub(crate) transaction_hash: String,
    /// The digest of its CSRF token.
    pub(crate) csrf_hash: String,
}

impl AuthnApi {
    /// The OpenID provider's handlers over this state, with the provider's lifetimes on this
    /// service's clock (what [`crate::routes`] serves).
    pub(crate) fn oauth(&self) -> OAuthApi {
        OAuthApi::new(self.clone(), OAuthConfig::new(self.config.clock.clone()))
    }
}

/// A connection as the hosted page offers it. A listed connection has no secrets, so
/// only a database connection's options are read into the typed model (for its password
/// policy, written once there); the category says the rest. A connection whose strategy a
/// password connector serves (`connectors`) gets a username and password form.
fn page_connection(c: &conn_pb::Connection, connectors: &postern_connector::Connectors) -> pb::PageConnection {
    let strategy = postern_connection::Strategy::parse(&c.strategy);
    let password_family = strategy.is_some_and(|s| connectors.password(s).is_some());
    let directory = matches!(strategy, Some(postern_connection::Strategy::Ad | postern_connection::Strategy::Ldap));
    let database = postern_connection::Strategy::parse(&c.strategy)
        .and_then(|strategy| {
            let (mut v, mut secrets) = (Violations::new(), postern_connection::Secrets::default());
            postern_connection::Options::from_proto(strategy, c.options.clone(), "options", &mut v, &mut secrets)
        })
        .and_then(|o| match o {
            postern_connection::Options::Database(d) => Some(d),
            _ => None,
        });
    let category = conn_pb::Category::try_from(c.category).unwrap_or(conn_pb::Category::Unspecified);
    pb::PageConnection {
        name: c.name.clone(),
        display_name: if c.display_name.is_empty() { c.name.clone() } else { c.display_name.clone() },
        strategy: c.strategy.clone(),
        password: password_family,
        signup: database.as_ref().is_some_and(|d| !d.disable_signup),
        requires_username: database.as_ref().is_some_and(|d| d.requires_username),
        password_rules: database.as_ref().map(|d| d.password_rules().describe()).unwrap_or_default(),
        redirect: !password_family && matches!(category, conn_pb::Category::Social | conn_pb::Category::Enterprise),
        directory,
        passwordless: if category == conn_pb::Category::Passwordless { c.strategy.clone() } else { String::new() },
        magic_link: matches!(&c.options, Some(conn_pb::connection::Options::Email(e)) if e.magic_link),
    }
}

/// Refuses a browser's request (its `Origin`, empty for a request that sent none) from an
/// origin `client` does not allow: allowed are the origins of its callbacks and its
/// `allowed_origins`, subdomain wildcards included (Auth0's and Zitadel's rule; Keycloak's
/// `+` web origin).
fn check_origin(client: &ResolvedClient, origin: &str) -> Result<(), Status> {
    if origin.is_empty()
        || client.allowed_origins.iter().any(|o| postern_common::validate::origin_allowed(o, origin))
        || client.callbacks.iter().any(|c| postern_common::validate::origin_of(c).as_deref() == Some(origin))
    {
        return Ok(());
    }
    Err(status(
        Code::PermissionDenied,
        reason::UNAUTHORIZED_CLIENT,
        format!(
            "origin {:?} may not call this endpoint for client {}: it is neither the origin of one of the \
             client's callbacks nor among its allowed_origins",
            origin.chars().take(200).collect::<String>(),
            client.client_id
        ),
    ))
}

/// An authorization request's `prompt` (OpenID Connect Core §3.1.2.1): a space-separated set
/// of `none`, `login`, `consent` and `select_account`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Prompt {
    /// `none`: never a page; `login_required` without a session.
    none: bool,
    /// `login` or `select_account`: the page, even with a session. Postern keeps one session
    /// per browser, so choosing an account is logging in, as Keycloak treats it too.
    page: bool,
}

impl Prompt {
    /// Parses `prompt`. `consent` adds nothing: a tenant's applications are its own
    /// (first-party), their access configured by the tenant, and Postern shows no consent
    /// page, as Keycloak does for a client that does not require consent.
    fn parse(prompt: &str) -> Result<Self, &'static str> {
        let mut parsed = Prompt::default();
        let mut others = false;
        for value in prompt.split(' ').filter(|v| !v.is_empty()) {
            match value {
                "none" => parsed.none = true,
                "login" | "select_account" => {
                    parsed.page = true;
                    others = true;
                }
                "consent" => others = true,
                _ => {
                    return Err("prompt must be none, or one or more of login, consent and select_account \
                                (separated by spaces)");
                }
            }
        }
        if parsed.none && others {
            return Err("prompt none cannot be combined with another value: it asks for no page at all");
        }
        Ok(parsed)
    }
}

/// Whether `redirect_uri` has an origin a page can post a message to (http or https).
fn web_origin(redirect_uri: &str) -> bool {
    postern_common::validate::origin_of(redirect_uri)
        .is_some_and(|o| o.starts_with("http://") || o.starts_with("https://"))
}

fn redirect_error(request: &pb::StartAuthorizationRequest, error: &str, description: &str) -> pb::Redirect {
    let mut parameters = HashMap::from([
        ("error".to_owned(), error.to_owned()),
        ("error_description".to_owned(), description.to_owned()),
    ]);
    if !request.state.is_empty() {
        parameters.insert("state".into(), request.state.clone());
    }
    let response_mode = match request.response_mode.as_str() {
        "form_post" => "form_post",
        "web_message" if web_origin(&request.redirect_uri) => "web_message",
        _ => "query",
    };
    pb::Redirect { uri: request.redirect_uri.clone(), response_mode: response_mode.to_owned(), parameters }
}

fn redirect(r: pb::Redirect) -> Response<pb::StartAuthorizationResponse> {
    Response::new(pb::StartAuthorizationResponse {
        outcome: Some(pb::start_authorization_response::Outcome::Redirect(r)),
    })
}

impl OAuthApi {
    /// The token endpoint's grant of `req`, once its type is known to be supported; sets
    /// the audit's user to the user the grant is for as soon as the grant names one (for the
    /// audit event, whether or not tokens are issued), and marks the event written when the
    /// grant wrote it with its own change.
    async fn exchange(
        &self,
        req: &pb::ExchangeTokenRequest,
        audit: &mut ExchangeAudit<'_>,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        let client = self.authenticate_client(&req.tenant, &req.client_id, &req.client_secret).await?;
        check_origin(&client, &req.origin)?;
        match req.grant_type.as_str() {
            "authorization_code" => self.authorization_code(req, &client, audit).await,
            "refresh_token" => self.refresh(req, &client, &mut audit.user_id).await,
            PASSWORDLESS_OTP_GRANT => self.passwordless_otp(req, &client, audit.address, &mut audit.user_id).await,
            _ => self.client_credentials(req, &client).await,
        }
    }
}

/// The audit event of one token request: who asked for what, for which user, and whether
/// the grant's own write carried it already.
struct ExchangeAudit<'a> {
    req: &'a pb::ExchangeTokenRequest,
    /// The caller's address.
    address: &'a str,
    /// The user the grant is for, once known.
    user_id: String,
    /// Written with the grant's change (an authorization code used up).
    written: bool,
}

impl ExchangeAudit<'_> {
    /// The event, succeeded or failed with `failure`.
    fn event(&self, failure: Option<&Status>) -> Option<postern_proto::tenant::v1::AuditEvent> {
        let req = self.req;
        // The passwordless grant names its connection (`realm`); the others none.
        let connection = if req.grant_type == PASSWORDLESS_OTP_GRANT { req.realm.as_str() } else { "" };
        let facts = crate::audit::Facts {
            tenant: &req.tenant,
            client_id: &req.client_id,
            connection,
            user_id: &self.user_id,
            address: self.address,
        };
        let actor = postern_proto::tenant::v1::AuditActor {
            r#type: postern_proto::tenant::v1::AuditActorType::Client as i32,
            id: req.client_id.clone(),
        };
        let details = [("grant_type", req.grant_type.as_str()), ("audience", req.audience.as_str())];
        crate::audit::event(crate::audit::Type::TokenExchange, &facts, failure, actor, &details)
    }
}

#[tonic::async_trait]
impl pb::o_auth_service_server::OAuthService for OAuthApi {
    async fn start_authorization(
        &self,
        req: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let (_client, checked) = self.validate_authorization(&req).await?;
        let request = match checked {
            Ok(r) => r,
            Err(refused) => return Ok(redirect(redirect_error(&req, refused.error, &refused.description))),
        };
        let now = self.now();
        // Checked with the rest of the request above.
        let prompt = Prompt::parse(&req.prompt).unwrap_or_default();
        if !req.session.is_empty() && !prompt.page && req.session.len() <= 128 {
            let hash = secret_digest(&req.session);
            if let Some(session) =
                self.store().touch_session(&req.tenant, &hash, now, micros(self.oauth.session_idle)).await?
            {
                let fresh = req
                    .max_age
                    .is_none_or(|max| now.saturating_sub(session.auth_time) <= max.saturating_mul(1_000_000));
                let user = self.store().get_user(&req.tenant, &session.user_id).await?;
                if fresh && user.is_some_and(|u| !u.blocked) {
                    let r =
                        self.code_redirect(&req.tenant, &request, &session.user_id, &hash, session.auth_time).await?;
                    return Ok(redirect(r));
                }
            }
        }
        if prompt.none {
            return Ok(redirect(redirect_error(&req, "login_required", "the user is not logged in")));
        }
        // A redirect connection named: straight to its upstream, no page.
        if !request.connection.is_empty()
            && self.authn.is_redirect_connection(&req.tenant, &request.client_id, &request.connection).await
                == Some(true)
        {
            let outcome = self.authorize_upstream(&req.tenant, &request).await?;
            return Ok(Response::new(pb::StartAuthorizationResponse { outcome: Some(outcome) }));
        }
        let (transaction, csrf) = self.new_transaction(&req.tenant, &request, self.oauth.transaction_lifetime).await?;
        Ok(Response::new(pb::StartAuthorizationResponse {
            outcome: Some(pb::start_authorization_response::Outcome::Login(pb::LoginTransaction {
                transaction,
                csrf_token: csrf,
                expires_in: i64::try_from(self.oauth.transaction_lifetime.as_secs()).unwrap_or(i64::MAX),
            })),
        }))
    }

    async fn get_login_page(
        &self,
        req: Request<pb::GetLoginPageRequest>,
    ) -> Result<Response<pb::GetLoginPageResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let request = self.transaction(&req.tenant, &req.transaction, None).await?;
        let client = self.client(&req.tenant, &request.client_id).await?;
        // Both remembered until the tenant event log or the registry's change stream says
        // they changed: a page view asks neither service anything.
        let tenant = self.authn.tenant(&req.tenant).await?;
        let connections = self.authn.cache.enabled_for(&req.tenant, &request.client_id).await?;
        // Listed connections carry no secrets, so they are read from the contract here: the
        // category says which are enterprise (reached by an email domain).
        let home_realm_discovery = connections.iter().any(|c| c.category == conn_pb::Category::Enterprise as i32);
        let discovered = if req.email.trim().is_empty() || !home_realm_discovery {
            None
        } else {
            let answer = self
                .authn
                .registry
                .clone()
                .discover_connection(conn_pb::DiscoverConnectionRequest {
                    tenant: req.tenant.clone(),
                    client_id: request.client_id.clone(),
                    email: truncate(req.email.trim(), 254).to_owned(),
                })
                .await;
            match answer {
                Ok(r) => r.into_inner().connection.map(|c| page_connection(&c, &self.authn.connectors)),
                Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => None,
                Err(s) => return Err(s),
            }
        };
        let page_connections = connections
            .iter()
            .filter(|c| request.connection.is_empty() || c.name == request.connection)
            .map(|c| page_connection(c, &self.authn.connectors))
            .collect();
        Ok(Response::new(pb::GetLoginPageResponse {
            tenant_display_name: if tenant.display_name.is_empty() {
                req.tenant.clone()
            } else {
                tenant.display_name.clone()
            },
            tenant_logo_url: tenant.logo_url.clone(),
            client_name: client.name.clone(),
            connections: page_connections,
            login_hint: request.login_hint,
            home_realm_discovery,
            discovered,
        }))
    }

    async fn submit_login(
        &self,
        req: Request<pb::SubmitLoginRequest>,
    ) -> Result<Response<pb::SubmitLoginResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let request = self.transaction(&req.tenant, &req.transaction, Some(&req.csrf_token)).await?;
        Self::check_connection(&request, &req.connection)?;
        // The session, the code and the page's transaction used up are written with the
        // user's login: one write.
        let login = self.new_login();
        let transaction_hash = secret_digest(&req.transaction);
        let grant = self.login_grant(&login, &request, Some(UsesUp::Page(&transaction_hash)));
        let user = self
            .authn
            .password_login(&crate::login::PasswordLogin {
                tenant: &req.tenant,
                client_id: &request.client_id,
                connection: &req.connection,
                username: &req.username,
                password: &req.password,
                address: &req.address,
                grant: Some(&grant),
            })
            .await?;
        let logged_in = self.login_answer(&req.tenant, &request, &user.user_id, login);
        Ok(Response::new(pb::SubmitLoginResponse { logged_in: Some(logged_in) }))
    }

    async fn submit_signup(
        &self,
        req: Request<pb::SubmitSignupRequest>,
    ) -> Result<Response<pb::SubmitSignupResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let request = self.transaction(&req.tenant, &req.transaction, Some(&req.csrf_token)).await?;
        Self::check_connection(&request, &req.connection)?;
        let user = self
            .authn
            .signup(&crate::login::SignupInput {
                tenant: &req.tenant,
                client_id: &request.client_id,
                connection: &req.connection,
                email: &req.email,
                username: &req.username,
                password: &req.password,
                user_metadata: None,
                address: &req.address,
            })
            .await?;
        let logged_in = self.logged_in(&req.tenant, &request, &user.user_id, &secret_digest(&req.transaction)).await?;
        Ok(Response::new(pb::SubmitSignupResponse { logged_in: Some(logged_in) }))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let mut v = Violations::new();
        v.check("tenant", postern_common::validate::tenant_name(&req.tenant));
        v.into_result()?;
        let mut client_id = req.client_id.clone();
        if !req.id_token_hint.is_empty() {
            let aud = self.hinted_client(&req.tenant, &req.id_token_hint).await?;
            if !client_id.is_empty() && client_id != aud {
                return Err(invalid_field("client_id", "differs from the audience of id_token_hint"));
            }
            client_id = aud;
        }
        // Validate the destination before ending anything.
        let mut redirect = if req.return_to.is_empty() {
            None
        } else {
            if client_id.is_empty() {
                return Err(invalid_field(
                    "client_id",
                    "is required with returnTo (or send id_token_hint): the URL must be one of the client's allowed \
                     logout URLs",
                ));
            }
            let client = self.client(&req.tenant, &client_id).await?;
            if !client.allowed_logout_urls.iter().any(|u| u == &req.return_to) {
                return Err(invalid_field(
                    "return_to",
                    "is not one of the client's allowed logout URLs (they must match exactly)",
                ));
            }
            let mut parameters = HashMap::new();
            if !req.state.is_empty() {
                parameters.insert("state".to_owned(), req.state.clone());
            }
            Some(pb::Redirect { uri: req.return_to.clone(), response_mode: "query".into(), parameters })
        };
        let session_hash = secret_digest(&req.session);
        let ended = if !req.session.is_empty() && req.session.len() <= 128 {
            self.store().end_session(&req.tenant, &session_hash).await?
        } else {
            None
        };
        if let Some(session) = &ended {
            let connection = session.connection.as_str();
            tracing::info!(tenant = %req.tenant, connection, federated = req.federated, "SSO session ended");
            let clients = [(session_hash.as_str(), session.clients.as_slice())];
            self.authn.notify_backchannel(&req.tenant, &session.user_id, &clients).await;
            if req.federated
                && !connection.is_empty()
                && let Some(uri) = self.upstream_logout(&req, &session_hash, session).await?
            {
                redirect = Some(pb::Redirect { uri, response_mode: "query".into(), parameters: HashMap::new() });
            }
        }
        Ok(Response::new(pb::EndSessionResponse { redirect, ended: ended.is_some() }))
    }

    async fn exchange_token(
        &self,
        req: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        // The client's credentials in the request are what counts, whoever relays it.
        principal(&req)?;
        if postern_common::validate::tenant_name(&req.get_ref().tenant).is_err() {
            return Err(invalid_request("tenant", "is not a tenant name"));
        }
        if !matches!(
            req.get_ref().grant_type.as_str(),
            "authorization_code" | "refresh_token" | "client_credentials" | PASSWORDLESS_OTP_GRANT
        ) {
            return Err(status(
                Code::InvalidArgument,
                reason::UNSUPPORTED_GRANT_TYPE,
                "grant_type must be authorization_code, refresh_token, client_credentials or \
                 http://auth0.com/oauth/grant-type/passwordless/otp",
            ));
        }
        let address = postern_common::principal::peer_addr(&req)
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_canonical().to_string());
        let req = req.into_inner();
        let mut audit = ExchangeAudit { req: &req, address: &address, user_id: String::new(), written: false };
        let result = self.exchange(&req, &mut audit).await;
        if !audit.written
            && let Some(event) = audit.event(result.as_ref().err())
        {
            self.authn.outbox.record_or_log(event).await;
        }
        Ok(Response::new(result?))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        principal(&req)?;
        let req = req.into_inner();
        if postern_common::validate::tenant_name(&req.tenant).is_err() {
            return Err(invalid_request("tenant", "is not a tenant name"));
        }
        let client = self.authenticate_client(&req.tenant, &req.client_id, &req.client_secret).await?;
        check_origin(&client, &req.origin)?;
        if req.token.is_empty() {
            return Err(invalid_request("token", "is required"));
        }
        // RFC 7009 2.1: a token issued to another client is refused and stays valid; an
        // unknown (or already revoked) token is not an error (2.2).
        match self.store().revoke_refresh_token(&req.tenant, &secret_digest(&req.token), &client.client_id).await? {
            Revoked::Revoked => {
                tracing::info!(tenant = %req.tenant, client_id = %client.client_id, "refresh token revoked");
            }
            Revoked::Unknown => {}
            Revoked::OtherClient => {
                tracing::warn!(tenant = %req.tenant, client_id = %client.client_id, "refused to revoke another client's token");
                return Err(status(
                    Code::PermissionDenied,
                    reason::UNAUTHORIZED_CLIENT,
                    "the token was issued to another client; a client may revoke only its own tokens",
                ));
            }
        }
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn start_upstream_login(
        &self,
        req: Request<pb::StartUpstreamLoginRequest>,
    ) -> Result<Response<pb::StartUpstreamLoginResponse>, Status> {
        principal(&req)?.require_internal()?;
        Ok(Response::new(self.start_upstream(req.get_ref()).await?))
    }

    async fn complete_upstream_login(
        &self,
        req: Request<pb::CompleteUpstreamLoginRequest>,
    ) -> Result<Response<pb::CompleteUpstreamLoginResponse>, Status> {
        principal(&req)?.require_internal()?;
        Ok(Response::new(self.complete_upstream(req.get_ref()).await?))
    }

    async fn complete_upstream_logout(
        &self,
        req: Request<pb::CompleteUpstreamLogoutRequest>,
    ) -> Result<Response<pb::CompleteUpstreamLogoutResponse>, Status> {
        principal(&req)?.require_internal()?;
        Ok(Response::new(self.finish_upstream_logout(req.get_ref())?))
    }

    async fn get_service_provider_metadata(
        &self,
        req: Request<pb::GetServiceProviderMetadataRequest>,
    ) -> Result<Response<pb::GetServiceProviderMetadataResponse>, Status> {
        principal(&req)?.require_internal()?;
        let r = req.get_ref();
        if r.connection.is_empty() || r.connection.len() > 128 {
            return Err(postern_common::error::invalid_field(
                "connection",
                "is required: the name of the connection whose metadata to answer (at most 128 characters)",
            ));
        }
        let callback = self.callback_url(&r.tenant);
        let m = self.authn.service_metadata(&r.tenant, &r.connection, &callback).await?;
        Ok(Response::new(pb::GetServiceProviderMetadataResponse { content_type: m.content_type, document: m.document }))
    }

    async fn submit_passwordless_start(
        &self,
        req: Request<pb::SubmitPasswordlessStartRequest>,
    ) -> Result<Response<pb::SubmitPasswordlessStartResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let request = self.transaction(&req.tenant, &req.transaction, Some(&req.csrf_token)).await?;
        Self::check_connection(&request, &req.connection)?;
        let transaction_hash = secret_digest(&req.transaction);
        let csrf_hash = secret_digest(&req.csrf_token);
        let expires_in = self
            .authn
            .send_code(&CodeStart {
                tenant: &req.tenant,
                client_id: &request.client_id,
                connection: &req.connection,
                recipient: RecipientInput::One { field: "recipient", value: &req.recipient },
                send: if req.link { SendKind::Link } else { SendKind::Code },
                links: Links::Page(LinkTarget { transaction_hash: &transaction_hash, csrf_hash: &csrf_hash }),
                address: &req.address,
            })
            .await?;
        // The page's code form, or the link, must work as long as the code does.
        let now = self.now();
        let until = now.saturating_add(i64::from(expires_in).saturating_mul(1_000_000));
        let expire = self.store().extend_transaction(&req.tenant, &transaction_hash, now, until).await?;
        let transaction_expires_in = expire.map_or(0, |e| e.saturating_sub(now).div_euclid(1_000_000));
        Ok(Response::new(pb::SubmitPasswordlessStartResponse {
            expires_in: i64::from(expires_in),
            transaction_expires_in,
        }))
    }

    async fn submit_passwordless_code(
        &self,
        req: Request<pb::SubmitPasswordlessCodeRequest>,
    ) -> Result<Response<pb::SubmitPasswordlessCodeResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let request = self.transaction(&req.tenant, &req.transaction, Some(&req.csrf_token)).await?;
        Self::check_connection(&request, &req.connection)?;
        let user = self
            .authn
            .code_login(&CodeLogin {
                tenant: &req.tenant,
                client_id: &request.client_id,
                connection: &req.connection,
                recipient: RecipientInput::One { field: "recipient", value: &req.recipient },
                code: &req.code,
                address: &req.address,
            })
            .await?;
        let logged_in = self.logged_in(&req.tenant, &request, &user.user_id, &secret_digest(&req.transaction)).await?;
        Ok(Response::new(pb::SubmitPasswordlessCodeResponse { logged_in: Some(logged_in) }))
    }

    async fn complete_magic_link(
        &self,
        req: Request<pb::CompleteMagicLinkRequest>,
    ) -> Result<Response<pb::CompleteMagicLinkResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let login = self.authn.link_login(&req.tenant, &req.token, &req.csrf_cookies, &req.address).await?;
        let now = self.now();
        let gone = || {
            failed_precondition(
                "LOGIN_TRANSACTION_USED",
                "the login this link belongs to has expired or was completed; go back to the application and sign \
                 in again",
            )
        };
        let stored = self.store().transaction(&req.tenant, &login.transaction_hash, now).await?.ok_or_else(gone)?;
        let request: AuthRequest = serde_json::from_str(&stored.request).map_err(|e| internal(&e))?;
        let logged_in = match self.logged_in(&req.tenant, &request, &login.user.user_id, &login.transaction_hash).await
        {
            Err(s) if s.code() == Code::FailedPrecondition => return Err(gone()),
            answer => answer?,
        };
        Ok(Response::new(pb::CompleteMagicLinkResponse { logged_in: Some(logged_in) }))
    }
}

impl OAuthApi {
    /// The passwordless grant: the code `otp` sent to `username` through the connection
    /// `realm` (Auth0's `http://auth0.com/oauth/grant-type/passwordless/otp`), for
    /// applications that drive their own UI. Tokens as an authorization code's, without a
    /// refresh token.
    async fn passwordless_otp(
        &self,
        req: &pb::ExchangeTokenRequest,
        client: &tenant_pb::Client,
        address: &str,
        user_id: &mut String,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        for (field, value) in [("realm", &req.realm), ("username", &req.username), ("otp", &req.otp)] {
            if value.is_empty() {
                return Err(invalid_request(field, "is required for the passwordless grant"));
            }
        }
        let login = CodeLogin {
            tenant: &req.tenant,
            client_id: &client.client_id,
            connection: &req.realm,
            recipient: RecipientInput::One { field: "username", value: &req.username },
            code: &req.otp,
            address,
        };
        // An unknown API is refused before the code is tried (no attempt used up).
        self.authn.api_scope(&req.tenant, &req.audience, &req.scope).await?;
        let user = self.authn.code_login(&login).await.map_err(|s| match s.code() {
            // RFC 6749: a wrong code is an invalid grant.
            Code::Unauthenticated => invalid_grant(s.message().to_owned()),
            _ => s,
        })?;
        user_id.clone_from(&user.user_id);
        let scope = if req.scope.is_empty() { "openid profile email" } else { req.scope.as_str() };
        let issued = self
            .user_tokens(&UserTokens {
                tenant: &req.tenant,
                client_id: &client.client_id,
                user_id: &user.user_id,
                scope,
                audience: &req.audience,
                nonce: "",
                auth_time: self.now(),
                // No browser session: the grant is the application's own.
                session_hash: "",
                // As the login just recorded it.
                user: Some(&user),
            })
            .await?;
        Ok(Self::token_response(issued, String::new(), true))
    }

    /// The client an `id_token_hint` was issued to: its signature must verify against the
    /// tenant's published keys and its issuer be the tenant's; its expiry is not checked.
    async fn hinted_client(&self, tenant: &str, hint: &str) -> Result<String, Status> {
        let bad = || invalid_field("id_token_hint", "is not an ID token issued by this tenant");
        let header = jsonwebtoken::decode_header(hint).map_err(|_| bad())?;
        let kid = header.kid.ok_or_else(bad)?;
        let keys = self.authn.keys.keys(tenant).await?;
        let set = tokens::jwks(&keys, self.authn.keys.now(), self.authn.keys.published_after_retirement());
        let jwk = set.find(&kid).ok_or_else(bad)?;
        let alg = match jwk.common.key_algorithm {
            Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => jsonwebtoken::Algorithm::RS256,
            Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => jsonwebtoken::Algorithm::EdDSA,
            _ => return Err(bad()),
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| bad())?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        validation.set_issuer(&[self.issuer(tenant)]);
        let data = jsonwebtoken::decode::<Hint>(hint, &key, &validation).map_err(|_| bad())?;
        Ok(data.claims.aud)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_scope_takes_commas_or_spaces_and_bounds_its_scopes() {
        assert_eq!(connection_scopes("").unwrap(), Vec::<String>::new());
        assert_eq!(connection_scopes("a,b c,,a").unwrap(), ["a", "b", "c", "a"]);
        assert!(connection_scopes(&vec!["s"; 51].join(",")).unwrap_err().contains("at most 50"));
        assert!(connection_scopes(&"x".repeat(129)).unwrap_err().contains("not a scope"));
        assert!(connection_scopes("caf\u{e9}").is_err(), "printable ASCII only");
    }

    #[test]
    fn prompt_is_a_set_of_values_and_none_stands_alone() {
        assert_eq!(Prompt::parse(""), Ok(Prompt::default()));
        assert_eq!(Prompt::parse("none"), Ok(Prompt { none: true, page: false }));
        assert_eq!(Prompt::parse("consent"), Ok(Prompt::default()));
        for page in ["login", "select_account", "login consent", " consent  select_account "] {
            assert_eq!(Prompt::parse(page), Ok(Prompt { none: false, page: true }), "{page}");
        }
        for refused in ["none login", "consent none", "create", "LOGIN", "login,consent"] {
            assert!(Prompt::parse(refused).is_err(), "{refused}");
        }
        assert_eq!(
            Prompt::parse("create"),
            Err("prompt must be none, or one or more of login, consent and select_account (separated by spaces)")
        );
    }

    #[test]
    fn pkce() {
        // RFC 7636, appendix B.
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(pkce_shaped("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!pkce_shaped("short"));
        assert!(!pkce_shaped(&"a".repeat(129)));
        assert!(!pkce_shaped(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
