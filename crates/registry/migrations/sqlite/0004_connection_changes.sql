-- The durable log of connection changes that WatchConnections streams. Each row is written in
-- the same transaction as the change it records, so every replica's stream (each follows the
-- log) carries every change, whichever replica made it. `sequence` only grows. `spec` is the
-- connection as it was after the change (before it, for a deletion), without secrets.
CREATE TABLE connection_changes (
    sequence      INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT NOT NULL,
    change        TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    spec          TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL,
    change_time   BIGINT NOT NULL
);
CREATE INDEX connection_changes_by_time ON connection_changes (change_time);
