//! The typed connection model shared by the connection registry and the authenticator:
//! the strategy as an enum ([`Strategy`]), each options family as a Rust type ([`Options`]),
//! secrets as sealed values ([`Secret`], [`Secrets`]), the rules every field obeys, the
//! password policy of database connections ([`password`], written once), and the
//! conversions from and to the contract (`postern.connections.v1`), which is where input is
//! validated. Nothing here does I/O, and no type here is a contract type: a service converts
//! at its API edge and speaks these.
//!
//! Field paths in violations are those of the request (`connection.options.ldap.url`,
//! `update_mask.paths[0]`), so that the caller finds the field it sent.
//!
//! # Layout
//!
//! - [`catalogue`]: the strategies, their categories and options families.
//! - [`options`]: the options of each family, from and to the contract.
//! - [`rules`]: the field rules (names, URLs, LDAP, PEM, templates).
//! - [`secret`]: secret values, zeroed when dropped and never printed.
//! - [`password`]: the password policy of a database connection.
//! - this module: a connection ([`ConnectionSpec`], [`Connection`]), its creation
//!   ([`NewConnection`]), how requests name one ([`ConnectionRef`]), and a connection as
//!   ResolveConnection answers it, with its secrets ([`Resolved`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use postern_common::error::Violations;
use postern_common::validate::{self, truncate};
use postern_proto::connections::v1 as pb;

pub mod catalogue;
pub mod options;
pub mod password;
pub mod rules;
pub mod secret;

pub use catalogue::{Category, OptionsFamily, ProviderEndpoints, Strategy};
pub use options::{
    AzureAdOptions, CustomDatabase, DatabaseOptions, EmailOptions, GoogleAppsOptions, ImportMode, LdapAttributes,
    LdapGroups, LdapOptions, MappedAttribute, OAuth2Options, OidcChannel, OidcClientAuth, OidcOptions, Options,
    PasswordDictionary, PasswordStrength, ProfileMapping, SamlAttributes, SamlBinding, SamlIdpInitiated, SamlOptions,
    SamlSignatureAlgorithm, SmsOptions, SmsProvider, SmtpTls, UserProfileSync,
};
pub use password::{PasswordPolicy, PersonalInfo};
pub use secret::{Secret, Secrets, SecretsFormatError};

/// The field path of the connection in the requests that carry one.
pub const CONNECTION: &str = "connection";
/// The prefix of a connection id.
pub const ID_PREFIX: &str = "con";
/// The most metadata keys a connection holds.
pub const MAX_METADATA_KEYS: usize = 10;
/// The longest metadata key or value, in characters.
pub const MAX_METADATA_CHARS: usize = 255;
/// The most domain aliases a connection holds.
pub const MAX_DOMAIN_ALIASES: usize = 100;

/// What a caller says about a connection: every field but the id and the times, secrets
/// excepted (they travel in [`Secrets`]). Serializable, so that a store may keep the options
/// as one JSON column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    /// Immutable name, unique in the tenant.
    pub name: String,
    /// Human-readable name; equals `name` when the caller gave none.
    pub display_name: String,
    /// Immutable protocol.
    pub strategy: Strategy,
    /// Lowercase email domains for home realm discovery (enterprise connections only).
    pub domain_aliases: Vec<String>,
    /// Whether login pages show a button.
    pub show_as_button: bool,
    /// Free key-value data.
    pub metadata: BTreeMap<String, String>,
    /// When logins copy the profile.
    pub user_profile_sync: UserProfileSync,
    /// The strategy's settings, without secrets; always of `strategy.family()`.
    pub options: Options,
}

impl ConnectionSpec {
    /// The category, fixed by the strategy.
    pub fn category(&self) -> Category {
        self.strategy.category()
    }

