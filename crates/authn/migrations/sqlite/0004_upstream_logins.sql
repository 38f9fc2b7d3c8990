-- Redirect logins (OIDC, OAuth2 social, SAML): the transaction between the redirect to the
-- upstream and its callback, and the upstream's tokens kept on an identity. Times are unix
-- microseconds.

-- An upstream login in progress (single use, a few minutes). Found by the digest of its
-- `state` (the upstream echoes it, or SAML's `RelayState`); `binding_hash` is the digest of
-- the browser cookie that must come back with the callback. `sealed` holds the nonce, the
-- PKCE verifier and the connector's data, encrypted under the master key and bound to the
-- tenant and state digest. `request` is the application's validated authorization request.
CREATE TABLE upstream_transactions (
    tenant       TEXT   NOT NULL,
    state_hash   TEXT   NOT NULL,
    binding_hash TEXT   NOT NULL,
    client_id    TEXT   NOT NULL,
    connection   TEXT   NOT NULL,
    request      TEXT   NOT NULL,
    sealed       TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    expire_time  BIGINT NOT NULL,
    PRIMARY KEY (tenant, state_hash)
);
CREATE INDEX upstream_transactions_by_expiry ON upstream_transactions (expire_time);

-- The upstream's tokens of an identity's last login, sealed under the master key (bound
-- to tenant, connection and source id), when its connection keeps them; NULL otherwise.
ALTER TABLE identities ADD COLUMN upstream_tokens TEXT;
