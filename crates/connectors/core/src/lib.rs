//! The connector seam: how a source of users logs someone in, in three families, each
//! answering the same [`ExternalProfile`].
//!
//! - [`PasswordConnector`]: by password (database and custom database; later LDAP and
//!   Active Directory).
//! - [`RedirectConnector`]: by a redirect to an upstream and back (later OIDC, OAuth2 social,
//!   SAML).
//! - [`CodeConnector`]: by a one-time code or magic link (email, SMS).
//!
//! The authenticator orchestrates (resolve the connection, run its connector, upsert user and
//! identity under the profile-sync rule, issue tokens) and knows no protocol: it finds a
//! connection's connector in [`Connectors`] by strategy. Each connector family lives in its
//! own crate under `crates/connectors/`, so that protocol libraries never enter the
//! authenticator; the binary registers them.
//!
//! Architecture invariant: adding a strategy is one connector and its options type (in
//! `postern-connection`), with no edit to the orchestration.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use postern_common::error::Violations;
use postern_connection::{Resolved, Strategy};
use serde_json::{Map, Value};

pub use async_trait::async_trait;

pub mod egress;
pub use egress::Egress;

/// The root profile attributes a source provides and a login may copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// The email address.
    pub email: String,
    /// Whether the email address is verified.
    pub email_verified: bool,
    /// The username, if any.
    pub username: String,
    /// The full name.
    pub name: String,
    /// The given name.
    pub given_name: String,
    /// The family name.
    pub family_name: String,
    /// The casual name.
    pub nickname: String,
    /// The picture URL.
    pub picture: String,
    /// The phone number (E.164), if any.
    pub phone_number: String,
    /// Whether the phone number is verified.
    pub phone_verified: bool,
}

impl Profile {
    /// The attributes a user gets when its profile is not copied (`NEVER_ON_LOGIN`): only
    /// what identifies it.
    pub fn identifying_only(&self) -> Profile {
        Profile {
            email: self.email.clone(),
            email_verified: self.email_verified,
            username: self.username.clone(),
            phone_number: self.phone_number.clone(),
            phone_verified: self.phone_verified,
            ..Profile::default()
        }
    }

    /// The profile as the JSON an identity's `profile_data` keeps.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        };
        put("email", &self.email);
        put("username", &self.username);
        put("name", &self.name);
        put("given_name", &self.given_name);
        put("family_name", &self.family_name);
        put("nickname", &self.nickname);
        put("picture", &self.picture);
        put("phone_number", &self.phone_number);
        m.insert("email_verified".into(), Value::Bool(self.email_verified));
        if !self.phone_number.is_empty() {
            m.insert("phone_verified".into(), Value::Bool(self.phone_verified));
        }
        Value::Object(m)
    }
}

/// The nickname a user gets by default: the local part of its email.
pub fn default_nickname(email: &str) -> String {
    email.split('@').next().unwrap_or_default().to_owned()
}

/// A user as its source describes it, whatever the family: what the authenticator upserts.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalProfile {
    /// The user's stable id at the source.
    pub source_id: String,
    /// The root attributes the source provides (`email_verified` among them).
    pub profile: Profile,
    /// The raw profile, kept as the identity's `profile_data`.
    pub raw: Value,
    /// The user's own metadata, if the source keeps any.
    pub user_metadata: Map<String, Value>,
    /// The application's metadata, if the source keeps any.
    pub app_metadata: Map<String, Value>,
}

