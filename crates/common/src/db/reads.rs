//! Where reads go ([`Db::pool`](super::Db::pool)): sqlx's pool, and on SQLite the read
//! connections kept out of it between reads.
//!
//! sqlx returns a connection to its pool by pinging it first, in a task of its own, whatever
//! the pool's options say (`PoolConnection`'s drop; `test_before_acquire` only turns off the
//! ping on the way out). On SQLite a ping is a round trip to the connection's worker thread,
//! two thread wake-ups, for every statement run on the pool: as many as the statement itself.
//! A file cannot drop a connection the way a network can, so here SQLite's read connections,
//! once opened from the pool, are kept in a stack of their own and handed out again without
//! one. A connection whose statement failed in a way that may have left it broken (its
//! thread gone, an I/O error) goes back to sqlx's pool instead, which pings it and closes it
//! if it is. A caller that goes away mid-statement leaves the statement to finish on the
//! connection's thread, before any later command on it: SQLite's connections run their
//! commands in order.
//!
//! PostgreSQL, whose connections can break in the network, keeps sqlx's pool as it is.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The executor for reads of a [`Db`](super::Db): `query.fetch_one(db.pool())`.
#[derive(Debug, Clone)]
pub struct Reads {
    pool: AnyPool,
    /// SQLite: the connections kept between reads.
    kept: Option<Arc<Kept>>,
}

/// SQLite's read connections out of sqlx's pool.
#[derive(Debug)]
struct Kept {
    /// Idle connections, the most recently used on top; `None` once the reads are closed.
    idle: Mutex<Option<Vec<PoolConnection<Any>>>>,
    /// One permit per connection the pool may open: a read waits here, in order, when every
    /// connection is in use, so that sqlx's pool is asked for a connection only when it has
    /// one to give.
    turns: Arc<Semaphore>,
}

impl Reads {
    /// The reads of a PostgreSQL database: its pool.
    pub(super) fn pooled(pool: AnyPool) -> Self {
        Self { pool, kept: None }
    }

    /// The reads of an SQLite file: connections of `pool`, kept, as many as it may open.
    pub(super) fn kept(pool: AnyPool) -> Self {
        let most = pool.options().get_max_connections() as usize;
        let kept = Kept { idle: Mutex::new(Some(Vec::new())), turns: Arc::new(Semaphore::new(most)) };
        Self { pool, kept: Some(Arc::new(kept)) }
    }

    /// A connection for several statements (a read transaction, statements sent
    /// [together](super::Together)); it goes back when dropped.
    pub async fn acquire(&self) -> Result<ReadConn, sqlx::Error> {
        let Some(kept) = &self.kept else {
            return Ok(ReadConn { conn: Some(self.pool.acquire().await?), kept: None });
        };
        let permit = kept.turns.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = kept.idle.lock().unwrap_or_else(PoisonError::into_inner).as_mut().map(Vec::pop);
        let conn = match idle {
            None => return Err(sqlx::Error::PoolClosed),
            Some(Some(conn)) => conn,
            // Fewer connections are kept than there are permits: the pool has one to give.
            Some(None) => self.pool.acquire().await?,
        };
        Ok(ReadConn { conn: Some(conn), kept: Some((kept.clone(), permit)) })
    }

    /// Whether the reads are closed ([`Db::close`](super::Db::close)).
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Connections open, connections idle, and the most that may be open, for the metrics.
    pub fn figures(&self) -> (u32, usize, u32) {
        let most = self.pool.options().get_max_connections();
        match &self.kept {
            None => (self.pool.size(), self.pool.num_idle(), most),
            Some(kept) => {
                let idle = kept.idle.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, Vec::len);
                (self.pool.size(), idle + self.pool.num_idle(), most)
            }
        }
    }

    /// Gives every kept connection back to the pool, and every one in use when it is
    /// dropped, so that the pool can close.
    pub(super) async fn close(&self) {
        if let Some(kept) = &self.kept {
            kept.turns.close();
            drop(kept.idle.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
        self.pool.close().await;
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // The last handle went: the connections go back to the pool, which needs a runtime
        // to take them (sqlx spawns each return). Without one, they are closed where they are.
        if tokio::runtime::Handle::try_current().is_err() {
            let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner).take();
            idle.into_iter().flatten().for_each(|conn| drop(conn.detach()));
        }
    }
}

/// A read connection ([`Reads::acquire`]), used as `&mut *conn`.
#[derive(Debug)]
pub struct ReadConn {
    conn: Option<PoolConnection<Any>>,
    /// SQLite: where it goes back, and the turn it holds.
    kept: Option<(Arc<Kept>, OwnedSemaphorePermit)>,
}

impl ReadConn {
    /// Notes how a statement on the connection ended: after a failure that may have broken
    /// it, it goes back to sqlx's pool (which pings it, and closes it if broken) instead of
    /// being kept.
    fn judge<T>(&mut self, done: &Result<T, sqlx::Error>) {
        if let Err(e) = done
            && may_break(e)
        {
            self.kept = None;
        }
    }
}

/// Whether a failure may have left a connection unusable (rather than refused one statement).
fn may_break(e: &sqlx::Error) -> bool {
    !matches!(
        e,
        sqlx::Error::Database(_)
            | sqlx::Error::RowNotFound
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Encode(_)
            | sqlx::Error::TypeNotFound { .. }
    )
}

