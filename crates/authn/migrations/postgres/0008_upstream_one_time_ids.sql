-- The values of upstream answers that may be accepted once only (a SAML assertion's id, as
-- a digest of its issuer and id), per connection, shared by every replica: a login whose
-- value is here and not expired is refused as a replay. Kept until `expire_time` (unix
-- microseconds), when the answer could not be accepted anyway; pruned with the other
-- expired OAuth state.
CREATE TABLE upstream_one_time_ids (
    tenant        TEXT   NOT NULL,
    connection_id TEXT   NOT NULL,
    id_key        TEXT   NOT NULL,
    create_time   BIGINT NOT NULL,
    expire_time   BIGINT NOT NULL,
    PRIMARY KEY (tenant, connection_id, id_key)
);
CREATE INDEX upstream_one_time_ids_by_expiry ON upstream_one_time_ids (expire_time);
