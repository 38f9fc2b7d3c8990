//! The catalogue of connection kinds: every strategy Postern knows (in Auth0's wire names),
//! the category it belongs to, and the options family that configures it.

use serde::{Deserialize, Serialize};

use postern_proto::connections::v1 as pb;

/// A connection's protocol, named as Auth0 names it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Strategy {
    /// `auth0`: users and password hashes in Postern's store (or a custom database).
    #[serde(rename = "auth0")]
    Auth0,
    /// `google-oauth2`: Google accounts.
    #[serde(rename = "google-oauth2")]
    GoogleOauth2,
    /// `facebook`.
    #[serde(rename = "facebook")]
    Facebook,
    /// `linkedin`.
    #[serde(rename = "linkedin")]
    Linkedin,
    /// `github`.
    #[serde(rename = "github")]
    Github,
    /// `apple`: Sign in with Apple.
    #[serde(rename = "apple")]
    Apple,
    /// `windowslive`: personal Microsoft accounts.
    #[serde(rename = "windowslive")]
    Windowslive,
    /// `oauth2`: any OAuth 2.0 provider, endpoints given explicitly.
    #[serde(rename = "oauth2")]
    Oauth2,
    /// `ad`: Active Directory over LDAP.
    #[serde(rename = "ad")]
    Ad,
    /// `ldap`: any LDAP directory.
    #[serde(rename = "ldap")]
    Ldap,
    /// `google-apps`: Google Workspace, restricted to domains.
    #[serde(rename = "google-apps")]
    GoogleApps,
    /// `oidc`: any OpenID Connect provider.
    #[serde(rename = "oidc")]
    Oidc,
    /// `samlp`: a SAML 2.0 identity provider.
    #[serde(rename = "samlp")]
    Samlp,
    /// `waad`: Microsoft Entra ID (Azure AD).
    #[serde(rename = "waad")]
    Waad,
    /// `email`: one-time codes or magic links over SMTP.
    #[serde(rename = "email")]
    Email,
    /// `sms`: one-time codes through an SMS provider.
    #[serde(rename = "sms")]
    Sms,
}

/// The family of a connection, fixed by its strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Postern's own store or a custom database.
    Database,
    /// Social identity providers.
    Social,
    /// Enterprise directories and federation; the only category in home realm discovery.
    Enterprise,
    /// One-time codes and magic links.
    Passwordless,
}

/// Which options message configures a strategy: one variant per member of the `options`
/// oneof of `Connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionsFamily {
    /// `DatabaseOptions`.
    Database,
    /// `OAuth2Options`.
    Oauth2,
    /// `OidcOptions`.
    Oidc,
    /// `GoogleAppsOptions`.
    GoogleApps,
    /// `LdapOptions`.
    Ldap,
    /// `SamlOptions`.
    Saml,
    /// `AzureAdOptions`.
    AzureAd,
    /// `EmailOptions`.
    Email,
    /// `SmsOptions`.
    Sms,
}

/// The well-known OAuth 2.0 endpoints and default scopes of a social provider, used when a
/// connection leaves them empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderEndpoints {
    /// Where the browser is sent to log in.
    pub authorization: &'static str,
    /// Where the code is exchanged for tokens.
    pub token: &'static str,
    /// Where the profile is read; `None` when the provider only gives an ID token (Apple).
    pub userinfo: Option<&'static str>,
    /// The scopes always asked.
    pub scopes: &'static [&'static str],
}

impl Strategy {
    /// Every strategy, in catalogue order (by category, then as Auth0 lists them).
    pub const ALL: [Strategy; 16] = [
        Strategy::Auth0,
        Strategy::GoogleOauth2,
        Strategy::Facebook,
        Strategy::Linkedin,
        Strategy::Github,
        Strategy::Apple,
        Strategy::Windowslive,
        Strategy::Oauth2,
        Strategy::Ad,
        Strategy::Ldap,
        Strategy::GoogleApps,
        Strategy::Oidc,
        Strategy::Samlp,
        Strategy::Waad,
        Strategy::Email,
        Strategy::Sms,
    ];

