-- The event log also records revoked API keys (event type 4), naming the key, so that the
-- gateways that remember keys they have checked forget a revoked one at once (issue 10,
-- item 1) instead of after their cache's lifetime.
ALTER TABLE events ADD COLUMN api_key_id TEXT NOT NULL DEFAULT '';