/// Why a connector refused or failed, in terms the authenticator turns into a status: each
/// variant names its gRPC code, with a stable `ErrorInfo` reason and a message for the
/// caller where the code needs one.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Wrong credentials or unknown user: one answer for both.
    #[error("wrong credentials")]
    WrongCredentials,
    /// The input breaks the connection's rules (username, password policy), field by field.
    #[error("the input breaks the connection's rules")]
    Invalid(Violations),
    /// The source refused one field of the input; the message is meant for the caller.
    #[error("{field}: {message}")]
    Refused {
        /// The request field.
        field: &'static str,
        /// What the source said.
        message: String,
    },
    /// NOT_FOUND.
    #[error("{message}")]
    NotFound {
        /// The ErrorInfo reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// ALREADY_EXISTS.
    #[error("{message}")]
    AlreadyExists {
        /// The ErrorInfo reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// PERMISSION_DENIED (a signup the connection does not allow).
    #[error("{message}")]
    PermissionDenied {
        /// The ErrorInfo reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// FAILED_PRECONDITION (the connection cannot do this).
    #[error("{message}")]
    FailedPrecondition {
        /// The ErrorInfo reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// UNAVAILABLE: the source failed, timed out or cannot be reached (the cause is logged
    /// by the connector, not shown).
    #[error("{message}")]
    Unavailable {
        /// The ErrorInfo reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// The upstream answered an error, or the user cancelled there (a redirect login): the
    /// application gets `access_denied`.
    #[error("the upstream refused the login: {message}")]
    Denied {
        /// What the upstream said (its `error` and `error_description`), for the application.
        message: String,
    },
    /// The upstream's answer failed validation (a redirect login: a token of another
    /// audience, a wrong nonce, an expired token, a bad signature, a domain not allowed):
    /// nothing is stored, and the application gets `access_denied`.
    #[error("{message}")]
    Rejected {
        /// A stable ErrorInfo reason (`ID_TOKEN_INVALID`, `DOMAIN_NOT_ALLOWED`).
        reason: &'static str,
        /// What was wrong, for the application (never a token).
        message: String,
    },
    /// INTERNAL: a failure of this process (hashing, a task), logged, never shown.
    #[error("connector failure: {0}")]
    Internal(String),
}

/// The outcome of a password check that passed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// The hash this service keeps for the user matched.
    Local {
        /// A fresh hash to keep instead, when the stored one is of outdated parameters or
        /// scheme.
        rehash: Option<String>,
    },
    /// The source accepted the credentials of this user.
    External {
        /// The user as the source describes it.
        profile: Box<ExternalProfile>,
        /// A hash of the password to keep, when the connection imports its users (their
        /// next logins are checked locally); `None` keeps the identity external.
        import_hash: Option<String>,
    },
}

/// A signup, once the authenticator has checked the fields that do not depend on the
/// connection.
#[derive(Debug, Clone, Copy)]
pub struct Signup<'a> {
    /// The email address.
    pub email: &'a str,
    /// The username, where the connection requires one; else empty.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
    /// The user's own metadata.
    pub user_metadata: &'a Map<String, Value>,
}

/// The outcome of a signup.
#[derive(Debug, Clone, PartialEq)]
pub enum SignedUp {
    /// The authenticator keeps the user: this is the password's hash.
    Local {
        /// The password's hash (a PHC string).
        hash: String,
    },
    /// The source created and keeps the user.
    External(Box<ExternalProfile>),
}

/// A password change of one identity.
#[derive(Debug, Clone, Copy)]
pub struct PasswordChange<'a> {
    /// The user's attributes, for the policy's personal-information rule.
    pub user: postern_connection::PersonalInfo<'a>,
    /// The hashes of the identity's previous passwords, newest first (the policy's history
    /// rule).
    pub history: &'a [String],
    /// Whether the authenticator keeps the identity's hash (else the source keeps it).
    pub local: bool,
    /// The new password.
    pub new_password: &'a str,
}

/// The outcome of a password change.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordChanged {
    /// Keep this hash, and at most `history` previous ones.
    Local {
        /// The new password's hash.
        hash: String,
        /// How many previous hashes to keep.
        history: usize,
    },
    /// The source changed it.
    External,
}

/// One step of a connection's test ([`PasswordConnector::test`]): what was tried and what
/// came of it. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestStep {
    /// What was tried (`connect`, `start_tls`, `service_bind`, `search`, `discovery`, …).
    pub name: String,
    /// Whether it worked.
    pub ok: bool,
    /// What was found, or why it failed, for the administrator.
    pub detail: String,
    /// How long it took.
    pub elapsed: std::time::Duration,
}

