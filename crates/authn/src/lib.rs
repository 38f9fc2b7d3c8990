//! The authenticator: the users of each tenant, the login through a connection, and the
//! tokens a successful login issues.
//!
//! A login checks the client (the tenant service's internal `VerifyClientSecret`), resolves
//! the connection (cached, kept fresh by the connection registry's watch stream), runs the
//! connection's strategy, creates or updates the user and its identity under the
//! connection's profile-sync rule, and signs an ID token with the tenant's current key; the
//! access token is a JWT signed with the same key for a login that names an API, else an
//! opaque token sealed under the master key, good at the tenant's `/userinfo`. The database strategy keeps Argon2id hashes in this service's own
//! store, or asks the customer's store through the custom database contract
//! (`postern.customdb.v1`), optionally importing users lazily.
//!
//! # Layout
//!
//! - [`api`]: the service's shared state ([`AuthnApi`]) and the tonic handlers of
//!   `AuthenticationService`, `UserService` and `SigningKeyService`, one module each, with
//!   the conversions to the contract.
//! - [`login`]: the login orchestration the handlers and the OpenID provider call: the
//!   client check, the password login, the signup, the tokens of a login.
//! - [`domain`]: users, identities, profiles and the profile-sync rule.
//! - [`linking`]: account linking and unlinking (Auth0's): a secondary user's identities
//!   moved to a primary user, one identity given back as a user of its own.
//! - [`store`]: sqlx storage; `migrations/{sqlite,postgres}` beside `src/`.
//! - [`cache`]: connections resolved through the registry, converted at this edge into the
//!   shared typed model (`postern_connection::Resolved`), cached and kept fresh.
//! - [`clients`]: client checks that passed, remembered until the tenant event log retires
//!   them.
//! - [`keys`]: the tenants' signing keys, sealed at rest, opened and cached.
//! - [`passwordless`]: the one-time-code family's logins (email, SMS): codes and magic
//!   links drawn, stored hashed, counted and checked here; connectors only deliver.
//! - [`oauth`]: the OpenID provider's steps (`OAuthService`): authorization requests, the
//!   hosted page's login and signup, SSO sessions and logout, the token grants and revocation.
//! - [`tokens`]: signing keys (RS256, EdDSA), their JSON Web Key Set, and the signing and
//!   verification of ID and access tokens.
//! - `audit`: the audit events of logins, signups, password changes, blocks and tokens,
//!   written to the outbox that the relay delivers to the tenant service's audit log.
//! - [`bruteforce`]: the counting rule of brute-force protection, which the store applies
//!   in one atomic statement on PostgreSQL.
//! - [`attempts`]: on SQLite, the attempts in flight counted in this process, so that only
//!   settled failures are written.
//! - `status`: every error in the contract's terms (gRPC codes and `ErrorInfo` reasons).
//! - `validate`: the field checks shared by the handlers and the orchestration's inputs.
//! - `tenants`: follows the tenant service's deletion log (a deleted tenant leaves nothing).
//! - [`rotation`]: a master-key rotation: long-lived sealed values moved under the new key.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod attempts;
mod audit;
mod backchannel;
pub mod bruteforce;
pub mod cache;
pub mod clients;
pub mod domain;
pub mod keys;
pub mod linking;
pub mod login;
pub mod oauth;
pub mod passwordless;
pub mod rotation;
mod status;
pub mod store;
mod tenants;
pub mod tokens;
mod validate;

use postern_common::principal::{InternalKey, Principal, PrincipalLayer, SignLayer, SignService};
use postern_common::scope::{MethodScopes, Need, Scope};
use postern_common::seal::MasterKey;
use postern_common::server::HttpService;
use postern_proto::authn::v1 as pb;
use tower::Layer;

pub use api::AuthnApi;
pub use login::{IssueTokens, PasswordLogin, SignupInput};
pub use store::Store;

/// The gRPC services this crate serves, by full name.
pub const SERVICES: &[&str] = &[
    "postern.authn.v1.AuthenticationService",
    "postern.authn.v1.UserService",
    "postern.authn.v1.SigningKeyService",
    "postern.authn.v1.OAuthService",
];

