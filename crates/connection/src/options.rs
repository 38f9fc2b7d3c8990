//! The options of each connection family: the domain types, their validation from the
//! contract's messages, and their conversion back.
//!
//! The domain types hold no secret: a conversion from the contract moves each secret field
//! into a [`Secrets`] and leaves the public options behind. Defaults that do not depend on
//! another field are applied on the way in (a code length of 0 is stored as 6), so that
//! reads show what is in force.

use serde::{Deserialize, Serialize};

use postern_common::error::Violations;
use postern_common::validate::{self, truncate};
use postern_proto::connections::v1 as pb;

use super::catalogue::{OptionsFamily, Strategy};
use super::rules;
use super::secret::{Secret, Secrets, names};

/// Declares a domain enum mirroring a contract enum whose `…_UNSPECIFIED` means `default`.
macro_rules! wire_enum {
    (
        $(#[$doc:meta])* $name:ident mirrors $pb:ident, default $def:ident, allowed $allowed:literal {
            $($(#[$vdoc:meta])* $var:ident => $wire:literal),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $var),+
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$def
            }
        }

        impl $name {
            /// What the contract allows, for messages.
            pub const ALLOWED: &'static str = $allowed;

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $wire),+
                }
            }

            /// The value of a contract enum number: unspecified is the default; `None` for a
            /// number outside the enum.
            pub fn from_proto(value: i32) -> Option<Self> {
                match pb::$pb::try_from(value).ok()? {
                    pb::$pb::Unspecified => Some($name::$def),
                    $(pb::$pb::$var => Some($name::$var),)+
                }
            }

            /// The contract's value.
            pub fn to_proto(self) -> pb::$pb {
                match self {
                    $($name::$var => pb::$pb::$var),+
                }
            }

            /// Reads a contract enum field, recording a violation (and answering the default)
            /// for a number outside the enum.
            pub(crate) fn read(v: &mut Violations, path: &str, value: i32) -> Self {
                Self::from_proto(value).unwrap_or_else(|| {
                    v.add(path, format!("{value} is not allowed; use {}", Self::ALLOWED));
                    Self::default()
                })
            }
        }
    };
}

wire_enum! {
    /// When a login copies the source's profile onto the user's root attributes.
    UserProfileSync mirrors UserProfileSync, default OnEachLogin,
    allowed "USER_PROFILE_SYNC_ON_EACH_LOGIN, USER_PROFILE_SYNC_ON_FIRST_LOGIN or USER_PROFILE_SYNC_NEVER_ON_LOGIN" {
        /// Every login overwrites the root attributes (the default).
        OnEachLogin => "on_each_login",
        /// Only the first login copies the profile.
        OnFirstLogin => "on_first_login",
        /// No login copies the profile.
        NeverOnLogin => "never_on_login",
    }
}

wire_enum! {
    /// Password strength levels, as Auth0 defines them (the level of a [`crate::PasswordPolicy`]).
    PasswordStrength mirrors PasswordPolicy, default Good,
    allowed "PASSWORD_POLICY_NONE, PASSWORD_POLICY_LOW, PASSWORD_POLICY_FAIR, PASSWORD_POLICY_GOOD or PASSWORD_POLICY_EXCELLENT" {
        /// At least 1 character.
        None => "none",
        /// At least 6 characters.
        Low => "low",
        /// At least 8 characters with lowercase, uppercase and digits.
        Fair => "fair",
        /// At least 8 characters with 3 of lowercase, uppercase, digits, special (the default).
        Good => "good",
        /// At least 10 characters, 3 of the 4 kinds, no character more than twice in a row.
        Excellent => "excellent",
    }
}

wire_enum! {
    /// How a custom database's users move into Postern's store.
    ImportMode mirrors ImportMode, default Never,
    allowed "IMPORT_MODE_NEVER or IMPORT_MODE_LAZY" {
        /// Every login asks the custom database (the default).
        Never => "never",
        /// The first successful login imports the user.
        Lazy => "lazy",
    }
}

wire_enum! {
    /// How an OIDC connection receives tokens.
    OidcChannel mirrors OidcChannel, default Back,
    allowed "OIDC_CHANNEL_BACK or OIDC_CHANNEL_FRONT" {
        /// Authorization code flow with the client secret (the default).
        Back => "back_channel",
        /// Implicit flow, ID token through the browser; no client secret.
        Front => "front_channel",
    }
}

wire_enum! {
    /// How an OIDC connection authenticates to the token endpoint.
    OidcClientAuth mirrors OidcClientAuth, default ClientSecret,
    allowed "OIDC_CLIENT_AUTH_CLIENT_SECRET or OIDC_CLIENT_AUTH_PRIVATE_KEY_JWT" {
        /// The client secret (the default).
        ClientSecret => "client_secret",
        /// A JWT signed with the connection's client assertion key.
        PrivateKeyJwt => "private_key_jwt",
    }
}

impl OidcClientAuth {
    /// Whether this is the default, the client secret.
    pub fn is_client_secret(&self) -> bool {
        *self == OidcClientAuth::ClientSecret
    }
}

wire_enum! {
    /// The SAML binding of authentication requests.
    SamlBinding mirrors SamlBinding, default HttpRedirect,
    allowed "SAML_BINDING_HTTP_REDIRECT or SAML_BINDING_HTTP_POST" {
        /// HTTP-Redirect (the default).
        HttpRedirect => "http_redirect",
        /// HTTP-POST.
        HttpPost => "http_post",
    }
}

wire_enum! {
    /// SAML signature algorithms; SHA-1 only beside one of them, with `allow_sha1`.
    SamlSignatureAlgorithm mirrors SamlSignatureAlgorithm, default RsaSha256,
    allowed "SAML_SIGNATURE_ALGORITHM_RSA_SHA256 or SAML_SIGNATURE_ALGORITHM_RSA_SHA512" {
        /// RSA with SHA-256 (the default).
        RsaSha256 => "rsa-sha256",
        /// RSA with SHA-512.
        RsaSha512 => "rsa-sha512",
    }
}

wire_enum! {
    /// How the SMTP connection is secured.
    SmtpTls mirrors SmtpTls, default Starttls,
    allowed "SMTP_TLS_STARTTLS, SMTP_TLS_IMPLICIT, SMTP_TLS_NONE or SMTP_TLS_OPPORTUNISTIC" {
        /// STARTTLS, required (the default; port 587).
        Starttls => "starttls",
        /// TLS from the first byte (port 465).
        Implicit => "implicit",
        /// No encryption (port 25); for local test sinks.
        None => "none",
        /// STARTTLS when offered, else plain (port 25); a credential-less local relay.
        Opportunistic => "opportunistic",
    }
}

wire_enum! {
    /// The HTTP API an `sms` connection sends through.
    SmsProvider mirrors SmsProvider, default Twilio,
    allowed "SMS_PROVIDER_TWILIO or SMS_PROVIDER_WEBHOOK" {
        /// Twilio's Messages API shape (the default).
        Twilio => "twilio",
        /// A webhook signed with HMAC-SHA256.
        Webhook => "webhook",
    }
}

impl PasswordStrength {
    /// The shortest password the level allows.
    pub fn min_length(self) -> u32 {
        match self {
            PasswordStrength::None => 1,
            PasswordStrength::Low => 6,
            PasswordStrength::Fair | PasswordStrength::Good => 8,
            PasswordStrength::Excellent => 10,
        }
    }
}

impl SmtpTls {
    /// The port used when `smtp_port` is 0.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None | SmtpTls::Opportunistic => 25,
        }
    }
}

/// The options of a connection: one variant per options family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Options {
    /// `auth0`.
    Database(DatabaseOptions),
    /// The social strategies.
    Oauth2(OAuth2Options),
    /// `oidc`.
    Oidc(OidcOptions),
    /// `google-apps`.
    GoogleApps(GoogleAppsOptions),
    /// `ad` and `ldap`.
    Ldap(LdapOptions),
    /// `samlp`.
    Saml(SamlOptions),
    /// `waad`.
    AzureAd(AzureAdOptions),
    /// `email`.
    Email(EmailOptions),
    /// `sms`.
    Sms(SmsOptions),
}

/// Where the value of a parameter added to a provider's authorization request comes from
/// (an entry of Auth0's `upstream_params`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamParam {
    /// A fixed value, sent with every login.
    Value(String),
    /// The parameter of the application's `/authorize` request whose value is passed on
    /// (one of [`UpstreamParam::ALIASES`]); nothing is sent when the application gave none.
    Alias(String),
}

impl UpstreamParam {
    /// The parameters of the application's request an entry may pass on (Auth0's list).
    pub const ALIASES: &'static [&'static str] = &[
        "acr_values",
        "audience",
        "client_id",
        "display",
        "id_token_hint",
        "login_hint",
        "max_age",
        "prompt",
        "resource",
        "response_mode",
        "response_type",
        "ui_locales",
    ];

    /// The parameters Postern sets itself for the protocol, which no entry may name.
    pub const RESERVED: &'static [&'static str] = &[
        "client_id",
        "redirect_uri",
        "response_type",
        "response_mode",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
        "client_assertion",
        "client_assertion_type",
    ];

    /// At most this many entries per connection.
    pub const MAX: usize = 20;
}

/// A connection's `upstream_params`, by the name sent to the provider.
pub type UpstreamParams = std::collections::BTreeMap<String, UpstreamParam>;

