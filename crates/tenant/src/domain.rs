//! The tenant service's types and rules, and their conversion from and to the contract.
//! Conversions from requests are where input is validated: every problem of a request is
//! collected into one INVALID_ARGUMENT answer naming each bad field.

use postern_common::error::Violations;
use postern_common::scope::{Scope, Scopes};
use postern_common::time::to_timestamp;
use postern_common::validate;
use postern_proto::tenant::v1 as pb;

/// Most callback or logout URLs a client may have.
pub const MAX_URLS: usize = 100;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The immutable slug.
    pub name: String,
    /// The human-readable name.
    pub display_name: String,
    /// The logo's `https` URL, shown on the hosted login page; empty: none.
    pub logo_url: String,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
}

impl From<Tenant> for pb::Tenant {
    fn from(t: Tenant) -> Self {
        pb::Tenant {
            name: t.name,
            display_name: t.display_name,
            create_time: Some(to_timestamp(t.create_time)),
            update_time: Some(to_timestamp(t.update_time)),
            logo_url: t.logo_url,
        }
    }
}

/// The kind of application (after Auth0's app types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum AppType {
    /// A native application (public).
    Native = 1,
    /// A single-page application (public).
    Spa = 2,
    /// A traditional web application (confidential).
    RegularWeb = 3,
    /// A machine-to-machine application (confidential).
    MachineToMachine = 4,
}

impl AppType {
    /// The app type stored as `v`.
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Self::Native),
            2 => Some(Self::Spa),
            3 => Some(Self::RegularWeb),
            4 => Some(Self::MachineToMachine),
            _ => None,
        }
    }

    /// Whether clients of this type keep a secret and must present it.
    pub fn is_confidential(self) -> bool {
        matches!(self, Self::RegularWeb | Self::MachineToMachine)
    }

    fn from_pb(v: i32) -> Result<Self, String> {
        match pb::AppType::try_from(v) {
            Ok(pb::AppType::Native) => Ok(Self::Native),
            Ok(pb::AppType::Spa) => Ok(Self::Spa),
            Ok(pb::AppType::RegularWeb) => Ok(Self::RegularWeb),
            Ok(pb::AppType::MachineToMachine) => Ok(Self::MachineToMachine),
            _ => Err(
                "is required: one of APP_TYPE_NATIVE, APP_TYPE_SPA, APP_TYPE_REGULAR_WEB, APP_TYPE_MACHINE_TO_MACHINE"
                    .into(),
            ),
        }
    }

    fn to_pb(self) -> pb::AppType {
        match self {
            Self::Native => pb::AppType::Native,
            Self::Spa => pb::AppType::Spa,
            Self::RegularWeb => pb::AppType::RegularWeb,
            Self::MachineToMachine => pb::AppType::MachineToMachine,
        }
    }
}

/// A client as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The generated id.
    pub client_id: String,
    /// The tenant's name.
    pub tenant: String,
    /// The application's name.
    pub name: String,
    /// The kind of application.
    pub app_type: AppType,
    /// Allowed login callback URLs.
    pub callbacks: Vec<String>,
    /// Allowed logout URLs.
    pub allowed_logout_urls: Vec<String>,
    /// Allowed origins (CORS) besides the callbacks' origins.
    pub allowed_origins: Vec<String>,
    /// Where logout tokens are posted (OpenID Connect Back-Channel Logout); empty for none.
    pub backchannel_logout_uri: String,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
}

impl Client {
    /// The contract's view, with `secret` filled only when one was just made.
    pub fn into_pb(self, secret: Option<String>) -> pb::Client {
        pb::Client {
            client_id: self.client_id,
            name: self.name,
            app_type: self.app_type.to_pb() as i32,
            callbacks: self.callbacks,
            allowed_logout_urls: self.allowed_logout_urls,
            allowed_origins: self.allowed_origins,
            backchannel_logout_uri: self.backchannel_logout_uri,
            client_secret: secret.unwrap_or_default(),
            confidential: self.app_type.is_confidential(),
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }
}

/// A client about to be created, validated.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// The generated id.
    pub client_id: String,
    /// The application's name.
    pub name: String,
    /// The kind of application.
    pub app_type: AppType,
    /// Allowed login callback URLs.
    pub callbacks: Vec<String>,
    /// Allowed logout URLs.
    pub allowed_logout_urls: Vec<String>,
    /// Allowed origins (CORS) besides the callbacks' origins.
    pub allowed_origins: Vec<String>,
    /// Where logout tokens are posted; empty for none.
    pub backchannel_logout_uri: String,
}

