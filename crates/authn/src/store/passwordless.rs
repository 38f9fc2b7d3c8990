//! Passwordless storage: the one live code (and magic link) of each recipient at a
//! connection, and the rate-limit counters of starts. Every rule that must hold across
//! replicas is one statement both backends apply atomically: a start replaces the row (only
//! the latest code is valid); a verification takes one attempt with a conditional `UPDATE …
//! WHERE attempts < max_attempts RETURNING`, so of any number of concurrent verifications at
//! most `max_attempts` see the code; a code or link is used with a conditional `UPDATE …
//! WHERE used_time IS NULL`, so exactly one use wins. Times are given by the caller (its
//! [`Clock`](postern_common::time::Clock)).

use sqlx::Row;

use super::{Store, StoreError};

/// A code to store (replacing the recipient's previous one).
#[derive(Debug, Clone)]
pub struct NewCode<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The connection's id.
    pub connection_id: &'a str,
    /// The normalized email address or phone number.
    pub recipient: &'a str,
    /// The client that asked for it (only it may verify it).
    pub client_id: &'a str,
    /// The code's keyed digest.
    pub code_hash: &'a str,
    /// The magic link token's digest, for a link.
    pub link_hash: Option<&'a str>,
    /// The digest of the login transaction a link completes.
    pub transaction_hash: Option<&'a str>,
    /// The digest of that transaction's CSRF token (binds a link to the browser).
    pub csrf_hash: Option<&'a str>,
    /// Verifications allowed.
    pub max_attempts: u32,
    /// Now.
    pub now: i64,
    /// When it stops being valid.
    pub expire_time: i64,
}

/// A live code, as a verification attempt sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The code's keyed digest.
    pub code_hash: String,
    /// The client that asked for it.
    pub client_id: String,
}

/// A magic link, as found by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    /// The connection's id.
    pub connection_id: String,
    /// The recipient.
    pub recipient: String,
    /// The client that asked for it.
    pub client_id: String,
    /// The code's digest (which identifies this row's code).
    pub code_hash: String,
    /// The login transaction it completes.
    pub transaction_hash: String,
    /// The CSRF token digest of that transaction.
    pub csrf_hash: String,
}

impl Store {
    /// Stores a code, replacing the recipient's previous code (which is void from now on).
    /// It is not accepted until [`Store::code_delivered`].
    pub async fn put_code(&self, c: &NewCode<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO passwordless_codes (tenant, connection_id, recipient, client_id, code_hash, link_hash, \
             transaction_hash, csrf_hash, delivered, attempts, max_attempts, create_time, expire_time, used_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $10, $11, NULL) \
             ON CONFLICT (tenant, connection_id, recipient) DO UPDATE SET client_id = $4, code_hash = $5, \
             link_hash = $6, transaction_hash = $7, csrf_hash = $8, delivered = 0, attempts = 0, max_attempts = $9, \
             create_time = $10, expire_time = $11, used_time = NULL",
        )
        .bind(c.tenant)
        .bind(c.connection_id)
        .bind(c.recipient)
        .bind(c.client_id)
        .bind(c.code_hash)
        .bind(c.link_hash)
        .bind(c.transaction_hash)
        .bind(c.csrf_hash)
        .bind(i64::from(c.max_attempts))
        .bind(c.now)
        .bind(c.expire_time)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Marks the code `code_hash` of a recipient delivered (valid from now on), unless a newer
    /// start replaced it meanwhile; this handle's audit events ([`Store::auditing`], the
    /// start's) are written with the mark, in its transaction.
    pub async fn code_delivered(
        &self,
        tenant: &str,
        connection_id: &str,
        recipient: &str,
        code_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE passwordless_codes SET delivered = 1 \
             WHERE tenant = $1 AND connection_id = $2 AND recipient = $3 AND code_hash = $4",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(recipient)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?;
        self.write_audit(&mut tx)?;
        tx.commit().await?;
        self.audit_committed();
        Ok(done.rows_affected() == 1)
    }

