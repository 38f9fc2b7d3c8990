-- What the upstream of an SSO session's connection needs of the login to end its own session
-- (a SAML NameID and SessionIndex, as JSON; empty when nothing): a federated logout
-- (`/v2/logout?federated`) sends it to that upstream.
ALTER TABLE sso_sessions ADD COLUMN upstream_session TEXT NOT NULL DEFAULT '';
