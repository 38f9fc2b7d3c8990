-- A value sealed with the master key when the database was first used, so that a start with
-- another key fails at once with a clear message instead of failing every read later.
CREATE TABLE master_key_check (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
);
