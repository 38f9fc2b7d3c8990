//! SQLite's group commit: concurrent write transactions share one commit, and so one fsync.
//!
//! SQLite has one writer, and with `synchronous=FULL` each commit waits for the disk (0.3–3
//! ms on the VMs Postern is tried on). A write transaction holds the writer from its `BEGIN`
//! to that flush, so the writes of a busy process queue one flush each behind it. Here a
//! write transaction is a *part* of a shared one, the *batch*:
//!
//! - the first part begins the batch (`BEGIN IMMEDIATE`) and is a plain transaction while
//!   alone; each later part runs inside a savepoint of its own, so that its rollback (an
//!   explicit one, an error, or a caller that went away) undoes it and nothing else;
//! - a part that commits while other writers wait their turn hands the open batch to the
//!   next one instead of committing, and waits for the batch's end; the part that finds no
//!   one waiting (or the [`MAX_PARTS`]th) commits the batch, once, for all of them;
//! - every part's `commit` answers with the batch's own outcome: no part is acknowledged
//!   before its writes are durable, and when the batch's `COMMIT` fails every part of it
//!   fails (nothing of theirs is stored).
//!
//! The writer connection is kept here between writes rather than returned to sqlx's pool,
//! whose every return pings the connection first: on SQLite a round trip to the connection's
//! thread, as dear as a statement. A write that leaves it in an unknown state (a part
//! abandoned half-way, a `ROLLBACK` that failed) closes it; the next write opens another.
//!
//! Parts take turns on the writer, each finishing (released or rolled back) before the next
//! starts, so a part sees the earlier parts' writes as if they had committed; and since they
//! commit together or not at all, nothing can see writes that are later lost. A lone writer
//! costs what it did before (`BEGIN`, its statements, `COMMIT`): batching begins only when a
//! writer waits.
//!
//! A deferred constraint (`DEFERRABLE INITIALLY DEFERRED`) would be checked at the batch's
//! `COMMIT` and one part's violation would fail the others; Postern's schemas have none.
//! This is what PostgreSQL does on its own (`commit_delay`, one WAL flush for concurrent
//! commits), so there a write transaction stays an ordinary one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{Answer, Backend, Failed, Together};

/// The most parts in one batch: its first part waits for at most this many others' writes.
pub const MAX_PARTS: usize = 16;

/// The savepoint of a part after the first (parts never nest: each ends before the next).
const SAVEPOINT: &str = "SAVEPOINT postern_part";
const RELEASE: &str = "RELEASE postern_part";
const ROLLBACK_TO: &str = "ROLLBACK TO postern_part";

/// A batch's end: `None` while open.
type Outcome = Option<Result<(), Shared>>;

/// A failure every part of a batch answers with: the cause's kind is kept, so that a disk or
/// pool failure still reads as the database being unavailable.
#[derive(Debug, Clone)]
enum Shared {
    Io(std::io::ErrorKind, String),
    PoolTimedOut,
    PoolClosed,
    Other(String),
}

impl Shared {
    fn of(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(io) => Shared::Io(io.kind(), io.to_string()),
            sqlx::Error::PoolTimedOut => Shared::PoolTimedOut,
            sqlx::Error::PoolClosed => Shared::PoolClosed,
            other => Shared::Other(other.to_string()),
        }
    }

    fn error(&self) -> sqlx::Error {
        match self {
            Shared::Io(kind, m) => {
                sqlx::Error::Io(std::io::Error::new(*kind, format!("the shared commit failed: {m}")))
            }
            Shared::PoolTimedOut => sqlx::Error::PoolTimedOut,
            Shared::PoolClosed => sqlx::Error::PoolClosed,
            Shared::Other(m) => sqlx::Error::Protocol(format!("the shared commit failed: {m}")),
        }
    }
}

