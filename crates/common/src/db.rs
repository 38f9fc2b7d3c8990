//! One storage handle for both backends. Services write their SQL once, with `$1`-style
//! placeholders (which SQLite understands too) and only the column types both backends map
//! the same way through sqlx's `Any` driver: `BIGINT` for integers, booleans and times (unix
//! microseconds), `TEXT`, and `BLOB`/`BYTEA`. Each service ships its migrations for both.
//!
//! SQLite (the embedded default) runs in WAL mode with `synchronous=FULL`, so every
//! acknowledged write survives a crash. SQLite lets one writer in at a time, and a writer
//! that finds the lock taken sleeps in SQLite's busy handler (1, 2, 5 … 100 ms) however soon
//! the lock is free again. So on SQLite every write goes through [`Db::writer`], a pool of one
//! connection: writers queue in order on the pool, without sleeping, and the lock is never
//! contended within the process. The process owns its file: it holds an exclusive lock on
//! `<file>.lock` while open, and a second process opening the same file is refused (services
//! that run apart share PostgreSQL, not an SQLite file). What the process keeps in memory
//! about its file's rows (the login attempts in flight, say) can rely on that. Write
//! transactions still start with `BEGIN IMMEDIATE`, as SQLite's own tools may open the file.
//! PostgreSQL keeps each service in its own schema of the database it is given, and its
//! writer is the common pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

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
    },
}

impl DbLocation {
    /// The location of service `service`: `<data_dir>/<service>.db`, or its schema in the
    /// PostgreSQL database at `database_url` when one is given.
    pub fn for_service(service: &str, data_dir: &Path, database_url: Option<&str>) -> Self {
        match database_url {
            Some(url) => DbLocation::Postgres { url: url.to_owned(), schema: service.to_owned() },
            None => DbLocation::SqliteFile(data_dir.join(format!("{service}.db"))),
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
    pool: AnyPool,
    /// SQLite: the one connection that writes. PostgreSQL: the common pool.
    writer: AnyPool,
    backend: Backend,
    /// SQLite: the locked `<file>.lock`, held until [`close`](Self::close) or until the last
    /// handle goes.
    owner: Option<std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>>,
}

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
    /// Opens (creating when needed) the database at `location` and runs `migrations`.
    pub async fn open(location: &DbLocation, migrations: Migrations) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let db = match location {
            DbLocation::SqliteFile(path) => {
                prepare_sqlite_file(path)?;
                let owner = own(path)?;
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let options = AnyConnectOptions::from_str(&url).map_err(|e| DbError::Config(e.to_string()))?;
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
                let pool = sqlite_pool(8).connect_with(options).await?;
                Db { pool, writer, backend: Backend::Sqlite, owner: Some(owner) }
            }
            DbLocation::Postgres { url, schema } => {
                if !schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    return Err(DbError::Config(format!("schema name {schema:?} must be lowercase letters")));
                }
                let options = AnyConnectOptions::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
                // The schema must exist before any pooled connection points its search path at it.
                {
                    let bootstrap = AnyPoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
                    bootstrap.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}"))).await?;
                    bootstrap.close().await;
                }
                let set_path = format!("SET search_path TO {schema}");
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?;
                Db { writer: pool.clone(), pool, backend: Backend::Postgres, owner: None }
            }
        };
        let migrator = match db.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        migrator.run(&db.writer).await?;
        Ok(db)
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for single-statement writes outside [`begin_write`](Self::begin_write): on
    /// SQLite its one connection, so that writers queue in order instead of contending for
    /// the lock. A caller holding a write transaction must not wait on it.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it waits its turn for the one writing
    /// connection, then takes the write lock up front (`BEGIN IMMEDIATE`), so that a writer
    /// in another process makes it wait instead of fail.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Closes the pool, waiting for connections to be returned, and gives the SQLite file up.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
        // Nothing can write through this handle any more: the file may have another owner.
        if let Some(owner) = &self.owner {
            owner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
