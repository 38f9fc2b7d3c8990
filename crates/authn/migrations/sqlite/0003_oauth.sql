-- The OpenID provider's state: login transactions, authorization codes, SSO sessions and
-- refresh tokens. Every bearer secret (transaction id, CSRF token, code, session id,
-- refresh token) is kept only as the hex SHA-256 of its value. Times are unix microseconds.

-- An authorization request waiting for the hosted login page (single use, ~10 minutes).
CREATE TABLE login_transactions (
    tenant      TEXT   NOT NULL,
    id_hash     TEXT   NOT NULL,
    csrf_hash   TEXT   NOT NULL,
    client_id   TEXT   NOT NULL,
    -- The validated authorization request, as JSON.
    request     TEXT   NOT NULL,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    PRIMARY KEY (tenant, id_hash)
);
CREATE INDEX login_transactions_by_expiry ON login_transactions (expire_time);

-- An issued authorization code (single use, 60 seconds). `used_time` marks its exchange;
-- `family_id` names the refresh tokens it issued, revoked if the code is replayed.
CREATE TABLE authorization_codes (
    tenant         TEXT   NOT NULL,
    code_hash      TEXT   NOT NULL,
    client_id      TEXT   NOT NULL,
    redirect_uri   TEXT   NOT NULL,
    user_id        TEXT   NOT NULL,
    scope          TEXT   NOT NULL,
    audience       TEXT   NOT NULL,
    nonce          TEXT   NOT NULL,
    code_challenge TEXT   NOT NULL,
    session_hash   TEXT   NOT NULL,
    auth_time      BIGINT NOT NULL,
    create_time    BIGINT NOT NULL,
    expire_time    BIGINT NOT NULL,
    used_time      BIGINT,
    family_id      TEXT,
    PRIMARY KEY (tenant, code_hash)
);
CREATE INDEX authorization_codes_by_user ON authorization_codes (tenant, user_id);

-- A browser's single sign-on session with the tenant.
CREATE TABLE sso_sessions (
    tenant        TEXT   NOT NULL,
    id_hash       TEXT   NOT NULL,
    user_id       TEXT   NOT NULL,
    auth_time     BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    idle_expire   BIGINT NOT NULL,
    absolute_expire BIGINT NOT NULL,
    PRIMARY KEY (tenant, id_hash)
);
CREATE INDEX sso_sessions_by_user ON sso_sessions (tenant, user_id);

-- Refresh tokens, rotating: each use replaces the token by a new one of the same family;
-- a token used twice revokes its whole family.
CREATE TABLE refresh_tokens (
    tenant      TEXT   NOT NULL,
    token_hash  TEXT   NOT NULL,
    family_id   TEXT   NOT NULL,
    client_id   TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    scope       TEXT   NOT NULL,
    audience    TEXT   NOT NULL,
    nonce       TEXT   NOT NULL,
    auth_time   BIGINT NOT NULL,
    session_hash TEXT  NOT NULL,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    family_expire BIGINT NOT NULL,
    used_time   BIGINT,
    PRIMARY KEY (tenant, token_hash)
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (tenant, family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (tenant, user_id);
CREATE INDEX refresh_tokens_by_client ON refresh_tokens (tenant, client_id);
