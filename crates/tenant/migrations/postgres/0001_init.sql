-- Tenants, their clients and API keys, and the admin key. Times are unix microseconds.
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

CREATE TABLE clients (
    client_id           TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq                 TEXT NOT NULL,
    name                TEXT NOT NULL,
    app_type            BIGINT NOT NULL,
    callbacks           TEXT NOT NULL,
    allowed_logout_urls TEXT NOT NULL,
    secret_hash         BYTEA NOT NULL,
    create_time         BIGINT NOT NULL,
    update_time         BIGINT NOT NULL
);
CREATE UNIQUE INDEX clients_by_tenant ON clients (tenant_id, seq);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq         TEXT NOT NULL,
    description TEXT NOT NULL,
    key_hash    BYTEA NOT NULL UNIQUE,
    create_time BIGINT NOT NULL,
    expire_time BIGINT
);
CREATE UNIQUE INDEX api_keys_by_tenant ON api_keys (tenant_id, seq);

CREATE TABLE admin_key (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    key_hash    BYTEA NOT NULL,
    create_time BIGINT NOT NULL
);
