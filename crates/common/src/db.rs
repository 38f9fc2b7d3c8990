//! One storage handle for both backends. Services write their SQL once, with `$1`-style
//! placeholders (which SQLite understands too) and only the column types both backends map
//! the same way through sqlx's `Any` driver: `BIGINT` for integers, booleans and times (unix
//! microseconds), `TEXT`, and `BLOB`/`BYTEA`. Each service ships its migrations for both.
//!
//! SQLite (the embedded default) runs in WAL mode with `synchronous=FULL`, so every
//! acknowledged write survives a crash. SQLite lets one writer in at a time, and a writer
//! that finds the lock taken sleeps in SQLite's busy handler (1, 2, 5 … 100 ms) however soon
//! the lock is free again. So on SQLite every write goes through [`Db::writer`], one
//! connection: writers queue in order for it, without sleeping, and the lock is never
//! contended within the process. Reads go to [`Db::pool`] ([`Reads`]), eight connections. Write transactions queued there share their commit (the
//! `commit` module), so that a busy process pays one fsync for a line of writers rather than
//! one each. The process owns its file: it holds an exclusive lock on
//! `<file>.lock` while open, and a second process opening the same file is refused (services
//! that run apart share PostgreSQL, not an SQLite file). What the process keeps in memory
//! about its file's rows (the login attempts in flight, say) can rely on that. Write
//! transactions still start with `BEGIN IMMEDIATE`, as SQLite's own tools may open the file.
//! PostgreSQL keeps each service in its own schema of the database it is given, and its
//! writer is the common pool.
//!
//! Migrations: opening a database either applies the pending migrations
//! ([`SchemaPolicy::Migrate`]) or refuses a schema that is behind the binary
//! ([`SchemaPolicy::RequireCurrent`], [`DbError::Behind`]). On PostgreSQL, which several
//! processes share, whatever creates a schema or migrates holds the session advisory lock
//! [`MIGRATION_LOCK`] (`pg_advisory_lock`), and a check holds it shared, so concurrent
//! migrations and starts queue instead of racing on `CREATE SCHEMA` or on the migrations
//! table. A schema *ahead* of the binary (migrations it does not know, applied by a newer
//! release) is accepted with a warning, as Flyway does by default, so that an older replica
//! keeps serving through a rolling upgrade; a changed or failed migration is refused.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

mod commit;
mod reads;
mod together;
pub use commit::MAX_PARTS;
pub use reads::{ReadConn, Reads};
pub use together::{Answer, Failed, Together};

/// The PostgreSQL advisory lock (`pg_advisory_lock`) that every Postern process holds while it
/// creates a service's schema or migrates it, and holds shared while it checks a schema: one
/// key for the whole database, so that the services' migrations run one at a time. The value
/// is the ASCII of `postern!`.
pub const MIGRATION_LOCK: i64 = 0x706f_7374_6572_6e21;

/// The table where sqlx records the applied migrations, in each service's schema.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// SQLite: the read connections of a file (its writer is one more).
const READERS: u32 = 8;

/// What opening a database does about its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Applies the pending migrations (on PostgreSQL under [`MIGRATION_LOCK`]).
    Migrate,
    /// Applies nothing and refuses a schema that is behind the binary ([`DbError::Behind`]).
    RequireCurrent,
}

/// Where a service's schema stands against the binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The versions applied now (after a migration: including those it applied).
    pub applied: Vec<i64>,
    /// The binary's versions not applied (before a migration: what it will apply).
    pub pending: Vec<i64>,
    /// Applied versions the binary does not know: the schema was migrated by a newer release.
    pub unknown: Vec<i64>,
}

impl SchemaStatus {
    /// The newest applied version, 0 when none is.
    pub fn version(&self) -> i64 {
        self.applied.iter().copied().max().unwrap_or(0)
    }
}

/// What [`migrate`] did to one service's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions it applied, in order (empty when the schema was current).
    pub applied: Vec<i64>,
    /// The schema afterwards.
    pub status: SchemaStatus,
}

/// Which database engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL database (or a compatible engine).
    Postgres,
}

/// Where a service keeps its data.
#[derive(Debug, Clone)]
pub enum DbLocation {
    /// An SQLite file at this path (created with its directory when missing).
    SqliteFile(std::path::PathBuf),
    /// A PostgreSQL URL and the schema of this service in it.
    Postgres {
        /// `postgres://…`
        url: String,
        /// The service's schema (`tenant`, `registry`, `authn`).
        schema: String,
        /// The most connections the service's pool opens ([`DEFAULT_POOL_SIZE`] unless
        /// configured).
        pool_size: u32,
        /// The connections it opens at start and keeps open ([`MIN_OPEN_CONNECTIONS`] unless
        /// configured; at most `pool_size`).
        min_open: u32,
    },
}

/// The most PostgreSQL connections a service's pool opens unless configured: three
/// services in the all-in-one process open up to three times this many.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// The PostgreSQL connections a service's pool keeps open however quiet it is unless
/// configured (fewer when the pool is smaller); they open together when the service starts.
/// A call that finds no idle connection, while the pool may open more, opens one and waits
/// for it alone: sqlx does not hand it a connection freed meanwhile, so a slow connect (a
/// name lookup that is not answered, a busy server) holds the call up to the pool's acquire
/// timeout. A pool whose minimum is its size (a fixed pool, as HikariCP advises) opens
/// nothing after the start: its calls wait only for each other.
pub const MIN_OPEN_CONNECTIONS: u32 = 4;

impl DbLocation {
    /// The location of service `service`: `<data_dir>/<service>.db`, or its schema in the
    /// PostgreSQL database at `database_url` when one is given.
    pub fn for_service(service: &str, data_dir: &Path, database_url: Option<&str>) -> Self {
        match database_url {
            Some(url) => DbLocation::Postgres {
                url: url.to_owned(),
                schema: service.to_owned(),
                pool_size: DEFAULT_POOL_SIZE,
                min_open: MIN_OPEN_CONNECTIONS,
            },
            None => DbLocation::SqliteFile(data_dir.join(format!("{service}.db"))),
        }
    }

    /// The same location with a pool of at most `pool_size` connections (at least one) on
    /// PostgreSQL, `min_open` of them (at most `pool_size`) opened at start and kept open;
    /// an SQLite file keeps its own pools (one writer, eight readers).
    pub fn with_pool(self, pool_size: u32, min_open: u32) -> Self {
        match self {
            DbLocation::Postgres { url, schema, .. } => {
                let pool_size = pool_size.max(1);
                DbLocation::Postgres { url, schema, pool_size, min_open: min_open.min(pool_size) }
            }
            sqlite => sqlite,
        }
    }
}

/// The migrations of one service, for both backends.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations written for SQLite.
    pub sqlite: &'static Migrator,
    /// Migrations written for PostgreSQL.
    pub postgres: &'static Migrator,
}

/// A connection pool with the backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    /// Where reads go: the pool (SQLite: of eight connections, kept out of it between reads).
    reads: Reads,
    /// SQLite: the one connection that writes, taken in turns. PostgreSQL: the common pool.
    writer: Writer,
    backend: Backend,
    /// SQLite: the locked `<file>.lock`, held until [`close`](Self::close) or until the last
    /// handle goes.
    owner: Option<std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>>,
    /// PostgreSQL: the database's URL, for the notification listeners.
    url: Option<String>,
    /// Turns true when the pool is closed, ending the notification listeners.
    closed: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