impl TestStep {
    /// The step `name`, begun at `started`, that found `Ok(detail)` or failed with
    /// `Err(why)`.
    pub fn of(name: &str, started: std::time::Instant, result: Result<String, String>) -> Self {
        let ok = result.is_ok();
        TestStep { name: name.into(), ok, detail: result.unwrap_or_else(|e| e), elapsed: started.elapsed() }
    }

    /// Adds the step [`TestStep::of`] makes to `steps`, answering whether it worked (a test
    /// stops at the first that did not).
    pub fn record(
        steps: &mut Vec<TestStep>,
        name: &str,
        started: std::time::Instant,
        result: Result<String, String>,
    ) -> bool {
        let step = Self::of(name, started, result);
        let ok = step.ok;
        steps.push(step);
        ok
    }
}

/// The authorization code a connection's test exchanges at an OAuth 2.0 token endpoint to
/// try the client's credentials: no provider issued it.
pub const TEST_CODE: &str = "postern-connection-test";

/// What a token endpoint's refusal of [`TEST_CODE`] says of the client's credentials: a
/// provider authenticates the client before it looks at the code (RFC 6749 §3.2.1, §4.1.3),
/// so `invalid_grant` (GitHub: `bad_verification_code`) means the client was accepted and
/// `invalid_client` (GitHub: `incorrect_client_credentials`) that it was not. `said` is the
/// error with its description, `credentials_hint` what to check when refused. `Ok` when the
/// client was accepted or the answer cannot tell, `Err` when it was refused or the endpoint
/// does not take the grant.
pub fn test_code_verdict(
    token_endpoint: &str,
    client_id: &str,
    error: &str,
    said: &str,
    credentials_hint: &str,
) -> Result<String, String> {
    let token = token_endpoint;
    match error {
        "invalid_grant" | "bad_verification_code" => {
            Ok(format!("{token} accepted client {client_id:?} and refused the test's made-up code ({said})"))
        }
        "invalid_client" | "incorrect_client_credentials" => {
            Err(format!("{token} refused the client's credentials: {said} ({credentials_hint})"))
        }
        "unauthorized_client" => Err(format!(
            "{token} does not let client {client_id:?} use the authorization code grant: {said} (allow it at the \
             provider)"
        )),
        "unsupported_grant_type" => {
            Err(format!("{token} does not take the authorization code grant: {said} (is it the token endpoint?)"))
        }
        _ => Ok(format!(
            "{token} answered {said} to the test's made-up code; whether it accepts the client's credentials shows \
             at the first login"
        )),
    }
}

/// The outcome of a connection's test: its steps in order, stopping at the first that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// Whether every step worked.
    pub ok: bool,
    /// The steps tried.
    pub steps: Vec<TestStep>,
}

impl TestReport {
    /// The report of `steps`: ok when every one is.
    pub fn of(steps: Vec<TestStep>) -> Self {
        TestReport { ok: steps.iter().all(|s| s.ok), steps }
    }
}

/// The answer of a connector that cannot test its connections yet.
fn test_not_supported(conn: &Resolved) -> ConnectorError {
    ConnectorError::FailedPrecondition {
        reason: "TEST_NOT_SUPPORTED",
        message: format!(
            "connections of strategy {:?} cannot be tested by this server yet",
            conn.connection.spec.strategy.as_str()
        ),
    }
}

/// A source that checks passwords: database connections (Postern's own store or the
/// customer's custom database); later LDAP and Active Directory.
#[async_trait]
pub trait PasswordConnector: Send + Sync {
    /// Whether repeated failed logins block a user on this connection.
    fn brute_force_protection(&self, conn: &Resolved) -> bool;

    /// Checks `password` for the login name `login` (normalized). `local_hash` is the hash
    /// the authenticator keeps for this user, if it knows the user and keeps one. An unknown
    /// user costs as much as a wrong password and answers the same.
    async fn verify(
        &self,
        tenant: &str,
        conn: &Resolved,
        login: &str,
        password: &str,
        local_hash: Option<&str>,
    ) -> Result<Verified, ConnectorError>;

