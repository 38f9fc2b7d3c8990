//! The authenticator's storage: users, identities, password hashes and their history,
//! brute-force counters and signing keys, on SQLite or PostgreSQL through
//! [`postern_common::db::Db`]; the OpenID provider's transactions, codes, sessions and
//! refresh tokens in [`oauth`].

use postern_common::db::{Backend, Db, DbError, DbLocation, Migrations, SchemaPolicy, is_unique_violation};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use std::sync::Arc;

use crate::attempts::{Attempt, InFlight, Key};
use crate::bruteforce::Outcome;
use crate::domain::{Asserted, Identity, Profile, ProfileSync, User, UserPatch};

pub mod linking;
pub mod oauth;
pub mod passwordless;
pub mod rotation;
pub mod upstream;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The authn service's migrations, for both backends (`postern migrate` applies them).
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// What can go wrong in the store, as the API needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with the same unique key exists (email, username, user id, current key).
    #[error("already exists")]
    AlreadyExists,
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The upstream login transaction a login's write uses up is gone (another callback
    /// with the same state completed it): nothing was written.
    #[error("the login transaction was already used")]
    Used,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A new identity, with the user it belongs to when that user is new.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// `auth0|<id>`.
    pub user_id: String,
    /// The root attributes to start with.
    pub profile: Profile,
    /// Initial user_metadata.
    pub user_metadata: Map<String, Value>,
    /// Initial app_metadata.
    pub app_metadata: Map<String, Value>,
}

/// How a login changes an existing identity and its user.
#[derive(Debug, Clone)]
pub struct LoginUpdate<'a> {
    /// The end user's address.
    pub ip: &'a str,
    /// New root attributes (sync), or `None` to leave them.
    pub profile: Option<&'a Profile>,
    /// Which of `profile`'s attributes the source asserts: only those are written.
    pub asserted: Asserted,
    /// The profile the source sent, for `profile_data`; `None` leaves it.
    pub profile_data: Option<&'a Value>,
    /// The connection's current sync mode.
    pub profile_sync: ProfileSync,
    /// Whether the profile comes from outside Postern.
    pub external: bool,
    /// A new password hash (import or rehash); `None` leaves it.
    pub password_hash: Option<&'a str>,
    /// The brute-force count this successful login clears (user key and address), in the
    /// same transaction: see [`Store::settle`].
    pub clear_failures: Option<(&'a str, &'a str)>,
    /// Whether the identity's row already holds `profile_sync` and `external`, as found
    /// when the password was checked: with no profile data or hash to write either, the
    /// row is left as it is.
    pub identity_current: bool,
    /// The user's identities as read when the password was checked
    /// ([`Store::find_login_from`]): a login that writes none of them answers these.
    pub identities: Option<&'a [Identity]>,
    /// The session and code of a browser login, written in the same transaction (nothing
    /// of the login is written when it cannot be).
    pub grant: Option<&'a oauth::LoginGrant<'a>>,
}

impl LoginUpdate<'_> {
    /// Whether the login writes nothing but the user's login counters.
    fn counters_only(&self) -> bool {
        self.profile.is_none()
            && self.profile_data.is_none()
            && self.password_hash.is_none()
            && self.clear_failures.is_none()
            && self.identity_current
            && self.grant.is_none()
    }
}

/// What [`Store::find_login_from`] found.
#[derive(Debug, Clone)]
pub struct LoginFound {
    /// The user's id.
    pub user_id: String,
    /// The identity the login names.
    pub identity: Identity,
    /// Every identity of the user.
    pub identities: Vec<Identity>,
    /// On SQLite, the failures stored for the user and the address, for
    /// [`Store::admit`]; `None` on PostgreSQL.
    pub stored: Option<Stored>,
}

/// Failures read from the table outside a turn, with the epoch of failure writes before
/// the read: usable for an admission while no failure was written since.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    failures: u32,
    epoch: u64,
}

/// What [`Store::record_login`] found.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The login was recorded: the user as it is now.
    Login(Box<User>),
    /// The user is blocked (`UpdateUser` set `blocked`): nothing was recorded.
    Blocked,
    /// The user is gone (deleted while logging in): nothing was recorded.
    Missing,
}

/// A stored signing key: the private key still sealed.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key id.
    pub kid: String,
    /// `RS256` or `EdDSA`.
    pub alg: String,
    /// PKCS#8 sealed under the master key.
    pub sealed_key: Vec<u8>,
    /// Creation, unix microseconds.
    pub create_time: i64,
    /// When it signs from, unix microseconds; `None` for the tenant's next key.
    pub activate_time: Option<i64>,
    /// When it stops signing, unix microseconds; `None` while no rotation replaced it.
    pub retire_time: Option<i64>,
}

/// What a rotation makes sign: the tenant's next key, or a new key that replaces it (the
/// next key has another algorithm, or there is none).
#[derive(Debug, Clone)]
pub enum Promoted<'a> {
    /// The next key, by id.
    Next(&'a str),
    /// A new key, inserted scheduled; the unscheduled next key (if any) is dropped, since
    /// it never signed anything.
    Replacement(&'a StoredKey),
}

/// Why a rotation was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RotationRefused {
    /// A rotation already scheduled a key that does not sign yet; it signs from this time.
    #[error("a rotation is already scheduled")]
    Pending(i64),
    /// The next key changed meanwhile (another rotation won).
    #[error("the next key changed meanwhile")]
    Raced,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RotationRefused {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The columns of a stored signing key.
const KEY_COLUMNS: &str = "kid, alg, sealed_key, create_time, activate_time, retire_time";

fn stored_key(r: &AnyRow) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        kid: r.try_get("kid")?,
        alg: r.try_get("alg")?,
        sealed_key: r.try_get("sealed_key")?,
        create_time: r.try_get("create_time")?,
        activate_time: r.try_get("activate_time")?,
        retire_time: r.try_get("retire_time")?,
    })
}

/// The authenticator's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// On SQLite, the login attempts in flight (see [`attempts`](crate::attempts)); on
    /// PostgreSQL, `None`: they are counted in the table.
    in_flight: Option<Arc<InFlight>>,
    /// The audit events waiting for delivery to the tenant service's audit log.
    outbox: postern_common::audit::Outbox,
    /// The audit events the next change through this handle writes with it, in its
    /// transaction ([`Store::auditing`]).
    audit: Arc<[postern_proto::tenant::v1::AuditEvent]>,
}

/// An admitted login attempt (brute-force protection), to settle with
/// [`Store::settle`] or, once a login's record cleared its count, [`Store::recorded`].
/// Dropped unsettled, it counts as a failure on PostgreSQL (the count was written in
/// advance) and as no attempt on SQLite.
#[derive(Debug)]
pub struct Admitted {
    tenant: String,
    user_key: String,
    address: String,
    local: Option<Attempt>,
    /// On PostgreSQL, the count the admission wrote (this attempt included).
    counted: Option<u32>,
    /// The failures that block.
    max: u32,
}

