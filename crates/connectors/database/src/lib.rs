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
    ConnectorError, Connectors, Egress, PasswordChange, PasswordChanged, PasswordConnector, SignedUp, Signup,
    TestReport, TestStep, Verified, async_trait, default_nickname,
};

use crate::customdb::{CustomDbClient, CustomDbError, Target};

/// Registers the database connector for its strategy (`auth0`), hashing within the
/// default limits (one hash per core, a 10 s wait).
pub fn register(connectors: Connectors) -> Connectors {
    register_with(connectors, password::HashingLimits::default(), &Egress::default())
}

/// Registers the database connector for its strategy (`auth0`), hashing within `limits`,
/// calling custom databases only where `egress` allows.
pub fn register_with(connectors: Connectors, limits: password::HashingLimits, egress: &Egress) -> Connectors {
    connectors.with_password(Strategy::Auth0, Arc::new(DatabaseConnector::with_egress(limits, egress)))
}

/// The connector of database connections.
#[derive(Debug, Default)]
pub struct DatabaseConnector {
    customdb: CustomDbClient,
    hashing: password::Hashing,
}

impl DatabaseConnector {
    /// A connector hashing within `limits`, with no channel to any custom database open yet.
    /// Custom databases are called under the built-in egress policy.
    pub fn new(limits: password::HashingLimits) -> Self {
        Self::with_egress(limits, &Egress::default())
    }