/// The writer's turns and the batch open on it.
#[derive(Debug, Default)]
pub(super) struct Committer {
    state: Arc<Mutex<State>>,
    /// Writers queued for their turn in [`Committer::begin`].
    waiting: AtomicUsize,
    /// Batches committed, and parts in them.
    commits: AtomicU64,
    parts: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// The writer connection: opened by the first write, then kept between writes until a
    /// write leaves it in an unknown state or the database closes.
    conn: Option<PoolConnection<Any>>,
    batch: Option<Batch>,
}

#[derive(Debug)]
struct Batch {
    /// Parts committed into it so far.
    parts: usize,
    outcome: Arc<watch::Sender<Outcome>>,
}

/// A writer's turn. While `clean` is false a part is under way on the connection, and should
/// the turn end so (a task dropped half-way, a runtime shutting down), the connection is
/// closed, which rolls the batch back, and the batch's parts are told it failed: nothing half
/// done is ever committed by the next writer.
#[derive(Debug)]
pub(super) struct Turn {
    state: OwnedMutexGuard<State>,
    clean: bool,
}

impl std::ops::Deref for Turn {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Turn {
    /// The writer connection, opened (from `writer`) when there is none.
    async fn open(&mut self, writer: &AnyPool) -> Result<(), sqlx::Error> {
        if self.state.conn.is_none() {
            self.state.conn = Some(writer.acquire().await?);
        }
        Ok(())
    }

    /// The writer connection, for a write alone ([`Single::Alone`]).
    pub(super) fn connection(&mut self) -> &mut AnyConnection {
        connection(&mut self.state)
    }

    /// Closes the writer connection: the next write opens another.
    pub(super) fn close_connection(&mut self) {
        conn_close(&mut self.state);
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The last handle went: the connection goes back to the pool, which needs a runtime
        // to take it (sqlx spawns its return). Without one, it is closed where it is.
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(conn) = self.conn.take()
        {
            drop(conn.detach());
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.clean {
            conn_close(&mut self.state);
            if let Some(batch) = self.state.batch.take() {
                let why = "a write transaction was abandoned half-way".to_owned();
                batch.outcome.send_replace(Some(Err(Shared::Other(why))));
            }
        }
    }
}

/// Counts a writer as waiting until it has its turn or goes away.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Self(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Committer {
    /// Waits for the writer's turn and starts a part: the batch's first (`BEGIN IMMEDIATE`
    /// on a connection of `writer`) or a later one (a savepoint in the open batch).
    pub(super) async fn begin(self: &Arc<Self>, writer: &AnyPool) -> Result<Part, sqlx::Error> {
        self.begin_with(writer, Together::default()).await.map(|(part, _)| part)
    }

    /// [`begin`](Self::begin), with the part's first statements sent with its `BEGIN
    /// IMMEDIATE` (or its savepoint) in one hand-off: the part and what they answered. When
    /// one of them fails, the part is undone and the error returned.
    pub(super) async fn begin_with(
        self: &Arc<Self>,
        writer: &AnyPool,
        statements: Together,
    ) -> Result<(Part, Vec<Answer>), sqlx::Error> {
        let turn = self.turn().await;
        self.start(turn, writer, statements).await
    }

    /// Waits for the writer's turn and starts a write of one statement: alone, on the writer
    /// connection in autocommit (a commit of its own, as before batching); or, when the batch
    /// was handed to it, as a part of the batch.
    pub(super) async fn single(self: &Arc<Self>, writer: &AnyPool) -> Result<Single, sqlx::Error> {
        let mut turn = self.turn().await;
        if turn.batch.is_some() {
            let (part, _) = self.start(turn, writer, Together::default()).await?;
            return Ok(Single::Part(part));
        }
        turn.open(writer).await?;
        Ok(Single::Alone(turn))
    }

    /// The writer's turn, in the order asked.
    async fn turn(&self) -> Turn {
        let state = {
            let _queued = Queued::new(&self.waiting);
            self.state.clone().lock_owned().await
        };
        Turn { state, clean: true }
    }