/// What [`Store::settle`] did besides settling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// The handle's audit events ([`Store::auditing`]) were written with the settlement's
    /// own write, and the block event too when it blocked. `false` when the settlement wrote
    /// nothing (on PostgreSQL a failure was counted in advance; nothing is written for a
    /// success through this path's caller, or for a check that did not happen on SQLite).
    pub audited: bool,
    /// This failure is the one that blocks the user from the address (the count reached
    /// the maximum): once per block, however many attempts ran at once.
    pub blocked: bool,
}

impl Admitted {
    /// The user key and address whose count a successful login clears
    /// ([`LoginUpdate::clear_failures`]); `None` when the table held no failure for them as
    /// the attempt was admitted (on SQLite, where it holds only settled failures). A failure
    /// settled meanwhile by a concurrent attempt then stays: the two overlapped, and it
    /// counts as the later.
    pub fn clear(&self) -> Option<(&str, &str)> {
        let nothing_stored = self.local.as_ref().is_some_and(|a| a.stored_at_admission() == 0);
        (!nothing_stored).then_some((&self.user_key, &self.address))
    }
}

/// Clears the brute-force count of a user key and an address (a success).
const CLEAR_FAILURES: &str = "DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2 AND address = $3";
const USER_COLUMNS: &str = "user_id, seq, email, email_verified, username, name, given_name, family_name, \
     nickname, picture, phone_number, phone_verified, user_metadata, app_metadata, blocked, last_login, last_ip, \
     logins_count, create_time, update_time";
const IDENTITY_COLUMNS: &str = "connection_id, source_id, user_id, connection, strategy, is_social, login_email, \
     login_username, profile_data, profile_sync, external, password_hash";

/// A value of a column a login's profile sets.
enum Column<'a> {
    Text(&'a str),
    Owned(String),
    Flag(bool),
}

impl Store {
    /// Opens the store at `location`, running its migrations.
    pub async fn open(location: &DbLocation) -> Result<Self, DbError> {
        Self::open_with(location, SchemaPolicy::Migrate).await
    }

    /// Opens the store at `location`, migrating it or refusing a schema that is behind, per
    /// `policy`.
    pub async fn open_with(location: &DbLocation, policy: SchemaPolicy) -> Result<Self, DbError> {
        let db = Db::open_with(location, MIGRATIONS, policy).await?;
        let in_flight = (db.backend() == Backend::Sqlite).then(|| Arc::new(InFlight::new()));
        let outbox = postern_common::audit::Outbox::new(db.clone());
        Ok(Self { db, in_flight, outbox, audit: Arc::new([]) })
    }

    /// This store, writing `events` into the audit outbox in the transaction of the change
    /// it makes next (`create_user`, `update_user`, `delete_user`, `set_password`,
    /// `unblock`): the events are durable exactly when the change is.
    pub fn auditing(&self, events: Vec<postern_proto::tenant::v1::AuditEvent>) -> Self {
        Self { audit: events.into(), ..self.clone() }
    }

    /// The audit outbox, whose relay the authenticator starts.
    pub fn outbox(&self) -> &postern_common::audit::Outbox {
        &self.outbox
    }

    /// Writes this handle's audit events in `tx` (see [`Store::auditing`]).
    fn write_audit(&self, tx: &mut postern_common::db::WriteTx) -> Result<(), StoreError> {
        if !self.audit.is_empty() {
            self.outbox.write(tx, &self.audit)?;
        }
        Ok(())
    }

    /// Adds this handle's audit events to `statements`, a write transaction's
    /// ([`oauth::write_together`]); [`audit_committed`](Self::audit_committed) once it committed.
    fn push_audit(&self, statements: &mut postern_common::db::Together) -> Result<(), StoreError> {
        if !self.audit.is_empty() {
            self.outbox.push(statements, &self.audit)?;
        }
        Ok(())
    }

    /// Wakes the outbox's relay after a transaction that wrote this handle's events.
    fn audit_committed(&self) {
        if !self.audit.is_empty() {
            self.outbox.committed();
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The database, for the management port's readiness check and pool gauges.
    pub fn db(&self) -> &Db {
        &self.db
    }

    // ---- users and identities ----

    /// Creates a user with its first identity, atomically. [`StoreError::AlreadyExists`] if
    /// the connection has that login email or username, or the user id is taken.
    pub async fn create_user(
        &self,
        tenant: &str,
        user: &NewUser,
        identity: &Identity,
        ip: Option<&str>,
    ) -> Result<User, StoreError> {
        self.create_user_with_grant(tenant, user, identity, ip, None).await
    }

    /// [`Store::create_user`], with a browser login's session and code (`grant`) written in
    /// the same transaction: the user is created with its first login, or not at all
    /// ([`StoreError::Used`] when the grant's login transaction is gone).
    pub async fn create_user_with_grant(
        &self,
        tenant: &str,
        user: &NewUser,
        identity: &Identity,
        ip: Option<&str>,
        grant: Option<&oauth::LoginGrant<'_>>,
    ) -> Result<User, StoreError> {
        let now = postern_common::time::now_micros();
        let mut tx = oauth::begin_using_up(&self.db, tenant, grant).await?;
        let p = &user.profile;
        sqlx::query(
            "INSERT INTO users (tenant, user_id, seq, email, email_lower, email_verified, username, name, given_name, \
             family_name, nickname, picture, user_metadata, app_metadata, blocked, last_login, last_ip, logins_count, \
             create_time, update_time, phone_number, phone_verified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16, $17, $18, $18, $19, $20)",
        )
        .bind(tenant)
        .bind(&user.user_id)
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
        .bind(json_text(&user.user_metadata))
        .bind(json_text(&user.app_metadata))
        .bind(ip.map(|_| now))
        .bind(ip.unwrap_or(""))
        .bind(i64::from(ip.is_some()))
        .bind(now)
        .bind(&p.phone_number)
        .bind(i64::from(p.phone_verified))
        .execute(&mut *tx)
        .await
        .map_err(dup)?;
        insert_identity(&mut tx, tenant, &user.user_id, identity, now).await?;
        if let Some(g) = grant {
            let at = (identity.connection_id.as_str(), identity.source_id.as_str());
            oauth::insert_grant_in(tx.deferred(), tenant, &user.user_id, Some(at), g)?;
        }
        self.write_audit(&mut tx)?;
        tx.commit().await?;
        self.audit_committed();
        self.get_user(tenant, &user.user_id).await?.ok_or_else(|| StoreError::Corrupt("user vanished".into()))
    }

    /// What a login by `login` (lowercased email or username) from `address` needs, in one
    /// read: the identity, every identity of its user, and the brute-force failures stored
    /// for the user and address.
    pub async fn find_login_from(
        &self,
        tenant: &str,
        connection_id: &str,
        login: &str,
        address: &str,
    ) -> Result<Option<LoginFound>, StoreError> {
        if login.is_empty() {
            return Ok(None);
        }
        // Taken before the read: a failure written after it makes the read's count too old.
        let epoch = self.in_flight.as_ref().map(|f| f.epoch());
        let rows = sqlx::query(sqlx::AssertSqlSafe(find_login_sql()))
            .bind(tenant)
            .bind(connection_id)
            .bind(login)
            .bind(address)
            .fetch_all(self.db.pool())
            .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let failures: Option<i64> = first.try_get("failures")?;
        let Some((user_id, identity, identities)) = user_identities(&rows, |i| {
            i.connection_id == connection_id && (i.login_email == login || i.login_username == login)
        })?
        else {
            return Ok(None);
        };
        let stored = epoch.map(|epoch| Stored { failures: u32::try_from(failures.unwrap_or(0)).unwrap_or(0), epoch });
        Ok(Some(LoginFound { user_id, identity, identities, stored }))
    }

    /// The identity `source_id` of a connection, with its user id.
    pub async fn find_identity(
        &self,
        tenant: &str,
        connection_id: &str,
        source_id: &str,
    ) -> Result<Option<(String, Identity)>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE tenant = $1 AND connection_id = $2 AND source_id = $3"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(connection_id)
            .bind(source_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| Ok((r.try_get("user_id")?, identity_from_row(&r)?))).transpose()
    }

    /// The identity `source_id` of a connection, with its user id and every identity of its
    /// user (oldest first), in one read.
    pub async fn find_identity_of_user(
        &self,
        tenant: &str,
        connection_id: &str,
        source_id: &str,
    ) -> Result<Option<(String, Identity, Vec<Identity>)>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities i WHERE i.tenant = $1 AND i.user_id = \
             (SELECT m.user_id FROM identities m WHERE m.tenant = $1 AND m.connection_id = $2 AND m.source_id = $3) \
             ORDER BY i.create_time, i.connection"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(connection_id)
            .bind(source_id)
            .fetch_all(self.db.pool())
            .await?;
        user_identities(&rows, |i| i.connection_id == connection_id && i.source_id == source_id)
    }

