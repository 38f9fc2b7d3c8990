//! The gRPC face of the registry: `ConnectionService`. Each handler establishes who calls,
//! validates the request into domain types (see [`crate::domain`]), asks the store (and the
//! tenant service, for integrity), and answers in the contract's terms. Secrets are sealed
//! before they reach the store and opened only to say which are set, or for the internal
//! `ResolveConnection`. Handlers never log a request or options: only names and ids.

use std::time::Duration;

use postern_common::error::{Violations, already_exists, internal, invalid_field, not_found, status};
use postern_common::paging::{decode_token, next_page_token, page_size};
use postern_common::principal::principal;
use postern_common::server::HttpService;
use postern_common::time::now_micros;
use postern_common::validate::{self, truncate};
use postern_proto::connections::v1 as pb;
use postern_proto::tenant::v1 as tenant_pb;
use tonic::{Code, Request, Response, Status};

use crate::domain::{Category, Connection, ConnectionRef, NewConnection, Secrets, Strategy, apply_update, rules};
use crate::secrets::{ConnectionSeal, MasterKey};
use crate::store::{Store, StoreError, Stored};
use crate::watch::Changes;

/// How long the registry waits for the tenant service before answering UNAVAILABLE.
const TENANT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times an update is retried when another update of the same connection wins.
const UPDATE_ATTEMPTS: usize = 8;
/// The longest client id the registry accepts (the tenant service's are much shorter).
const MAX_CLIENT_ID: usize = 128;

/// The tenant service as the registry calls it: signed as `Service("registry")`.
pub type TenantChannel = postern_common::principal::SignService<HttpService>;

/// The registry's handlers, sharing one store, the master key, the tenant service and the
/// change stream.
#[derive(Debug, Clone)]
pub struct RegistryApi {
    pub(crate) store: Store,
    master_key: MasterKey,
    tenant: TenantChannel,
    pub(crate) changes: Changes,
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => {
                already_exists("CONNECTION_ALREADY_EXISTS", "the tenant already has a connection with that name")
            }
            StoreError::NotFound => not_found("CONNECTION_NOT_FOUND", "the connection does not exist"),
            StoreError::ClientDeleted => not_found("CLIENT_NOT_FOUND", "the client was deleted from the tenant"),
            StoreError::TenantDeleted => not_found("TENANT_NOT_FOUND", "the tenant was deleted"),
            StoreError::Db(e) => postern_common::error::database(&e),
            e @ StoreError::Corrupt(_) => internal(&e),
        }
    }
}

fn connection_not_found(tenant: &str, reference: &str) -> Status {
    not_found("CONNECTION_NOT_FOUND", format!("tenant {tenant:?} has no connection {:?}", truncate(reference, 128)))
}

fn client_not_found(tenant: &str, client_id: &str) -> Status {
    not_found("CLIENT_NOT_FOUND", format!("tenant {tenant:?} has no client {:?}", truncate(client_id, 64)))
}

fn tenant_unavailable(e: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "the tenant service did not answer");
    status(
        Code::Unavailable,
        "TENANT_SERVICE_UNAVAILABLE",
        "the tenant service is unavailable, so the registry cannot check the tenant or client; retry later",
    )
}

/// Records a bad tenant name in `v`.
fn check_tenant(v: &mut Violations, tenant: &str) {
    v.check("tenant", validate::tenant_name(tenant));
}

/// Records a bad client id in `v`.
fn check_client_id(v: &mut Violations, field: &str, client_id: &str) {
    if client_id.is_empty() {
        v.add(field, "is required: the client_id of a client of the tenant");
    } else if client_id.len() > MAX_CLIENT_ID || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
        v.add(field, format!("{:?} is not a client id", truncate(client_id, 64)));
    }
}

/// Reads a `connection` reference into `v`.
fn read_ref(v: &mut Violations, field: &str, value: &str) -> Option<ConnectionRef> {
    match ConnectionRef::parse(value) {
        Ok(r) => Some(r),
        Err(e) => {
            v.add(field, e);
            None
        }
    }
}

