//! The registry's storage, on SQLite or PostgreSQL through [`postern_common::db::Db`].
//!
//! A connection is one row: its spec as JSON (no secrets), its secrets sealed as one blob,
//! and the columns that queries filter on (tenant, name, strategy, category). Enablement and
//! domain aliases are relations of their own, each indexed in both directions, so that the
//! questions asked at login (`ListClientConnections`, `ResolveConnection`,
//! `DiscoverConnection`) are index lookups whatever the size of the tenant.
//!
//! The store never sees a secret in clear: the API seals and opens the blob.

use postern_common::db::{
    Backend, Db, DbError, DbLocation, Migrations, SchemaPolicy, is_foreign_key_violation, is_unique_violation,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use postern_common::time::now_micros;
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::watch;

use crate::domain::{Connection, ConnectionRef, ConnectionSpec};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The registry service's migrations, for both backends (`postern migrate` applies them).
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// What can go wrong in the store, as the API needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The tenant has a connection with that name (or the id is taken).
    #[error("a connection with that name already exists")]
    AlreadyExists,
    /// The connection does not exist (any more).
    #[error("connection not found")]
    NotFound,
    /// The client was deleted from the tenant.
    #[error("the client was deleted")]
    ClientDeleted,
    /// The tenant was deleted.
    #[error("the tenant was deleted")]
    TenantDeleted,
    /// A stored spec could not be read back.
    #[error("stored connection is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A connection as stored: the connection and its sealed secrets.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The connection, without secrets.
    pub connection: Connection,
    /// Its secrets, sealed with the master key for (tenant, id).
    pub sealed: Vec<u8>,
}

/// The registry's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// Bumped after each change this process logs and, on PostgreSQL, each change another
    /// replica logs (by `NOTIFY`), so that the log's follower looks at once.
    logged: Arc<watch::Sender<u64>>,
    /// The highest sequence this process has committed to the change log.
    last_own: Arc<AtomicI64>,
    /// The audit events of the changes, delivered to the tenant service's audit log.
    outbox: postern_common::audit::Outbox,
    /// Who the changes made through this handle are made by ([`Store::acting`]); `None`
    /// for changes not audited (those of a deleted tenant, whose audit log goes with it).
    actor: Option<Arc<Actor>>,
}

/// Who makes the changes a [`Store`] records in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// The caller, as the audit log names it.
    pub actor: postern_proto::tenant::v1::AuditActor,
    /// The end caller's address, when known.
    pub source_ip: String,
    /// Why the registry made the change itself (`details["cause"]`: `client_deleted`);
    /// `None` for a caller's own change.
    pub cause: Option<&'static str>,
}

impl Actor {
    /// The registry itself, making a change because of `cause` (what the tenant service's
    /// event log said).
    pub fn system(cause: &'static str) -> Self {
        use postern_proto::tenant::v1::{AuditActor, AuditActorType};
        Actor {
            actor: AuditActor { r#type: AuditActorType::System as i32, id: "registry".into() },
            source_ip: String::new(),
            cause: Some(cause),
        }
    }
}

/// The PostgreSQL notification channel that each committed change signals.
const CHANGES_CHANNEL: &str = "postern_connection_changes";

/// What a logged change did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It was created.
    Created,
    /// Its spec or secrets changed.
    Updated,
    /// It was deleted (by an administrator, or with its tenant).
    Deleted,
    /// It was enabled for a client.
    ClientEnabled,
    /// It was disabled for a client (by an administrator, or with the client).
    ClientDisabled,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
            ChangeKind::ClientEnabled => "client_enabled",
            ChangeKind::ClientDisabled => "client_disabled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Created, Self::Updated, Self::Deleted, Self::ClientEnabled, Self::ClientDisabled]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One entry of the change log.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    /// Its place in the log.
    pub sequence: i64,
    /// The connection's tenant.
    pub tenant: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The connection after the change (before it, for a deletion), without secrets.
    pub connection: Connection,
    /// The client of an enablement change; empty otherwise.
    pub client_id: String,
    /// When, unix microseconds.
    pub time: i64,
}

const COLUMNS: &str = "id, spec, secrets, create_time, update_time";

/// The connections enabled for a client: an index search on `(tenant, client_id)`, then a
/// primary-key lookup per connection.
const CLIENT_CONNECTIONS: &str = "SELECT c.id, c.spec, c.secrets, c.create_time, c.update_time \
     FROM connection_clients e JOIN connections c ON c.id = e.connection_id \
     WHERE e.tenant = $1 AND e.client_id = $2 ORDER BY c.name";

