//! The directory connectors (strategies `ldap` and `ad`), behind [`PasswordConnector`]: a
//! bind as the connection's service account, a search for the user with the connection's
//! filter (the login name escaped), then a bind as the user with the given password.
//!
//! - An empty password is refused before any bind: to a directory, an empty password is an
//!   unauthenticated bind, which succeeds.
//! - TLS is `ldaps://` or StartTLS, verified against the connection's CA certificates and the
//!   system roots; a plaintext `ldap://` connection is refused unless its options allow it.
//! - Every operation has the connection's timeout; connections are kept in a small pool per
//!   directory connection ([`pool`]). A directory that cannot be reached is `UNAVAILABLE`
//!   naming the connection, never wrong credentials.
//! - `ad` adds Active Directory's rules ([`ad`]): `sAMAccountName` or `userPrincipalName`,
//!   the user id from `objectGUID`, disabled, locked and expired accounts refused.
//! - Groups ([`groups`]), nested ones included, go into the identity's profile as `groups`.
//! - [`PasswordConnector::test`] tries a connection step by step without logging anyone in.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ad;
pub mod groups;
pub mod pool;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapError, Scope, SearchEntry, SearchOptions, ldap_escape};
use postern_common::time::Clock;
use postern_connection::secret::names;
use postern_connection::{LdapOptions, Options, Resolved, Strategy};
use postern_connector::{
    ConnectorError, Connectors, Egress, ExternalProfile, PasswordChange, PasswordChanged, PasswordConnector, Profile,
    SignedUp, Signup, TestReport, TestStep, Verified, async_trait,
};
use serde_json::{Map, Value};

use crate::pool::{Pools, Session};

/// LDAP result code: invalid credentials.
const INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code: the server refuses (OpenLDAP's answer to an unauthenticated bind).
const UNWILLING_TO_PERFORM: u32 = 53;
/// LDAP result code: more entries than the size limit.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// Registers the directory connector for `ldap` and `ad`, on `clock` (account expiry),
/// connecting only where `egress` allows.
pub fn register(connectors: Connectors, clock: Clock, egress: &Egress) -> Connectors {
    let connector = Arc::new(LdapConnector::with_egress(clock, egress));
    connectors.with_password(Strategy::Ldap, connector.clone()).with_password(Strategy::Ad, connector)
}

/// The connector of `ldap` and `ad` connections.
#[derive(Debug)]
pub struct LdapConnector {
    pools: Pools,
    clock: Clock,
}

impl LdapConnector {
    /// A connector with no directory connection open yet, under the built-in egress policy.
    pub fn new(clock: Clock) -> Self {
        Self::with_egress(clock, &Egress::default())
    }

    /// A connector with no directory connection open yet, connecting only where `egress`
    /// allows.
    pub fn with_egress(clock: Clock, egress: &Egress) -> Self {
        Self { pools: Pools::new(egress), clock }
    }
}

/// The connection's directory options, or why the connection is not a directory one.
fn options(conn: &Resolved) -> Result<&LdapOptions, ConnectorError> {
    match &conn.connection.spec.options {
        Options::Ldap(o) => Ok(o),
        _ => Err(ConnectorError::FailedPrecondition {
            reason: "NOT_A_DIRECTORY_CONNECTION",
            message: format!(
                "connection {:?} uses strategy {:?}, not `ldap` or `ad`",
                conn.connection.spec.name,
                conn.connection.spec.strategy.as_str()
            ),
        }),
    }
}

/// The connection's name, for messages.
fn name(conn: &Resolved) -> &str {
    &conn.connection.spec.name
}

/// Refuses a connection that would send passwords in clear without saying so.
fn check_transport(conn: &Resolved, o: &LdapOptions) -> Result<(), ConnectorError> {
    if o.is_tls() || o.allow_plaintext {
        return Ok(());
    }
    Err(ConnectorError::FailedPrecondition {
        reason: "DIRECTORY_PLAINTEXT_NOT_ALLOWED",
        message: format!(
            "connection {:?} uses an ldap:// URL without StartTLS, which would send passwords in clear text; set \
             start_tls, use ldaps://, or set allow_plaintext",
            name(conn)
        ),
    })
}

/// The service account's password.
fn bind_password(conn: &Resolved) -> Result<&str, ConnectorError> {
    match conn.secret(names::BIND_PASSWORD) {
        Some(s) if !s.expose().is_empty() => Ok(s.expose()),
        _ => Err(ConnectorError::FailedPrecondition {
            reason: "DIRECTORY_BIND_PASSWORD_MISSING",
            message: format!("connection {:?} has no bind_password for its bind_dn", name(conn)),
        }),
    }
}

/// An operation on the directory failed (not a refusal): UNAVAILABLE naming the connection,
/// with the cause logged, not shown.
pub(crate) fn unavailable(conn: &Resolved, what: &str, e: &dyn std::fmt::Display) -> ConnectorError {
    tracing::warn!(connection = %name(conn), error = %e, "directory {what} failed");
    ConnectorError::Unavailable {
        reason: "DIRECTORY_UNAVAILABLE",
        message: format!("the directory of connection {:?} did not answer ({what}); retry shortly", name(conn)),
    }
}

/// The attribute `attr` of `entry`, matched without regard to case.
pub(crate) fn first<'a>(entry: &'a SearchEntry, attr: &str) -> Option<&'a str> {
    entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).and_then(|(_, v)| v.first()).map(String::as_str)
}

