//! The plain OAuth 2.0 social connectors: `facebook`, `github` and the generic `oauth2`
//! strategy, each a [`RedirectConnector`] over one shared flow (authorization code with a
//! PKCE S256 challenge, the code exchanged at the token endpoint) and a small profile reader
//! per provider. Providers that speak OpenID Connect (Google, LinkedIn, Microsoft, Apple)
//! are the OIDC connectors' (`postern-connector-oidc`).
//!
//! - `facebook`: Graph API `me` with the connection's `profile_fields` and the
//!   `appsecret_proof`; the app secret goes in the token request's body, as Facebook takes
//!   it.
//! - `github`: `/user`, then `/user/emails` for the primary address and whether GitHub
//!   verified it (the only source of `email_verified`); the secret in the body too.
//! - `oauth2`: the configured authorization, token and profile endpoints (required), the
//!   client authenticated with HTTP Basic (RFC 6749 §2.3.1), the profile read through the
//!   connection's `profile_mapping` (Auth0's custom social connection, with its
//!   `fetchUserProfile` script replaced by a declarative mapping).
//!
//! Every endpoint is the connection's when set, else the provider's well-known one
//! ([`postern_connection::Strategy::provider_endpoints`]). The user's id at the source is
//! the provider's user id, so users are `facebook|…`, `github|…`, `oauth2|…`, as in Auth0.
//!
//! Failures: a provider that fails, times out or cannot be reached is UNAVAILABLE naming the
//! connection; a refusal (the user cancelled, a refused code or token) is
//! [`ConnectorError::Denied`] and an answer that breaks the protocol (no user id, no token)
//! [`ConnectorError::Rejected`]: the login fails with nothing stored. No token or secret is
//! logged or put in a message; the provider's tokens are answered for the identity only when
//! the connection's `store_tokens` asks.
//!
//! # Layout
//!
//! - [`flow`]: the authorization URL, the callback's checks, the code exchange.
//! - [`profiles`]: each provider's profile read.
//! - [`http`]: the HTTP client (redirects off, bounded time and size) and failures.
//! - [`probe`]: `TestConnection`'s steps, which reach every endpoint without a user.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postern_connection::secret::names;
use postern_connection::{OAuth2Options, Options, Resolved, Strategy};
use postern_connector::{
    Begun, Completed, ConnectorError, Connectors, Egress, ExternalProfile, RedirectConnector, RedirectTransaction,
    TestReport, UpstreamTokens, async_trait,
};

pub mod flow;
pub mod http;
pub mod probe;
pub mod profiles;

use flow::Endpoints;
use http::Failure;

/// The provider a connector speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Facebook Login and the Graph API.
    Facebook,
    /// GitHub OAuth apps and the REST API.
    Github,
    /// Any OAuth 2.0 provider, endpoints and mapping configured.
    Generic,
}

impl Provider {
    /// The provider of a strategy, if this crate serves it.
    pub fn of(strategy: Strategy) -> Option<Provider> {
        match strategy {
            Strategy::Facebook => Some(Provider::Facebook),
            Strategy::Github => Some(Provider::Github),
            Strategy::Oauth2 => Some(Provider::Generic),
            _ => None,
        }
    }

    /// The strategy it serves.
    pub fn strategy(self) -> Strategy {
        match self {
            Provider::Facebook => Strategy::Facebook,
            Provider::Github => Strategy::Github,
            Provider::Generic => Strategy::Oauth2,
        }
    }

    /// Its name in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Provider::Facebook => "Facebook",
            Provider::Github => "GitHub",
            Provider::Generic => "the OAuth 2.0 provider",
        }
    }

    /// How scopes are joined in the authorization request: spaces (RFC 6749 §3.3), which
    /// Facebook's dialog takes as well as commas.
    fn scope_separator(self) -> &'static str {
        " "
    }

    /// Whether the client secret goes in the token request's body (as Facebook and GitHub
    /// document), else in HTTP Basic (RFC 6749 §2.3.1, what every server must take).
    fn secret_in_body(self) -> bool {
        matches!(self, Provider::Facebook | Provider::Github)
    }
}

/// A social connector: one provider, one HTTP client shared by its connections.
pub struct SocialConnector {
    provider: Provider,
    http: http::Http,
    timeout: Duration,
}

impl std::fmt::Debug for SocialConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocialConnector").field("provider", &self.provider).field("timeout", &self.timeout).finish()
    }
}

impl SocialConnector {
    /// The connector of `provider`, whose calls each take at most
    /// [`http::DEFAULT_TIMEOUT`], under the built-in egress policy.
    pub fn new(provider: Provider) -> Self {
        Self::with_timeout(provider, http::DEFAULT_TIMEOUT)
    }

    /// The connector of `provider`, whose calls each take at most `timeout`, under the
    /// built-in egress policy.
    pub fn with_timeout(provider: Provider, timeout: Duration) -> Self {
        Self::with_egress(provider, timeout, &Egress::default())
    }

    /// The connector of `provider`, whose calls each take at most `timeout` and connect only
    /// where `egress` allows.
    pub fn with_egress(provider: Provider, timeout: Duration, egress: &Egress) -> Self {
        Self { provider, http: egress.http_client(timeout), timeout }
    }