/// The writer of a [`Db`] ([`Db::writer`]), an executor for single-statement writes.
#[derive(Debug, Clone)]
pub struct Writer {
    pool: AnyPool,
    /// SQLite: the writer connection's turns and the shared commits (`commit` module).
    committer: Option<std::sync::Arc<commit::Committer>>,
}

impl Writer {
    /// Connections open, connections idle, and the most that may be open, for the metrics.
    /// On SQLite its one connection is kept by the writer, not returned to the pool between
    /// writes (see `commit`), and is idle while no write holds the writer's turn.
    pub fn figures(&self) -> (u32, usize, u32) {
        let most = self.pool.options().get_max_connections();
        match &self.committer {
            None => (self.pool.size(), self.pool.num_idle(), most),
            Some(committer) => (self.pool.size(), usize::from(committer.idle()), most),
        }
    }
}

impl<'c> Executor<'c> for &'c Writer {
    type Database = sqlx::Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Any>,
    {
        use futures_util::TryStreamExt;
        let Some(committer) = &self.committer else { return self.pool.fetch_many(query) };
        // The statement's answers are read whole, so that its turn ends before they are handed on.
        let all = async move {
            let mut single = committer.single(&self.pool).await?;
            let done = single.connection().fetch_many(query).try_collect::<Vec<_>>().await;
            single.end(done).await
        };
        answered_whole(all)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::any::AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Any>,
    {
        use futures_util::TryStreamExt;
        if self.committer.is_none() {
            return self.pool.fetch_optional(query);
        }
        // The write runs whole and commits in `fetch_many` before its first row comes out
        // (SQLite applies an UPDATE … RETURNING whole at its first row anyway).
        let mut rows = self.fetch(query);
        Box::pin(async move { rows.try_next().await })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::any::AnyTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::any::AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let Some(committer) = &self.committer else { return self.pool.prepare_with(sql, parameters) };
        Box::pin(async move {
            let mut single = committer.single(&self.pool).await?;
            let done = single.connection().prepare_with(sql, parameters).await;
            single.end(done).await
        })
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<sqlx::Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        let Some(committer) = &self.committer else { return self.pool.describe(sql) };
        Box::pin(async move {
            let mut single = committer.single(&self.pool).await?;
            let done = single.connection().describe(sql).await;
            single.end(done).await
        })
    }
}

/// A statement's answers read whole by `all`, as the stream an executor's `fetch_many`
/// answers: for executors that give their connection back before the answers are handed on.
fn answered_whole<'e>(
    all: impl std::future::Future<Output = Result<Vec<AnyAnswer>, sqlx::Error>> + Send + 'e,
) -> futures_util::stream::BoxStream<'e, Result<AnyAnswer, sqlx::Error>> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::once(all)
        .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// One answer of a statement on the `Any` driver: rows changed, or a row.
type AnyAnswer = sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>;

/// A write transaction ([`Db::begin_write`]): use it as a connection (`&mut *tx`), end it
/// with [`commit`](Self::commit) or [`rollback`](Self::rollback). Dropped before either, it
/// is rolled back.
///
/// Writes whose only answer is success (an insert of a new row, an event for the audit log)
/// can be [deferred](Self::defer) to the commit instead: on SQLite they then go to the
/// database together, with the commit, in one hand-off to sqlx's worker thread instead of
/// one each ([`Together`]).
#[derive(Debug)]
pub struct WriteTx {
    tx: Tx,
    /// Statements to run at the commit, before it.
    deferred: Together,
}

#[derive(Debug)]
enum Tx {
    /// PostgreSQL: a transaction of its own.
    Own(sqlx::Transaction<'static, sqlx::Any>),
    /// SQLite: a part of the transaction the queued writers share.
    Shared(commit::Part),
}

impl WriteTx {
    fn new(tx: Tx) -> Self {
        Self { tx, deferred: Together::default() }
    }

    /// Runs `query` at the commit, after every statement run on the transaction itself and
    /// after the statements deferred before it; its failure fails the commit, and nothing of
    /// the transaction is stored. For writes that nothing in the transaction reads back and
    /// whose only outcome is success or failure.
    pub fn defer(
        &mut self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<(), sqlx::Error> {
        self.deferred.push(query)
    }

    /// The statements [deferred](Self::defer) to the commit so far, to add more to.
    pub fn deferred(&mut self) -> &mut Together {
        &mut self.deferred
    }

    /// Commits: answers once the writes are durable (on SQLite, once the shared transaction
    /// that holds them has committed; if it fails, this fails and nothing of it is stored).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.tx {
            Tx::Own(mut tx) => {
                if let Err(failed) = self.deferred.run(&mut tx, Backend::Postgres).await {
                    let _ = tx.rollback().await;
                    return Err(failed.error);
                }
                tx.commit().await
            }
            Tx::Shared(part) => part.commit_with(self.deferred).await,
        }
    }

    /// Undoes this transaction's writes, and only them.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.tx {
            Tx::Own(tx) => tx.rollback().await,
            Tx::Shared(part) => part.rollback().await,
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.tx {
            Tx::Own(tx) => tx,
            Tx::Shared(part) => part.connection_ref(),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.tx {
            Tx::Own(tx) => tx,
            Tx::Shared(part) => part.connection(),
        }
    }
}

/// How long a notification listener waits before connecting again after losing its
/// connection (doubling up to [`LISTEN_MAX_BACKOFF`]).
const LISTEN_MIN_BACKOFF: Duration = Duration::from_millis(100);
const LISTEN_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long [`Db::on_notify`] waits for its listener before it answers anyway (the pool's
/// own acquire timeout).
const LISTEN_READY_WITHIN: Duration = Duration::from_secs(10);

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL or options are wrong.
    #[error("bad database configuration: {0}")]
    Config(String),
    /// The database answered with an error.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The schema lacks migrations this binary needs, and it was opened without migrating.
    #[error(
        "the {database} is behind this binary: it is at migration {current} and {} more {} pending ({}); \
         run `postern migrate` on the same database (--database-url, or --data-dir for SQLite) first, or \
         start with --migrate always (POSTERN_MIGRATE=always) to let this process migrate",
        pending.len(),
        if pending.len() == 1 { "is" } else { "are" },
        pending.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    )]
    Behind {
        /// The service's database: `tenant schema`, `database <file>`.
        database: String,
        /// The newest migration applied (0 for an empty schema).
        current: i64,
        /// The migrations not applied.
        pending: Vec<i64>,
    },
    /// An applied migration differs from the binary's, or failed half-way.
    #[error("the {database} cannot be used: {why}")]
    Inconsistent {
        /// The service's database: `tenant schema`, `database <file>`.
        database: String,
        /// What is wrong.
        why: String,
    },
    /// Another process has the SQLite file open.
    #[error(
        "the database {path} is in use by another process (it holds {path}.lock); an SQLite database has one \
         owner: stop the other process, or give each process its own --data-dir (services run apart share \
         PostgreSQL through --database-url)"
    )]
    InUse {
        /// The database file.
        path: String,
    },
    /// The data directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Takes the exclusive lock of the SQLite file at `path`. The operating system drops it when
/// the process ends, however it ends.
fn own(path: &Path) -> Result<std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>, DbError> {
    let lock_path = format!("{}.lock", path.display());
    let file = crate::files::private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| DbError::Io { path: lock_path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(std::sync::Arc::new(std::sync::Mutex::new(Some(file)))),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbError::InUse { path: path.display().to_string() }),
        Err(std::fs::TryLockError::Error(source)) => Err(DbError::Io { path: lock_path, source }),
    }
}

