-- The connection registry. Times are unix microseconds. Tenants are named by their immutable
-- slug, as the tenant service names them (no shared tables: the tenant service owns tenants).
CREATE TABLE connections (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    category    BIGINT NOT NULL,
    -- The connection's fields and options without secrets (JSON of domain::ConnectionSpec).
    spec        TEXT NOT NULL,
    -- Every secret, sealed with the master key and bound to (tenant, id).
    secrets     BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
-- Names are unique in a tenant; the index also serves listing in name order.
CREATE UNIQUE INDEX connections_by_name ON connections (tenant, name);

-- Enablement: which clients may use which connection.
CREATE TABLE connection_clients (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    tenant        TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    PRIMARY KEY (connection_id, client_id)
);
-- The question of every login: the connections of a client, without a scan.
CREATE INDEX connection_clients_by_client ON connection_clients (tenant, client_id, connection_id);

-- Home realm discovery: email domain -> enterprise connections.
CREATE TABLE connection_domains (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    tenant        TEXT NOT NULL,
    domain        TEXT NOT NULL,
    PRIMARY KEY (connection_id, domain)
);
CREATE INDEX connection_domains_by_domain ON connection_domains (tenant, domain, connection_id);

-- Clients the tenant service reported deleted: enabling them again is refused, even when the
-- deletion and an EnableClient race.
CREATE TABLE deleted_clients (
    tenant    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (tenant, client_id)
);

-- How far the registry has applied the tenant service's event log.
CREATE TABLE tenant_events_cursor (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL
);
INSERT INTO tenant_events_cursor (id, sequence) VALUES (1, 0);
