//! The audit stream's pieces that the services recording events share. The tenant service
//! owns the audit log (`postern.tenant.v1.AuditService`); the authenticator and the registry
//! write each event into their own `audit_outbox` table in the transaction of the change it
//! records (a login's with the login's own writes; only what writes nothing once its outcome
//! is known, such as a login refused before any write, gets a small write of its own), and an
//! [`Outbox`] relay per process forwards the rows to `AppendAuditEvents` in batches and
//! deletes them once acknowledged: at least once, made harmless by the event's id.
//!
//! Architecture invariant: an audit event never carries a secret (password, client secret,
//! API key, code, token, hash); its `details` are names, ids and grant types.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_proto::tenant::v1 as pb;
use prost::Message;
use sqlx::Row;

use crate::db::Db;
use crate::principal::{Principal, SignService};
use crate::server::HttpService;

/// A new event of `tenant`: a fresh UUID v7 id, the time now, no actor yet.
pub fn event(tenant: &str, event_type: pb::AuditEventType, outcome: pb::AuditOutcome) -> pb::AuditEvent {
    pb::AuditEvent {
        id: crate::ids::new_id(),
        tenant: tenant.to_owned(),
        event_time: Some(crate::time::to_timestamp(crate::time::now_micros())),
        r#type: event_type as i32,
        outcome: outcome as i32,
        ..Default::default()
    }
}

/// The actor a principal stands for. An anonymous caller reaches only the methods where an
/// end user acts (a login, a signup): the user, whose id the event names when known.
pub fn actor(principal: &Principal) -> pb::AuditActor {
    let (kind, id) = match principal {
        Principal::Admin => (pb::AuditActorType::Admin, String::new()),
        Principal::Tenant { key_id, .. } => (pb::AuditActorType::ApiKey, key_id.clone()),
        Principal::Service(name) => (pb::AuditActorType::System, name.clone()),
        Principal::Anonymous => (pb::AuditActorType::User, String::new()),
    };
    pb::AuditActor { r#type: kind as i32, id }
}

/// Sets an event's actor from the caller's principal and its source address.
pub fn by(mut event: pb::AuditEvent, principal: &Principal, ip: Option<IpAddr>) -> pb::AuditEvent {
    event.actor = Some(actor(principal));
    event.source_ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
    event
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many outbox rows one `AppendAuditEvents` call carries.
const BATCH: usize = 500;
/// How often the relay looks at the outbox when nothing woke it (rows written by another
/// replica on a shared PostgreSQL, or left by a stopped process).
const POLL: Duration = Duration::from_secs(1);
/// How long the relay lets events gather after a commit woke it, before it reads the
/// outbox: a delivery costs a write in the log and one in the outbox whatever its size, so
/// the events of many logins share them, instead of each login's event taking two writes
/// (and the database's write lock) of its own beside the logins still running.
const GATHER: Duration = Duration::from_millis(100);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A service's audit outbox: the `audit_outbox` table of its own database (each service's
/// migrations create it) and the relay that empties it into the tenant service's log.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    wake: Arc<tokio::sync::Notify>,
    group: Arc<GroupCommit>,
}

/// The events waiting for [`Outbox::record`]'s next commit, and the turn to make it.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Each caller's events and where to tell it how their commit went.
    waiting: std::sync::Mutex<Vec<Waiting>>,
    /// Held by the caller committing; a fair (first come, first served) lock.
    turn: tokio::sync::Mutex<()>,
    /// How many commits have been made.
    commits: std::sync::atomic::AtomicU64,
}

type Waiting = (Vec<pb::AuditEvent>, tokio::sync::oneshot::Sender<Result<(), String>>);

impl Outbox {
    /// The outbox in `db`.
    pub fn new(db: Db) -> Self {
        Self { db, wake: Arc::new(tokio::sync::Notify::new()), group: Arc::default() }
    }

    /// Writes `events` in `tx`, the transaction of the change they record, with its commit
    /// ([`WriteTx::defer`](crate::db::WriteTx::defer): on SQLite in the commit's hand-off to
    /// the database). Call [`committed`](Self::committed) once `tx` has committed.
    pub fn write(&self, tx: &mut crate::db::WriteTx, events: &[pb::AuditEvent]) -> Result<(), sqlx::Error> {
        self.inserts(events).try_for_each(|query| tx.defer(query))
    }

    /// Adds the statements that write `events` to `statements`, a write transaction's
    /// ([`Db::write_together`](crate::db::Db::write_together)). Call
    /// [`committed`](Self::committed) once it has committed.
    pub fn push(&self, statements: &mut crate::db::Together, events: &[pb::AuditEvent]) -> Result<(), sqlx::Error> {
        self.inserts(events).try_for_each(|query| statements.push(query))
    }

