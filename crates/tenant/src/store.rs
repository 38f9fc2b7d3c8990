//! The tenant service's storage: tenants, clients, API keys and the admin key, on SQLite or
//! PostgreSQL through [`postern_common::db::Db`].

use postern_common::db::{Db, DbError, DbLocation, Migrations, SchemaPolicy, is_unique_violation};
use postern_common::scope::Scopes;
use postern_common::time::now_micros;
use sqlx::Row;
use sqlx::any::AnyRow;

use postern_common::db::Backend;

use crate::domain::{
    ApiKey, ApiScope, AppType, Client, ClientGrant, ClientPatch, NewClient, ResourceServer, ResourceServerPatch, Tenant,
};

mod audit;

pub use audit::{Actor, AuditEvent, AuditFilter, PRUNE_EVERY};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The tenant service's migrations, for both backends (`postern migrate` applies them).
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// What can go wrong in the store, as the API needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named tenant does not exist.
    #[error("tenant not found")]
    TenantNotFound,
    /// A row with the same unique key exists.
    #[error("already exists")]
    AlreadyExists,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// How many reads of the event and audit logs' tails the streams make at once. Every stream
/// of a replica wakes at the same commit and reads after it; taking turns, they hold at most
/// this many of the pool's connections, and never make the pool open new ones (a connect
/// that is slow holds its caller up to the pool's acquire timeout), so that the calls find
/// the rest idle. A read takes about a millisecond.
const FOLLOWER_READS: usize = 2;

/// The tenant service's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// Bumped after each committed event, so that event streams wake at once.
    events: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Turns true at shutdown, ending the event streams.
    closing: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Bumped after each committed audit event, so that audit streams wake at once.
    audit: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The turns of the streams' reads of the logs' tails ([`FOLLOWER_READS`] at once).
    tail_reads: std::sync::Arc<tokio::sync::Semaphore>,
    /// Who the changes made through this handle are recorded as made by ([`Store::acting`]).
    actor: std::sync::Arc<Actor>,
    /// How long audit events are kept, in microseconds; `None`: forever.
    audit_retention: Option<i64>,
    /// The store the audit pruner's timer prunes ([`Store::with_audit_pruner`]), kept alive
    /// by the handles that serve; the timer holds it only weakly, so that it never keeps the
    /// database open by itself. Held, never read.
    #[allow(dead_code)]
    pruned: Option<std::sync::Arc<Store>>,
}

/// The PostgreSQL notification channel that each committed event signals.
const EVENTS_CHANNEL: &str = "postern_tenant_events";

/// What an entry of the event log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A tenant was deleted, with its clients and API keys.
    TenantDeleted = 1,
    /// A client was deleted.
    ClientDeleted = 2,
    /// A client was updated or its secret rotated: what others remember of it (a secret
    /// they saw verified) no longer holds.
    ClientChanged = 3,
    /// An API key was revoked.
    ApiKeyRevoked = 4,
    /// An API (resource server) of the tenant was created, updated or deleted: what others
    /// remember of the tenant's APIs (which exist, the scopes each defines) no longer holds.
    ResourceServersChanged = 5,
    /// The tenant's own fields (display name, logo) were updated: what others remember of
    /// them (the hosted login page's branding) no longer holds.
    TenantUpdated = 6,
}

/// One entry of the durable event log that other services follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, strictly increasing.
    pub sequence: i64,
    /// What happened.
    pub event_type: EventType,
    /// The tenant's name.
    pub tenant: String,
    /// The client concerned, for [`EventType::ClientDeleted`] and
    /// [`EventType::ClientChanged`]; empty otherwise.
    pub client_id: String,
    /// The API key concerned, for [`EventType::ApiKeyRevoked`]; empty otherwise.
    pub api_key_id: String,
    /// When, unix microseconds.
    pub event_time: i64,
    /// The create time of the tenant concerned (unix microseconds): tells a deleted tenant
    /// apart from a later one of the same name.
    pub tenant_create_time: i64,
}

/// An API key found by its hash.
#[derive(Debug, Clone)]
pub struct FoundKey {
    /// The tenant it reaches.
    pub tenant: String,
    /// Its id.
    pub key_id: String,
    /// Its scopes.
    pub scopes: Scopes,
    /// When it expires (unix microseconds), if ever.
    pub expire_time: Option<i64>,
}

const CLIENT_COLUMNS: &str = "c.client_id, t.name AS tenant, c.name, c.app_type, c.callbacks, \
     c.allowed_logout_urls, c.allowed_origins, c.backchannel_logout_uri, c.create_time, c.update_time, c.seq";

impl Store {
    /// Opens the store at `location`, running its migrations.
    pub async fn open(location: &DbLocation) -> Result<Self, DbError> {
        Self::open_with(location, SchemaPolicy::Migrate).await
    }