    /// Signs a user up: checks the connection's rules (signups allowed, username, password
    /// policy) and creates the user, or answers the hash for the authenticator to keep.
    async fn sign_up(&self, tenant: &str, conn: &Resolved, signup: &Signup<'_>) -> Result<SignedUp, ConnectorError>;

    /// Changes an identity's password, after the policy (history included).
    async fn change_password(
        &self,
        tenant: &str,
        conn: &Resolved,
        change: &PasswordChange<'_>,
        email: &str,
    ) -> Result<PasswordChanged, ConnectorError>;

    /// Deletes the user `source_id` from the source, where the source keeps it.
    async fn delete(&self, tenant: &str, conn: &Resolved, source_id: &str) -> Result<(), ConnectorError>;

    /// Tries the connection step by step without logging anyone in (TestConnection).
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        Err(test_not_supported(conn))
    }
}

/// What a redirect login carries from its start to its callback. The authenticator makes
/// it (fresh random `state`, `nonce` and `code_verifier` per login) and stores it, the
/// bearer parts hashed or sealed, for a few minutes and for one use: any replica can finish
/// what another began.
#[derive(Debug, Clone, PartialEq)]
pub struct RedirectTransaction {
    /// The `state` sent upstream and expected back (a SAML connector sends it as
    /// `RelayState`): the authenticator finds the transaction by it.
    pub state: String,
    /// The nonce the upstream's ID token must carry, where it issues one.
    pub nonce: String,
    /// The PKCE verifier of the upstream's code, where it takes one (send its S256
    /// challenge at [`RedirectConnector::begin`]).
    pub code_verifier: String,
    /// Where the upstream sends the browser back: the tenant's `/login/callback`.
    pub callback_url: String,
    /// The email or username the application suggested (`login_hint`), for upstreams that
    /// take a hint; empty for none.
    pub login_hint: String,
    /// Parameters the authorization request carries besides the protocol's (the
    /// connection's `upstream_params`, resolved against the application's request), in
    /// order; add them with [`add_upstream_params`] at `begin`. Empty at `complete`.
    pub upstream_params: Vec<(String, String)>,
    /// Scopes asked of the upstream for this login on top of the connection's (Auth0's
    /// `connection_scope`); an OAuth 2.0 connector adds those it does not ask already.
    pub extra_scopes: Vec<String>,
    /// What the connector asked to keep at `begin` ([`Begun::data`]), given back unchanged
    /// at `complete` (a SAML request id, say); `Null` when none. Stored with the
    /// transaction: never a secret.
    pub data: Value,
}

/// Adds `params` to `url`'s query, each replacing a parameter of the same name already
/// there (a hint the connector sent itself, such as `login_hint`).
pub fn add_upstream_params(url: &mut url::Url, params: &[(String, String)]) {
    if params.is_empty() {
        return;
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !params.iter().any(|(name, _)| name == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(kept.iter().chain(params));
}

/// `scopes`, then each of `extra` (a login's `connection_scope`) not among them, in order.
pub fn with_extra_scopes(scopes: &[String], extra: &[String]) -> Vec<String> {
    let mut all = scopes.to_vec();
    for scope in extra {
        if !all.contains(scope) {
            all.push(scope.clone());
        }
    }
    all
}

/// How the browser is sent to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamRequest {
    /// A `303 See Other` to this URL (the query carries the request).
    Redirect(String),
    /// A page whose form posts `fields` to `url` (SAML's HTTP-POST binding).
    FormPost {
        /// The form's action.
        url: String,
        /// The hidden fields, in order.
        fields: Vec<(String, String)>,
    },
}

/// The start of a redirect login.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    /// Where the browser goes.
    pub request: UpstreamRequest,
    /// What to keep with the transaction for `complete` ([`RedirectTransaction::data`]);
    /// `Null` for nothing.
    pub data: Value,
}

impl Begun {
    /// A redirect to `url`, keeping nothing.
    pub fn redirect(url: impl Into<String>) -> Self {
        Begun { request: UpstreamRequest::Redirect(url.into()), data: Value::Null }
    }
}

/// The upstream's tokens of a login, kept sealed on the identity when the connection asks
/// for it (the connector answers them only then).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamTokens {
    /// The upstream's access token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_token: String,
    /// The upstream's refresh token, if it issued one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refresh_token: String,
    /// The upstream's ID token, if it issued one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id_token: String,
    /// The access token's type (`Bearer`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_type: String,
    /// The scopes the upstream granted, space-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// When the access token expires (unix seconds), if the upstream said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for UpstreamTokens {
    // Tokens are bearer secrets: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A value of the upstream's answer that may be accepted once only (a SAML assertion's id):