    /// Starts a part on `turn` with `statements` after its start: the batch's first (`BEGIN
    /// IMMEDIATE` on a connection of `writer`) when none is open, a savepoint in the open
    /// batch otherwise.
    async fn start(
        self: &Arc<Self>,
        mut turn: Turn,
        writer: &AnyPool,
        mut statements: Together,
    ) -> Result<(Part, Vec<Answer>), sqlx::Error> {
        let joining = turn.batch.is_some();
        if !joining {
            turn.open(writer).await?;
        }
        turn.clean = false;
        statements.push_front_sql(if joining { SAVEPOINT } else { "BEGIN IMMEDIATE" });
        let answered = statements.run(connection(&mut turn), Backend::Sqlite).await;
        if !joining && !matches!(answered, Err(Failed { index: 0, .. })) {
            turn.batch = Some(Batch { parts: 0, outcome: Arc::new(watch::channel(None).0) });
        }
        match answered {
            Ok(mut answers) => {
                answers.remove(0);
                Ok((Part { turn: Some(turn), first: !joining, committer: self.clone() }, answers))
            }
            Err(Failed { index: 0, error, .. }) => {
                if joining {
                    // The batch's state is unknown: it ends, and its parts fail with it.
                    end(&mut turn, Some(&error)).await.ok();
                } else {
                    // No transaction began: the connection is as it came.
                    turn.clean = true;
                }
                Err(error)
            }
            Err(Failed { error, .. }) => {
                let _ = roll_back(turn, !joining).await;
                Err(error)
            }
        }
    }

    /// Waits for the writer's turn and runs a whole write transaction of `together`, its
    /// start (`BEGIN IMMEDIATE`, or a savepoint in the open batch) and its end (the part's
    /// `RELEASE`, and the batch's `COMMIT` when no writer waits for the batch) sent with them
    /// in one hand-off: what they answered once the part is durable. When one of them fails,
    /// or changes other than one row where it was expected to, the part is undone and
    /// `Err` tells which.
    pub(super) async fn write_together(
        self: &Arc<Self>,
        writer: &AnyPool,
        mut together: Together,
    ) -> Result<Vec<Answer>, Failed> {
        let mut turn = self.turn().await;
        let joining = turn.batch.is_some();
        if !joining {
            turn.open(writer).await.map_err(|error| Failed::error(0, error))?;
        }
        let parts = turn.batch.as_ref().map_or(0, |b| b.parts);
        // Whether this part ends the batch, decided before its statements go, as in
        // `Part::commit_with`.
        let ends = self.waiting.load(Ordering::SeqCst) == 0 || parts + 1 >= MAX_PARTS;
        let own = together.len();
        together.push_front_sql(if joining { SAVEPOINT } else { "BEGIN IMMEDIATE" });
        if joining {
            together.push_sql(RELEASE);
        }
        if ends {
            together.push_sql("COMMIT");
        }
        turn.clean = false;
        let mut answers = match together.run(connection(&mut turn), Backend::Sqlite).await {
            Ok(answers) => answers,
            Err(Failed { index: 0, error, .. }) => {
                if joining {
                    end(&mut turn, Some(&error)).await.ok();
                } else {
                    turn.clean = true;
                }
                return Err(Failed::error(0, error));
            }
            Err(failed) if failed.index <= own => {
                if roll_back(turn, !joining).await.is_err() && failed.unmet {
                    // Undoing it failed, and the batch ended with it: nothing is stored.
                    let error = sqlx::Error::Protocol("a write transaction could not be undone".to_owned());
                    return Err(Failed::error(failed.index - 1, error));
                }
                return Err(Failed { index: failed.index - 1, ..failed });
            }
            Err(failed) if joining && failed.index == own + 1 => {
                end(&mut turn, Some(&failed.error)).await.ok();
                return Err(Failed { index: own, ..failed });
            }
            Err(failed) => {
                // The batch's COMMIT: it failed as `end` tells it.
                let Err(error) = ended_with(&mut turn, Err(failed.error), None).await else {
                    unreachable!("a batch whose COMMIT failed ends with that failure")
                };
                return Err(Failed::error(own, error));
            }
        };
        answers.remove(0);
        answers.truncate(own);
        let done = if ends {
            self.counted(parts as u64 + 1);
            ended_with(&mut turn, Ok(()), None).await
        } else {
            if !joining {
                turn.batch = Some(Batch { parts: 0, outcome: Arc::new(watch::channel(None).0) });
            }
            turn.clean = true;
            settle(turn, !joining, self).await.outcome().await
        };
        done.map(|()| answers).map_err(|error| Failed::error(own, error))
    }