    /// Opens the store at `location`, migrating it or refusing a schema that is behind, per
    /// `policy`.
    pub async fn open_with(location: &DbLocation, policy: SchemaPolicy) -> Result<Self, DbError> {
        let db = Db::open_with(location, MIGRATIONS, policy).await?;
        let events = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let audit = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let (woken_events, woken_audit) = (events.clone(), audit.clone());
        // Events committed by other replicas on a shared PostgreSQL wake the streams at once;
        // both listeners connect together.
        tokio::join!(
            db.on_notify(EVENTS_CHANNEL, move || woken_events.send_modify(|n| *n = n.wrapping_add(1))),
            db.on_notify(audit::AUDIT_CHANNEL, move || woken_audit.send_modify(|n| *n = n.wrapping_add(1))),
        );
        Ok(Self {
            db,
            events,
            closing: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
            audit,
            tail_reads: std::sync::Arc::new(tokio::sync::Semaphore::new(FOLLOWER_READS)),
            actor: std::sync::Arc::new(Actor::system()),
            audit_retention: None,
            pruned: None,
        })
    }

    /// Ends every open event stream (at shutdown, so that a graceful stop is not held up by
    /// streams that never end).
    pub fn shutdown_streams(&self) {
        self.closing.send_replace(true);
    }