/// Listens on `channel` at `url`, calling `on_notify` once connected and for each
/// notification or reconnection, until the listener fails.
async fn listen(
    url: &str,
    channel: &'static str,
    on_notify: &(impl Fn() + Send + Sync),
    listening: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(channel).await?;
    tracing::debug!(channel, "listening for notifications");
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    on_notify();
    loop {
        // `None`: the connection was lost (the next call connects again), and with it what
        // was sent meanwhile: look anyway.
        if listener.try_recv().await?.is_none() {
            tracing::debug!(channel, "the notification listener reconnects");
        }
        on_notify();
    }
}

fn closed_signal() -> std::sync::Arc<tokio::sync::watch::Sender<bool>> {
    std::sync::Arc::new(tokio::sync::watch::channel(false).0)
}

/// SQLite's writer connection with `synchronous = NORMAL`, for [`Db::execute_relaxed`]: set
/// back to `FULL` by [`restore`](Self::restore); dropped before that (the caller cancelled),
/// the connection is closed rather than kept for the next write, so no later write of the
/// process commits without syncing by mistake.
struct RelaxedWriter {
    turn: Option<commit::Turn>,
}

impl RelaxedWriter {
    fn connection(&mut self) -> &mut AnyConnection {
        self.turn.as_mut().unwrap_or_else(|| unreachable!("taken only by restore, which consumes self")).connection()
    }

    /// The connection syncs again: kept for the next write, as it came.
    fn restored(mut self) {
        self.turn.take();
    }

    async fn restore(mut self) -> Result<(), sqlx::Error> {
        self.connection().execute("PRAGMA synchronous = FULL").await?;
        self.restored();
        Ok(())
    }
}

impl Drop for RelaxedWriter {
    fn drop(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            turn.close_connection();
        }
    }
}

/// Creates the database file at `path` (and its directory) private to this account before
/// SQLite opens it, so that SQLite, which gives the `-wal` and `-shm` files the database
/// file's mode, keeps them private too; tightens what exists with wider modes.
fn prepare_sqlite_file(path: &Path) -> Result<(), DbError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| DbError::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::private_dir(dir).map_err(io(dir))?;
    }
    crate::files::private_file(path).map_err(io(path))?;
    for suffix in ["-wal", "-shm", "-journal", ".lock"] {
        let companion = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        crate::files::tighten(&companion, crate::files::FILE_MODE).map_err(io(&companion))?;
    }
    Ok(())
}

impl Db {
    /// Opens (creating when needed) the database at `location` and applies its pending
    /// `migrations` ([`SchemaPolicy::Migrate`]).
    pub async fn open(location: &DbLocation, migrations: Migrations) -> Result<Self, DbError> {
        Self::open_with(location, migrations, SchemaPolicy::Migrate).await
    }