    /// Gives the writer connection back to the pool, so that it can close: once no write
    /// holds the writer's turn.
    pub(super) async fn let_go(&self) {
        self.state.lock().await.conn = None;
    }

    /// Whether the writer is idle: no write holds its turn.
    pub(super) fn idle(&self) -> bool {
        self.state.try_lock().is_ok()
    }

    /// Whether the writer connection is kept (open, and not in sqlx's pool).
    #[cfg(test)]
    pub(super) async fn keeps_connection(&self) -> bool {
        self.state.lock().await.conn.is_some()
    }

    /// Writers waiting for their turn.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Counts a batch of `parts` parts committed.
    fn counted(&self, parts: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.parts.fetch_add(parts, Ordering::Relaxed);
    }

    /// Batches committed so far, and the parts they held.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Relaxed), self.parts.load(Ordering::Relaxed))
    }
}

/// A write of one statement outside a transaction ([`Committer::single`]).
#[derive(Debug)]
pub(super) enum Single {
    /// No batch was open: the writer's turn, its connection in autocommit
    /// ([`Turn::connection`]).
    Alone(Turn),
    /// The batch was handed to this writer: the statement is a part of it.
    Part(Part),
}

impl Single {
    /// The writer connection, for the statement.
    pub(super) fn connection(&mut self) -> &mut AnyConnection {
        match self {
            Single::Alone(turn) => turn.connection(),
            Single::Part(part) => part.connection(),
        }
    }

    /// Ends the write with the statement's result `done`: a write alone is already committed
    /// (autocommit); a part commits if it succeeded and is rolled back if not.
    pub(super) async fn end<T>(self, done: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match self {
            Single::Alone(_) => done,
            Single::Part(part) => part.end(done).await,
        }
    }
}

/// One write transaction's share of a batch; see the module's documentation.
#[derive(Debug)]
pub(super) struct Part {
    /// The writer's turn, until the part ends.
    turn: Option<Turn>,
    first: bool,
    committer: Arc<Committer>,
}

fn connection(state: &mut State) -> &mut AnyConnection {
    state.conn.as_deref_mut().unwrap_or_else(|| unreachable!("the writer connection is open while a turn uses it"))
}

/// Ends the open batch, committing it (`failed` is `None`) or rolling it back because of
/// `failed`, and tells its parts how it ended. Its connection is kept for the next write, or
/// closed when even the `ROLLBACK` failed.
async fn end(state: &mut Turn, failed: Option<&sqlx::Error>) -> Result<(), sqlx::Error> {
    let ended = match failed {
        None => connection(state).execute("COMMIT").await.map(|_| ()),
        Some(cause) => Err(sqlx::Error::Protocol(format!("the shared write transaction failed: {cause}"))),
    };
    ended_with(state, ended, failed).await
}