    /// Records a successful login on an existing identity, in one transaction: counts it on
    /// the user, applies `update`, clears the brute-force count it names, writes its grant
    /// (the login transaction used up first: [`StoreError::Used`] when it is gone) and
    /// this handle's audit events ([`Store::auditing`]). A blocked or vanished user is left
    /// untouched, and nothing of the grant or the events is written.
    pub async fn record_login(
        &self,
        tenant: &str,
        user_id: &str,
        connection_id: &str,
        source_id: &str,
        update: &LoginUpdate<'_>,
    ) -> Result<Recorded, StoreError> {
        let now = postern_common::time::now_micros();
        if update.counters_only() {
            let count = format!(
                "UPDATE users SET last_login = $3, last_ip = $4, logins_count = logins_count + 1, update_time = $3 \
                 WHERE tenant = $1 AND user_id = $2 AND blocked = 0 RETURNING {USER_COLUMNS}"
            );
            // The usual login: one statement, durable on its own (with its audit events, in
            // one transaction: still one commit), then a read.
            let counting = |count: String| {
                sqlx::query(sqlx::AssertSqlSafe(count)).bind(tenant).bind(user_id).bind(now).bind(update.ip)
            };
            let row = if self.audit.is_empty() {
                counting(count).fetch_optional(self.db.writer()).await?
            } else {
                // The statement and, only if it counted the login, the events: one hand-off.
                let mut statements = postern_common::db::Together::default();
                statements.push_expecting_one(counting(count))?;
                self.push_audit(&mut statements)?;
                match oauth::write_together(&self.db, statements).await? {
                    Ok(answers) => {
                        self.audit_committed();
                        answers.into_iter().next().and_then(|a| a.rows.into_iter().next())
                    }
                    Err(_) => None,
                }
            };
            let Some(row) = row else {
                return self.not_recorded(self.db.pool(), tenant, user_id).await;
            };
            let identities = match update.identities {
                Some(known) => known.to_vec(),
                None => identities_of(self.db.pool(), tenant, user_id).await?,
            };
            return Ok(Recorded::Login(Box::new(user_of(&row, identities)?)));
        }
        // The login transaction used up (when the grant names one), then the profile the login
        // asserts and the login's counters in one statement, then the rest of the login.
        let profile: Vec<(&str, Column<'_>)> = match (update.profile, update.asserted) {
            (None, _) => Vec::new(),
            (Some(p), Asserted::Profile) => vec![
                ("email", Column::Text(&p.email)),
                ("email_lower", Column::Owned(p.email.to_lowercase())),
                ("email_verified", Column::Flag(p.email_verified)),
                ("username", Column::Text(&p.username)),
                ("name", Column::Text(&p.name)),
                ("given_name", Column::Text(&p.given_name)),
                ("family_name", Column::Text(&p.family_name)),
                ("nickname", Column::Text(&p.nickname)),
                ("picture", Column::Text(&p.picture)),
                ("phone_number", Column::Text(&p.phone_number)),
                ("phone_verified", Column::Flag(p.phone_verified)),
            ],
            (Some(p), Asserted::Email) => vec![
                ("email", Column::Text(&p.email)),
                ("email_lower", Column::Owned(p.email.to_lowercase())),
                ("email_verified", Column::Flag(p.email_verified)),
            ],
            (Some(p), Asserted::Phone) => {
                vec![
                    ("phone_number", Column::Text(&p.phone_number)),
                    ("phone_verified", Column::Flag(p.phone_verified)),
                ]
            }
        };
        let sets: String = profile.iter().enumerate().map(|(i, (c, _))| format!("{c} = ${}, ", i + 5)).collect();
        let count_with_profile = format!(
            "UPDATE users SET {sets}last_login = $3, last_ip = $4, logins_count = logins_count + 1, update_time = $3 \
             WHERE tenant = $1 AND user_id = $2 AND blocked = 0 RETURNING {USER_COLUMNS}"
        );
        let mut counting =
            sqlx::query(sqlx::AssertSqlSafe(count_with_profile)).bind(tenant).bind(user_id).bind(now).bind(update.ip);
        for (_, value) in profile {
            counting = match value {
                Column::Text(v) => counting.bind(v),
                Column::Owned(v) => counting.bind(v),
                Column::Flag(v) => counting.bind(i64::from(v)),
            };
        }
        let mut statements = postern_common::db::Together::default();
        let taking = update.grant.and_then(|g| oauth::using_up(tenant, g));
        let takes = taking.is_some();
        if let Some(taking) = taking {
            statements.push_expecting_one(taking)?;
        }
        statements.push_expecting_one(counting)?;
        // The identity's row, unless the login changes nothing in it (a returning user whose
        // source sent the same profile as last time): one statement less while the writer is
        // held. Its upstream tokens, when the grant keeps them, in the same statement.
        let identity_unchanged = update.identity_current
            && update.profile_data.is_none()
            && update.password_hash.is_none()
            && update.grant.is_none_or(|g| g.upstream_tokens.is_none());
        if !identity_unchanged {
            statements.push(
                sqlx::query(
                    "UPDATE identities SET profile_data = COALESCE($4, profile_data), profile_sync = $5, \
                     external = $6, password_hash = COALESCE($7, password_hash), update_time = $8, \
                     upstream_tokens = COALESCE($9, upstream_tokens) \
                     WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
                )
                .bind(tenant)
                .bind(connection_id)
                .bind(source_id)
                .bind(update.profile_data.map(Value::to_string))
                .bind(sync_code(update.profile_sync))
                .bind(i64::from(update.external))
                .bind(update.password_hash)
                .bind(now)
                .bind(update.grant.and_then(|g| g.upstream_tokens)),
            )?;
        }
        if let Some((user_key, address)) = update.clear_failures {
            statements.push(sqlx::query(CLEAR_FAILURES).bind(tenant).bind(user_key).bind(address))?;
        }
        if let Some(g) = update.grant {
            // No identity: its upstream tokens are written above.
            oauth::insert_grant_in(&mut statements, tenant, user_id, None, g)?;
        }
        self.push_audit(&mut statements)?;
        // All of it in one hand-off to SQLite's thread; the statements after the login
        // transaction's use run only if it was there, those after the count only if the user
        // was (a blocked or vanished user matches no row).
        let row = match oauth::write_together(&self.db, statements).await? {
            Ok(answers) => answers.into_iter().nth(usize::from(takes)).and_then(|a| a.rows.into_iter().next()),
            Err(0) if takes => return Err(StoreError::Used),
            Err(_) => None,
        };
        let Some(row) = row else {
            return self.not_recorded(self.db.pool(), tenant, user_id).await;
        };
        self.audit_committed();
        // The identities as they are now, read once the writer is free (or as they were read
        // before the login, when it wrote none of them).
        let identities = match update.identities {
            Some(known) if identity_unchanged => known.to_vec(),
            _ => identities_of(self.db.pool(), tenant, user_id).await?,
        };
        Ok(Recorded::Login(Box::new(user_of(&row, identities)?)))
    }