/// The raw bytes of the attribute `attr` (binary or not) of `entry`.
pub(crate) fn first_bytes<'a>(entry: &'a SearchEntry, attr: &str) -> Option<&'a [u8]> {
    entry
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first())
        .map(Vec::as_slice)
        .or_else(|| first(entry, attr).map(str::as_bytes))
}

/// Parses a search answer's entries; a malformed entry is the directory's failure, not a
/// panic of this process.
pub(crate) fn entries(raw: Vec<ldap3::ResultEntry>) -> Result<Vec<SearchEntry>, String> {
    raw.into_iter()
        .map(|r| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(r)))
                .map_err(|_| "the directory answered a malformed entry".to_owned())
        })
        .collect()
}

/// The outcome of a bind.
enum Bind {
    Ok,
    /// Refused: invalid credentials (with the server's diagnostic text) or unwilling.
    Refused(String),
}

/// Binds `ldap` as `dn`; a refusal is not an error, a failure to answer is.
async fn bind(ldap: &mut Ldap, timeout: Duration, dn: &str, password: &str) -> Result<Bind, LdapError> {
    let r = ldap.with_timeout(timeout).simple_bind(dn, password).await?;
    match r.rc {
        0 => Ok(Bind::Ok),
        INVALID_CREDENTIALS | UNWILLING_TO_PERFORM => Ok(Bind::Refused(r.text)),
        _ => Err(LdapError::LdapResult { result: r }),
    }
}

/// The service bind: a refusal is the connection's misconfiguration.
async fn service_bind(conn: &Resolved, o: &LdapOptions, session: &mut Session) -> Result<(), ConnectorError> {
    let password = bind_password(conn)?;
    match bind(&mut session.ldap, timeout(o), &o.bind_dn, password).await {
        Ok(Bind::Ok) => Ok(()),
        Ok(Bind::Refused(text)) => {
            tracing::warn!(connection = %name(conn), diagnostic = %text, "the directory refused the service bind");
            Err(ConnectorError::FailedPrecondition {
                reason: "DIRECTORY_SERVICE_BIND_REFUSED",
                message: format!(
                    "the directory of connection {:?} refused the service account's bind (bind_dn and \
                     bind_password); no user can log in until they are fixed",
                    name(conn)
                ),
            })
        }
        Err(e) => {
            session.broken = true;
            Err(unavailable(conn, "service bind", &e))
        }
    }
}

/// The operation timeout of a connection.
pub(crate) fn timeout(o: &LdapOptions) -> Duration {
    Duration::from_secs(u64::from(o.timeout_seconds.max(1)))
}

/// The attributes a user search asks for.
fn user_attributes(o: &LdapOptions, strategy: Strategy) -> Vec<String> {
    let a = &o.attributes;
    let mut out = vec![
        a.email.clone(),
        a.name.clone(),
        a.given_name.clone(),
        a.family_name.clone(),
        a.username.clone(),
        "entryUUID".to_owned(),
    ];
    if strategy == Strategy::Ad {
        out.extend(ad::ATTRIBUTES.iter().map(|s| (*s).to_owned()));
    }
    out.sort();
    out.dedup();
    out
}