/// The parameters added to the provider's authorization request for one login: each entry
/// of `params` with its fixed value, or with the value the application's request gave the
/// aliased parameter (`request`, by name; an entry whose parameter the application left
/// empty is not sent).
pub fn resolve_upstream_params(
    params: &UpstreamParams,
    request: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    params
        .iter()
        .filter_map(|(name, param)| {
            let value = match param {
                UpstreamParam::Value(v) => v.as_str(),
                UpstreamParam::Alias(a) => request.get(a).map(String::as_str).unwrap_or_default(),
            };
            (!value.is_empty()).then(|| (name.clone(), value.to_owned()))
        })
        .collect()
}

/// Options of a database connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseOptions {
    /// Whether users also have a username.
    pub requires_username: bool,
    /// The shortest username (1 to 128).
    pub username_min_length: u32,
    /// The longest username (`username_min_length` to 128).
    pub username_max_length: u32,
    /// The strength required of new passwords.
    pub password_policy: PasswordStrength,
    /// The shortest password on top of the policy; 0 means the policy's own minimum. Kept as
    /// given so that a later change of policy does not clash with it; see
    /// [`DatabaseOptions::effective_password_min_length`].
    pub password_min_length: u32,
    /// How many previous passwords a new one must differ from (0 to 24).
    pub password_history_size: u32,
    /// Refuses passwords containing the user's name, username or email local part.
    pub password_no_personal_info: bool,
    /// Refuses common passwords.
    pub password_dictionary: PasswordDictionary,
    /// Whether repeated failed logins lock an account out.
    pub brute_force_protection: bool,
    /// Refuses public sign-ups.
    pub disable_signup: bool,
    /// The customer's own store, if any.
    pub custom_database: Option<CustomDatabase>,
}

/// A dictionary of refused passwords.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordDictionary {
    /// Whether the check is on.
    pub enable: bool,
    /// Extra refused passwords (at most 200, each 1 to 50 characters).
    pub words: Vec<String>,
}

/// A customer's user store behind `postern.customdb.v1`. Its optional bearer token is the
/// secret [`names::CUSTOM_DATABASE_TOKEN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomDatabase {
    /// The gRPC endpoint, an absolute `http(s)` URL.
    pub endpoint: String,
    /// Whether users are imported.
    pub import_mode: ImportMode,
    /// Call timeout in seconds (1 to 60).
    pub timeout_seconds: u32,
    /// PEM CA certificates the `https` endpoint's certificate must chain to, instead of the
    /// public roots; empty for the public roots. Not a secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificate: String,
}

/// Options of the social strategies and of generic `oauth2`. The client secret is the secret
/// [`names::CLIENT_SECRET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Options {
    /// The client id at the provider.
    pub client_id: String,
    /// Scopes asked besides the provider's defaults.
    pub scopes: Vec<String>,
    /// Authorization endpoint; empty means the provider's well-known one.
    pub authorization_endpoint: String,
    /// Token endpoint; empty means the provider's well-known one.
    pub token_endpoint: String,
    /// Profile endpoint; empty means the provider's well-known one.
    pub userinfo_endpoint: String,
    /// The OpenID Connect social strategies: the issuer of their ID tokens; empty means the
    /// provider's own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// The OpenID Connect social strategies: the discovery document; empty means the
    /// issuer's (or the provider's well-known one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub discovery_url: String,
    /// The OpenID Connect social strategies: the signing keys' URL; empty means the
    /// discovery document's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// Whether the provider's tokens are kept (sealed) on the identity.
    #[serde(default)]
    pub store_tokens: bool,
    /// `apple`: the developer team id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub apple_team_id: String,
    /// `apple`: the Sign in with Apple key's id (its private key is the client secret).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub apple_key_id: String,
    /// `facebook`: the Graph API fields the profile is read with; empty means
    /// [`OAuth2Options::DEFAULT_FACEBOOK_FIELDS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile_fields: Vec<String>,
    /// `github`: where the email addresses are read; empty means
    /// [`OAuth2Options::GITHUB_EMAILS_ENDPOINT`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub emails_endpoint: String,
    /// `oauth2`: where the profile attributes are in the profile endpoint's answer; `None`
    /// means the OpenID Connect claim names.
    /// Boxed: most connections have none, and the options enum stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_mapping: Option<Box<ProfileMapping>>,
    /// Parameters added to the provider's authorization request (Auth0's `upstream_params`).
    #[serde(default, skip_serializing_if = "UpstreamParams::is_empty")]
    pub upstream_params: UpstreamParams,
}

impl OAuth2Options {
    /// The Graph API fields a `facebook` connection reads by default.
    pub const DEFAULT_FACEBOOK_FIELDS: &'static [&'static str] =
        &["id", "name", "email", "first_name", "last_name", "picture"];
    /// GitHub's endpoint of the user's email addresses.
    pub const GITHUB_EMAILS_ENDPOINT: &'static str = "https://api.github.com/user/emails";
}

/// Where a generic `oauth2` connection finds each profile attribute in the profile
/// endpoint's JSON answer: dotted paths of member names and array indexes. An empty path
/// takes the attribute's default (the OpenID Connect claim name; see
/// [`ProfileMapping::path`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileMapping {
    /// The user's stable id; empty means `sub`, else `id`.
    pub user_id: String,
    /// The email address.
    pub email: String,
    /// Whether the email address is verified (only `true` counts).
    pub email_verified: String,
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
    /// The username; empty means `preferred_username`.
    pub username: String,
}

/// A profile attribute a [`ProfileMapping`] locates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedAttribute {
    /// The email address.
    Email,
    /// Whether it is verified.
    EmailVerified,
    /// The full name.
    Name,
    /// The given name.
    GivenName,
    /// The family name.
    FamilyName,
    /// The casual name.
    Nickname,
    /// The picture URL.
    Picture,
    /// The username.
    Username,
}

impl ProfileMapping {
    /// The longest path.
    pub const MAX_PATH_CHARS: usize = 200;

    /// The paths tried for the user's id, in order.
    pub fn user_id_paths(&self) -> Vec<&str> {
        if self.user_id.is_empty() { vec!["sub", "id"] } else { vec![self.user_id.as_str()] }
    }

    /// The path of `attribute`: the one configured, else its default.
    pub fn path(&self, attribute: MappedAttribute) -> &str {
        let (set, default) = match attribute {
            MappedAttribute::Email => (&self.email, "email"),
            MappedAttribute::EmailVerified => (&self.email_verified, "email_verified"),
            MappedAttribute::Name => (&self.name, "name"),
            MappedAttribute::GivenName => (&self.given_name, "given_name"),
            MappedAttribute::FamilyName => (&self.family_name, "family_name"),
            MappedAttribute::Nickname => (&self.nickname, "nickname"),
            MappedAttribute::Picture => (&self.picture, "picture"),
            MappedAttribute::Username => (&self.username, "preferred_username"),
        };
        if set.is_empty() { default } else { set }
    }

    fn fields(&self) -> [(&'static str, &str); 9] {
        [
            ("user_id", &self.user_id),
            ("email", &self.email),
            ("email_verified", &self.email_verified),
            ("name", &self.name),
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
            ("nickname", &self.nickname),
            ("picture", &self.picture),
            ("username", &self.username),
        ]
    }
}

/// Options of `oidc`. The client secret is the secret [`names::CLIENT_SECRET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcOptions {
    /// The issuer; empty when only `discovery_url` is given.
    pub issuer: String,
    /// The discovery document URL; empty means `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: String,
    /// The client id.
    pub client_id: String,
    /// Scopes asked besides `openid`.
    pub scopes: Vec<String>,
    /// How tokens are received.
    pub channel: OidcChannel,
    /// Authorization endpoint; empty means the discovery document's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authorization_endpoint: String,
    /// Token endpoint; empty means the discovery document's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_endpoint: String,
    /// Userinfo endpoint; set, it is read after each login.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userinfo_endpoint: String,
    /// The signing keys' URL; empty means the discovery document's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// Whether the provider's tokens are kept (sealed) on the identity.
    #[serde(default)]
    pub store_tokens: bool,
    /// Whether userinfo is read after each login.
    #[serde(default)]
    pub fetch_userinfo: bool,
    /// How the token endpoint authenticates the client (not stored when the default).
    #[serde(default, skip_serializing_if = "OidcClientAuth::is_client_secret")]
    pub client_auth: OidcClientAuth,
    /// The `kid` of client assertions; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_assertion_key_id: String,
    /// Parameters added to the provider's authorization request (Auth0's `upstream_params`).
    #[serde(default, skip_serializing_if = "UpstreamParams::is_empty")]
    pub upstream_params: UpstreamParams,
}

/// Options of `google-apps`. The client secret is the secret [`names::CLIENT_SECRET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleAppsOptions {
    /// The Workspace primary domain, lowercase.
    pub domain: String,
    /// The OAuth client id.
    pub client_id: String,
    /// Further Workspace domains allowed, lowercase.
    pub allowed_domains: Vec<String>,
    /// The issuer of Google's ID tokens; empty means `https://accounts.google.com`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// The discovery document; empty means the issuer's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub discovery_url: String,
    /// Whether Google's tokens are kept (sealed) on the identity.
    #[serde(default)]
    pub store_tokens: bool,
    /// Parameters added to the provider's authorization request (Auth0's `upstream_params`).
    #[serde(default, skip_serializing_if = "UpstreamParams::is_empty")]
    pub upstream_params: UpstreamParams,
}