/// The RPCs of this service that only other Postern services may call: the browser steps of
/// the OpenID provider, which only its HTTP routes (`postern-provider`) call. (The key set
/// and discovery documents are public, and served over HTTP by the gateway.)
pub const INTERNAL_METHODS: &[&str] = &[
    "/postern.authn.v1.OAuthService/StartAuthorization",
    "/postern.authn.v1.OAuthService/GetLoginPage",
    "/postern.authn.v1.OAuthService/SubmitLogin",
    "/postern.authn.v1.OAuthService/SubmitSignup",
    "/postern.authn.v1.OAuthService/EndSession",
    "/postern.authn.v1.OAuthService/StartUpstreamLogin",
    "/postern.authn.v1.OAuthService/CompleteUpstreamLogin",
    "/postern.authn.v1.OAuthService/SubmitPasswordlessStart",
    "/postern.authn.v1.OAuthService/SubmitPasswordlessCode",
    "/postern.authn.v1.OAuthService/CompleteMagicLink",
    "/postern.authn.v1.OAuthService/GetServiceProviderMetadata",
    "/postern.authn.v1.OAuthService/CompleteUpstreamLogout",
];

/// The RPCs of this service a caller may reach without an API key, as the gateway's
/// anonymous principal (the gateway lets such a caller through only to these, and
/// [`routes`] refuses it everywhere else):
/// - the documented-public key set, discovery document and userinfo;
/// - `Login` and `Signup`, in which the application authenticates as itself: its client id
///   and, for a confidential client, its secret (a public client, SPA or native, has none),
///   and which act only for that client. `ChangePassword` sets a password without knowing
///   the old one, a management operation: it needs an API key, as do `UserService` and key
///   rotation;
/// - the token endpoint's twins `ExchangeToken` and `RevokeToken`, where the client's own
///   credentials (or a public client's PKCE verifier) count;
/// - `StartPasswordless` and `VerifyPasswordless`, where the application authenticates as
///   itself as in `Login`.
pub const PUBLIC_METHODS: &[&str] = &[
    "/postern.authn.v1.SigningKeyService/GetJwks",
    "/postern.authn.v1.SigningKeyService/GetOpenIdConfiguration",
    "/postern.authn.v1.SigningKeyService/GetUserInfo",
    "/postern.authn.v1.AuthenticationService/Login",
    "/postern.authn.v1.AuthenticationService/Signup",
    "/postern.authn.v1.AuthenticationService/StartPasswordless",
    "/postern.authn.v1.AuthenticationService/VerifyPasswordless",
    "/postern.authn.v1.OAuthService/ExchangeToken",
    "/postern.authn.v1.OAuthService/RevokeToken",
];

/// What each RPC of this service needs of a tenant API key's scopes, checked by the
/// principal layer before any handler runs (a test fails for a method missing here).
pub const METHOD_SCOPES: MethodScopes = &[
    ("/postern.authn.v1.AuthenticationService/Signup", Need::Write(Scope::Authentication)),
    ("/postern.authn.v1.AuthenticationService/Login", Need::Write(Scope::Authentication)),
    ("/postern.authn.v1.AuthenticationService/ChangePassword", Need::Write(Scope::Authentication)),
    ("/postern.authn.v1.AuthenticationService/TestConnection", Need::Write(Scope::Connections)),
    ("/postern.authn.v1.AuthenticationService/StartPasswordless", Need::Write(Scope::Authentication)),
    ("/postern.authn.v1.AuthenticationService/VerifyPasswordless", Need::Write(Scope::Authentication)),
    ("/postern.authn.v1.UserService/GetUser", Need::Read(Scope::Users)),
    ("/postern.authn.v1.UserService/ListUsers", Need::Read(Scope::Users)),
    ("/postern.authn.v1.UserService/UpdateUser", Need::Write(Scope::Users)),
    ("/postern.authn.v1.UserService/DeleteUser", Need::Write(Scope::Users)),
    ("/postern.authn.v1.UserService/UnblockUser", Need::Write(Scope::Users)),
    ("/postern.authn.v1.UserService/LinkUserAccount", Need::Write(Scope::Users)),
    ("/postern.authn.v1.UserService/UnlinkUserAccount", Need::Write(Scope::Users)),
    ("/postern.authn.v1.SigningKeyService/ListSigningKeys", Need::Read(Scope::SigningKeys)),
    ("/postern.authn.v1.SigningKeyService/RotateSigningKey", Need::Write(Scope::SigningKeys)),
    ("/postern.authn.v1.SigningKeyService/GetJwks", Need::Nothing),
    ("/postern.authn.v1.SigningKeyService/GetOpenIdConfiguration", Need::Nothing),
    ("/postern.authn.v1.SigningKeyService/GetUserInfo", Need::Nothing),
    ("/postern.authn.v1.OAuthService/StartAuthorization", Need::Nothing),
    ("/postern.authn.v1.OAuthService/GetLoginPage", Need::Nothing),
    ("/postern.authn.v1.OAuthService/SubmitLogin", Need::Nothing),
    ("/postern.authn.v1.OAuthService/SubmitSignup", Need::Nothing),
    ("/postern.authn.v1.OAuthService/EndSession", Need::Nothing),
    ("/postern.authn.v1.OAuthService/ExchangeToken", Need::Nothing),
    ("/postern.authn.v1.OAuthService/RevokeToken", Need::Nothing),
    ("/postern.authn.v1.OAuthService/StartUpstreamLogin", Need::Nothing),
    ("/postern.authn.v1.OAuthService/CompleteUpstreamLogin", Need::Nothing),
    ("/postern.authn.v1.OAuthService/SubmitPasswordlessStart", Need::Nothing),
    ("/postern.authn.v1.OAuthService/SubmitPasswordlessCode", Need::Nothing),
    ("/postern.authn.v1.OAuthService/CompleteMagicLink", Need::Nothing),
    ("/postern.authn.v1.OAuthService/GetServiceProviderMetadata", Need::Nothing),
    ("/postern.authn.v1.OAuthService/CompleteUpstreamLogout", Need::Nothing),
];