/// The user filter with the login name escaped into it.
pub fn user_filter(o: &LdapOptions, login: &str) -> String {
    o.user_filter.replace("{username}", &ldap_escape(login))
}

/// Searches the user `login`: `None` when no entry (or more than one) matches.
async fn find_user(
    conn: &Resolved,
    o: &LdapOptions,
    session: &mut Session,
    login: &str,
) -> Result<Option<SearchEntry>, ConnectorError> {
    let strategy = conn.connection.spec.strategy;
    let filter = user_filter(o, login);
    let answer = session
        .ldap
        .with_timeout(timeout(o))
        .with_search_options(SearchOptions::new().sizelimit(2))
        .search(&o.base_dn, Scope::Subtree, &filter, user_attributes(o, strategy))
        .await;
    let found = match answer {
        Ok(r) if r.1.rc == 0 || r.1.rc == SIZE_LIMIT_EXCEEDED => r.0,
        // No such base: nobody is found there (a misconfiguration TestConnection shows).
        Ok(r) if r.1.rc == 32 => {
            tracing::warn!(connection = %name(conn), "the directory has no base_dn {:?}", o.base_dn);
            Vec::new()
        }
        Ok(r) => {
            session.broken = true;
            return Err(unavailable(conn, "user search", &LdapError::LdapResult { result: r.1 }));
        }
        Err(e) => {
            session.broken = true;
            return Err(unavailable(conn, "user search", &e));
        }
    };
    let mut found = entries(found).map_err(|e| unavailable(conn, "user search", &e))?;
    if found.len() > 1 {
        tracing::warn!(connection = %name(conn), "the user filter matches several entries; none is used");
        return Ok(None);
    }
    Ok(found.pop())
}

/// The profile of a directory user.
fn profile_of(conn: &Resolved, o: &LdapOptions, entry: &SearchEntry) -> Result<ExternalProfile, ConnectorError> {
    let strategy = conn.connection.spec.strategy;
    let a = &o.attributes;
    let get = |attr: &str| first(entry, attr).unwrap_or_default().to_owned();
    let username = get(&a.username);
    let id = if strategy == Strategy::Ad {
        ad::object_guid(entry).ok_or_else(|| ConnectorError::FailedPrecondition {
            reason: "DIRECTORY_USER_WITHOUT_ID",
            message: format!(
                "the directory of connection {:?} answered a user without a 16-byte objectGUID",
                name(conn)
            ),
        })?
    } else if !username.is_empty() {
        username.clone()
    } else {
        return Err(ConnectorError::FailedPrecondition {
            reason: "DIRECTORY_USER_WITHOUT_ID",
            message: format!(
                "the directory of connection {:?} answered a user without the username attribute {:?}",
                name(conn),
                a.username
            ),
        });
    };
    let profile = Profile {
        email: get(&a.email).to_lowercase(),
        // The directory's administrators keep the address; nobody proved it by mail.
        email_verified: false,
        username: username.clone(),
        name: get(&a.name),
        given_name: get(&a.given_name),
        family_name: get(&a.family_name),
        nickname: String::new(),
        picture: String::new(),
        phone_number: String::new(),
        phone_verified: false,
    };
    let mut raw = Map::new();
    raw.insert("dn".into(), Value::String(entry.dn.clone()));
    for (claim, attr) in [
        ("email", &a.email),
        ("name", &a.name),
        ("given_name", &a.given_name),
        ("family_name", &a.family_name),
        ("username", &a.username),
    ] {
        if let Some(v) = first(entry, attr) {
            raw.insert(claim.into(), Value::String(v.to_owned()));
        }
    }
    if strategy == Strategy::Ad {
        raw.insert("objectGUID".into(), Value::String(id.clone()));
    }
    Ok(ExternalProfile {
        // `ad|<connection>|<guid>`, `ldap|<connection>|<username>` as user ids.
        source_id: format!("{}|{id}", name(conn)),
        profile,
        raw: Value::Object(raw),
        user_metadata: Map::new(),
        app_metadata: Map::new(),
    })
}

