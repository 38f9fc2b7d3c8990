-- The audit log of every tenant (AuditService): logins, signups, blocks, tokens and every
-- configuration change, the tenant service's own written in the transaction of the change,
-- the other services' forwarded from their outboxes (AppendAuditEvents, idempotent by `id`).
-- `sequence` only grows; ListAuditEvents reads it newest first, WatchAuditEvents follows it.
-- Enumerations are kept by name (`LOGIN`, `FAILURE`), never by contract number. No column
-- ever holds a secret.
CREATE TABLE audit_events (
    sequence    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    event_time  BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    actor_type  TEXT NOT NULL,
    actor_id    TEXT NOT NULL DEFAULT '',
    source_ip   TEXT NOT NULL DEFAULT '',
    connection  TEXT NOT NULL DEFAULT '',
    client_id   TEXT NOT NULL DEFAULT '',
    user_id     TEXT NOT NULL DEFAULT '',
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_tenant ON audit_events (tenant, sequence);
-- Retention deletes by time.
CREATE INDEX audit_events_time ON audit_events (event_time);
