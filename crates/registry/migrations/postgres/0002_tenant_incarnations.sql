-- A tenant name can be deleted and taken again. Each connection records the create_time of
-- the tenant it was created in, and the deletions applied are remembered by (name,
-- create_time), so that a connection created while its tenant was being deleted is refused
-- or removed, and a deletion never touches the next tenant of the same name.
ALTER TABLE connections ADD COLUMN tenant_create_time BIGINT NOT NULL DEFAULT 0;

CREATE TABLE deleted_tenants (
    tenant             TEXT NOT NULL,
    tenant_create_time BIGINT NOT NULL,
    PRIMARY KEY (tenant, tenant_create_time)
);
