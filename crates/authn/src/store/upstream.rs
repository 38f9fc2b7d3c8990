//! Redirect logins' storage: the upstream login transactions (found by the digest of their
//! `state`, and used up by one `DELETE`: in the write transaction that stores the login
//! ([`LoginGrant`](super::oauth::LoginGrant)), or alone when a callback is refused; of two
//! uses of the same state exactly one deletes it), the sealed upstream tokens of an identity,
//! and the one-time values of upstream answers (SAML assertion ids) already accepted.

use sqlx::Row;

use super::{Store, StoreError};

/// An upstream login transaction to store.
#[derive(Debug, Clone)]
pub struct NewUpstreamTransaction<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The digest of the `state` sent upstream.
    pub state_hash: &'a str,
    /// The digest of the browser binding cookie.
    pub binding_hash: &'a str,
    /// The client of the authorization request.
    pub client_id: &'a str,
    /// The connection's name.
    pub connection: &'a str,
    /// The application's validated authorization request, as JSON.
    pub request: &'a str,
    /// The nonce, PKCE verifier and connector data, sealed (base64).
    pub sealed: &'a str,
    /// Now.
    pub now: i64,
    /// When it expires.
    pub expire_time: i64,
}

/// A stored upstream login transaction, as taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTransaction {
    /// The digest of the browser binding cookie.
    pub binding_hash: String,
    /// The client of the authorization request.
    pub client_id: String,
    /// The connection's name.
    pub connection: String,
    /// The application's authorization request, as JSON.
    pub request: String,
    /// The sealed secrets (base64).
    pub sealed: String,
    /// When it expires (unix microseconds).
    pub expire_time: i64,
}

fn upstream_transaction(r: &sqlx::any::AnyRow) -> Result<UpstreamTransaction, StoreError> {
    Ok(UpstreamTransaction {
        binding_hash: r.try_get("binding_hash")?,
        client_id: r.try_get("client_id")?,
        connection: r.try_get("connection")?,
        request: r.try_get("request")?,
        sealed: r.try_get("sealed")?,
        expire_time: r.try_get("expire_time")?,
    })
}

impl Store {
    /// Stores an upstream login transaction, without waiting for the disk
    /// ([`Db::execute_relaxed`]: lost only in a power failure, when its user starts the
    /// login again; its state is then unknown to the callback, as a forged one is).
    ///
    /// [`Db::execute_relaxed`]: postern_common::db::Db::execute_relaxed
    pub async fn create_upstream_transaction(&self, t: &NewUpstreamTransaction<'_>) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO upstream_transactions (tenant, state_hash, binding_hash, client_id, connection, request, \
             sealed, create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.tenant)
        .bind(t.state_hash)
        .bind(t.binding_hash)
        .bind(t.client_id)
        .bind(t.connection)
        .bind(t.request)
        .bind(t.sealed)
        .bind(t.now)
        .bind(t.expire_time);
        self.db.execute_relaxed(insert).await?;
        Ok(())
    }

    /// Uses up the upstream login transaction of `state_hash`, live or expired (the caller
    /// tells the application an expired one ended): `None` when there is none (never made,
    /// or already used). Of two concurrent uses, one gets it.
    pub async fn take_upstream_transaction(
        &self,
        tenant: &str,
        state_hash: &str,
    ) -> Result<Option<UpstreamTransaction>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM upstream_transactions WHERE tenant = $1 AND state_hash = $2 \
             RETURNING binding_hash, client_id, connection, request, sealed, expire_time",
        )
        .bind(tenant)
        .bind(state_hash)
        .fetch_optional(self.db.writer())
        .await?;
        row.as_ref().map(upstream_transaction).transpose()
    }

    /// The upstream login transaction of `state_hash`, live or expired, left in place: a
    /// callback reads it, and uses it up with the login's one write
    /// ([`LoginGrant::uses`](super::oauth::LoginGrant)) or with
    /// [`Store::take_upstream_transaction`] when it refuses the callback.
    pub async fn upstream_transaction(
        &self,
        tenant: &str,
        state_hash: &str,
    ) -> Result<Option<UpstreamTransaction>, StoreError> {
        let row = sqlx::query(
            "SELECT binding_hash, client_id, connection, request, sealed, expire_time FROM upstream_transactions \
             WHERE tenant = $1 AND state_hash = $2",
        )
        .bind(tenant)
        .bind(state_hash)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(upstream_transaction).transpose()
    }

    /// Records a one-time value of an upstream answer (a SAML assertion's id) for the
    /// connection until `expire_time`: `true` when it was not recorded yet (or only expired),
    /// `false` when it is a replay. Of two concurrent uses, one gets `true`.
    pub async fn use_one_time_id(
        &self,
        tenant: &str,
        connection_id: &str,
        key: &str,
        now: i64,
        expire_time: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO upstream_one_time_ids (tenant, connection_id, id_key, create_time, expire_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, connection_id, id_key) DO UPDATE \
             SET create_time = excluded.create_time, expire_time = excluded.expire_time \
             WHERE upstream_one_time_ids.expire_time <= $4",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(key)
        .bind(now)
        .bind(expire_time)
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Keeps (or with `None` forgets) the sealed upstream tokens of an identity.
    pub async fn set_upstream_tokens(
        &self,
        tenant: &str,
        connection_id: &str,
        source_id: &str,
        sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET upstream_tokens = $4 WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .bind(sealed)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The sealed upstream tokens of an identity, if kept.
    pub async fn upstream_tokens(
        &self,
        tenant: &str,
        connection_id: &str,
        source_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT upstream_tokens FROM identities WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>("upstream_tokens")).transpose()?.flatten())
    }
}