/// the authenticator records it in its store, shared by its replicas, until `until`, and
/// refuses a login whose value is already recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeId {
    /// The value, as the connector derives it (a digest of the issuer and the id): never a
    /// secret, at most 128 characters.
    pub key: String,
    /// Until when it must be remembered (the answer could not be accepted after it anyway).
    pub until: std::time::SystemTime,
}

/// A document a connector publishes for a connection (a SAML SP's metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMetadata {
    /// Its media type.
    pub content_type: String,
    /// The document.
    pub document: String,
}

/// The end of a redirect login: who logged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The user as the upstream describes it.
    pub profile: ExternalProfile,
    /// The upstream's tokens, when the connection keeps them; else `None`.
    pub tokens: Option<UpstreamTokens>,
    /// Whether the upstream sends some attributes only sometimes (Apple sends the name on
    /// the first login only): an empty attribute then leaves the stored one as it is,
    /// whatever the profile-sync rule.
    pub partial_profile: bool,
    /// What of the answer may be used once only (a SAML assertion's id); `None` when the
    /// protocol's own single use suffices (an authorization code).
    pub one_time_id: Option<OneTimeId>,
    /// What the upstream's logout needs of this login (an OpenID Connect ID token for
    /// `id_token_hint`, a SAML `NameID` and `SessionIndex`), kept sealed on the SSO session
    /// and handed back to [`RedirectConnector::logout`]; `None` when it needs nothing.
    pub upstream_session: Option<String>,
}

/// A federated logout (`/v2/logout?federated`), as [`RedirectConnector::logout`] gets it.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLogout<'a> {
    /// What [`Completed::upstream_session`] kept of the login (empty when nothing).
    pub session: &'a str,
    /// Where the application wants the browser after logout (empty: nowhere said) and its
    /// `state`, for protocols whose upstream sends the browser there itself (OpenID's
    /// `post_logout_redirect_uri`).
    pub return_to: &'a str,
    /// The application's `state`.
    pub state: &'a str,
    /// Postern's logout callback (`/<tenant>/logout/callback`), for protocols whose
    /// upstream answers Postern (a SAML `LogoutResponse`), with `relay`: an opaque,
    /// tamper-proof token naming `return_to` and `state`, sent as the relay state, that the
    /// callback reads to send the browser on.
    pub callback_url: &'a str,
    /// See `callback_url`.
    pub relay: &'a str,
}

/// A source that logs users in by a redirect to an upstream and back (OIDC, OAuth2 social,
/// SAML). The authenticator's hooks are `AuthnApi::begin_redirect` and
/// `AuthnApi::complete_redirect`: it makes and stores the transaction, finds it again by
/// `state` (or `RelayState`) at the callback and uses it up in the write that stores the
/// login (at once when the callback is refused), so that of two callbacks with the same
/// state at most one logs a user in, and a connector checks only what its protocol carries.
#[async_trait]
pub trait RedirectConnector: Send + Sync {
    /// Where to send the browser to log in at the upstream, and what to keep for
    /// `complete`.
    async fn begin(&self, tenant: &str, conn: &Resolved, tx: &RedirectTransaction) -> Result<Begun, ConnectorError>;

    /// Reads the upstream's answer (the callback's query or form parameters) into the user
    /// it logged in: exchanges the code, validates what came back. An upstream error or a
    /// user who cancelled is [`ConnectorError::Denied`]; an answer that fails validation is
    /// [`ConnectorError::Rejected`].
    async fn complete(
        &self,
        tenant: &str,
        conn: &Resolved,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<Completed, ConnectorError>;

    /// Tries the connection step by step without logging anyone in (TestConnection): fetch
    /// the discovery document or metadata and the keys, check the certificates' dates.
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        Err(test_not_supported(conn))
    }