impl LdapConnector {
    async fn login(
        &self,
        conn: &Resolved,
        o: &LdapOptions,
        session: &mut Session,
        login: &str,
        password: &str,
    ) -> Result<ExternalProfile, ConnectorError> {
        let Some(entry) = find_user(conn, o, session, login).await? else {
            // An unknown user costs a bind too, and answers as a wrong password does.
            let decoy = format!("cn={},{}", ldap3::dn_escape(login), o.base_dn);
            match bind(&mut session.ldap, timeout(o), &decoy, password).await {
                Ok(_) => {}
                Err(e) => {
                    session.broken = true;
                    return Err(unavailable(conn, "bind", &e));
                }
            }
            return Err(ConnectorError::WrongCredentials);
        };
        match bind(&mut session.ldap, timeout(o), &entry.dn, password).await {
            Ok(Bind::Ok) => {}
            Ok(Bind::Refused(text)) => {
                if conn.connection.spec.strategy == Strategy::Ad
                    && let Some(refusal) = ad::bind_refusal(conn, &text)
                {
                    return Err(refusal);
                }
                return Err(ConnectorError::WrongCredentials);
            }
            Err(e) => {
                session.broken = true;
                return Err(unavailable(conn, "user bind", &e));
            }
        }
        if conn.connection.spec.strategy == Strategy::Ad {
            ad::check_account(conn, &entry, self.clock.now())?;
        }
        let mut profile = profile_of(conn, o, &entry)?;
        if o.groups.enabled {
            // The groups are read as the service account, not as the user.
            service_bind(conn, o, session).await?;
            let names = groups::of(conn, o, session, &entry.dn).await?;
            if let Value::Object(raw) = &mut profile.raw {
                raw.insert("groups".into(), Value::Array(names.into_iter().map(Value::String).collect()));
            }
        }
        Ok(profile)
    }

    /// Runs the connection's steps for [`PasswordConnector::test`].
    async fn run_test(&self, conn: &Resolved, o: &LdapOptions, steps: &mut Vec<TestStep>) -> Result<(), ()> {
        let mut step = |name: &str, started: Instant, r: Result<String, String>| {
            if TestStep::record(steps, name, started, r) { Ok(()) } else { Err(()) }
        };
        let t = Instant::now();
        step(
            "transport",
            t,
            check_transport(conn, o)
                .map(|()| {
                    if o.url.starts_with("ldaps://") {
                        "TLS from the first byte (ldaps://)".to_owned()
                    } else if o.start_tls {
                        "ldap:// upgraded with StartTLS".to_owned()
                    } else {
                        "plaintext ldap:// (allow_plaintext is set): passwords travel in clear text".to_owned()
                    }
                })
                .map_err(|e| e.to_string()),
        )?;
        let t = Instant::now();
        let reached = pool::reach(o, self.pools.egress()).await;
        step("connect", t, reached)?;
        let t = Instant::now();
        let opened = pool::open(conn, o, self.pools.egress()).await;
        let what = if o.url.starts_with("ldaps://") {
            "tls"
        } else if o.start_tls {
            "start_tls"
        } else {
            "ldap"
        };
        let mut session = match opened {
            Ok(s) => {
                let detail = if what == "ldap" {
                    "the directory answered (no TLS)"
                } else {
                    "TLS established; the directory's certificate is trusted and names its host"
                };
                step(what, t, Ok(detail.to_owned()))?;
                s
            }
            Err(e) => return step(what, t, Err(e.to_string())),
        };
        let t = Instant::now();
        let bound = service_bind(conn, o, &mut session).await;
        step("service_bind", t, bound.map(|()| format!("bound as {}", o.bind_dn)).map_err(|e| e.to_string()))?;
        let t = Instant::now();
        let filter = o.user_filter.replace("{username}", "*");
        let answer = session
            .ldap
            .with_timeout(timeout(o))
            .with_search_options(SearchOptions::new().sizelimit(1))
            .search(&o.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await;
        let searched = match answer {
            Ok(r) if r.1.rc == 0 || r.1.rc == SIZE_LIMIT_EXCEEDED => {
                if r.0.is_empty() {
                    Err(format!("no entry under {:?} matches the user filter {:?}", o.base_dn, o.user_filter))
                } else {
                    Ok(format!("users found under {:?} with the user filter", o.base_dn))
                }
            }
            Ok(r) if r.1.rc == 32 => Err(format!("the directory has no entry {:?} (base_dn)", o.base_dn)),
            Ok(r) => Err(format!("the search failed with LDAP result code {}", r.1.rc)),
            Err(e) => Err(format!("the search failed: {e}")),
        };
        let _ = session.ldap.unbind().await;
        step("search", t, searched)
    }
}

#[async_trait]
impl PasswordConnector for LdapConnector {
    fn brute_force_protection(&self, _: &Resolved) -> bool {
        true
    }