/// Another Postern service, called as `Service("authn")`.
pub type Peer = SignService<HttpService>;

/// The public URL, settable once after start.
pub type PublicUrl = std::sync::Arc<std::sync::OnceLock<String>>;

/// How the authenticator behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The public URL of the gateway's HTTP port (`https://id.example.com`): the tokens'
    /// issuer is this plus `/<tenant>/`. Set once, possibly after start (when the gateway
    /// binds a port picked by the system).
    pub public_url: PublicUrl,
    /// Seals the signing keys at rest.
    pub master_key: MasterKey,
    /// How long tokens are valid.
    pub lifetimes: tokens::Lifetimes,
    /// Whether resolved connections are cached (kept fresh by the registry's watch stream).
    /// Off only to measure what the cache saves.
    pub cache_connections: bool,
    /// Where the OpenID provider's expiry rules (codes, sessions, refresh tokens) read the
    /// time: the system clock, or a manual one in tests.
    pub clock: postern_common::time::Clock,
    /// The connectors, by strategy: a connection whose strategy has none cannot log anyone
    /// in (the binary registers every connector crate; see `postern_connector`).
    pub connectors: postern_connector::Connectors,
}

/// The services the authenticator calls.
#[derive(Clone)]
pub struct Peers {
    /// The tenant service.
    pub tenant: HttpService,
    /// The connection registry.
    pub registry: HttpService,
}

impl Peers {
    fn signed(svc: &HttpService, key: &InternalKey) -> Peer {
        SignLayer::new(key.clone(), Principal::Service("authn".into())).layer(svc.clone())
    }
}

/// Builds the handlers (and starts following the registry's change stream). Call inside a
/// Tokio runtime.
pub fn api(store: Store, peers: &Peers, key: &InternalKey, config: Config) -> AuthnApi {
    AuthnApi::new(store, Peers::signed(&peers.tenant, key), Peers::signed(&peers.registry, key), config)
}

/// The service's routes, each behind the check of the caller's signed principal.
pub fn routes(api: AuthnApi, key: InternalKey) -> tonic::service::Routes {
    let layer = PrincipalLayer::new(key).public(PUBLIC_METHODS).scopes(METHOD_SCOPES);
    tonic::service::Routes::new(
        layer.layer(pb::authentication_service_server::AuthenticationServiceServer::new(api.clone())),
    )
    .add_service(layer.layer(pb::user_service_server::UserServiceServer::new(api.clone())))
    .add_service(layer.layer(pb::signing_key_service_server::SigningKeyServiceServer::new(api.clone())))
    .add_service(layer.layer(pb::o_auth_service_server::OAuthServiceServer::new(api.oauth())))
}
