-- Signing keys are published before they sign (issue 10, item 2): a key signs from its
-- `activate_time` until its `retire_time`. Every tenant keeps one *next* key, published in
-- the key set but signing nothing (`activate_time` NULL), which a rotation schedules to
-- sign no sooner than the key set's caches (the relying parties' max-age, the gateway's,
-- every replica's) have seen it. Keys made before this change signed from their creation.
ALTER TABLE signing_keys ADD COLUMN activate_time BIGINT;
UPDATE signing_keys SET activate_time = create_time;
-- "One key without retire_time" no longer describes the current key: a scheduled key and
-- the next key have none either. At most one next key per tenant instead.
DROP INDEX signing_keys_current;
CREATE UNIQUE INDEX signing_keys_next ON signing_keys (tenant) WHERE activate_time IS NULL;
