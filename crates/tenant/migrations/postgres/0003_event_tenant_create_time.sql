-- Which incarnation of a tenant name an event concerns (its create_time), so that followers
-- tell a deleted tenant apart from a later one of the same name.
ALTER TABLE events ADD COLUMN tenant_create_time BIGINT NOT NULL DEFAULT 0;
