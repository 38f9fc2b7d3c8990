//! What a master-key rotation reads and rewrites: every value the authenticator keeps sealed
//! for long (the tenants' signing keys, identities' upstream tokens), a page at a time, and
//! each replaced only if it is still the value read (so a value changed meanwhile keeps its
//! change, and replicas doing it at once agree).

use sqlx::Row;

use super::{Store, StoreError};

/// A sealed value and the owner it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// The parts of its associated data: (tenant, kid) for a signing key, (tenant,
    /// connection id, source id) for upstream tokens.
    pub owner: Vec<String>,
    /// The sealed bytes (signing keys) or their URL-safe base64 (upstream tokens).
    pub sealed: SealedBytes,
}

/// How a sealed value is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedBytes {
    /// Raw bytes.
    Raw(Vec<u8>),
    /// URL-safe unpadded base64 text.
    Text(String),
}

impl Store {
    /// Up to `limit` signing keys after (tenant, kid) `after`, in that order: owner (tenant,
    /// kid) and sealed key.
    pub async fn sealed_signing_keys_after(
        &self,
        after: (&str, &str),
        limit: usize,
    ) -> Result<Vec<SealedValue>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, kid, sealed_key FROM signing_keys WHERE tenant > $1 OR (tenant = $1 AND kid > $2) \
             ORDER BY tenant, kid LIMIT $3",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SealedValue {
                    owner: vec![r.try_get("tenant")?, r.try_get("kid")?],
                    sealed: SealedBytes::Raw(r.try_get("sealed_key")?),
                })
            })
            .collect()
    }

    /// Replaces the sealed key of (tenant, kid) `old` with `new`; whether it was still `old`.
    pub async fn replace_sealed_signing_key(
        &self,
        tenant: &str,
        kid: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE signing_keys SET sealed_key = $4 WHERE tenant = $1 AND kid = $2 AND sealed_key = $3")
                .bind(tenant)
                .bind(kid)
                .bind(old)
                .bind(new)
                .execute(self.db.writer())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` identities with upstream tokens after (tenant, connection id, source id)
    /// `after`, in that order: owner and sealed tokens.
    pub async fn sealed_upstream_tokens_after(
        &self,
        after: (&str, &str, &str),
        limit: usize,
    ) -> Result<Vec<SealedValue>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, connection_id, source_id, upstream_tokens FROM identities \
             WHERE upstream_tokens IS NOT NULL AND (tenant > $1 OR (tenant = $1 AND connection_id > $2) \
             OR (tenant = $1 AND connection_id = $2 AND source_id > $3)) \
             ORDER BY tenant, connection_id, source_id LIMIT $4",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(after.2)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SealedValue {
                    owner: vec![r.try_get("tenant")?, r.try_get("connection_id")?, r.try_get("source_id")?],
                    sealed: SealedBytes::Text(r.try_get("upstream_tokens")?),
                })
            })
            .collect()
    }

    /// Replaces an identity's sealed upstream tokens `old` with `new`; whether they were
    /// still `old`.
    pub async fn replace_sealed_upstream_tokens(
        &self,
        owner: (&str, &str, &str),
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE identities SET upstream_tokens = $5 \
             WHERE tenant = $1 AND connection_id = $2 AND source_id = $3 AND upstream_tokens = $4",
        )
        .bind(owner.0)
        .bind(owner.1)
        .bind(owner.2)
        .bind(old)
        .bind(new)
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