    /// The application an unsolicited answer of the upstream (an IdP-initiated login, which
    /// answers no transaction) logs its user in to, when the connection accepts such answers;
    /// `None`, the default, when it does not.
    fn unsolicited_client(&self, _conn: &Resolved) -> Option<UnsolicitedClient> {
        None
    }

    /// Reads an unsolicited answer (the callback's parameters, posted to `callback_url`)
    /// into the user it logged in, with every check of [`RedirectConnector::complete`] but
    /// the transaction's. Called only when [`RedirectConnector::unsolicited_client`]
    /// answers a client; refused by default.
    async fn complete_unsolicited(
        &self,
        _tenant: &str,
        conn: &Resolved,
        _params: &HashMap<String, String>,
        _callback_url: &str,
    ) -> Result<Completed, ConnectorError> {
        Err(ConnectorError::Rejected {
            reason: "UNSOLICITED_NOT_SUPPORTED",
            message: format!(
                "connection {:?}: its upstream's answers must answer a login started here",
                conn.connection.spec.name
            ),
        })
    }

    /// The document this side publishes for the connection (a SAML SP's metadata), its
    /// callback being `callback_url`; FAILED_PRECONDITION for protocols that publish none.
    async fn metadata(
        &self,
        _tenant: &str,
        conn: &Resolved,
        _callback_url: &str,
    ) -> Result<ServiceMetadata, ConnectorError> {
        Err(ConnectorError::FailedPrecondition {
            reason: "NO_SERVICE_METADATA",
            message: format!(
                "connections of strategy {:?} publish no service provider metadata",
                conn.connection.spec.strategy.as_str()
            ),
        })
    }

    /// Where to send the browser to end the user's session at the upstream too (federated
    /// logout, `/v2/logout?federated`), after which the upstream sends it on to the
    /// application (see [`UpstreamLogout`]). `None`, the default, when the protocol or the
    /// provider offers no such logout: the logout then ends Postern's session alone.
    async fn logout(
        &self,
        _tenant: &str,
        _conn: &Resolved,
        _logout: &UpstreamLogout<'_>,
    ) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }
}

/// The application an unsolicited (IdP-initiated) login goes to, as its connection says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsolicitedClient {
    /// The client's id.
    pub client_id: String,
    /// The `/authorize` parameters made for it (`response_type`, `scope`, `audience`).
    pub authorize_params: HashMap<String, String>,
}

/// Where a one-time code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An email address (validated as a database connection's emails are).
    Email,
    /// A phone number in E.164 form.
    Sms,
}

/// What the authenticator needs to know of a one-time-code connection to run the code's
/// state machine (which it keeps: the connector only delivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSettings {
    /// Where codes go.
    pub channel: Channel,
    /// Digits of a code.
    pub length: u32,
    /// How long a code or link stays valid, in seconds.
    pub lifetime_seconds: u32,
    /// Attempts a code allows; then it is void.
    pub max_attempts: u32,
    /// Whether a first login creates the user.
    pub signup: bool,
    /// Whether a start that does not say what to send sends a magic link.
    pub link_by_default: bool,
    /// Whether a magic link logs in only in the browser that asked for it.
    pub link_same_browser: bool,
}

/// A message to deliver: a one-time code or a magic link, with what its template may show.
#[derive(Debug, Clone, Copy)]
pub struct CodeMessage<'a> {
    /// The email address or phone number (validated and normalized).
    pub recipient: &'a str,
    /// The code, or the magic link.
    pub secret: CodeSecret<'a>,
    /// The application's name.
    pub application: &'a str,
    /// The tenant's display name.
    pub tenant_name: &'a str,
    /// How long the code or link stays valid, in seconds.
    pub lifetime_seconds: u32,
}

/// What a message carries.
#[derive(Debug, Clone, Copy)]
pub enum CodeSecret<'a> {
    /// A one-time code.
    Code(&'a str),
    /// A magic link (an absolute URL), and the code it stands for.
    Link {
        /// The link.
        link: &'a str,
        /// The code it stands for (templates may show it as well).
        code: &'a str,
    },
}

