//! The database connector (strategy `auth0`), behind [`PasswordConnector`]: the password of
//! a user the authenticator keeps is checked against its Argon2id hash (bcrypt for hashes
//! imported from elsewhere), and a connection with a custom database asks the customer's
//! store through `postern.customdb.v1`, optionally importing its users on their first login.
//! Argon2, bcrypt and the custom database's client live here, never in the authenticator.
//!
//! # Layout
//!
//! - [`password`]: Argon2id hashing and verification, and the history rule of the policy.
//! - [`customdb`]: the client of a customer's custom database.
//! - `argon2_memory`: Argon2's working memory, kept between hashes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod argon2_memory;
pub mod customdb;
pub mod password;

use std::sync::Arc;

use postern_common::error::Violations;
use postern_connection::{DatabaseOptions, Options, PersonalInfo, Resolved, Strategy};
use postern_connector::{
    ConnectorError, Connectors, PasswordChange, PasswordChanged, PasswordConnector, SignedUp, Signup, Verified,
    async_trait, default_nickname,
};

use crate::customdb::{CustomDbClient, CustomDbError, Target};

/// Registers the database connector for its strategy (`auth0`).
pub fn register(connectors: Connectors) -> Connectors {
    connectors.with_password(Strategy::Auth0, Arc::new(DatabaseConnector::new()))
}

/// The connector of database connections.
#[derive(Debug, Default)]
pub struct DatabaseConnector {
    customdb: CustomDbClient,
}

impl DatabaseConnector {
    /// A connector with no channel to any custom database open yet.
    pub fn new() -> Self {
        Self::default()
    }
}

fn options(conn: &Resolved) -> Result<&DatabaseOptions, ConnectorError> {
    match &conn.connection.spec.options {
        Options::Database(d) => Ok(d),
        _ => Err(ConnectorError::FailedPrecondition {
            reason: "NOT_A_DATABASE_CONNECTION",
            message: format!(
                "connection {:?} uses strategy {:?}; passwords are checked only by database connections (strategy `auth0`)",
                conn.connection.spec.name,
                conn.connection.spec.strategy.as_str()
            ),
        }),
    }
}

fn internal(e: password::Error) -> ConnectorError {
    ConnectorError::Internal(e.to_string())
}

/// What a custom database's answer means to the caller.
fn custom_db_error(e: CustomDbError) -> ConnectorError {
    match e {
        CustomDbError::WrongCredentials => ConnectorError::WrongCredentials,
        CustomDbError::NotFound => ConnectorError::NotFound {
            reason: "USER_NOT_FOUND",
            message: "the custom database has no such user".into(),
        },
        CustomDbError::AlreadyExists => ConnectorError::AlreadyExists {
            reason: "USER_ALREADY_EXISTS",
            message: "the connection already has a user with that email or username".into(),
        },
        CustomDbError::Invalid(msg) => {
            ConnectorError::Refused { field: "password", message: format!("refused by the custom database: {msg}") }
        }
        CustomDbError::Unavailable(_) => ConnectorError::Unavailable {
            reason: "CUSTOM_DATABASE_UNAVAILABLE",
            message: "the connection's custom database is unavailable; retry later".into(),
        },
    }
}

#[async_trait]
impl PasswordConnector for DatabaseConnector {
    fn brute_force_protection(&self, conn: &Resolved) -> bool {
        options(conn).map_or(true, |d| d.brute_force_protection)
    }

    async fn verify(
        &self,
        tenant: &str,
        conn: &Resolved,
        login: &str,
        password: &str,
        local_hash: Option<&str>,
    ) -> Result<Verified, ConnectorError> {
        let db = options(conn)?;
        match (local_hash, &db.custom_database) {
            (Some(hash), _) => {
                if !password::verify_async(password.to_owned(), Some(hash.to_owned())).await.map_err(internal)? {
                    return Err(ConnectorError::WrongCredentials);
                }
                let rehash = if password::needs_rehash(hash) {
                    Some(password::hash_async(password.to_owned()).await.map_err(internal)?)
                } else {
                    None
                };
                Ok(Verified::Local { rehash })
            }
            (None, Some(custom)) => {
                let target = Target::of(tenant, conn, custom);
                let profile = self.customdb.login(&target, login, password).await.map_err(custom_db_error)?;
                let import_hash = if db.imports_lazily() {
                    Some(password::hash_async(password.to_owned()).await.map_err(internal)?)
                } else {
                    None
                };
                Ok(Verified::External { profile: Box::new(profile), import_hash })
            }
            (None, None) => {
                // Unknown user: spend the time of a real check, then answer as for a wrong one.
                password::verify_async(password.to_owned(), None).await.map_err(internal)?;
                Err(ConnectorError::WrongCredentials)
            }
        }
    }

