//! Each tenant's OpenID provider on the gateway's HTTP port. Every route is tenant-scoped
//! (`/<tenant>/…`) and reaches the services only through their RPCs (the authenticator's
//! `OAuthService` and `SigningKeyService`, as `Service("gateway")`), so it works the same in
//! the all-in-one process and in split mode. The gateway's binary mounts [`router`].
//!
//! # Layout
//! - [`documents`]: `/.well-known/jwks.json`, `/.well-known/openid-configuration` (briefly
//!   cached), `/userinfo`, and a `samlp` connection's SP metadata (`GET
//!   /samlp/metadata?connection=<name>`).
//! - [`browser`]: `GET /authorize`, the hosted login page (`GET|POST /login`,
//!   `POST /signup`), redirect logins (`POST /login/upstream`, `GET|POST
//!   /login/callback`), `GET /v2/logout` (Auth0's) and `GET /oidc/logout` (the OpenID
//!   `end_session_endpoint`), and `GET|POST /logout/callback` (where an upstream answers a
//!   federated logout: a SAML IdP's `LogoutResponse`).
//! - [`passwordless`]: the hosted page's passwordless forms (`POST /passwordless/start`,
//!   `POST /passwordless/verify`) and magic links (`GET /passwordless/verify_redirect`).
//! - [`token`]: `POST /oauth/token` and `POST /oauth/revoke`, with RFC 6749 5.2 errors.
//! - [`html`]: the templates (minijinja, HTML-escaped) and the headers every page carries.
//!
//! # CORS
//! Browser JavaScript (a single-page application's OpenID library) reads the discovery
//! document, the key set and `/userinfo` from any origin: they are public, or carry their
//! credential (a bearer token) explicitly, never a cookie. The token and revocation endpoints
//! answer a preflight for any origin and pass the request's `Origin` to the authenticator,
//! which refuses one the client does not allow (its callbacks' origins and its
//! `allowed_origins`), so that only those origins get tokens; the refusal itself is readable
//! by the page, naming the origin. No endpoint allows credentials (cookies) across origins.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod browser;
pub mod documents;
pub mod html;
pub mod passwordless;
pub mod token;

use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use axum::routing::{get, post};
use postern_common::principal::{InternalKey, Principal, SignLayer, SignService};
use postern_common::server::HttpService;
use postern_proto::authn::v1 as pb;
use tower::Layer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Picks a healthy endpoint of the authenticator for each call; `None` when none is up.
pub type Backend = Arc<dyn Fn() -> Option<HttpService> + Send + Sync>;

/// How the provider behaves.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The authenticator's endpoints.
    pub authn: Backend,
    /// Signs the provider's calls as `Service("gateway")`.
    pub internal_key: InternalKey,
    /// Whether the public URL is `https`: cookies are then `Secure`.
    pub secure_cookies: bool,
    /// Retires the cached documents of a tenant when the tenant event log says it changed
    /// (the gateway's [`Coherence`](postern_common::coherence::Coherence)); nothing is cached
    /// while it is not live.
    pub coherence: postern_common::coherence::Coherence,
}

type Signed = SignService<HttpService>;

/// The provider's shared state.
pub(crate) struct Provider {
    config: ProviderConfig,
    documents: documents::Cache,
    pages: html::Pages,
}

impl Provider {
    fn signed(&self) -> Option<Signed> {
        let svc = (self.config.authn)()?;
        Some(SignLayer::new(self.config.internal_key.clone(), Principal::Service("gateway".into())).layer(svc))
    }

    /// A client of `OAuthService`; `None` when the authenticator is unreachable.
    pub(crate) fn oauth(&self) -> Option<pb::o_auth_service_client::OAuthServiceClient<Signed>> {
        self.signed().map(pb::o_auth_service_client::OAuthServiceClient::new)
    }

    /// A client of `SigningKeyService`; `None` when the authenticator is unreachable.
    pub(crate) fn signing_keys(&self) -> Option<pb::signing_key_service_client::SigningKeyServiceClient<Signed>> {
        self.signed().map(pb::signing_key_service_client::SigningKeyServiceClient::new)
    }
}

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS of the documents any page may read: the discovery document, the key set, and
/// `/userinfo` (its credential is the bearer token the page holds).
fn cors_public() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// CORS of the token and revocation endpoints: the request's origin is answered (with
/// `Vary: Origin`), and the authenticator refuses an origin the client does not allow.
fn cors_clients() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::POST])
        // `Auth0-Client`: the telemetry header Auth0's SDKs send.
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("auth0-client")])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// The provider's routes.
pub fn router(config: ProviderConfig) -> Router {
    let state = Arc::new(Provider { config, documents: documents::Cache::default(), pages: html::Pages::new() });
    Router::new()
        .route("/{tenant}/.well-known/jwks.json", get(documents::jwks).layer(cors_public()))
        .route("/{tenant}/.well-known/openid-configuration", get(documents::discovery).layer(cors_public()))
        .route("/{tenant}/userinfo", get(documents::userinfo).post(documents::userinfo).layer(cors_public()))
        .route("/{tenant}/authorize", get(browser::authorize))
        .route("/{tenant}/login", get(browser::login_page).post(browser::login))
        .route("/{tenant}/signup", post(browser::signup))
        .route("/{tenant}/login/upstream", post(browser::login_upstream))
        .route("/{tenant}/login/callback", get(browser::callback_get).post(browser::callback_post))
        .route("/{tenant}/samlp/metadata", get(documents::samlp_metadata))
        .route("/{tenant}/logout/callback", get(browser::logout_callback_get).post(browser::logout_callback_post))
        .route("/{tenant}/v2/logout", get(browser::logout))
        .route("/{tenant}/oidc/logout", get(browser::logout))
        .route("/{tenant}/passwordless/start", post(passwordless::start))
        .route("/{tenant}/passwordless/verify", post(passwordless::verify))
        .route("/{tenant}/passwordless/verify_redirect", get(passwordless::verify_redirect))
        .route("/{tenant}/oauth/token", post(token::token).layer(cors_clients()))
        .route("/{tenant}/oauth/revoke", post(token::revoke).layer(cors_clients()))
        .with_state(state)
}