    /// The statements that insert `events`: one per chunk, not one per event.
    fn inserts<'e>(
        &self,
        events: &'e [pb::AuditEvent],
    ) -> impl Iterator<Item = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>> + 'e {
        let backend = self.db.backend();
        events.chunks(BATCH).map(move |chunk| {
            let sql = format!(
                "INSERT INTO audit_outbox (id, event) VALUES {}",
                crate::db::value_rows(backend, chunk.len(), 2)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                query = query.bind(e.id.clone()).bind(e.encode_to_vec());
            }
            query
        })
    }

    /// Writes `events` in a transaction of their own (events that record no change of this
    /// service's data: a failed login, a token issued) and wakes the relay; answers once they
    /// are committed. Concurrent callers share commits (a group commit): each one's events
    /// join a queue, and whoever takes the turn writes everything queued in one transaction
    /// and answers every caller whose events it carried. Under load one durable commit (one
    /// fsync on SQLite) then serves many events, instead of one each; nobody is answered
    /// before the commit that holds its events.
    pub async fn record(&self, events: &[pb::AuditEvent]) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let (told, mut answer) = tokio::sync::oneshot::channel();
        lock(&self.group.waiting).push((events.to_vec(), told));
        let _turn = self.group.turn.lock().await;
        // A commit made while this caller waited for its turn may have carried its events.
        if let Ok(done) = answer.try_recv() {
            return done.map_err(sqlx::Error::Protocol);
        }
        let batch = std::mem::take(&mut *lock(&self.group.waiting));
        let all: Vec<pb::AuditEvent> = batch.iter().flat_map(|(events, _)| events.iter().cloned()).collect();
        let written = async {
            let mut tx = self.db.begin_write().await?;
            self.write(&mut tx, &all)?;
            tx.commit().await
        }
        .await;
        self.group.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = written.as_ref().map(|_| ()).map_err(|e| format!("the audit outbox's commit failed: {e}"));
        for (_, told) in batch {
            let _ = told.send(shared.clone());
        }
        if written.is_ok() {
            self.committed();
        }
        // This caller's events were queued before it took the turn, so this batch held them.
        written
    }

    /// How many transactions [`record`](Self::record) has committed (or tried) in this
    /// process: fewer than its calls when concurrent calls shared commits.
    pub fn group_commits(&self) -> u64 {
        self.group.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Like [`record`](Self::record) for one event, logging a failure instead of returning
    /// it: for paths whose answer must not change because the audit write failed (a refused
    /// login stays refused).
    pub async fn record_or_log(&self, event: pb::AuditEvent) {
        if let Err(e) = self.record(std::slice::from_ref(&event)).await {
            tracing::error!(error = %e, event_type = event.r#type, "cannot write an audit event to the outbox");
        }
    }

    /// Wakes the relay: a transaction that wrote events has committed.
    pub fn committed(&self) {
        self.wake.notify_one();
    }

    /// Up to `limit` events waiting, oldest first, with their row positions.
    pub async fn pending(&self, limit: usize) -> Result<Vec<(i64, pb::AuditEvent)>, sqlx::Error> {
        let rows = sqlx::query("SELECT position, event FROM audit_outbox ORDER BY position LIMIT $1")
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("event")?;
                let event = pb::AuditEvent::decode(bytes.as_slice()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                Ok((r.try_get("position")?, event))
            })
            .collect()
    }

    /// Removes the rows at `positions` (delivered), without waiting for the disk
    /// ([`Db::execute_relaxed`]). By position, never by range: on PostgreSQL a row with a
    /// smaller position may commit after a larger one was read.
    pub async fn delivered(&self, positions: &[i64]) -> Result<(), sqlx::Error> {
        for chunk in positions.chunks(BATCH) {
            let marks = crate::db::placeholders(self.db.backend(), 0, chunk.len());
            let sql = format!("DELETE FROM audit_outbox WHERE position IN ({marks})");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                query = query.bind(*p);
            }
            // Delivered rows: if a power failure undoes the delete, they are delivered again
            // and the log keeps one of each id.
            self.db.execute_relaxed(query).await?;
        }
        Ok(())
    }

    /// Starts the relay: it forwards the outbox to `tenant`'s `AppendAuditEvents` until the
    /// database is closed, woken by [`committed`](Self::committed) and polling every second,
    /// retrying with backoff while the tenant service cannot be reached.
    pub fn spawn_relay(&self, tenant: SignService<HttpService>) {
        let outbox = self.clone();
        tokio::spawn(async move { outbox.relay(tenant).await });
    }

    async fn relay(self, tenant: SignService<HttpService>) {
        let mut client = pb::audit_service_client::AuditServiceClient::new(tenant);
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.db.pool().is_closed() {
                return;
            }
            match self.deliver(&mut client).await {
                Ok(true) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Ok(false) => {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        () = self.wake.notified() => tokio::time::sleep(GATHER).await,
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(e) => {
                    if self.db.pool().is_closed() {
                        return;
                    }
                    tracing::debug!(error = %e, "cannot forward audit events yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Forwards one batch; whether it was full (more may wait).
    async fn deliver(
        &self,
        client: &mut pb::audit_service_client::AuditServiceClient<SignService<HttpService>>,
    ) -> Result<bool, String> {
        let pending = self.pending(BATCH).await.map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok(false);
        }
        let full = pending.len() == BATCH;
        let (positions, events): (Vec<i64>, Vec<pb::AuditEvent>) = pending.into_iter().unzip();
        match client.append_audit_events(pb::AppendAuditEventsRequest { events }).await {
            Ok(_) => {}
            // The log refuses the batch as it is: sending it again cannot help, and keeping
            // it would hold every later event back. Said loudly, then dropped.
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                tracing::error!(message = %s.message(), "the audit log refused a batch of events; dropping it");
            }
            Err(s) => return Err(crate::error::status_with_causes(&s)),
        }
        self.delivered(&positions).await.map_err(|e| e.to_string())?;
        Ok(full)
    }
}
