-- A client's back-channel logout URI (OpenID Connect Back-Channel Logout 1.0): where the
-- authenticator posts a logout token when an SSO session in which the client got tokens
-- ends. Empty for none, which every client created before has.
ALTER TABLE clients ADD COLUMN backchannel_logout_uri TEXT NOT NULL DEFAULT '';
