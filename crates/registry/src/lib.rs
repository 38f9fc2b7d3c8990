//! The connection registry: the sources of users (connections) that a tenant configures once
//! and shares among its clients, their enablement per client, and their secrets, encrypted
//! at rest.
//!
//! A connection has a `strategy` in Auth0's wire names (`auth0`, `google-oauth2`, `ldap`,
//! `samlp`, `email`, …) that fixes its category and the family of its options. Secrets
//! (client secrets, bind passwords, private keys, SMTP and SMS credentials) never leave the
//! registry except through the internal `ResolveConnection`: reads show only that each is set.
//!
//! The registry calls the tenant service (signed as `Service("registry")`) to check that a
//! tenant exists before creating connections in it and that a client exists before enabling
//! a connection for it, and follows the tenant service's log of deletions so that deleted
//! clients leave every connection and deleted tenants take their connections with them.
//!
//! # Layout
//!
//! - [`api`]: the tonic handlers of `ConnectionService`.
//! - [`domain`]: connections as Rust types, the catalogue of strategies, the validation of
//!   every field, the conversions from and to the `postern.connections.v1` contract, and the
//!   update-mask rules. Pure: no I/O.
//! - [`secrets`]: encryption at rest of a connection's secrets (XChaCha20-Poly1305 under the
//!   master key, bound to the tenant and the connection).
//! - [`store`]: sqlx storage; `migrations/{sqlite,postgres}` beside `src/`.
//! - [`watch`]: the live change stream behind `WatchConnections`.
//! - `tenant_events`: the follower of the tenant service's deletions.
//! - [`Registry`] assembles them; its [`Registry::routes`] are the same in the all-in-one
//!   process and when the registry runs alone.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
mod change_log;
pub mod domain;
pub mod secrets;
pub mod store;
mod tenant_events;
pub mod watch;

use postern_common::principal::{InternalKey, Principal, PrincipalLayer, SignLayer};
use postern_common::scope::{MethodScopes, Need, Scope};
use postern_common::server::HttpService;
use postern_proto::connections::v1 as pb;
use tower::Layer;

pub use api::RegistryApi;
pub use secrets::{ConnectionSeal, MasterKey};
pub use store::Store;

/// The gRPC services this crate serves, by full name.
pub const SERVICES: &[&str] = &["postern.connections.v1.ConnectionService"];

/// The RPCs of this service that only other Postern services may call.
pub const INTERNAL_METHODS: &[&str] = &["/postern.connections.v1.ConnectionService/ResolveConnection"];

/// The RPCs of this service a caller may reach without an API key: none.
pub const PUBLIC_METHODS: &[&str] = &[];

