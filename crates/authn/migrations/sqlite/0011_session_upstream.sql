-- What the upstream of an SSO session's connection needs of the login to end its own session
-- (an OpenID Connect ID token for `id_token_hint`, a SAML NameID and SessionIndex), sealed
-- with the master key for this session (empty when nothing): a federated logout
-- (`/v2/logout?federated`) hands it to that upstream.
ALTER TABLE sso_sessions ADD COLUMN upstream_session TEXT NOT NULL DEFAULT '';
