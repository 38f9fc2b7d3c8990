//! The profile of each strategy: what the one engine needs to know of a provider — where
//! its discovery document is, which issuer its ID tokens carry, which scopes and extra
//! authorization parameters it takes, which claim is the user's id, and what else an ID
//! token must satisfy (a Workspace domain, a directory id).

use postern_connection::secret::{Secret, names};
use postern_connection::{OidcChannel, OidcClientAuth, Options, Resolved, Strategy};
use postern_connector::ConnectorError;

/// Google's issuer.
pub(crate) const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Apple's issuer (Sign in with Apple).
pub(crate) const APPLE_ISSUER: &str = "https://appleid.apple.com";
/// LinkedIn's issuer (Sign In with LinkedIn using OpenID Connect).
pub(crate) const LINKEDIN_ISSUER: &str = "https://www.linkedin.com/oauth";
/// Microsoft's login host.
pub(crate) const MICROSOFT_LOGIN: &str = "https://login.microsoftonline.com";
/// The directory id of Microsoft personal accounts (`windowslive`).
pub(crate) const MICROSOFT_CONSUMERS_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// How the `iss` claim is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IssuerRule {
    /// Exactly this issuer.
    Exact(String),
    /// The discovery document's issuer, exactly.
    Discovered,
    /// The discovery document's issuer with `{tenantid}` replaced by the token's `tid`
    /// (Microsoft's multi-tenant documents).
    DiscoveredTemplate,
}

/// A rule of the provider on the ID token's claims, beyond OpenID Connect's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimRule {
    /// Nothing more.
    None,
    /// Google Workspace: the `hd` claim must be one of these domains (lowercase).
    HostedDomain(Vec<String>),
    /// Entra ID, one directory: `tid` must be this id, or (empty) the discovered issuer's.
    Tenant(String),
    /// Entra ID, multi-tenant: `tid` must be one of these ids (empty: any); with
    /// `organizations`, never the personal accounts' directory.
    Tenants { allowed: Vec<String>, organizations_only: bool },
}

/// Everything the engine needs of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    /// The connection's name, for messages.
    pub(crate) connection: String,
    /// The strategy.
    pub(crate) strategy: Strategy,
    /// The client id at the provider.
    pub(crate) client_id: String,
    /// The client secret (its `Debug` shows no value).
    pub(crate) client_secret: Secret,
    /// The discovery document's URL.
    pub(crate) discovery_url: String,
    /// How `iss` is checked.
    pub(crate) issuer: IssuerRule,
    /// Endpoint overrides (empty: the discovery document's).
    pub(crate) authorization_endpoint: String,
    /// Token endpoint override.
    pub(crate) token_endpoint: String,
    /// Userinfo endpoint override.
    pub(crate) userinfo_endpoint: String,
    /// Keys URL override.
    pub(crate) jwks_uri: String,
    /// Whether userinfo is read after the ID token.
    pub(crate) fetch_userinfo: bool,
    /// The scopes asked (`openid` first).
    pub(crate) scopes: Vec<String>,
    /// Extra parameters of the authorization request.
    pub(crate) extra_parameters: Vec<(String, String)>,
    /// The claim that is the user's id at the provider.
    pub(crate) id_claim: &'static str,
    /// Whether the provider's `email_verified` is believed (Microsoft asserts none).
    pub(crate) trusts_email_verified: bool,
    /// The provider's rule on claims.
    pub(crate) claims: ClaimRule,
    /// Whether the tokens are kept on the identity.
    pub(crate) store_tokens: bool,
    /// Sign in with Apple: the client secret is a JWT made with this key; the name comes in
    /// the callback's `user` parameter on the first login only.
    pub(crate) apple: Option<AppleKey>,
    /// The front channel (`oidc`'s OIDC_CHANNEL_FRONT): the ID token comes through the
    /// browser (`response_type=id_token`, `response_mode=form_post`); no code, no token
    /// endpoint, no client secret.
    pub(crate) front_channel: bool,
    /// `private_key_jwt`: the token request is authenticated by a JWT signed with this key
    /// instead of the client secret.
    pub(crate) client_assertion: Option<crate::assertion::AssertionKey>,
}

/// What Sign in with Apple's client secret JWT is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppleKey {
    /// The developer team id: the JWT's `iss`.
    pub team_id: String,
    /// The key's id: the JWT's `kid`.
    pub key_id: String,
}