/// The enterprise connections of a domain enabled for a client: index searches only.
const DISCOVER: &str = "SELECT c.id, c.spec, c.secrets, c.create_time, c.update_time \
     FROM connection_domains d \
     JOIN connection_clients e ON e.connection_id = d.connection_id AND e.client_id = $3 \
     JOIN connections c ON c.id = d.connection_id \
     WHERE d.tenant = $1 AND d.domain = $2 ORDER BY c.name";

/// A connection by `column` (`id` or `name`) if enabled for a client: two index searches.
fn resolve_sql(column: &str) -> String {
    format!(
        "SELECT c.id, c.spec, c.secrets, c.create_time, c.update_time \
         FROM connections c JOIN connection_clients e ON e.connection_id = c.id AND e.client_id = $3 \
         WHERE c.tenant = $1 AND c.{column} = $2"
    )
}

impl Store {
    /// Opens the store at `location`, running its migrations.
    pub async fn open(location: &DbLocation) -> Result<Self, DbError> {
        Self::open_with(location, SchemaPolicy::Migrate).await
    }

    /// Opens the store at `location`, migrating it or refusing a schema that is behind, per
    /// `policy`.
    pub async fn open_with(location: &DbLocation, policy: SchemaPolicy) -> Result<Self, DbError> {
        let db = Db::open_with(location, MIGRATIONS, policy).await?;
        let logged = Arc::new(watch::channel(0u64).0);
        let woken = logged.clone();
        db.on_notify(CHANGES_CHANNEL, move || woken.send_modify(|n| *n = n.wrapping_add(1))).await;
        let outbox = postern_common::audit::Outbox::new(db.clone());
        Ok(Self { db, logged, last_own: Arc::new(AtomicI64::new(0)), outbox, actor: None })
    }

    /// This store, recording the changes it makes in the audit log as made by `actor`.
    pub fn acting(&self, actor: Actor) -> Self {
        Self { actor: Some(Arc::new(actor)), ..self.clone() }
    }

    /// The audit outbox (its relay is started by [`crate::Registry::start`]).
    pub fn outbox(&self) -> &postern_common::audit::Outbox {
        &self.outbox
    }

    // ---- the change log ----