/// Which directory attribute holds each profile attribute (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapAttributes {
    /// Email attribute.
    pub email: String,
    /// Full name attribute.
    pub name: String,
    /// Given name attribute.
    pub given_name: String,
    /// Family name attribute.
    pub family_name: String,
    /// Username (and user id) attribute.
    pub username: String,
}

/// Options of `ad` and `ldap`. The bind password is the secret [`names::BIND_PASSWORD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapOptions {
    /// `ldap://` or `ldaps://` URL.
    pub url: String,
    /// StartTLS on an `ldap://` URL.
    pub start_tls: bool,
    /// The service account's DN.
    pub bind_dn: String,
    /// Where users are searched.
    pub base_dn: String,
    /// The search filter with its `{username}` placeholder (default applied).
    pub user_filter: String,
    /// The attribute mapping (defaults applied).
    pub attributes: LdapAttributes,
    /// Operation timeout in seconds (1 to 60).
    pub timeout_seconds: u32,
    /// Extra trusted CA certificates (PEM); empty for none.
    pub ca_certificates: String,
    /// Whether an `ldap://` URL without StartTLS (passwords in clear) is allowed.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The groups read into the `groups` claim, when enabled.
    #[serde(default)]
    pub groups: LdapGroups,
}

/// Which groups a directory user belongs to (defaults applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapGroups {
    /// Whether groups are read at each login into the `groups` claim.
    pub enabled: bool,
    /// Where groups are searched.
    pub base_dn: String,
    /// The filter of the groups listing a DN, with its `{dn}` placeholder.
    pub filter: String,
    /// The attribute naming a group in the claim.
    pub name_attribute: String,
    /// For `ldap`: how many levels of nesting are followed (1 to 10).
    pub max_depth: u32,
}

impl LdapOptions {
    /// Whether the connection's traffic is TLS (`ldaps://` or StartTLS).
    pub fn is_tls(&self) -> bool {
        self.start_tls || self.url.starts_with("ldaps://")
    }
}

/// Which SAML attribute holds each profile attribute (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlAttributes {
    /// Email attribute.
    pub email: String,
    /// Full name attribute.
    pub name: String,
    /// Given name attribute.
    pub given_name: String,
    /// Family name attribute.
    pub family_name: String,
}

/// Options of `samlp`. The request signing key is the secret [`names::REQUEST_SIGNING_KEY`],
/// the assertion decryption key the secret [`names::DECRYPTION_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlOptions {
    /// The IdP's single sign-on URL; empty when `metadata_url` gives it.
    pub sign_in_url: String,
    /// The IdP's single logout URL; empty for none.
    pub sign_out_url: String,
    /// The IdP's signing certificates (PEM), at least one unless `metadata_url` is set.
    pub signing_certificates: Vec<String>,
    /// The IdP's entity id; empty means the response issuer is not checked against one.
    pub entity_id: String,
    /// The SP entity id; empty means `urn:postern:<tenant>:<connection name>`.
    pub audience: String,
    /// Whether requests are signed.
    pub sign_request: bool,
    /// Signature algorithm of requests and required of responses.
    pub signature_algorithm: SamlSignatureAlgorithm,
    /// Certificate (PEM) of the request signing key; empty for none.
    pub request_signing_certificate: String,
    /// Binding of requests.
    pub binding: SamlBinding,
    /// The attribute mapping (defaults applied).
    pub attributes: SamlAttributes,
    /// Certificate (PEM) of the decryption key, published for encryption; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decryption_certificate: String,
    /// Whether a plain (unencrypted) assertion is refused.
    #[serde(default)]
    pub require_encrypted_assertions: bool,
    /// Whether RSA-SHA1 signatures and SHA-1 digests are accepted beside `signature_algorithm`.
    #[serde(default)]
    pub allow_sha1: bool,
    /// IdP-initiated logins (off by default).
    #[serde(default)]
    pub idp_initiated: SamlIdpInitiated,
    /// The IdP's metadata document, read at login; empty for none. With it `sign_in_url`
    /// and `signing_certificates` may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata_url: String,
}

/// IdP-initiated logins of a `samlp` connection (Auth0's "IdP-Initiated SSO").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlIdpInitiated {
    /// Whether unsolicited responses are accepted.
    pub enabled: bool,
    /// The client the user logs in to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// The `/authorize` query made for that client (`response_type`, `scope`, `audience`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_authorize_query: String,
}

impl SamlIdpInitiated {
    /// The `/authorize` parameters a query may set.
    pub const QUERY_PARAMETERS: &'static [&'static str] = &["response_type", "scope", "audience"];
}

/// Options of `waad`. The client secret is the secret [`names::CLIENT_SECRET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureAdOptions {
    /// The directory's primary domain, lowercase.
    pub domain: String,
    /// The directory id (GUID, lowercase), or `organizations` / `common` for a multi-tenant
    /// application; empty means addressed by `domain`.
    pub tenant_id: String,
    /// The application id (GUID, lowercase).
    pub client_id: String,
    /// The discovery document; empty means Microsoft's v2.0 document of the directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub discovery_url: String,
    /// A multi-tenant application's admitted directory ids (lowercase); empty admits any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tenant_ids: Vec<String>,
    /// Whether Entra ID's tokens are kept (sealed) on the identity.
    #[serde(default)]
    pub store_tokens: bool,
    /// Parameters added to the provider's authorization request (Auth0's `upstream_params`).
    #[serde(default, skip_serializing_if = "UpstreamParams::is_empty")]
    pub upstream_params: UpstreamParams,
}

/// Options of `email`. The SMTP password is the secret [`names::SMTP_PASSWORD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailOptions {
    /// The sender.
    pub from: String,
    /// The subject (default applied).
    pub subject: String,
    /// The code message body with `{{code}}` (default applied).
    pub code_template: String,
    /// The magic link message body with `{{link}}` (default applied).
    pub link_template: String,
    /// Digits of a code (4 to 10).
    pub code_length: u32,
    /// Validity of a code or link in seconds (30 to 86,400).
    pub code_lifetime_seconds: u32,
    /// Wrong codes allowed (1 to 10).
    pub max_attempts: u32,
    /// SMTP host.
    pub smtp_host: String,
    /// SMTP port; 0 means [`SmtpTls::default_port`].
    pub smtp_port: u16,
    /// SMTP user; empty means no authentication.
    pub smtp_username: String,
    /// SMTP transport security.
    pub smtp_tls: SmtpTls,
    /// Sends a magic link instead of a code when the request does not say.
    pub magic_link: bool,
    /// Refuses to create users (only known addresses log in).
    #[serde(default)]
    pub disable_signup: bool,
    /// A magic link logs in only in the browser that asked for it.
    #[serde(default)]
    pub magic_link_same_browser: bool,
    /// PEM CA certificates the SMTP server's certificate must chain to; empty for the
    /// system's roots.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub smtp_ca_certificate: String,
}

/// Options of `sms`. The provider token is the secret [`names::TOKEN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsOptions {
    /// The sender number or id.
    pub from: String,
    /// The message with `{{code}}` (default applied).
    pub template: String,
    /// The provider API's base URL.
    pub provider_url: String,
    /// The account at the provider.
    pub account: String,
    /// Digits of a code (4 to 10).
    pub code_length: u32,
    /// Validity of a code in seconds (30 to 86,400).
    pub code_lifetime_seconds: u32,
    /// Wrong codes allowed (1 to 10).
    pub max_attempts: u32,
    /// The API the messages go through.
    #[serde(default)]
    pub provider: SmsProvider,
    /// Refuses to create users (only known phone numbers log in).
    #[serde(default)]
    pub disable_signup: bool,
}

/// Auth0's default length of a one-time code.
pub const DEFAULT_CODE_LENGTH: u32 = 6;
/// Auth0's default lifetime of a one-time code, in seconds.
pub const DEFAULT_CODE_LIFETIME_SECONDS: u32 = 180;
/// Auth0's default number of wrong codes allowed.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The default subject of a passwordless email: it says which of the two the message holds
/// (`link` is empty in a code message).
pub const DEFAULT_EMAIL_SUBJECT: &str = "{% if link %}Your login link{% else %}Your verification code{% endif %}";
/// The default body of a code email.
pub const DEFAULT_EMAIL_CODE_TEMPLATE: &str =
    "Your verification code is {{code}}. It expires in a few minutes. If you did not ask for it, ignore this message.";
/// The default body of a magic link email.
pub const DEFAULT_EMAIL_LINK_TEMPLATE: &str =
    "Open this link to log in: {{link}} It expires in a few minutes. If you did not ask for it, ignore this message.";
/// The default SMS text.
pub const DEFAULT_SMS_TEMPLATE: &str = "Your verification code is {{code}}";

impl DatabaseOptions {
    /// The shortest password accepted: the larger of the policy's minimum and
    /// `password_min_length`.
    pub fn effective_password_min_length(&self) -> u32 {
        self.password_min_length.max(self.password_policy.min_length())
    }
}

impl DatabaseOptions {
    /// Checks a new user's username against these options, adding violations of `field`:
    /// empty when the connection uses no usernames, else within the length bounds and of
    /// the allowed characters.
    pub fn check_username(&self, v: &mut Violations, field: &str, username: &str) {
        if !self.requires_username {
            if !username.is_empty() {
                v.add(field, "must be empty: this connection does not use usernames (requires_username is off)");
            }
            return;
        }
        let (min, max) = (self.username_min_length, self.username_max_length);
        let len = username.chars().count();
        if len < min as usize || len > max as usize {
            v.add(field, format!("must be {min} to {max} characters long (got {len})"));
        }
        if !username.chars().all(|c| c.is_ascii_alphanumeric() || "_-.+!#$'^`~".contains(c)) {
            v.add(field, "may contain only letters, digits and _ - . + ! # $ ' ^ ` ~ (no @, no spaces)");
        }
    }