    /// The email domains home realm discovery maps to this connection: its `domain_aliases`,
    /// plus the Workspace domains of `google-apps` and the directory domain of `waad`, as
    /// Auth0 does. Empty for the categories other than enterprise. Lowercase, deduplicated.
    pub fn discovery_domains(&self) -> Vec<String> {
        if self.category() != Category::Enterprise {
            return Vec::new();
        }
        let mut out: Vec<String> = self.domain_aliases.clone();
        match &self.options {
            Options::GoogleApps(g) => {
                out.push(g.domain.clone());
                out.extend(g.allowed_domains.iter().cloned());
            }
            Options::AzureAd(a) => out.push(a.domain.clone()),
            _ => {}
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A stored connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `con_` + 24 letters and digits.
    pub id: String,
    /// What the caller said.
    pub spec: ConnectionSpec,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
}

impl Connection {
    /// A new connection id: `con_` followed by 24 random letters and digits.
    pub fn new_id() -> String {
        postern_common::ids::prefixed(ID_PREFIX)
    }

    /// The contract's view for reads: no secret values, `<secret>_set` flags from `secrets`.
    pub fn to_proto(&self, secrets: &Secrets) -> pb::Connection {
        self.proto(secrets, false)
    }

    /// The contract's view for ResolveConnection only: secret fields carry their values.
    pub fn to_proto_with_secrets(&self, secrets: &Secrets) -> pb::Connection {
        self.proto(secrets, true)
    }

    fn proto(&self, secrets: &Secrets, reveal: bool) -> pb::Connection {
        let s = &self.spec;
        pb::Connection {
            id: self.id.clone(),
            name: s.name.clone(),
            display_name: s.display_name.clone(),
            strategy: s.strategy.as_str().to_owned(),
            category: s.category().to_proto() as i32,
            domain_aliases: s.domain_aliases.clone(),
            show_as_button: s.show_as_button,
            metadata: s.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            user_profile_sync: s.user_profile_sync.to_proto() as i32,
            create_time: Some(postern_common::time::to_timestamp(self.create_time)),
            update_time: Some(postern_common::time::to_timestamp(self.update_time)),
            options: Some(s.options.to_proto(secrets, reveal)),
        }
    }
}

/// A validated connection to create: its spec and the secrets it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    /// Everything but the secrets.
    pub spec: ConnectionSpec,
    /// The secrets given, every required one among them.
    pub secrets: Secrets,
}

impl TryFrom<pb::Connection> for NewConnection {
    type Error = Violations;

    /// Validates a connection to create (the `connection` of CreateConnectionRequest):
    /// every field, the options against the strategy, and the presence of every required
    /// secret. Output-only fields are ignored.
    fn try_from(connection: pb::Connection) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let parsed = parse_connection(connection, &mut v);
        if let Some((spec, secrets)) = &parsed {
            spec.options.check_required_secrets(secrets, &format!("{CONNECTION}.options"), &mut v);
        }
        match parsed {
            Some((spec, secrets)) if v.is_empty() => Ok(NewConnection { spec, secrets }),
            _ => Err(v),
        }
    }
}

/// Validates every caller-settable field of a contract connection, recording violations in
/// `v`. Answers the spec and the secrets given (non-empty secret fields), or `None` when the
/// strategy is unknown or the options do not fit it. Required secrets are not checked here:
/// an update may rely on stored ones.
pub fn parse_connection(c: pb::Connection, v: &mut Violations) -> Option<(ConnectionSpec, Secrets)> {
    let at = |f: &str| format!("{CONNECTION}.{f}");
    v.check(at("name"), rules::connection_name(&c.name));
    let display_name = if c.display_name.is_empty() { c.name.clone() } else { c.display_name };
    v.check(at("display_name"), validate::display_text(&display_name, 1, 128));

    let strategy = if c.strategy.is_empty() {
        v.add(at("strategy"), format!("is required; known strategies: {}", Strategy::known_names()));
        None
    } else {
        let s = Strategy::parse(&c.strategy);
        if s.is_none() {
            v.add(
                at("strategy"),
                format!(
                    "{:?} is not a known strategy; use one of: {}",
                    truncate(&c.strategy, 80),
                    Strategy::known_names()
                ),
            );
        }
        s
    };

    let domain_aliases = rules::domain_list(v, &at("domain_aliases"), c.domain_aliases);
    if let Some(s) = strategy
        && !domain_aliases.is_empty()
        && s.category() != Category::Enterprise
    {
        v.add(
            at("domain_aliases"),
            format!(
                "must be empty for strategy {:?}: domain aliases drive home realm discovery, which only enterprise connections ({}) take part in",
                s.as_str(),
                Category::Enterprise.strategies().map(Strategy::as_str).collect::<Vec<_>>().join(", ")
            ),
        );
    }

    let metadata: BTreeMap<String, String> = c.metadata.into_iter().collect();
    check_metadata(&metadata, &at("metadata"), v);
    let user_profile_sync = UserProfileSync::read(v, &at("user_profile_sync"), c.user_profile_sync);

    let strategy = strategy?;
    let mut secrets = Secrets::new();
    let options = Options::from_proto(strategy, c.options, &at("options"), v, &mut secrets)?;
    let spec = ConnectionSpec {
        name: c.name,
        display_name,
        strategy,
        domain_aliases,
        show_as_button: c.show_as_button,
        metadata,
        user_profile_sync,
        options,
    };
    Some((spec, secrets))
}

fn check_metadata(metadata: &BTreeMap<String, String>, path: &str, v: &mut Violations) {
    if metadata.len() > MAX_METADATA_KEYS {
        v.add(path, format!("holds at most {MAX_METADATA_KEYS} keys; got {}", metadata.len()));
    }
    for (key, value) in metadata {
        let shown = truncate(key, 40);
        let key_len = key.chars().count();
        if key_len == 0 || key_len > MAX_METADATA_CHARS {
            v.add(
                format!("{path}[{shown:?}]"),
                format!("keys must be 1 to {MAX_METADATA_CHARS} characters (got {key_len})"),
            );
        }
        let value_len = value.chars().count();
        if value_len > MAX_METADATA_CHARS {
            v.add(
                format!("{path}[{shown:?}]"),
                format!("values must be at most {MAX_METADATA_CHARS} characters (got {value_len})"),
            );
        }
    }
}