/// The batch's end once its `COMMIT` answered `ended` (or it failed because of `failed`).
async fn ended_with(
    state: &mut Turn,
    ended: Result<(), sqlx::Error>,
    failed: Option<&sqlx::Error>,
) -> Result<(), sqlx::Error> {
    // A failed COMMIT can leave the transaction open: nothing of it may commit later.
    if ended.is_err() && connection(state).execute("ROLLBACK").await.is_err() {
        conn_close(state);
    }
    if let Some(batch) = state.batch.take() {
        let told = match (&ended, failed) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(cause)) => Err(Shared::of(cause)),
            (Err(e), None) => Err(Shared::of(e)),
        };
        batch.outcome.send_replace(Some(told));
    }
    state.clean = true;
    ended
}

/// Closes the writer connection instead of keeping it.
fn conn_close(state: &mut State) {
    if let Some(mut conn) = state.conn.take() {
        conn.close_on_drop();
    }
}

/// How a part's commit left it.
enum Committed {
    /// The batch ended here, with this outcome.
    Ended(Result<(), sqlx::Error>),
    /// The batch went on to the next writer; its end is awaited on this.
    HandedOn(watch::Receiver<Outcome>),
}

impl Committed {
    /// The batch's outcome: as it ended here, or once the writers it was handed on to end it.
    async fn outcome(self) -> Result<(), sqlx::Error> {
        match self {
            Committed::Ended(done) => done,
            Committed::HandedOn(outcome) => await_end(outcome).await,
        }
    }
}

impl Part {
    /// Commits the part: answers once the batch it belongs to has committed (or failed).
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let turn = self.turn.take().unwrap_or_else(|| unreachable!("a part ends once"));
        // A caller going away half-way drops the turn unclean (`Turn`'s drop): the batch is
        // then rolled back and its parts fail, rather than left neither committed nor handed on.
        hand_on_or_end(turn, self.first, &self.committer).await.outcome().await
    }

    /// Commits the part with the statements `deferred` to its commit run first, in one
    /// hand-off with the part's own end (its `RELEASE`, and the batch's `COMMIT` when no
    /// writer waits for the batch): see the `together` module. A deferred statement that
    /// fails rolls the part back, and only the part.
    pub(super) async fn commit_with(mut self, deferred: Together) -> Result<(), sqlx::Error> {
        if deferred.is_empty() {
            return self.commit().await;
        }
        let mut turn = self.turn.take().unwrap_or_else(|| unreachable!("a part ends once"));
        let (first, committer) = (self.first, self.committer.clone());
        let parts = turn.batch.as_ref().map_or(0, |b| b.parts);
        // Whether this part ends the batch, decided before its statements go: a writer that
        // comes while they run waits for the next batch.
        let ends = committer.waiting.load(Ordering::SeqCst) == 0 || parts + 1 >= MAX_PARTS;
        let own = deferred.len();
        let mut together = deferred;
        if !first {
            together.push_sql(RELEASE);
        }
        if ends {
            together.push_sql("COMMIT");
        }
        if let Err(failed) = together.run(connection(&mut turn), Backend::Sqlite).await {
            if failed.index < own {
                let _ = roll_back(turn, first).await;
            } else if !first && failed.index == own {
                end(&mut turn, Some(&failed.error)).await.ok();
            } else {
                // The batch's COMMIT: it failed as `end` tells it.
                return ended_with(&mut turn, Err(failed.error), None).await;
            }
            return Err(failed.error);
        }
        if !ends {
            turn.clean = true;
            return settle(turn, first, &committer).await.outcome().await;
        }
        committer.counted(parts as u64 + 1);
        ended_with(&mut turn, Ok(()), None).await
    }

    /// Ends a part of one statement whose result is `done`: committed if it succeeded,
    /// rolled back if not.
    pub(super) async fn end<T>(self, done: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match done {
            Ok(v) => self.commit().await.map(|()| v),
            Err(e) => {
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }

    /// Rolls the part back, and only the part.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let turn = self.turn.take().unwrap_or_else(|| unreachable!("a part ends once"));
        roll_back(turn, self.first).await
    }

    /// The writer connection.
    pub(super) fn connection_ref(&self) -> &AnyConnection {
        self.turn
            .as_ref()
            .and_then(|t| t.conn.as_deref())
            .unwrap_or_else(|| unreachable!("a part is used until it ends"))
    }

    /// The writer connection, for the part's statements.
    pub(super) fn connection(&mut self) -> &mut AnyConnection {
        connection(self.turn.as_mut().unwrap_or_else(|| unreachable!("a part is used until it ends")))
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let first = self.first;
        // Without a runtime to undo it on, the turn's own drop closes the connection.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = roll_back(turn, first).await;
            });
        }
    }
}

