//! The OpenID provider's storage: login transactions, authorization codes, SSO sessions and
//! refresh tokens. Each bearer secret is stored as the hex SHA-256 of its value
//! ([`secret_digest`]), so the tables hold nothing a reader could present. Every time is
//! given by the caller (unix microseconds from its [`Clock`](postern_common::time::Clock)),
//! so that expiry is tested without sleeping.
//!
//! Single use is one conditional `UPDATE … WHERE used_time IS NULL` (or a `DELETE`), which
//! both backends apply atomically: of two concurrent redemptions of a code or a refresh
//! token, exactly one wins, and the other is then a replay.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// The stored form of a bearer secret: the hex SHA-256 of its value.
pub fn secret_digest(secret: &str) -> String {
    hex_lower(&postern_common::ids::secret_hash(secret))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A login transaction to store.
#[derive(Debug, Clone)]
pub struct NewTransaction<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The digest of the transaction id.
    pub id_hash: &'a str,
    /// The digest of its CSRF token.
    pub csrf_hash: &'a str,
    /// The client of the authorization request.
    pub client_id: &'a str,
    /// The validated authorization request, as JSON.
    pub request: &'a str,
    /// Now.
    pub now: i64,
    /// When it expires.
    pub expire_time: i64,
}

/// A stored login transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransaction {
    /// The digest of its CSRF token.
    pub csrf_hash: String,
    /// The client of the authorization request.
    pub client_id: String,
    /// The authorization request, as JSON.
    pub request: String,
}

/// What an authorization code grants, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI of the authorization request, to match at the exchange.
    pub redirect_uri: String,
    /// The user.
    pub user_id: String,
    /// The granted scopes.
    pub scope: String,
    /// The API of the access token; empty for none.
    pub audience: String,
    /// The nonce to put in the ID token; empty for none.
    pub nonce: String,
    /// The PKCE challenge (S256); empty for none.
    pub code_challenge: String,
    /// The digest of the SSO session it came from.
    pub session_hash: String,
    /// When the user authenticated (unix microseconds).
    pub auth_time: i64,
}

/// The login transaction a browser login uses up in the write of its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsesUp<'a> {
    /// A redirect login's upstream transaction, by the digest of its `state`.
    Upstream(&'a str),
    /// The hosted page's transaction, by the digest of its id; only while it is live at the
    /// grant's `now`.
    Page(&'a str),
}

/// What a browser login writes beside the user's record, in the same write transaction
/// (one commit: on SQLite one fsync instead of one per row): the SSO session it starts and
/// the application's code, both for the login's user, authenticated `now`; and the login
/// transaction it uses up.
#[derive(Debug, Clone, Copy)]
pub struct LoginGrant<'a> {
    /// The login transaction, deleted first: when it is gone (another callback with the
    /// same state, or the same page in another tab, completed it; or it expired), nothing is
    /// written and the write fails with [`StoreError::Used`].
    pub uses: Option<UsesUp<'a>>,
    /// The upstream's tokens, sealed, to keep on the identity the login records
    /// ([`Store::record_login`], [`Store::create_user_with_grant`]); `None` leaves them.
    /// [`Store::create_login_grant`] records no identity and ignores them.
    pub upstream_tokens: Option<&'a str>,
    /// The connection the login went through, kept on the session (empty: none named).
    pub connection: &'a str,
    /// What the connection's upstream needs of the login to end its own session
    /// (`Completed::upstream_session`), kept on the session (empty: nothing).
    pub upstream_session: &'a str,
    /// Now: the session's `auth_time` and the rows' creation time (unix microseconds).
    pub now: i64,
    /// The digest of the new session's cookie.
    pub session_hash: &'a str,
    /// When the session ends if unused (capped at `session_absolute_expire`).
    pub session_idle_expire: i64,
    /// When the session ends at the latest.
    pub session_absolute_expire: i64,
    /// The digest of the new code.
    pub code_hash: &'a str,
    /// When the code expires.
    pub code_expire: i64,
    /// The client the code is issued to.
    pub client_id: &'a str,
    /// The redirect URI of the authorization request.
    pub redirect_uri: &'a str,
    /// The granted scopes.
    pub scope: &'a str,
    /// The API of the access token; empty for none.
    pub audience: &'a str,
    /// The nonce for the ID token; empty for none.
    pub nonce: &'a str,
    /// The PKCE challenge (S256); empty for none.
    pub code_challenge: &'a str,
}

