-- The URL of the tenant's logo on the hosted login page (an https URL the service checked);
-- empty: no logo, which every tenant created before keeps.
ALTER TABLE tenants ADD COLUMN logo_url TEXT NOT NULL DEFAULT '';

-- APIs (Auth0's resource servers): what an access token can be for. `identifier` is the
-- token's audience, unique in the tenant and immutable; `scopes` is a JSON array of
-- {"value", "description"} objects, the permissions the API defines.
CREATE TABLE resource_servers (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq         TEXT NOT NULL,
    identifier  TEXT NOT NULL,
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE UNIQUE INDEX resource_servers_by_identifier ON resource_servers (tenant_id, identifier);
CREATE UNIQUE INDEX resource_servers_by_tenant ON resource_servers (tenant_id, seq);

-- Client grants: a machine-to-machine client allowed to get client_credentials tokens for an
-- API, with at most the scopes listed (a JSON array of scope values). A grant goes with its
-- client or its API.
CREATE TABLE client_grants (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq                TEXT NOT NULL,
    client_id          TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    resource_server_id TEXT NOT NULL REFERENCES resource_servers (id) ON DELETE CASCADE,
    scopes             TEXT NOT NULL,
    create_time        BIGINT NOT NULL,
    update_time        BIGINT NOT NULL
);
CREATE UNIQUE INDEX client_grants_by_client ON client_grants (client_id, resource_server_id);
CREATE UNIQUE INDEX client_grants_by_tenant ON client_grants (tenant_id, seq);
CREATE INDEX client_grants_by_resource_server ON client_grants (resource_server_id);
