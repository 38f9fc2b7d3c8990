-- The audit events this service made and has not yet delivered to the tenant service's audit
-- log (postern_common::audit::Outbox): each written in the transaction of the connection change
-- it records, and deleted once AppendAuditEvents has acknowledged it. `event` is the
-- contract's AuditEvent (protobuf), never a secret.
CREATE TABLE audit_outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    event    BLOB NOT NULL
);