    /// Whether the custom database's users are imported on their first login.
    pub fn imports_lazily(&self) -> bool {
        self.custom_database.as_ref().is_some_and(|c| c.import_mode == ImportMode::Lazy)
    }
}

impl EmailOptions {
    /// The SMTP port in force.
    pub fn effective_smtp_port(&self) -> u16 {
        if self.smtp_port == 0 { self.smtp_tls.default_port() } else { self.smtp_port }
    }
}

impl LdapOptions {
    /// The default search filter of a strategy.
    pub fn default_user_filter(strategy: Strategy) -> &'static str {
        if strategy == Strategy::Ad {
            "(&(objectClass=user)(|(sAMAccountName={username})(userPrincipalName={username})))"
        } else {
            "(&(objectClass=person)(uid={username}))"
        }
    }
}

impl Options {
    /// The family of these options.
    pub fn family(&self) -> OptionsFamily {
        match self {
            Options::Database(_) => OptionsFamily::Database,
            Options::Oauth2(_) => OptionsFamily::Oauth2,
            Options::Oidc(_) => OptionsFamily::Oidc,
            Options::GoogleApps(_) => OptionsFamily::GoogleApps,
            Options::Ldap(_) => OptionsFamily::Ldap,
            Options::Saml(_) => OptionsFamily::Saml,
            Options::AzureAd(_) => OptionsFamily::AzureAd,
            Options::Email(_) => OptionsFamily::Email,
            Options::Sms(_) => OptionsFamily::Sms,
        }
    }

    /// The connection's `upstream_params`: the redirect strategies that send the browser to
    /// an OAuth 2.0 authorization endpoint have them; `None` for the others.
    pub fn upstream_params(&self) -> Option<&UpstreamParams> {
        match self {
            Options::Oauth2(o) => Some(&o.upstream_params),
            Options::Oidc(o) => Some(&o.upstream_params),
            Options::GoogleApps(o) => Some(&o.upstream_params),
            Options::AzureAd(o) => Some(&o.upstream_params),
            _ => None,
        }
    }