/// A change to a client: `Some` fields are replaced.
#[derive(Debug, Clone, Default)]
pub struct ClientPatch {
    /// New name.
    pub name: Option<String>,
    /// New app type.
    pub app_type: Option<AppType>,
    /// New callbacks.
    pub callbacks: Option<Vec<String>>,
    /// New logout URLs.
    pub allowed_logout_urls: Option<Vec<String>>,
    /// New allowed origins.
    pub allowed_origins: Option<Vec<String>>,
    /// New back-channel logout URI (empty: none).
    pub backchannel_logout_uri: Option<String>,
}

/// An API key's public record (its secret is shown once and kept only as a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// `key_…`
    pub id: String,
    /// What the key is for.
    pub description: String,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Expiry, unix microseconds; `None` for never.
    pub expire_time: Option<i64>,
    /// What the key may do in its tenant.
    pub scopes: Scopes,
}

impl ApiKey {
    /// The contract's view, with `key` filled only when it was just made.
    pub fn into_pb(self, key: Option<String>) -> pb::ApiKey {
        pb::ApiKey {
            id: self.id,
            description: self.description,
            key: key.unwrap_or_default(),
            create_time: Some(to_timestamp(self.create_time)),
            expire_time: self.expire_time.map(to_timestamp),
            // Full keys answer empty, as they were created.
            scopes: if self.scopes.is_full() {
                Vec::new()
            } else {
                self.scopes.iter().map(|s| s.to_proto() as i32).collect()
            },
        }
    }
}

