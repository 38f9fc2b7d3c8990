//! The gRPC face of the tenant service: `TenantService`, `ClientService`, `ApiKeyService`,
//! `ResourceServerService` (APIs) and `ClientGrantService`. Each handler establishes who calls, validates the request into domain
//! types, asks the store, and answers in the contract's terms.

use postern_common::error::{
    Violations, already_exists, database, failed_precondition, invalid_field, not_found, status_with_metadata,
    unauthenticated,
};
use postern_common::ids::{constant_time_eq, prefixed, random_alphanumeric, secret_hash};
use postern_common::paging::{decode_token, next_page_token, page_size};
use postern_common::principal::{Principal, peer_addr, principal};
use postern_common::scope::Scopes;
use postern_common::time::{from_timestamp, now_micros};
use postern_proto::tenant::v1 as pb;
use tonic::{Code, Request, Response, Status};

use crate::domain::{self, ApiKey, check_display_name, check_logo_url, check_scopes, check_tenant_name};
use crate::store::{EventType, Store, StoreError};

/// The prefix of tenant API keys, so that a leaked key is recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "pst_";
/// The prefix of the admin key.
pub const ADMIN_KEY_PREFIX: &str = "psta_";

/// The tenant service's handlers, sharing one store.
#[derive(Debug, Clone)]
pub struct TenantApi {
    store: Store,
}

impl TenantApi {
    /// Handlers over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store, as opened.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The store, recording the changes it makes (in the audit log) as made by the caller
    /// of `req`.
    fn acting<T>(&self, req: &Request<T>) -> Result<Store, Status> {
        let p = principal(req)?;
        let event = postern_common::audit::by(Default::default(), &p, peer_addr(req));
        let actor = event.actor.unwrap_or_default();
        let actor_type = pb::AuditActorType::try_from(actor.r#type).unwrap_or(pb::AuditActorType::Unspecified);
        Ok(self.store.acting(crate::store::Actor {
            actor_type: crate::audit::short_name(actor_type.as_str_name(), "AUDIT_ACTOR_TYPE_").to_owned(),
            actor_id: actor.id,
            source_ip: event.source_ip,
        }))
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TenantNotFound => not_found("TENANT_NOT_FOUND", "the tenant does not exist"),
            StoreError::AlreadyExists => already_exists("ALREADY_EXISTS", "a resource with that name already exists"),
            StoreError::Db(e) => database(&e),
        }
    }
}

fn tenant_not_found(name: &str) -> Status {
    not_found("TENANT_NOT_FOUND", format!("tenant {name:?} does not exist"))
}

fn client_not_found(tenant: &str, client_id: &str) -> Status {
    not_found(
        "CLIENT_NOT_FOUND",
        format!("tenant {tenant:?} has no client {:?}", postern_common::validate::truncate(client_id, 64)),
    )
}

/// Checks the request's tenant name and that the caller may act on it.
fn tenant_scope(p: &Principal, tenant: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    check_tenant_name(&mut v, "tenant", tenant);
    v.into_result()?;
    p.require_tenant(tenant)
}