impl RegistryApi {
    /// Handlers over `store`, sealing with `master_key`, checking integrity through
    /// `tenant`, publishing to `changes`.
    pub fn new(store: Store, master_key: MasterKey, tenant: TenantChannel, changes: Changes) -> Self {
        Self { store, master_key, tenant, changes }
    }

    /// The store, recording the changes it makes (in the audit log) as made by the caller
    /// of `req`.
    fn acting<T>(&self, req: &Request<T>, p: &postern_common::principal::Principal) -> Store {
        let event = postern_common::audit::by(Default::default(), p, postern_common::principal::peer_addr(req));
        self.store.acting(crate::store::Actor {
            actor: event.actor.unwrap_or_default(),
            source_ip: event.source_ip,
            cause: None,
        })
    }

    fn open(&self, tenant: &str, stored: &Stored) -> Result<Secrets, Status> {
        self.master_key.open_secrets(tenant, &stored.connection.id, &stored.sealed).map_err(|e| internal(&e))
    }

    /// The contract's view of a stored connection: no secret values, `_set` flags.
    fn view(&self, tenant: &str, stored: &Stored) -> Result<pb::Connection, Status> {
        Ok(stored.connection.to_proto(&self.open(tenant, stored)?))
    }

    /// The view of a connection for a change event: as [`Self::view`], or without `_set`
    /// flags if the secrets cannot be opened (the event must go out regardless).
    pub(crate) fn view_or_bare(&self, tenant: &str, stored: &Stored) -> pb::Connection {
        self.view(tenant, stored).unwrap_or_else(|_| stored.connection.to_proto(&Secrets::new()))
    }

    /// Waits until the change log's follower has published every change this process has
    /// committed, so that a write is acknowledged only once this replica's streams carry it
    /// (bounded: the write is committed whatever happens to the follower).
    async fn published(&self) {
        let target = self.store.last_own_change();
        if !self.changes.wait_published(target, crate::change_log::PUBLISH_WAIT).await {
            tracing::warn!(sequence = target, "a committed connection change is not streamed yet");
        }
    }

    async fn get_stored(&self, tenant: &str, reference: &ConnectionRef, raw: &str) -> Result<Stored, Status> {
        self.store.get(tenant, reference).await?.ok_or_else(|| connection_not_found(tenant, raw))
    }

    /// Asks the tenant service whether `tenant` exists; answers its create time, which
    /// tells it apart from an earlier tenant of the same name.
    async fn check_tenant_exists(&self, tenant: &str) -> Result<i64, Status> {
        let mut client = tenant_pb::tenant_service_client::TenantServiceClient::new(self.tenant.clone());
        let call = client.get_tenant(tenant_pb::GetTenantRequest { name: tenant.to_owned() });
        match tokio::time::timeout(TENANT_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r
                .into_inner()
                .tenant
                .and_then(|t| t.create_time)
                .and_then(|t| postern_common::time::from_timestamp(&t))
                .unwrap_or(0)),
            Ok(Err(s)) if s.code() == Code::NotFound => {
                Err(not_found("TENANT_NOT_FOUND", format!("tenant {tenant:?} does not exist")))
            }
            Ok(Err(s)) => Err(postern_common::error::from_upstream(&s, |s| tenant_unavailable(s))),
            Err(e) => Err(tenant_unavailable(&e)),
        }
    }

    /// Asks the tenant service whether `client_id` is a client of `tenant`.
    async fn check_client_exists(&self, tenant: &str, client_id: &str) -> Result<(), Status> {
        let mut client = tenant_pb::client_service_client::ClientServiceClient::new(self.tenant.clone());
        let call = client
            .get_client(tenant_pb::GetClientRequest { tenant: tenant.to_owned(), client_id: client_id.to_owned() });
        match tokio::time::timeout(TENANT_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if s.code() == Code::NotFound => Err(client_not_found(tenant, client_id)),
            Ok(Err(s)) => Err(postern_common::error::from_upstream(&s, |s| tenant_unavailable(s))),
            Err(e) => Err(tenant_unavailable(&e)),
        }
    }
}

