-- The durable log of deletions that other services follow (WatchTenantEvents). Each row is
-- written in the same transaction as the deletion it records; `sequence` only grows.
CREATE TABLE events (
    sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type BIGINT NOT NULL,
    tenant     TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    event_time BIGINT NOT NULL
);