/// The scopes a new key asks for (`field` is their path): each a known scope, none twice;
/// none at all means every scope.
pub fn check_scopes(v: &mut Violations, field: &str, requested: &[i32]) -> Scopes {
    if requested.is_empty() {
        return Scopes::full();
    }
    let mut seen = Vec::new();
    for (i, value) in requested.iter().enumerate() {
        match Scope::from_proto(*value) {
            Some(scope) if seen.contains(&scope) => v.add(format!("{field}[{i}]"), format!("{scope} is listed twice")),
            Some(scope) => seen.push(scope),
            None => v.add(
                format!("{field}[{i}]"),
                format!(
                    "must be one of {}; leave the list empty for every scope",
                    Scope::ALL.iter().map(|s| format!("API_KEY_SCOPE_{s}")).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
    Scopes::from_iter(seen)
}

/// Checks the `tenant` field of a request (`field` is its path).
pub fn check_tenant_name(v: &mut Violations, field: &str, name: &str) {
    v.check(field, validate::tenant_name(name));
}

/// Checks a display name.
pub fn check_display_name(v: &mut Violations, field: &str, value: &str) {
    v.check(field, validate::display_text(value, 1, 128));
}

/// Checks a logo's URL (empty: no logo).
pub fn check_logo_url(v: &mut Violations, field: &str, value: &str) {
    if !value.is_empty() {
        v.check(field, validate::image_url(value));
    }
}

/// Checks a list of redirect URLs.
pub fn check_urls(v: &mut Violations, field: &str, urls: &[String]) {
    check_list(v, field, urls, "URLs", validate::redirect_url);
}

/// Checks a list of allowed origins.
pub fn check_origins(v: &mut Violations, field: &str, origins: &[String]) {
    check_list(v, field, origins, "origins", validate::origin_pattern);
}

/// Checks a list of at most [`MAX_URLS`] `items` (`what`, in the message), each with `check`.
fn check_list(
    v: &mut Violations,
    field: &str,
    items: &[String],
    what: &str,
    check: impl Fn(&str) -> Result<(), String>,
) {
    if items.len() > MAX_URLS {
        v.add(field, format!("must hold at most {MAX_URLS} {what}, got {}", items.len()));
    }
    for (i, item) in items.iter().enumerate() {
        v.check(format!("{field}[{i}]"), check(item));
    }
}

/// Validates a new client from the contract.
pub fn new_client(v: &mut Violations, client: &pb::Client) -> Option<NewClient> {
    check_display_name(v, "client.name", &client.name);
    let app_type = AppType::from_pb(client.app_type).map_err(|e| v.add("client.app_type", e)).ok();
    check_urls(v, "client.callbacks", &client.callbacks);
    check_urls(v, "client.allowed_logout_urls", &client.allowed_logout_urls);
    check_origins(v, "client.allowed_origins", &client.allowed_origins);
    check_backchannel_logout_uri(v, &client.backchannel_logout_uri);
    if !client.client_id.is_empty() {
        v.add("client.client_id", "is output only: Postern generates it; leave it empty");
    }
    if !client.client_secret.is_empty() {
        v.add("client.client_secret", "is output only: Postern generates it; leave it empty");
    }
    Some(NewClient {
        client_id: postern_common::ids::random_alphanumeric(32),
        name: client.name.clone(),
        app_type: app_type?,
        callbacks: client.callbacks.clone(),
        allowed_logout_urls: client.allowed_logout_urls.clone(),
        allowed_origins: client.allowed_origins.clone(),
        backchannel_logout_uri: client.backchannel_logout_uri.clone(),
    })
}

/// Checks a back-channel logout URI: empty (none), or a URL with the rules of the callbacks.
fn check_backchannel_logout_uri(v: &mut Violations, uri: &str) {
    if !uri.is_empty() {
        v.check("client.backchannel_logout_uri", validate::redirect_url(uri));
    }
}

/// The mutable fields of a client, for update masks.
pub const CLIENT_MUTABLE: &[&str] =
    &["name", "app_type", "callbacks", "allowed_logout_urls", "allowed_origins", "backchannel_logout_uri"];

/// Validates a client update: the paths of `mask` (or every set mutable field when empty).
pub fn client_patch(v: &mut Violations, client: &pb::Client, mask: &[String]) -> ClientPatch {
    let paths = postern_common::mask::effective_paths(
        v,
        mask,
        CLIENT_MUTABLE,
        &["client_id", "client_secret", "confidential", "create_time", "update_time"],
        |p| match p {
            "name" => !client.name.is_empty(),
            "app_type" => client.app_type != 0,
            "callbacks" => !client.callbacks.is_empty(),
            "allowed_logout_urls" => !client.allowed_logout_urls.is_empty(),
            "allowed_origins" => !client.allowed_origins.is_empty(),
            "backchannel_logout_uri" => !client.backchannel_logout_uri.is_empty(),
            _ => false,
        },
    );
    let mut patch = ClientPatch::default();
    for p in paths {
        match p {
            "name" => {
                check_display_name(v, "client.name", &client.name);
                patch.name = Some(client.name.clone());
            }
            "app_type" => {
                patch.app_type = AppType::from_pb(client.app_type).map_err(|e| v.add("client.app_type", e)).ok();
            }
            "callbacks" => {
                check_urls(v, "client.callbacks", &client.callbacks);
                patch.callbacks = Some(client.callbacks.clone());
            }
            "allowed_logout_urls" => {
                check_urls(v, "client.allowed_logout_urls", &client.allowed_logout_urls);
                patch.allowed_logout_urls = Some(client.allowed_logout_urls.clone());
            }
            "allowed_origins" => {
                check_origins(v, "client.allowed_origins", &client.allowed_origins);
                patch.allowed_origins = Some(client.allowed_origins.clone());
            }
            "backchannel_logout_uri" => {
                check_backchannel_logout_uri(v, &client.backchannel_logout_uri);
                patch.backchannel_logout_uri = Some(client.backchannel_logout_uri.clone());
            }
            _ => {}
        }
    }
    patch
}

/// Most scopes an API may define.
pub const MAX_API_SCOPES: usize = 200;
/// Longest API identifier (the authenticator accepts audiences up to this length).
pub const MAX_IDENTIFIER_CHARS: usize = 512;
/// Longest scope value (Auth0's limit).
pub const MAX_SCOPE_VALUE_CHARS: usize = 280;
/// Longest scope description.
pub const MAX_SCOPE_DESCRIPTION_CHARS: usize = 500;

/// A scope an API defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiScope {
    /// The value clients ask for and tokens carry.
    pub value: String,
    /// What it allows.
    pub description: String,
}

/// An API (Auth0's resource server) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceServer {
    /// Internal id, the grants' reference.
    pub id: String,
    /// The immutable identifier: the tokens' audience.
    pub identifier: String,
    /// Human-readable name.
    pub name: String,
    /// The scopes it defines.
    pub scopes: Vec<ApiScope>,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
}

impl From<ResourceServer> for pb::ResourceServer {
    fn from(r: ResourceServer) -> Self {
        pb::ResourceServer {
            identifier: r.identifier,
            name: r.name,
            scopes: r
                .scopes
                .into_iter()
                .map(|s| pb::ResourceServerScope { value: s.value, description: s.description })
                .collect(),
            create_time: Some(to_timestamp(r.create_time)),
            update_time: Some(to_timestamp(r.update_time)),
        }
    }
}

/// A change to an API: `Some` fields are replaced.
#[derive(Debug, Clone, Default)]
pub struct ResourceServerPatch {
    /// New name.
    pub name: Option<String>,
    /// New scopes.
    pub scopes: Option<Vec<ApiScope>>,
}

/// A client grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGrant {
    /// `cgr_…`
    pub id: String,
    /// The client granted.
    pub client_id: String,
    /// The API's identifier.
    pub audience: String,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// Creation time, unix microseconds.
    pub create_time: i64,
    /// Last change, unix microseconds.
    pub update_time: i64,
}

impl From<ClientGrant> for pb::ClientGrant {
    fn from(g: ClientGrant) -> Self {
        pb::ClientGrant {
            id: g.id,
            client_id: g.client_id,
            audience: g.audience,
            scopes: g.scopes,
            create_time: Some(to_timestamp(g.create_time)),
            update_time: Some(to_timestamp(g.update_time)),
        }
    }
}

/// A token-shaped text (an API identifier, a scope value): `min` to `max` characters,
/// no whitespace and no control characters.
fn token_text(value: &str, max: usize, what: &str) -> Result<(), String> {
    let len = value.chars().count();
    if value.is_empty() {
        return Err(format!("is required: {what} of 1 to {max} characters without whitespace"));
    }
    if len > max {
        return Err(format!("must be 1 to {max} characters (got {len})"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

/// Checks an API identifier (`field` is its path).
pub fn check_identifier(v: &mut Violations, field: &str, value: &str) {
    v.check(field, token_text(value, MAX_IDENTIFIER_CHARS, "the API's identifier, the tokens' audience,"));
}

/// Checks the scopes an API defines: each value valid and once, each description valid,
/// at most [`MAX_API_SCOPES`].
pub fn check_api_scopes(v: &mut Violations, field: &str, scopes: &[pb::ResourceServerScope]) -> Vec<ApiScope> {
    if scopes.len() > MAX_API_SCOPES {
        v.add(field, format!("must hold at most {MAX_API_SCOPES} scopes, got {}", scopes.len()));
        return Vec::new();
    }
    let mut out: Vec<ApiScope> = Vec::with_capacity(scopes.len());
    for (i, s) in scopes.iter().enumerate() {
        let before = v.as_slice().len();
        v.check(format!("{field}[{i}].value"), token_text(&s.value, MAX_SCOPE_VALUE_CHARS, "a scope value"));
        if v.as_slice().len() == before && out.iter().any(|o| o.value == s.value) {
            v.add(format!("{field}[{i}].value"), format!("{:?} is listed twice", s.value));
        }
        v.check(
            format!("{field}[{i}].description"),
            validate::display_text(&s.description, 0, MAX_SCOPE_DESCRIPTION_CHARS),
        );
        out.push(ApiScope { value: s.value.clone(), description: s.description.clone() });
    }
    out
}

/// Validates a new API from the contract.
pub fn new_resource_server(v: &mut Violations, r: &pb::ResourceServer) -> ResourceServer {
    check_identifier(v, "resource_server.identifier", &r.identifier);
    check_display_name(v, "resource_server.name", &r.name);
    let scopes = check_api_scopes(v, "resource_server.scopes", &r.scopes);
    ResourceServer {
        id: postern_common::ids::prefixed("api"),
        identifier: r.identifier.clone(),
        name: r.name.clone(),
        scopes,
        create_time: 0,
        update_time: 0,
    }
}

/// Validates an API update: the paths of `mask` (or every set mutable field when empty).
pub fn resource_server_patch(v: &mut Violations, r: &pb::ResourceServer, mask: &[String]) -> ResourceServerPatch {
    let paths = postern_common::mask::effective_paths(
        v,
        mask,
        &["name", "scopes"],
        &["identifier", "create_time", "update_time"],
        |p| match p {
            "name" => !r.name.is_empty(),
            "scopes" => !r.scopes.is_empty(),
            _ => false,
        },
    );
    let mut patch = ResourceServerPatch::default();
    for p in paths {
        match p {
            "name" => {
                check_display_name(v, "resource_server.name", &r.name);
                patch.name = Some(r.name.clone());
            }
            "scopes" => patch.scopes = Some(check_api_scopes(v, "resource_server.scopes", &r.scopes)),
            _ => {}
        }
    }
    patch
}

/// Checks the scopes of a grant for their shape (each a scope value, each once); whether
/// each is one of the API's is checked against the API itself.
pub fn check_grant_scopes(v: &mut Violations, field: &str, scopes: &[String]) {
    if scopes.len() > MAX_API_SCOPES {
        v.add(field, format!("must hold at most {MAX_API_SCOPES} scopes, got {}", scopes.len()));
        return;
    }
    for (i, s) in scopes.iter().enumerate() {
        let before = v.as_slice().len();
        v.check(format!("{field}[{i}]"), token_text(s, MAX_SCOPE_VALUE_CHARS, "a scope value"));
        if v.as_slice().len() == before && scopes[..i].contains(s) {
            v.add(format!("{field}[{i}]"), format!("{s:?} is listed twice"));
        }
    }
}

/// The grant scopes that `api` does not define, as violations of `field`.
pub fn check_scopes_of_api(v: &mut Violations, field: &str, scopes: &[String], api: &ResourceServer) {
    for (i, s) in scopes.iter().enumerate() {
        if !api.scopes.iter().any(|a| &a.value == s) {
            v.add(
                format!("{field}[{i}]"),
                format!(
                    "{:?} is not a scope of the API {:?}; its scopes are: {}",
                    validate::truncate(s, 80),
                    validate::truncate(&api.identifier, 80),
                    if api.scopes.is_empty() {
                        "none".to_owned()
                    } else {
                        api.scopes.iter().map(|a| a.value.as_str()).collect::<Vec<_>>().join(" ")
                    }
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_client(client: pb::Client, bad_fields: &[&str]) {
        let mut v = Violations::new();
        new_client(&mut v, &client);
        let fields: Vec<_> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, bad_fields);
    }

    fn good() -> pb::Client {
        pb::Client {
            name: "Fabrikam Employee Timesheets".into(),
            app_type: pb::AppType::RegularWeb as i32,
            callbacks: vec!["https://timesheets.fabrikam.example/callback".into(), "http://localhost:3000/cb".into()],
            ..Default::default()
        }
    }

    #[test]
    fn clients() {
        check_client(good(), &[]);
        check_client(pb::Client { name: String::new(), ..good() }, &["client.name"]);
        check_client(pb::Client { app_type: 0, ..good() }, &["client.app_type"]);
        check_client(pb::Client { app_type: 99, ..good() }, &["client.app_type"]);
        check_client(
            pb::Client { callbacks: vec!["https://ok.example/".into(), "http://evil.example/".into()], ..good() },
            &["client.callbacks[1]"],
        );
        check_client(
            pb::Client { allowed_logout_urls: vec!["nope".into()], ..good() },
            &["client.allowed_logout_urls[0]"],
        );
        check_client(pb::Client { client_id: "mine".into(), ..good() }, &["client.client_id"]);
        check_client(pb::Client { callbacks: vec!["https://a.example/".into(); 101], ..good() }, &["client.callbacks"]);
    }

    #[test]
    fn masks() {
        let mut v = Violations::new();
        let patch = client_patch(&mut v, &pb::Client { name: "New".into(), ..Default::default() }, &[]);
        assert!(v.is_empty());
        assert_eq!(patch.name.as_deref(), Some("New"));
        assert!(patch.callbacks.is_none());

        let mut v = Violations::new();
        let patch = client_patch(&mut v, &pb::Client::default(), &["callbacks".into()]);
        assert!(v.is_empty());
        assert_eq!(patch.callbacks, Some(vec![]));

        let mut v = Violations::new();
        client_patch(&mut v, &pb::Client::default(), &["client_id".into(), "bogus".into()]);
        let fields: Vec<_> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["update_mask.paths[0]", "update_mask.paths[1]"]);
    }
}