    /// The wire name (`google-oauth2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auth0 => "auth0",
            Strategy::GoogleOauth2 => "google-oauth2",
            Strategy::Facebook => "facebook",
            Strategy::Linkedin => "linkedin",
            Strategy::Github => "github",
            Strategy::Apple => "apple",
            Strategy::Windowslive => "windowslive",
            Strategy::Oauth2 => "oauth2",
            Strategy::Ad => "ad",
            Strategy::Ldap => "ldap",
            Strategy::GoogleApps => "google-apps",
            Strategy::Oidc => "oidc",
            Strategy::Samlp => "samlp",
            Strategy::Waad => "waad",
            Strategy::Email => "email",
            Strategy::Sms => "sms",
        }
    }

    /// The strategy of a wire name; `None` if it is not in the catalogue. Exact match: wire
    /// names are lowercase.
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Every wire name, comma-separated, for messages that list what is allowed.
    pub fn known_names() -> String {
        Strategy::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The category the strategy belongs to.
    pub fn category(self) -> Category {
        match self {
            Strategy::Auth0 => Category::Database,
            Strategy::GoogleOauth2
            | Strategy::Facebook
            | Strategy::Linkedin
            | Strategy::Github
            | Strategy::Apple
            | Strategy::Windowslive
            | Strategy::Oauth2 => Category::Social,
            Strategy::Ad
            | Strategy::Ldap
            | Strategy::GoogleApps
            | Strategy::Oidc
            | Strategy::Samlp
            | Strategy::Waad => Category::Enterprise,
            Strategy::Email | Strategy::Sms => Category::Passwordless,
        }
    }

    /// The options family that configures the strategy.
    pub fn family(self) -> OptionsFamily {
        match self {
            Strategy::Auth0 => OptionsFamily::Database,
            Strategy::GoogleOauth2
            | Strategy::Facebook
            | Strategy::Linkedin
            | Strategy::Github
            | Strategy::Apple
            | Strategy::Windowslive
            | Strategy::Oauth2 => OptionsFamily::Oauth2,
            Strategy::Ad | Strategy::Ldap => OptionsFamily::Ldap,
            Strategy::GoogleApps => OptionsFamily::GoogleApps,
            Strategy::Oidc => OptionsFamily::Oidc,
            Strategy::Samlp => OptionsFamily::Saml,
            Strategy::Waad => OptionsFamily::AzureAd,
            Strategy::Email => OptionsFamily::Email,
            Strategy::Sms => OptionsFamily::Sms,
        }
    }

    /// The provider's well-known endpoints, for the social strategies other than the generic
    /// `oauth2` (whose endpoints are required options).
    pub fn provider_endpoints(self) -> Option<ProviderEndpoints> {
        let e = match self {
            Strategy::GoogleOauth2 => ProviderEndpoints {
                authorization: "https://accounts.google.com/o/oauth2/v2/auth",
                token: "https://oauth2.googleapis.com/token",
                userinfo: Some("https://openidconnect.googleapis.com/v1/userinfo"),
                scopes: &["openid", "email", "profile"],
            },
            Strategy::Facebook => ProviderEndpoints {
                authorization: "https://www.facebook.com/dialog/oauth",
                token: "https://graph.facebook.com/oauth/access_token",
                // The Graph API fields are the connection's `profile_fields`.
                userinfo: Some("https://graph.facebook.com/me"),
                scopes: &["email", "public_profile"],
            },
            Strategy::Linkedin => ProviderEndpoints {
                authorization: "https://www.linkedin.com/oauth/v2/authorization",
                token: "https://www.linkedin.com/oauth/v2/accessToken",
                userinfo: Some("https://api.linkedin.com/v2/userinfo"),
                scopes: &["openid", "profile", "email"],
            },
            Strategy::Github => ProviderEndpoints {
                authorization: "https://github.com/login/oauth/authorize",
                token: "https://github.com/login/oauth/access_token",
                userinfo: Some("https://api.github.com/user"),
                scopes: &["read:user", "user:email"],
            },
            Strategy::Apple => ProviderEndpoints {
                authorization: "https://appleid.apple.com/auth/authorize",
                token: "https://appleid.apple.com/auth/token",
                userinfo: None,
                scopes: &["name", "email"],
            },
            Strategy::Windowslive => ProviderEndpoints {
                authorization: "https://login.microsoftonline.com/consumers/oauth2/v2.0/authorize",
                token: "https://login.microsoftonline.com/consumers/oauth2/v2.0/token",
                userinfo: Some("https://graph.microsoft.com/oidc/userinfo"),
                scopes: &["openid", "profile", "email"],
            },
            _ => return None,
        };
        Some(e)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Category {
    /// The category as the contract carries it.
    pub fn to_proto(self) -> pb::Category {
        match self {
            Category::Database => pb::Category::Database,
            Category::Social => pb::Category::Social,
            Category::Enterprise => pb::Category::Enterprise,
            Category::Passwordless => pb::Category::Passwordless,
        }
    }

    /// A category filter from the contract: `Ok(None)` for unspecified (any category),
    /// `Err` with a description for a value outside the enum.
    pub fn from_proto_filter(value: i32) -> Result<Option<Category>, String> {
        match pb::Category::try_from(value) {
            Ok(pb::Category::Unspecified) => Ok(None),
            Ok(pb::Category::Database) => Ok(Some(Category::Database)),
            Ok(pb::Category::Social) => Ok(Some(Category::Social)),
            Ok(pb::Category::Enterprise) => Ok(Some(Category::Enterprise)),
            Ok(pb::Category::Passwordless) => Ok(Some(Category::Passwordless)),
            Err(_) => Err(format!(
                "{value} is not a category; use CATEGORY_DATABASE, CATEGORY_SOCIAL, CATEGORY_ENTERPRISE or CATEGORY_PASSWORDLESS"
            )),
        }
    }

    /// The lowercase name (`enterprise`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Database => "database",
            Category::Social => "social",
            Category::Enterprise => "enterprise",
            Category::Passwordless => "passwordless",
        }
    }

    /// The strategies of this category.
    pub fn strategies(self) -> impl Iterator<Item = Strategy> {
        Strategy::ALL.into_iter().filter(move |s| s.category() == self)
    }
}

