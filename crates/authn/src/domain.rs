//! The authenticator's own types: users, identities, profiles, and the profile-sync rule.
//! Prost types stay in [`crate::api`]; the store and the login path speak these.

use serde_json::{Map, Value};

/// When a login copies the source's profile onto the user's root attributes: the
/// connection's `user_profile_sync`, in the shared connection model.
pub use postern_connection::UserProfileSync as ProfileSync;

/// The root profile attributes a source provides and a login may copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// The email address.
    pub email: String,
    /// Whether the email address is verified.
    pub email_verified: bool,
    /// The username, if any.
    pub username: String,
    /// The full name.
    pub name: String,
    /// The given name.
    pub given_name: String,
    /// The family name.
    pub family_name: String,
    /// The casual name.
    pub nickname: String,
    /// The picture URL.
    pub picture: String,
}

impl Profile {
    /// The attributes a user gets when its profile is not copied (`NEVER_ON_LOGIN`): only
    /// what identifies it.
    pub fn identifying_only(&self) -> Profile {
        Profile { email: self.email.clone(), username: self.username.clone(), ..Profile::default() }
    }

    /// The profile as the JSON an identity's `profile_data` keeps.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        };
        put("email", &self.email);
        put("username", &self.username);
        put("name", &self.name);
        put("given_name", &self.given_name);
        put("family_name", &self.family_name);
        put("nickname", &self.nickname);
        put("picture", &self.picture);
        m.insert("email_verified".into(), Value::Bool(self.email_verified));
        Value::Object(m)
    }
}

/// The root attributes a login may synchronize, as `UpdateUser` mask paths.
pub const SYNCED_ATTRIBUTES: &[&str] =
    &["email", "email_verified", "username", "name", "given_name", "family_name", "nickname", "picture"];

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
    /// Whether the root attributes belong to this identity's source: changing them with
    /// UpdateUser would be undone by the next login.
    pub fn locks_root_attributes(&self) -> bool {
        self.external && self.profile_sync == ProfileSync::OnEachLogin
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
    /// The identities, oldest first.
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

/// The nickname a user gets by default: the local part of its email.
pub fn default_nickname(email: &str) -> String {
    email.split('@').next().unwrap_or_default().to_owned()
}

/// Normalizes a login name (email or username) for lookups.
pub fn login_key(name: &str) -> String {
    name.trim().to_lowercase()
}