    /// Opens the database at `location`, migrating it or checking it per `policy`.
    pub async fn open_with(
        location: &DbLocation,
        migrations: Migrations,
        policy: SchemaPolicy,
    ) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        match location {
            DbLocation::SqliteFile(path) => {
                prepare_sqlite_file(path)?;
                let owner = own(path)?;
                let options = sqlite_options(path)?;
                // No ping before handing out a pooled connection (sqlx's `test_before_acquire`):
                // a file cannot drop a connection the way a network can, and the ping is a
                // round trip to the connection's thread before every statement.
                let sqlite_pool = |size: u32| {
                    AnyPoolOptions::new().max_connections(size).test_before_acquire(false).after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                };
                // The writer first: it creates the file and turns WAL on before readers open it.
                let writer = sqlite_pool(1).connect_with(options.clone()).await?;
                // The file lock makes this process the only migrator.
                let name = format!("database {}", path.display());
                {
                    let mut conn = writer.acquire().await?;
                    settle_schema(&mut conn, &name, migrations.sqlite, policy).await?;
                }
                let pool = sqlite_pool(READERS).connect_with(options).await?;
                Ok(Db {
                    reads: Reads::kept(pool),
                    writer: Writer { pool: writer, committer: Some(Default::default()) },
                    backend: Backend::Sqlite,
                    owner: Some(owner),
                    url: None,
                    closed: closed_signal(),
                })
            }
            DbLocation::Postgres { url, schema, pool_size, min_open } => {
                let options = postgres_options(url, schema)?;
                // The schema must exist, and be current, before any pooled connection points
                // its search path at it.
                {
                    let mut conn = AnyConnection::connect_with(&options).await?;
                    let settled = settle_postgres_locked(&mut conn, schema, migrations.postgres, policy).await;
                    let closed = conn.close().await;
                    settled?;
                    closed?;
                }
                let set_path = format!("SET search_path TO {schema}");
                let pool = AnyPoolOptions::new()
                    .max_connections(*pool_size)
                    .min_connections((*min_open).min(*pool_size))
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                // The minimum opens at once, not one connection after another as sqlx's
                // `connect_with` opens it, all within its acquire timeout: the service starts
                // when the database answers one of them. One that fails to open now is
                // missing from the minimum until the pool's maintenance opens it again.
                let minimum = (*min_open).min(*pool_size) as usize;
                let opened = futures_util::future::join_all((0..minimum).map(|_| pool.acquire())).await;
                if opened.iter().all(Result::is_err)
                    && let Some(Err(e)) = opened.into_iter().next()
                {
                    return Err(e.into());
                }
                Ok(Db {
                    writer: Writer { pool: pool.clone(), committer: None },
                    reads: Reads::pooled(pool),
                    backend: Backend::Postgres,
                    owner: None,
                    url: Some(url.clone()),
                    closed: closed_signal(),
                })
            }
        }
    }

    /// Where reads go: `query.fetch_one(db.pool())`, or [`Reads::acquire`] for a connection
    /// of its own.
    pub fn pool(&self) -> &Reads {
        &self.reads
    }

    /// The writer, for single-statement writes outside [`begin_write`](Self::begin_write)
    /// (`query.execute(db.writer())`): on SQLite they take their turn on its one connection
    /// with the write transactions, so that writers queue in order instead of contending for
    /// the lock. A caller holding a write transaction must not wait on it.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Runs `query`, one write statement whose loss in a power failure or an operating-system
    /// crash harms nothing, without waiting for the disk: a login transaction not used yet
    /// (its user starts the login again, as after a Keycloak restart, which keeps them in
    /// memory), an outbox row already delivered (delivered again; the log ignores an event
    /// id it holds). Nothing whose loss would let something be used twice, or undo what an
    /// answer promised, may go through here.
    ///
    /// On SQLite the statement commits with `synchronous = NORMAL` (the writer connection
    /// is set back to `FULL` before it is reused, or closed when the caller is cancelled in
    /// between): its WAL frames reach the OS but are not synced. A process crash loses
    /// nothing; the next durable commit syncs the WAL, and these frames before its own; a
    /// power loss before then rolls the statement back and leaves the file consistent
    /// (SQLite's WAL checksums end the log at the last whole commit). On PostgreSQL, whose
    /// commits are cheap to share, it is an ordinary durable write.
    pub async fn execute_relaxed<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<u64, sqlx::Error> {
        let Some(committer) = &self.writer.committer else {
            return Ok(query.execute(&self.writer.pool).await?.rows_affected());
        };
        match committer.single(&self.writer.pool).await? {
            commit::Single::Alone(turn) => {
                // The statement between the two settings, in one hand-off to SQLite's thread.
                let mut relaxed = RelaxedWriter { turn: Some(turn) };
                let mut together = Together::default();
                together.push_sql("PRAGMA synchronous = NORMAL");
                together.push(query)?;
                together.push_sql("PRAGMA synchronous = FULL");
                match together.run(relaxed.connection(), Backend::Sqlite).await {
                    Ok(answers) => {
                        relaxed.restored();
                        Ok(answers.get(1).map_or(0, |a| a.changed))
                    }
                    // Still syncing: nothing was changed.
                    Err(Failed { index: 0, error, .. }) => {
                        relaxed.restored();
                        Err(error)
                    }
                    Err(Failed { index: 1, error, .. }) => {
                        relaxed.restore().await?;
                        Err(error)
                    }
                    // The write landed but the setting stays relaxed: `relaxed`'s drop closes
                    // the connection.
                    Err(Failed { error, .. }) => Err(error),
                }
            }
            // A batch is open: the statement joins it, durable like the rest of it.
            commit::Single::Part(mut part) => {
                let done = query.execute(part.connection()).await.map(|r| r.rows_affected());
                part.end(done).await
            }
        }
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it waits its turn for the one writing
    /// connection, then takes the write lock up front (`BEGIN IMMEDIATE`), so that a writer
    /// in another process makes it wait instead of fail; and it shares its commit with the
    /// write transactions queued behind it (the `commit` module: each is a savepoint of one
    /// transaction, and each `commit` answers once that transaction is durable).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match &self.writer.committer {
            Some(committer) => Ok(WriteTx::new(Tx::Shared(committer.begin(&self.writer.pool).await?))),
            None => Ok(WriteTx::new(Tx::Own(self.writer.pool.begin().await?))),
        }
    }

    /// [`begin_write`](Self::begin_write) with the transaction's first statements, sent with
    /// its `BEGIN` (on SQLite in one hand-off to sqlx's worker thread, [`Together`]): the
    /// transaction and what they answered. When one fails, the transaction is rolled back
    /// and its error returned.
    pub async fn begin_write_with(&self, statements: Together) -> Result<(WriteTx, Vec<Answer>), sqlx::Error> {
        match &self.writer.committer {
            Some(committer) => {
                let (part, answers) = committer.begin_with(&self.writer.pool, statements).await?;
                Ok((WriteTx::new(Tx::Shared(part)), answers))
            }
            None => {
                let mut tx = self.writer.pool.begin().await?;
                // Dropped on a failure, the transaction rolls back.
                let answers = statements.run(&mut tx, Backend::Postgres).await.map_err(|f| f.error)?;
                Ok((WriteTx::new(Tx::Own(tx)), answers))
            }
        }
    }

    /// Runs a whole write transaction of `statements`, each of them sent with its `BEGIN` and
    /// `COMMIT` (on SQLite in one hand-off to sqlx's worker thread, as a part of the shared
    /// commit: see [`begin_write`](Self::begin_write)); what they answered, once the
    /// transaction is durable. For a transaction whose every statement is known before it
    /// starts, where what the later ones do depends only on whether earlier ones changed a row
    /// ([`Together::push_expecting_one`]). When a statement fails, or one expected to change
    /// one row does not, nothing of the transaction is stored and the `Err` says which (a
    /// failure of the `BEGIN` is told as the first statement's, of the `COMMIT` as one past
    /// the last).
    pub async fn write_together(&self, statements: Together) -> Result<Vec<Answer>, Failed> {
        match &self.writer.committer {
            Some(committer) => committer.write_together(&self.writer.pool, statements).await,
            None => {
                let count = statements.len();
                let mut tx = self.writer.pool.begin().await.map_err(|error| Failed::error(0, error))?;
                // Dropped on a failure, the transaction rolls back.
                let answers = statements.run(&mut tx, Backend::Postgres).await?;
                tx.commit().await.map_err(|error| Failed::error(count, error))?;
                Ok(answers)
            }
        }
    }

    /// SQLite: the commits of write transactions so far, and the writes they held (the writes
    /// per fsync are the second over the first), for the metrics. Zero on PostgreSQL.
    pub fn shared_commits(&self) -> (u64, u64) {
        self.writer.committer.as_ref().map_or((0, 0), |c| c.counts())
    }

    /// Queues `NOTIFY <channel>` in `tx`: PostgreSQL delivers it to every listener (in any
    /// process) when, and only if, the transaction commits. Nothing on SQLite, whose file
    /// one process owns. `channel` is a fixed identifier, never input.
    pub async fn notify_on_commit(&self, tx: &mut WriteTx, channel: &'static str) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')").bind(channel).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Calls `on_notify` whenever a transaction that queued `NOTIFY <channel>`
    /// ([`notify_on_commit`](Self::notify_on_commit)) commits on this PostgreSQL database, in
    /// this process or another, and once after each (re)connection of the listener, since a
    /// notification may have been missed while it was down; until the pool is closed. A
    /// notification is a hint to look, never the data: the callers read their logs. Nothing
    /// on SQLite.
    ///
    /// Answers once the listener is listening, so that a process that starts serving after it
    /// hears other replicas' changes at once from its first call, not at its callers' next
    /// poll; or, when the database has not let it listen within [`LISTEN_READY_WITHIN`], with
    /// a warning, leaving the listener to keep trying meanwhile (the callers poll until then).
    pub async fn on_notify(&self, channel: &'static str, on_notify: impl Fn() + Send + Sync + 'static) {
        let Some(url) = self.url.clone() else { return };
        let mut closed = self.closed.subscribe();
        let (listening, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut listening = Some(listening);
            let mut backoff = LISTEN_MIN_BACKOFF;
            loop {
                tokio::select! {
                    Err(e) = listen(&url, channel, &on_notify, &mut listening) => {
                        tracing::warn!(channel, error = %e, "lost the notification listener; polling until it is back");
                    }
                    _ = closed.wait_for(|c| *c) => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = closed.wait_for(|c| *c) => return,
                }
                backoff = (backoff * 2).min(LISTEN_MAX_BACKOFF);
            }
        });
        if tokio::time::timeout(LISTEN_READY_WITHIN, ready).await.is_err() {
            tracing::warn!(
                channel,
                "not yet listening for other replicas' changes; they are seen by polling until the listener connects"
            );
        }
    }

    /// Closes the pool, waiting for connections to be returned, and gives the SQLite file up.
    pub async fn close(&self) {
        self.closed.send_replace(true);
        self.reads.close().await;
        if let Some(committer) = &self.writer.committer {
            committer.let_go().await;
        }
        self.writer.pool.close().await;
        // Nothing can write through this handle any more: the file may have another owner.
        if let Some(owner) = &self.owner {
            owner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
    }
}

/// Waits until the PostgreSQL server at `url` accepts a connection, for at most `within`:
/// what `postern migrate` does first, so that a migration started beside its database (a
/// compose one-shot, an init container) waits for it instead of failing. Only the failures
/// of a server that is not there yet are waited out: no route or refused connection, a name
/// that does not resolve yet, and PostgreSQL's "starting up" (`57P03`). Any other error (a
/// wrong password, a missing database) is answered at once. `on_wait` hears each failed try.
pub async fn wait_for_postgres(
    url: &str,
    within: Duration,
    mut on_wait: impl FnMut(&sqlx::Error),
) -> Result<(), DbError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(200);
    loop {
        let error = match AnyConnection::connect_with(&options).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) => e,
        };
        let not_there_yet = match &error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
            _ => false,
        };
        let now = tokio::time::Instant::now();
        if !not_there_yet || now >= deadline {
            return Err(error.into());
        }
        on_wait(&error);
        // The last try is at the deadline.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Applies the pending `migrations` of the database at `location`, without keeping it open:
