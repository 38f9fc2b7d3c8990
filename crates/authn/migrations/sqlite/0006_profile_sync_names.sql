-- An identity's profile-sync mode by its name in the connection model (`on_each_login`,
-- `on_first_login`, `never_on_login`), as the registry stores it, instead of this store's
-- own numbers (1, 2, 3). SQLite changes a column's type by adding the new column, copying,
-- dropping the old one and renaming (SQLite 3.35 and later).
ALTER TABLE identities ADD COLUMN profile_sync_name TEXT NOT NULL DEFAULT 'on_each_login';
UPDATE identities SET profile_sync_name = CASE profile_sync
    WHEN 2 THEN 'on_first_login'
    WHEN 3 THEN 'never_on_login'
    ELSE 'on_each_login' END;
ALTER TABLE identities DROP COLUMN profile_sync;
ALTER TABLE identities RENAME COLUMN profile_sync_name TO profile_sync;
