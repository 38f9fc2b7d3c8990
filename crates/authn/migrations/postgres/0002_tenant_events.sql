-- The last event of the tenant service's deletion log that this service applied.
CREATE TABLE tenant_events_cursor (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL
);
INSERT INTO tenant_events_cursor (id, sequence) VALUES (1, 0);