/// How a request names a connection: by id (`con_…`) or by name. Names cannot hold `_`, so
/// the two never clash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionRef {
    /// A connection id.
    Id(String),
    /// A connection name.
    Name(String),
}

impl ConnectionRef {
    /// Reads the `connection` field of a request; `Err` says what is allowed.
    pub fn parse(value: &str) -> Result<ConnectionRef, String> {
        if value.is_empty() {
            return Err("is required: the connection's name or id (con_…)".into());
        }
        if let Some(rest) = value.strip_prefix("con_") {
            if !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Ok(ConnectionRef::Id(value.to_owned()));
            }
            return Err(format!(
                "{:?} is not a connection id: con_ followed by letters and digits",
                truncate(value, 80)
            ));
        }
        rules::connection_name(value).map(|()| ConnectionRef::Name(value.to_owned()))
    }
}

/// A connection as ResolveConnection answers it: the connection and its secrets (the
/// values, which only that internal RPC reveals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The connection.
    pub connection: Connection,
    /// Its secrets.
    pub secrets: Secrets,
}

/// A contract connection that does not fit the model (the registry answered a connection
/// its own rules refuse: a version mismatch between services).
#[derive(Debug, thiserror::Error)]
#[error("connection {name:?} does not fit the connection model: {problems}")]
pub struct InvalidConnection {
    /// The connection's name.
    pub name: String,
    /// What is wrong, field by field.
    pub problems: String,
}

impl Resolved {
    /// The value of the secret `name` ([`secret::names`]), if set.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }
}

impl TryFrom<pb::Connection> for Resolved {
    type Error = InvalidConnection;

    /// Reads a connection answered by ResolveConnection: see [`Resolved::read`] (what it
    /// would refuse today under the creation rules is let through).
    fn try_from(c: pb::Connection) -> Result<Self, InvalidConnection> {
        Resolved::read(c).map(|(resolved, _)| resolved)
    }
}

impl Resolved {
    /// Reads a connection answered by ResolveConnection (secret fields with their values).
    /// The registry stored it under the rules of its day, so only what the model cannot
    /// represent is refused (an unknown strategy, options of another family); a rule of
    /// the creation checks it no longer meets (a limit tightened since, a secret now
    /// required) is answered beside it, for the log, instead of making a stored
    /// connection unusable.
    pub fn read(c: pb::Connection) -> Result<(Self, Option<InvalidConnection>), InvalidConnection> {
        let id = c.id.clone();
        let name = c.name.clone();
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(postern_common::time::from_timestamp);
        let (create_time, update_time) = (time(&c.create_time).unwrap_or(0), time(&c.update_time).unwrap_or(0));
        let mut v = Violations::new();
        let parsed = parse_connection(c, &mut v);
        if let Some((spec, secrets)) = &parsed {
            spec.options.check_required_secrets(secrets, &format!("{CONNECTION}.options"), &mut v);
        }
        let problems = |v: &Violations| InvalidConnection {
            name: name.clone(),
            problems: v
                .as_slice()
                .iter()
                .map(|f| format!("{}: {}", f.field, f.description))
                .collect::<Vec<_>>()
                .join("; "),
        };
        match parsed {
            Some((spec, secrets)) => Ok((
                Resolved { connection: Connection { id, spec, create_time, update_time }, secrets },
                (!v.is_empty()).then(|| problems(&v)),
            )),
            None => Err(problems(&v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, strategy: &str, metadata: usize) -> pb::Connection {
        pb::Connection {
            id: "con_0123".into(),
            name: name.into(),
            strategy: strategy.into(),
            metadata: (0..metadata).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
            options: Some(pb::connection::Options::Database(pb::DatabaseOptions::default())),
            ..Default::default()
        }
    }

    #[test]
    fn a_stored_connection_outside_todays_creation_rules_still_reads() {
        let (fine, problems) = Resolved::read(stored("users", "auth0", 1)).expect("reads");
        assert!(problems.is_none());
        assert_eq!(fine.connection.spec.strategy, Strategy::Auth0);
        // Stored before a limit was tightened: too many metadata keys, a name now refused.
        let (old, problems) = Resolved::read(stored("Old_Name", "auth0", MAX_METADATA_KEYS + 1)).expect("reads");
        let problems = problems.expect("the rules it breaks, for the log").problems;
        assert!(problems.contains("connection.name") && problems.contains("connection.metadata"), "{problems}");
        assert_eq!(old.connection.spec.name, "Old_Name");
        assert!(Resolved::try_from(stored("Old_Name", "auth0", 0)).is_ok());
        // What the model cannot represent is refused.
        let unknown = Resolved::read(stored("users", "future-strategy", 0)).expect_err("unknown strategy");
        assert!(unknown.problems.contains("connection.strategy"), "{}", unknown.problems);
    }
}