/// what `postern migrate` does for each service. On PostgreSQL it creates the service's
/// schema and migrates it under [`MIGRATION_LOCK`], so any number of these (and of starting
/// servers) may run at once; on SQLite it holds the file's lock, and is refused while a
/// server has the file open.
pub async fn migrate(location: &DbLocation, migrations: Migrations) -> Result<Migrated, DbError> {
    sqlx::any::install_default_drivers();
    match location {
        DbLocation::SqliteFile(path) => {
            prepare_sqlite_file(path)?;
            let _owner = own(path)?;
            let mut conn = AnyConnection::connect_with(&sqlite_options(path)?).await?;
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA synchronous = FULL").await?;
            let migrated = settle_schema(
                &mut conn,
                &format!("database {}", path.display()),
                migrations.sqlite,
                SchemaPolicy::Migrate,
            )
            .await;
            let closed = conn.close().await;
            let migrated = migrated?;
            closed?;
            Ok(migrated)
        }
        DbLocation::Postgres { url, schema, .. } => {
            let mut conn = AnyConnection::connect_with(&postgres_options(url, schema)?).await?;
            let migrated = settle_postgres_locked(&mut conn, schema, migrations.postgres, SchemaPolicy::Migrate).await;
            let closed = conn.close().await;
            let migrated = migrated?;
            closed?;
            Ok(migrated)
        }
    }
}

/// Copies the SQLite database at `path` to a new file `to` as one consistent snapshot
/// (SQLite's `VACUUM INTO`), while whoever owns it keeps serving: the copy reads in a
/// transaction of its own, so writes committed after it began are not in it and none is
/// half in it; the running server is neither stopped nor locked out (its `.lock` file is
/// not taken). `to` must not exist. Answers the copy's size in bytes.
pub async fn backup_sqlite(path: &Path, to: &Path) -> Result<u64, DbError> {
    if !path.is_file() {
        return Err(DbError::Config(format!("{} is not an SQLite database file", path.display())));
    }
    if to.exists() {
        return Err(DbError::Config(format!("{} exists already; a backup never overwrites a file", to.display())));
    }
    let target = to
        .to_str()
        .ok_or_else(|| DbError::Config(format!("{} is not a UTF-8 path", to.display())))?
        .replace('\'', "\'\'");
    sqlx::any::install_default_drivers();
    // Read-write without creating: a WAL database's readers need its shared-memory file.
    let options = AnyConnectOptions::from_str(&format!("sqlite://{}?mode=rw", path.display()))
        .map_err(|e| DbError::Config(e.to_string()))?;
    let mut conn = AnyConnection::connect_with(&options).await?;
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    let copied = conn.execute(sqlx::AssertSqlSafe(format!("VACUUM INTO '{target}'"))).await;
    let closed = conn.close().await;
    copied?;
    closed?;
    crate::files::tighten(to, crate::files::FILE_MODE)
        .map_err(|source| DbError::Io { path: to.display().to_string(), source })?;
    Ok(std::fs::metadata(to).map_err(|source| DbError::Io { path: to.display().to_string(), source })?.len())
}

fn sqlite_options(path: &Path) -> Result<AnyConnectOptions, DbError> {
    AnyConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", path.display()))
        .map_err(|e| DbError::Config(e.to_string()))
}

fn postgres_options(url: &str, schema: &str) -> Result<AnyConnectOptions, DbError> {
    if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(DbError::Config(format!("schema name {schema:?} must be lowercase letters")));
    }
    AnyConnectOptions::from_str(url).map_err(|e| DbError::Config(e.to_string()))
}

/// On PostgreSQL: takes [`MIGRATION_LOCK`] on `conn` (exclusively to migrate, shared to
/// check), settles the service's schema, and gives the lock back. The lock is the session's,
/// so it also goes with the connection, however this ends.
async fn settle_postgres_locked(
    conn: &mut AnyConnection,
    schema: &str,
    migrator: &'static Migrator,
    policy: SchemaPolicy,
) -> Result<Migrated, DbError> {
    let (lock, unlock) = match policy {
        SchemaPolicy::Migrate => ("SELECT pg_advisory_lock($1)", "SELECT pg_advisory_unlock($1)"),
        SchemaPolicy::RequireCurrent => ("SELECT pg_advisory_lock_shared($1)", "SELECT pg_advisory_unlock_shared($1)"),
    };
    sqlx::query(lock).bind(MIGRATION_LOCK).execute(&mut *conn).await?;
    let settled = settle_postgres(conn, schema, migrator, policy).await;
    let unlocked = sqlx::query(unlock).bind(MIGRATION_LOCK).execute(&mut *conn).await;
    let settled = settled?;
    unlocked?;
    Ok(settled)
}

/// On PostgreSQL, under the lock: the schema created (when migrating) and made the search
/// path, then settled.
async fn settle_postgres(
    conn: &mut AnyConnection,
    schema: &str,
    migrator: &'static Migrator,
    policy: SchemaPolicy,
) -> Result<Migrated, DbError> {
    if policy == SchemaPolicy::Migrate {
        // Under the lock nobody else creates it meanwhile; asking first spares the log
        // PostgreSQL's notice that it exists.
        let exists = sqlx::query("SELECT CAST(nspname AS TEXT) AS name FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if !exists {
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await?;
        }
    }
    conn.execute(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}"))).await?;
    settle_schema(conn, &format!("{schema} schema"), migrator, policy).await
}

/// Compares the schema on `conn` (whose search path points at it) with `migrator`, then
/// applies what is pending or refuses a schema that is behind, per `policy`.
async fn settle_schema(
    conn: &mut AnyConnection,
    database: &str,
    migrator: &'static Migrator,
    policy: SchemaPolicy,
) -> Result<Migrated, DbError> {
    let before = schema_status(conn, database, migrator).await?;
    if !before.unknown.is_empty() {
        tracing::warn!(
            unknown = ?before.unknown,
            "the {database} has migrations this binary does not know (a newer release applied them); continuing"
        );
    }
    if before.pending.is_empty() {
        return Ok(Migrated { applied: Vec::new(), status: before });
    }
    match policy {
        SchemaPolicy::RequireCurrent => {
            Err(DbError::Behind { database: database.to_owned(), current: before.version(), pending: before.pending })
        }
        SchemaPolicy::Migrate => {
            if !before.unknown.is_empty() {
                return Err(DbError::Inconsistent {
                    database: database.to_owned(),
                    why: format!(
                        "it has migrations this binary does not know ({:?}) and lacks some it has ({:?})",
                        before.unknown, before.pending
                    ),
                });
            }
            migrator.run_direct(None, &mut *conn, false).await?;
            let after = schema_status(conn, database, migrator).await?;
            tracing::info!(applied = ?before.pending, version = after.version(), "migrated the {database}");
            Ok(Migrated { applied: before.pending, status: after })
        }
    }
}

/// Where the schema on `conn` stands against `migrator`; refuses a migration that failed
/// half-way or that differs from the binary's.
async fn schema_status(conn: &mut AnyConnection, database: &str, migrator: &Migrator) -> Result<SchemaStatus, DbError> {
    let exists: Option<String> = match conn.backend_name() {
        "PostgreSQL" => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT CAST(to_regclass('{MIGRATIONS_TABLE}') AS TEXT)")))
                .fetch_one(&mut *conn)
                .await?
        }
        _ => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(MIGRATIONS_TABLE)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let known: Vec<&sqlx::migrate::Migration> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).collect();
    if exists.is_none() {
        return Ok(SchemaStatus { pending: known.iter().map(|m| m.version).collect(), ..SchemaStatus::default() });
    }
    let inconsistent = |why: String| DbError::Inconsistent { database: database.to_owned(), why };
    if let Some(version) = conn.dirty_version(MIGRATIONS_TABLE).await? {
        return Err(inconsistent(format!(
            "migration {version} failed half-way; repair it by hand (see the `{MIGRATIONS_TABLE}` table), then run `postern migrate`"
        )));
    }
    let applied = conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
    let mut status = SchemaStatus::default();
    for m in &known {
        match applied.iter().find(|a| a.version == m.version) {
            Some(a) if a.checksum != m.checksum => {
                return Err(inconsistent(format!(
                    "migration {} was applied with other contents than this binary's {}",
                    m.version, m.description
                )));
            }
            Some(_) => {}
            None => status.pending.push(m.version),
        }
    }
    status.applied = applied.iter().map(|a| a.version).collect();
    status.unknown = applied.iter().map(|a| a.version).filter(|v| !known.iter().any(|m| m.version == *v)).collect();
    Ok(status)
}

