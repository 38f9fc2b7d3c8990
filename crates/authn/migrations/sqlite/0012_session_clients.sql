-- The clients that got a code in an SSO session: when the session ends by a logout, each of
-- them that has a back-channel logout URI is sent a logout token (OpenID Connect
-- Back-Channel Logout 1.0). Rows of sessions gone otherwise (expired, a user's sessions
-- ended) are pruned with the expired rows.
CREATE TABLE sso_session_clients (
    tenant       TEXT   NOT NULL,
    session_hash TEXT   NOT NULL,
    client_id    TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    PRIMARY KEY (tenant, session_hash, client_id)
);