    /// The names of every secret a family can hold (see [`names`]).
    pub fn secret_names(family: OptionsFamily) -> &'static [&'static str] {
        match family {
            OptionsFamily::Database => &[names::CUSTOM_DATABASE_TOKEN],
            OptionsFamily::Oauth2 | OptionsFamily::GoogleApps | OptionsFamily::AzureAd => &[names::CLIENT_SECRET],
            OptionsFamily::Oidc => &[names::CLIENT_SECRET, names::CLIENT_ASSERTION_KEY],
            OptionsFamily::Ldap => &[names::BIND_PASSWORD],
            OptionsFamily::Saml => &[names::REQUEST_SIGNING_KEY, names::DECRYPTION_KEY],
            OptionsFamily::Email => &[names::SMTP_PASSWORD],
            OptionsFamily::Sms => &[names::TOKEN],
        }
    }

    /// The secrets these options need, each with the reason, for the violation when missing.
    pub fn required_secrets(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            Options::Database(_) => vec![],
            Options::Oauth2(_) | Options::GoogleApps(_) | Options::AzureAd(_) => {
                vec![(names::CLIENT_SECRET, "is required: the client secret registered with the provider")]
            }
            Options::Oidc(o) if o.channel == OidcChannel::Back && o.client_auth == OidcClientAuth::PrivateKeyJwt => {
                vec![(
                    names::CLIENT_ASSERTION_KEY,
                    "is required with OIDC_CLIENT_AUTH_PRIVATE_KEY_JWT: the PKCS#8 PEM private key whose public key the \
                     provider holds",
                )]
            }
            Options::Oidc(o) if o.channel == OidcChannel::Back => vec![(
                names::CLIENT_SECRET,
                "is required for the back channel (OIDC_CHANNEL_BACK); set it, or use OIDC_CHANNEL_FRONT",
            )],
            Options::Oidc(_) => vec![],
            Options::Ldap(_) => vec![(
                names::BIND_PASSWORD,
                "is required: the password of bind_dn (an empty password would be an unauthenticated bind)",
            )],
            Options::Saml(o) => {
                let mut required = Vec::new();
                if o.sign_request {
                    required
                        .push((names::REQUEST_SIGNING_KEY, "is required when sign_request is set: a PEM private key"));
                }
                if !o.decryption_certificate.is_empty() {
                    required.push((
                        names::DECRYPTION_KEY,
                        "is required with decryption_certificate: the PEM RSA private key of that certificate, which \
                         decrypts the assertions the identity provider encrypts to it",
                    ));
                }
                required
            }
            Options::Email(o) if !o.smtp_username.is_empty() => {
                vec![(names::SMTP_PASSWORD, "is required when smtp_username is set")]
            }
            Options::Email(_) => vec![],
            Options::Sms(_) => vec![(names::TOKEN, "is required: the provider API token")],
        }
    }

    /// Records a violation under `path` (`connection.options`) for every required secret that
    /// `secrets` lacks.
    ///
    /// Also checks what a secret and a public field say together: a SAML decryption key
    /// must be the key of `decryption_certificate` (so the IdP encrypts to a key this side
    /// holds), and a request signing key the key of `request_signing_certificate` when that
    /// is given (the metadata publishes it: the IdP checks requests against it), whether the
    /// key comes with the request or is the stored one.
    pub fn check_required_secrets(&self, secrets: &Secrets, path: &str, v: &mut Violations) {
        let family = self.family().field_name();
        for (name, why) in self.required_secrets() {
            if !secrets.is_set(name) {
                v.add(format!("{path}.{family}.{name}"), why);
            }
        }
        if let Options::Saml(o) = self
            && let Some(key) = secrets.get(names::DECRYPTION_KEY)
        {
            if o.decryption_certificate.is_empty() {
                v.add(
                    format!("{path}.{family}.decryption_certificate"),
                    "is required with decryption_key: the certificate (PEM) of that key, which the SP metadata \
                     publishes so that the identity provider encrypts to it",
                );
            } else if let Err(e) = rules::key_pair(
                key.expose(),
                &o.decryption_certificate,
                "decryption_certificate",
                "assertions are decrypted with RSA-OAEP key transport",
            ) {
                v.add(format!("{path}.{family}.decryption_key"), e);
            }
        }
        if let Options::Saml(o) = self
            && let Some(key) = secrets.get(names::REQUEST_SIGNING_KEY)
            && !o.request_signing_certificate.is_empty()
            && let Err(e) = rules::key_pair(
                key.expose(),
                &o.request_signing_certificate,
                "request_signing_certificate",
                "requests are signed with RSA-SHA256 or RSA-SHA512",
            )
        {
            v.add(format!("{path}.{family}.request_signing_key"), e);
        }
    }

    /// Validates the contract's options for `strategy`, at `path` (`connection.options`).
    /// Absent options stand for the family's defaults. Answers `None` (with a violation) when
    /// the family does not fit the strategy; secrets found go into `secrets`.
    pub fn from_proto(
        strategy: Strategy,
        options: Option<pb::connection::Options>,
        path: &str,
        v: &mut Violations,
        secrets: &mut Secrets,
    ) -> Option<Options> {
        use pb::connection::Options as O;
        let family = strategy.family();
        let options = match options {
            Some(o) if OptionsFamily::of_proto(&o) != family => {
                v.add(
                    path,
                    format!(
                        "strategy {strategy:?} takes `{}` options, not `{}`",
                        family.field_name(),
                        OptionsFamily::of_proto(&o).field_name()
                    ),
                );
                return None;
            }
            Some(o) => o,
            None => empty_proto(family),
        };
        let at = format!("{path}.{}", family.field_name());
        let out = match options {
            O::Database(o) => Options::Database(database(o, &at, v, secrets)),
            O::Oauth2(o) => Options::Oauth2(oauth2(strategy, o, &at, v, secrets)),
            O::Oidc(o) => Options::Oidc(oidc(o, &at, v, secrets)),
            O::GoogleApps(o) => Options::GoogleApps(google_apps(o, &at, v, secrets)),
            O::Ldap(o) => Options::Ldap(ldap(strategy, o, &at, v, secrets)),
            O::Saml(o) => Options::Saml(saml(o, &at, v, secrets)),
            O::AzureAd(o) => Options::AzureAd(azure_ad(o, &at, v, secrets)),
            O::Email(o) => Options::Email(email(o, &at, v, secrets)),
            O::Sms(o) => Options::Sms(sms(o, &at, v, secrets)),
        };
        Some(out)
    }

    /// The contract's options. Secret fields are empty and their `_set` companions tell
    /// whether `secrets` holds them; with `reveal` (ResolveConnection only) the secret fields
    /// carry the values too.
    pub fn to_proto(&self, secrets: &Secrets, reveal: bool) -> pb::connection::Options {
        use pb::connection::Options as O;
        let secret = |name: &str| -> (String, bool) {
            match secrets.get(name) {
                Some(s) if reveal => (s.expose().to_owned(), true),
                Some(_) => (String::new(), true),
                None => (String::new(), false),
            }
        };
        match self {
            Options::Database(o) => {
                let (token, token_set) = secret(names::CUSTOM_DATABASE_TOKEN);
                O::Database(pb::DatabaseOptions {
                    requires_username: o.requires_username,
                    username_min_length: to_i32(o.username_min_length),
                    username_max_length: to_i32(o.username_max_length),
                    password_policy: o.password_policy.to_proto() as i32,
                    password_min_length: to_i32(o.password_min_length),
                    password_history_size: to_i32(o.password_history_size),
                    password_no_personal_info: o.password_no_personal_info,
                    password_dictionary: Some(pb::PasswordDictionary {
                        enable: o.password_dictionary.enable,
                        words: o.password_dictionary.words.clone(),
                    }),
                    brute_force_protection: Some(o.brute_force_protection),
                    disable_signup: o.disable_signup,
                    custom_database: o.custom_database.as_ref().map(|c| pb::CustomDatabase {
                        endpoint: c.endpoint.clone(),
                        import_mode: c.import_mode.to_proto() as i32,
                        timeout_seconds: to_i32(c.timeout_seconds),
                        token,
                        token_set,
                        ca_certificate: c.ca_certificate.clone(),
                    }),
                })
            }
            Options::Oauth2(o) => {
                let (client_secret, client_secret_set) = secret(names::CLIENT_SECRET);
                O::Oauth2(pb::OAuth2Options {
                    client_id: o.client_id.clone(),
                    client_secret,
                    client_secret_set,
                    scopes: o.scopes.clone(),
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    token_endpoint: o.token_endpoint.clone(),
                    userinfo_endpoint: o.userinfo_endpoint.clone(),
                    issuer: o.issuer.clone(),
                    discovery_url: o.discovery_url.clone(),
                    jwks_uri: o.jwks_uri.clone(),
                    store_tokens: o.store_tokens,
                    apple_team_id: o.apple_team_id.clone(),
                    apple_key_id: o.apple_key_id.clone(),
                    profile_fields: o.profile_fields.clone(),
                    emails_endpoint: o.emails_endpoint.clone(),
                    profile_mapping: o.profile_mapping.as_ref().map(|m| pb::ProfileMapping {
                        user_id: m.user_id.clone(),
                        email: m.email.clone(),
                        email_verified: m.email_verified.clone(),
                        name: m.name.clone(),
                        given_name: m.given_name.clone(),
                        family_name: m.family_name.clone(),
                        nickname: m.nickname.clone(),
                        picture: m.picture.clone(),
                        username: m.username.clone(),
                    }),
                    upstream_params: upstream_params_to_pb(&o.upstream_params),
                })
            }
            Options::Oidc(o) => {
                let (client_secret, client_secret_set) = secret(names::CLIENT_SECRET);
                let (client_assertion_key, client_assertion_key_set) = secret(names::CLIENT_ASSERTION_KEY);
                O::Oidc(pb::OidcOptions {
                    issuer: o.issuer.clone(),
                    discovery_url: o.discovery_url.clone(),
                    client_id: o.client_id.clone(),
                    client_secret,
                    client_secret_set,
                    scopes: o.scopes.clone(),
                    channel: o.channel.to_proto() as i32,
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    token_endpoint: o.token_endpoint.clone(),
                    userinfo_endpoint: o.userinfo_endpoint.clone(),
                    jwks_uri: o.jwks_uri.clone(),
                    store_tokens: o.store_tokens,
                    fetch_userinfo: o.fetch_userinfo,
                    client_auth: o.client_auth.to_proto() as i32,
                    client_assertion_key,
                    client_assertion_key_set,
                    client_assertion_key_id: o.client_assertion_key_id.clone(),
                    upstream_params: upstream_params_to_pb(&o.upstream_params),
                })
            }
            Options::GoogleApps(o) => {
                let (client_secret, client_secret_set) = secret(names::CLIENT_SECRET);
                O::GoogleApps(pb::GoogleAppsOptions {
                    domain: o.domain.clone(),
                    client_id: o.client_id.clone(),
                    client_secret,
                    client_secret_set,
                    allowed_domains: o.allowed_domains.clone(),
                    issuer: o.issuer.clone(),
                    discovery_url: o.discovery_url.clone(),
                    store_tokens: o.store_tokens,
                    upstream_params: upstream_params_to_pb(&o.upstream_params),
                })
            }
            Options::Ldap(o) => {
                let (bind_password, bind_password_set) = secret(names::BIND_PASSWORD);
                O::Ldap(pb::LdapOptions {
                    url: o.url.clone(),
                    start_tls: o.start_tls,
                    bind_dn: o.bind_dn.clone(),
                    bind_password,
                    bind_password_set,
                    base_dn: o.base_dn.clone(),
                    user_filter: o.user_filter.clone(),
                    attributes: Some(pb::LdapAttributeMapping {
                        email: o.attributes.email.clone(),
                        name: o.attributes.name.clone(),
                        given_name: o.attributes.given_name.clone(),
                        family_name: o.attributes.family_name.clone(),
                        username: o.attributes.username.clone(),
                    }),
                    timeout_seconds: to_i32(o.timeout_seconds),
                    ca_certificates: o.ca_certificates.clone(),
                    allow_plaintext: o.allow_plaintext,
                    groups: Some(pb::LdapGroups {
                        enabled: o.groups.enabled,
                        base_dn: o.groups.base_dn.clone(),
                        filter: o.groups.filter.clone(),
                        name_attribute: o.groups.name_attribute.clone(),
                        max_depth: to_i32(o.groups.max_depth),
                    }),
                })
            }
            Options::Saml(o) => {
                let (request_signing_key, request_signing_key_set) = secret(names::REQUEST_SIGNING_KEY);
                let (decryption_key, decryption_key_set) = secret(names::DECRYPTION_KEY);
                O::Saml(pb::SamlOptions {
                    sign_in_url: o.sign_in_url.clone(),
                    sign_out_url: o.sign_out_url.clone(),
                    signing_certificates: o.signing_certificates.clone(),
                    entity_id: o.entity_id.clone(),
                    audience: o.audience.clone(),
                    sign_request: o.sign_request,
                    signature_algorithm: o.signature_algorithm.to_proto() as i32,
                    request_signing_key,
                    request_signing_key_set,
                    request_signing_certificate: o.request_signing_certificate.clone(),
                    binding: o.binding.to_proto() as i32,
                    attributes: Some(pb::SamlAttributeMapping {
                        email: o.attributes.email.clone(),
                        name: o.attributes.name.clone(),
                        given_name: o.attributes.given_name.clone(),
                        family_name: o.attributes.family_name.clone(),
                    }),
                    decryption_key,
                    decryption_key_set,
                    decryption_certificate: o.decryption_certificate.clone(),
                    require_encrypted_assertions: o.require_encrypted_assertions,
                    allow_sha1: o.allow_sha1,
                    idp_initiated: Some(pb::SamlIdpInitiated {
                        enabled: o.idp_initiated.enabled,
                        client_id: o.idp_initiated.client_id.clone(),
                        client_authorize_query: o.idp_initiated.client_authorize_query.clone(),
                    }),
                    metadata_url: o.metadata_url.clone(),
                })
            }
            Options::AzureAd(o) => {
                let (client_secret, client_secret_set) = secret(names::CLIENT_SECRET);
                O::AzureAd(pb::AzureAdOptions {
                    domain: o.domain.clone(),
                    tenant_id: o.tenant_id.clone(),
                    client_id: o.client_id.clone(),
                    client_secret,
                    client_secret_set,
                    discovery_url: o.discovery_url.clone(),
                    allowed_tenant_ids: o.allowed_tenant_ids.clone(),
                    store_tokens: o.store_tokens,
                    upstream_params: upstream_params_to_pb(&o.upstream_params),
                })
            }
            Options::Email(o) => {
                let (smtp_password, smtp_password_set) = secret(names::SMTP_PASSWORD);
                O::Email(pb::EmailOptions {
                    from: o.from.clone(),
                    subject: o.subject.clone(),
                    code_template: o.code_template.clone(),
                    link_template: o.link_template.clone(),
                    code_length: to_i32(o.code_length),
                    code_lifetime_seconds: to_i32(o.code_lifetime_seconds),
                    max_attempts: to_i32(o.max_attempts),
                    smtp_host: o.smtp_host.clone(),
                    smtp_port: i32::from(o.smtp_port),
                    smtp_username: o.smtp_username.clone(),
                    smtp_password,
                    smtp_password_set,
                    smtp_tls: o.smtp_tls.to_proto() as i32,
                    magic_link: o.magic_link,
                    disable_signup: o.disable_signup,
                    magic_link_same_browser: o.magic_link_same_browser,
                    smtp_ca_certificate: o.smtp_ca_certificate.clone(),
                })
            }
            Options::Sms(o) => {
                let (token, token_set) = secret(names::TOKEN);
                O::Sms(pb::SmsOptions {
                    from: o.from.clone(),
                    template: o.template.clone(),
                    provider_url: o.provider_url.clone(),
                    account: o.account.clone(),
                    token,
                    token_set,
                    code_length: to_i32(o.code_length),
                    code_lifetime_seconds: to_i32(o.code_lifetime_seconds),
                    max_attempts: to_i32(o.max_attempts),
                    provider: o.provider.to_proto() as i32,
                    disable_signup: o.disable_signup,
                })
            }
        }
    }
}