    async fn verify(
        &self,
        _tenant: &str,
        conn: &Resolved,
        login: &str,
        password: &str,
        _local_hash: Option<&str>,
    ) -> Result<Verified, ConnectorError> {
        let o = options(conn)?;
        // An empty password is an unauthenticated bind, which a directory accepts.
        if password.is_empty() {
            return Err(ConnectorError::WrongCredentials);
        }
        check_transport(conn, o)?;
        bind_password(conn)?;
        let pool = self.pools.get(conn);
        let mut session = pool.take(conn, o).await?;
        if let Err(e) = service_bind(conn, o, &mut session).await {
            if !(session.reused && session.broken) {
                pool.put_back(session);
                return Err(e);
            }
            // A pooled connection the directory closed meanwhile: once more on a fresh one.
            session = pool.reopen(session, conn, o).await?;
            if let Err(e) = service_bind(conn, o, &mut session).await {
                pool.put_back(session);
                return Err(e);
            }
        }
        let result = self.login(conn, o, &mut session, login, password).await;
        pool.put_back(session);
        let profile = result?;
        Ok(Verified::External { profile: Box::new(profile), import_hash: None })
    }

    async fn sign_up(&self, _: &str, conn: &Resolved, _: &Signup<'_>) -> Result<SignedUp, ConnectorError> {
        Err(ConnectorError::PermissionDenied {
            reason: "SIGNUP_NOT_SUPPORTED",
            message: format!(
                "connection {:?} is a directory ({}): its administrators create its users",
                name(conn),
                conn.connection.spec.strategy.as_str()
            ),
        })
    }

    async fn change_password(
        &self,
        _: &str,
        conn: &Resolved,
        _: &PasswordChange<'_>,
        _: &str,
    ) -> Result<PasswordChanged, ConnectorError> {
        Err(ConnectorError::FailedPrecondition {
            reason: "PASSWORD_KEPT_BY_DIRECTORY",
            message: format!("the directory of connection {:?} keeps the password: change it there", name(conn)),
        })
    }

    async fn delete(&self, _: &str, _: &Resolved, _: &str) -> Result<(), ConnectorError> {
        // The directory keeps its users: deleting the Postern user leaves them there.
        Ok(())
    }

    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let o = options(conn)?;
        let mut steps = Vec::new();
        // Stops at the first failed step; the report's verdict is its steps'.
        let _ = self.run_test(conn, o, &mut steps).await;
        Ok(TestReport::of(steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_name_is_escaped_into_the_filter() {
        let o = LdapOptions {
            url: "ldaps://dc1".into(),
            start_tls: false,
            bind_dn: "cn=x".into(),
            base_dn: "dc=x".into(),
            user_filter: "(&(objectClass=person)(uid={username}))".into(),
            attributes: postern_connection::LdapAttributes {
                email: "mail".into(),
                name: "cn".into(),
                given_name: "givenName".into(),
                family_name: "sn".into(),
                username: "uid".into(),
            },
            timeout_seconds: 10,
            ca_certificates: String::new(),
            allow_plaintext: false,
            groups: postern_connection::LdapGroups::default(),
        };
        assert_eq!(user_filter(&o, "alice"), "(&(objectClass=person)(uid=alice))");
        assert_eq!(user_filter(&o, "*)(uid=*"), "(&(objectClass=person)(uid=\\2a\\29\\28uid=\\2a))");
        assert_eq!(user_filter(&o, "a\\b\0"), "(&(objectClass=person)(uid=a\\5cb\\00))");
    }
}