    /// Forgets the code `code_hash` of a recipient (its delivery failed), unless a newer
    /// start replaced it meanwhile.
    pub async fn drop_code(
        &self,
        tenant: &str,
        connection_id: &str,
        recipient: &str,
        code_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM passwordless_codes \
             WHERE tenant = $1 AND connection_id = $2 AND recipient = $3 AND code_hash = $4",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(recipient)
        .bind(code_hash)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Takes one verification attempt of the recipient's live code: `None` when there is no
    /// delivered, unused, unexpired code with attempts left. Atomic: of concurrent attempts,
    /// at most the code's allowance get it.
    pub async fn attempt_code(
        &self,
        tenant: &str,
        connection_id: &str,
        recipient: &str,
        now: i64,
    ) -> Result<Option<Attempted>, StoreError> {
        let row = sqlx::query(
            "UPDATE passwordless_codes SET attempts = attempts + 1 \
             WHERE tenant = $1 AND connection_id = $2 AND recipient = $3 AND delivered = 1 AND used_time IS NULL \
             AND expire_time > $4 AND attempts < max_attempts RETURNING code_hash, client_id",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(recipient)
        .bind(now)
        .fetch_optional(self.db.writer())
        .await?;
        row.map(|r| Ok(Attempted { code_hash: r.try_get("code_hash")?, client_id: r.try_get("client_id")? }))
            .transpose()
    }

    /// Uses the code `code_hash` of a recipient: whether this call used it (of concurrent
    /// uses, one wins).
    pub async fn use_code(
        &self,
        tenant: &str,
        connection_id: &str,
        recipient: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE passwordless_codes SET used_time = $5 \
             WHERE tenant = $1 AND connection_id = $2 AND recipient = $3 AND code_hash = $4 AND used_time IS NULL \
             AND expire_time > $5",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(recipient)
        .bind(code_hash)
        .bind(now)
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The live (delivered, unused, unexpired) magic link with the token digest `link_hash`.
    pub async fn live_link(&self, tenant: &str, link_hash: &str, now: i64) -> Result<Option<StoredLink>, StoreError> {
        let row = sqlx::query(
            "SELECT connection_id, recipient, client_id, code_hash, transaction_hash, csrf_hash \
             FROM passwordless_codes WHERE tenant = $1 AND link_hash = $2 AND delivered = 1 AND used_time IS NULL \
             AND expire_time > $3",
        )
        .bind(tenant)
        .bind(link_hash)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok(StoredLink {
                connection_id: r.try_get("connection_id")?,
                recipient: r.try_get("recipient")?,
                client_id: r.try_get("client_id")?,
                code_hash: r.try_get("code_hash")?,
                transaction_hash: r.try_get::<Option<String>, _>("transaction_hash")?.unwrap_or_default(),
                csrf_hash: r.try_get::<Option<String>, _>("csrf_hash")?.unwrap_or_default(),
            })
        })
        .transpose()
    }

    /// Counts one event in the fixed window of `bucket` (`window` microseconds long) and
    /// answers the count so far in the current window, atomically.
    pub async fn count_in_window(&self, tenant: &str, bucket: &str, now: i64, window: i64) -> Result<u32, StoreError> {
        let row = sqlx::query(
            "INSERT INTO passwordless_limits (tenant, bucket, window_start, count) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (tenant, bucket) DO UPDATE SET \
             count = CASE WHEN passwordless_limits.window_start <= $4 THEN 1 ELSE passwordless_limits.count + 1 END, \
             window_start = CASE WHEN passwordless_limits.window_start <= $4 THEN $3 \
             ELSE passwordless_limits.window_start END \
             RETURNING count",
        )
        .bind(tenant)
        .bind(bucket)
        .bind(now)
        .bind(now.saturating_sub(window))
        .fetch_one(self.db.writer())
        .await?;
        let count: i64 = row.try_get("count")?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

/// The statements that forget a deleted tenant's passwordless state (`$1` tenant, `$2` the
/// deletion's time).
pub(super) const DELETE_TENANT_CODES: [&str; 2] = [
    "DELETE FROM passwordless_codes WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM passwordless_limits WHERE tenant = $1 AND window_start <= $2",
];
