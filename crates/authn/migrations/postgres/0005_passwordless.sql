-- Passwordless logins: one-time codes and magic links, the rate-limit counters of their
-- starts, and the users' phone numbers. Times are unix microseconds.

-- The one live code of a recipient (an email address or E.164 phone number) at a
-- connection: a new start replaces the row, so only the latest code is ever valid. The code
-- is kept as a keyed digest (HMAC-SHA256 under a key derived from the master key), the magic
-- link's token as its SHA-256. `delivered` is set once the message went out: an undelivered
-- code is never accepted. `attempts` counts verifications, at most `max_attempts`.
CREATE TABLE passwordless_codes (
    tenant           TEXT   NOT NULL,
    connection_id    TEXT   NOT NULL,
    recipient        TEXT   NOT NULL,
    client_id        TEXT   NOT NULL,
    code_hash        TEXT   NOT NULL,
    link_hash        TEXT,
    -- The login transaction a magic link completes, and its CSRF token's digest (the
    -- browser binding).
    transaction_hash TEXT,
    csrf_hash        TEXT,
    delivered        BIGINT NOT NULL,
    attempts         BIGINT NOT NULL,
    max_attempts     BIGINT NOT NULL,
    create_time      BIGINT NOT NULL,
    expire_time      BIGINT NOT NULL,
    used_time        BIGINT,
    PRIMARY KEY (tenant, connection_id, recipient)
);
CREATE UNIQUE INDEX passwordless_codes_by_link ON passwordless_codes (tenant, link_hash);
CREATE INDEX passwordless_codes_by_expiry ON passwordless_codes (expire_time);

-- Fixed-window counters of passwordless starts, per recipient and per address.
CREATE TABLE passwordless_limits (
    tenant       TEXT   NOT NULL,
    bucket       TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (tenant, bucket)
);

ALTER TABLE users ADD COLUMN phone_number TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN phone_verified BIGINT NOT NULL DEFAULT 0;