impl OptionsFamily {
    /// Every family, in the order of the `options` oneof.
    pub const ALL: [OptionsFamily; 9] = [
        OptionsFamily::Database,
        OptionsFamily::Oauth2,
        OptionsFamily::Oidc,
        OptionsFamily::GoogleApps,
        OptionsFamily::Ldap,
        OptionsFamily::Saml,
        OptionsFamily::AzureAd,
        OptionsFamily::Email,
        OptionsFamily::Sms,
    ];

    /// The family's field name in the `options` oneof (`google_apps`), as used in field paths
    /// and update masks.
    pub fn field_name(self) -> &'static str {
        match self {
            OptionsFamily::Database => "database",
            OptionsFamily::Oauth2 => "oauth2",
            OptionsFamily::Oidc => "oidc",
            OptionsFamily::GoogleApps => "google_apps",
            OptionsFamily::Ldap => "ldap",
            OptionsFamily::Saml => "saml",
            OptionsFamily::AzureAd => "azure_ad",
            OptionsFamily::Email => "email",
            OptionsFamily::Sms => "sms",
        }
    }

    /// The family of a oneof field name; `None` if there is no such family.
    pub fn from_field_name(name: &str) -> Option<OptionsFamily> {
        OptionsFamily::ALL.into_iter().find(|f| f.field_name() == name)
    }

    /// The family of a decoded `options` oneof value.
    pub fn of_proto(options: &pb::connection::Options) -> OptionsFamily {
        use pb::connection::Options as O;
        match options {
            O::Database(_) => OptionsFamily::Database,
            O::Oauth2(_) => OptionsFamily::Oauth2,
            O::Oidc(_) => OptionsFamily::Oidc,
            O::GoogleApps(_) => OptionsFamily::GoogleApps,
            O::Ldap(_) => OptionsFamily::Ldap,
            O::Saml(_) => OptionsFamily::Saml,
            O::AzureAd(_) => OptionsFamily::AzureAd,
            O::Email(_) => OptionsFamily::Email,
            O::Sms(_) => OptionsFamily::Sms,
        }
    }

    /// The strategies this family configures.
    pub fn strategies(self) -> impl Iterator<Item = Strategy> {
        Strategy::ALL.into_iter().filter(move |s| s.family() == self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_round_trips_and_has_a_family_and_category() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
            assert!(s.family().strategies().any(|x| x == s));
            assert!(s.category().strategies().any(|x| x == s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(Strategy::parse("Auth0"), None);
        assert_eq!(Strategy::parse("saml"), None);
        assert_eq!(Strategy::Samlp.category(), Category::Enterprise);
        assert_eq!(Strategy::GoogleApps.family(), OptionsFamily::GoogleApps);
        assert_eq!(Category::Passwordless.strategies().count(), 2);
        assert_eq!(Category::Social.strategies().count(), 7);
        assert_eq!(Category::Enterprise.strategies().count(), 6);
        for f in OptionsFamily::ALL {
            assert_eq!(OptionsFamily::from_field_name(f.field_name()), Some(f));
        }
    }

    #[test]
    fn social_providers_have_endpoints_but_generic_oauth2_does_not() {
        for s in Category::Social.strategies() {
            assert_eq!(s.provider_endpoints().is_some(), s != Strategy::Oauth2, "{s}");
        }
        assert!(Strategy::Ldap.provider_endpoints().is_none());
    }
}
