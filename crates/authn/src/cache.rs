//! Connections as the login path sees them: resolved through the registry (with their
//! secrets) and cached, kept fresh by the registry's change stream, so that a warm login
//! asks the registry nothing.
//!
//! Correctness rests on three rules. The cache answers only while the change stream is up
//! (`live`); when it breaks, everything cached is dropped and logins ask the registry until
//! the stream is back. Any change to a tenant's connections drops that tenant's entries
//! (changes are rare; precision here would buy nothing). A resolution that raced with a
//! change is not cached: each tenant has a generation that every change bumps, and an answer
//! is kept only if the generation it started under is still current.
//!
//! The connections enabled for a client, as the hosted login page lists them (no secrets),
//! are kept under the same rules: a page view asks the registry nothing either.
//!
//! The same stream tells the authenticator about deleted connections (their identities go,
//! with the users left with none) and about profile-sync changes (which decide whether
//! UpdateUser may edit root attributes).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use postern_common::error::{not_found, permission_denied};
use postern_proto::connections::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::Peer;
use crate::domain::ProfileSync;
use crate::store::Store;

type Registry = pb::connection_service_client::ConnectionServiceClient<Peer>;

/// A connection with its secrets, as ResolveConnection answered it, in the shared model.
pub type Resolved = Arc<postern_connection::Resolved>;

#[derive(Default)]
struct State {
    live: bool,
    generations: HashMap<String, u64>,
    entries: HashMap<(String, String, String), Resolved>,
    /// The connections enabled for a client (tenant, client id), without secrets.
    listed: HashMap<(String, String), Listed>,
}

/// The connections of a tenant enabled for a client, without secrets, as
/// ListClientConnections answered them.
pub type Listed = Arc<Vec<pb::Connection>>;

/// At most this many clients' listings are kept; past it, they start over.
const MAX_LISTED: usize = 10_000;

/// At most this many resolved connections (a tenant's client and a connection's name or
/// id) are kept; past it, they start over, as the listings do.
const MAX_RESOLVED: usize = 100_000;

struct Inner {
    registry: Registry,
    store: Store,
    enabled: bool,
    state: Mutex<State>,
    registry_calls: AtomicU64,
}

/// The connection cache. Cloning shares it.
#[derive(Clone)]
pub struct ConnectionCache {
    inner: Arc<Inner>,
}