impl LoginGrant<'_> {
    /// The code's grant, for `user_id`.
    fn code(&self, user_id: &str) -> CodeGrant {
        CodeGrant {
            client_id: self.client_id.to_owned(),
            redirect_uri: self.redirect_uri.to_owned(),
            user_id: user_id.to_owned(),
            scope: self.scope.to_owned(),
            audience: self.audience.to_owned(),
            nonce: self.nonce.to_owned(),
            code_challenge: self.code_challenge.to_owned(),
            session_hash: self.session_hash.to_owned(),
            auth_time: self.now,
        }
    }
}

/// The statement that uses up the login transaction `grant` names, if it names one: it
/// changes one row, or none when the transaction is gone (used up, or expired).
pub(super) fn using_up<'a>(
    tenant: &'a str,
    grant: &LoginGrant<'a>,
) -> Option<sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments>> {
    match grant.uses? {
        UsesUp::Upstream(state_hash) => Some(
            sqlx::query("DELETE FROM upstream_transactions WHERE tenant = $1 AND state_hash = $2")
                .bind(tenant)
                .bind(state_hash),
        ),
        UsesUp::Page(id_hash) => Some(
            sqlx::query("DELETE FROM login_transactions WHERE tenant = $1 AND id_hash = $2 AND expire_time > $3")
                .bind(tenant)
                .bind(id_hash)
                .bind(grant.now),
        ),
    }
}

/// Begins a write transaction that first uses up the login transaction `grant` names (if it
/// names one): sent with the `BEGIN`
/// ([`Db::begin_write_with`](postern_common::db::Db::begin_write_with): on SQLite one hand-off
/// to the database's thread). [`StoreError::Used`], with nothing written, when the login
/// transaction is gone.
pub(super) async fn begin_using_up<'a>(
    db: &postern_common::db::Db,
    tenant: &'a str,
    grant: Option<&LoginGrant<'a>>,
) -> Result<postern_common::db::WriteTx, StoreError> {
    let mut first = postern_common::db::Together::default();
    let Some(taking) = grant.and_then(|g| using_up(tenant, g)) else {
        return Ok(db.begin_write().await?);
    };
    first.push(taking)?;
    let (tx, answers) = db.begin_write_with(first).await?;
    if answers.first().map(|a| a.changed) != Some(1) {
        tx.rollback().await?;
        return Err(StoreError::Used);
    }
    Ok(tx)
}

/// Runs `statements`, a whole write transaction ([`Db::write_together`]: on SQLite one
/// hand-off to the database's thread): what they answered; or, with nothing written, the
/// position of the statement that was
/// [expected](postern_common::db::Together::push_expecting_one) to change one row (a login
/// transaction or code used up, a user counted) and did not.
///
/// [`Db::write_together`]: postern_common::db::Db::write_together
pub(super) async fn write_together(
    db: &postern_common::db::Db,
    statements: postern_common::db::Together,
) -> Result<Result<Vec<postern_common::db::Answer>, usize>, StoreError> {
    match db.write_together(statements).await {
        Ok(answers) => Ok(Ok(answers)),
        Err(failed) if failed.unmet => Ok(Err(failed.index)),
        Err(failed) => Err(failed.error.into()),
    }
}

/// Adds `grant`'s session and code for `user_id` and, when `identity` (connection id,
/// source id) is named, the upstream tokens on it, to `statements`, a write transaction's
/// (new rows whose digests are random, and the tokens of an identity the transaction wrote
/// or read: nothing reads them back).
pub(super) fn insert_grant_in(
    statements: &mut postern_common::db::Together,
    tenant: &str,
    user_id: &str,
    identity: Option<(&str, &str)>,
    grant: &LoginGrant<'_>,
) -> Result<(), StoreError> {
    if let (Some(identity), Some(sealed)) = (identity, grant.upstream_tokens) {
        statements.push(
            sqlx::query(
                "UPDATE identities SET upstream_tokens = $4 \
                 WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
            )
            .bind(tenant)
            .bind(identity.0)
            .bind(identity.1)
            .bind(sealed),
        )?;
    }
    statements.push(session_insert(
        tenant,
        grant.session_hash,
        user_id,
        grant.connection,
        grant.upstream_session,
        grant.now,
        grant.session_idle_expire,
        grant.session_absolute_expire,
    ))?;
    statements.push(code_insert(tenant, grant.code_hash, &grant.code(user_id), grant.now, grant.code_expire))?;
    statements.push(session_client_insert(tenant, grant.session_hash, grant.client_id, grant.now))?;
    Ok(())
}

