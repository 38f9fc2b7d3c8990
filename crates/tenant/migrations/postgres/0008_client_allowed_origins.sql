-- A client's allowed origins (CORS): the origins, besides those of its callbacks, whose
-- JavaScript may call the tenant's token and revocation endpoints. A JSON list, as the
-- callbacks are; clients created before keep an empty one (their callbacks' origins).
ALTER TABLE clients ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';
