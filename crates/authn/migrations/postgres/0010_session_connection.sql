-- The connection an SSO session's login went through (its name; empty for a password typed
-- on the hosted page without one named, or a session of an older release): a federated
-- logout (`/v2/logout?federated`) ends the session at that connection's upstream too.
ALTER TABLE sso_sessions ADD COLUMN connection TEXT NOT NULL DEFAULT '';