impl std::ops::Deref for ReadConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.conn.as_deref().unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        let (Some(conn), Some((kept, _turn))) = (self.conn.take(), self.kept.take()) else { return };
        let mut idle = kept.idle.lock().unwrap_or_else(PoisonError::into_inner);
        match idle.as_mut() {
            Some(idle) => idle.push(conn),
            // Closed: back to the pool, which is waiting for it.
            None => {
                drop(idle);
                drop(conn);
            }
        }
        // The turn is released after the connection is kept, so that the next read finds it.
    }
}

impl<'c> Executor<'c> for &'c Reads {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        if self.kept.is_none() {
            return self.pool.fetch_many(query);
        }
        // The answers are read whole, so that the connection goes back before they are
        // handed on (as a write's are, `Writer`): Postern's reads are bounded.
        let all = async move {
            let mut conn = self.acquire().await?;
            let done = conn.fetch_many(query).try_collect::<Vec<_>>().await;
            conn.judge(&done);
            done
        };
        super::answered_whole(all)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::any::AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        if self.kept.is_none() {
            return self.pool.fetch_optional(query);
        }
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let done = conn.fetch_optional(query).await;
            conn.judge(&done);
            done
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::any::AnyTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::any::AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move { self.acquire().await?.prepare_with(sql, parameters).await })
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move { self.acquire().await?.describe(sql).await })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Poll;

    use sqlx::migrate::Migrator;

    use super::*;
    use crate::db::{Db, DbLocation, Migrations};

    async fn sqlite(dir: &tempfile::TempDir) -> Db {
        static NONE: Migrator = Migrator::DEFAULT;
        let location = DbLocation::SqliteFile(dir.path().join("reads.db"));
        Db::open(&location, Migrations { sqlite: &NONE, postgres: &NONE }).await.expect("open")
    }

    /// Whether `future` is still waiting after one poll.
    async fn waits<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let mut future = future;
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test]
    async fn a_read_connection_is_kept_for_the_next_read_not_returned_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        {
            let mut conn = db.pool().acquire().await.unwrap();
            // A table only this connection sees.
            conn.execute("CREATE TEMP TABLE mine (v BIGINT)").await.unwrap();
            conn.execute("INSERT INTO mine VALUES (7)").await.unwrap();
        }
        assert_eq!(db.pool().pool.num_idle(), 0, "sqlx's pool did not get it back (and so did not ping it)");
        assert_eq!(db.pool().figures(), (1, 1, 8), "it is open, idle, and kept");
        // The next read has that same connection, without opening another.
        let v: i64 = sqlx::query_scalar("SELECT v FROM mine").fetch_one(db.pool()).await.unwrap();
        assert_eq!(v, 7);
        assert_eq!(db.pool().figures(), (1, 1, 8));
        db.close().await;
    }

    #[tokio::test]
    async fn reads_wait_their_turn_when_every_connection_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(db.pool().acquire().await.unwrap());
        }
        let ninth = db.pool().acquire();
        let mut ninth = pin!(ninth);
        assert!(waits(ninth.as_mut()).await, "a ninth read waits: every connection is in use");
        held.pop();
        let mut conn = ninth.await.expect("the ninth read has the connection given back");
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(one, 1);
        drop((conn, held));
        assert_eq!(db.pool().figures(), (8, 8, 8), "all eight are kept");
        db.close().await;
    }

    #[tokio::test]
    async fn a_read_dropped_mid_statement_leaves_its_connection_usable() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let long =
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT COUNT(*) FROM n";
        {
            let read = sqlx::query_scalar::<_, i64>(long).fetch_one(db.pool());
            let mut read = pin!(read);
            assert!(waits(read.as_mut()).await, "the statement is under way on the connection's thread");
        }
        // The same connection (the one kept on top), its abandoned statement before this one.
        assert_eq!(db.pool().figures().1, 1, "the connection was kept");
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(db.pool()).await.unwrap();
        assert_eq!(one, 1);
        db.close().await;
    }

    #[tokio::test]
    async fn closing_waits_for_the_reads_in_use_and_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(&dir).await;
        let _idle = db.pool().acquire().await.unwrap();
        let in_use = db.pool().acquire().await.unwrap();
        drop(_idle);
        let closing = db.clone();
        let close = closing.close();
        let mut close = pin!(close);
        assert!(waits(close.as_mut()).await, "closing waits for the connection in use");
        assert!(matches!(db.pool().acquire().await, Err(sqlx::Error::PoolClosed)), "no new read starts");
        drop(in_use);
        close.await;
        assert!(db.pool().is_closed());
    }

    #[test]
    fn only_failures_that_may_break_a_connection_give_it_back() {
        assert!(!may_break(&sqlx::Error::RowNotFound));
        assert!(!may_break(&sqlx::Error::ColumnNotFound("v".into())));
        assert!(!may_break(&sqlx::Error::Decode("bad".into())));
        assert!(may_break(&sqlx::Error::WorkerCrashed));
        assert!(may_break(&sqlx::Error::Io(std::io::Error::other("disk"))));
        assert!(may_break(&sqlx::Error::Protocol("lost".into())));
    }
}
