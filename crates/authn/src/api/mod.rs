//! The gRPC face of the authenticator: the service's one shared state ([`AuthnApi`]) and
//! its handlers, one module per service. Each handler establishes who calls, validates the
//! request, calls the orchestration ([`crate::login`]) or the store, and answers in the
//! contract's terms ([`convert`]).
//!
//! - [`authentication`]: `AuthenticationService` (signup, login, password changes).
//! - [`users`]: `UserService` (read, list, update, delete, unblock).
//! - [`signing_keys`]: `SigningKeyService` (keys, the key set, discovery, userinfo).
//! - [`convert`]: the authenticator's types in the contract's terms.

pub mod authentication;
pub mod convert;
pub mod signing_keys;
pub mod users;

use std::sync::Arc;

use postern_proto::tenant::v1 as tenant_pb;
use tonic::Request;

use crate::cache::ConnectionCache;
use crate::clients::ClientChecks;
use crate::keys::KeyRing;
use crate::store::Store;
use crate::{Config, Peer};

pub use convert::user_to_pb;

/// The authenticator's state, shared by every handler and by the login orchestration.
/// Cloning shares it.
#[derive(Clone)]
pub struct AuthnApi {
    pub(crate) store: Store,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) cache: ConnectionCache,
    /// The connectors, by strategy.
    pub(crate) connectors: postern_connector::Connectors,
    pub(crate) tenant_clients: tenant_pb::client_service_client::ClientServiceClient<Peer>,
    /// The client checks that passed, retired by the tenant event log.
    pub(crate) client_checks: Arc<ClientChecks>,
    pub(crate) tenants: tenant_pb::tenant_service_client::TenantServiceClient<Peer>,
    /// The tenant service's APIs, asked for the `audience` of user logins.
    pub(crate) tenant_apis: tenant_pb::resource_server_service_client::ResourceServerServiceClient<Peer>,
    /// The registry, asked for the connections the hosted login page lists.
    pub(crate) registry: postern_proto::connections::v1::connection_service_client::ConnectionServiceClient<Peer>,
    pub(crate) config: Config,
    /// The audit events waiting for delivery to the tenant service ([`crate::audit`]).
    pub(crate) outbox: postern_common::audit::Outbox,
}

impl AuthnApi {
    /// Handlers over `store`, calling the tenant service and the registry through `tenant`
    /// and `registry`. Starts following the registry's change stream.
    pub fn new(store: Store, tenant: Peer, registry: Peer, config: Config) -> Self {
        let keys =
            Arc::new(KeyRing::new(store.clone(), config.master_key.clone(), config.lifetimes, config.clock.clone()));
        let client_checks = Arc::new(ClientChecks::new());
        tokio::spawn(crate::tenants::follow(
            store.clone(),
            Arc::downgrade(&keys),
            client_checks.clone(),
            tenant.clone(),
        ));
        let cache = ConnectionCache::new(registry.clone(), store.clone(), config.cache_connections);
        let outbox = store.outbox().clone();
        outbox.spawn_relay(tenant.clone());
        Self {
            outbox,
            store,
            keys,
            cache,
            connectors: config.connectors.clone(),
            tenant_clients: tenant_pb::client_service_client::ClientServiceClient::new(tenant.clone()),
            client_checks,
            tenant_apis: tenant_pb::resource_server_service_client::ResourceServerServiceClient::new(tenant.clone()),
            tenants: tenant_pb::tenant_service_client::TenantServiceClient::new(tenant),
            registry: postern_proto::connections::v1::connection_service_client::ConnectionServiceClient::new(registry),
            config,
        }
    }

    /// The connection cache (to measure how often the registry is asked).
    pub fn connection_cache(&self) -> &ConnectionCache {
        &self.cache
    }
}

/// The address a call counts against (brute-force protection, the rate limit per address):
/// the `ip` the application reports, else the caller's (see [`address`]). The reported one
/// counts only from a caller that proved it is the application's backend, by an API key or by
/// the client's secret (whose check follows), as Auth0 trusts `auth0-forwarded-for` only from a
/// confidential client. Without either (a public client's call, which anyone may make) a
/// reported address would let anyone step around a block of their own address, so it is
/// refused and the call counts against its own address.
fn reported_address<T>(
    req: &Request<T>,
    p: &postern_common::principal::Principal,
    client_secret: &str,
    reported: &str,
) -> Result<String, tonic::Status> {
    let trusted = *p != postern_common::principal::Principal::Anonymous || !client_secret.is_empty();
    if !trusted && !reported.trim().is_empty() {
        return Err(postern_common::error::invalid_field(
            "ip",
            "is taken only from the application's backend: with an API key, or with the client's secret; a call \
             without either counts against its own address, so leave it empty",
        ));
    }
    address(req, reported)
}

/// The address `reported`, parsed and in its one canonical spelling (an IPv4-mapped IPv6
/// address is the IPv4 address, so `::ffff:127.0.0.1` is not a way around a block of
/// `127.0.0.1`), else the caller's. INVALID_ARGUMENT when the reported one is not an address.
fn address<T>(req: &Request<T>, reported: &str) -> Result<String, tonic::Status> {
    let reported = reported.trim();
    if !reported.is_empty() {
        return match reported.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(ip.to_canonical().to_string()),
            Err(_) => Err(postern_common::error::invalid_field(
                "ip",
                "must be an IPv4 or IPv6 address (203.0.113.7, 2001:db8::7), or empty for the caller's",
            )),
        };
    }
    Ok(postern_common::principal::peer_addr(req)
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_canonical().to_string()))
}