impl ConnectionCache {
    /// A cache over the registry behind `registry`. With `enabled` false every login asks
    /// the registry (for the benchmark's comparison). Starts the watch task.
    pub fn new(registry: Peer, store: Store, enabled: bool) -> Self {
        let inner = Arc::new(Inner {
            registry: Registry::new(registry),
            store,
            enabled,
            state: Mutex::new(State::default()),
            registry_calls: AtomicU64::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// How many ResolveConnection calls reached the registry so far.
    pub fn registry_calls(&self) -> u64 {
        self.inner.registry_calls.load(Ordering::Relaxed)
    }

    /// Whether the change stream is up (the cache answers only then).
    pub fn is_live(&self) -> bool {
        self.state().live
    }

    fn registry(&self) -> Registry {
        self.inner.registry.clone()
    }

    /// The connection `connection` (name or id) of `tenant` enabled for `client_id`.
    /// NOT_FOUND if the tenant has no such connection; PERMISSION_DENIED if it is not
    /// enabled for the client; UNAVAILABLE if the registry cannot be reached.
    pub async fn resolve(&self, tenant: &str, client_id: &str, connection: &str) -> Result<Resolved, Status> {
        let key = (tenant.to_owned(), client_id.to_owned(), connection.to_owned());
        let generation = match self.cached(tenant, &key, |s| &s.entries) {
            Ok(hit) => return Ok(hit),
            Err(generation) => generation,
        };
        self.inner.registry_calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("postern_authn_connection_resolutions_total").increment(1);
        let answer = self
            .registry()
            .resolve_connection(pb::ResolveConnectionRequest {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
                connection: connection.to_owned(),
            })
            .await;
        match answer {
            Ok(r) => {
                let conn = r.into_inner().connection.ok_or_else(|| {
                    postern_common::error::unavailable(
                        "REGISTRY_UNAVAILABLE",
                        "the connection registry answered without a connection; retry shortly",
                    )
                })?;
                let conn = Arc::new(typed(conn)?);
                self.keep(tenant, generation, |s| &mut s.entries, key, conn.clone(), MAX_RESOLVED);
                Ok(conn)
            }
            Err(s) if matches!(s.code(), Code::NotFound | Code::PermissionDenied) => {
                Err(self.explain_refusal(tenant, client_id, connection).await)
            }
            Err(s) => Err(unavailable(&s)),
        }
    }

    /// The connections of `tenant` enabled for `client_id`, without secrets (what the hosted
    /// login page lists), as the registry's ListClientConnections answers them; its refusal
    /// is answered as it is.
    pub async fn enabled_for(&self, tenant: &str, client_id: &str) -> Result<Listed, Status> {
        let key = (tenant.to_owned(), client_id.to_owned());
        let generation = match self.cached(tenant, &key, |s| &s.listed) {
            Ok(hit) => return Ok(hit),
            Err(generation) => generation,
        };
        metrics::counter!("postern_authn_connection_listings_total").increment(1);
        let listed = self
            .registry()
            .list_client_connections(pb::ListClientConnectionsRequest {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
            })
            .await?
            .into_inner()
            .connections;
        let listed = Arc::new(listed);
        self.keep(tenant, generation, |s| &mut s.listed, key, listed.clone(), MAX_LISTED);
        Ok(listed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each update is whole under the lock: a poisoned lock holds no half-state.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the map `pick` gives holds under `key`, while the cache answers; otherwise the
    /// tenant's generation, under which an answer asked now may be kept ([`Self::keep`]).
    fn cached<K: Eq + Hash, V: Clone>(
        &self,
        tenant: &str,
        key: &K,
        pick: impl FnOnce(&State) -> &HashMap<K, V>,
    ) -> Result<V, u64> {
        let state = self.state();
        if self.inner.enabled
            && state.live
            && let Some(hit) = pick(&state).get(key)
        {
            return Ok(hit.clone());
        }
        Err(state.generations.get(tenant).copied().unwrap_or(0))
    }

    /// Keeps `value` under `key` in the map `pick` gives, unless the change stream is down
    /// or a change to the tenant came since `generation` (the answer may be older than it).
    /// A map of `max` entries starts over.
    fn keep<K: Eq + Hash, V>(
        &self,
        tenant: &str,
        generation: u64,
        pick: impl FnOnce(&mut State) -> &mut HashMap<K, V>,
        key: K,
        value: V,
        max: usize,
    ) {
        let mut state = self.state();
        if !self.inner.enabled || !state.live || state.generations.get(tenant).copied().unwrap_or(0) != generation {
            return;
        }
        let map = pick(&mut state);
        if map.len() >= max && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, value);
    }

    /// Why a resolution was refused: the connection does not exist, or is not enabled for
    /// the client. Asked only on the failure path.
    async fn explain_refusal(&self, tenant: &str, client_id: &str, connection: &str) -> Status {
        let exists = self
            .registry()
            .get_connection(pb::GetConnectionRequest { tenant: tenant.to_owned(), connection: connection.to_owned() })
            .await;
        match exists {
            Ok(_) => permission_denied(
                "CONNECTION_NOT_ENABLED",
                format!(
                    "connection {connection:?} is not enabled for client {:?}; enable it with ConnectionService/EnableClient",
                    postern_common::validate::truncate(client_id, 64)
                ),
            ),
            Err(s) if s.code() == Code::NotFound => not_found(
                "CONNECTION_NOT_FOUND",
                format!(
                    "tenant {tenant:?} has no connection {:?}",
                    postern_common::validate::truncate(connection, 128)
                ),
            ),
            Err(s) => unavailable(&s),
        }
    }

    /// The connection `connection` (name or id) with its secrets, for management calls
    /// that name no client (ChangePassword, DeleteUser). Not cached: these are rare.
    pub async fn resolve_any(&self, tenant: &str, connection: &str) -> Result<Resolved, Status> {
        // No client to check enablement for: the registry answers the connection with its
        // secrets (a custom database's token included) whatever clients it is enabled for.
        let answer = self
            .registry()
            .resolve_connection(pb::ResolveConnectionRequest {
                tenant: tenant.to_owned(),
                client_id: String::new(),
                connection: connection.to_owned(),
            })
            .await;
        match answer {
            Ok(r) => Ok(Arc::new(typed(r.into_inner().connection.ok_or_else(|| connection_gone(connection))?)?)),
            Err(s) if s.code() == Code::NotFound => Err(connection_gone(connection)),
            Err(s) => Err(unavailable(&s)),
        }
    }

    fn apply(&self, event: &pb::WatchConnectionsResponse) {
        let mut state = self.state();
        *state.generations.entry(event.tenant.clone()).or_default() += 1;
        state.entries.retain(|(tenant, _, _), _| *tenant != event.tenant);
        state.listed.retain(|(tenant, _), _| *tenant != event.tenant);
    }

    fn set_live(&self, live: bool) {
        let mut state = self.state();
        state.live = live;
        state.entries.clear();
        state.listed.clear();
        for g in state.generations.values_mut() {
            *g += 1;
        }
    }
}

/// The registry's answer in the shared connection model: the edge where the contract's
/// connection stops. A stored connection that no longer meets today's creation rules is
/// still used (it was valid when stored; the cause is logged); one the model cannot
/// represent at all (a strategy or options family this authenticator does not know, as
/// from a newer registry) is `FAILED_PRECONDITION` for the caller, never `INTERNAL`.
fn typed(conn: pb::Connection) -> Result<postern_connection::Resolved, Status> {
    match postern_connection::Resolved::read(conn) {
        Ok((resolved, None)) => Ok(resolved),
        Ok((resolved, Some(outdated))) => {
            tracing::warn!(problems = %outdated, "a stored connection no longer meets the creation rules; used as stored");
            Ok(resolved)
        }
        Err(unusable) => {
            tracing::error!(error = %unusable, "the registry answered a connection this authenticator cannot read");
            Err(postern_common::error::failed_precondition(
                "CONNECTION_UNUSABLE",
                format!(
                    "connection {:?} cannot be used by this authenticator (its strategy or options are not known \
                     here); an administrator must check the connection or upgrade the service",
                    postern_common::validate::truncate(&unusable.name, 64)
                ),
            ))
        }
    }
}

fn connection_gone(connection: &str) -> Status {
    not_found(
        "CONNECTION_NOT_FOUND",
        format!("connection {:?} does not exist (any more)", postern_common::validate::truncate(connection, 128)),
    )
}

/// The registry's refusal of the request passed on as it is (INVALID_ARGUMENT for a
/// malformed connection name, say); UNAVAILABLE only for an outage.
fn unavailable(s: &Status) -> Status {
    postern_common::error::from_upstream(s, |s| {
        tracing::warn!(code = ?s.code(), message = s.message(), "connection registry call failed");
        postern_common::error::unavailable(
            "REGISTRY_UNAVAILABLE",
            "the connection registry is unavailable; retry shortly",
        )
    })
}

/// Follows the registry's change stream of every tenant for as long as the cache lives,
/// reconnecting after a break.
async fn watch(inner: Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let cache = ConnectionCache { inner: strong };
        let stream = cache.registry().watch_connections(pb::WatchConnectionsRequest { tenant: String::new() }).await;
        match stream {
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                cache.set_live(true);
                tracing::debug!("following the connection registry's change stream");
                // Changes made while the stream was down are not replayed: look for
                // connections that went meanwhile.
                tokio::spawn(reconcile(cache.registry(), cache.inner.store.clone()));
                let mut stream = stream.into_inner();
                let weak = Arc::downgrade(&cache.inner);
                drop(cache);
                while let Some(item) = stream.next().await {
                    let Some(strong) = weak.upgrade() else { return };
                    let cache = ConnectionCache { inner: strong };
                    match item {
                        Ok(event) => {
                            cache.apply(&event);
                            handle(&cache.inner.store, &event).await;
                        }
                        Err(s) => {
                            tracing::info!(code = ?s.code(), "the connection change stream broke; reconnecting");
                            break;
                        }
                    }
                }
                if let Some(strong) = weak.upgrade() {
                    ConnectionCache { inner: strong }.set_live(false);
                }
            }
            Err(s) => {
                cache.set_live(false);
                tracing::debug!(code = ?s.code(), message = s.message(), "cannot follow connection changes yet");
                drop(cache);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Removes the identities of connections that no longer exist (deleted while the change
/// stream was down). Only a NOT_FOUND answer counts; any other failure leaves them be.
async fn reconcile(mut registry: Registry, store: Store) {
    let Ok(pairs) = store.identity_connections().await else { return };
    for (tenant, connection_id) in pairs {
        let answer = registry
            .get_connection(pb::GetConnectionRequest { tenant: tenant.clone(), connection: connection_id.clone() })
            .await;
        if answer.is_err_and(|s| s.code() == Code::NotFound) {
            match store.delete_connection(&tenant, &connection_id).await {
                Ok((identities, users)) => tracing::info!(%tenant, %connection_id, identities, users,
                    "a connection deleted while the change stream was down: removed its identities"),
                Err(e) => tracing::error!(error = %e, "could not remove the identities of a deleted connection"),
            }
        }
    }
}

/// What a change means for the authenticator's own data.
async fn handle(store: &Store, event: &pb::WatchConnectionsResponse) {
    let Some(conn) = &event.connection else { return };
    match pb::ChangeType::try_from(event.change_type) {
        Ok(pb::ChangeType::Deleted) => match store.delete_connection(&event.tenant, &conn.id).await {
            Ok((identities, users)) => {
                if identities > 0 {
                    tracing::info!(tenant = %event.tenant, connection = %conn.name, identities, users,
                        "connection deleted: removed its identities and the users left without one");
                }
            }
            Err(e) => tracing::error!(error = %e, tenant = %event.tenant, connection = %conn.name,
                "could not remove the identities of a deleted connection"),
        },
        Ok(pb::ChangeType::Updated) => {
            let sync = ProfileSync::from_proto(conn.user_profile_sync).unwrap_or_default();
            if let Err(e) = store.set_connection_sync(&event.tenant, &conn.id, sync).await {
                tracing::error!(error = %e, "could not record a connection's profile-sync mode");
            }
        }
        _ => {}
    }
}