fn map_tenant_missing(tenant: &str) -> impl Fn(StoreError) -> Status + '_ {
    move |e| match e {
        StoreError::TenantNotFound => tenant_not_found(tenant),
        e => e.into(),
    }
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for TenantApi {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        principal(&req)?.require_admin()?;
        let store = self.acting(&req)?;
        let tenant = req.into_inner().tenant.ok_or_else(|| invalid_field("tenant", "is required"))?;
        let display_name =
            if tenant.display_name.is_empty() { tenant.name.clone() } else { tenant.display_name.clone() };
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant.name", &tenant.name);
        check_display_name(&mut v, "tenant.display_name", &display_name);
        check_logo_url(&mut v, "tenant.logo_url", &tenant.logo_url);
        v.into_result()?;
        let created =
            store.create_tenant(&tenant.name, &display_name, &tenant.logo_url).await.map_err(|e| match e {
                StoreError::AlreadyExists => {
                    already_exists("TENANT_ALREADY_EXISTS", format!("tenant {:?} already exists", tenant.name))
                }
                e => e.into(),
            })?;
        tracing::info!(tenant = %created.name, "tenant created");
        Ok(Response::new(pb::CreateTenantResponse { tenant: Some(created.into()) }))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::GetTenantResponse>, Status> {
        let p = principal(&req)?;
        let name = req.into_inner().name;
        let mut v = Violations::new();
        check_tenant_name(&mut v, "name", &name);
        v.into_result()?;
        p.require_tenant(&name)?;
        let tenant = self.store.get_tenant(&name).await?.ok_or_else(|| tenant_not_found(&name))?;
        Ok(Response::new(pb::GetTenantResponse { tenant: Some(tenant.into()) }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let scope = format!("tenants|{}", p.tenant_scope().unwrap_or(""));
        let after = decode_token(&scope, &req.page_token)?;
        let mut tenants = self.store.list_tenants(after.as_deref(), limit + 1, p.tenant_scope()).await?;
        let next_page_token = next_page_token(&mut tenants, limit, &scope, |t| t.name.clone());
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let tenant = req.tenant.ok_or_else(|| invalid_field("tenant", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant.name", &tenant.name);
        let paths = postern_common::mask::effective_paths(
            &mut v,
            &mask,
            &["display_name", "logo_url"],
            &["name", "create_time", "update_time"],
            |p| match p {
                "display_name" => !tenant.display_name.is_empty(),
                "logo_url" => !tenant.logo_url.is_empty(),
                _ => false,
            },
        );
        let display_name = if paths.contains(&"display_name") {
            check_display_name(&mut v, "tenant.display_name", &tenant.display_name);
            Some(tenant.display_name.as_str())
        } else {
            None
        };
        let logo_url = if paths.contains(&"logo_url") {
            check_logo_url(&mut v, "tenant.logo_url", &tenant.logo_url);
            Some(tenant.logo_url.as_str())
        } else {
            None
        };
        v.into_result()?;
        p.require_tenant(&tenant.name)?;
        let updated = store
            .update_tenant(&tenant.name, display_name, logo_url)
            .await?
            .ok_or_else(|| tenant_not_found(&tenant.name))?;
        Ok(Response::new(pb::UpdateTenantResponse { tenant: Some(updated.into()) }))
    }

    async fn delete_tenant(
        &self,
        req: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        principal(&req)?.require_admin()?;
        let name = req.into_inner().name;
        let mut v = Violations::new();
        check_tenant_name(&mut v, "name", &name);
        v.into_result()?;
        if !self.store.delete_tenant(&name).await? {
            return Err(tenant_not_found(&name));
        }
        tracing::info!(tenant = %name, "tenant deleted with its clients and API keys");
        Ok(Response::new(pb::DeleteTenantResponse {}))
    }

    type WatchTenantEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::WatchTenantEventsResponse, Status>>;

    async fn watch_tenant_events(
        &self,
        req: Request<pb::WatchTenantEventsRequest>,
    ) -> Result<Response<Self::WatchTenantEventsStream>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let after = if req.from_end { self.store.last_event_sequence().await? } else { req.after_sequence };
        if after < 0 {
            return Err(invalid_field("after_sequence", "must be 0 or the sequence of an event"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BATCH);
        tokio::spawn(follow_events(self.store.clone(), after, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// How many events are read and buffered at a time.
const EVENT_BATCH: usize = 256;
/// How often the log is read when nothing in this process signalled a new event (events
/// written by another replica over a shared database).
const EVENT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends every event after `after`, then each new one, until the receiver goes away.
async fn follow_events(
    store: Store,
    mut after: i64,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchTenantEventsResponse, Status>>,
) {
    let mut changed = store.subscribe_events();
    let mut closing = store.closing();
    loop {
        if *closing.borrow() {
            return;
        }
        changed.borrow_and_update();
        let events = match store.events_after(after, EVENT_BATCH).await {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = events.len() == EVENT_BATCH;
        for e in events {
            after = e.sequence;
            let event_type = match e.event_type {
                EventType::TenantDeleted => pb::TenantEventType::TenantDeleted,
                EventType::ClientDeleted => pb::TenantEventType::ClientDeleted,
                EventType::ClientChanged => pb::TenantEventType::ClientChanged,
                EventType::ApiKeyRevoked => pb::TenantEventType::ApiKeyRevoked,
                EventType::ResourceServersChanged => pb::TenantEventType::ResourceServersChanged,
                EventType::TenantUpdated => pb::TenantEventType::TenantUpdated,
            };
            let msg = pb::WatchTenantEventsResponse {
                sequence: e.sequence,
                event_type: event_type as i32,
                tenant: e.tenant,
                client_id: e.client_id,
                api_key_id: e.api_key_id,
                event_time: Some(postern_common::time::to_timestamp(e.event_time)),
                tenant_create_time: Some(postern_common::time::to_timestamp(e.tenant_create_time)),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(EVENT_POLL) => {}
            () = tx.closed() => return,
            () = async { let _ = closing.changed().await; } => return,
        }
    }
}

#[tonic::async_trait]
impl pb::client_service_server::ClientService for TenantApi {
    async fn create_client(
        &self,
        req: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let client = req.client.ok_or_else(|| invalid_field("client", "is required"))?;
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        let new = domain::new_client(&mut v, &client);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let new = new.ok_or_else(|| invalid_field("client", "is invalid"))?;
        let secret = random_alphanumeric(64);
        let created = store
            .create_client(&req.tenant, &new, &secret_hash(&secret))
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        tracing::info!(tenant = %req.tenant, client_id = %created.client_id, "client created");
        Ok(Response::new(pb::CreateClientResponse { client: Some(created.into_pb(Some(secret))) }))
    }

    async fn get_client(&self, req: Request<pb::GetClientRequest>) -> Result<Response<pb::GetClientResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let client = self
            .store
            .get_client(&req.tenant, &req.client_id)
            .await?
            .ok_or_else(|| client_not_found(&req.tenant, &req.client_id))?;
        Ok(Response::new(pb::GetClientResponse { client: Some(client.into_pb(None)) }))
    }

    async fn list_clients(
        &self,
        req: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let limit = page_size(req.page_size)?;
        let scope = format!("clients|{}", req.tenant);
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .store
            .list_clients(&req.tenant, after.as_deref(), limit + 1)
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        let next_page_token = next_page_token(&mut rows, limit, &scope, |(seq, _)| seq.clone());
        Ok(Response::new(pb::ListClientsResponse {
            clients: rows.into_iter().map(|(_, c)| c.into_pb(None)).collect(),
            next_page_token,
        }))
    }

    async fn update_client(
        &self,
        req: Request<pb::UpdateClientRequest>,
    ) -> Result<Response<pb::UpdateClientResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let client = req.client.ok_or_else(|| invalid_field("client", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        if client.client_id.is_empty() {
            v.add("client.client_id", "is required: it says which client to update");
        }
        let patch = domain::client_patch(&mut v, &client, &mask);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let updated = store
            .update_client(&req.tenant, &client.client_id, &patch)
            .await?
            .ok_or_else(|| client_not_found(&req.tenant, &client.client_id))?;
        Ok(Response::new(pb::UpdateClientResponse { client: Some(updated.into_pb(None)) }))
    }

    async fn delete_client(
        &self,
        req: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        if !store.delete_client(&req.tenant, &req.client_id).await? {
            return Err(client_not_found(&req.tenant, &req.client_id));
        }
        tracing::info!(tenant = %req.tenant, client_id = %req.client_id, "client deleted");
        Ok(Response::new(pb::DeleteClientResponse {}))
    }

    async fn rotate_client_secret(
        &self,
        req: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let secret = random_alphanumeric(64);
        if !store.set_client_secret(&req.tenant, &req.client_id, &secret_hash(&secret)).await? {
            return Err(client_not_found(&req.tenant, &req.client_id));
        }
        let client = store
            .get_client(&req.tenant, &req.client_id)
            .await?
            .ok_or_else(|| client_not_found(&req.tenant, &req.client_id))?;
        tracing::info!(tenant = %req.tenant, client_id = %req.client_id, "client secret rotated");
        Ok(Response::new(pb::RotateClientSecretResponse { client: Some(client.into_pb(Some(secret))) }))
    }

    async fn verify_client_secret(
        &self,
        req: Request<pb::VerifyClientSecretRequest>,
    ) -> Result<Response<pb::VerifyClientSecretResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let (client, hash) = self
            .store
            .get_client_with_secret(&req.tenant, &req.client_id)
            .await?
            .ok_or_else(|| client_not_found(&req.tenant, &req.client_id))?;
        let presented = !req.client_secret.is_empty();
        if (client.app_type.is_confidential() || presented)
            && !constant_time_eq(&secret_hash(&req.client_secret), &hash)
        {
            return Err(unauthenticated("CLIENT_SECRET_INVALID", "the client secret is wrong"));
        }
        Ok(Response::new(pb::VerifyClientSecretResponse { client: Some(client.into_pb(None)) }))
    }

    async fn resolve_client(
        &self,
        req: Request<pb::ResolveClientRequest>,
    ) -> Result<Response<pb::ResolveClientResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        let (client, grants) = self
            .store
            .resolve_client(&req.tenant, &req.client_id)
            .await?
            .ok_or_else(|| client_not_found(&req.tenant, &req.client_id))?;
        // Grants allow something only to a machine-to-machine client.
        let grants = if client.app_type == domain::AppType::MachineToMachine {
            grants.into_iter().map(|(audience, scopes)| pb::ResolvedGrant { audience, scopes }).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ResolveClientResponse { client: Some(client.into_pb(None)), grants }))
    }
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for TenantApi {
    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let key = req.api_key.unwrap_or_default();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        v.check("api_key.description", postern_common::validate::display_text(&key.description, 0, 256));
        if !key.id.is_empty() {
            v.add("api_key.id", "is output only: Postern generates it; leave it empty");
        }
        if !key.key.is_empty() {
            v.add("api_key.key", "is output only: Postern generates it; leave it empty");
        }
        let now = now_micros();
        let expire_time = match &key.expire_time {
            None => None,
            Some(ts) => match from_timestamp(ts) {
                Some(t) if t > now => Some(t),
                _ => {
                    v.add(
                        "api_key.expire_time",
                        "must be a valid time in the future, or unset for a key that never expires",
                    );
                    None
                }
            },
        };
        let scopes = check_scopes(&mut v, "api_key.scopes", &key.scopes);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        // A key hands on no more than it holds.
        if let Principal::Tenant { scopes: own, .. } = &p
            && !scopes.is_subset_of(*own)
        {
            let beyond = scopes.iter().find(|s| !own.contains(*s)).map_or("ALL", |s| s.name());
            return Err(status_with_metadata(
                Code::PermissionDenied,
                "API_KEY_SCOPE_MISSING",
                format!("this API key cannot create a key with the scope {beyond}, which it does not hold itself"),
                [("scope", beyond)],
            ));
        }
        let secret = format!("{API_KEY_PREFIX}{}", random_alphanumeric(40));
        let record =
            ApiKey { id: prefixed("key"), description: key.description, create_time: now, expire_time, scopes };
        let created = store
            .create_api_key(&req.tenant, &record, &secret_hash(&secret))
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        tracing::info!(tenant = %req.tenant, key_id = %created.id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse { api_key: Some(created.into_pb(Some(secret))) }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let limit = page_size(req.page_size)?;
        let scope = format!("keys|{}", req.tenant);
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .store
            .list_api_keys(&req.tenant, after.as_deref(), limit + 1)
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        let next_page_token = next_page_token(&mut rows, limit, &scope, |(seq, _)| seq.clone());
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.into_iter().map(|(_, k)| k.into_pb(None)).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        if !store.revoke_api_key(&req.tenant, &req.id).await? {
            return Err(not_found(
                "API_KEY_NOT_FOUND",
                format!("tenant {:?} has no API key {:?}", req.tenant, postern_common::validate::truncate(&req.id, 64)),
            ));
        }
        tracing::info!(tenant = %req.tenant, key_id = %req.id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    async fn authenticate_key(
        &self,
        req: Request<pb::AuthenticateKeyRequest>,
    ) -> Result<Response<pb::AuthenticateKeyResponse>, Status> {
        principal(&req)?.require_internal()?;
        let key = req.into_inner().key;
        let hash = secret_hash(&key);
        let invalid = || unauthenticated("API_KEY_INVALID", "the bearer key is unknown, revoked or expired");
        if let Some(admin) = self.store.admin_key_hash().await?
            && constant_time_eq(&admin, &hash)
        {
            return Ok(Response::new(pb::AuthenticateKeyResponse {
                admin: true,
                tenant: String::new(),
                key_id: "admin".into(),
                scopes: Vec::new(),
                expire_time: None,
            }));
        }
        let found = self.store.find_api_key(&hash).await?.ok_or_else(invalid)?;
        // An empty list means every scope, so a key left with none is no key.
        if found.scopes == Scopes::none() {
            return Err(invalid());
        }
        let scopes = if found.scopes.is_full() {
            Vec::new()
        } else {
            found.scopes.iter().map(|s| s.to_proto() as i32).collect()
        };
        Ok(Response::new(pb::AuthenticateKeyResponse {
            admin: false,
            tenant: found.tenant,
            key_id: found.key_id,
            scopes,
            expire_time: found.expire_time.map(postern_common::time::to_timestamp),
        }))
    }
}

fn resource_server_not_found(tenant: &str, identifier: &str) -> Status {
    not_found(
        "RESOURCE_SERVER_NOT_FOUND",
        format!(
            "tenant {tenant:?} has no API with identifier {:?}",
            postern_common::validate::truncate(identifier, 128)
        ),
    )
}

fn client_grant_not_found(tenant: &str, id: &str) -> Status {
    not_found(
        "CLIENT_GRANT_NOT_FOUND",
        format!("tenant {tenant:?} has no client grant {:?}", postern_common::validate::truncate(id, 64)),
    )
}

#[tonic::async_trait]
impl pb::resource_server_service_server::ResourceServerService for TenantApi {
    async fn create_resource_server(
        &self,
        req: Request<pb::CreateResourceServerRequest>,
    ) -> Result<Response<pb::CreateResourceServerResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let api = req.resource_server.ok_or_else(|| invalid_field("resource_server", "is required"))?;
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        let new = domain::new_resource_server(&mut v, &api);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let created = store.create_resource_server(&req.tenant, &new).await.map_err(|e| match e {
            StoreError::AlreadyExists => already_exists(
                "RESOURCE_SERVER_ALREADY_EXISTS",
                format!(
                    "tenant {:?} has an API with identifier {:?} already",
                    req.tenant,
                    postern_common::validate::truncate(&new.identifier, 128)
                ),
            ),
            StoreError::TenantNotFound => tenant_not_found(&req.tenant),
            e => e.into(),
        })?;
        tracing::info!(tenant = %req.tenant, identifier = %created.identifier, "API created");
        Ok(Response::new(pb::CreateResourceServerResponse { resource_server: Some(created.into()) }))
    }

    async fn get_resource_server(
        &self,
        req: Request<pb::GetResourceServerRequest>,
    ) -> Result<Response<pb::GetResourceServerResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let api = self
            .store
            .get_resource_server(&req.tenant, &req.identifier)
            .await?
            .ok_or_else(|| resource_server_not_found(&req.tenant, &req.identifier))?;
        Ok(Response::new(pb::GetResourceServerResponse { resource_server: Some(api.into()) }))
    }

    async fn list_resource_servers(
        &self,
        req: Request<pb::ListResourceServersRequest>,
    ) -> Result<Response<pb::ListResourceServersResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let limit = page_size(req.page_size)?;
        let scope = format!("apis|{}", req.tenant);
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .store
            .list_resource_servers(&req.tenant, after.as_deref(), limit + 1)
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        let next_page_token = next_page_token(&mut rows, limit, &scope, |(seq, _)| seq.clone());
        Ok(Response::new(pb::ListResourceServersResponse {
            resource_servers: rows.into_iter().map(|(_, a)| a.into()).collect(),
            next_page_token,
        }))
    }

    async fn update_resource_server(
        &self,
        req: Request<pb::UpdateResourceServerRequest>,
    ) -> Result<Response<pb::UpdateResourceServerResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let api = req.resource_server.ok_or_else(|| invalid_field("resource_server", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        if api.identifier.is_empty() {
            v.add("resource_server.identifier", "is required: it says which API to update");
        }
        let patch = domain::resource_server_patch(&mut v, &api, &mask);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let updated = store
            .update_resource_server(&req.tenant, &api.identifier, &patch)
            .await?
            .ok_or_else(|| resource_server_not_found(&req.tenant, &api.identifier))?;
        tracing::info!(tenant = %req.tenant, identifier = %updated.identifier, "API updated");
        Ok(Response::new(pb::UpdateResourceServerResponse { resource_server: Some(updated.into()) }))
    }

    async fn delete_resource_server(
        &self,
        req: Request<pb::DeleteResourceServerRequest>,
    ) -> Result<Response<pb::DeleteResourceServerResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        if !store.delete_resource_server(&req.tenant, &req.identifier).await? {
            return Err(resource_server_not_found(&req.tenant, &req.identifier));
        }
        tracing::info!(tenant = %req.tenant, identifier = %req.identifier, "API deleted with its client grants");
        Ok(Response::new(pb::DeleteResourceServerResponse {}))
    }
}

#[tonic::async_trait]
impl pb::client_grant_service_server::ClientGrantService for TenantApi {
    async fn create_client_grant(
        &self,
        req: Request<pb::CreateClientGrantRequest>,
    ) -> Result<Response<pb::CreateClientGrantResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let grant = req.client_grant.ok_or_else(|| invalid_field("client_grant", "is required"))?;
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        if !grant.id.is_empty() {
            v.add("client_grant.id", "is output only: Postern generates it; leave it empty");
        }
        if grant.client_id.is_empty() {
            v.add("client_grant.client_id", "is required: the machine-to-machine client to grant the API to");
        }
        domain::check_identifier(&mut v, "client_grant.audience", &grant.audience);
        domain::check_grant_scopes(&mut v, "client_grant.scopes", &grant.scopes);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let tenant = req.tenant.as_str();
        let record = domain::ClientGrant {
            id: prefixed("cgr"),
            client_id: grant.client_id.clone(),
            audience: grant.audience.clone(),
            scopes: grant.scopes.clone(),
            create_time: 0,
            update_time: 0,
        };
        let created = store
            .create_client_grant(tenant, &record, |client, api| {
                let client = client.ok_or_else(|| client_not_found(tenant, &grant.client_id))?;
                let api = api.ok_or_else(|| resource_server_not_found(tenant, &grant.audience))?;
                if client.app_type != domain::AppType::MachineToMachine {
                    return Err(failed_precondition(
                        "CLIENT_NOT_MACHINE_TO_MACHINE",
                        "only machine-to-machine clients (APP_TYPE_MACHINE_TO_MACHINE) can be granted an API: \
                         other applications get tokens for their users, not for themselves",
                    ));
                }
                let mut v = Violations::new();
                domain::check_scopes_of_api(&mut v, "client_grant.scopes", &grant.scopes, api);
                v.into_result()
            })
            .await
            .map_err(|e: Status| {
                if e.code() == Code::AlreadyExists {
                    already_exists(
                        "CLIENT_GRANT_ALREADY_EXISTS",
                        "the client has a grant for this API already; update its scopes instead",
                    )
                } else {
                    e
                }
            })?;
        tracing::info!(tenant, client_id = %created.client_id, grant = %created.id, "client grant created");
        Ok(Response::new(pb::CreateClientGrantResponse { client_grant: Some(created.into()) }))
    }

    async fn get_client_grant(
        &self,
        req: Request<pb::GetClientGrantRequest>,
    ) -> Result<Response<pb::GetClientGrantResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let grant = self
            .store
            .get_client_grant(&req.tenant, &req.id)
            .await?
            .ok_or_else(|| client_grant_not_found(&req.tenant, &req.id))?;
        Ok(Response::new(pb::GetClientGrantResponse { client_grant: Some(grant.into()) }))
    }

    async fn list_client_grants(
        &self,
        req: Request<pb::ListClientGrantsRequest>,
    ) -> Result<Response<pb::ListClientGrantsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        let limit = page_size(req.page_size)?;
        // The token is bound to the filters (their digest, as they may be long).
        let filters = secret_hash(&format!("{}\0{}", req.client_id, req.audience));
        let scope = format!("grants|{}|{}", req.tenant, filters.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .store
            .list_client_grants(&req.tenant, &req.client_id, &req.audience, after.as_deref(), limit + 1)
            .await
            .map_err(map_tenant_missing(&req.tenant))?;
        let next_page_token = next_page_token(&mut rows, limit, &scope, |(seq, _)| seq.clone());
        Ok(Response::new(pb::ListClientGrantsResponse {
            client_grants: rows.into_iter().map(|(_, g)| g.into()).collect(),
            next_page_token,
        }))
    }

    async fn update_client_grant(
        &self,
        req: Request<pb::UpdateClientGrantRequest>,
    ) -> Result<Response<pb::UpdateClientGrantResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        let grant = req.client_grant.ok_or_else(|| invalid_field("client_grant", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        if grant.id.is_empty() {
            v.add("client_grant.id", "is required: it says which grant to update");
        }
        let paths = postern_common::mask::effective_paths(
            &mut v,
            &mask,
            &["scopes"],
            &["id", "client_id", "audience", "create_time", "update_time"],
            |p| p == "scopes" && !grant.scopes.is_empty(),
        );
        if paths.is_empty() && v.is_empty() {
            v.add("update_mask", "names nothing to change: the only field that can change is scopes");
        }
        domain::check_grant_scopes(&mut v, "client_grant.scopes", &grant.scopes);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let tenant = req.tenant.as_str();
        let updated = store
            .update_client_grant(tenant, &grant.id, &grant.scopes, |api| {
                let mut v = Violations::new();
                domain::check_scopes_of_api(&mut v, "client_grant.scopes", &grant.scopes, api);
                v.into_result()
            })
            .await?
            .ok_or_else(|| client_grant_not_found(tenant, &grant.id))?;
        tracing::info!(tenant, client_id = %updated.client_id, grant = %updated.id, "client grant updated");
        Ok(Response::new(pb::UpdateClientGrantResponse { client_grant: Some(updated.into()) }))
    }

    async fn delete_client_grant(
        &self,
        req: Request<pb::DeleteClientGrantRequest>,
    ) -> Result<Response<pb::DeleteClientGrantResponse>, Status> {
        let p = principal(&req)?;
        let store = self.acting(&req)?;
        let req = req.into_inner();
        tenant_scope(&p, &req.tenant)?;
        if !store.delete_client_grant(&req.tenant, &req.id).await? {
            return Err(client_grant_not_found(&req.tenant, &req.id));
        }
        tracing::info!(tenant = %req.tenant, grant = %req.id, "client grant deleted");
        Ok(Response::new(pb::DeleteClientGrantResponse {}))
    }
}