    /// A receiver that turns true at shutdown.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// A receiver that changes after each event this process commits and, on PostgreSQL,
    /// each event another replica commits (by `NOTIFY`; the followers also poll, in case a
    /// notification is lost with the listener's connection).
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// Up to `limit` events after sequence `after`, in order; the read takes its turn with
    /// the other streams' ([`FOLLOWER_READS`]).
    pub async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let _turn = self.tail_turn().await;
        let rows = sqlx::query(
            "SELECT sequence, event_type, tenant, client_id, api_key_id, event_time, tenant_create_time \
             FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let kind: i64 = r.try_get("event_type")?;
                let event_type = match kind {
                    1 => EventType::TenantDeleted,
                    2 => EventType::ClientDeleted,
                    3 => EventType::ClientChanged,
                    4 => EventType::ApiKeyRevoked,
                    5 => EventType::ResourceServersChanged,
                    6 => EventType::TenantUpdated,
                    k => return Err(sqlx::Error::Decode(format!("unknown event type {k} in store").into()).into()),
                };
                Ok(Event {
                    sequence: r.try_get("sequence")?,
                    event_type,
                    tenant: r.try_get("tenant")?,
                    client_id: r.try_get("client_id")?,
                    api_key_id: r.try_get("api_key_id")?,
                    event_time: r.try_get("event_time")?,
                    tenant_create_time: r.try_get("tenant_create_time")?,
                })
            })
            .collect()
    }

    /// A turn to read a log's tail for a stream ([`FOLLOWER_READS`]).
    async fn tail_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // Never closed: `None` would only read without a turn.
        self.tail_reads.acquire().await.ok()
    }

    /// The sequence of the last event committed; 0 for an empty log.
    pub async fn last_event_sequence(&self) -> Result<i64, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM events").fetch_one(self.db.pool()).await?;
        Ok(last.unwrap_or(0))
    }

    /// Appends an event in `tx`, the transaction of the change it records. On PostgreSQL the
    /// table is locked first so that events commit in sequence order: a follower that read
    /// up to N never finds a smaller sequence committed after it.
    async fn append_event(
        &self,
        tx: &mut postern_common::db::WriteTx,
        event_type: EventType,
        tenant: &str,
        tenant_create_time: i64,
        subject: &str,
    ) -> Result<(), sqlx::Error> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        self.db.notify_on_commit(tx, EVENTS_CHANNEL).await?;
        let (client_id, api_key_id) =
            if event_type == EventType::ApiKeyRevoked { ("", subject) } else { (subject, "") };
        sqlx::query(
            "INSERT INTO events (event_type, tenant, client_id, api_key_id, event_time, tenant_create_time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event_type as i64)
        .bind(tenant)
        .bind(client_id)
        .bind(api_key_id)
        .bind(now_micros())
        .bind(tenant_create_time)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn events_committed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        // Every change that writes an event writes its audit event too.
        self.audit_committed();
    }

    /// Writes in `tx` the audit event of a change of `tenant`'s configuration, by this
    /// store's actor, with `details`.
    async fn audit_change(
        &self,
        tx: &mut postern_common::db::WriteTx,
        tenant: &str,
        event_type: &str,
        client_id: &str,
        details: &[(&str, &str)],
    ) -> Result<(), sqlx::Error> {
        let mut event = self.own_event(tenant, event_type);
        event.client_id = client_id.to_owned();
        event.details = details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.write_audit(tx, &[event]).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The database, for the management port's readiness check and pool gauges.
    pub fn db(&self) -> &Db {
        &self.db
    }

    // ---- tenants ----

    /// Inserts a tenant; [`StoreError::AlreadyExists`] if the name is taken.
    pub async fn create_tenant(&self, name: &str, display_name: &str, logo_url: &str) -> Result<Tenant, StoreError> {
        let now = now_micros();
        let id = postern_common::ids::new_id();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenants (id, name, display_name, logo_url, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(display_name)
        .bind(logo_url)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(dup)?;
        // The log of a tenant deleted earlier under this name is gone with it (delete_tenant).
        self.write_audit(&mut tx, &[self.own_event(name, "TENANT_CREATED")]).await?;
        tx.commit().await?;
        self.audit_committed();
        Ok(Tenant {
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            logo_url: logo_url.to_owned(),
            create_time: now,
            update_time: now,
        })
    }

    /// The tenant called `name`.
    pub async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let row =
            sqlx::query("SELECT name, display_name, logo_url, create_time, update_time FROM tenants WHERE name = $1")
                .bind(name)
                .fetch_optional(self.db.pool())
                .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// Up to `limit` tenants after name `after`, in name order; only `only` when given.
    pub async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: usize,
        only: Option<&str>,
    ) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, display_name, logo_url, create_time, update_time FROM tenants \
             WHERE name > $1 AND ($2 = '' OR name = $2) ORDER BY name LIMIT $3",
        )
        .bind(after.unwrap_or(""))
        .bind(only.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Sets a tenant's display name and logo (each when given); `None` if there is no such
    /// tenant.
    pub async fn update_tenant(
        &self,
        name: &str,
        display_name: Option<&str>,
        logo_url: Option<&str>,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "UPDATE tenants SET display_name = COALESCE($2, display_name), logo_url = COALESCE($3, logo_url), \
             update_time = $4 WHERE name = $1 RETURNING name, display_name, logo_url, create_time, update_time",
        )
        .bind(name)
        .bind(display_name)
        .bind(logo_url)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let tenant_create_time: i64 = row.try_get("create_time")?;
        self.append_event(&mut tx, EventType::TenantUpdated, name, tenant_create_time, "").await?;
        let mut event = self.own_event(name, "TENANT_UPDATED");
        let changed: Vec<&str> = [("display_name", display_name.is_some()), ("logo_url", logo_url.is_some())]
            .into_iter()
            .filter_map(|(field, set)| set.then_some(field))
            .collect();
        event.details.insert("fields".into(), changed.join(","));
        self.write_audit(&mut tx, &[event]).await?;
        tx.commit().await?;
        self.events_committed();
        tenant_from_row(&row).map(Some)
    }

    /// Deletes a tenant with its clients and keys; whether it existed.
    pub async fn delete_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query("DELETE FROM tenants WHERE name = $1 RETURNING create_time")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let tenant_create_time: i64 = row.try_get("create_time")?;
        self.append_event(&mut tx, EventType::TenantDeleted, name, tenant_create_time, "").await?;
        // The tenant's audit log goes with it: a later tenant of the same name starts empty.
        sqlx::query("DELETE FROM audit_events WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    // ---- clients ----

    /// Inserts a client into `tenant`.
    pub async fn create_client(
        &self,
        tenant: &str,
        client: &NewClient,
        secret_hash: &[u8],
    ) -> Result<Client, StoreError> {
        let now = now_micros();
        let seq = postern_common::ids::new_id();
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO clients (client_id, tenant_id, seq, name, app_type, callbacks, allowed_logout_urls, secret_hash, create_time, update_time, allowed_origins, backchannel_logout_uri) \
             SELECT $1, id, $2, $3, $4, $5, $6, $7, $8, $8, $10, $11 FROM tenants WHERE name = $9 RETURNING client_id",
        )
        .bind(&client.client_id)
        .bind(&seq)
        .bind(&client.name)
        .bind(client.app_type as i64)
        .bind(json_list(&client.callbacks))
        .bind(json_list(&client.allowed_logout_urls))
        .bind(secret_hash)
        .bind(now)
        .bind(tenant)
        .bind(json_list(&client.allowed_origins))
        .bind(&client.backchannel_logout_uri)
        .fetch_optional(&mut *tx)
        .await
        .map_err(dup)?;
        if row.is_none() {
            return Err(StoreError::TenantNotFound);
        }
        let mut event = self.own_event(tenant, "CLIENT_CREATED");
        event.client_id = client.client_id.clone();
        event.details.insert("name".into(), client.name.clone());
        self.write_audit(&mut tx, &[event]).await?;
        tx.commit().await?;
        self.audit_committed();
        Ok(Client {
            client_id: client.client_id.clone(),
            tenant: tenant.to_owned(),
            name: client.name.clone(),
            app_type: client.app_type,
            callbacks: client.callbacks.clone(),
            allowed_logout_urls: client.allowed_logout_urls.clone(),
            allowed_origins: client.allowed_origins.clone(),
            backchannel_logout_uri: client.backchannel_logout_uri.clone(),
            create_time: now,
            update_time: now,
        })
    }

    /// The client `client_id` of `tenant`.
    pub async fn get_client(&self, tenant: &str, client_id: &str) -> Result<Option<Client>, StoreError> {
        Ok(self.get_client_with_secret(tenant, client_id).await?.map(|(c, _)| c))
    }

    /// The client `client_id` of `tenant` with its secret hash.
    pub async fn get_client_with_secret(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Result<Option<(Client, Vec<u8>)>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS}, c.secret_hash FROM clients c JOIN tenants t ON t.id = c.tenant_id \
             WHERE t.name = $1 AND c.client_id = $2"
        );
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(client_id).fetch_optional(self.db.pool()).await?;
        match row {
            Some(r) => Ok(Some((client_from_row(&r)?, r.try_get("secret_hash")?))),
            None => Ok(None),
        }
    }

    /// Up to `limit` clients of `tenant` after position `after`, oldest first, each with its
    /// position (for the next page token). [`StoreError::TenantNotFound`] if no such tenant.
    pub async fn list_clients(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Client)>, StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM clients c JOIN tenants t ON t.id = c.tenant_id \
             WHERE c.tenant_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&tenant_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("seq")?, client_from_row(r)?))).collect()
    }

    /// Applies `patch` to a client atomically; `None` if there is no such client.
    pub async fn update_client(
        &self,
        tenant: &str,
        client_id: &str,
        patch: &ClientPatch,
    ) -> Result<Option<Client>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "UPDATE clients SET name = COALESCE($3, name), app_type = COALESCE($4, app_type), \
             callbacks = COALESCE($5, callbacks), allowed_logout_urls = COALESCE($6, allowed_logout_urls), update_time = $7, \
             allowed_origins = COALESCE($8, allowed_origins), backchannel_logout_uri = COALESCE($9, backchannel_logout_uri) \
             WHERE client_id = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) \
             RETURNING (SELECT create_time FROM tenants WHERE name = $1) AS tenant_create_time",
        )
        .bind(tenant)
        .bind(client_id)
        .bind(patch.name.as_deref())
        .bind(patch.app_type.map(|a| a as i64))
        .bind(patch.callbacks.as_deref().map(json_list))
        .bind(patch.allowed_logout_urls.as_deref().map(json_list))
        .bind(now_micros())
        .bind(patch.allowed_origins.as_deref().map(json_list))
        .bind(patch.backchannel_logout_uri.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        if !self.commit_client_event(tx, row, EventType::ClientChanged, "CLIENT_UPDATED", tenant, client_id).await? {
            return Ok(None);
        }
        self.get_client(tenant, client_id).await
    }

    /// Ends the transaction of a change to a client: with `row` (the changed client's
    /// `tenant_create_time`), appends the change's event and commits; without it (no such
    /// client), rolls back. Whether the client existed.
    async fn commit_client_event(
        &self,
        mut tx: postern_common::db::WriteTx,
        row: Option<sqlx::any::AnyRow>,
        event_type: EventType,
        audit_type: &str,
        tenant: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let Some(row) = row else {
            return Ok(false);
        };
        let tenant_create_time: i64 = row.try_get("tenant_create_time")?;
        self.append_event(&mut tx, event_type, tenant, tenant_create_time, client_id).await?;
        let mut event = self.own_event(tenant, audit_type);
        event.client_id = client_id.to_owned();
        self.write_audit(&mut tx, &[event]).await?;
        tx.commit().await?;
        self.events_committed();
        self.audit_committed();
        Ok(true)
    }

    /// Deletes a client; whether it existed.
    pub async fn delete_client(&self, tenant: &str, client_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM clients WHERE client_id = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) \
             RETURNING (SELECT create_time FROM tenants WHERE name = $1) AS tenant_create_time",
        )
        .bind(tenant)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        self.commit_client_event(tx, row, EventType::ClientDeleted, "CLIENT_DELETED", tenant, client_id).await
    }

    /// Replaces a client's secret hash; whether the client exists.
    pub async fn set_client_secret(
        &self,
        tenant: &str,
        client_id: &str,
        secret_hash: &[u8],
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "UPDATE clients SET secret_hash = $3, update_time = $4 \
             WHERE client_id = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) \
             RETURNING (SELECT create_time FROM tenants WHERE name = $1) AS tenant_create_time",
        )
        .bind(tenant)
        .bind(client_id)
        .bind(secret_hash)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await?;
        self.commit_client_event(tx, row, EventType::ClientChanged, "CLIENT_SECRET_ROTATED", tenant, client_id).await
    }

    // ---- API keys ----

    /// Inserts an API key of `tenant`.
    pub async fn create_api_key(&self, tenant: &str, key: &ApiKey, key_hash: &[u8]) -> Result<ApiKey, StoreError> {
        let seq = postern_common::ids::new_id();
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, seq, description, key_hash, create_time, expire_time, scopes) \
             SELECT $1, id, $2, $3, $4, $5, $6, $8 FROM tenants WHERE name = $7 RETURNING id",
        )
        .bind(&key.id)
        .bind(&seq)
        .bind(&key.description)
        .bind(key_hash)
        .bind(key.create_time)
        .bind(key.expire_time)
        .bind(tenant)
        .bind(key.scopes.encode())
        .fetch_optional(&mut *tx)
        .await
        .map_err(dup)?;
        if row.is_none() {
            return Err(StoreError::TenantNotFound);
        }
        let mut event = self.own_event(tenant, "API_KEY_CREATED");
        event.details.insert("api_key_id".into(), key.id.clone());
        self.write_audit(&mut tx, &[event]).await?;
        tx.commit().await?;
        self.audit_committed();
        Ok(key.clone())
    }

    /// Up to `limit` keys of `tenant` after position `after`, oldest first.
    pub async fn list_api_keys(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ApiKey)>, StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let rows = sqlx::query(
            "SELECT id, seq, description, create_time, expire_time, scopes FROM api_keys \
             WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(&tenant_id)
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("seq")?,
                    ApiKey {
                        id: r.try_get("id")?,
                        description: r.try_get("description")?,
                        create_time: r.try_get("create_time")?,
                        expire_time: r.try_get("expire_time")?,
                        scopes: stored_scopes(r.try_get("scopes")?),
                    },
                ))
            })
            .collect()
    }

    /// Deletes a key of `tenant`, recording it in the event log; whether it existed.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM api_keys WHERE id = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) \
             RETURNING (SELECT create_time FROM tenants WHERE name = $1) AS tenant_create_time",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let tenant_create_time: i64 = row.try_get("tenant_create_time")?;
        self.append_event(&mut tx, EventType::ApiKeyRevoked, tenant, tenant_create_time, id).await?;
        let mut event = self.own_event(tenant, "API_KEY_REVOKED");
        event.details.insert("api_key_id".into(), id.to_owned());
        self.write_audit(&mut tx, &[event]).await?;
        tx.commit().await?;
        self.events_committed();
        self.audit_committed();
        Ok(true)
    }

    /// The API key with this hash, unless expired.
    pub async fn find_api_key(&self, key_hash: &[u8]) -> Result<Option<FoundKey>, StoreError> {
        let row = sqlx::query(
            "SELECT k.id, t.name, k.scopes, k.expire_time FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.key_hash = $1 AND (k.expire_time IS NULL OR k.expire_time > $2)",
        )
        .bind(key_hash)
        .bind(now_micros())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok(FoundKey {
                tenant: r.try_get("name")?,
                key_id: r.try_get("id")?,
                scopes: stored_scopes(r.try_get("scopes")?),
                expire_time: r.try_get("expire_time")?,
            })
        })
        .transpose()
    }

    /// The hash of the admin key, if one was set.
    pub async fn admin_key_hash(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT key_hash FROM admin_key WHERE id = 1").fetch_optional(self.db.pool()).await?;
        Ok(row.map(|r| r.try_get("key_hash")).transpose()?)
    }

    /// Sets (or replaces) the hash of the admin key. An upsert, so that replicas starting
    /// together with the same configured key do not trip over each other.
    pub async fn set_admin_key_hash(&self, key_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO admin_key (id, key_hash, create_time) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, create_time = excluded.create_time",
        )
        .bind(key_hash)
        .bind(now_micros())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    async fn tenant_id(&self, tenant: &str) -> Result<String, StoreError> {
        let row =
            sqlx::query("SELECT id FROM tenants WHERE name = $1").bind(tenant).fetch_optional(self.db.pool()).await?;
        match row {
            Some(r) => Ok(r.try_get("id")?),
            None => Err(StoreError::TenantNotFound),
        }
    }
}