/// A source that logs users in by a one-time code or magic link (email, SMS). The
/// authenticator draws, stores and checks the codes (durably, shared by its replicas); the
/// connector only says how the connection's codes work and delivers them. The
/// authenticator's hooks are `AuthnApi::send_code` and `AuthnApi::code_login`.
#[async_trait]
pub trait CodeConnector: Send + Sync {
    /// The connection's code rules.
    fn settings(&self, conn: &Resolved) -> CodeSettings;

    /// Delivers `message`. A failure is [`ConnectorError::Unavailable`] naming the connection
    /// (the cause is logged, never the code).
    async fn deliver(&self, tenant: &str, conn: &Resolved, message: &CodeMessage<'_>) -> Result<(), ConnectorError>;

    /// Tries the connection step by step without sending anyone a code (TestConnection).
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        Err(test_not_supported(conn))
    }
}

/// Delivers the logout tokens of OpenID Connect Back-Channel Logout: the authenticator
/// signs a token for each client of an ended session (a logout, its user's deletion) that
/// has a back-channel logout URI, and hands it to this sender, which the binary registers
/// (the OpenID Connect connector crate's, over the egress policy), so that no HTTP client
/// enters the authenticator.
#[async_trait]
pub trait LogoutNotifier: Send + Sync {
    /// POSTs `logout_token` to the client's `uri` (`application/x-www-form-urlencoded`,
    /// `logout_token=…`); `Err` says why it was not delivered (refused, unreachable, or an
    /// answer other than 200 or 204).
    async fn notify(&self, uri: &str, logout_token: &str) -> Result<(), String>;
}

/// The connectors a process has, by strategy. Cloning shares them.
#[derive(Clone, Default)]
pub struct Connectors {
    password: HashMap<Strategy, Arc<dyn PasswordConnector>>,
    redirect: HashMap<Strategy, Arc<dyn RedirectConnector>>,
    code: HashMap<Strategy, Arc<dyn CodeConnector>>,
    logout: Option<Arc<dyn LogoutNotifier>>,
}

impl Connectors {
    /// No connector: every login is refused as of a strategy nobody serves.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `connector` for the password strategy `strategy`.
    pub fn with_password(mut self, strategy: Strategy, connector: Arc<dyn PasswordConnector>) -> Self {
        self.password.insert(strategy, connector);
        self
    }

    /// Registers `connector` for the redirect strategy `strategy`.
    pub fn with_redirect(mut self, strategy: Strategy, connector: Arc<dyn RedirectConnector>) -> Self {
        self.redirect.insert(strategy, connector);
        self
    }

    /// Registers `connector` for the one-time-code strategy `strategy`.
    pub fn with_code(mut self, strategy: Strategy, connector: Arc<dyn CodeConnector>) -> Self {
        self.code.insert(strategy, connector);
        self
    }

    /// Registers the sender of back-channel logout tokens.
    pub fn with_logout_notifier(mut self, notifier: Arc<dyn LogoutNotifier>) -> Self {
        self.logout = Some(notifier);
        self
    }

    /// The sender of back-channel logout tokens, if one is registered.
    pub fn logout_notifier(&self) -> Option<&Arc<dyn LogoutNotifier>> {
        self.logout.as_ref()
    }

    /// The password connector of `strategy`, if one is registered.
    pub fn password(&self, strategy: Strategy) -> Option<&Arc<dyn PasswordConnector>> {
        self.password.get(&strategy)
    }

    /// The redirect connector of `strategy`, if one is registered.
    pub fn redirect(&self, strategy: Strategy) -> Option<&Arc<dyn RedirectConnector>> {
        self.redirect.get(&strategy)
    }

    /// The one-time-code connector of `strategy`, if one is registered.
    pub fn code(&self, strategy: Strategy) -> Option<&Arc<dyn CodeConnector>> {
        self.code.get(&strategy)
    }
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |m: Vec<&Strategy>| m.into_iter().map(|s| s.as_str()).collect::<Vec<_>>();
        f.debug_struct("Connectors")
            .field("password", &names(self.password.keys().collect()))
            .field("redirect", &names(self.redirect.keys().collect()))
            .field("code", &names(self.code.keys().collect()))
            .field("logout_notifier", &self.logout.is_some())
            .finish()
    }
}
