-- The authenticator's store. Times are unix microseconds; booleans are 0/1; JSON is TEXT.

-- A tenant's users and their root profile attributes.
CREATE TABLE users (
    tenant         TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    seq            TEXT NOT NULL,
    email          TEXT NOT NULL,
    email_lower    TEXT NOT NULL,
    email_verified BIGINT NOT NULL,
    username       TEXT NOT NULL,
    name           TEXT NOT NULL,
    given_name     TEXT NOT NULL,
    family_name    TEXT NOT NULL,
    nickname       TEXT NOT NULL,
    picture        TEXT NOT NULL,
    user_metadata  TEXT NOT NULL,
    app_metadata   TEXT NOT NULL,
    blocked        BIGINT NOT NULL,
    last_login     BIGINT,
    last_ip        TEXT NOT NULL,
    logins_count   BIGINT NOT NULL,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL,
    PRIMARY KEY (tenant, user_id)
);
CREATE UNIQUE INDEX users_by_seq ON users (tenant, seq);
CREATE INDEX users_by_email ON users (tenant, email_lower);

-- A user's account at one connection. `login_email` and `login_username` (lowercased) are
-- the names a database connection's users log in with; empty for other strategies.
-- `password_hash` is set for database identities whose credentials Postern keeps.
-- `external_sync` is 1 when the profile comes from a source outside Postern under
-- ON_EACH_LOGIN, which makes the root attributes read-only for UpdateUser.
CREATE TABLE identities (
    tenant         TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    source_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    connection     TEXT NOT NULL,
    strategy       TEXT NOT NULL,
    is_social      BIGINT NOT NULL,
    login_email    TEXT NOT NULL,
    login_username TEXT NOT NULL,
    profile_data   TEXT NOT NULL,
    profile_sync   BIGINT NOT NULL,
    external       BIGINT NOT NULL,
    password_hash  TEXT,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL,
    PRIMARY KEY (tenant, connection_id, source_id),
    FOREIGN KEY (tenant, user_id) REFERENCES users (tenant, user_id) ON DELETE CASCADE
);
CREATE INDEX identities_by_user ON identities (tenant, user_id);
CREATE UNIQUE INDEX identities_by_email ON identities (tenant, connection_id, login_email) WHERE login_email <> '';
CREATE UNIQUE INDEX identities_by_username ON identities (tenant, connection_id, login_username) WHERE login_username <> '';

-- Previous password hashes of a database identity, for the history rule.
CREATE TABLE password_history (
    tenant        TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    seq           TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    PRIMARY KEY (tenant, connection_id, source_id, seq)
);

-- Brute-force protection: consecutive failures per user (or login name) and address.
CREATE TABLE login_failures (
    tenant   TEXT NOT NULL,
    user_key TEXT NOT NULL,
    address  TEXT NOT NULL,
    failures BIGINT NOT NULL,
    PRIMARY KEY (tenant, user_key, address)
);

-- A tenant's signing keys; the private key is PKCS#8 sealed under the master key. The
-- current key is the one without retire_time (at most one per tenant).
CREATE TABLE signing_keys (
    tenant      TEXT NOT NULL,
    kid         TEXT NOT NULL,
    alg         TEXT NOT NULL,
    sealed_key  BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    retire_time BIGINT,
    PRIMARY KEY (tenant, kid)
);
CREATE UNIQUE INDEX signing_keys_current ON signing_keys (tenant) WHERE retire_time IS NULL;