/// The columns of an API row (`r`).
const API_COLUMNS: &str = "r.id, r.seq, r.identifier, r.name, r.scopes, r.create_time, r.update_time";
/// The columns of a grant row (`g`, with its API `r`).
const GRANT_COLUMNS: &str =
    "g.id, g.seq, g.client_id, r.identifier AS audience, g.scopes, g.create_time, g.update_time";

/// Client grants and APIs (resource servers).
impl Store {
    /// On PostgreSQL, takes the event log's lock first, so that the reads of a change that
    /// records events see every change committed before it (and none commits between them).
    async fn lock_events(&self, tx: &mut postern_common::db::WriteTx) -> Result<(), sqlx::Error> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        self.db.notify_on_commit(tx, EVENTS_CHANNEL).await?;
        Ok(())
    }

    /// Records in `tx` that the grants of each of `client_ids` changed, so that whoever
    /// remembers what they allow forgets it.
    async fn grants_changed(
        &self,
        tx: &mut postern_common::db::WriteTx,
        tenant: &str,
        client_ids: &[String],
    ) -> Result<(), StoreError> {
        if client_ids.is_empty() {
            return Ok(());
        }
        let tenant_create_time: i64 = sqlx::query_scalar("SELECT create_time FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
        let mut done: Vec<&String> = Vec::new();
        for client_id in client_ids {
            if !done.contains(&client_id) {
                self.append_event(tx, EventType::ClientChanged, tenant, tenant_create_time, client_id).await?;
                done.push(client_id);
            }
        }
        Ok(())
    }

    /// Inserts an API into `tenant`; [`StoreError::AlreadyExists`] if its identifier is
    /// taken, [`StoreError::TenantNotFound`] if there is no such tenant.
    pub async fn create_resource_server(
        &self,
        tenant: &str,
        api: &ResourceServer,
    ) -> Result<ResourceServer, StoreError> {
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        self.lock_events(&mut tx).await?;
        let row = sqlx::query(
            "INSERT INTO resource_servers (id, tenant_id, seq, identifier, name, scopes, create_time, update_time) \
             SELECT $1, id, $2, $3, $4, $5, $6, $6 FROM tenants WHERE name = $7 RETURNING id",
        )
        .bind(&api.id)
        .bind(postern_common::ids::new_id())
        .bind(&api.identifier)
        .bind(&api.name)
        .bind(api_scopes_json(&api.scopes))
        .bind(now)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await
        .map_err(dup)?;
        if row.is_none() {
            return Err(StoreError::TenantNotFound);
        }
        let details = [("identifier", api.identifier.as_str()), ("change", "created")];
        self.audit_change(&mut tx, tenant, "RESOURCE_SERVER_CHANGED", "", &details).await?;
        self.apis_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(ResourceServer { create_time: now, update_time: now, ..api.clone() })
    }

    /// Records in `tx` that the tenant's APIs changed, so that whoever remembers which APIs
    /// exist and the scopes each defines (the authenticator, for user logins with an
    /// `audience`) forgets it.
    async fn apis_changed(&self, tx: &mut postern_common::db::WriteTx, tenant: &str) -> Result<(), StoreError> {
        let tenant_create_time: i64 = sqlx::query_scalar("SELECT create_time FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
        self.append_event(tx, EventType::ResourceServersChanged, tenant, tenant_create_time, "").await?;
        Ok(())
    }

    /// The API `identifier` of `tenant`.
    pub async fn get_resource_server(
        &self,
        tenant: &str,
        identifier: &str,
    ) -> Result<Option<ResourceServer>, StoreError> {
        let sql = format!(
            "SELECT {API_COLUMNS} FROM resource_servers r JOIN tenants t ON t.id = r.tenant_id \
             WHERE t.name = $1 AND r.identifier = $2"
        );
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(identifier).fetch_optional(self.db.pool()).await?;
        row.map(|r| api_from_row(&r)).transpose()
    }

    /// Up to `limit` APIs of `tenant` after position `after`, oldest first, each with its
    /// position. [`StoreError::TenantNotFound`] if no such tenant.
    pub async fn list_resource_servers(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ResourceServer)>, StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let sql = format!(
            "SELECT {API_COLUMNS} FROM resource_servers r WHERE r.tenant_id = $1 AND r.seq > $2 ORDER BY r.seq LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&tenant_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("seq")?, api_from_row(r)?))).collect()
    }

    /// Applies `patch` to an API; `None` if there is no such API. Scopes the API no longer
    /// defines are taken from its grants in the same transaction, with an event for each
    /// client whose grant changed.
    pub async fn update_resource_server(
        &self,
        tenant: &str,
        identifier: &str,
        patch: &ResourceServerPatch,
    ) -> Result<Option<ResourceServer>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        self.lock_events(&mut tx).await?;
        let row = sqlx::query(
            "UPDATE resource_servers SET name = COALESCE($3, name), scopes = COALESCE($4, scopes), update_time = $5 \
             WHERE identifier = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) RETURNING id",
        )
        .bind(tenant)
        .bind(identifier)
        .bind(patch.name.as_deref())
        .bind(patch.scopes.as_deref().map(api_scopes_json))
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let api_id: String = row.try_get("id")?;
        if let Some(scopes) = &patch.scopes {
            let grants = sqlx::query("SELECT id, client_id, scopes FROM client_grants WHERE resource_server_id = $1")
                .bind(&api_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut changed = Vec::new();
            for g in &grants {
                let held = parse_list(&g.try_get::<String, _>("scopes")?)?;
                let kept: Vec<String> =
                    held.iter().filter(|s| scopes.iter().any(|a| &a.value == *s)).cloned().collect();
                if kept.len() != held.len() {
                    sqlx::query("UPDATE client_grants SET scopes = $2, update_time = $3 WHERE id = $1")
                        .bind(g.try_get::<String, _>("id")?)
                        .bind(json_list(&kept))
                        .bind(now_micros())
                        .execute(&mut *tx)
                        .await?;
                    changed.push(g.try_get::<String, _>("client_id")?);
                }
            }
            self.grants_changed(&mut tx, tenant, &changed).await?;
        }
        let details = [("identifier", identifier), ("change", "updated")];
        self.audit_change(&mut tx, tenant, "RESOURCE_SERVER_CHANGED", "", &details).await?;
        self.apis_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        self.events_committed();
        self.get_resource_server(tenant, identifier).await
    }

    /// Deletes an API and its grants, with an event for each client that held one; whether
    /// it existed.
    pub async fn delete_resource_server(&self, tenant: &str, identifier: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        self.lock_events(&mut tx).await?;
        let api_id: Option<String> = sqlx::query_scalar(
            "SELECT r.id FROM resource_servers r JOIN tenants t ON t.id = r.tenant_id \
             WHERE t.name = $1 AND r.identifier = $2",
        )
        .bind(tenant)
        .bind(identifier)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(api_id) = api_id else {
            return Ok(false);
        };
        // The grants go with it (ON DELETE CASCADE too), each client's change recorded.
        let clients: Vec<String> =
            sqlx::query_scalar("DELETE FROM client_grants WHERE resource_server_id = $1 RETURNING client_id")
                .bind(&api_id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM resource_servers WHERE id = $1").bind(&api_id).execute(&mut *tx).await?;
        self.grants_changed(&mut tx, tenant, &clients).await?;
        let details = [("identifier", identifier), ("change", "deleted")];
        self.audit_change(&mut tx, tenant, "RESOURCE_SERVER_CHANGED", "", &details).await?;
        self.apis_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    /// Inserts a grant of `tenant` for the client and API it names, once `check` accepts
    /// the client and the API as found (each `None` when the tenant has no such one) in the
    /// same transaction; records the change for the client. A second grant of the client for
    /// the same API is [`StoreError::AlreadyExists`].
    pub async fn create_client_grant<E: From<StoreError>>(
        &self,
        tenant: &str,
        grant: &ClientGrant,
        check: impl FnOnce(Option<&Client>, Option<&ResourceServer>) -> Result<(), E>,
    ) -> Result<ClientGrant, E> {
        let mut tx = self.db.begin_write().await.map_err(StoreError::from)?;
        self.lock_events(&mut tx).await.map_err(StoreError::from)?;
        let (client, api) = self.grant_parties(&mut tx, tenant, &grant.client_id, &grant.audience).await?;
        check(client.as_ref(), api.as_ref())?;
        let Some(api) = api else { return Err(StoreError::TenantNotFound.into()) };
        let now = now_micros();
        sqlx::query(
            "INSERT INTO client_grants (id, tenant_id, seq, client_id, resource_server_id, scopes, create_time, update_time) \
             SELECT $1, id, $2, $3, $4, $5, $6, $6 FROM tenants WHERE name = $7",
        )
        .bind(&grant.id)
        .bind(postern_common::ids::new_id())
        .bind(&grant.client_id)
        .bind(&api.id)
        .bind(json_list(&grant.scopes))
        .bind(now)
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(dup)?;
        self.grants_changed(&mut tx, tenant, std::slice::from_ref(&grant.client_id)).await?;
        let details =
            [("client_grant_id", grant.id.as_str()), ("audience", grant.audience.as_str()), ("change", "created")];
        self.audit_change(&mut tx, tenant, "CLIENT_GRANT_CHANGED", &grant.client_id, &details)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        self.events_committed();
        Ok(ClientGrant { create_time: now, update_time: now, ..grant.clone() })
    }

    /// The client and the API of a grant to be, as found in `tx`.
    async fn grant_parties(
        &self,
        tx: &mut postern_common::db::WriteTx,
        tenant: &str,
        client_id: &str,
        audience: &str,
    ) -> Result<(Option<Client>, Option<ResourceServer>), StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM clients c JOIN tenants t ON t.id = c.tenant_id \
             WHERE t.name = $1 AND c.client_id = $2"
        );
        let client = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(client_id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| client_from_row(&r))
            .transpose()?;
        let sql = format!(
            "SELECT {API_COLUMNS} FROM resource_servers r JOIN tenants t ON t.id = r.tenant_id \
             WHERE t.name = $1 AND r.identifier = $2"
        );
        let api = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(audience)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| api_from_row(&r))
            .transpose()?;
        Ok((client, api))
    }

    /// The grant `id` of `tenant`.
    pub async fn get_client_grant(&self, tenant: &str, id: &str) -> Result<Option<ClientGrant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM client_grants g JOIN resource_servers r ON r.id = g.resource_server_id \
             JOIN tenants t ON t.id = g.tenant_id WHERE t.name = $1 AND g.id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id).fetch_optional(self.db.pool()).await?;
        row.map(|r| grant_from_row(&r)).transpose()
    }

    /// Up to `limit` grants of `tenant` after position `after`, oldest first, only those of
    /// `client_id` and for the API `audience` when they are not empty.
    /// [`StoreError::TenantNotFound`] if no such tenant.
    pub async fn list_client_grants(
        &self,
        tenant: &str,
        client_id: &str,
        audience: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ClientGrant)>, StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM client_grants g JOIN resource_servers r ON r.id = g.resource_server_id \
             WHERE g.tenant_id = $1 AND g.seq > $2 AND ($3 = '' OR g.client_id = $3) AND ($4 = '' OR r.identifier = $4) \
             ORDER BY g.seq LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&tenant_id)
            .bind(after.unwrap_or(""))
            .bind(client_id)
            .bind(audience)
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("seq")?, grant_from_row(r)?))).collect()
    }

    /// Replaces a grant's scopes once `check` accepts them against its API as it is in the
    /// same transaction; records the change for its client. `None` if there is no such grant.
    pub async fn update_client_grant<E: From<StoreError>>(
        &self,
        tenant: &str,
        id: &str,
        scopes: &[String],
        check: impl FnOnce(&ResourceServer) -> Result<(), E>,
    ) -> Result<Option<ClientGrant>, E> {
        let mut tx = self.db.begin_write().await.map_err(StoreError::from)?;
        self.lock_events(&mut tx).await.map_err(StoreError::from)?;
        let sql = format!(
            "SELECT {API_COLUMNS}, g.client_id AS grant_client FROM client_grants g \
             JOIN resource_servers r ON r.id = g.resource_server_id JOIN tenants t ON t.id = g.tenant_id \
             WHERE t.name = $1 AND g.id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let Some(row) = row else { return Ok(None) };
        let api = api_from_row(&row)?;
        let client_id: String = row.try_get("grant_client").map_err(StoreError::from)?;
        check(&api)?;
        sqlx::query("UPDATE client_grants SET scopes = $2, update_time = $3 WHERE id = $1")
            .bind(id)
            .bind(json_list(scopes))
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let details = [("client_grant_id", id), ("audience", api.identifier.as_str()), ("change", "updated")];
        self.audit_change(&mut tx, tenant, "CLIENT_GRANT_CHANGED", &client_id, &details)
            .await
            .map_err(StoreError::from)?;
        self.grants_changed(&mut tx, tenant, &[client_id]).await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.events_committed();
        Ok(self.get_client_grant(tenant, id).await?)
    }

    /// Deletes a grant of `tenant`, recording the change for its client; whether it existed.
    pub async fn delete_client_grant(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        self.lock_events(&mut tx).await?;
        let client: Option<String> = sqlx::query_scalar(
            "DELETE FROM client_grants WHERE id = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $1) \
             RETURNING client_id",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(client) = client else {
            return Ok(false);
        };
        let details = [("client_grant_id", id), ("change", "deleted")];
        self.audit_change(&mut tx, tenant, "CLIENT_GRANT_CHANGED", &client, &details).await?;
        self.grants_changed(&mut tx, tenant, &[client]).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    /// The client `client_id` of `tenant` with its grants (each API's identifier and the
    /// scopes granted), in one read.
    pub async fn resolve_client(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Result<Option<(Client, Vec<(String, Vec<String>)>)>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM clients c JOIN tenants t ON t.id = c.tenant_id \
             WHERE t.name = $1 AND c.client_id = $2"
        );
        let Some(row) =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(client_id).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let client = client_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT r.identifier, g.scopes FROM client_grants g JOIN resource_servers r ON r.id = g.resource_server_id \
             WHERE g.client_id = $1 ORDER BY r.identifier",
        )
        .bind(client_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let grants = rows
            .iter()
            .map(|r| Ok((r.try_get("identifier")?, parse_list(&r.try_get::<String, _>("scopes")?)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Some((client, grants)))
    }
}

fn api_scopes_json(scopes: &[ApiScope]) -> String {
    serde_json::Value::Array(
        scopes.iter().map(|s| serde_json::json!({ "value": s.value, "description": s.description })).collect(),
    )
    .to_string()
}

fn parse_api_scopes(text: &str) -> Result<Vec<ApiScope>, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("an API's scopes in store: {what}").into());
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let items = value.as_array().ok_or_else(|| bad("not a list"))?;
    items
        .iter()
        .map(|item| {
            let field = |name: &str| item.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            Ok(ApiScope {
                value: field("value").ok_or_else(|| bad("a scope without a value"))?,
                description: field("description").unwrap_or_default(),
            })
        })
        .collect()
}

fn api_from_row(r: &AnyRow) -> Result<ResourceServer, StoreError> {
    Ok(ResourceServer {
        id: r.try_get("id")?,
        identifier: r.try_get("identifier")?,
        name: r.try_get("name")?,
        scopes: parse_api_scopes(&r.try_get::<String, _>("scopes")?)?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn grant_from_row(r: &AnyRow) -> Result<ClientGrant, StoreError> {
    Ok(ClientGrant {
        id: r.try_get("id")?,
        client_id: r.try_get("client_id")?,
        audience: r.try_get("audience")?,
        scopes: parse_list(&r.try_get::<String, _>("scopes")?)?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn dup(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) { StoreError::AlreadyExists } else { StoreError::Db(e) }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn parse_list(text: &str) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn tenant_from_row(r: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        logo_url: r.try_get("logo_url")?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn client_from_row(r: &AnyRow) -> Result<Client, StoreError> {
    let app_type: i64 = r.try_get("app_type")?;
    Ok(Client {
        client_id: r.try_get("client_id")?,
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        app_type: AppType::from_i64(app_type)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown app type {app_type} in store").into()))?,
        callbacks: parse_list(&r.try_get::<String, _>("callbacks")?)?,
        allowed_logout_urls: parse_list(&r.try_get::<String, _>("allowed_logout_urls")?)?,
        allowed_origins: parse_list(&r.try_get::<String, _>("allowed_origins")?)?,
        backchannel_logout_uri: r.try_get("backchannel_logout_uri")?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
    })
}

#[cfg(test)]
mod tests;

/// A key's stored scopes. Only this store writes them, from valid scopes; a name it cannot
/// read (written by a later version) takes away every scope rather than granting them.
fn stored_scopes(text: String) -> Scopes {
    Scopes::decode(&text).unwrap_or_else(|| {
        tracing::warn!(scopes = %text, "an API key has scopes this version does not know; it gets none");
        Scopes::none()
    })
}
