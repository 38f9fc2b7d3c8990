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

use postern_common::validate::truncate;
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
    /// The registry, asked for the connections the hosted login page lists.
    pub(crate) registry: postern_proto::connections::v1::connection_service_client::ConnectionServiceClient<Peer>,
    pub(crate) config: Config,
}

impl AuthnApi {
    /// Handlers over `store`, calling the tenant service and the registry through `tenant`
    /// and `registry`. Starts following the registry's change stream.
    pub fn new(store: Store, tenant: Peer, registry: Peer, config: Config) -> Self {
        let keys = Arc::new(KeyRing::new(store.clone(), config.master_key.clone(), config.lifetimes));
        let client_checks = Arc::new(ClientChecks::new());
        tokio::spawn(crate::tenants::follow(
            store.clone(),
            Arc::downgrade(&keys),
            client_checks.clone(),
            tenant.clone(),
        ));
        let cache = ConnectionCache::new(registry.clone(), store.clone(), config.cache_connections);
        Self {
            store,
            keys,
            cache,
            connectors: config.connectors.clone(),
            tenant_clients: tenant_pb::client_service_client::ClientServiceClient::new(tenant.clone()),
            client_checks,
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

/// The address brute-force protection counts against: the one the application reports,
/// else the caller's.
fn address<T>(req: &Request<T>, reported: &str) -> String {
    if !reported.trim().is_empty() {
        return truncate(reported.trim(), 64).to_owned();
    }
    postern_common::principal::peer_addr(req).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}