fn scopes(defaults: &[&str], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = defaults.iter().map(|s| (*s).to_owned()).collect();
    for s in extra {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

fn discovery_of(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

fn or(value: &str, default: &str) -> String {
    if value.is_empty() { default.to_owned() } else { value.to_owned() }
}

fn wrong_family(conn: &Resolved) -> ConnectorError {
    ConnectorError::FailedPrecondition {
        reason: "STRATEGY_NOT_SUPPORTED",
        message: format!(
            "connection {:?} (strategy {:?}) is not served by the OpenID Connect connector",
            conn.connection.spec.name,
            conn.connection.spec.strategy.as_str()
        ),
    }
}

impl Profile {
    /// The profile of a resolved connection.
    pub(crate) fn of(conn: &Resolved) -> Result<Profile, ConnectorError> {
        let spec = &conn.connection.spec;
        let client_secret = conn.secret(names::CLIENT_SECRET).cloned().unwrap_or_else(|| Secret::new(""));
        let base = |client_id: &str, discovery_url: String, issuer: IssuerRule| Profile {
            connection: spec.name.clone(),
            strategy: spec.strategy,
            client_id: client_id.to_owned(),
            client_secret: client_secret.clone(),
            discovery_url,
            issuer,
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            userinfo_endpoint: String::new(),
            jwks_uri: String::new(),
            fetch_userinfo: false,
            scopes: vec!["openid".into()],
            extra_parameters: Vec::new(),
            id_claim: "sub",
            trusts_email_verified: true,
            claims: ClaimRule::None,
            store_tokens: false,
            apple: None,
            front_channel: false,
            client_assertion: None,
        };
        let profile = match (&spec.options, spec.strategy) {
            (Options::Oidc(o), Strategy::Oidc) => {
                let discovery =
                    if o.discovery_url.is_empty() { discovery_of(&o.issuer) } else { o.discovery_url.clone() };
                let issuer =
                    if o.issuer.is_empty() { IssuerRule::Discovered } else { IssuerRule::Exact(o.issuer.clone()) };
                Profile {
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    token_endpoint: o.token_endpoint.clone(),
                    userinfo_endpoint: o.userinfo_endpoint.clone(),
                    jwks_uri: o.jwks_uri.clone(),
                    fetch_userinfo: o.fetch_userinfo || !o.userinfo_endpoint.is_empty(),
                    scopes: scopes(&["openid"], &o.scopes),
                    store_tokens: o.store_tokens,
                    front_channel: o.channel == OidcChannel::Front,
                    client_assertion: (o.client_auth == OidcClientAuth::PrivateKeyJwt).then(|| {
                        crate::assertion::AssertionKey {
                            pem: conn
                                .secret(names::CLIENT_ASSERTION_KEY)
                                .map(|s| s.expose().to_owned())
                                .unwrap_or_default(),
                            key_id: o.client_assertion_key_id.clone(),
                        }
                    }),
                    ..base(&o.client_id, discovery, issuer)
                }
            }
            (Options::GoogleApps(o), Strategy::GoogleApps) => {
                let issuer = or(&o.issuer, GOOGLE_ISSUER);
                let discovery =
                    if o.discovery_url.is_empty() { discovery_of(&issuer) } else { o.discovery_url.clone() };
                let mut domains = vec![o.domain.clone()];
                domains.extend(o.allowed_domains.iter().cloned());
                Profile {
                    scopes: scopes(&["openid", "email", "profile"], &[]),
                    // Google shows only accounts of the domain (a hint; the `hd` claim is
                    // what is checked).
                    extra_parameters: vec![(
                        "hd".into(),
                        if o.allowed_domains.is_empty() { o.domain.clone() } else { "*".into() },
                    )],
                    claims: ClaimRule::HostedDomain(domains),
                    store_tokens: o.store_tokens,
                    ..base(&o.client_id, discovery, IssuerRule::Exact(issuer))
                }
            }
            (Options::AzureAd(o), Strategy::Waad) => {
                let directory = if o.tenant_id.is_empty() { o.domain.clone() } else { o.tenant_id.clone() };
                let discovery = if o.discovery_url.is_empty() {
                    format!("{MICROSOFT_LOGIN}/{directory}/v2.0/.well-known/openid-configuration")
                } else {
                    o.discovery_url.clone()
                };
                let multi = matches!(o.tenant_id.as_str(), "organizations" | "common");
                let (issuer, claims) = if multi {
                    (
                        IssuerRule::DiscoveredTemplate,
                        ClaimRule::Tenants {
                            allowed: o.allowed_tenant_ids.clone(),
                            organizations_only: o.tenant_id == "organizations",
                        },
                    )
                } else {
                    (IssuerRule::Discovered, ClaimRule::Tenant(o.tenant_id.clone()))
                };
                Profile {
                    scopes: scopes(&["openid", "email", "profile"], &[]),
                    // The object id is the user's across the directory's applications (the
                    // `sub` is pairwise per application).
                    id_claim: "oid",
                    trusts_email_verified: false,
                    claims,
                    store_tokens: o.store_tokens,
                    ..base(&o.client_id, discovery, issuer)
                }
            }
            (Options::Oauth2(o), Strategy::Apple) => {
                let issuer = or(&o.issuer, APPLE_ISSUER);
                let discovery =
                    if o.discovery_url.is_empty() { discovery_of(&issuer) } else { o.discovery_url.clone() };
                Profile {
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    token_endpoint: o.token_endpoint.clone(),
                    jwks_uri: o.jwks_uri.clone(),
                    scopes: scopes(&["openid", "name", "email"], &o.scopes),
                    // Apple posts its answer when a name or email is asked.
                    extra_parameters: vec![("response_mode".into(), "form_post".into())],
                    store_tokens: o.store_tokens,
                    apple: Some(AppleKey { team_id: o.apple_team_id.clone(), key_id: o.apple_key_id.clone() }),
                    ..base(&o.client_id, discovery, IssuerRule::Exact(issuer))
                }
            }
            (Options::Oauth2(o), Strategy::GoogleOauth2 | Strategy::Linkedin | Strategy::Windowslive) => {
                let (default_issuer, default_discovery, default_scopes, trusts): (&str, String, &[&str], bool) =
                    match spec.strategy {
                        Strategy::GoogleOauth2 => {
                            (GOOGLE_ISSUER, discovery_of(GOOGLE_ISSUER), &["openid", "email", "profile"], true)
                        }
                        Strategy::Linkedin => {
                            (LINKEDIN_ISSUER, discovery_of(LINKEDIN_ISSUER), &["openid", "email", "profile"], true)
                        }
                        _ => (
                            "",
                            format!("{MICROSOFT_LOGIN}/consumers/v2.0/.well-known/openid-configuration"),
                            &["openid", "email", "profile"],
                            false,
                        ),
                    };
                let consumers_issuer = format!("{MICROSOFT_LOGIN}/{MICROSOFT_CONSUMERS_TENANT}/v2.0");
                let default_issuer = if default_issuer.is_empty() { consumers_issuer.as_str() } else { default_issuer };
                let issuer = or(&o.issuer, default_issuer);
                let discovery = match (o.discovery_url.is_empty(), o.issuer.is_empty()) {
                    (false, _) => o.discovery_url.clone(),
                    (true, false) => discovery_of(&o.issuer),
                    (true, true) => default_discovery,
                };
                Profile {
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    token_endpoint: o.token_endpoint.clone(),
                    userinfo_endpoint: o.userinfo_endpoint.clone(),
                    jwks_uri: o.jwks_uri.clone(),
                    fetch_userinfo: !o.userinfo_endpoint.is_empty(),
                    scopes: scopes(default_scopes, &o.scopes),
                    trusts_email_verified: trusts,
                    store_tokens: o.store_tokens,
                    ..base(&o.client_id, discovery, IssuerRule::Exact(issuer))
                }
            }
            _ => return Err(wrong_family(conn)),
        };
        if profile.client_assertion.as_ref().is_some_and(|k| k.pem.is_empty()) {
            return Err(ConnectorError::FailedPrecondition {
                reason: "CLIENT_ASSERTION_KEY_MISSING",
                message: format!(
                    "connection {:?} authenticates with private_key_jwt and has no client_assertion_key; set it with \
                     UpdateConnection",
                    profile.connection
                ),
            });
        }
        if profile.client_secret.expose().is_empty() && !profile.front_channel && profile.client_assertion.is_none() {
            return Err(ConnectorError::FailedPrecondition {
                reason: "CLIENT_SECRET_MISSING",
                message: format!(
                    "connection {:?} has no client_secret; set it with UpdateConnection (this connector uses the \
                     back channel)",
                    profile.connection
                ),
            });
        }
        Ok(profile)
    }
}

/// The issuer a Microsoft multi-tenant template gives for directory `tid`.
pub(crate) fn templated_issuer(template: &str, tid: &str) -> String {
    template.replace("{tenantid}", tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_templates() {
        let t = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert_eq!(templated_issuer(t, "abc"), "https://login.microsoftonline.com/abc/v2.0");
        assert_eq!(templated_issuer("https://x/fixed/v2.0", "abc"), "https://x/fixed/v2.0");
    }

    #[test]
    fn scopes_keep_defaults_first_without_repeats() {
        assert_eq!(
            scopes(&["openid", "email"], &["email".into(), "offline_access".into()]),
            vec!["openid", "email", "offline_access"]
        );
    }
}