/// Whether `err` is a violation of a unique constraint (a duplicate).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || db.code().is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}

/// Whether `err` is a violation of a foreign key (a parent row is gone).
pub fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::ForeignKeyViolation)
                || db.code().is_some_and(|c| c == "23503" || c == "787")
        }
        _ => false,
    }
}

/// The `VALUES` rows of a multi-row insert of `rows` rows of `columns` columns each, the
/// parameters bound in order: `($1, $2), ($3, $4)` for 2 × 2 on PostgreSQL, `(?, ?), (?, ?)`
/// on SQLite. SQLite finds a numbered parameter's name by a walk of the statement's list of
/// names, so binding n of them costs n²/2 steps (sqlx looks up every one): 3.4 million for a
/// 200-row insert of 13 columns. Anonymous parameters have no name to look up.
pub fn value_rows(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        sql.push_str(&placeholders(backend, r * columns, columns));
        sql.push(')');
    }
    sql
}

/// `n` parameters separated by commas, bound in order, numbered from `after + 1` on
/// PostgreSQL and anonymous on SQLite (see [`value_rows`]): `$3, $4` or `?, ?`.
pub fn placeholders(backend: Backend, after: usize, n: usize) -> String {
    let mut sql = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        match backend {
            Backend::Sqlite => sql.push('?'),
            Backend::Postgres => {
                sql.push('$');
                sql.push_str(&(after + i + 1).to_string());
            }
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_number_the_parameters_row_by_row() {
        assert_eq!(value_rows(Backend::Postgres, 1, 1), "($1)");
        assert_eq!(value_rows(Backend::Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(value_rows(Backend::Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_rows(Backend::Sqlite, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(placeholders(Backend::Postgres, 2, 3), "$3, $4, $5");
        assert_eq!(placeholders(Backend::Sqlite, 2, 3), "?, ?, ?");
    }

    #[tokio::test]
    async fn a_relaxed_write_lands_and_leaves_the_writer_syncing() {
        static NONE: Migrator = Migrator::DEFAULT;
        let dir = tempfile::tempdir().unwrap();
        let location = DbLocation::SqliteFile(dir.path().join("svc.db"));
        let db = Db::open(&location, Migrations { sqlite: &NONE, postgres: &NONE }).await.expect("open");
        let synchronous = || async {
            sqlx::query_scalar::<_, i64>("PRAGMA synchronous").fetch_one(db.writer()).await.expect("pragma")
        };
        const FULL: i64 = 2;
        assert_eq!(synchronous().await, FULL, "the writer syncs every commit");
        sqlx::query("CREATE TABLE t (v BIGINT)").execute(db.writer()).await.unwrap();
        db.execute_relaxed(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(7_i64)).await.expect("relaxed write");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(db.pool()).await.unwrap();
        assert_eq!(rows, 1, "the relaxed write is committed");
        assert_eq!(synchronous().await, FULL, "and the writer syncs again after it");
        // A caller cancelled between the two pragmas: the connection is not reused.
        let mut relaxed = RelaxedWriter { turn: Some(writer_turn(&db).await) };
        relaxed.connection().execute("PRAGMA synchronous = NORMAL").await.expect("relax");
        drop(relaxed);
        assert_eq!(synchronous().await, FULL, "a cancelled relaxed write leaves no relaxed writer behind");
        db.close().await;
    }

    async fn sqlite(dir: &tempfile::TempDir) -> Db {
        static NONE: Migrator = Migrator::DEFAULT;
        let location = DbLocation::SqliteFile(dir.path().join("svc.db"));
        let db = Db::open(&location, Migrations { sqlite: &NONE, postgres: &NONE }).await.expect("open");
        sqlx::query("CREATE TABLE t (v BIGINT NOT NULL UNIQUE)").execute(db.writer()).await.unwrap();
        db
    }

    #[tokio::test]
    async fn the_writer_keeps_its_connection_between_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        // A table only the writer's connection sees.
        sqlx::query("CREATE TEMP TABLE mine (v BIGINT)").execute(db.writer()).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        insert(&mut tx, 1).await.unwrap();
        sqlx::query("INSERT INTO mine VALUES (2)").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        let committer = db.writer.committer.as_ref().unwrap();
        assert!(committer.keeps_connection().await, "the commit kept the connection");
        db.execute_relaxed(sqlx::query("INSERT INTO mine VALUES (3)")).await.unwrap();
        assert!(committer.keeps_connection().await, "and so did the write alone");
        let mine: Vec<i64> = sqlx::query_scalar("SELECT v FROM mine ORDER BY v").fetch_all(db.writer()).await.unwrap();
        assert_eq!(mine, vec![2, 3], "every write ran on the one connection");
        assert_eq!(db.writer.pool.num_idle(), 0, "sqlx's pool never got it back (and so never pinged it)");
        assert_eq!(db.writer().figures(), (1, 1, 1), "open, and idle between writes");
        db.close().await;
    }

    /// The writer's turn with its connection, as a write alone has it.
    async fn writer_turn(db: &Db) -> commit::Turn {
        let committer = db.writer.committer.as_ref().expect("sqlite");
        match committer.single(&db.writer.pool).await.expect("the writer's turn") {
            commit::Single::Alone(turn) => turn,
            commit::Single::Part(_) => unreachable!("no batch is open"),
        }
    }

    async fn values(db: &Db) -> Vec<i64> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY v").fetch_all(db.pool()).await.unwrap()
    }

    async fn insert(tx: &mut WriteTx, v: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(v).execute(&mut **tx).await.map(|_| ())
    }

    /// A writer, in a task of its own, that inserts `v` in a transaction and commits.
    fn write(db: &Db, v: i64) -> tokio::task::JoinHandle<Result<(), sqlx::Error>> {
        let db = db.clone();
        tokio::spawn(async move {
            let mut tx = db.begin_write().await?;
            insert(&mut tx, v).await?;
            tx.commit().await
        })
    }

    /// Waits (yielding, never sleeping) until `n` writers queue behind the open one.
    async fn until_waiting(db: &Db, n: usize) {
        while db.writer.committer.as_ref().unwrap().waiting() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn statements_sent_together_bind_their_own_values_and_say_which_failed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let mut turn = writer_turn(&db).await;
        let conn = turn.connection();
        let mut together = Together::default();
        together.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64)).unwrap();
        together.push(sqlx::query("INSERT INTO t (v) VALUES (?), (?)").bind(2_i64).bind(3_i64)).unwrap();
        together.push(sqlx::query("INSERT INTO t (v) SELECT $2 WHERE $1 = 'yes'").bind("yes").bind(4_i64)).unwrap();
        together.push(sqlx::query("INSERT INTO t (v) VALUES (?)").bind(5_i64)).unwrap();
        together.push(sqlx::query("UPDATE t SET v = v WHERE v > $1").bind(1_i64)).unwrap();
        together.push(sqlx::query("SELECT v FROM t WHERE v >= $1 ORDER BY v").bind(4_i64)).unwrap();
        let answers = together.run(&mut *conn, Backend::Sqlite).await.expect("all run");
        let changed: Vec<u64> = answers[..5].iter().map(|a| a.changed).collect();
        assert_eq!(changed, vec![1, 2, 1, 1, 4], "each write's own count");
        let selected: Vec<i64> = answers[5].rows.iter().map(|r| sqlx::Row::get(r, 0)).collect();
        assert_eq!(selected, vec![4, 5], "and its own rows");
        assert!(answers[..5].iter().all(|a| a.rows.is_empty()), "only the select returned rows");
        assert_eq!(values(&db).await, vec![1, 2, 3, 4, 5], "each statement bound its own values");
        let mut failing = Together::default();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(6_i64)).unwrap();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64)).unwrap();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(7_i64)).unwrap();
        let failed = failing.run(&mut *conn, Backend::Sqlite).await.expect_err("a duplicate");
        assert_eq!(failed.index, 1, "the duplicate is named");
        assert!(is_unique_violation(&failed.error), "{:?}", failed.error);
        assert_eq!(values(&db).await, vec![1, 2, 3, 4, 5, 6], "the statements before it ran, none after");
        drop(turn);
        db.close().await;
    }

    #[tokio::test]
    async fn deferred_writes_commit_with_their_transaction_or_undo_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let (commits, _) = db.shared_commits();
        let mut tx = db.begin_write().await.unwrap();
        insert(&mut tx, 1).await.unwrap();
        tx.defer(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(2_i64)).unwrap();
        tx.defer(sqlx::query("INSERT INTO t (v) VALUES (?), (?)").bind(3_i64).bind(4_i64)).unwrap();
        assert_eq!(values(&db).await, Vec::<i64>::new(), "nothing is visible before the commit");
        tx.commit().await.expect("commits");
        assert_eq!(values(&db).await, vec![1, 2, 3, 4]);
        assert_eq!(db.shared_commits().0, commits + 1, "one commit");
        // A deferred write that fails fails the commit, and nothing of the transaction stays.
        let mut tx = db.begin_write().await.unwrap();
        insert(&mut tx, 5).await.unwrap();
        tx.defer(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64)).unwrap();
        let refused = tx.commit().await.expect_err("a duplicate");
        assert!(is_unique_violation(&refused), "{refused:?}");
        assert_eq!(values(&db).await, vec![1, 2, 3, 4]);
        // In a shared transaction a part whose deferred write fails is undone alone.
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 10).await.unwrap();
        let failing = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write().await?;
                insert(&mut tx, 11).await?;
                tx.defer(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64))?;
                tx.commit().await
            })
        };
        let deferring = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write().await?;
                tx.defer(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(12_i64))?;
                tx.commit().await
            })
        };
        until_waiting(&db, 2).await;
        first.commit().await.expect("the first commits");
        assert!(failing.await.unwrap().is_err(), "the part with the duplicate fails");
        deferring.await.unwrap().expect("the part after it commits");
        assert_eq!(values(&db).await, vec![1, 2, 3, 4, 10, 12], "the failed part alone is undone");
        db.close().await;
    }

    #[tokio::test]
    async fn a_transaction_begun_with_statements_answers_them_or_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let first = |v: i64| {
            let mut together = Together::default();
            together.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(v)).unwrap();
            together.push(sqlx::query("SELECT COUNT(*) FROM t WHERE v <= $1").bind(v)).unwrap();
            together
        };
        let (tx, answers) = db.begin_write_with(first(1)).await.expect("begins");
        assert_eq!(answers.len(), 2, "the statements' answers, without the BEGIN's");
        assert_eq!(answers[0].changed, 1);
        assert_eq!(sqlx::Row::get::<i64, _>(&answers[1].rows[0], 0), 1, "the insert is seen within");
        tx.commit().await.expect("commits");
        // A failing statement undoes what the ones before it wrote.
        let mut failing = Together::default();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(2_i64)).unwrap();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64)).unwrap();
        let refused = db.begin_write_with(failing).await.expect_err("a duplicate");
        assert!(is_unique_violation(&refused), "{refused:?}");
        assert_eq!(values(&db).await, vec![1]);
        // As a later part of a shared transaction, the same, undoing that part alone.
        let mut open = db.begin_write().await.unwrap();
        insert(&mut open, 10).await.unwrap();
        let queued = |v: i64, dup: bool| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut together = Together::default();
                together.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(v))?;
                if dup {
                    together.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(1_i64))?;
                }
                let (tx, _) = db.begin_write_with(together).await?;
                tx.commit().await
            })
        };
        let (failing, passing) = (queued(11, true), queued(12, false));
        until_waiting(&db, 2).await;
        open.commit().await.expect("the first commits");
        assert!(failing.await.unwrap().is_err(), "the part with the duplicate fails");
        passing.await.unwrap().expect("the other part commits");
        assert_eq!(values(&db).await, vec![1, 10, 12]);
        db.close().await;
    }

    #[tokio::test]
    async fn a_transaction_written_together_stops_where_a_row_was_expected_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        sqlx::query("INSERT INTO t (v) VALUES (1), (2)").execute(db.writer()).await.unwrap();
        let (commits, _) = db.shared_commits();
        // Use up 1, then write 10 and read it back: one transaction, one commit.
        let using_up = |v: i64, then: i64| {
            let mut together = Together::default();
            together.push_expecting_one(sqlx::query("DELETE FROM t WHERE v = $1").bind(v)).unwrap();
            together.push(sqlx::query("INSERT INTO t (v) VALUES ($1) RETURNING v").bind(then)).unwrap();
            together.push(sqlx::query("SELECT COUNT(*) FROM t")).unwrap();
            together
        };
        let answers = db.write_together(using_up(1, 10)).await.expect("written");
        assert_eq!(answers.len(), 3, "one answer per statement, the guard's and the BEGIN's left out");
        assert_eq!(answers[0].changed, 1);
        assert_eq!(sqlx::Row::get::<i64, _>(&answers[1].rows[0], 0), 10, "a write's RETURNING");
        assert_eq!(sqlx::Row::get::<i64, _>(&answers[2].rows[0], 0), 2, "the writes are seen within");
        assert_eq!(values(&db).await, vec![2, 10]);
        assert_eq!(db.shared_commits().0, commits + 1, "one commit");
        // 1 is gone: nothing after its use runs, and nothing is kept.
        let unmet = db.write_together(using_up(1, 11)).await.expect_err("1 was used up");
        assert!(unmet.unmet && unmet.index == 0, "{unmet:?}");
        assert_eq!(values(&db).await, vec![2, 10], "the insert after it did not run");
        // An expectation unmet after writes undoes them: an UPDATE that changes two rows.
        let mut two = Together::default();
        two.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(20_i64)).unwrap();
        two.push_expecting_one(sqlx::query("UPDATE t SET v = v WHERE v >= $1").bind(10_i64)).unwrap();
        two.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(21_i64)).unwrap();
        let unmet = db.write_together(two).await.expect_err("two rows changed");
        assert!(unmet.unmet && unmet.index == 1, "{unmet:?}");
        assert_eq!(values(&db).await, vec![2, 10], "the insert before it is undone");
        // A failing statement: its error, and nothing kept.
        let mut failing = Together::default();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(30_i64)).unwrap();
        failing.push(sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(2_i64)).unwrap();
        let failed = db.write_together(failing).await.expect_err("a duplicate");
        assert!(!failed.unmet && failed.index == 1 && is_unique_violation(&failed.error), "{failed:?}");
        assert_eq!(values(&db).await, vec![2, 10]);
        // As later parts of a shared transaction: the part whose expectation is unmet is
        // undone alone, and the others commit with the first.
        let mut open = db.begin_write().await.unwrap();
        insert(&mut open, 40).await.unwrap();
        let queued = |v: i64, then: i64| {
            let db = db.clone();
            tokio::spawn(async move { db.write_together(using_up(v, then)).await.map(|_| ()) })
        };
        let (used, unused, last) = (queued(2, 41), queued(99, 42), queued(10, 43));
        until_waiting(&db, 3).await;
        open.commit().await.expect("the first commits");
        used.await.unwrap().expect("2 is used up");
        let refused = unused.await.unwrap().expect_err("99 was never there");
        assert!(refused.unmet && refused.index == 0, "{refused:?}");
        last.await.unwrap().expect("10 is used up");
        assert_eq!(values(&db).await, vec![40, 41, 43], "the unmet part alone is undone");
        // Alone again, the writer is as it was: nothing is left half-done on it.
        db.write_together(using_up(40, 50)).await.expect("written");
        assert_eq!(values(&db).await, vec![41, 43, 50]);
        db.close().await;
    }

    #[tokio::test]
    async fn writers_queued_behind_one_share_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let (commits, parts) = db.shared_commits();
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 0).await.unwrap();
        let n = MAX_PARTS as i64 - 1;
        let queued: Vec<_> = (1..=n)
            .map(|v| {
                if v % 2 == 1 {
                    return write(&db, v);
                }
                // A single statement outside a transaction takes its turn too.
                let db = db.clone();
                tokio::spawn(async move {
                    let insert = sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(v);
                    insert.execute(db.writer()).await.map(drop)
                })
            })
            .collect();
        until_waiting(&db, MAX_PARTS - 1).await;
        first.commit().await.expect("the first commits");
        for q in queued {
            q.await.unwrap().expect("each queued writer commits");
        }
        assert_eq!(values(&db).await, (0..=n).collect::<Vec<_>>(), "every write landed");
        let batch = MAX_PARTS as u64;
        assert_eq!(db.shared_commits(), (commits + 1, parts + batch), "{batch} writes, one commit");
        // Alone, a writer commits at once.
        let mut alone = db.begin_write().await.unwrap();
        insert(&mut alone, n + 1).await.unwrap();
        alone.commit().await.unwrap();
        assert_eq!(db.shared_commits(), (commits + 2, parts + batch + 1));
        db.close().await;
    }

    #[tokio::test]
    async fn a_shared_transaction_undoes_one_writer_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 1).await.unwrap();
        let spawn = |f: fn(Db) -> futures_util::future::BoxFuture<'static, Result<(), sqlx::Error>>| {
            let db = db.clone();
            tokio::spawn(f(db))
        };
        let rolled_back = spawn(|db| {
            Box::pin(async move {
                let mut tx = db.begin_write().await?;
                insert(&mut tx, 2).await?;
                tx.rollback().await
            })
        });
        let dropped = spawn(|db| {
            Box::pin(async move {
                let mut tx = db.begin_write().await?;
                insert(&mut tx, 3).await?;
                Ok(())
            })
        });
        let after_a_refusal = spawn(|db| {
            Box::pin(async move {
                let mut tx = db.begin_write().await?;
                let duplicate = insert(&mut tx, 1).await.expect_err("1 is taken");
                assert!(is_unique_violation(&duplicate), "{duplicate}");
                insert(&mut tx, 4).await?;
                tx.commit().await
            })
        });
        let last = write(&db, 5);
        until_waiting(&db, 4).await;
        first.commit().await.expect("the first commits");
        rolled_back.await.unwrap().expect("rolled back");
        dropped.await.unwrap().expect("dropped");
        after_a_refusal.await.unwrap().expect("commits after a refused statement");
        last.await.unwrap().expect("the last commits");
        assert_eq!(values(&db).await, [1, 4, 5], "the writes undone are gone, and only they");
        db.close().await;
    }

    #[tokio::test]
    async fn a_failed_shared_commit_fails_every_writer_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        sqlx::query("CREATE TABLE parent (id BIGINT PRIMARY KEY)").execute(db.writer()).await.unwrap();
        sqlx::query("CREATE TABLE child (parent BIGINT NOT NULL REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
            .execute(db.writer())
            .await
            .unwrap();
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 1).await.unwrap();
        let orphan = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write().await?;
                // Checked only at the shared COMMIT.
                sqlx::query("INSERT INTO child (parent) VALUES (99)").execute(&mut *tx).await?;
                tx.commit().await
            })
        };
        let after = write(&db, 2);
        until_waiting(&db, 2).await;
        let first = first.commit().await;
        let (orphan, after) = (orphan.await.unwrap(), after.await.unwrap());
        for (who, outcome) in [("first", first), ("orphan", orphan), ("after", after)] {
            let e = outcome.expect_err(who);
            assert!(e.to_string().contains("FOREIGN KEY"), "{who}: {e}");
        }
        assert!(values(&db).await.is_empty(), "nothing of a failed commit is stored");
        let children: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM child").fetch_one(db.pool()).await.unwrap();
        assert_eq!(children, 0);
        let mut again = db.begin_write().await.expect("the writer is free again");
        insert(&mut again, 3).await.unwrap();
        again.commit().await.unwrap();
        assert_eq!(values(&db).await, [3]);
        db.close().await;
    }

    #[tokio::test]
    async fn writers_that_go_away_do_not_stall_the_ones_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        // One that leaves the line before its turn.
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 1).await.unwrap();
        let gone = {
            let db = db.clone();
            tokio::spawn(async move { db.begin_write().await.map(drop) })
        };
        until_waiting(&db, 1).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        first.commit().await.expect("commits alone");
        // One that has the batch handed to it and drops it: the batch's closer commits it.
        let mut first = db.begin_write().await.unwrap();
        insert(&mut first, 2).await.unwrap();
        let dropper = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write().await.unwrap();
                insert(&mut tx, 3).await.unwrap();
            })
        };
        until_waiting(&db, 1).await;
        first.commit().await.expect("the first commits the batch it handed on");
        dropper.await.unwrap();
        assert_eq!(values(&db).await, [1, 2]);
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_writers_on_many_threads_keep_exactly_what_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let writers: Vec<_> = (0..400_i64)
            .map(|v| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut tx = db.begin_write().await.unwrap();
                    insert(&mut tx, v).await.unwrap();
                    match v % 4 {
                        0 => tx.rollback().await.map(|()| None),
                        1 => Ok(None),
                        _ => tx.commit().await.map(|()| Some(v)),
                    }
                })
            })
            .collect();
        let mut kept = Vec::new();
        for w in writers {
            kept.extend(w.await.unwrap().expect("no write fails"));
        }
        assert_eq!(values(&db).await, kept);
        let (commits, parts) = db.shared_commits();
        assert!(parts >= 200 && commits <= parts, "{commits} commits of {parts} parts");
        db.close().await;
    }

    #[test]
    fn an_sqlite_file_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.db");
        let first = own(&path).expect("the first owner");
        match own(&path) {
            Err(DbError::InUse { path: p }) => assert_eq!(p, path.display().to_string()),
            other => panic!("a second owner must be refused, got {other:?}"),
        }
        drop(first);
        own(&path).expect("free again once the owner is gone");
    }
}