    /// A connector hashing within `limits`, calling custom databases only where `egress`
    /// allows.
    pub fn with_egress(limits: password::HashingLimits, egress: &Egress) -> Self {
        Self { customdb: CustomDbClient::with_egress(egress), hashing: password::Hashing::new(limits) }
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
    match e {
        password::Error::Busy { .. } => {
            tracing::warn!(reason = "PASSWORD_CHECKS_BUSY", error = %e, "password check refused");
            postern_common::telemetry::refused("PASSWORD_CHECKS_BUSY");
            ConnectorError::Unavailable {
                reason: "PASSWORD_CHECKS_BUSY",
                message: "too many password checks are waiting; retry shortly".into(),
            }
        }
        e => ConnectorError::Internal(e.to_string()),
    }
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
        CustomDbError::Refused(refused) => refused.connector_error("the connection's custom database cannot be called"),
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
                if !self.hashing.verify(password.to_owned(), Some(hash.to_owned())).await.map_err(internal)? {
                    return Err(ConnectorError::WrongCredentials);
                }
                let rehash = if password::needs_rehash(hash) {
                    Some(self.hashing.hash(password.to_owned()).await.map_err(internal)?)
                } else {
                    None
                };
                Ok(Verified::Local { rehash })
            }
            (None, Some(custom)) => {
                let target = Target::of(tenant, conn, custom);
                let profile = self.customdb.login(&target, login, password).await.map_err(custom_db_error)?;
                let import_hash = if db.imports_lazily() {
                    Some(self.hashing.hash(password.to_owned()).await.map_err(internal)?)
                } else {
                    None
                };
                Ok(Verified::External { profile: Box::new(profile), import_hash })
            }
            (None, None) => {
                // Unknown user: spend the time of a real check, then answer as for a wrong one.
                self.hashing.verify(password.to_owned(), None).await.map_err(internal)?;
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
                let hash = self.hashing.hash(s.password.to_owned()).await.map_err(internal)?;
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
        self.hashing
            .check_with_history(&policy, change.new_password, &change.user, change.history, "new_password", &mut v)
            .await
            .map_err(internal)?;
        if !v.is_empty() {
            return Err(ConnectorError::Invalid(v));
        }
        if change.local {
            let hash = self.hashing.hash(change.new_password.to_owned()).await.map_err(internal)?;
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

    async fn test(&self, tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let db = options(conn)?;
        let started = std::time::Instant::now();
        let Some(custom) = &db.custom_database else {
            let detail = "Postern keeps this connection's users and their hashes: there is nothing to reach";
            return Ok(TestReport::of(vec![TestStep::of("store", started, Ok(detail.into()))]));
        };
        // A lookup of a name no store holds: any answer but an outage shows the store reached.
        let target = Target::of(tenant, conn, custom);
        let answer = self.customdb.get_user(&target, "postern-connection-test@invalid.example").await;
        let result = match answer {
            Ok(_) | Err(CustomDbError::NotFound) => Ok(format!("{} answered GetUser", custom.endpoint)),
            Err(CustomDbError::Invalid(m)) => {
                Ok(format!("{} answered GetUser, refusing the test name: {m}", custom.endpoint))
            }
            Err(e) => Err(format!("{} did not answer: {e}", custom.endpoint)),
        };
        Ok(TestReport::of(vec![TestStep::of("custom_database", started, result)]))
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::connections::v1 as pb;
    use serde_json::Map;

    use super::*;

    fn connection(strategy: &str, options: Option<pb::connection::Options>) -> Resolved {
        Resolved::try_from(pb::Connection {
            id: "con_test".into(),
            name: "users".into(),
            strategy: strategy.into(),
            options,
            ..Default::default()
        })
        .expect("a valid connection")
    }

    fn database(f: impl FnOnce(&mut pb::DatabaseOptions)) -> Resolved {
        let mut d = pb::DatabaseOptions::default();
        f(&mut d);
        connection("auth0", Some(pb::connection::Options::Database(d)))
    }

    fn signup<'a>(password: &'a str, metadata: &'a Map<String, serde_json::Value>) -> Signup<'a> {
        Signup { email: "alice@fabrikam.example", username: "", password, user_metadata: metadata }
    }

    #[track_caller]
    fn fields(e: ConnectorError) -> Vec<String> {
        match e {
            ConnectorError::Invalid(v) => v.as_slice().iter().map(|f| f.field.clone()).collect(),
            e => panic!("expected field violations, got {e:?}"),
        }
    }

    #[tokio::test]
    async fn local_hashes_verify_and_outdated_ones_are_replaced() {
        let c = DatabaseConnector::default();
        let conn = database(|_| {});
        let hash = password::hash("correct horse 9!").unwrap();
        let ok = c.verify("t", &conn, "alice", "correct horse 9!", Some(&hash)).await.unwrap();
        assert_eq!(ok, Verified::Local { rehash: None });
        let wrong = c.verify("t", &conn, "alice", "correct horse 8!", Some(&hash)).await;
        assert!(matches!(wrong, Err(ConnectorError::WrongCredentials)), "{wrong:?}");
        // An unknown user (no hash, no custom database) answers as a wrong password.
        let unknown = c.verify("t", &conn, "nobody", "correct horse 9!", None).await;
        assert!(matches!(unknown, Err(ConnectorError::WrongCredentials)), "{unknown:?}");
        // A bcrypt hash verifies and comes back as a fresh Argon2id hash of the password.
        let legacy = bcrypt::hash("hunter2", 4).unwrap();
        let Verified::Local { rehash: Some(fresh) } =
            c.verify("t", &conn, "bob", "hunter2", Some(&legacy)).await.unwrap()
        else {
            panic!("a bcrypt hash must be replaced");
        };
        assert!(fresh.starts_with("$argon2id$") && password::verify("hunter2", &fresh).unwrap());
    }

    #[tokio::test]
    async fn signup_follows_the_connection_rules() {
        let c = DatabaseConnector::default();
        let none = Map::new();
        let closed = database(|d| d.disable_signup = true);
        let refused = c.sign_up("t", &closed, &signup("Str0ng-enough!", &none)).await;
        assert!(
            matches!(refused, Err(ConnectorError::PermissionDenied { reason: "SIGNUP_DISABLED", .. })),
            "{refused:?}"
        );
        let open = database(|d| d.requires_username = true);
        let weak = c.sign_up("t", &open, &signup("short", &none)).await.unwrap_err();
        // Every rule broken is reported: the missing username and the weak password.
        assert_eq!(fields(weak), ["username", "password", "password"]);
        let plain = database(|_| {});
        let SignedUp::Local { hash } = c.sign_up("t", &plain, &signup("Str0ng-enough!", &none)).await.unwrap() else {
            panic!("a connection without a custom database keeps the hash locally");
        };
        assert!(password::verify("Str0ng-enough!", &hash).unwrap());
    }

    #[tokio::test]
    async fn password_changes_keep_the_history_rule() {
        let c = DatabaseConnector::default();
        let conn = database(|d| d.password_history_size = 2);
        let history = vec![password::hash("Old-passw0rd!").unwrap()];
        let change = |new_password| PasswordChange {
            user: postern_connection::PersonalInfo::default(),
            history: &history,
            local: true,
            new_password,
        };
        let reused = c.change_password("t", &conn, &change("Old-passw0rd!"), "a@b.example").await.unwrap_err();
        assert_eq!(fields(reused), ["new_password"]);
        let PasswordChanged::Local { hash, history: kept } =
            c.change_password("t", &conn, &change("New-passw0rd!"), "a@b.example").await.unwrap()
        else {
            panic!("a local identity's password is kept locally");
        };
        assert_eq!(kept, 2);
        assert!(password::verify("New-passw0rd!", &hash).unwrap());
        // An identity whose password nobody here keeps cannot change it here.
        let external = PasswordChange { local: false, ..change("New-passw0rd!") };
        let refused = c.change_password("t", &conn, &external, "a@b.example").await;
        assert!(
            matches!(refused, Err(ConnectorError::FailedPrecondition { reason: "NO_PASSWORD", .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn other_strategies_and_brute_force_settings() {
        let c = DatabaseConnector::default();
        let social = connection(
            "github",
            Some(pb::connection::Options::Oauth2(pb::OAuth2Options {
                client_id: "cid".into(),
                client_secret: "csecret".into(),
                ..Default::default()
            })),
        );
        let refused = c.verify("t", &social, "alice", "pw", None).await;
        assert!(
            matches!(refused, Err(ConnectorError::FailedPrecondition { reason: "NOT_A_DATABASE_CONNECTION", .. })),
            "{refused:?}"
        );
        assert!(c.brute_force_protection(&database(|_| {})));
        assert!(!c.brute_force_protection(&database(|d| d.brute_force_protection = Some(false))));
        // Deleting a user kept locally asks no one.
        c.delete("t", &database(|_| {}), "abc").await.unwrap();
    }

    #[test]
    fn registered_for_its_strategy_only() {
        let connectors = register(Connectors::new());
        assert!(connectors.password(Strategy::Auth0).is_some());
        assert!(connectors.password(Strategy::Ldap).is_none());
        assert!(connectors.redirect(Strategy::Auth0).is_none());
    }
}