/// What each RPC of this service needs of a tenant API key's scopes, checked by the
/// principal layer before any handler runs (a test fails for a method missing here).
pub const METHOD_SCOPES: MethodScopes = &[
    ("/postern.connections.v1.ConnectionService/CreateConnection", Need::Write(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/GetConnection", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/ListConnections", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/UpdateConnection", Need::Write(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/DeleteConnection", Need::Write(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/EnableClient", Need::Write(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/DisableClient", Need::Write(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/ListConnectionClients", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/ListClientConnections", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/DiscoverConnection", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/WatchConnections", Need::Read(Scope::Connections)),
    ("/postern.connections.v1.ConnectionService/ResolveConnection", Need::Nothing),
];

/// The principal the registry signs its calls to the tenant service with.
pub const SERVICE_NAME: &str = "registry";

/// Why the registry cannot use its master key with its database.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The database was written with another master key.
    #[error(
        "the master key does not match the one this registry's database was first used with; \
         start with that key (POSTERN_MASTER_KEY or <data-dir>/master-key), or, to rotate it, give it in \
         POSTERN_PREVIOUS_MASTER_KEYS beside the new one; otherwise every connection secret is unreadable"
    )]
    Mismatch,
    /// The check value could not be sealed.
    #[error(transparent)]
    Seal(#[from] secrets::SecretsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The associated data of the master key's check value (no tenant or connection has these).
const CHECK_TENANT: &str = "-";
const CHECK_ID: &str = "master-key-check";

/// Checks that `master_key` (or one of its previous keys, during a rotation) is the key
/// `store` was first used with, recording it on the first use. Run it at start-up, so that
/// a wrong key stops the process with a clear message instead of making every read fail.
/// When a previous key sealed the check value, it is re-sealed under the current key.
pub async fn check_master_key(store: &Store, master_key: &MasterKey) -> Result<(), MasterKeyError> {
    use postern_common::seal::SealedUnder;
    match store.master_key_check().await? {
        Some(sealed) => match master_key.open_telling(secrets::LABEL, &[CHECK_TENANT, CHECK_ID], &sealed) {
            Ok((_, SealedUnder::Current)) => Ok(()),
            Ok((_, SealedUnder::Previous)) => {
                let resealed = master_key.seal_for(CHECK_TENANT, CHECK_ID, b"postern")?;
                // Another replica may have re-sealed it first: either way it opens now.
                store.replace_master_key_check(&sealed, &resealed).await?;
                Ok(())
            }
            Err(_) => Err(MasterKeyError::Mismatch),
        },
        None => {
            store.set_master_key_check(&master_key.seal_for(CHECK_TENANT, CHECK_ID, b"postern")?).await?;
            // Another replica may have recorded its own first: check against what is stored.
            match store.master_key_check().await? {
                Some(sealed) if master_key.open_for(CHECK_TENANT, CHECK_ID, &sealed).is_ok() => Ok(()),
                _ => Err(MasterKeyError::Mismatch),
            }
        }
    }
}

/// What [`reseal_secrets`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Connections whose secrets were sealed under a previous key and now are under the
    /// current one.
    pub resealed: usize,
    /// Connections already under the current key.
    pub current: usize,
    /// Connections whose secrets no key opens (left as they are, and logged).
    pub unreadable: usize,
}

/// Re-seals every connection's secrets that a previous master key sealed under the current
/// one (a master-key rotation), a page at a time. Each replacement is conditional on the
/// value read, so a connection updated meanwhile keeps its new secrets, and replicas doing
/// it at once agree. Nothing to do (and nothing read) without previous keys.
pub async fn reseal_secrets(store: &Store, master_key: &MasterKey) -> Result<Resealed, MasterKeyError> {
    let mut done = Resealed::default();
    if master_key.previous_keys() == 0 {
        return Ok(done);
    }
    let mut after = String::new();
    loop {
        let page = store.sealed_secrets_after(&after, 500).await?;
        let Some((last, _, _)) = page.last() else { break };
        after = last.clone();
        for (id, tenant, sealed) in &page {
            match master_key.reseal(secrets::LABEL, &[tenant, id], sealed) {
                Ok(None) => done.current += 1,
                Ok(Some(resealed)) => {
                    store.replace_sealed_secrets(id, sealed, &resealed).await?;
                    done.resealed += 1;
                }
                Err(e) => {
                    tracing::error!(tenant = %tenant, connection_id = %id, error = %e, "a connection's secrets open under no master key given");
                    done.unreadable += 1;
                }
            }
        }
    }
    Ok(done)
}

/// A running registry: its handlers, the follower of the tenant service's deletions, and
/// the follower of its own change log.
pub struct Registry {
    api: RegistryApi,
    key: InternalKey,
    follower: tokio::task::JoinHandle<()>,
    change_log: tokio::task::JoinHandle<()>,
}

impl Registry {
    /// Starts the registry over `store`, sealing secrets with `master_key`, trusting
    /// principals signed with `key`, and calling the tenant service through `tenant`
    /// (its routes in process, or a channel to it), which it signs as
    /// `Service("registry")`. Spawns the follower of the tenant service's deletions and the
    /// follower of the change log (which starts at the log's end, read here), so it must run
    /// inside a Tokio runtime.
    pub async fn start(
        store: Store,
        master_key: MasterKey,
        key: InternalKey,
        tenant: HttpService,
    ) -> Result<Self, store::StoreError> {
        let tenant = SignLayer::new(key.clone(), Principal::Service(SERVICE_NAME.to_owned())).layer(tenant);
        let changes = watch::Changes::new();
        store.outbox().spawn_relay(tenant.clone());
        let api = RegistryApi::new(store, master_key, tenant.clone(), changes.clone());
        // The follower starts at the log's end: streams are live.
        let after = api.store.last_change_sequence().await?;
        changes.published_up_to(after);
        let change_log = tokio::spawn(change_log::follow(api.clone(), after, changes.closing()));
        let follower = tokio::spawn(tenant_events::follow(api.clone(), tenant, changes.closing()));
        Ok(Self { api, key, follower, change_log })
    }

    /// The service's routes, behind the check of the caller's signed principal.
    pub fn routes(&self) -> tonic::service::Routes {
        let layer = PrincipalLayer::new(self.key.clone()).public(PUBLIC_METHODS).scopes(METHOD_SCOPES);
        tonic::service::Routes::new(
            layer.layer(pb::connection_service_server::ConnectionServiceServer::new(self.api.clone())),
        )
    }

    /// Ends every open `WatchConnections` stream and stops following the tenant service,
    /// so that a graceful shutdown is not held up by streams that never end.
    pub fn shutdown(&self) {
        self.api.changes.close();
    }

    /// Stops and waits for the followers.
    pub async fn stopped(self) {
        self.shutdown();
        let _ = self.follower.await;
        let _ = self.change_log.await;
    }
}