    /// Appends a change in `tx`, the transaction of the change it records; its sequence. On
    /// PostgreSQL the table is locked first so that changes commit in sequence order, and
    /// the commit notifies every replica.
    async fn log_change(
        &self,
        tx: &mut postern_common::db::WriteTx,
        tenant: &str,
        kind: ChangeKind,
        connection: &Connection,
        client_id: &str,
    ) -> Result<i64, StoreError> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("LOCK TABLE connection_changes IN EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        let spec = serde_json::to_string(&connection.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sequence: i64 = sqlx::query_scalar(
            "INSERT INTO connection_changes (tenant, change, connection_id, client_id, spec, create_time, \
             update_time, change_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING sequence",
        )
        .bind(tenant)
        .bind(kind.as_str())
        .bind(&connection.id)
        .bind(client_id)
        .bind(spec)
        .bind(connection.create_time)
        .bind(connection.update_time)
        .bind(now_micros())
        .fetch_one(&mut **tx)
        .await?;
        self.db.notify_on_commit(tx, CHANGES_CHANNEL).await?;
        if let Some(actor) = &self.actor {
            use postern_proto::tenant::v1::{AuditEventType as Type, AuditOutcome};
            let kind = match kind {
                ChangeKind::Created => Type::ConnectionCreated,
                ChangeKind::Updated => Type::ConnectionUpdated,
                ChangeKind::Deleted => Type::ConnectionDeleted,
                ChangeKind::ClientEnabled => Type::ConnectionEnabled,
                ChangeKind::ClientDisabled => Type::ConnectionDisabled,
            };
            let mut event = postern_common::audit::event(tenant, kind, AuditOutcome::Success);
            event.actor = Some(actor.actor.clone());
            event.source_ip = actor.source_ip.clone();
            event.connection = connection.spec.name.clone();
            event.client_id = client_id.to_owned();
            event.details.insert("connection_id".into(), connection.id.clone());
            event.details.insert("strategy".into(), connection.spec.strategy.as_str().to_owned());
            if let Some(cause) = actor.cause {
                event.details.insert("cause".into(), cause.to_owned());
            }
            self.outbox.write(tx, &[event])?;
        }
        Ok(sequence)
    }

    /// Commits `tx`, which logged changes up to `sequence`, and wakes the log's follower.
    async fn commit_logged(&self, tx: postern_common::db::WriteTx, sequence: i64) -> Result<(), StoreError> {
        tx.commit().await?;
        self.outbox.committed();
        self.last_own.fetch_max(sequence, Ordering::SeqCst);
        self.logged.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// The highest sequence this process has committed to the change log: once the follower
    /// has published it, every change this process acknowledged is in its streams.
    pub fn last_own_change(&self) -> i64 {
        self.last_own.load(Ordering::SeqCst)
    }

    /// A receiver that changes whenever the change log may have grown.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.logged.subscribe()
    }

    /// The sequence of the last change logged; 0 for an empty log.
    pub async fn last_change_sequence(&self) -> Result<i64, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM connection_changes").fetch_one(self.db.pool()).await?;
        Ok(last.unwrap_or(0))
    }

    /// Up to `limit` logged changes after sequence `after`, in order.
    pub async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<LoggedChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT sequence, tenant, change, connection_id, client_id, spec, create_time, update_time, change_time \
             FROM connection_changes WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let change: String = r.try_get("change")?;
                let kind = ChangeKind::parse(&change)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown change {change:?} in the change log")))?;
                let json: String = r.try_get("spec")?;
                let spec: ConnectionSpec =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(LoggedChange {
                    sequence: r.try_get("sequence")?,
                    tenant: r.try_get("tenant")?,
                    kind,
                    connection: Connection {
                        id: r.try_get("connection_id")?,
                        spec,
                        create_time: r.try_get("create_time")?,
                        update_time: r.try_get("update_time")?,
                    },
                    client_id: r.try_get("client_id")?,
                    time: r.try_get("change_time")?,
                })
            })
            .collect()
    }

    /// Removes the changes logged before `before` (unix microseconds): the log serves live
    /// streams, which start at its end, so old entries are only kept for a lagging follower.
    pub async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM connection_changes WHERE change_time < $1")
            .bind(before)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The database, for the management port's readiness check and pool gauges.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts a connection with its domain index into the tenant called `tenant` that was
    /// created at `tenant_create_time`; [`StoreError::AlreadyExists`] if the tenant has one of
    /// that name, [`StoreError::TenantDeleted`] if that tenant's deletion was applied already.
    pub async fn create(
        &self,
        tenant: &str,
        tenant_create_time: i64,
        connection: &Connection,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        let gone = sqlx::query("SELECT 1 AS x FROM deleted_tenants WHERE tenant = $1 AND tenant_create_time = $2")
            .bind(tenant)
            .bind(tenant_create_time)
            .fetch_optional(&mut *tx)
            .await?;
        if gone.is_some() {
            return Err(StoreError::TenantDeleted);
        }
        insert(&mut tx, tenant, tenant_create_time, connection, sealed).await?;
        let sequence = self.log_change(&mut tx, tenant, ChangeKind::Created, connection, "").await?;
        self.commit_logged(tx, sequence).await
    }

    /// Inserts many connections and enablements in one transaction: how seeds and
    /// benchmarks load big tenants without one RPC per row. `enable` pairs a connection id
    /// with a client id.
    pub async fn bulk_load(
        &self,
        tenant: &str,
        connections: &[(Connection, Vec<u8>)],
        enable: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        for (c, sealed) in connections {
            insert(&mut tx, tenant, 0, c, sealed).await?;
        }
        for (connection_id, client_id) in enable {
            sqlx::query(
                "INSERT INTO connection_clients (connection_id, tenant, client_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(connection_id)
            .bind(tenant)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The connection `reference` of `tenant`.
    pub async fn get(&self, tenant: &str, reference: &ConnectionRef) -> Result<Option<Stored>, StoreError> {
        let (column, value) = by(reference);
        let sql = format!("SELECT {COLUMNS} FROM connections WHERE tenant = $1 AND {column} = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(value).fetch_optional(self.db.pool()).await?;
        row.map(|r| stored_from_row(&r)).transpose()
    }

    /// Up to `limit` connections of `tenant` after name `after`, in name order, filtered by
    /// strategy (`""` for any) and category (0 for any, else the contract's value).
    pub async fn list(
        &self,
        tenant: &str,
        strategy: &str,
        category: i32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM connections WHERE tenant = $1 AND name > $2 \
             AND ($3 = '' OR strategy = $3) AND ($4 = 0 OR category = $4) ORDER BY name LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(strategy)
            .bind(i64::from(category))
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// Replaces a connection's spec and secrets if it was last changed at `seen_update_time`
    /// (optimistic concurrency: `None` means someone else changed it meanwhile, read again).
    pub async fn update(
        &self,
        tenant: &str,
        id: &str,
        seen_update_time: i64,
        spec: &ConnectionSpec,
        sealed: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Strictly later than the last change, so that the optimistic check never confuses
        // two updates within one microsecond.
        let now = now_micros().max(seen_update_time + 1);
        let mut tx = self.db.begin_write().await?;
        let create_time: Option<i64> = sqlx::query_scalar(
            "UPDATE connections SET spec = $4, secrets = $5, update_time = $6 \
             WHERE tenant = $1 AND id = $2 AND update_time = $3 RETURNING create_time",
        )
        .bind(tenant)
        .bind(id)
        .bind(seen_update_time)
        .bind(json)
        .bind(sealed)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(create_time) = create_time else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM connection_domains WHERE connection_id = $1").bind(id).execute(&mut *tx).await?;
        insert_domains(&mut tx, tenant, id, spec).await?;
        let updated = Connection { id: id.to_owned(), spec: spec.clone(), create_time, update_time: now };
        let sequence = self.log_change(&mut tx, tenant, ChangeKind::Updated, &updated, "").await?;
        self.commit_logged(tx, sequence).await?;
        Ok(Some(now))
    }

    /// Deletes a connection with its enablement and domains; the deleted connection, if any.
    pub async fn delete(&self, tenant: &str, reference: &ConnectionRef) -> Result<Option<Stored>, StoreError> {
        let (column, value) = by(reference);
        let mut tx = self.db.begin_write().await?;
        let sql = format!("SELECT {COLUMNS} FROM connections WHERE tenant = $1 AND {column} = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(value).fetch_optional(&mut *tx).await?;
        let Some(row) = row else { return Ok(None) };
        let stored = stored_from_row(&row)?;
        sqlx::query("DELETE FROM connections WHERE id = $1").bind(&stored.connection.id).execute(&mut *tx).await?;
        let sequence = self.log_change(&mut tx, tenant, ChangeKind::Deleted, &stored.connection, "").await?;
        self.commit_logged(tx, sequence).await?;
        Ok(Some(stored))
    }

    /// Enables connection `connection_id` for `client_id`: whether it was not enabled before.
    /// [`StoreError::NotFound`] if the connection is gone; [`StoreError::ClientDeleted`] if
    /// the tenant service reported the client deleted.
    pub async fn enable(&self, tenant: &str, connection_id: &str, client_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let gone = sqlx::query("SELECT 1 AS x FROM deleted_clients WHERE tenant = $1 AND client_id = $2")
            .bind(tenant)
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?;
        if gone.is_some() {
            return Err(StoreError::ClientDeleted);
        }
        let done = sqlx::query(
            "INSERT INTO connection_clients (connection_id, tenant, client_id) \
             SELECT id, tenant, $3 FROM connections WHERE id = $1 AND tenant = $2 ON CONFLICT DO NOTHING",
        )
        .bind(connection_id)
        .bind(tenant)
        .bind(client_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| if is_foreign_key_violation(&e) { StoreError::NotFound } else { StoreError::Db(e) })?;
        let inserted = done.rows_affected() > 0;
        // Either enabled now, already enabled, or the connection is gone.
        let Some(connection) = by_id(&mut tx, tenant, connection_id).await? else {
            return Err(StoreError::NotFound);
        };
        if !inserted {
            return Ok(false);
        }
        let sequence = self.log_change(&mut tx, tenant, ChangeKind::ClientEnabled, &connection, client_id).await?;
        self.commit_logged(tx, sequence).await?;
        Ok(true)
    }

    /// Disables connection `connection_id` for `client_id`: whether it was enabled.
    pub async fn disable(&self, tenant: &str, connection_id: &str, client_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let done =
            sqlx::query("DELETE FROM connection_clients WHERE connection_id = $1 AND client_id = $2 AND tenant = $3")
                .bind(connection_id)
                .bind(client_id)
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let Some(connection) = by_id(&mut tx, tenant, connection_id).await? else {
            return Ok(false);
        };
        let sequence = self.log_change(&mut tx, tenant, ChangeKind::ClientDisabled, &connection, client_id).await?;
        self.commit_logged(tx, sequence).await?;
        Ok(true)
    }

    /// Up to `limit` client ids connection `connection_id` is enabled for, after `after`, in
    /// order.
    pub async fn connection_clients(
        &self,
        connection_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id FROM connection_clients WHERE connection_id = $1 AND client_id > $2 \
             ORDER BY client_id LIMIT $3",
        )
        .bind(connection_id)
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok(r.try_get("client_id")?)).collect()
    }

    /// The connections enabled for `client_id` of `tenant`, in name order.
    pub async fn client_connections(&self, tenant: &str, client_id: &str) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query(CLIENT_CONNECTIONS).bind(tenant).bind(client_id).fetch_all(self.db.pool()).await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// The connection `reference` of `tenant` if it is enabled for `client_id`.
    pub async fn resolve(
        &self,
        tenant: &str,
        client_id: &str,
        reference: &ConnectionRef,
    ) -> Result<Option<Stored>, StoreError> {
        let (column, value) = by(reference);
        let row = sqlx::query(sqlx::AssertSqlSafe(resolve_sql(column)))
            .bind(tenant)
            .bind(value)
            .bind(client_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| stored_from_row(&r)).transpose()
    }

    /// The connections of `tenant` enabled for `client_id` whose discovery domains hold
    /// `domain` (lowercase), in name order.
    pub async fn discover(&self, tenant: &str, client_id: &str, domain: &str) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query(DISCOVER).bind(tenant).bind(domain).bind(client_id).fetch_all(self.db.pool()).await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// The value sealed with the master key when the database was first used, if any.
    pub async fn master_key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row =
            sqlx::query("SELECT sealed FROM master_key_check WHERE id = 1").fetch_optional(self.db.pool()).await?;
        Ok(row.map(|r| r.try_get("sealed")).transpose()?)
    }

    /// Records the master key's check value unless one is recorded (the first start wins).
    pub async fn set_master_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO master_key_check (id, sealed) VALUES (1, $1) ON CONFLICT DO NOTHING")
            .bind(sealed)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Replaces the master key's check value `old` with `new` (re-sealed under the current key
    /// during a rotation); whether it was still `old`.
    pub async fn replace_master_key_check(&self, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE master_key_check SET sealed = $2 WHERE id = 1 AND sealed = $1")
            .bind(old)
            .bind(new)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` connections after id `after` (every tenant's, by id): each one's id,
    /// tenant and sealed secrets, for re-sealing them under a new master key.
    pub async fn sealed_secrets_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let rows = sqlx::query("SELECT id, tenant, secrets FROM connections WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("tenant")?, r.try_get("secrets")?))).collect()
    }

    /// Replaces connection `id`'s sealed secrets `old` with `new`, the same secrets sealed
    /// under another key: a change of neither the connection nor its update time. Whether
    /// they were still `old` (a connection updated meanwhile keeps its new secrets).
    pub async fn replace_sealed_secrets(&self, id: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE connections SET secrets = $3 WHERE id = $1 AND secrets = $2")
            .bind(id)
            .bind(old)
            .bind(new)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- the tenant service's deletions ----

    /// The sequence of the last tenant event applied.
    pub async fn tenant_events_cursor(&self) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT sequence FROM tenant_events_cursor WHERE id = 1").fetch_one(self.db.pool()).await?;
        Ok(row.try_get("sequence")?)
    }

    /// Applies "client `client_id` of `tenant` was deleted" (event `sequence`): the client
    /// leaves every connection's enabled clients and cannot be enabled again. Answers the
    /// connections it left. Idempotent, and a no-op for an event already applied.
    pub async fn apply_client_deleted(
        &self,
        sequence: i64,
        tenant: &str,
        client_id: &str,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        if !advance_cursor(&mut tx, sequence).await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(CLIENT_CONNECTIONS).bind(tenant).bind(client_id).fetch_all(&mut *tx).await?;
        let left = rows.iter().map(stored_from_row).collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM connection_clients WHERE tenant = $1 AND client_id = $2")
            .bind(tenant)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO deleted_clients (tenant, client_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        // Audited as the registry's own changes: the connections lost a client because the
        // client was deleted.
        let system = self.acting(Actor::system("client_deleted"));
        let mut sequence = 0;
        for stored in &left {
            sequence =
                system.log_change(&mut tx, tenant, ChangeKind::ClientDisabled, &stored.connection, client_id).await?;
        }
        self.commit_logged(tx, sequence).await?;
        Ok(left)
    }

    /// Applies "tenant `tenant`, created at `tenant_create_time`, was deleted" (event
    /// `sequence`): its connections go, with their enablement, and no connection can be
    /// created in it any more; a later tenant of the same name is left alone. Answers the
    /// deleted connections. A no-op for an event already applied.
    pub async fn apply_tenant_deleted(
        &self,
        sequence: i64,
        tenant: &str,
        tenant_create_time: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        if !advance_cursor(&mut tx, sequence).await? {
            return Ok(Vec::new());
        }
        let sql =
            format!("SELECT {COLUMNS} FROM connections WHERE tenant = $1 AND tenant_create_time <= $2 ORDER BY name");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(tenant_create_time).fetch_all(&mut *tx).await?;
        let deleted = rows.iter().map(stored_from_row).collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM connections WHERE tenant = $1 AND tenant_create_time <= $2")
            .bind(tenant)
            .bind(tenant_create_time)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO deleted_tenants (tenant, tenant_create_time) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .bind(tenant_create_time)
            .execute(&mut *tx)
            .await?;
        // The tenant's name may be taken again by a new tenant: its client ids are fresh, so
        // the tombstones of the old one's clients can go.
        sqlx::query("DELETE FROM deleted_clients WHERE tenant = $1").bind(tenant).execute(&mut *tx).await?;
        // Not audited: the tenant's audit log was deleted with it (and a later tenant of the
        // same name starts with an empty one), so no log could hold these events.
        let mut sequence = 0;
        for stored in &deleted {
            sequence = self.log_change(&mut tx, tenant, ChangeKind::Deleted, &stored.connection, "").await?;
        }
        self.commit_logged(tx, sequence).await?;
        Ok(deleted)
    }

    /// Records event `sequence` as applied without doing anything (an event this version
    /// does not know).
    pub async fn skip_tenant_event(&self, sequence: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        advance_cursor(&mut tx, sequence).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Moves the cursor to `sequence` if it is ahead; whether it was (the event is new).
async fn advance_cursor(tx: &mut postern_common::db::WriteTx, sequence: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE tenant_events_cursor SET sequence = $1 WHERE id = 1 AND sequence < $1")
        .bind(sequence)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}

async fn insert(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    tenant_create_time: i64,
    c: &Connection,
    sealed: &[u8],
) -> Result<(), StoreError> {
    let json = serde_json::to_string(&c.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO connections (id, tenant, name, strategy, category, spec, secrets, create_time, update_time, \
         tenant_create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&c.id)
    .bind(tenant)
    .bind(&c.spec.name)
    .bind(c.spec.strategy.as_str())
    .bind(c.spec.category().to_proto() as i64)
    .bind(json)
    .bind(sealed)
    .bind(c.create_time)
    .bind(c.update_time)
    .bind(tenant_create_time)
    .execute(&mut **tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { StoreError::AlreadyExists } else { StoreError::Db(e) })?;
    insert_domains(tx, tenant, &c.id, &c.spec).await?;
    Ok(())
}

async fn insert_domains(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    id: &str,
    spec: &ConnectionSpec,
) -> Result<(), sqlx::Error> {
    for domain in spec.discovery_domains() {
        sqlx::query(
            "INSERT INTO connection_domains (connection_id, tenant, domain) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(domain)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The connection `id` of `tenant`, read in `tx`.
async fn by_id(tx: &mut postern_common::db::WriteTx, tenant: &str, id: &str) -> Result<Option<Connection>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM connections WHERE tenant = $1 AND id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id).fetch_optional(&mut **tx).await?;
    Ok(row.map(|r| stored_from_row(&r)).transpose()?.map(|s| s.connection))
}

/// The column and value a reference selects on. Both columns are indexed with the tenant.
fn by(reference: &ConnectionRef) -> (&'static str, &str) {
    match reference {
        ConnectionRef::Id(id) => ("id", id),
        ConnectionRef::Name(name) => ("name", name),
    }
}

fn stored_from_row(r: &AnyRow) -> Result<Stored, StoreError> {
    let json: String = r.try_get("spec")?;
    let spec: ConnectionSpec = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Stored {
        connection: Connection {
            id: r.try_get("id")?,
            spec,
            create_time: r.try_get("create_time")?,
            update_time: r.try_get("update_time")?,
        },
        sealed: r.try_get("secrets")?,
    })
}

#[cfg(test)]
mod tests;
