//! The tenant service (`postern.tenant.v1`): tenants, the applications (clients) registered
//! in them, the management API keys that reach them, and the admin key. It calls no other
//! service.
//!
//! # Layout
//! - [`api`]: the tonic handlers of `TenantService`, `ClientService`, `ApiKeyService`,
//!   `ResourceServerService` (APIs) and `ClientGrantService`.
//! - [`audit`]: the tonic handlers of `AuditService`: the audit log of every tenant, which
//!   this service owns (its own changes are recorded in their transactions; the other
//!   services deliver theirs from their outboxes through `AppendAuditEvents`).
//! - [`domain`]: types, validation, and conversion from and to the contract.
//! - [`store`]: sqlx storage; `migrations/{sqlite,postgres}` beside `src/`.
//! - [`routes`] builds the service's gRPC routes behind the principal check, the same in
//!   the all-in-one process and when the service runs alone.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod domain;
pub mod store;

use std::path::Path;

use postern_common::files::Existing;
use postern_common::principal::{InternalKey, PrincipalLayer};
use postern_common::scope::{MethodScopes, Need, Scope};
use postern_proto::tenant::v1 as pb;
use tower::Layer;

pub use api::TenantApi;
pub use store::Store;

/// The gRPC services this crate serves, by full name.
pub const SERVICES: &[&str] = &[
    "postern.tenant.v1.TenantService",
    "postern.tenant.v1.ClientService",
    "postern.tenant.v1.ApiKeyService",
    "postern.tenant.v1.ResourceServerService",
    "postern.tenant.v1.ClientGrantService",
    "postern.tenant.v1.AuditService",
];

/// The RPCs of this service that only other Postern services may call.
pub const INTERNAL_METHODS: &[&str] = &[
    "/postern.tenant.v1.ApiKeyService/AuthenticateKey",
    "/postern.tenant.v1.ClientService/VerifyClientSecret",
    "/postern.tenant.v1.ClientService/ResolveClient",
    "/postern.tenant.v1.TenantService/WatchTenantEvents",
    "/postern.tenant.v1.AuditService/AppendAuditEvents",
];

/// The RPCs of this service a caller may reach without an API key: none.
pub const PUBLIC_METHODS: &[&str] = &[];

/// What each RPC of this service needs of a tenant API key's scopes, checked by the
/// principal layer before any handler runs (a test fails for a method missing here).
pub const METHOD_SCOPES: MethodScopes = &[
    // Creating and deleting tenants needs the admin key, whatever a tenant key's scopes.
    ("/postern.tenant.v1.TenantService/CreateTenant", Need::Write(Scope::Tenant)),
    ("/postern.tenant.v1.TenantService/GetTenant", Need::Read(Scope::Tenant)),
    ("/postern.tenant.v1.TenantService/ListTenants", Need::Read(Scope::Tenant)),
    ("/postern.tenant.v1.TenantService/UpdateTenant", Need::Write(Scope::Tenant)),
    ("/postern.tenant.v1.TenantService/DeleteTenant", Need::Write(Scope::Tenant)),
    ("/postern.tenant.v1.TenantService/WatchTenantEvents", Need::Nothing),
    ("/postern.tenant.v1.ClientService/CreateClient", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/GetClient", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/ListClients", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/UpdateClient", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/DeleteClient", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/RotateClientSecret", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientService/VerifyClientSecret", Need::Nothing),
    ("/postern.tenant.v1.ClientService/ResolveClient", Need::Nothing),
    // APIs and client grants decide what clients get tokens for: the clients' scope.
    ("/postern.tenant.v1.ResourceServerService/CreateResourceServer", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ResourceServerService/GetResourceServer", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ResourceServerService/ListResourceServers", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ResourceServerService/UpdateResourceServer", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ResourceServerService/DeleteResourceServer", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientGrantService/CreateClientGrant", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientGrantService/GetClientGrant", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ClientGrantService/ListClientGrants", Need::Read(Scope::Clients)),
    ("/postern.tenant.v1.ClientGrantService/UpdateClientGrant", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ClientGrantService/DeleteClientGrant", Need::Write(Scope::Clients)),
    ("/postern.tenant.v1.ApiKeyService/CreateApiKey", Need::Write(Scope::Tenant)),
    ("/postern.tenant.v1.ApiKeyService/ListApiKeys", Need::Read(Scope::Tenant)),
    ("/postern.tenant.v1.ApiKeyService/RevokeApiKey", Need::Write(Scope::Tenant)),
    ("/postern.tenant.v1.ApiKeyService/AuthenticateKey", Need::Nothing),
    // The audit log is read with the tenant's scope (or a read-only key).
    ("/postern.tenant.v1.AuditService/ListAuditEvents", Need::Read(Scope::Tenant)),
    ("/postern.tenant.v1.AuditService/WatchAuditEvents", Need::Read(Scope::Tenant)),
    ("/postern.tenant.v1.AuditService/AppendAuditEvents", Need::Nothing),
];

/// The service's routes, each behind the check of the caller's signed principal.
pub fn routes(store: Store, key: InternalKey) -> tonic::service::Routes {
    let api = TenantApi::new(store);
    let layer = PrincipalLayer::new(key).public(PUBLIC_METHODS).scopes(METHOD_SCOPES);
    tonic::service::Routes::new(layer.layer(pb::tenant_service_server::TenantServiceServer::new(api.clone())))
        .add_service(layer.layer(pb::client_service_server::ClientServiceServer::new(api.clone())))
        .add_service(layer.layer(pb::api_key_service_server::ApiKeyServiceServer::new(api.clone())))
        .add_service(layer.layer(pb::resource_server_service_server::ResourceServerServiceServer::new(api.clone())))
        .add_service(layer.layer(pb::client_grant_service_server::ClientGrantServiceServer::new(api.clone())))
        .add_service(layer.layer(pb::audit_service_server::AuditServiceServer::new(api)))
}

/// Makes sure an admin key exists. `configured` (from `POSTERN_ADMIN_KEY`) replaces the
/// stored one; otherwise the first start generates a key, keeps only its hash, writes the
/// key to `<data_dir>/admin-key` (mode 0600) and returns it so that it is printed once.
pub async fn ensure_admin_key(
    store: &Store,
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<Option<String>, BootstrapError> {
    if let Some(key) = configured {
        if key.len() < 16 {
            return Err(BootstrapError::WeakAdminKey);
        }
        store.set_admin_key_hash(&postern_common::ids::secret_hash(key)).await?;
        return Ok(None);
    }
    if store.admin_key_hash().await?.is_some() {
        return Ok(None);
    }
    let key = format!("{}{}", api::ADMIN_KEY_PREFIX, postern_common::ids::random_alphanumeric(40));
    postern_common::files::private_dir(data_dir).map_err(BootstrapError::Io)?;
    let path = data_dir.join("admin-key");
    postern_common::files::write_private(&path, format!("{key}\n").as_bytes(), Existing::Replace)
        .map_err(BootstrapError::Io)?;
    store.set_admin_key_hash(&postern_common::ids::secret_hash(&key)).await?;
    Ok(Some(key))
}

/// A failure while preparing the admin key.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// `POSTERN_ADMIN_KEY` is too short to be a secret.
    #[error("POSTERN_ADMIN_KEY must be at least 16 characters")]
    WeakAdminKey,
    /// The key file could not be written.
    #[error("cannot write the admin key file: {0}")]
    Io(std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}