/// The contract's empty options of a family (every field at its zero value).
pub fn empty_proto(family: OptionsFamily) -> pb::connection::Options {
    use pb::connection::Options as O;
    match family {
        OptionsFamily::Database => O::Database(Default::default()),
        OptionsFamily::Oauth2 => O::Oauth2(Default::default()),
        OptionsFamily::Oidc => O::Oidc(Default::default()),
        OptionsFamily::GoogleApps => O::GoogleApps(Default::default()),
        OptionsFamily::Ldap => O::Ldap(Default::default()),
        OptionsFamily::Saml => O::Saml(Default::default()),
        OptionsFamily::AzureAd => O::AzureAd(Default::default()),
        OptionsFamily::Email => O::Email(Default::default()),
        OptionsFamily::Sms => O::Sms(Default::default()),
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Moves a non-empty secret field into `secrets`.
fn take_secret(secrets: &mut Secrets, name: &str, value: String) {
    if !value.is_empty() {
        secrets.insert(name, Secret::new(value));
    }
}

fn database(o: pb::DatabaseOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> DatabaseOptions {
    let p = |f: &str| format!("{at}.{f}");
    let username_min_length = rules::int_or_default(v, &p("username_min_length"), o.username_min_length, 1, 1, 128);
    let username_max_length = rules::int_or_default(v, &p("username_max_length"), o.username_max_length, 15, 1, 128);
    if username_min_length > username_max_length {
        v.add(
            p("username_max_length"),
            format!("must be at least username_min_length ({username_min_length}); got {username_max_length}"),
        );
    }
    let password_policy = PasswordStrength::read(v, &p("password_policy"), o.password_policy);
    let password_min_length = rules::int_or_default(v, &p("password_min_length"), o.password_min_length, 0, 1, 128);
    if password_min_length != 0 && password_min_length < password_policy.min_length() {
        v.add(
            p("password_min_length"),
            format!(
                "must be 0 or at least {} (the minimum of password policy {:?}) up to 128; got {password_min_length}",
                password_policy.min_length(),
                password_policy.as_str()
            ),
        );
    }
    let password_history_size =
        rules::int_or_default(v, &p("password_history_size"), o.password_history_size, 0, 0, 24);
    let dictionary = o.password_dictionary.unwrap_or_default();
    if dictionary.words.len() > 200 {
        v.add(p("password_dictionary.words"), format!("holds at most 200 words; got {}", dictionary.words.len()));
    }
    for (i, w) in dictionary.words.iter().enumerate() {
        v.check(format!("{at}.password_dictionary.words[{i}]"), validate::display_text(w, 1, 50));
    }
    let custom_database = o.custom_database.map(|c| {
        let cp = |f: &str| format!("{at}.custom_database.{f}");
        rules::url(v, &cp("endpoint"), &c.endpoint, true, "the gRPC endpoint of the custom database");
        let import_mode = ImportMode::read(v, &cp("import_mode"), c.import_mode);
        let timeout_seconds = rules::int_or_default(v, &cp("timeout_seconds"), c.timeout_seconds, 10, 1, 60);
        if !c.ca_certificate.is_empty() {
            if c.endpoint.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
                v.check(cp("ca_certificate"), rules::pem_trust_anchors(&c.ca_certificate).map(|_| ()));
            } else {
                v.add(
                    cp("ca_certificate"),
                    "needs an https endpoint: a CA certificate verifies the endpoint's TLS certificate, and an http \
                     endpoint has none; use https:// in endpoint, or leave ca_certificate empty",
                );
            }
        }
        take_secret(secrets, names::CUSTOM_DATABASE_TOKEN, c.token);
        CustomDatabase { endpoint: c.endpoint, import_mode, timeout_seconds, ca_certificate: c.ca_certificate }
    });
    DatabaseOptions {
        requires_username: o.requires_username,
        username_min_length,
        username_max_length,
        password_policy,
        password_min_length,
        password_history_size,
        password_no_personal_info: o.password_no_personal_info,
        password_dictionary: PasswordDictionary { enable: dictionary.enable, words: dictionary.words },
        brute_force_protection: o.brute_force_protection.unwrap_or(true),
        disable_signup: o.disable_signup,
        custom_database,
    }
}

fn oauth2(
    strategy: Strategy,
    o: pb::OAuth2Options,
    at: &str,
    v: &mut Violations,
    secrets: &mut Secrets,
) -> OAuth2Options {
    let p = |f: &str| format!("{at}.{f}");
    rules::client_id(v, &p("client_id"), &o.client_id);
    rules::scopes(v, &p("scopes"), &o.scopes);
    // The generic strategy has no well-known endpoints: it needs all three.
    let required = strategy == Strategy::Oauth2;
    for (field, value) in [
        ("authorization_endpoint", &o.authorization_endpoint),
        ("token_endpoint", &o.token_endpoint),
        ("userinfo_endpoint", &o.userinfo_endpoint),
    ] {
        if required && value.is_empty() {
            v.add(p(field), "is required for strategy \"oauth2\": an absolute http or https URL of the provider");
        } else {
            rules::url(v, &p(field), value, false, "");
        }
    }
    for (field, value) in [("issuer", &o.issuer), ("discovery_url", &o.discovery_url), ("jwks_uri", &o.jwks_uri)] {
        rules::url(v, &p(field), value, false, "");
    }
    let apple_id = |v: &mut Violations, field: &str, value: &str, what: &str| {
        if strategy == Strategy::Apple {
            if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                v.add(p(field), format!("is required for strategy \"apple\": {what}, 10 letters and digits"));
            }
        } else if !value.is_empty() {
            v.add(p(field), "is only for strategy \"apple\"; leave it empty");
        }
    };
    apple_id(v, "apple_team_id", &o.apple_team_id, "the Apple developer team id");
    apple_id(v, "apple_key_id", &o.apple_key_id, "the id of the Sign in with Apple key");
    if strategy == Strategy::Apple && !o.client_secret.is_empty() {
        v.check(p("client_secret"), rules::pem_private_key(&o.client_secret));
    }
    let only = |v: &mut Violations, field: &str, set: bool, owner: Strategy| {
        if set && strategy != owner {
            v.add(p(field), format!("is an option of strategy {:?} only; leave it empty", owner.as_str()));
        }
    };
    only(v, "profile_fields", !o.profile_fields.is_empty(), Strategy::Facebook);
    only(v, "emails_endpoint", !o.emails_endpoint.is_empty(), Strategy::Github);
    only(v, "profile_mapping", o.profile_mapping.is_some(), Strategy::Oauth2);
    if o.profile_fields.len() > 50 {
        v.add(p("profile_fields"), format!("holds at most 50 fields; got {}", o.profile_fields.len()));
    }
    for (i, f) in o.profile_fields.iter().enumerate() {
        let ok =
            (1..=100).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.(){},".contains(&b));
        if !ok {
            v.add(
                format!("{}[{i}]", p("profile_fields")),
                format!(
                    "{:?} is not a Graph API field: use 1 to 100 of A-Z a-z 0-9 _ . ( ) {{ }} , (`picture.type(large)`)",
                    truncate(f, 80)
                ),
            );
        }
    }
    rules::url(v, &p("emails_endpoint"), &o.emails_endpoint, false, "");
    let profile_mapping = o.profile_mapping.map(|m| {
        let m = ProfileMapping {
            user_id: m.user_id,
            email: m.email,
            email_verified: m.email_verified,
            name: m.name,
            given_name: m.given_name,
            family_name: m.family_name,
            nickname: m.nickname,
            picture: m.picture,
            username: m.username,
        };
        for (field, path) in m.fields() {
            if !path.is_empty() {
                v.check(format!("{}.{field}", p("profile_mapping")), rules::json_path(path));
            }
        }
        Box::new(m)
    });
    let upstream_params = rules::upstream_params(v, &p("upstream_params"), o.upstream_params);
    take_secret(secrets, names::CLIENT_SECRET, o.client_secret);
    OAuth2Options {
        client_id: o.client_id,
        scopes: o.scopes,
        authorization_endpoint: o.authorization_endpoint,
        token_endpoint: o.token_endpoint,
        userinfo_endpoint: o.userinfo_endpoint,
        issuer: o.issuer,
        discovery_url: o.discovery_url,
        jwks_uri: o.jwks_uri,
        store_tokens: o.store_tokens,
        apple_team_id: o.apple_team_id,
        apple_key_id: o.apple_key_id,
        profile_fields: o.profile_fields,
        emails_endpoint: o.emails_endpoint,
        profile_mapping,
        upstream_params,
    }
}

/// A connection's `upstream_params` in the contract's shape.
fn upstream_params_to_pb(params: &UpstreamParams) -> std::collections::HashMap<String, pb::UpstreamParam> {
    use pb::upstream_param::Source;
    params
        .iter()
        .map(|(name, param)| {
            let source = match param {
                UpstreamParam::Value(v) => Source::Value(v.clone()),
                UpstreamParam::Alias(a) => Source::Alias(a.clone()),
            };
            (name.clone(), pb::UpstreamParam { source: Some(source) })
        })
        .collect()
}

fn oidc(o: pb::OidcOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> OidcOptions {
    let p = |f: &str| format!("{at}.{f}");
    if o.issuer.is_empty() && o.discovery_url.is_empty() {
        v.add(p("issuer"), "is required unless discovery_url is set: the provider's issuer URL (https://…)");
    }
    rules::url(v, &p("issuer"), &o.issuer, false, "");
    rules::url(v, &p("discovery_url"), &o.discovery_url, false, "");
    rules::client_id(v, &p("client_id"), &o.client_id);
    rules::scopes(v, &p("scopes"), &o.scopes);
    let channel = OidcChannel::read(v, &p("channel"), o.channel);
    let client_auth = OidcClientAuth::read(v, &p("client_auth"), o.client_auth);
    if channel == OidcChannel::Front && client_auth == OidcClientAuth::PrivateKeyJwt {
        v.add(
            p("client_auth"),
            "OIDC_CLIENT_AUTH_PRIVATE_KEY_JWT needs the back channel (OIDC_CHANNEL_BACK): the front channel never \
             calls the token endpoint",
        );
    }
    if !o.client_assertion_key.is_empty() {
        v.check(p("client_assertion_key"), rules::assertion_signing_key(&o.client_assertion_key));
    }
    v.check(p("client_assertion_key_id"), rules::optional_text(&o.client_assertion_key_id, 255));
    if channel == OidcChannel::Front {
        let why = "needs the back channel (OIDC_CHANNEL_BACK): the front channel receives an ID token and no access \
                   token to read userinfo with";
        if o.fetch_userinfo {
            v.add(p("fetch_userinfo"), why);
        }
        if !o.userinfo_endpoint.is_empty() {
            v.add(p("userinfo_endpoint"), why);
        }
    }
    for (field, value) in [
        ("authorization_endpoint", &o.authorization_endpoint),
        ("token_endpoint", &o.token_endpoint),
        ("userinfo_endpoint", &o.userinfo_endpoint),
        ("jwks_uri", &o.jwks_uri),
    ] {
        rules::url(v, &p(field), value, false, "");
    }
    let upstream_params = rules::upstream_params(v, &p("upstream_params"), o.upstream_params);
    take_secret(secrets, names::CLIENT_SECRET, o.client_secret);
    take_secret(secrets, names::CLIENT_ASSERTION_KEY, o.client_assertion_key);
    OidcOptions {
        issuer: o.issuer,
        discovery_url: o.discovery_url,
        client_id: o.client_id,
        scopes: o.scopes,
        channel,
        authorization_endpoint: o.authorization_endpoint,
        token_endpoint: o.token_endpoint,
        userinfo_endpoint: o.userinfo_endpoint,
        jwks_uri: o.jwks_uri,
        store_tokens: o.store_tokens,
        fetch_userinfo: o.fetch_userinfo,
        client_auth,
        client_assertion_key_id: o.client_assertion_key_id,
        upstream_params,
    }
}

fn google_apps(o: pb::GoogleAppsOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> GoogleAppsOptions {
    let p = |f: &str| format!("{at}.{f}");
    let domain = o.domain.to_ascii_lowercase();
    if domain.is_empty() {
        v.add(p("domain"), "is required: the Google Workspace primary domain (fabrikam.example)");
    } else {
        v.check(p("domain"), rules::domain_name(&domain));
    }
    rules::client_id(v, &p("client_id"), &o.client_id);
    let allowed_domains = rules::domain_list(v, &p("allowed_domains"), o.allowed_domains);
    rules::url(v, &p("issuer"), &o.issuer, false, "");
    rules::url(v, &p("discovery_url"), &o.discovery_url, false, "");
    let upstream_params = rules::upstream_params(v, &p("upstream_params"), o.upstream_params);
    take_secret(secrets, names::CLIENT_SECRET, o.client_secret);
    GoogleAppsOptions {
        domain,
        client_id: o.client_id,
        allowed_domains,
        issuer: o.issuer,
        discovery_url: o.discovery_url,
        store_tokens: o.store_tokens,
        upstream_params,
    }
}

fn ldap(strategy: Strategy, o: pb::LdapOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> LdapOptions {
    let p = |f: &str| format!("{at}.{f}");
    match rules::ldap_url(&o.url) {
        Ok(secure) if secure && o.start_tls => {
            v.add(p("start_tls"), "must be false with an ldaps:// URL, which is TLS already; use ldap:// for StartTLS");
        }
        Ok(_) => {}
        Err(e) => v.add(p("url"), e),
    }
    v.check(p("bind_dn"), rules::dn(&o.bind_dn, "the DN of the service account that searches for users"));
    v.check(p("base_dn"), rules::dn(&o.base_dn, "the DN under which users are searched"));
    let user_filter =
        if o.user_filter.is_empty() { LdapOptions::default_user_filter(strategy).to_owned() } else { o.user_filter };
    v.check(p("user_filter"), rules::ldap_filter(&user_filter));
    let a = o.attributes.unwrap_or_default();
    let ad = strategy == Strategy::Ad;
    let mut attr = |field: &str, value: String, default: &str| -> String {
        let value = if value.is_empty() { default.to_owned() } else { value };
        v.check(format!("{at}.attributes.{field}"), rules::ldap_attribute(&value));
        value
    };
    let attributes = LdapAttributes {
        email: attr("email", a.email, "mail"),
        name: attr("name", a.name, if ad { "displayName" } else { "cn" }),
        given_name: attr("given_name", a.given_name, "givenName"),
        family_name: attr("family_name", a.family_name, "sn"),
        username: attr("username", a.username, if ad { "sAMAccountName" } else { "uid" }),
    };
    let timeout_seconds = rules::int_or_default(v, &p("timeout_seconds"), o.timeout_seconds, 10, 1, 60);
    if !o.ca_certificates.is_empty() {
        v.check(p("ca_certificates"), rules::pem_certificates(&o.ca_certificates).map(|_| ()));
    }
    let g = o.groups.unwrap_or_default();
    let gp = |f: &str| format!("{at}.groups.{f}");
    let group_base_dn = if g.base_dn.is_empty() { o.base_dn.clone() } else { g.base_dn };
    if !group_base_dn.is_empty() {
        v.check(gp("base_dn"), rules::dn(&group_base_dn, "the DN under which groups are searched"));
    }
    let group_filter = if g.filter.is_empty() {
        if ad { "(member:1.2.840.113556.1.4.1941:={dn})" } else { "(&(objectClass=groupOfNames)(member={dn}))" }
            .to_owned()
    } else {
        g.filter
    };
    v.check(gp("filter"), rules::ldap_filter_with(&group_filter, "{dn}", "the escaped DN of the member"));
    let name_attribute = if g.name_attribute.is_empty() { "cn".to_owned() } else { g.name_attribute };
    v.check(gp("name_attribute"), rules::ldap_attribute(&name_attribute));
    let max_depth = rules::int_or_default(v, &gp("max_depth"), g.max_depth, 5, 1, 10);
    let groups =
        LdapGroups { enabled: g.enabled, base_dn: group_base_dn, filter: group_filter, name_attribute, max_depth };
    take_secret(secrets, names::BIND_PASSWORD, o.bind_password);
    LdapOptions {
        url: o.url,
        start_tls: o.start_tls,
        bind_dn: o.bind_dn,
        base_dn: o.base_dn,
        user_filter,
        attributes,
        timeout_seconds,
        ca_certificates: o.ca_certificates,
        allow_plaintext: o.allow_plaintext,
        groups,
    }
}

fn saml(o: pb::SamlOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> SamlOptions {
    let p = |f: &str| format!("{at}.{f}");
    rules::url(v, &p("metadata_url"), &o.metadata_url, false, "");
    let by_metadata = !o.metadata_url.is_empty();
    rules::url(
        v,
        &p("sign_in_url"),
        &o.sign_in_url,
        !by_metadata,
        "the identity provider's single sign-on URL (or give metadata_url, the IdP's metadata document, which names it)",
    );
    rules::url(v, &p("sign_out_url"), &o.sign_out_url, false, "");
    if o.signing_certificates.is_empty() && !by_metadata {
        v.add(
            p("signing_certificates"),
            "needs at least one PEM certificate (-----BEGIN CERTIFICATE-----) of the identity provider, or              metadata_url (the IdP's metadata document, which holds them): without one no signature could be checked",
        );
    } else if o.signing_certificates.len() > 5 {
        v.add(p("signing_certificates"), format!("holds at most 5 certificates; got {}", o.signing_certificates.len()));
    }
    for (i, c) in o.signing_certificates.iter().enumerate() {
        v.check(format!("{at}.signing_certificates[{i}]"), rules::pem_certificates(c).map(|_| ()));
    }
    v.check(p("entity_id"), rules::optional_text(&o.entity_id, 1024));
    v.check(p("audience"), rules::optional_text(&o.audience, 1024));
    let signature_algorithm = SamlSignatureAlgorithm::read(v, &p("signature_algorithm"), o.signature_algorithm);
    let binding = SamlBinding::read(v, &p("binding"), o.binding);
    if !o.request_signing_key.is_empty() {
        v.check(p("request_signing_key"), rules::pem_private_key(&o.request_signing_key));
    }
    if !o.request_signing_certificate.is_empty() {
        v.check(p("request_signing_certificate"), rules::pem_certificates(&o.request_signing_certificate).map(|_| ()));
    }
    if !o.decryption_key.is_empty() {
        v.check(p("decryption_key"), rules::pem_private_key(&o.decryption_key));
    }
    if !o.decryption_certificate.is_empty() {
        match rules::pem_certificates(&o.decryption_certificate) {
            Ok(1) => {}
            Ok(n) => v.add(p("decryption_certificate"), format!("must hold exactly one PEM certificate; got {n}")),
            Err(e) => v.add(p("decryption_certificate"), e),
        }
    } else if o.require_encrypted_assertions {
        v.add(
            p("decryption_certificate"),
            "is required with require_encrypted_assertions: the certificate (PEM) the identity provider encrypts \
             assertions to, with its key in decryption_key",
        );
    }
    let a = o.attributes.unwrap_or_default();
    let mut attr = |field: &str, value: String, default: &str| -> String {
        let value = if value.is_empty() { default.to_owned() } else { value };
        v.check(format!("{at}.attributes.{field}"), rules::optional_text(&value, 1024));
        value
    };
    let attributes = SamlAttributes {
        email: attr("email", a.email, "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"),
        name: attr("name", a.name, "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"),
        given_name: attr("given_name", a.given_name, "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname"),
        family_name: attr(
            "family_name",
            a.family_name,
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
        ),
    };
    take_secret(secrets, names::REQUEST_SIGNING_KEY, o.request_signing_key);
    let i = o.idp_initiated.unwrap_or_default();
    let ip = |f: &str| format!("{at}.idp_initiated.{f}");
    if i.enabled && i.client_id.is_empty() {
        v.add(ip("client_id"), "is required when enabled: the client_id of the application users log in to");
    } else {
        v.check(ip("client_id"), rules::optional_text(&i.client_id, 128));
    }
    if i.client_authorize_query.chars().count() > 1024 {
        v.add(ip("client_authorize_query"), "must be at most 1,024 characters");
    } else {
        for (key, value) in url::form_urlencoded::parse(i.client_authorize_query.as_bytes()) {
            if !SamlIdpInitiated::QUERY_PARAMETERS.contains(&key.as_ref()) {
                v.add(
                    ip("client_authorize_query"),
                    format!(
                        "{:?} is not a parameter it may set; use {}",
                        truncate(&key, 40),
                        SamlIdpInitiated::QUERY_PARAMETERS.join(", ")
                    ),
                );
            } else if key == "response_type" && value != "code" {
                v.add(ip("client_authorize_query"), "response_type must be code (the authorization code flow)");
            }
        }
    }
    let idp_initiated = SamlIdpInitiated {
        enabled: i.enabled,
        client_id: i.client_id,
        client_authorize_query: i.client_authorize_query,
    };
    take_secret(secrets, names::DECRYPTION_KEY, o.decryption_key);
    SamlOptions {
        sign_in_url: o.sign_in_url,
        sign_out_url: o.sign_out_url,
        signing_certificates: o.signing_certificates,
        entity_id: o.entity_id,
        audience: o.audience,
        sign_request: o.sign_request,
        signature_algorithm,
        request_signing_certificate: o.request_signing_certificate,
        binding,
        attributes,
        decryption_certificate: o.decryption_certificate,
        require_encrypted_assertions: o.require_encrypted_assertions,
        allow_sha1: o.allow_sha1,
        idp_initiated,
        metadata_url: o.metadata_url,
    }
}

fn azure_ad(o: pb::AzureAdOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> AzureAdOptions {
    let p = |f: &str| format!("{at}.{f}");
    let domain = o.domain.to_ascii_lowercase();
    if domain.is_empty() {
        v.add(p("domain"), "is required: the directory's primary domain (fabrikam.onmicrosoft.com)");
    } else {
        v.check(p("domain"), rules::domain_name(&domain));
    }
    let tenant_id = o.tenant_id.to_ascii_lowercase();
    let multi_tenant = matches!(tenant_id.as_str(), "organizations" | "common");
    if !tenant_id.is_empty() && !multi_tenant {
        v.check(
            p("tenant_id"),
            rules::guid(&tenant_id, "the directory (tenant) id, or organizations / common for a multi-tenant app"),
        );
    }
    rules::url(v, &p("discovery_url"), &o.discovery_url, false, "");
    if o.allowed_tenant_ids.len() > 100 {
        v.add(p("allowed_tenant_ids"), format!("holds at most 100 directory ids; got {}", o.allowed_tenant_ids.len()));
    }
    let allowed_tenant_ids: Vec<String> = o.allowed_tenant_ids.iter().map(|t| t.to_ascii_lowercase()).collect();
    for (i, t) in allowed_tenant_ids.iter().enumerate() {
        v.check(format!("{at}.allowed_tenant_ids[{i}]"), rules::guid(t, "a directory (tenant) id"));
    }
    let client_id = o.client_id.to_ascii_lowercase();
    if client_id.is_empty() {
        v.add(p("client_id"), "is required: the application (client) id, a GUID");
    } else {
        v.check(p("client_id"), rules::guid(&client_id, "the application (client) id"));
    }
    let upstream_params = rules::upstream_params(v, &p("upstream_params"), o.upstream_params);
    take_secret(secrets, names::CLIENT_SECRET, o.client_secret);
    AzureAdOptions {
        domain,
        tenant_id,
        client_id,
        discovery_url: o.discovery_url,
        allowed_tenant_ids,
        store_tokens: o.store_tokens,
        upstream_params,
    }
}

fn email(o: pb::EmailOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> EmailOptions {
    let p = |f: &str| format!("{at}.{f}");
    v.check(p("from"), rules::mailbox(&o.from));
    let subject = rules::or_default(o.subject, DEFAULT_EMAIL_SUBJECT);
    v.check(p("subject"), validate::display_text(&subject, 1, 255));
    let code_template = rules::or_default(o.code_template, DEFAULT_EMAIL_CODE_TEMPLATE);
    v.check(p("code_template"), rules::template(&code_template, "{{code}}", 10_000));
    let link_template = rules::or_default(o.link_template, DEFAULT_EMAIL_LINK_TEMPLATE);
    v.check(p("link_template"), rules::template(&link_template, "{{link}}", 10_000));
    let (code_length, code_lifetime_seconds, max_attempts) =
        code_settings(v, at, o.code_length, o.code_lifetime_seconds, o.max_attempts);
    v.check(p("smtp_host"), rules::host(&o.smtp_host));
    let smtp_port = rules::int_or_default(v, &p("smtp_port"), o.smtp_port, 0, 1, 65535);
    v.check(p("smtp_username"), rules::optional_text(&o.smtp_username, 255));
    let smtp_tls = SmtpTls::read(v, &p("smtp_tls"), o.smtp_tls);
    if !o.smtp_username.is_empty() && matches!(smtp_tls, SmtpTls::None | SmtpTls::Opportunistic) {
        v.add(
            p("smtp_tls"),
            "must be SMTP_TLS_STARTTLS or SMTP_TLS_IMPLICIT when smtp_username is set: a password never crosses in \
             plaintext",
        );
    }
    if !o.smtp_ca_certificate.is_empty() {
        if o.smtp_ca_certificate.len() > 65_536 {
            v.add(p("smtp_ca_certificate"), "must be at most 65,536 characters");
        } else {
            v.check(p("smtp_ca_certificate"), rules::pem_trust_anchors(&o.smtp_ca_certificate).map(|_| ()));
        }
    }
    take_secret(secrets, names::SMTP_PASSWORD, o.smtp_password);
    EmailOptions {
        from: o.from,
        subject,
        code_template,
        link_template,
        code_length,
        code_lifetime_seconds,
        max_attempts,
        smtp_host: o.smtp_host,
        smtp_port: u16::try_from(smtp_port).unwrap_or(0),
        smtp_username: o.smtp_username,
        smtp_tls,
        magic_link: o.magic_link,
        disable_signup: o.disable_signup,
        magic_link_same_browser: o.magic_link_same_browser,
        smtp_ca_certificate: o.smtp_ca_certificate,
    }
}

fn sms(o: pb::SmsOptions, at: &str, v: &mut Violations, secrets: &mut Secrets) -> SmsOptions {
    let p = |f: &str| format!("{at}.{f}");
    v.check(p("from"), rules::sms_sender(&o.from));
    let template = rules::or_default(o.template, DEFAULT_SMS_TEMPLATE);
    v.check(p("template"), rules::template(&template, "{{code}}", 1600));
    rules::url(v, &p("provider_url"), &o.provider_url, true, "the SMS provider API's base URL");
    let provider = SmsProvider::read(v, &p("provider"), o.provider);
    if o.account.is_empty() {
        if provider == SmsProvider::Twilio {
            v.add(p("account"), "is required: the account at the provider (Twilio's account SID)");
        }
    } else {
        v.check(p("account"), validate::display_text(&o.account, 1, 255));
    }
    let (code_length, code_lifetime_seconds, max_attempts) =
        code_settings(v, at, o.code_length, o.code_lifetime_seconds, o.max_attempts);
    take_secret(secrets, names::TOKEN, o.token);
    SmsOptions {
        from: o.from,
        template,
        provider_url: o.provider_url,
        account: o.account,
        code_length,
        code_lifetime_seconds,
        max_attempts,
        provider,
        disable_signup: o.disable_signup,
    }
}

/// Code length, lifetime and attempts of the passwordless families, with Auth0's defaults.
fn code_settings(v: &mut Violations, at: &str, length: i32, lifetime: i32, attempts: i32) -> (u32, u32, u32) {
    (
        rules::int_or_default(v, &format!("{at}.code_length"), length, DEFAULT_CODE_LENGTH, 4, 10),
        rules::int_or_default(
            v,
            &format!("{at}.code_lifetime_seconds"),
            lifetime,
            DEFAULT_CODE_LIFETIME_SECONDS,
            30,
            86_400,
        ),
        rules::int_or_default(v, &format!("{at}.max_attempts"), attempts, DEFAULT_MAX_ATTEMPTS, 1, 10),
    )
}
