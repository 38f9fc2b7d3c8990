-- An identity's profile-sync mode by its name in the connection model (`on_each_login`,
-- `on_first_login`, `never_on_login`), as the registry stores it, instead of this store's
-- own numbers (1, 2, 3).
ALTER TABLE identities ALTER COLUMN profile_sync TYPE TEXT USING CASE profile_sync
    WHEN 2 THEN 'on_first_login'
    WHEN 3 THEN 'never_on_login'
    ELSE 'on_each_login' END;
