//! The audit log's storage: appending (idempotent by event id, in the transaction of the
//! change for the tenant service's own events), listing newest first with filters, following
//! by sequence, and pruning by age.

use std::collections::BTreeMap;

use postern_common::db::Backend;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// The PostgreSQL notification channel that each committed audit event signals.
pub(super) const AUDIT_CHANNEL: &str = "postern_audit_events";

/// One entry of the audit log, in the store's terms: enumerations by their contract names
/// without prefix (`LOGIN`, `SUCCESS`, `API_KEY`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// Its id (UUID v7), unique in the log.
    pub id: String,
    /// Its position in the log; 0 before it is recorded.
    pub sequence: i64,
    /// The tenant's name.
    pub tenant: String,
    /// When it happened, unix microseconds.
    pub event_time: i64,
    /// What happened (`LOGIN`, `CLIENT_CREATED`, …).
    pub event_type: String,
    /// `SUCCESS` or `FAILURE`.
    pub outcome: String,
    /// The error reason of a failure.
    pub reason: String,
    /// The kind of actor (`ADMIN`, `API_KEY`, `USER`, `CLIENT`, `SYSTEM`).
    pub actor_type: String,
    /// The actor's id.
    pub actor_id: String,
    /// The end caller's address, when known.
    pub source_ip: String,
    /// The connection concerned.
    pub connection: String,
    /// The client concerned.
    pub client_id: String,
    /// The user concerned.
    pub user_id: String,
    /// More facts, never a secret.
    pub details: BTreeMap<String, String>,
}

/// Who makes the changes a [`Store`] records in the audit log (see [`Store::acting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The kind of actor, as in [`AuditEvent::actor_type`].
    pub actor_type: String,
    /// Its id.
    pub actor_id: String,
    /// The end caller's address, when known.
    pub source_ip: String,
}

impl Actor {
    /// Postern itself (a store used without a caller: start-up, tests).
    pub fn system() -> Self {
        Self { actor_type: "SYSTEM".into(), actor_id: "tenant".into(), source_ip: String::new() }
    }
}

/// What a list of audit events is limited to; every field empty or `None` for everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only these types.
    pub types: Vec<String>,
    /// Only about this user.
    pub user_id: String,
    /// Only about this connection.
    pub connection: String,
    /// Only about this client.
    pub client_id: String,
    /// Only with this outcome.
    pub outcome: Option<String>,
    /// Only at or after this time (unix microseconds).
    pub start_time: Option<i64>,
    /// Only before this time (unix microseconds).
    pub end_time: Option<i64>,
}

/// Events inserted by one statement: 13 parameters each, well under SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters a statement.
const AUDIT_INSERT_ROWS: usize = 200;
const COLUMNS: &str = "sequence, id, tenant, event_time, event_type, outcome, reason, actor_type, actor_id, \
     source_ip, connection, client_id, user_id, details";

impl Store {
    /// This store, recording the changes it makes as done by `actor`.
    pub fn acting(&self, actor: Actor) -> Store {
        Store { actor: std::sync::Arc::new(actor), ..self.clone() }
    }

    /// An event of the change being made, by this store's actor.
    pub(super) fn own_event(&self, tenant: &str, event_type: &str) -> AuditEvent {
        AuditEvent {
            id: postern_common::ids::new_id(),
            tenant: tenant.to_owned(),
            event_time: postern_common::time::now_micros(),
            event_type: event_type.to_owned(),
            outcome: "SUCCESS".into(),
            actor_type: self.actor.actor_type.clone(),
            actor_id: self.actor.actor_id.clone(),
            source_ip: self.actor.source_ip.clone(),
            ..AuditEvent::default()
        }
    }

    /// A receiver that changes after each audit event this process records and, on
    /// PostgreSQL, each one another replica records.
    pub fn subscribe_audit(&self) -> tokio::sync::watch::Receiver<u64> {
        self.audit.subscribe()
    }