/// The columns of an authorization code that [`code_grant`] reads.
const CODE_COLUMNS: &str =
    "client_id, redirect_uri, user_id, scope, audience, nonce, code_challenge, session_hash, auth_time";

/// The statement that marks a code used by the exchange of refresh-token family
/// `family_id`, if it is unused and within its lifetime: it changes one row, or none.
fn code_use<'a>(
    tenant: &'a str,
    code_hash: &'a str,
    family_id: &'a str,
    now: i64,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "UPDATE authorization_codes SET used_time = $3, family_id = $4 \
         WHERE tenant = $1 AND code_hash = $2 AND used_time IS NULL AND expire_time > $3",
    )
    .bind(tenant)
    .bind(code_hash)
    .bind(now)
    .bind(family_id)
}

/// Marks a code used by the exchange of refresh-token family `family_id`, if it is unused
/// and within its lifetime; how many rows it marked (0 or 1).
async fn mark_code_used(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    code_hash: &str,
    family_id: &str,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(code_use(tenant, code_hash, family_id, now).execute(&mut **tx).await?.rows_affected())
}

/// The statement that stores a refresh token of `grant`'s family, idle until
/// `expire_time` (never past the family's own expiry).
fn refresh_insert<'a>(
    tenant: &'a str,
    token_hash: &'a str,
    grant: &'a RefreshGrant,
    now: i64,
    expire_time: i64,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO refresh_tokens (tenant, token_hash, family_id, client_id, user_id, scope, audience, nonce, \
         auth_time, session_hash, create_time, expire_time, family_expire) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(tenant)
    .bind(token_hash)
    .bind(&grant.family_id)
    .bind(&grant.client_id)
    .bind(&grant.user_id)
    .bind(&grant.scope)
    .bind(&grant.audience)
    .bind(&grant.nonce)
    .bind(grant.auth_time)
    .bind(&grant.session_hash)
    .bind(now)
    .bind(expire_time.min(grant.family_expire))
    .bind(grant.family_expire)
}

/// An SSO session just ended: what a federated logout and the back-channel logout need of
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    /// Its user.
    pub user_id: String,
    /// The connection its login went through (empty when none was named).
    pub connection: String,
    /// What that connection's upstream needs to end its own session (empty: nothing).
    pub upstream_session: String,
    /// The clients that got a code in it, in no particular order.
    pub clients: Vec<String>,
}

/// The statement that records that `client_id` got a code in the SSO session `session_hash`
/// (nothing when it did before).
fn session_client_insert<'a>(
    tenant: &'a str,
    session_hash: &'a str,
    client_id: &'a str,
    now: i64,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO sso_session_clients (tenant, session_hash, client_id, create_time) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant, session_hash, client_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(session_hash)
    .bind(client_id)
    .bind(now)
}

/// The statement that starts an SSO session, logged in through `connection` (empty when
/// none was named) whose upstream's logout needs `upstream_session` (empty: nothing).
#[allow(clippy::too_many_arguments)] // the session's columns
fn session_insert<'a>(
    tenant: &'a str,
    id_hash: &'a str,
    user_id: &'a str,
    connection: &'a str,
    upstream_session: &'a str,
    now: i64,
    idle_expire: i64,
    absolute_expire: i64,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO sso_sessions \
         (tenant, id_hash, user_id, connection, upstream_session, auth_time, last_seen, idle_expire, absolute_expire) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(id_hash)
    .bind(user_id)
    .bind(connection)
    .bind(upstream_session)
    .bind(now)
    .bind(idle_expire.min(absolute_expire))
    .bind(absolute_expire)
}