#[tonic::async_trait]
impl pb::connection_service_server::ConnectionService for RegistryApi {
    async fn create_connection(
        &self,
        req: Request<pb::CreateConnectionRequest>,
    ) -> Result<Response<pb::CreateConnectionResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req, &p);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let new = match req.connection {
            None => {
                v.add("connection", "is required");
                None
            }
            Some(c) => match NewConnection::try_from(c) {
                Ok(n) => Some(n),
                Err(bad) => {
                    for f in bad.as_slice() {
                        v.add(f.field.clone(), f.description.clone());
                    }
                    None
                }
            },
        };
        v.into_result()?;
        let new = new.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        p.require_tenant(&req.tenant)?;
        let tenant_create_time = self.check_tenant_exists(&req.tenant).await?;
        let now = now_micros();
        let connection = Connection { id: Connection::new_id(), spec: new.spec, create_time: now, update_time: now };
        let sealed =
            self.master_key.seal_secrets(&req.tenant, &connection.id, &new.secrets).map_err(|e| internal(&e))?;
        store.create(&req.tenant, tenant_create_time, &connection, &sealed).await.map_err(|e| match e {
            StoreError::AlreadyExists => already_exists(
                "CONNECTION_ALREADY_EXISTS",
                format!("tenant {:?} already has a connection named {:?}", req.tenant, connection.spec.name),
            ),
            e => e.into(),
        })?;
        tracing::info!(
            tenant = %req.tenant, id = %connection.id, name = %connection.spec.name,
            strategy = %connection.spec.strategy, "connection created"
        );
        let view = connection.to_proto(&new.secrets);
        self.published().await;
        Ok(Response::new(pb::CreateConnectionResponse { connection: Some(view) }))
    }

    async fn get_connection(
        &self,
        req: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::GetConnectionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let reference = read_ref(&mut v, "connection", &req.connection);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        let stored = self.get_stored(&req.tenant, &reference, &req.connection).await?;
        Ok(Response::new(pb::GetConnectionResponse { connection: Some(self.view(&req.tenant, &stored)?) }))
    }

    async fn list_connections(
        &self,
        req: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        if !req.strategy.is_empty() && Strategy::parse(&req.strategy).is_none() {
            v.add(
                "strategy",
                format!(
                    "{:?} is not a known strategy; use one of: {}",
                    truncate(&req.strategy, 80),
                    Strategy::known_names()
                ),
            );
        }
        v.check("category", Category::from_proto_filter(req.category).map(|_| ()));
        let limit = match page_size(req.page_size) {
            Ok(l) => l,
            Err(_) => {
                v.add("page_size", format!("must be 0 (the default, 50) to 1000, got {}", req.page_size));
                0
            }
        };
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let scope = format!("connections|{}|{}|{}", req.tenant, req.strategy, req.category);
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self.store.list(&req.tenant, &req.strategy, req.category, after.as_deref(), limit + 1).await?;
        let next_page_token = next_page_token(&mut rows, limit, &scope, |s| s.connection.spec.name.clone());
        let connections = rows.iter().map(|s| self.view(&req.tenant, s)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListConnectionsResponse { connections, next_page_token }))
    }

    async fn update_connection(
        &self,
        req: Request<pb::UpdateConnectionRequest>,
    ) -> Result<Response<pb::UpdateConnectionResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req, &p);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let patch = req.connection.unwrap_or_default();
        let raw = if patch.id.is_empty() { patch.name.clone() } else { patch.id.clone() };
        let reference = if raw.is_empty() {
            v.add("connection.name", "is required (or connection.id): it says which connection to update");
            None
        } else {
            read_ref(&mut v, if patch.id.is_empty() { "connection.name" } else { "connection.id" }, &raw)
        };
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        for _ in 0..UPDATE_ATTEMPTS {
            let stored = self.get_stored(&req.tenant, &reference, &raw).await?;
            let secrets = self.open(&req.tenant, &stored)?;
            let update =
                apply_update(&stored.connection, &secrets, patch.clone(), &paths).map_err(Violations::into_status)?;
            let id = &stored.connection.id;
            let sealed = self.master_key.seal_secrets(&req.tenant, id, &update.secrets).map_err(|e| internal(&e))?;
            let Some(update_time) =
                store.update(&req.tenant, id, stored.connection.update_time, &update.spec, &sealed).await?
            else {
                continue;
            };
            let updated = Connection {
                id: id.clone(),
                spec: update.spec,
                create_time: stored.connection.create_time,
                update_time,
            };
            tracing::info!(tenant = %req.tenant, id = %id, name = %updated.spec.name, "connection updated");
            let view = updated.to_proto(&update.secrets);
            self.published().await;
            return Ok(Response::new(pb::UpdateConnectionResponse { connection: Some(view) }));
        }
        Err(status(
            Code::Aborted,
            "CONCURRENT_UPDATE",
            "the connection kept changing while this update was applied; retry",
        ))
    }

    async fn delete_connection(
        &self,
        req: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req, &p);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let reference = read_ref(&mut v, "connection", &req.connection);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        let deleted = store
            .delete(&req.tenant, &reference)
            .await?
            .ok_or_else(|| connection_not_found(&req.tenant, &req.connection))?;
        tracing::info!(tenant = %req.tenant, id = %deleted.connection.id, name = %deleted.connection.spec.name, "connection deleted");
        self.published().await;
        Ok(Response::new(pb::DeleteConnectionResponse {}))
    }

    async fn enable_client(
        &self,
        req: Request<pb::EnableClientRequest>,
    ) -> Result<Response<pb::EnableClientResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req, &p);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let reference = read_ref(&mut v, "connection", &req.connection);
        check_client_id(&mut v, "client_id", &req.client_id);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        let stored = self.get_stored(&req.tenant, &reference, &req.connection).await?;
        self.check_client_exists(&req.tenant, &req.client_id).await?;
        let newly = store.enable(&req.tenant, &stored.connection.id, &req.client_id).await.map_err(|e| match e {
            StoreError::ClientDeleted => client_not_found(&req.tenant, &req.client_id),
            StoreError::NotFound => connection_not_found(&req.tenant, &req.connection),
            e => e.into(),
        })?;
        if newly {
            tracing::info!(tenant = %req.tenant, id = %stored.connection.id, client_id = %req.client_id, "connection enabled for client");
            self.published().await;
        }
        Ok(Response::new(pb::EnableClientResponse {}))
    }

    async fn disable_client(
        &self,
        req: Request<pb::DisableClientRequest>,
    ) -> Result<Response<pb::DisableClientResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req, &p);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let reference = read_ref(&mut v, "connection", &req.connection);
        check_client_id(&mut v, "client_id", &req.client_id);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        let stored = self.get_stored(&req.tenant, &reference, &req.connection).await?;
        if store.disable(&req.tenant, &stored.connection.id, &req.client_id).await? {
            tracing::info!(tenant = %req.tenant, id = %stored.connection.id, client_id = %req.client_id, "connection disabled for client");
            self.published().await;
        }
        Ok(Response::new(pb::DisableClientResponse {}))
    }

    async fn list_connection_clients(
        &self,
        req: Request<pb::ListConnectionClientsRequest>,
    ) -> Result<Response<pb::ListConnectionClientsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        let reference = read_ref(&mut v, "connection", &req.connection);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        let limit = page_size(req.page_size)?;
        let stored = self.get_stored(&req.tenant, &reference, &req.connection).await?;
        let scope = format!("connection-clients|{}|{}", req.tenant, stored.connection.id);
        let after = decode_token(&scope, &req.page_token)?;
        let mut client_ids = self.store.connection_clients(&stored.connection.id, after.as_deref(), limit + 1).await?;
        let next_page_token = next_page_token(&mut client_ids, limit, &scope, Clone::clone);
        Ok(Response::new(pb::ListConnectionClientsResponse { client_ids, next_page_token }))
    }

    async fn list_client_connections(
        &self,
        req: Request<pb::ListClientConnectionsRequest>,
    ) -> Result<Response<pb::ListClientConnectionsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        check_client_id(&mut v, "client_id", &req.client_id);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let rows = self.store.client_connections(&req.tenant, &req.client_id).await?;
        let connections = rows.iter().map(|s| self.view(&req.tenant, s)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListClientConnectionsResponse { connections }))
    }

    async fn discover_connection(
        &self,
        req: Request<pb::DiscoverConnectionRequest>,
    ) -> Result<Response<pb::DiscoverConnectionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        check_client_id(&mut v, "client_id", &req.client_id);
        let domain = match rules::email_domain(&req.email) {
            Ok(d) => Some(d),
            Err(e) => {
                v.add("email", e);
                None
            }
        };
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let domain = domain.ok_or_else(|| invalid_field("email", "is invalid"))?;
        let found = self.store.discover(&req.tenant, &req.client_id, &domain).await?;
        let first = found.first().ok_or_else(|| {
            not_found(
                "NO_CONNECTION_FOR_DOMAIN",
                format!(
                    "no enterprise connection enabled for client {:?} serves the domain {domain:?}",
                    truncate(&req.client_id, 64)
                ),
            )
        })?;
        Ok(Response::new(pb::DiscoverConnectionResponse { connection: Some(self.view(&req.tenant, first)?) }))
    }

    type WatchConnectionsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchConnectionsResponse, Status>>;

    async fn watch_connections(
        &self,
        req: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<Self::WatchConnectionsStream>, Status> {
        let p = principal(&req)?;
        let tenant = req.into_inner().tenant;
        if tenant.is_empty() {
            if p.require_internal().is_err() {
                return Err(invalid_field(
                    "tenant",
                    "is required: only Postern's own services may watch every tenant at once",
                ));
            }
        } else {
            let mut v = Violations::new();
            check_tenant(&mut v, &tenant);
            v.into_result()?;
            p.require_tenant(&tenant)?;
        }
        // Subscribed before answering, so that every change committed after the caller has
        // the stream open reaches it.
        let mut changes = self.changes.subscribe();
        let mut closing = self.changes.closing();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(c) => {
                            if (tenant.is_empty() || c.tenant == tenant) && tx.send(Ok(c.to_proto())).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(status(
                                Code::Aborted,
                                "WATCH_LAGGED",
                                format!("this stream fell {n} changes behind; watch again and re-list"),
                            ))).await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = crate::watch::closed(&mut closing) => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn resolve_connection(
        &self,
        req: Request<pb::ResolveConnectionRequest>,
    ) -> Result<Response<pb::ResolveConnectionResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, &req.tenant);
        if !req.client_id.is_empty() {
            check_client_id(&mut v, "client_id", &req.client_id);
        }
        let reference = read_ref(&mut v, "connection", &req.connection);
        v.into_result()?;
        let reference = reference.ok_or_else(|| invalid_field("connection", "is invalid"))?;
        if req.client_id.is_empty() {
            // An administrative operation that names no client: no enablement to check.
            let stored = self.get_stored(&req.tenant, &reference, &req.connection).await?;
            let secrets = self.open(&req.tenant, &stored)?;
            return Ok(Response::new(pb::ResolveConnectionResponse {
                connection: Some(stored.connection.to_proto_with_secrets(&secrets)),
            }));
        }
        let stored = self.store.resolve(&req.tenant, &req.client_id, &reference).await?.ok_or_else(|| {
            not_found(
                "CONNECTION_NOT_ENABLED",
                format!(
                    "tenant {:?} has no connection {:?} enabled for client {:?}",
                    req.tenant,
                    truncate(&req.connection, 128),
                    truncate(&req.client_id, 64)
                ),
            )
        })?;
        let secrets = self.open(&req.tenant, &stored)?;
        Ok(Response::new(pb::ResolveConnectionResponse {
            connection: Some(stored.connection.to_proto_with_secrets(&secrets)),
        }))
    }
}
