//! Account linking's storage: moving a secondary user's identities to a primary user, and
//! giving one identity back as a user of its own. Each is one write transaction that first
//! locks the users it changes (an `UPDATE` of their rows, in a fixed order on PostgreSQL; the
//! one writer on SQLite), so that the rules checked on what it read still hold when it
//! writes: identities move only under these locks (logins never move one), so the identities
//! read are those that move.

use sqlx::Row;

use super::{Store, StoreError, USER_COLUMNS, identities_of, oauth, user_of};
use crate::domain::User;
use crate::store::NewUser;

/// The outcome of [`Store::link_users`] and [`Store::unlink_identity`].
#[derive(Debug)]
pub enum Linked<T, E> {
    /// Done: what changed.
    Done(T),
    /// This user does not exist (or no longer has the identity named).
    Missing(String),
    /// The caller's rule refused the change; nothing was written.
    Refused(E),
}

impl Store {
    /// Moves every identity of `secondary` to `primary` and deletes `secondary` with its
    /// brute-force counts, authorization codes, sessions and refresh tokens, atomically,
    /// once `check` accepted the two users as they are under lock. Answers the primary
    /// user as it is after the move.
    pub async fn link_users<E>(
        &self,
        tenant: &str,
        primary: &str,
        secondary: &str,
        check: impl FnOnce(&User, &User) -> Result<(), E>,
    ) -> Result<Linked<Box<User>, E>, StoreError> {
        let now = postern_common::time::now_micros();
        let mut tx = self.db.begin_write().await?;
        // Lock in a fixed order, so that two links of the same pair cannot wait on each other.
        let (first, second) = if primary <= secondary { (primary, secondary) } else { (secondary, primary) };
        let mut locked = Vec::with_capacity(2);
        for user_id in [first, second] {
            match lock_user(&mut tx, tenant, user_id, now).await? {
                Some(u) => locked.push(u),
                None => {
                    tx.rollback().await?;
                    return Ok(Linked::Missing(user_id.to_owned()));
                }
            }
        }
        let (p, s) = if locked[0].user_id == primary { (&locked[0], &locked[1]) } else { (&locked[1], &locked[0]) };
        if let Err(e) = check(p, s) {
            tx.rollback().await?;
            return Ok(Linked::Refused(e));
        }
        sqlx::query("UPDATE identities SET user_id = $3, update_time = $4 WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(secondary)
            .bind(primary)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2")
            .bind(tenant)
            .bind(secondary)
            .execute(&mut *tx)
            .await?;
        for sql in oauth::DELETE_USER_GRANTS {
            sqlx::query(sql).bind(tenant).bind(secondary).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM users WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(secondary)
            .execute(&mut *tx)
            .await?;
        let user =
            user_in(&mut tx, tenant, primary).await?.ok_or_else(|| StoreError::Corrupt("user vanished".into()))?;
        tx.commit().await?;
        self.reload_failures(|k| k.tenant == tenant && k.user_key == secondary);
        Ok(Linked::Done(Box::new(user)))
    }

    /// Moves the identity `(connection_id, source_id)` of `user_id` to a new user `new`,
    /// atomically, once `check` accepted the user as it is under lock. Answers the user and
    /// the new user as they are after the move; [`StoreError::AlreadyExists`] if a user
    /// with the new id exists.
    pub async fn unlink_identity<E>(
        &self,
        tenant: &str,
        user_id: &str,
        connection_id: &str,
        source_id: &str,
        new: &NewUser,
        check: impl FnOnce(&User) -> Result<(), E>,
    ) -> Result<Linked<(User, User), E>, StoreError> {
        let now = postern_common::time::now_micros();
        let mut tx = self.db.begin_write().await?;
        let Some(user) = lock_user(&mut tx, tenant, user_id, now).await? else {
            tx.rollback().await?;
            return Ok(Linked::Missing(user_id.to_owned()));
        };
        if !user.identities.iter().any(|i| i.connection_id == connection_id && i.source_id == source_id) {
            tx.rollback().await?;
            return Ok(Linked::Missing(user_id.to_owned()));
        }
        if let Err(e) = check(&user) {
            tx.rollback().await?;
            return Ok(Linked::Refused(e));
        }
        let p = &new.profile;
        sqlx::query(
            "INSERT INTO users (tenant, user_id, seq, email, email_lower, email_verified, username, name, given_name, \
             family_name, nickname, picture, user_metadata, app_metadata, blocked, last_login, last_ip, logins_count, \
             create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, NULL, '', 0, $15, $15)",
        )
        .bind(tenant)
        .bind(&new.user_id)
        .bind(postern_common::ids::new_id())
        .bind(&p.email)
        .bind(p.email.to_lowercase())
        .bind(i64::from(p.email_verified))
        .bind(&p.username)
        .bind(&p.name)
        .bind(&p.given_name)
        .bind(&p.family_name)
        .bind(&p.nickname)
        .bind(&p.picture)
        .bind(super::json_text(&new.user_metadata))
        .bind(super::json_text(&new.app_metadata))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(super::dup)?;
        sqlx::query(
            "UPDATE identities SET user_id = $4, update_time = $5 \
             WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .bind(&new.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let left = user_in(&mut tx, tenant, user_id).await?;
        let unlinked = user_in(&mut tx, tenant, &new.user_id).await?;
        let (Some(left), Some(unlinked)) = (left, unlinked) else {
            return Err(StoreError::Corrupt("a user vanished while unlinking".into()));
        };
        tx.commit().await?;
        Ok(Linked::Done((left, unlinked)))
    }
}

/// Locks a user's row for the transaction (touching its update time) and reads it with its
/// identities; `None` if there is no such user.
async fn lock_user(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    user_id: &str,
    now: i64,
) -> Result<Option<User>, StoreError> {
    let sql = format!("UPDATE users SET update_time = $3 WHERE tenant = $1 AND user_id = $2 RETURNING {USER_COLUMNS}");
    let row =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(user_id).bind(now).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok(None) };
    let identities = identities_of(&mut **tx, tenant, user_id).await?;
    Ok(Some(user_of(&row, identities)?))
}

/// A user with its identities, read inside the transaction.
async fn user_in(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    user_id: &str,
) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant = $1 AND user_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(user_id).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("user_id")?;
    let identities = identities_of(&mut **tx, tenant, &id).await?;
    Ok(Some(user_of(&row, identities)?))
}