/// The statement that stores an authorization code.
fn code_insert<'a>(
    tenant: &'a str,
    code_hash: &'a str,
    grant: &'a CodeGrant,
    now: i64,
    expire_time: i64,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO authorization_codes (tenant, code_hash, client_id, redirect_uri, user_id, scope, audience, \
         nonce, code_challenge, session_hash, auth_time, create_time, expire_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(tenant)
    .bind(code_hash)
    .bind(&grant.client_id)
    .bind(&grant.redirect_uri)
    .bind(&grant.user_id)
    .bind(&grant.scope)
    .bind(&grant.audience)
    .bind(&grant.nonce)
    .bind(&grant.code_challenge)
    .bind(&grant.session_hash)
    .bind(grant.auth_time)
    .bind(now)
    .bind(expire_time)
}

/// The outcome of redeeming a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// First use within its lifetime: what it grants.
    Granted(CodeGrant),
    /// Used before: the refresh tokens of its exchange (if any) were revoked. The user it
    /// was issued for (for the audit log).
    Replayed {
        /// The code's user.
        user_id: String,
    },
    /// No such code, or expired.
    Unknown,
}

/// A browser's SSO session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user_id: String,
    /// When the user authenticated (unix microseconds).
    pub auth_time: i64,
    /// When the session ends at the latest (unix microseconds).
    pub absolute_expire: i64,
}

/// What a refresh token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshGrant {
    /// Its family: every token rotated from the same code exchange.
    pub family_id: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user.
    pub user_id: String,
    /// The granted scopes.
    pub scope: String,
    /// The API of the access tokens; empty for none.
    pub audience: String,
    /// The nonce of the original authorization.
    pub nonce: String,
    /// When the user authenticated (unix microseconds).
    pub auth_time: i64,
    /// The digest of the SSO session of the original login.
    pub session_hash: String,
    /// When the family ends, whatever its use (unix microseconds).
    pub family_expire: i64,
}

/// The outcome of rotating a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// The token was current: the new token replaces it, with this grant.
    Rotated(RefreshGrant),
    /// The token was rotated before: its whole family is revoked. The user it was issued
    /// for (for the audit log).
    Reused {
        /// The token's user.
        user_id: String,
    },
    /// No such token (never issued, revoked, or expired).
    Unknown,
}

/// The outcome of revoking a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token's whole family is revoked.
    Revoked,
    /// No such token (never issued, already revoked, or expired and pruned).
    Unknown,
    /// The token was issued to another client: nothing was revoked.
    OtherClient,
}

fn code_grant(r: &AnyRow) -> Result<CodeGrant, sqlx::Error> {
    Ok(CodeGrant {
        client_id: r.try_get("client_id")?,
        redirect_uri: r.try_get("redirect_uri")?,
        user_id: r.try_get("user_id")?,
        scope: r.try_get("scope")?,
        audience: r.try_get("audience")?,
        nonce: r.try_get("nonce")?,
        code_challenge: r.try_get("code_challenge")?,
        session_hash: r.try_get("session_hash")?,
        auth_time: r.try_get("auth_time")?,
    })
}

fn refresh_grant(r: &AnyRow) -> Result<RefreshGrant, sqlx::Error> {
    Ok(RefreshGrant {
        family_id: r.try_get("family_id")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        scope: r.try_get("scope")?,
        audience: r.try_get("audience")?,
        nonce: r.try_get("nonce")?,
        auth_time: r.try_get("auth_time")?,
        session_hash: r.try_get("session_hash")?,
        family_expire: r.try_get("family_expire")?,
    })
}

/// Deletes, in `tx`, the records of the clients of `user_id`'s SSO sessions, answering them:
/// each session's digest with its clients. Before [`DELETE_USER_GRANTS`] ends the sessions.
pub(super) async fn take_user_session_clients(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    user_id: &str,
) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    let rows = sqlx::query(
        "DELETE FROM sso_session_clients WHERE tenant = $1 AND session_hash IN \
         (SELECT id_hash FROM sso_sessions WHERE tenant = $1 AND user_id = $2) RETURNING session_hash, client_id",
    )
    .bind(tenant)
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut sessions: Vec<(String, Vec<String>)> = Vec::new();
    for r in &rows {
        let (session, client): (String, String) = (r.try_get("session_hash")?, r.try_get("client_id")?);
        match sessions.iter_mut().find(|(s, _)| *s == session) {
            Some((_, clients)) => clients.push(client),
            None => sessions.push((session, vec![client])),
        }
    }
    Ok(sessions)
}