    pub(super) fn audit_committed(&self) {
        self.audit.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Writes `events` in `tx`, skipping those whose id is recorded already; how many were
    /// new. On PostgreSQL the table is locked first so that events commit in sequence order.
    pub(super) async fn write_audit(
        &self,
        tx: &mut postern_common::db::WriteTx,
        events: &[AuditEvent],
    ) -> Result<u64, sqlx::Error> {
        if events.is_empty() {
            return Ok(0);
        }
        if self.db.backend() == Backend::Postgres {
            sqlx::query("LOCK TABLE audit_events IN EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        self.db.notify_on_commit(tx, AUDIT_CHANNEL).await?;
        // One statement per chunk of events, not per event: each statement is a round trip
        // to the database (on SQLite, to sqlx's worker thread and back). 13 parameters a row.
        let mut appended = 0;
        for chunk in events.chunks(AUDIT_INSERT_ROWS) {
            let sql = format!(
                "INSERT INTO audit_events (id, tenant, event_time, event_type, outcome, reason, actor_type, \
                 actor_id, source_ip, connection, client_id, user_id, details) VALUES {} \
                 ON CONFLICT (id) DO NOTHING",
                postern_common::db::value_rows(self.db.backend(), chunk.len(), 13)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                let details = serde_json::to_string(&e.details).unwrap_or_else(|_| "{}".into());
                query = query
                    .bind(&e.id)
                    .bind(&e.tenant)
                    .bind(e.event_time)
                    .bind(&e.event_type)
                    .bind(&e.outcome)
                    .bind(&e.reason)
                    .bind(&e.actor_type)
                    .bind(&e.actor_id)
                    .bind(&e.source_ip)
                    .bind(&e.connection)
                    .bind(&e.client_id)
                    .bind(&e.user_id)
                    .bind(details);
            }
            appended += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(appended)
    }

    /// Records events made elsewhere (`AppendAuditEvents`); how many were new.
    pub async fn append_audit(&self, events: &[AuditEvent]) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let appended = self.write_audit(&mut tx, events).await?;
        tx.commit().await?;
        if appended > 0 {
            self.audit_committed();
        }
        Ok(appended)
    }

    /// Up to `limit` events of `tenant` matching `filter` with a sequence below `before`
    /// (all when `None`), newest first.
    pub async fn list_audit(
        &self,
        tenant: &str,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE tenant = $1 AND sequence < $2");
        let mut n = 2;
        let mut next = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        if !filter.types.is_empty() {
            sql.push_str(" AND event_type IN (");
            for (i, _) in filter.types.iter().enumerate() {
                next(&mut sql, if i == 0 { "?" } else { ", ?" });
            }
            sql.push(')');
        }
        let texts =
            [("user_id", &filter.user_id), ("connection", &filter.connection), ("client_id", &filter.client_id)];
        for (column, value) in texts {
            if !value.is_empty() {
                next(&mut sql, &format!(" AND {column} = ?"));
            }
        }
        if filter.outcome.is_some() {
            next(&mut sql, " AND outcome = ?");
        }
        if filter.start_time.is_some() {
            next(&mut sql, " AND event_time >= ?");
        }
        if filter.end_time.is_some() {
            next(&mut sql, " AND event_time < ?");
        }
        next(&mut sql, " ORDER BY sequence DESC LIMIT ?");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(before.unwrap_or(i64::MAX));
        for t in &filter.types {
            query = query.bind(t);
        }
        for (_, value) in texts {
            if !value.is_empty() {
                query = query.bind(value);
            }
        }
        if let Some(outcome) = &filter.outcome {
            query = query.bind(outcome);
        }
        if let Some(start) = filter.start_time {
            query = query.bind(start);
        }
        if let Some(end) = filter.end_time {
            query = query.bind(end);
        }
        let rows = query.bind(limit as i64).fetch_all(self.db.pool()).await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// Up to `limit` events of `tenant` after sequence `after`, oldest first; the read takes
    /// its turn with the other streams' (`FOLLOWER_READS`).
    pub async fn audit_after(&self, tenant: &str, after: i64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let _turn = self.tail_turn().await;
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE tenant = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// The sequence of the last audit event recorded; 0 for an empty log.
    pub async fn last_audit_sequence(&self) -> Result<i64, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM audit_events").fetch_one(self.db.pool()).await?;
        Ok(last.unwrap_or(0))
    }

    /// Deletes the events that happened before `before` (unix microseconds); how many.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_events WHERE event_time < $1")
            .bind(before)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected())
    }

    /// This store, keeping audit events for `retention` only: the pruner of
    /// [`with_audit_pruner`](Self::with_audit_pruner) deletes the older ones.
    pub fn with_audit_retention(&self, retention: std::time::Duration) -> Store {
        let micros = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        Store { audit_retention: Some(micros), ..self.clone() }
    }

    /// Deletes the events past the retention (none without one); how many went.
    pub async fn prune_audit_now(&self) -> Result<u64, StoreError> {
        let Some(retention) = self.audit_retention else { return Ok(0) };
        let pruned = self.prune_audit(postern_common::time::now_micros().saturating_sub(retention)).await?;
        if pruned > 0 {
            // Followers re-read from their position: nothing to send, but a test (or an
            // operator's tool) can wait for the pruning this way.
            self.audit_committed();
        }
        Ok(pruned)
    }

    /// Starts the audit log's pruner: a timer that deletes the events past the retention
    /// at once and then every `every`, and answers the store to serve with. The timer holds
    /// the store weakly, through the handles made from the answer: it stops at shutdown
    /// ([`shutdown_streams`](Self::shutdown_streams)) or as soon as every such handle is
    /// gone (a start that failed after opening the store), never keeping the database open
    /// on its own. Without a retention, no timer: the store as it is.
    pub fn with_audit_pruner(&self, every: std::time::Duration) -> Store {
        if self.audit_retention.is_none() {
            return self.clone();
        }
        let target = std::sync::Arc::new(Store { pruned: None, ..self.clone() });
        let weak = std::sync::Arc::downgrade(&target);
        let mut closing = self.closing();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = timer.tick() => {}
                    // Shutdown, or every store handle gone (the sender with them).
                    _ = closing.wait_for(|c| *c) => return,
                }
                // Held only while pruning.
                let Some(store) = weak.upgrade() else { return };
                match store.prune_audit_now().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "audit events past their retention deleted"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
                }
            }
        });
        Store { pruned: Some(target), ..self.clone() }
    }
}

/// How often the audit log is pruned by default.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

fn audit_from_row(r: &AnyRow) -> Result<AuditEvent, StoreError> {
    let details: String = r.try_get("details")?;
    Ok(AuditEvent {
        sequence: r.try_get("sequence")?,
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        event_time: r.try_get("event_time")?,
        event_type: r.try_get("event_type")?,
        outcome: r.try_get("outcome")?,
        reason: r.try_get("reason")?,
        actor_type: r.try_get("actor_type")?,
        actor_id: r.try_get("actor_id")?,
        source_ip: r.try_get("source_ip")?,
        connection: r.try_get("connection")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        details: serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}
