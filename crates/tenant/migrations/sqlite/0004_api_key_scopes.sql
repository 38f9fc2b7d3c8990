-- The scopes of an API key, as scope names joined by commas (`READ_ONLY,USERS`). Empty is
-- every scope: full tenant access, which every key created before scopes keeps.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