/// The statements that forget a user's OpenID state (`$1` tenant, `$2` user id).
pub(super) const DELETE_USER_GRANTS: [&str; 3] = [
    "DELETE FROM authorization_codes WHERE tenant = $1 AND user_id = $2",
    "DELETE FROM refresh_tokens WHERE tenant = $1 AND user_id = $2",
    "DELETE FROM sso_sessions WHERE tenant = $1 AND user_id = $2",
];

/// The statements that forget a deleted tenant's OpenID state made before its deletion
/// (`$1` tenant, `$2` the deletion's time).
pub(super) const DELETE_TENANT_GRANTS: [&str; 6] = [
    "DELETE FROM login_transactions WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM upstream_transactions WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM upstream_one_time_ids WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM authorization_codes WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM refresh_tokens WHERE tenant = $1 AND create_time <= $2",
    "DELETE FROM sso_sessions WHERE tenant = $1 AND auth_time <= $2",
];

impl Store {
    // ---- login transactions ----

    /// Stores a login transaction, without waiting for the disk ([`Db::execute_relaxed`]:
    /// lost only in a power failure, when its user starts the login again).
    ///
    /// [`Db::execute_relaxed`]: postern_common::db::Db::execute_relaxed
    pub async fn create_transaction(&self, t: &NewTransaction<'_>) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO login_transactions (tenant, id_hash, csrf_hash, client_id, request, create_time, \
             expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.tenant)
        .bind(t.id_hash)
        .bind(t.csrf_hash)
        .bind(t.client_id)
        .bind(t.request)
        .bind(t.now)
        .bind(t.expire_time);
        self.db.execute_relaxed(insert).await?;
        Ok(())
    }