    async fn sign_up(&self, tenant: &str, conn: &Resolved, s: &Signup<'_>) -> Result<SignedUp, ConnectorError> {
        let db = options(conn)?;
        let name = &conn.connection.spec.name;
        if db.disable_signup {
            return Err(ConnectorError::PermissionDenied {
                reason: "SIGNUP_DISABLED",
                message: format!("connection {name:?} does not allow signups (disable_signup is on)"),
            });
        }
        let mut v = Violations::new();
        db.check_username(&mut v, "username", s.username);
        let info = PersonalInfo {
            email: s.email,
            username: s.username,
            nickname: &default_nickname(s.email),
            ..PersonalInfo::default()
        };
        db.password_rules().check(s.password, &info, "password", &mut v);
        if !v.is_empty() {
            return Err(ConnectorError::Invalid(v));
        }
        let taken = || ConnectorError::AlreadyExists {
            reason: "USER_ALREADY_EXISTS",
            message: format!("connection {name:?} already has a user with that email or username"),
        };
        match &db.custom_database {
            Some(custom) if !db.imports_lazily() => {
                let target = Target::of(tenant, conn, custom);
                let metadata = (!s.user_metadata.is_empty()).then(|| postern_common::json::to_struct(s.user_metadata));
                let profile = self
                    .customdb
                    .create(&target, s.email, s.username, s.password, metadata)
                    .await
                    .map_err(custom_db_error)?;
                Ok(SignedUp::External(Box::new(profile)))
            }
            custom => {
                // With lazy import, a user still only in the customer's store is taken too.
                if let Some(custom) = custom {
                    let target = Target::of(tenant, conn, custom);
                    for name in [s.email, s.username] {
                        if !name.is_empty()
                            && self.customdb.get_user(&target, name).await.map_err(custom_db_error)?.is_some()
                        {
                            return Err(taken());
                        }
                    }
                }
                let hash = password::hash_async(s.password.to_owned()).await.map_err(internal)?;
                Ok(SignedUp::Local { hash })
            }
        }
    }

    async fn change_password(
        &self,
        tenant: &str,
        conn: &Resolved,
        change: &PasswordChange<'_>,
        email: &str,
    ) -> Result<PasswordChanged, ConnectorError> {
        let db = options(conn)?;
        let policy = db.password_rules();
        let mut v = Violations::new();
        password::check_with_history(
            &policy,
            change.new_password,
            &change.user,
            change.history,
            "new_password",
            &mut v,
        )
        .await
        .map_err(internal)?;
        if !v.is_empty() {
            return Err(ConnectorError::Invalid(v));
        }
        if change.local {
            let hash = password::hash_async(change.new_password.to_owned()).await.map_err(internal)?;
            let history = usize::try_from(policy.history_size).unwrap_or(0).min(password::MAX_HISTORY_SIZE);
            return Ok(PasswordChanged::Local { hash, history });
        }
        let custom = db.custom_database.as_ref().ok_or_else(|| ConnectorError::FailedPrecondition {
            reason: "NO_PASSWORD",
            message: "this identity's credentials are not kept by Postern".into(),
        })?;
        let target = Target::of(tenant, conn, custom);
        self.customdb.change_password(&target, email, change.new_password).await.map_err(custom_db_error)?;
        Ok(PasswordChanged::External)
    }

    async fn delete(&self, tenant: &str, conn: &Resolved, source_id: &str) -> Result<(), ConnectorError> {
        if let Ok(db) = options(conn)
            && let Some(custom) = &db.custom_database
        {
            let target = Target::of(tenant, conn, custom);
            self.customdb.delete(&target, source_id).await.map_err(custom_db_error)?;
        }
        Ok(())
    }
}
