//! The authenticator's own types: users, identities, profiles, and the profile-sync rule.
//! Prost types stay in [`crate::api`]; the store and the login path speak these.

use serde_json::{Map, Value};

/// When a login copies the source's profile onto the user's root attributes: the
/// connection's `user_profile_sync`, in the shared connection model.
pub use postern_connection::UserProfileSync as ProfileSync;

pub use postern_connector::{Profile, default_nickname};

/// The root attributes a login may synchronize, as `UpdateUser` mask paths.
pub const SYNCED_ATTRIBUTES: &[&str] =
    &["email", "email_verified", "username", "name", "given_name", "family_name", "nickname", "picture"];

/// Which root attributes a connection's source asserts at each login: what profile sync
/// (`on_each_login`) writes, and so what `UpdateUser` may not change while it would be
/// undone. A directory or an identity provider answers a whole profile; a passwordless login
/// proves only the email address or phone number it reached, and asserts nothing else (a
/// name set since stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asserted {
    /// The whole profile: every synced attribute ([`SYNCED_ATTRIBUTES`]).
    Profile,
    /// The email address, verified (an `email` connection).
    Email,
    /// The phone number, verified (an `sms` connection).
    Phone,
}

impl Asserted {
    /// What a connection of `strategy` (its wire name) asserts.
    pub fn of_strategy(strategy: &str) -> Self {
        match strategy {
            "email" => Self::Email,
            "sms" => Self::Phone,
            _ => Self::Profile,
        }
    }

    /// The root attributes asserted, as `UpdateUser` mask paths (`phone_number` and
    /// `phone_verified` are not paths UpdateUser takes).
    pub fn attributes(self) -> &'static [&'static str] {
        match self {
            Self::Profile => SYNCED_ATTRIBUTES,
            Self::Email => &["email", "email_verified"],
            Self::Phone => &["phone_number", "phone_verified"],
        }
    }
}

/// A user's account at one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The connection's id (`con_…`).
    pub connection_id: String,
    /// The connection's name.
    pub connection: String,
    /// The connection's strategy.
    pub strategy: String,
    /// The user's id at the source.
    pub source_id: String,
    /// Whether the connection is social.
    pub is_social: bool,
    /// The lowercased email the user logs in with (database connections); empty otherwise.
    pub login_email: String,
    /// The lowercased username the user logs in with; empty when none.
    pub login_username: String,
    /// The profile the source sent at the last login (JSON).
    pub profile_data: Value,
    /// The connection's profile-sync mode at the last login or change.
    pub profile_sync: ProfileSync,
    /// Whether the profile comes from outside Postern (a custom database without import).
    pub external: bool,
    /// The Argon2id (or legacy) hash when Postern keeps the credentials.
    pub password_hash: Option<String>,
}

impl Identity {
    /// The root attributes that belong to this identity's source: those its connection
    /// asserts ([`Asserted`]) when it copies them on each login; changing them with
    /// UpdateUser would be undone by the next login.
    pub fn locked_attributes(&self) -> &'static [&'static str] {
        if self.external && self.profile_sync == ProfileSync::OnEachLogin {
            Asserted::of_strategy(&self.strategy).attributes()
        } else {
            &[]
        }
    }

    /// Whether this is the primary identity of the user `user_id`: the one the user was
    /// created with, whose `<strategy>|<source id>` the user's id is. The others were linked
    /// to the user ([`crate::linking`]).
    pub fn is_primary_of(&self, user_id: &str) -> bool {
        user_id.strip_prefix(self.strategy.as_str()).and_then(|rest| rest.strip_prefix('|')) == Some(&self.source_id)
    }
}

/// A user of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `auth0|<id>`.
    pub user_id: String,
    /// The root attributes.
    pub profile: Profile,
    /// Attributes the user may edit.
    pub user_metadata: Map<String, Value>,
    /// Attributes only the application may edit.
    pub app_metadata: Map<String, Value>,
    /// Blocked by an administrator.
    pub blocked: bool,
    /// The last login, unix microseconds.
    pub last_login: Option<i64>,
    /// The end user's address at the last login.
    pub last_ip: String,
    /// How many logins.
    pub logins_count: i64,
    /// Creation, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
    /// The identities: the primary one (which the user's id names) first, then those linked
    /// to the user, oldest first.
    pub identities: Vec<Identity>,
}

/// A change to a user (UpdateUser): each `Some` replaces the stored value.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New root attributes, each optional.
    pub email: Option<String>,
    /// New email_verified.
    pub email_verified: Option<bool>,
    /// New username.
    pub username: Option<String>,
    /// New name.
    pub name: Option<String>,
    /// New given name.
    pub given_name: Option<String>,
    /// New family name.
    pub family_name: Option<String>,
    /// New nickname.
    pub nickname: Option<String>,
    /// New picture.
    pub picture: Option<String>,
    /// New user_metadata (replaced as a whole).
    pub user_metadata: Option<Map<String, Value>>,
    /// New app_metadata (replaced as a whole).
    pub app_metadata: Option<Map<String, Value>>,
    /// New blocked flag.
    pub blocked: Option<bool>,
}

/// Normalizes a login name (email or username) for lookups.
pub fn login_key(name: &str) -> String {
    name.trim().to_lowercase()
}