    /// A live (unexpired, unused) login transaction.
    pub async fn transaction(
        &self,
        tenant: &str,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<StoredTransaction>, StoreError> {
        let row = sqlx::query(
            "SELECT csrf_hash, client_id, request FROM login_transactions \
             WHERE tenant = $1 AND id_hash = $2 AND expire_time > $3",
        )
        .bind(tenant)
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok(StoredTransaction {
                csrf_hash: r.try_get("csrf_hash")?,
                client_id: r.try_get("client_id")?,
                request: r.try_get("request")?,
            })
        })
        .transpose()
    }

    /// Keeps a live login transaction until `until` at least (a code or magic link sent from
    /// it lives longer than the transaction would): when it now expires, `None` when it is
    /// not live.
    pub async fn extend_transaction(
        &self,
        tenant: &str,
        id_hash: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "UPDATE login_transactions SET expire_time = CASE WHEN expire_time < $4 THEN $4 ELSE expire_time END \
             WHERE tenant = $1 AND id_hash = $2 AND expire_time > $3 RETURNING expire_time",
        )
        .bind(tenant)
        .bind(id_hash)
        .bind(now)
        .bind(until)
        .fetch_optional(self.db.writer())
        .await?;
        Ok(row.map(|r| r.try_get("expire_time")).transpose()?)
    }

    // ---- authorization codes ----

    /// Stores an authorization code (by digest) granting `grant` until `expire_time`.
    pub async fn create_code(
        &self,
        tenant: &str,
        code_hash: &str,
        grant: &CodeGrant,
        now: i64,
        expire_time: i64,
    ) -> Result<(), StoreError> {
        if grant.session_hash.is_empty() {
            code_insert(tenant, code_hash, grant, now, expire_time).execute(self.db.writer()).await?;
            return Ok(());
        }
        // With the session's record of its client: one hand-off to SQLite's thread.
        let mut statements = postern_common::db::Together::default();
        statements.push(code_insert(tenant, code_hash, grant, now, expire_time))?;
        statements.push(session_client_insert(tenant, &grant.session_hash, &grant.client_id, now))?;
        // No statement is expected to change exactly one row: nothing can be unmet.
        write_together(&self.db, statements)
            .await?
            .map_err(|i| StoreError::Corrupt(format!("statement {i} of a code's write was unmet")))?;
        Ok(())
    }

    /// Redeems a code once: the first redemption within its lifetime gets its grant and
    /// records `family_id` (the refresh tokens the exchange will issue); any later one
    /// revokes that family and answers [`Redeemed::Replayed`].
    pub async fn redeem_code(
        &self,
        tenant: &str,
        code_hash: &str,
        family_id: &str,
        now: i64,
    ) -> Result<Redeemed, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let used = mark_code_used(&mut tx, tenant, code_hash, family_id, now).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CODE_COLUMNS}, family_id FROM authorization_codes WHERE tenant = $1 AND code_hash = $2"
        )))
        .bind(tenant)
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match (used, row) {
            (1, Some(r)) => Redeemed::Granted(code_grant(&r)?),
            (_, Some(r)) => {
                let family: Option<String> = r.try_get("family_id")?;
                match family {
                    Some(family) => {
                        sqlx::query("DELETE FROM refresh_tokens WHERE tenant = $1 AND family_id = $2")
                            .bind(tenant)
                            .bind(&family)
                            .execute(&mut *tx)
                            .await?;
                        Redeemed::Replayed { user_id: r.try_get("user_id")? }
                    }
                    // Never used, so expired.
                    None => Redeemed::Unknown,
                }
            }
            _ => Redeemed::Unknown,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// What a code grants while it is unused and within its lifetime, read without using it
    /// up: the exchange checks it and makes its tokens first, then uses the code up with
    /// everything the exchange writes in one transaction ([`use_authorization_code`](Self::use_authorization_code)).
    /// `None` for a code used before, expired or unknown ([`redeem_code`](Self::redeem_code)
    /// then tells which, and revokes what a replay must).
    pub async fn peek_code(&self, tenant: &str, code_hash: &str, now: i64) -> Result<Option<CodeGrant>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CODE_COLUMNS} FROM authorization_codes \
             WHERE tenant = $1 AND code_hash = $2 AND used_time IS NULL AND expire_time > $3"
        )))
        .bind(tenant)
        .bind(code_hash)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(code_grant).transpose()?)
    }

    /// [`peek_code`](Self::peek_code), with the code's user and its identities (`None` when
    /// the user is gone), read together: on SQLite one hand-off to the database's thread.
    pub async fn peek_code_with_user(
        &self,
        tenant: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<Option<(CodeGrant, Option<crate::domain::User>)>, StoreError> {
        const LIVE: &str = "tenant = $1 AND code_hash = $2 AND used_time IS NULL AND expire_time > $3";
        static USER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            super::user_with_identities_sql(&format!(
                "u.tenant = $1 AND u.user_id = (SELECT user_id FROM authorization_codes WHERE {LIVE})"
            ))
        });
        let mut reads = postern_common::db::Together::default();
        let code = format!("SELECT {CODE_COLUMNS} FROM authorization_codes WHERE {LIVE}");
        reads.push(sqlx::query(sqlx::AssertSqlSafe(code)).bind(tenant).bind(code_hash).bind(now))?;
        reads.push(sqlx::query(sqlx::AssertSqlSafe(USER.as_str())).bind(tenant).bind(code_hash).bind(now))?;
        let mut conn = self.db.pool().acquire().await?;
        let answers = reads.run(&mut conn, self.db.backend()).await.map_err(|f| f.error)?;
        let mut answers = answers.into_iter();
        let Some(code) = answers.next().and_then(|a| a.rows.into_iter().next()) else { return Ok(None) };
        let user = answers.next().map_or(Ok(None), |a| super::user_from_rows(&a.rows))?;
        Ok(Some((code_grant(&code)?, user)))
    }

    /// Uses up a code that [`peek_code`](Self::peek_code) found unused, recording
    /// `family_id`, with what its exchange issued: the first refresh token of the family
    /// (its hash, grant and idle expiry) when there is one, and this handle's audit events
    /// ([`Store::auditing`]), in one write transaction (one fsync on SQLite). `false` when
    /// another exchange used the code (or it expired) in between: nothing is written.
    pub async fn use_authorization_code(
        &self,
        tenant: &str,
        code_hash: &str,
        family_id: &str,
        now: i64,
        refresh: Option<(&str, &RefreshGrant, i64)>,
    ) -> Result<bool, StoreError> {
        // The code used up, and what its exchange issued only if it was: one hand-off to
        // SQLite's thread.
        let mut statements = postern_common::db::Together::default();
        statements.push_expecting_one(code_use(tenant, code_hash, family_id, now))?;
        if let Some((token_hash, grant, expire_time)) = refresh {
            statements.push(refresh_insert(tenant, token_hash, grant, now, expire_time))?;
        }
        self.push_audit(&mut statements)?;
        if write_together(&self.db, statements).await?.is_err() {
            return Ok(false);
        }
        self.audit_committed();
        Ok(true)
    }

    // ---- SSO sessions ----

    /// Starts an SSO session for `user_id`, authenticated at `auth_time` (= now).
    pub async fn create_session(
        &self,
        tenant: &str,
        id_hash: &str,
        user_id: &str,
        now: i64,
        idle_expire: i64,
        absolute_expire: i64,
    ) -> Result<(), StoreError> {
        session_insert(tenant, id_hash, user_id, "", "", now, idle_expire, absolute_expire)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Starts the SSO session of `grant` and issues its code for `user_id`, in one write
    /// transaction: a login that wrote its user's record already (a password login, a
    /// signup, a one-time code). The login transaction it [uses](LoginGrant::uses) is used up
    /// first.
    pub async fn create_login_grant(
        &self,
        tenant: &str,
        user_id: &str,
        grant: &LoginGrant<'_>,
    ) -> Result<(), StoreError> {
        // The transaction used up, and the rest only if it was: one hand-off to SQLite's
        // thread.
        let mut statements = postern_common::db::Together::default();
        if let Some(taking) = using_up(tenant, grant) {
            statements.push_expecting_one(taking)?;
        }
        insert_grant_in(&mut statements, tenant, user_id, None, grant)?;
        match write_together(&self.db, statements).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Used),
        }
    }

    /// A live session, its idle expiry moved to `now + idle` (never past its absolute
    /// expiry). `None` when unknown, ended, idle too long or past its absolute lifetime.
    pub async fn touch_session(
        &self,
        tenant: &str,
        id_hash: &str,
        now: i64,
        idle: i64,
    ) -> Result<Option<Session>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let live = sqlx::query(
            "UPDATE sso_sessions SET last_seen = $3, idle_expire = CASE WHEN absolute_expire < $3 + $4 \
             THEN absolute_expire ELSE $3 + $4 END \
             WHERE tenant = $1 AND id_hash = $2 AND idle_expire > $3 AND absolute_expire > $3",
        )
        .bind(tenant)
        .bind(id_hash)
        .bind(now)
        .bind(idle)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let session = if live == 1 {
            let r = sqlx::query(
                "SELECT user_id, auth_time, absolute_expire FROM sso_sessions WHERE tenant = $1 AND id_hash = $2",
            )
            .bind(tenant)
            .bind(id_hash)
            .fetch_one(&mut *tx)
            .await?;
            Some(Session {
                user_id: r.try_get("user_id")?,
                auth_time: r.try_get("auth_time")?,
                absolute_expire: r.try_get("absolute_expire")?,
            })
        } else {
            None
        };
        tx.commit().await?;
        Ok(session)
    }

    /// Ends a session: what a federated logout needs of it, or `None` when there was no
    /// such session.
    pub async fn end_session(&self, tenant: &str, id_hash: &str) -> Result<Option<EndedSession>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let ended = sqlx::query(
            "DELETE FROM sso_sessions WHERE tenant = $1 AND id_hash = $2 \
             RETURNING user_id, connection, upstream_session",
        )
        .bind(tenant)
        .bind(id_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = ended else { return Ok(None) };
        let clients = sqlx::query_scalar::<_, String>(
            "DELETE FROM sso_session_clients WHERE tenant = $1 AND session_hash = $2 RETURNING client_id",
        )
        .bind(tenant)
        .bind(id_hash)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(EndedSession {
            user_id: r.try_get("user_id")?,
            connection: r.try_get("connection")?,
            upstream_session: r.try_get("upstream_session")?,
            clients,
        }))
    }

    // ---- refresh tokens ----

    /// Stores a refresh token (by digest) of `grant`'s family, valid until `expire_time`.
    pub async fn create_refresh_token(
        &self,
        tenant: &str,
        token_hash: &str,
        grant: &RefreshGrant,
        now: i64,
        expire_time: i64,
    ) -> Result<(), StoreError> {
        refresh_insert(tenant, token_hash, grant, now, expire_time).execute(self.db.writer()).await?;
        Ok(())
    }

    /// Rotates a refresh token: marks `old_hash` used and stores `new_hash` in its family,
    /// valid for `idle` more (never past the family's end), in one transaction. A token used
    /// before revokes its whole family.
    pub async fn rotate_refresh_token(
        &self,
        tenant: &str,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        idle: i64,
    ) -> Result<Rotated, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let used = sqlx::query(
            "UPDATE refresh_tokens SET used_time = $3 \
             WHERE tenant = $1 AND token_hash = $2 AND used_time IS NULL AND expire_time > $3",
        )
        .bind(tenant)
        .bind(old_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query(
            "SELECT family_id, client_id, user_id, scope, audience, nonce, auth_time, session_hash, family_expire, \
             used_time FROM refresh_tokens WHERE tenant = $1 AND token_hash = $2",
        )
        .bind(tenant)
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match (used, row) {
            (1, Some(r)) => {
                let grant = refresh_grant(&r)?;
                tx.defer(refresh_insert(tenant, new_hash, &grant, now, now.saturating_add(idle)))?;
                Rotated::Rotated(grant)
            }
            (_, Some(r)) => {
                let used_time: Option<i64> = r.try_get("used_time")?;
                if used_time.is_some() {
                    let family: String = r.try_get("family_id")?;
                    sqlx::query("DELETE FROM refresh_tokens WHERE tenant = $1 AND family_id = $2")
                        .bind(tenant)
                        .bind(&family)
                        .execute(&mut *tx)
                        .await?;
                    Rotated::Reused { user_id: r.try_get("user_id")? }
                } else {
                    Rotated::Unknown
                }
            }
            _ => Rotated::Unknown,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Revokes the family of a refresh token issued to `client_id`. Another client's token
    /// is left alone (RFC 7009 2.1: the revocation is refused).
    pub async fn revoke_refresh_token(
        &self,
        tenant: &str,
        token_hash: &str,
        client_id: &str,
    ) -> Result<Revoked, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let owner: Option<String> =
            sqlx::query("SELECT client_id FROM refresh_tokens WHERE tenant = $1 AND token_hash = $2")
                .bind(tenant)
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("client_id"))
                .transpose()?;
        let outcome = match owner {
            None => Revoked::Unknown,
            Some(owner) if owner != client_id => Revoked::OtherClient,
            Some(_) => {
                sqlx::query(
                    "DELETE FROM refresh_tokens WHERE tenant = $1 AND family_id IN (SELECT family_id FROM \
                     refresh_tokens WHERE tenant = $1 AND token_hash = $2 AND client_id = $3)",
                )
                .bind(tenant)
                .bind(token_hash)
                .bind(client_id)
                .execute(&mut *tx)
                .await?;
                Revoked::Revoked
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Forgets the codes and refresh tokens of a deleted client; how many rows went.
    pub async fn delete_client_grants(&self, tenant: &str, client_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let mut n = 0;
        for sql in [
            "DELETE FROM refresh_tokens WHERE tenant = $1 AND client_id = $2",
            "DELETE FROM authorization_codes WHERE tenant = $1 AND client_id = $2",
            "DELETE FROM login_transactions WHERE tenant = $1 AND client_id = $2",
            "DELETE FROM upstream_transactions WHERE tenant = $1 AND client_id = $2",
        ] {
            n += sqlx::query(sql).bind(tenant).bind(client_id).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes what has expired by `now` (transactions, codes, sessions, refresh tokens);
    /// how many rows went. Used codes are kept until they expire, to detect replays.
    pub async fn prune_oauth(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let mut n = 0;
        for sql in [
            "DELETE FROM login_transactions WHERE expire_time <= $1",
            "DELETE FROM upstream_transactions WHERE expire_time <= $1",
            "DELETE FROM upstream_one_time_ids WHERE expire_time <= $1",
            "DELETE FROM authorization_codes WHERE expire_time <= $1",
            "DELETE FROM sso_sessions WHERE idle_expire <= $1 OR absolute_expire <= $1",
            "DELETE FROM refresh_tokens WHERE family_expire <= $1 OR (used_time IS NULL AND expire_time <= $1)",
        ] {
            n += sqlx::query(sql).bind(now).execute(&mut *tx).await?.rows_affected();
        }
        // The clients of sessions gone by now, however they went.
        n += sqlx::query(
            "DELETE FROM sso_session_clients WHERE NOT EXISTS (SELECT 1 FROM sso_sessions s \
             WHERE s.tenant = sso_session_clients.tenant AND s.id_hash = sso_session_clients.session_hash)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