    /// The connection's options, endpoints and client secret.
    fn setup<'a>(&self, conn: &'a Resolved) -> Result<(&'a OAuth2Options, Endpoints, &'a str), Failure> {
        let spec = &conn.connection.spec;
        let Options::Oauth2(o) = &spec.options else {
            return Err(Failure::Internal(format!(
                "connection {:?} has no OAuth 2.0 options; the {} connector cannot serve it",
                spec.name,
                self.provider.strategy()
            )));
        };
        let known = self.provider.strategy().provider_endpoints();
        let pick = |set: &str, default: Option<&str>| -> String {
            if set.is_empty() { default.unwrap_or_default().to_owned() } else { set.to_owned() }
        };
        let mut scopes: Vec<String> =
            known.map(|k| k.scopes.iter().map(|s| (*s).to_owned()).collect()).unwrap_or_default();
        for s in &o.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let endpoints = Endpoints {
            authorization: pick(&o.authorization_endpoint, known.map(|k| k.authorization)),
            token: pick(&o.token_endpoint, known.map(|k| k.token)),
            userinfo: pick(&o.userinfo_endpoint, known.and_then(|k| k.userinfo)),
            emails: pick(&o.emails_endpoint, Some(OAuth2Options::GITHUB_EMAILS_ENDPOINT)),
            scopes,
        };
        for (what, url) in [
            ("authorization_endpoint", &endpoints.authorization),
            ("token_endpoint", &endpoints.token),
            ("userinfo_endpoint", &endpoints.userinfo),
        ] {
            if url.is_empty() {
                return Err(Failure::Internal(format!("connection {:?} has no {what}", spec.name)));
            }
        }
        let secret = conn.secret(names::CLIENT_SECRET).map(|s| s.expose()).unwrap_or_default();
        if secret.is_empty() {
            return Err(Failure::Internal(format!("connection {:?} has no client secret", spec.name)));
        }
        Ok((o, endpoints, secret))
    }

    /// The URL that starts a login at the provider.
    pub fn authorization_url(&self, conn: &Resolved, tx: &RedirectTransaction) -> Result<String, Failure> {
        let (o, endpoints, _) = self.setup(conn)?;
        flow::authorization_url(self.provider, &endpoints, &o.client_id, &tx.callback_url, tx)
    }

    /// The callback read into the user who logged in, with the tokens of the login.
    pub async fn login(
        &self,
        conn: &Resolved,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<(ExternalProfile, flow::Tokens), Failure> {
        let connection = conn.connection.spec.name.as_str();
        let code = flow::callback_code(connection, params, &tx.state)?;
        let (o, endpoints, secret) = self.setup(conn)?;
        let tokens = flow::exchange(
            &self.http,
            self.timeout,
            self.provider,
            connection,
            &endpoints,
            &o.client_id,
            secret,
            code,
            &tx.callback_url,
            &tx.code_verifier,
        )
        .await?;
        let read = profiles::Read {
            http: &self.http,
            timeout: self.timeout,
            connection,
            endpoints: &endpoints,
            access_token: &tokens.access_token,
        };
        let profile = match self.provider {
            Provider::Facebook => profiles::facebook(&read, &o.profile_fields, secret).await?,
            Provider::Github => profiles::github(&read).await?,
            Provider::Generic => profiles::generic(&read, o.profile_mapping.as_deref()).await?,
        };
        Ok((profile, tokens))
    }
}

/// The connector's error of a failure.
fn connector_error(f: Failure) -> ConnectorError {
    match f {
        Failure::Unavailable(message) => ConnectorError::Unavailable { reason: "UPSTREAM_UNAVAILABLE", message },
        Failure::Denied(message) => ConnectorError::Denied { message },
        Failure::Rejected(reason, message) => ConnectorError::Rejected { reason, message },
        Failure::Refused(message) => {
            ConnectorError::FailedPrecondition { reason: postern_connector::egress::REFUSED, message }
        }
        Failure::Internal(message) => ConnectorError::Internal(message),
    }
}

/// The tokens of a login as the identity keeps them (sealed, when the connection's
/// `store_tokens` asks).
fn upstream_tokens(t: flow::Tokens) -> UpstreamTokens {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    UpstreamTokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        id_token: t.id_token,
        token_type: t.token_type,
        scope: t.scope,
        expires_at: t.expires_in.map(|s| now.saturating_add(s)),
    }
}

#[async_trait]
impl RedirectConnector for SocialConnector {
    async fn begin(&self, _tenant: &str, conn: &Resolved, tx: &RedirectTransaction) -> Result<Begun, ConnectorError> {
        self.authorization_url(conn, tx).map(Begun::redirect).map_err(connector_error)
    }

    async fn complete(
        &self,
        _tenant: &str,
        conn: &Resolved,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<Completed, ConnectorError> {
        let (profile, tokens) = self.login(conn, params, tx).await.map_err(connector_error)?;
        let keep = matches!(&conn.connection.spec.options, Options::Oauth2(o) if o.store_tokens);
        Ok(Completed {
            profile,
            tokens: keep.then(|| upstream_tokens(tokens)),
            partial_profile: false,
            one_time_id: None,
            upstream_session: None,
        })
    }

    /// Tries the connection without a user ([`probe`]): its configuration, the
    /// authorization endpoint, the client's credentials at the token endpoint, the profile
    /// API (and GitHub's emails API).
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        Ok(probe::run(self, conn).await)
    }
}

/// Registers the social connectors (`facebook`, `github`, `oauth2`) into `connectors`.
/// They connect only where `egress` allows.
pub fn register(connectors: Connectors, egress: &Egress) -> Connectors {
    [Provider::Facebook, Provider::Github, Provider::Generic].into_iter().fold(connectors, |c, p| {
        c.with_redirect(p.strategy(), Arc::new(SocialConnector::with_egress(p, http::DEFAULT_TIMEOUT, egress)))
    })
}