async fn hand_on_or_end(mut turn: Turn, first: bool, committer: &Arc<Committer>) -> Committed {
    if !first && let Err(e) = connection(&mut turn).execute(RELEASE).await {
        end(&mut turn, Some(&e)).await.ok();
        return Committed::Ended(Err(e));
    }
    turn.clean = true;
    settle(turn, first, committer).await
}

/// A part's end once it is released: the batch goes on to the next writer in line, or, when
/// none waits (or it holds [`MAX_PARTS`] parts), commits.
async fn settle(mut turn: Turn, first: bool, committer: &Arc<Committer>) -> Committed {
    let Some(batch) = turn.batch.as_mut() else { unreachable!("a batch is open while a part runs") };
    batch.parts += 1;
    if committer.waiting.load(Ordering::SeqCst) > 0 && batch.parts < MAX_PARTS {
        let outcome = batch.outcome.subscribe();
        // The first part hands the batch on first (a part joins only a batch handed on).
        if first {
            tokio::spawn(close(committer.clone(), outcome.clone()));
        }
        // The next writer in line has the batch now.
        drop(turn);
        return Committed::HandedOn(outcome);
    }
    Committed::Ended(commit_batch(&mut turn, committer).await)
}

async fn commit_batch(turn: &mut Turn, committer: &Committer) -> Result<(), sqlx::Error> {
    let parts = turn.batch.as_ref().map_or(0, |b| b.parts as u64);
    turn.clean = false;
    let done = end(turn, None).await;
    if done.is_ok() {
        committer.counted(parts);
    }
    done
}

/// The batch's closer, queued for the writer's turn when the batch is first handed on: the
/// writers then in line normally end it (the last one finds no one waiting and commits), and
/// the closer, finding it ended, has nothing to do; but should they all go away before their
/// turn (callers cancelled while queued), the closer commits it.
async fn close(committer: Arc<Committer>, outcome: watch::Receiver<Outcome>) {
    let state = committer.state.clone().lock_owned().await;
    // Batches end in order, and a new one begins only once the open one has ended: if this
    // one has not ended, it is the open one.
    if outcome.borrow().is_none() {
        let mut turn = Turn { state, clean: true };
        let _ = commit_batch(&mut turn, &committer).await;
    }
}

/// Waits for the end of a batch handed on.
async fn await_end(mut outcome: watch::Receiver<Outcome>) -> Result<(), sqlx::Error> {
    match outcome.wait_for(Option::is_some).await {
        Ok(o) => match &*o {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.error()),
            None => unreachable!("waited for"),
        },
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}

/// Undoes a part: the whole batch when it is the first part (no other has joined it yet),
/// its savepoint otherwise. Should that fail, the batch's state is unknown and it ends,
/// rolled back, failing every part of it.
async fn roll_back(mut turn: Turn, first: bool) -> Result<(), sqlx::Error> {
    if first {
        let done = connection(&mut turn).execute("ROLLBACK").await.map(|_| ());
        if done.is_err() {
            conn_close(&mut turn);
        }
        turn.batch = None;
        turn.clean = true;
        return done;
    }
    let conn = connection(&mut turn);
    let undone = match conn.execute(ROLLBACK_TO).await {
        Ok(_) => conn.execute(RELEASE).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match &undone {
        Ok(()) => turn.clean = true,
        Err(e) => {
            end(&mut turn, Some(e)).await.ok();
        }
    }
    undone
}