    /// Why a login's counting statement matched no user: blocked, or gone.
    async fn not_recorded<'e, E>(&self, executor: E, tenant: &str, user_id: &str) -> Result<Recorded, StoreError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let exists = sqlx::query("SELECT 1 FROM users WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .fetch_optional(executor)
            .await?
            .is_some();
        Ok(if exists { Recorded::Blocked } else { Recorded::Missing })
    }

    /// A user with its identities.
    pub async fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| user_with_identities_sql("u.tenant = $1 AND u.user_id = $2"));
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(SQL.as_str())).bind(tenant).bind(user_id).fetch_all(self.db.pool()).await?;
        user_from_rows(&rows)
    }

    /// Up to `limit` users after position `after`, oldest first, each with its position;
    /// only those with an identity in `connection` (by name) and with `email` when given.
    pub async fn list_users(
        &self,
        tenant: &str,
        connection: Option<&str>,
        email: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, User)>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant = $1 AND u.seq > $2 \
             AND ($3 = '' OR u.email_lower = $3) \
             AND ($4 = '' OR EXISTS (SELECT 1 FROM identities i WHERE i.tenant = u.tenant AND i.user_id = u.user_id \
                                     AND i.connection = $4)) \
             ORDER BY u.seq LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(email.map(str::to_lowercase).unwrap_or_default())
            .bind(connection.unwrap_or(""))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.db.pool())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((r.try_get("seq")?, self.user_from_row(tenant, r).await?));
        }
        Ok(out)
    }

    /// Applies `patch` to a user; `None` if there is no such user. A new email or username
    /// also becomes the login name of the user's identities in Postern's own database
    /// connections ([`StoreError::AlreadyExists`] if another user there has it).
    pub async fn update_user(
        &self,
        tenant: &str,
        user_id: &str,
        patch: &UserPatch,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        for (column, value) in [("login_email", &patch.email), ("login_username", &patch.username)] {
            if let Some(value) = value {
                let sql = format!(
                    "UPDATE identities SET {column} = $3 WHERE tenant = $1 AND user_id = $2 AND strategy = 'auth0' \
                     AND external = 0 AND password_hash IS NOT NULL"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(user_id)
                    .bind(value.trim().to_lowercase())
                    .execute(&mut *tx)
                    .await
                    .map_err(dup)?;
            }
        }
        let done = sqlx::query(
            "UPDATE users SET email = COALESCE($3, email), email_lower = COALESCE($4, email_lower), \
             email_verified = COALESCE($5, email_verified), username = COALESCE($6, username), \
             name = COALESCE($7, name), given_name = COALESCE($8, given_name), \
             family_name = COALESCE($9, family_name), nickname = COALESCE($10, nickname), \
             picture = COALESCE($11, picture), user_metadata = COALESCE($12, user_metadata), \
             app_metadata = COALESCE($13, app_metadata), blocked = COALESCE($14, blocked), update_time = $15 \
             WHERE tenant = $1 AND user_id = $2",
        )
        .bind(tenant)
        .bind(user_id)
        .bind(patch.email.as_deref())
        .bind(patch.email.as_deref().map(str::to_lowercase))
        .bind(patch.email_verified.map(i64::from))
        .bind(patch.username.as_deref())
        .bind(patch.name.as_deref())
        .bind(patch.given_name.as_deref())
        .bind(patch.family_name.as_deref())
        .bind(patch.nickname.as_deref())
        .bind(patch.picture.as_deref())
        .bind(patch.user_metadata.as_ref().map(json_text))
        .bind(patch.app_metadata.as_ref().map(json_text))
        .bind(patch.blocked.map(i64::from))
        .bind(postern_common::time::now_micros())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.write_audit(&mut tx)?;
        tx.commit().await?;
        self.audit_committed();
        self.get_user(tenant, user_id).await
    }

    /// Deletes a user with its identities, password history and counters; whether it existed.
    pub async fn delete_user(&self, tenant: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.delete_user_ending_sessions(tenant, user_id).await?.is_some())
    }

    /// [`Store::delete_user`], answering, when the user existed, its SSO sessions that ended
    /// with it: each the digest of its cookie and the clients that got a code in it.
    pub async fn delete_user_ending_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Vec<(String, Vec<String>)>>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let sessions = oauth::take_user_session_clients(&mut tx, tenant, user_id).await?;
        sqlx::query(
            "DELETE FROM password_history WHERE tenant = $1 AND EXISTS (SELECT 1 FROM identities i \
             WHERE i.tenant = password_history.tenant AND i.connection_id = password_history.connection_id \
             AND i.source_id = password_history.source_id AND i.user_id = $2)",
        )
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM identities WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for sql in oauth::DELETE_USER_GRANTS {
            sqlx::query(sql).bind(tenant).bind(user_id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM users WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            self.write_audit(&mut tx)?;
        }
        tx.commit().await?;
        self.audit_committed();
        self.reload_failures(|k| k.tenant == tenant && k.user_key == user_id);
        Ok((done.rows_affected() > 0).then_some(sessions))
    }

    /// Deletes every identity of a connection, and the users left with none. Answers how
    /// many identities and users went.
    pub async fn delete_connection(&self, tenant: &str, connection_id: &str) -> Result<(u64, u64), StoreError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM passwordless_codes WHERE tenant = $1 AND connection_id = $2")
            .bind(tenant)
            .bind(connection_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM password_history WHERE tenant = $1 AND connection_id = $2")
            .bind(tenant)
            .bind(connection_id)
            .execute(&mut *tx)
            .await?;
        let affected: Vec<String> =
            sqlx::query("SELECT DISTINCT user_id FROM identities WHERE tenant = $1 AND connection_id = $2")
                .bind(tenant)
                .bind(connection_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("user_id"))
                .collect::<Result<_, _>>()?;
        let identities = sqlx::query("DELETE FROM identities WHERE tenant = $1 AND connection_id = $2")
            .bind(tenant)
            .bind(connection_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut users = 0;
        for user_id in &affected {
            let gone = sqlx::query(
                "DELETE FROM users WHERE tenant = $1 AND user_id = $2 AND NOT EXISTS \
                 (SELECT 1 FROM identities i WHERE i.tenant = $1 AND i.user_id = $2)",
            )
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone > 0 {
                for sql in oauth::DELETE_USER_GRANTS {
                    sqlx::query(sql).bind(tenant).bind(user_id).execute(&mut *tx).await?;
                }
            }
            users += gone;
            sqlx::query(
                "DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2 AND NOT EXISTS \
                         (SELECT 1 FROM users u WHERE u.tenant = $1 AND u.user_id = $2)",
            )
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.reload_failures(|k| k.tenant == tenant && affected.contains(&k.user_key));
        Ok((identities, users))
    }

    /// Records a connection's new profile-sync mode on its identities.
    pub async fn set_connection_sync(
        &self,
        tenant: &str,
        connection_id: &str,
        sync: ProfileSync,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET profile_sync = $3 WHERE tenant = $1 AND connection_id = $2 AND profile_sync <> $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(sync_code(sync))
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The tenants and connections that identities refer to, to check against the registry.
    pub async fn identity_connections(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT tenant, connection_id FROM identities ORDER BY tenant, connection_id")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("tenant")?, r.try_get("connection_id")?))).collect()
    }

    // ---- the tenant service's deletions ----

    /// The sequence of the last tenant event applied.
    pub async fn tenant_events_cursor(&self) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT sequence FROM tenant_events_cursor WHERE id = 1").fetch_one(self.db.pool()).await?;
        Ok(row.try_get("sequence")?)
    }

    /// Applies tenant event `sequence`. For a deleted tenant (`deleted`: its name and the
    /// time of its deletion, unix microseconds), forgets everything of it made before that
    /// time (users with their identities and password history, signing keys) and its
    /// brute-force counters, so that a tenant created later under the same name starts
    /// empty and cannot inherit keys; what that later tenant made is kept, even when the
    /// event is applied late. Moves the cursor in the same transaction; an event already
    /// applied is a no-op. Answers whether a deletion was applied.
    pub async fn apply_tenant_event(&self, sequence: i64, deleted: Option<(&str, i64)>) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let moved = sqlx::query("UPDATE tenant_events_cursor SET sequence = $1 WHERE id = 1 AND sequence < $1")
            .bind(sequence)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        if let Some((tenant, before)) = deleted {
            let statements = [
                "DELETE FROM password_history WHERE tenant = $1 AND EXISTS (SELECT 1 FROM identities i \
                 JOIN users u ON u.tenant = i.tenant AND u.user_id = i.user_id \
                 WHERE i.tenant = password_history.tenant AND i.connection_id = password_history.connection_id \
                 AND i.source_id = password_history.source_id AND u.create_time <= $2)",
                "DELETE FROM identities WHERE tenant = $1 AND user_id IN \
                 (SELECT user_id FROM users WHERE tenant = $1 AND create_time <= $2)",
                "DELETE FROM users WHERE tenant = $1 AND create_time <= $2",
                "DELETE FROM signing_keys WHERE tenant = $1 AND create_time <= $2",
                "DELETE FROM login_failures WHERE tenant = $1 AND $2 = $2",
            ];
            for sql in
                statements.into_iter().chain(oauth::DELETE_TENANT_GRANTS).chain(passwordless::DELETE_TENANT_CODES)
            {
                sqlx::query(sql).bind(tenant).bind(before).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        if let Some((tenant, _)) = deleted {
            self.reload_failures(|k| k.tenant == tenant);
        }
        Ok(deleted.is_some())
    }

    // ---- passwords ----

    /// Replaces an identity's password hash, keeping the old one in the history (at most
    /// `keep` entries), and lifts the user's brute-force blocks.
    pub async fn set_password(
        &self,
        tenant: &str,
        user_id: &str,
        connection_id: &str,
        source_id: &str,
        hash: &str,
        keep: usize,
    ) -> Result<(), StoreError> {
        let now = postern_common::time::now_micros();
        let mut tx = self.db.begin_write().await?;
        let old: Option<Option<String>> = sqlx::query(
            "SELECT password_hash FROM identities WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("password_hash"))
        .transpose()?;
        if let Some(Some(old)) = old {
            sqlx::query(
                "INSERT INTO password_history (tenant, connection_id, source_id, seq, password_hash, create_time) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(connection_id)
            .bind(source_id)
            .bind(postern_common::ids::new_id())
            .bind(&old)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Keep only the newest `keep` past hashes.
        sqlx::query(
            "DELETE FROM password_history WHERE tenant = $1 AND connection_id = $2 AND source_id = $3 AND seq NOT IN \
             (SELECT seq FROM password_history WHERE tenant = $1 AND connection_id = $2 AND source_id = $3 \
              ORDER BY seq DESC LIMIT $4)",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .bind(i64::try_from(keep).unwrap_or(0))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE identities SET password_hash = $4, update_time = $5 \
             WHERE tenant = $1 AND connection_id = $2 AND source_id = $3",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE users SET update_time = $3 WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        self.write_audit(&mut tx)?;
        tx.commit().await?;
        self.audit_committed();
        self.reload_failures(|k| k.tenant == tenant && k.user_key == user_id);
        Ok(())
    }

    /// The current hash then the past ones, newest first.
    pub async fn password_history(
        &self,
        tenant: &str,
        connection_id: &str,
        source_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        if let Some((_, identity)) = self.find_identity(tenant, connection_id, source_id).await?
            && let Some(h) = identity.password_hash
        {
            out.push(h);
        }
        let rows = sqlx::query(
            "SELECT password_hash FROM password_history WHERE tenant = $1 AND connection_id = $2 AND source_id = $3 \
             ORDER BY seq DESC",
        )
        .bind(tenant)
        .bind(connection_id)
        .bind(source_id)
        .fetch_all(self.db.pool())
        .await?;
        for r in rows {
            out.push(r.try_get("password_hash")?);
        }
        Ok(out)
    }

    // ---- brute-force protection (see `bruteforce` for the rule) ----

    /// Admits a login attempt for `user_key` from `address`, counting it as a failure until
    /// it is settled; `None` when `max` failures block it. Exact under concurrency: of any
    /// number of simultaneous attempts, at most `max` are admitted.
    ///
    /// `known` is the count [`find_login_from`](Self::find_login_from) read, used when no
    /// failure was written since (SQLite); otherwise the count is read again.
    pub async fn admit(
        &self,
        tenant: &str,
        user_key: &str,
        address: &str,
        max: u32,
        known: Option<Stored>,
    ) -> Result<Option<Admitted>, StoreError> {
        let admitted = |local, counted| Admitted {
            tenant: tenant.to_owned(),
            user_key: user_key.to_owned(),
            address: address.to_owned(),
            local,
            counted,
            max,
        };
        let Some(in_flight) = &self.in_flight else {
            // Shared by replicas: the advance count is written, atomically.
            let row = sqlx::query(
                "INSERT INTO login_failures (tenant, user_key, address, failures) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (tenant, user_key, address) \
                 DO UPDATE SET failures = login_failures.failures + 1 WHERE login_failures.failures < $4 \
                 RETURNING failures",
            )
            .bind(tenant)
            .bind(user_key)
            .bind(address)
            .bind(i64::from(max))
            .fetch_optional(self.db.writer())
            .await?;
            return row
                .map(|r| {
                    let n: i64 = r.try_get("failures")?;
                    Ok(admitted(None, Some(u32::try_from(n).unwrap_or(u32::MAX))))
                })
                .transpose();
        };
        let key = Key { tenant: tenant.to_owned(), user_key: user_key.to_owned(), address: address.to_owned() };
        let turn = in_flight.turn(&key).await;
        let stored = match (turn.stored(), known) {
            (Some(n), _) => n,
            (None, Some(k)) if k.epoch == in_flight.epoch() => k.failures,
            (None, _) => self.stored_failures(tenant, user_key, address).await?,
        };
        Ok(turn.admit(stored, max).map(|a| admitted(Some(a), None)))
    }

    /// Settles an admitted attempt: a success clears the count, a wrong password keeps its
    /// failure (written now on SQLite, before the caller is answered), and a check that did
    /// not happen gives it back. A failure written now carries this handle's audit events
    /// ([`Store::auditing`]) in its transaction, and `on_block` too when it is the failure
    /// that blocks ([`Settled`]).
    pub async fn settle(
        &self,
        attempt: Admitted,
        outcome: Outcome,
        on_block: Option<&postern_proto::tenant::v1::AuditEvent>,
    ) -> Result<Settled, StoreError> {
        let Admitted { tenant, user_key, address, local, counted, max } = attempt;
        let (Some(in_flight), Some(local)) = (&self.in_flight, local) else {
            let sql = match outcome {
                // Counted in advance: the admission that reached the maximum blocks, once
                // its check failed.
                Outcome::WrongCredentials => {
                    return Ok(Settled { audited: false, blocked: counted.is_some_and(|n| n >= max) });
                }
                Outcome::Success => CLEAR_FAILURES,
                Outcome::NotChecked => {
                    "UPDATE login_failures SET failures = failures - 1 \
                     WHERE tenant = $1 AND user_key = $2 AND address = $3 AND failures > 0"
                }
            };
            sqlx::query(sql).bind(&tenant).bind(&user_key).bind(&address).execute(self.db.writer()).await?;
            return Ok(Settled::default());
        };
        match outcome {
            Outcome::WrongCredentials => {
                let turn = in_flight.turn(local.key()).await;
                let mut tx = self.db.begin_write().await?;
                let failures: i64 = sqlx::query_scalar(
                    "INSERT INTO login_failures (tenant, user_key, address, failures) VALUES ($1, $2, $3, 1) \
                     ON CONFLICT (tenant, user_key, address) DO UPDATE SET failures = login_failures.failures + 1 \
                     RETURNING failures",
                )
                .bind(&tenant)
                .bind(&user_key)
                .bind(&address)
                .fetch_one(&mut *tx)
                .await?;
                // The table holds settled failures only, each added under the key's turn:
                // the count passes the maximum exactly once per block.
                let blocked = failures == i64::from(max);
                self.write_audit(&mut tx)?;
                if let (true, Some(event)) = (blocked, on_block) {
                    self.outbox.write(&mut tx, std::slice::from_ref(event))?;
                }
                tx.commit().await?;
                self.outbox.committed();
                // After the write: a read that began before it must not be trusted.
                in_flight.failure_written();
                turn.failed(local);
                return Ok(Settled { audited: true, blocked });
            }
            Outcome::Success => {
                sqlx::query(CLEAR_FAILURES)
                    .bind(&tenant)
                    .bind(&user_key)
                    .bind(&address)
                    .execute(self.db.writer())
                    .await?;
                local.succeeded();
            }
            Outcome::NotChecked => local.not_checked(),
        }
        Ok(Settled::default())
    }

    /// Settles an attempt whose login [`record_login`](Self::record_login) recorded with
    /// [`LoginUpdate::clear_failures`], which cleared the count in the login's transaction.
    pub fn recorded(&self, attempt: Admitted) {
        if let Some(local) = attempt.local {
            local.succeeded();
        }
    }

    /// The settled failures in the table.
    async fn stored_failures(&self, tenant: &str, user_key: &str, address: &str) -> Result<u32, StoreError> {
        let row =
            sqlx::query("SELECT failures FROM login_failures WHERE tenant = $1 AND user_key = $2 AND address = $3")
                .bind(tenant)
                .bind(user_key)
                .bind(address)
                .fetch_optional(self.db.pool())
                .await?;
        let n: i64 = row.map(|r| r.try_get("failures")).transpose()?.unwrap_or(0);
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// After the table's counts changed outside a turn: forget what this process knew of them.
    fn reload_failures(&self, matches: impl Fn(&Key) -> bool) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.reload(matches);
        }
    }

    /// Lifts every block of `user_key`: answers how many addresses were blocked (`max`
    /// failures or more).
    pub async fn unblock(&self, tenant: &str, user_key: &str, max: u32) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let blocked: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM login_failures WHERE tenant = $1 AND user_key = $2 AND failures >= $3",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(i64::from(max))
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        sqlx::query("DELETE FROM login_failures WHERE tenant = $1 AND user_key = $2")
            .bind(tenant)
            .bind(user_key)
            .execute(&mut *tx)
            .await?;
        self.write_audit(&mut tx)?;
        tx.commit().await?;
        self.audit_committed();
        self.reload_failures(|k| k.tenant == tenant && k.user_key == user_key);
        Ok(u64::try_from(blocked).unwrap_or(0))
    }

    /// The failures counted for `user_key` from `address`, including the attempts admitted
    /// and not yet settled (for tests and diagnostics).
    pub async fn failures(&self, tenant: &str, user_key: &str, address: &str) -> Result<u32, StoreError> {
        let stored = self.stored_failures(tenant, user_key, address).await?;
        let in_flight = self.in_flight.as_ref().map_or(0, |f| {
            f.in_flight(&Key { tenant: tenant.to_owned(), user_key: user_key.to_owned(), address: address.to_owned() })
        });
        Ok(stored + in_flight)
    }

    // ---- signing keys ----

    /// Some stored key and its tenant, to check at start that the master key opens the keys.
    pub async fn any_signing_key(&self) -> Result<Option<(String, StoredKey)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT tenant, {KEY_COLUMNS} FROM signing_keys LIMIT 1")))
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| Ok((r.try_get("tenant")?, stored_key(&r)?))).transpose()
    }

    /// A tenant's keys, newest first.
    pub async fn signing_keys(&self, tenant: &str) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM signing_keys WHERE tenant = $1 ORDER BY create_time DESC"
        )))
        .bind(tenant)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(stored_key).collect()
    }

    /// Adds keys to a tenant in one transaction: its first keys (a current key and its next
    /// key), or a next key to a tenant whose keys predate next keys.
    /// [`StoreError::AlreadyExists`] if the tenant has a next key already (another replica or
    /// call made it meanwhile).
    pub async fn add_signing_keys(&self, tenant: &str, keys: &[&StoredKey]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        for key in keys {
            insert_key(&mut tx, tenant, key).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A rotation at `now`, atomically: `promoted` signs from `activate_at`, the key signing
    /// until then retires at `activate_at`, and `next` becomes the tenant's next key.
    /// Refused while an earlier rotation's key does not sign yet.
    pub async fn rotate_signing_keys(
        &self,
        tenant: &str,
        now: i64,
        activate_at: i64,
        promoted: Promoted<'_>,
        next: &StoredKey,
    ) -> Result<(), RotationRefused> {
        let mut tx = self.db.begin_write().await?;
        let pending: Option<i64> =
            sqlx::query_scalar("SELECT MAX(activate_time) FROM signing_keys WHERE tenant = $1 AND activate_time > $2")
                .bind(tenant)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
        if let Some(at) = pending {
            return Err(RotationRefused::Pending(at));
        }
        let promoted_kid = match promoted {
            Promoted::Next(kid) => {
                let done = sqlx::query(
                    "UPDATE signing_keys SET activate_time = $3 WHERE tenant = $1 AND kid = $2 AND activate_time IS NULL",
                )
                .bind(tenant)
                .bind(kid)
                .bind(activate_at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(RotationRefused::Raced);
                }
                kid
            }
            Promoted::Replacement(key) => {
                sqlx::query("DELETE FROM signing_keys WHERE tenant = $1 AND activate_time IS NULL")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                insert_key(&mut tx, tenant, &StoredKey { activate_time: Some(activate_at), ..key.clone() })
                    .await
                    .map_err(|e| match e {
                        StoreError::AlreadyExists => RotationRefused::Raced,
                        e => e.into(),
                    })?;
                key.kid.as_str()
            }
        };
        sqlx::query(
            "UPDATE signing_keys SET retire_time = $3 \
             WHERE tenant = $1 AND kid <> $2 AND activate_time IS NOT NULL AND retire_time IS NULL",
        )
        .bind(tenant)
        .bind(promoted_kid)
        .bind(activate_at)
        .execute(&mut *tx)
        .await?;
        insert_key(&mut tx, tenant, &StoredKey { activate_time: None, ..next.clone() }).await.map_err(|e| match e {
            StoreError::AlreadyExists => RotationRefused::Raced,
            e => e.into(),
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets retired keys that left the key set before `before`.
    pub async fn prune_signing_keys(&self, tenant: &str, before: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signing_keys WHERE tenant = $1 AND retire_time IS NOT NULL AND retire_time < $2")
            .bind(tenant)
            .bind(before)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    async fn user_from_row(&self, tenant: &str, r: &AnyRow) -> Result<User, StoreError> {
        let user_id: String = r.try_get("user_id")?;
        let identities = identities_of(self.db.pool(), tenant, &user_id).await?;
        user_of(r, identities)
    }
}

/// The query of a user (`u`) whose row meets `condition`, beside each of its identities
/// (`i`, oldest first): one read instead of two. [`user_from_rows`] reads its rows.
pub(super) fn user_with_identities_sql(condition: &str) -> String {
    let columns = |all: &str, alias: &str| {
        all.split(',')
            .map(str::trim)
            .filter(|c| !(alias == "i" && *c == "user_id"))
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT {}, {} FROM users u LEFT JOIN identities i ON i.tenant = u.tenant AND i.user_id = u.user_id \
         WHERE {condition} ORDER BY i.create_time, i.connection",
        columns(USER_COLUMNS, "u"),
        columns(IDENTITY_COLUMNS, "i")
    )
}

/// The user of the rows of a [`user_with_identities_sql`] query, if there are any.
pub(super) fn user_from_rows(rows: &[AnyRow]) -> Result<Option<User>, StoreError> {
    let Some(first) = rows.first() else { return Ok(None) };
    let mut identities = Vec::with_capacity(rows.len());
    for r in rows {
        if r.try_get::<Option<String>, _>("connection_id")?.is_some() {
            identities.push(identity_from_row(r)?);
        }
    }
    Ok(Some(user_of(first, identities)?))
}

/// The identities of a user, oldest first.
/// The rows of one user's identities: the user's id, the identity `found` picks among them,
/// and all of them. `None` for no rows.
fn user_identities(
    rows: &[sqlx::any::AnyRow],
    found: impl Fn(&Identity) -> bool,
) -> Result<Option<(String, Identity, Vec<Identity>)>, StoreError> {
    let Some(first) = rows.first() else { return Ok(None) };
    let user_id: String = first.try_get("user_id")?;
    let identities = rows.iter().map(identity_from_row).collect::<Result<Vec<_>, _>>()?;
    let identity = identities
        .iter()
        .find(|i| found(i))
        .cloned()
        .ok_or_else(|| StoreError::Corrupt("the identity found is not among its user's".into()))?;
    Ok(Some((user_id, identity, identities)))
}

async fn identities_of<'e, E>(executor: E, tenant: &str, user_id: &str) -> Result<Vec<Identity>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE tenant = $1 AND user_id = $2 ORDER BY create_time, connection"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(user_id).fetch_all(executor).await?;
    rows.iter().map(identity_from_row).collect()
}

/// The login's first read ([`Store::find_login_from`]). Each side of the `OR` repeats the
/// partial indexes' condition (`<> ''`) so that both backends search those indexes rather
/// than every identity of the connection.
fn find_login_sql() -> String {
    format!(
        "SELECT {IDENTITY_COLUMNS}, \
         (SELECT f.failures FROM login_failures f WHERE f.tenant = $1 AND f.user_key = i.user_id \
          AND f.address = $4) AS failures \
         FROM identities i WHERE i.tenant = $1 AND i.user_id = \
         (SELECT m.user_id FROM identities m WHERE m.tenant = $1 AND m.connection_id = $2 \
          AND ((m.login_email = $3 AND m.login_email <> '') OR (m.login_username = $3 AND m.login_username <> ''))) \
         ORDER BY i.create_time, i.connection"
    )
}

/// A user from a row of [`USER_COLUMNS`] and its identities, the primary identity (the one
/// the user's id names) first and the linked ones after it, oldest first.
fn user_of(r: &AnyRow, mut identities: Vec<Identity>) -> Result<User, StoreError> {
    let user_id: String = r.try_get("user_id")?;
    identities.sort_by_key(|i| !i.is_primary_of(&user_id));
    Ok(User {
        user_id,
        profile: Profile {
            email: r.try_get("email")?,
            email_verified: r.try_get::<i64, _>("email_verified")? != 0,
            username: r.try_get("username")?,
            name: r.try_get("name")?,
            given_name: r.try_get("given_name")?,
            family_name: r.try_get("family_name")?,
            nickname: r.try_get("nickname")?,
            picture: r.try_get("picture")?,
            phone_number: r.try_get("phone_number")?,
            phone_verified: r.try_get::<i64, _>("phone_verified")? != 0,
        },
        user_metadata: json_map(&r.try_get::<String, _>("user_metadata")?)?,
        app_metadata: json_map(&r.try_get::<String, _>("app_metadata")?)?,
        blocked: r.try_get::<i64, _>("blocked")? != 0,
        last_login: r.try_get("last_login")?,
        last_ip: r.try_get("last_ip")?,
        logins_count: r.try_get("logins_count")?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
        identities,
    })
}

async fn insert_identity(
    tx: &mut postern_common::db::WriteTx,
    tenant: &str,
    user_id: &str,
    i: &Identity,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO identities (tenant, connection_id, source_id, user_id, connection, strategy, is_social, \
         login_email, login_username, profile_data, profile_sync, external, password_hash, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
    )
    .bind(tenant)
    .bind(&i.connection_id)
    .bind(&i.source_id)
    .bind(user_id)
    .bind(&i.connection)
    .bind(&i.strategy)
    .bind(i64::from(i.is_social))
    .bind(&i.login_email)
    .bind(&i.login_username)
    .bind(i.profile_data.to_string())
    .bind(sync_code(i.profile_sync))
    .bind(i64::from(i.external))
    .bind(i.password_hash.as_deref())
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(dup)?;
    Ok(())
}

fn identity_from_row(r: &AnyRow) -> Result<Identity, StoreError> {
    let profile_data: String = r.try_get("profile_data")?;
    Ok(Identity {
        connection_id: r.try_get("connection_id")?,
        connection: r.try_get("connection")?,
        strategy: r.try_get("strategy")?,
        source_id: r.try_get("source_id")?,
        is_social: r.try_get::<i64, _>("is_social")? != 0,
        login_email: r.try_get("login_email")?,
        login_username: r.try_get("login_username")?,
        profile_data: serde_json::from_str(&profile_data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        profile_sync: sync_of_code(&r.try_get::<String, _>("profile_sync")?)?,
        external: r.try_get::<i64, _>("external")? != 0,
        password_hash: r.try_get("password_hash")?,
    })
}

/// Inserts a signing key; [`StoreError::AlreadyExists`] on a second next key.
async fn insert_key(tx: &mut postern_common::db::WriteTx, tenant: &str, key: &StoredKey) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_keys (tenant, kid, alg, sealed_key, create_time, activate_time, retire_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(&key.kid)
    .bind(&key.alg)
    .bind(&key.sealed_key)
    .bind(key.create_time)
    .bind(key.activate_time)
    .bind(key.retire_time)
    .execute(&mut **tx)
    .await
    .map_err(dup)?;
    Ok(())
}

fn dup(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) { StoreError::AlreadyExists } else { StoreError::Db(e) }
}

fn json_text(m: &Map<String, Value>) -> String {
    Value::Object(m.clone()).to_string()
}

fn json_map(text: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))? {
        Value::Object(m) => Ok(m),
        _ => Err(StoreError::Corrupt("metadata is not a JSON object".into())),
    }
}

/// The stored name of a profile-sync mode (the connection model's, never a number).
fn sync_code(sync: ProfileSync) -> &'static str {
    sync.as_str()
}

/// The profile-sync mode stored by its name (`on_each_login`, …, the connection model's
/// names, as the registry stores them); another name is a corrupt row.
fn sync_of_code(name: &str) -> Result<ProfileSync, StoreError> {
    [ProfileSync::OnEachLogin, ProfileSync::OnFirstLogin, ProfileSync::NeverOnLogin]
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown profile_sync {name:?} in identities")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The login's read searches the login indexes: it does not walk every identity of the
    /// connection (checked on SQLite's plan).
    #[tokio::test]
    async fn the_login_read_searches_the_login_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DbLocation::SqliteFile(dir.path().join("authn.db"))).await.unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", find_login_sql())))
            .bind("t")
            .bind("con")
            .bind("alice")
            .bind("203.0.113.1")
            .fetch_all(store.db.pool())
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail").unwrap()).collect();
        let uses = |index: &str| plan.iter().any(|d| d.contains(index));
        assert!(uses("identities_by_email") && uses("identities_by_username"), "{plan:?}");
        assert!(uses("identities_by_user"), "{plan:?}");
        assert!(
            plan.iter().all(|d| !d.starts_with("SCAN") && !d.ends_with("(tenant=? AND connection_id=?)")),
            "{plan:?}"
        );
        store.close().await;
    }
}
