//! The login orchestration: resolve the connection, check the credentials under brute-force
//! protection, create or update the user and its identity under the connection's
//! profile-sync rule, and issue the tokens. The gRPC handlers ([`crate::api`]) and the
//! OpenID provider call these steps; neither repeats them.
//!
//! A login is three calls: [`AuthnApi::verify_client`], [`AuthnApi::password_login`],
//! [`AuthnApi::issue_tokens`]; a signup is [`AuthnApi::signup`]. The one-time-code family's
//! steps are in [`crate::passwordless`].

use std::sync::Arc;
use std::time::SystemTime;

use postern_common::error::{
    Violations, already_exists, failed_precondition, internal, invalid_field, permission_denied,
};
use postern_connection::{PersonalInfo, Resolved, Strategy};
use postern_connector::{
    Begun, ExternalProfile, PasswordChange, PasswordChanged, PasswordConnector, RedirectConnector, RedirectTransaction,
    SignedUp, Signup, Verified,
};
use postern_proto::tenant::v1 as tenant_pb;
use tonic::{Code, Status};

use crate::api::AuthnApi;
use crate::audit::{self, Facts, LoginAudit, Type};
use crate::bruteforce::{MAX_CONSECUTIVE_FAILURES, Outcome};
use crate::domain::{self, Asserted, Identity, Profile, ProfileSync, User};
use crate::status::{
    client_refusal, connector_status, service_not_found, tenant_service_unavailable, too_many_attempts, user_not_found,
    wrong_credentials,
};
use crate::store::{Admitted, LoginFound, LoginUpdate, NewUser, Recorded, StoreError};
use crate::tokens::{self, ProfileClaims, TokenRequest};
use crate::validate::{check_email, check_tenant, required};

/// A redirect login's callback as it reached Postern: the upstream's answer.
#[derive(Debug, Clone, Copy)]
pub struct Callback<'a> {
    /// The callback's parameters (query or form).
    pub params: &'a std::collections::HashMap<String, String>,
    /// The upstream login transaction the callback's state named.
    pub transaction: &'a RedirectTransaction,
    /// The browser's address.
    pub address: &'a str,
}

/// An unsolicited answer of an upstream (an IdP-initiated login) at the callback.
#[derive(Debug, Clone, Copy)]
pub struct UnsolicitedCallback<'a> {
    /// The callback's parameters (query and form).
    pub params: &'a std::collections::HashMap<String, String>,
    /// The URL it was posted to.
    pub callback_url: &'a str,
    /// The browser's address.
    pub address: &'a str,
}

/// A login by username (or email) and password through a database connection.
#[derive(Debug, Clone, Copy)]
pub struct PasswordLogin<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The client the user logs in to (already checked by [`AuthnApi::verify_client`]).
    pub client_id: &'a str,
    /// The connection's name; it must be enabled for the client.
    pub connection: &'a str,
    /// The email address or username the user typed.
    pub username: &'a str,
    /// The password the user typed.
    pub password: &'a str,
    /// The address brute-force protection counts against (the user's, as the application
    /// reports it, else the caller's).
    pub address: &'a str,
    /// A browser login's session, code and used-up page transaction, written with the
    /// user's login (one write; [`StoreError::Used`](crate::store::StoreError::Used) and
    /// nothing written when the transaction is gone); `None` for `Login`.
    pub grant: Option<&'a crate::store::oauth::LoginGrant<'a>>,
}

impl PasswordLogin<'_> {
    /// Checks the fields. A password longer than any ever accepted is wrong credentials, not
    /// bad input, and is refused before anything else (no hash is computed for it).
    pub fn validate(&self) -> Result<(), Status> {
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", self.tenant);
        required(&mut v, "client_id", self.client_id);
        required(&mut v, "connection", self.connection);
        required(&mut v, "username", self.username);
        // Within what every backend's index of login failures holds (PostgreSQL's B-tree
        // stops at about 2,700 bytes a row).
        v.check("username", postern_common::validate::display_text(self.username, 0, MAX_USERNAME_CHARS));
        if self.password.chars().count() > postern_connection::password::MAX_PASSWORD_LENGTH {
            // Wrong by construction: no password this long was ever accepted.
            return Err(wrong_credentials());
        }
        v.into_result()
    }
}

/// The longest username or email a login may name (an email address has at most 254).
pub const MAX_USERNAME_CHARS: usize = 320;

/// A signup through a database connection.
#[derive(Debug, Clone, Copy)]
pub struct SignupInput<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The client the user signs up to.
    pub client_id: &'a str,
    /// The connection's name; it must be enabled for the client and allow signups.
    pub connection: &'a str,
    /// The user's email address.
    pub email: &'a str,
    /// The username, where the connection requires one; else empty.
    pub username: &'a str,
    /// The password, checked against the connection's policy.
    pub password: &'a str,
    /// The user's own metadata, if any.
    pub user_metadata: Option<&'a prost_types::Struct>,
    /// Where the signup came from (the caller's address, or the browser's on the hosted
    /// page), for its audit event.
    pub address: &'a str,
}

impl SignupInput<'_> {
    /// Checks the fields that do not depend on the connection (the username and the password
    /// are checked against the connection's rules by [`AuthnApi::signup`]).
    pub fn validate(&self) -> Result<(), Status> {
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", self.tenant);
        required(&mut v, "client_id", self.client_id);
        required(&mut v, "connection", self.connection);
        check_email(&mut v, "email", self.email);
        v.into_result()
    }
}

/// The tokens of a successful login.
#[derive(Debug, Clone, Copy)]
pub struct IssueTokens<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The client the user logged in to: the ID token's audience.
    pub client_id: &'a str,
    /// The user who logged in.
    pub user: &'a User,
    /// The requested scopes; empty means [`tokens::DEFAULT_SCOPE`].
    pub scope: &'a str,
    /// The API the access token is for; empty means none (the access token is then opaque,
    /// good only at the userinfo endpoint).
    pub audience: &'a str,
    /// The nonce to echo in the ID token, if any.
    pub nonce: Option<&'a str>,
}

/// The profile claims of a user, before the scopes filter them.
pub(crate) fn claims_of(u: &User) -> ProfileClaims {
    let p = &u.profile;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    ProfileClaims {
        email: some(&p.email),
        email_verified: (!p.email.is_empty()).then_some(p.email_verified),
        name: some(&p.name),
        given_name: some(&p.given_name),
        family_name: some(&p.family_name),
        nickname: some(&p.nickname),
        picture: some(&p.picture),
        updated_at: u64::try_from(u.update_time / 1_000_000).ok(),
        groups: groups_of(u),
        phone_number: some(&p.phone_number),
        phone_number_verified: (!p.phone_number.is_empty()).then_some(p.phone_verified),
    }
}

/// The groups the user's identities' sources put in their profiles (directories whose
/// connection reads groups), deduplicated; `None` when there are none.
fn groups_of(u: &User) -> Option<Vec<String>> {
    let mut groups: Vec<String> = u
        .identities
        .iter()
        .filter_map(|i| i.profile_data.get("groups")?.as_array())
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    groups.sort();
    groups.dedup();
    (!groups.is_empty()).then_some(groups)
}

fn with_default_nickname(mut p: Profile) -> Profile {
    if p.nickname.is_empty() {
        p.nickname = domain::default_nickname(&p.email);
    }
    p
}

fn uuid_simple() -> String {
    postern_common::ids::new_id().replace('-', "")
}

/// A connection whose strategy no connector of `family` serves in this process.
fn no_connector(spec: &postern_connection::ConnectionSpec, family: &str) -> Status {
    failed_precondition(
        "STRATEGY_NOT_SUPPORTED",
        format!(
            "connection {:?} uses strategy {:?}, which this server cannot log users in with by {family}",
            spec.name,
            spec.strategy.as_str()
        ),
    )
}

/// The user of a recorded login, or why there is none.
fn recorded(r: Recorded) -> Result<User, Status> {
    match r {
        Recorded::Login(user) => Ok(*user),
        Recorded::Blocked => Err(crate::status::blocked()),
        // Deleted while logging in: as if it never existed.
        Recorded::Missing => Err(wrong_credentials()),
    }
}

/// What the credential check found.
enum Checked {
    /// Postern's own hash matched this identity.
    Local { found: Box<LoginFound>, rehash: Option<String> },
    /// The connection's source accepted the credentials.
    External { profile: Box<ExternalProfile>, import_hash: Option<String> },
}

impl AuthnApi {
    /// Checks that the client belongs to the tenant and, if it is confidential, its secret:
    /// remembered when it passed before and nothing has changed the client since
    /// ([`crate::clients::ClientChecks`]), asked of the tenant service otherwise.
    pub async fn verify_client(&self, tenant: &str, client_id: &str, secret: &str) -> Result<(), Status> {
        let checks = &self.client_checks;
        if checks.passed(tenant, client_id, secret) {
            return Ok(());
        }
        let asked = checks.asking();
        metrics::counter!("postern_authn_client_checks_total").increment(1);
        let answer = self
            .tenant_clients
            .clone()
            .verify_client_secret(tenant_pb::VerifyClientSecretRequest {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
                client_secret: secret.to_owned(),
            })
            .await;
        match answer {
            Ok(_) => {
                checks.remember(asked, tenant, client_id, secret);
                Ok(())
            }
            Err(s) => Err(client_refusal(tenant, client_id, &s)),
        }
    }

    /// Checks that the tenant has the client (a public check: no secret): remembered like
    /// the secret checks, asked of the tenant service otherwise.
    async fn client_exists(&self, tenant: &str, client_id: &str) -> Result<(), Status> {
        self.resolve_client(tenant, client_id).await.map(|_| ()).map_err(|s| client_refusal(tenant, client_id, &s))
    }

    /// The client with its grants: remembered while the tenant event log says nothing of it
    /// ([`crate::clients::ClientChecks`]), otherwise asked of the tenant service
    /// (`ResolveClient`, internal), whose refusal is answered as it is.
    pub(crate) async fn resolve_client(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Result<Arc<crate::clients::ResolvedClient>, Status> {
        let checks = &self.client_checks;
        if let Some(client) = checks.client(tenant, client_id) {
            return Ok(client);
        }
        let asked = checks.asking();
        metrics::counter!("postern_authn_client_reads_total").increment(1);
        let answer = self
            .tenant_clients
            .clone()
            .resolve_client(tenant_pb::ResolveClientRequest {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
            })
            .await?
            .into_inner();
        match answer.client {
            Some(client) if client.client_id == client_id => {
                Ok(checks.remember_client(asked, tenant, &client, answer.grants))
            }
            _ => Err(postern_common::error::internal(&"ResolveClient answered no client, or another one")),
        }
    }

    /// The scope of a user's access token for the API `audience` (Auth0's rule for user
    /// logins): the API must be one of the tenant's (PERMISSION_DENIED, reason
    /// ACCESS_DENIED, "Service not found" otherwise: the token endpoint's 403
    /// `access_denied`), and the scopes asked are kept where they are OpenID Connect's or
    /// the API defines them (others are dropped, not refused). Without an audience the
    /// scope is the one asked. The API is remembered while the tenant event log says
    /// nothing of the tenant's APIs ([`crate::clients::ClientChecks`]).
    pub(crate) async fn api_scope(&self, tenant: &str, audience: &str, scope: &str) -> Result<String, Status> {
        let normalized = tokens::normalize_scope(scope);
        if audience.is_empty() {
            return Ok(normalized);
        }
        let checks = &self.client_checks;
        let api = match checks.api(tenant, audience) {
            Some(api) => api,
            None => {
                let asked = checks.asking();
                let answer = self
                    .tenant_apis
                    .clone()
                    .get_resource_server(tenant_pb::GetResourceServerRequest {
                        tenant: tenant.to_owned(),
                        identifier: audience.to_owned(),
                    })
                    .await;
                match answer.map(|r| r.into_inner().resource_server) {
                    Ok(Some(api)) if api.identifier == audience => checks.remember_api(asked, tenant, api),
                    Ok(_) => return Err(internal(&"GetResourceServer answered no API, or another one")),
                    Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                        return Err(service_not_found(audience));
                    }
                    Err(s) => return Err(tenant_service_unavailable(&s)),
                }
            }
        };
        Ok(normalized
            .split_whitespace()
            .filter(|s| tokens::OIDC_SCOPES.contains(s) || api.scopes.iter().any(|a| a.value == *s))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Checks that the tenant exists (the tenant service's answer).
    pub(crate) async fn tenant_exists(&self, tenant: &str) -> Result<(), Status> {
        self.tenant_created(tenant).await.map(|_| ())
    }

    /// When the tenant named `tenant` now was created (unix microseconds), asked of the
    /// tenant service itself, not of anything cached: this tells its users apart from those
    /// of a deleted tenant of the same name that this service has not removed yet.
    pub(crate) async fn tenant_created(&self, tenant: &str) -> Result<i64, Status> {
        let found = self.ask_tenant(tenant).await?;
        Ok(found.create_time.and_then(|t| postern_common::time::from_timestamp(&t)).unwrap_or(0))
    }

    /// The tenant `tenant` as the tenant service answers it now: NOT_FOUND `TENANT_NOT_FOUND`
    /// if there is none, UNAVAILABLE if the service cannot answer.
    async fn ask_tenant(&self, tenant: &str) -> Result<tenant_pb::Tenant, Status> {
        match self.tenants.clone().get_tenant(tenant_pb::GetTenantRequest { name: tenant.to_owned() }).await {
            Ok(t) => Ok(t.into_inner().tenant.unwrap_or_default()),
            Err(s) if s.code() == Code::NotFound => {
                Err(postern_common::error::not_found("TENANT_NOT_FOUND", format!("tenant {tenant:?} does not exist")))
            }
            Err(s) => Err(tenant_service_unavailable(&s)),
        }
    }

    /// The tenant `tenant` as users see it (its display name and logo: the hosted login
    /// page, the passwordless messages): remembered while the tenant event log says nothing
    /// of it ([`crate::clients::ClientChecks`]), asked of the tenant service otherwise. Not
    /// for whether the tenant exists now: that is [`Self::tenant_created`]'s.
    pub(crate) async fn tenant(&self, tenant: &str) -> Result<Arc<tenant_pb::Tenant>, Status> {
        let checks = &self.client_checks;
        if let Some(known) = checks.tenant(tenant) {
            return Ok(known);
        }
        let asked = checks.asking();
        metrics::counter!("postern_authn_tenant_reads_total").increment(1);
        let found = self.ask_tenant(tenant).await?;
        Ok(checks.remember_tenant(asked, tenant, found))
    }

    /// The issuer of `tenant`'s tokens.
    pub(crate) fn issuer(&self, tenant: &str) -> String {
        let url = self.config.public_url.get().map_or("http://localhost", String::as_str);
        tokens::issuer(url, tenant)
    }

    /// Logs a user in by password, once the client is checked: resolves the connection
    /// (enabled for the client, a database connection), checks the credentials under
    /// brute-force protection (Postern's own hash, else the custom database), and records
    /// the login, creating or updating the user under the profile-sync rule. The caller
    /// issues the tokens ([`AuthnApi::issue_tokens`]).
    ///
    /// Audited as a login by the method `password`: in the login's record when it succeeds,
    /// with the failure it counts when that is written once the outcome is known (with the
    /// `USER_BLOCKED` event of the failure that blocks), else in a write of its own.
    pub async fn password_login(&self, l: &PasswordLogin<'_>) -> Result<User, Status> {
        // The username typed tells what a failed attempt aimed at; the password never goes.
        let audit =
            LoginAudit::new("password", l.tenant, l.client_id, l.connection, l.address).with_username(l.username);
        let result = self.check_password_login(l, &audit).await;
        audit.finish(&self.outbox, result.as_ref().map(|u| u.user_id.as_str())).await;
        result
    }

    /// Records a password login refused before its credentials were looked at (the client's
    /// secret was wrong, the API unknown), in a write of its own: nothing else is written.
    pub(crate) async fn audit_refused_login(&self, l: &PasswordLogin<'_>, refusal: &Status) {
        let audit =
            LoginAudit::new("password", l.tenant, l.client_id, l.connection, l.address).with_username(l.username);
        audit.finish(&self.outbox, Err(refusal)).await;
    }

    async fn check_password_login(&self, l: &PasswordLogin<'_>, audit: &LoginAudit) -> Result<User, Status> {
        l.validate()?;
        let conn = self.cache.resolve(l.tenant, l.client_id, l.connection).await?;
        let connector = self.password_connector(&conn)?;
        if l.password.is_empty() {
            return Err(wrong_credentials());
        }
        let login = domain::login_key(l.username);
        let (checked, admitted) =
            self.check_credentials(l.tenant, &conn, connector.as_ref(), &login, l.password, l.address, audit).await?;
        let store = &self.store;
        let recorded = match checked {
            Checked::Local { found, rehash } => {
                let clear = admitted.as_ref().and_then(Admitted::clear);
                match self.record_local_login(l, &conn, &found, rehash.as_deref(), clear, audit).await {
                    // Recorded, and the brute-force count cleared with it.
                    Ok(user) => {
                        if let Some(attempt) = admitted {
                            store.recorded(attempt);
                        }
                        return Ok(user);
                    }
                    Err(s) => Err(s),
                }
            }
            Checked::External { profile, import_hash } => {
                self.upsert_external_user(l.tenant, &conn, &profile, import_hash, l.address, l.grant, audit).await
            }
        };
        // The password was right: the attempt counted in advance is not a failure.
        if let Some(attempt) = admitted {
            store.settle(attempt, Outcome::Success, None).await?;
        }
        recorded
    }

    /// Signs a user up, once the caller may act for the tenant: checks the client, resolves
    /// the connection (enabled for the client, a database connection allowing signups),
    /// checks the username and the password against the connection's rules, and creates the
    /// user: in Postern's store with an Argon2id hash, or in the custom database (unless it
    /// imports lazily, in which case a name it already has is taken).
    pub async fn signup(&self, s: &SignupInput<'_>) -> Result<User, Status> {
        let result = self.sign_up(s).await;
        // A signup's success is written with the user (sign_up); a refusal changes nothing.
        if result.is_err() {
            let facts = Facts {
                tenant: s.tenant,
                client_id: s.client_id,
                connection: s.connection,
                address: s.address,
                ..Facts::default()
            };
            self.audit(Type::Signup, &facts, &result, audit::user(""), &[("email", s.email)]).await;
        }
        result
    }

    async fn sign_up(&self, s: &SignupInput<'_>) -> Result<User, Status> {
        s.validate()?;
        self.client_exists(s.tenant, s.client_id).await?;
        let conn = self.cache.resolve(s.tenant, s.client_id, s.connection).await?;
        let connector = self.password_connector(&conn)?;
        if let Some(m) = s.user_metadata {
            postern_common::json::check_depth(m)
                .map_err(|d| postern_common::error::invalid_field("user_metadata", d))?;
        }
        let metadata = s.user_metadata.map(postern_common::json::from_struct).unwrap_or_default();
        let signup = Signup { email: s.email, username: s.username, password: s.password, user_metadata: &metadata };
        let signed_up = connector.sign_up(s.tenant, &conn, &signup).await.map_err(connector_status)?;
        let spec = &conn.connection.spec;
        let taken = || {
            already_exists(
                "USER_ALREADY_EXISTS",
                format!("connection {:?} already has a user with that email or username", spec.name),
            )
        };
        let (new, identity) = match signed_up {
            SignedUp::External(source) => {
                let new = NewUser {
                    user_id: format!("{}|{}", spec.strategy.as_str(), source.source_id),
                    profile: with_default_nickname(source.profile.clone()),
                    user_metadata: if source.user_metadata.is_empty() {
                        metadata
                    } else {
                        source.user_metadata.clone()
                    },
                    app_metadata: source.app_metadata.clone(),
                };
                let identity = Identity {
                    connection_id: conn.connection.id.clone(),
                    connection: spec.name.clone(),
                    strategy: spec.strategy.as_str().to_owned(),
                    source_id: source.source_id.clone(),
                    is_social: false,
                    login_email: domain::login_key(&source.profile.email),
                    login_username: domain::login_key(&source.profile.username),
                    profile_data: source.raw.clone(),
                    profile_sync: spec.user_profile_sync,
                    external: true,
                    password_hash: None,
                };
                (new, identity)
            }
            SignedUp::Local { hash } => {
                let id = uuid_simple();
                let new = NewUser {
                    user_id: format!("{}|{id}", spec.strategy.as_str()),
                    profile: Profile {
                        email: s.email.to_owned(),
                        username: s.username.to_owned(),
                        nickname: domain::default_nickname(s.email),
                        ..Profile::default()
                    },
                    user_metadata: metadata,
                    app_metadata: serde_json::Map::new(),
                };
                let identity = Identity {
                    connection_id: conn.connection.id.clone(),
                    connection: spec.name.clone(),
                    strategy: spec.strategy.as_str().to_owned(),
                    source_id: id,
                    is_social: false,
                    login_email: domain::login_key(s.email),
                    login_username: domain::login_key(s.username),
                    profile_data: serde_json::Value::Object(serde_json::Map::new()),
                    profile_sync: spec.user_profile_sync,
                    external: false,
                    password_hash: Some(hash),
                };
                (new, identity)
            }
        };
        let facts = Facts {
            tenant: s.tenant,
            client_id: s.client_id,
            connection: s.connection,
            user_id: &new.user_id,
            address: s.address,
        };
        let signed_up = audit::event(Type::Signup, &facts, None, audit::user(&new.user_id), &[("email", s.email)]);
        let store = self.store.auditing(signed_up.into_iter().collect());
        let user = store.create_user(s.tenant, &new, &identity, None).await.map_err(|e| match e {
            StoreError::AlreadyExists => taken(),
            e => e.into(),
        })?;
        tracing::info!(tenant = %s.tenant, user_id = %user.user_id, connection = %spec.name, "user signed up");
        Ok(user)
    }

    /// Signs the tokens of a successful login with the tenant's current key (making its
    /// first key if it has none).
    pub async fn issue_tokens(&self, t: &IssueTokens<'_>) -> Result<tokens::Issued, Status> {
        let key = self.keys.current(t.tenant).await?;
        let issuer = self.issuer(t.tenant);
        tokens::issue(
            &key,
            &TokenRequest {
                tenant: t.tenant,
                master: &self.config.master_key,
                issuer: &issuer,
                client_id: t.client_id,
                audience: Some(t.audience),
                user_id: &t.user.user_id,
                scope: t.scope,
                profile: claims_of(t.user),
                nonce: t.nonce,
                now: SystemTime::now(),
                lifetimes: self.keys.lifetimes(),
            },
        )
        .map_err(|e| internal(&e))
    }

    /// Starts a login through a redirect connection (OIDC, OAuth2 social, SAML) for the
    /// client: where to send the browser, and what the connector keeps for the callback.
    /// The connection's `upstream_params` are resolved against `request` (the application's
    /// request by parameter name) into the transaction's parameters for the connector, and the
    /// request's `connection_scope` becomes its extra scopes. The hook of the redirect family:
    /// a strategy served by a [`RedirectConnector`] needs no edit here.
    pub async fn begin_redirect(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        tx: &RedirectTransaction,
        request: &std::collections::BTreeMap<String, String>,
    ) -> Result<Begun, Status> {
        let conn = self.cache.resolve(tenant, client_id, connection).await?;
        let connector = self.redirect_connector(&conn)?;
        let upstream_params = conn
            .connection
            .spec
            .options
            .upstream_params()
            .map(|params| postern_connection::options::resolve_upstream_params(params, request))
            .unwrap_or_default();
        let extra_scopes = request
            .get(crate::oauth::CONNECTION_SCOPE)
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let tx = RedirectTransaction { upstream_params, extra_scopes, ..tx.clone() };
        connector.begin(tenant, &conn, &tx).await.map_err(connector_status)
    }

    /// Whether `connection`, enabled for the client, logs users in by a redirect in this
    /// process (`None`: the connection cannot be resolved for the client).
    pub async fn is_redirect_connection(&self, tenant: &str, client_id: &str, connection: &str) -> Option<bool> {
        let conn = self.cache.resolve(tenant, client_id, connection).await.ok()?;
        Some(self.connectors.redirect(conn.connection.spec.strategy).is_some())
    }

    /// Completes a redirect login with the upstream's answer (`callback`: the callback's
    /// parameters): the user, created or updated under the connection's profile-sync rule,
    /// with the upstream's tokens sealed on its identity when the connector answers them,
    /// and `grant` (the login's session and code, and the upstream transaction it uses up),
    /// all in one write transaction. Nothing is stored when the connector refuses the
    /// answer, or when the grant's upstream transaction is gone (FAILED_PRECONDITION
    /// `LOGIN_TRANSACTION_USED`: another callback completed it).
    pub async fn complete_redirect(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        callback: Callback<'_>,
        grant: &crate::store::oauth::LoginGrant<'_>,
    ) -> Result<User, Status> {
        let audit = LoginAudit::new("redirect", tenant, client_id, connection, callback.address);
        let result = self.complete_redirect_login(tenant, client_id, connection, callback, grant, &audit).await;
        audit.finish(&self.outbox, result.as_ref().map(|u| u.user_id.as_str())).await;
        result
    }

    async fn complete_redirect_login(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        callback: Callback<'_>,
        grant: &crate::store::oauth::LoginGrant<'_>,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        let Callback { params, transaction: tx, address } = callback;
        let conn = self.cache.resolve(tenant, client_id, connection).await?;
        let connector = self.redirect_connector(&conn)?;
        let completed = connector.complete(tenant, &conn, params, tx).await.map_err(connector_status)?;
        self.store_redirect_login(tenant, connection, &conn, completed, address, grant, audit).await
    }

    /// Where a federated logout sends the browser to end the session at `connection`'s
    /// upstream, then on to the application (see [`RedirectConnector::logout`]);
    /// `None` when the connection offers no such logout, or is gone or unreachable (the
    /// logout then ends Postern's session alone, and a warning says why).
    pub(crate) async fn federated_logout(
        &self,
        tenant: &str,
        connection: &str,
        logout: &postern_connector::UpstreamLogout<'_>,
    ) -> Option<String> {
        let conn = match self.cache.resolve_any(tenant, connection).await {
            Ok(conn) => conn,
            Err(s) => {
                tracing::warn!(tenant, connection, code = ?s.code(), message = s.message(), "federated logout: connection not found");
                return None;
            }
        };
        let connector = self.connectors.redirect(conn.connection.spec.strategy).cloned()?;
        match connector.logout(tenant, &conn, logout).await {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(tenant, connection, error = %e, "federated logout: the upstream's logout is unavailable");
                None
            }
        }
    }

    /// The application an unsolicited answer at `connection` (an IdP-initiated login) logs
    /// its user in to: NOT_FOUND for an unknown connection, PERMISSION_DENIED
    /// (`UNSOLICITED_LOGIN_DISABLED`) when the connection accepts no such answers.
    pub async fn unsolicited_client(
        &self,
        tenant: &str,
        connection: &str,
    ) -> Result<postern_connector::UnsolicitedClient, Status> {
        let conn = self.cache.resolve_any(tenant, connection).await?;
        let connector = self.redirect_connector(&conn)?;
        connector.unsolicited_client(&conn).ok_or_else(|| {
            permission_denied(
                "UNSOLICITED_LOGIN_DISABLED",
                format!(
                    "connection {connection:?} accepts no IdP-initiated logins (an answer to no login started \
                     here): sign in from the application, or turn the connection's idp_initiated on"
                ),
            )
        })
    }

    /// Completes an unsolicited login (an IdP-initiated one) at `connection` for the
    /// client: the connection must be enabled for it; then as [`AuthnApi::complete_redirect`],
    /// with no upstream transaction (`grant` uses none up). Audited as a login by the method
    /// `idp_initiated`.
    pub async fn complete_unsolicited(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        callback: UnsolicitedCallback<'_>,
        grant: &crate::store::oauth::LoginGrant<'_>,
    ) -> Result<User, Status> {
        let audit = LoginAudit::new("idp_initiated", tenant, client_id, connection, callback.address);
        let result = self.complete_unsolicited_login(tenant, client_id, connection, callback, grant, &audit).await;
        audit.finish(&self.outbox, result.as_ref().map(|u| u.user_id.as_str())).await;
        result
    }

    async fn complete_unsolicited_login(
        &self,
        tenant: &str,
        client_id: &str,
        connection: &str,
        callback: UnsolicitedCallback<'_>,
        grant: &crate::store::oauth::LoginGrant<'_>,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        let UnsolicitedCallback { params, callback_url, address } = callback;
        let conn = self.cache.resolve(tenant, client_id, connection).await?;
        let connector = self.redirect_connector(&conn)?;
        if connector.unsolicited_client(&conn).is_none_or(|c| c.client_id != client_id) {
            return Err(permission_denied(
                "UNSOLICITED_LOGIN_DISABLED",
                format!("connection {connection:?} accepts no IdP-initiated logins for this client"),
            ));
        }
        let completed =
            connector.complete_unsolicited(tenant, &conn, params, callback_url).await.map_err(connector_status)?;
        self.store_redirect_login(tenant, connection, &conn, completed, address, grant, audit).await
    }

    /// Stores what a redirect connector completed: its one-time value used up (refused when
    /// seen before), the user upserted with the upstream's tokens sealed, `grant`, and the
    /// login's audit events.
    #[allow(clippy::too_many_arguments)] // the login's facts, each needed apart
    async fn store_redirect_login(
        &self,
        tenant: &str,
        connection: &str,
        conn: &Resolved,
        completed: postern_connector::Completed,
        address: &str,
        grant: &crate::store::oauth::LoginGrant<'_>,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        if let Some(once) = &completed.one_time_id {
            let now = self.config.clock.now_micros();
            let until = once
                .until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(now, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            if !self.store.use_one_time_id(tenant, &conn.connection.id, &once.key, now, until.max(now)).await? {
                tracing::warn!(tenant = %tenant, connection = %connection, "upstream answer replayed");
                return Err(permission_denied(
                    "UPSTREAM_ANSWER_REPLAYED",
                    format!(
                        "connection {connection:?}: this answer of the identity provider was already used (a replayed \
                         assertion); sign in again"
                    ),
                ));
            }
        }
        let mut source = completed.profile;
        if completed.partial_profile {
            self.keep_missing_attributes(tenant, conn, &mut source).await?;
        }
        let sealed = match &completed.tokens {
            Some(tokens) => Some(crate::oauth::federation::seal_tokens(
                &self.config.master_key,
                tenant,
                &conn.connection.id,
                &source.source_id,
                tokens,
            )?),
            None => None,
        };
        let upstream_session = match &completed.upstream_session {
            Some(plain) => Some(crate::oauth::federation::seal_upstream_session(
                &self.config.master_key,
                tenant,
                grant.session_hash,
                plain,
            )?),
            None => None,
        };
        let grant = crate::store::oauth::LoginGrant {
            upstream_tokens: sealed.as_deref(),
            upstream_session: upstream_session.as_deref().unwrap_or_default(),
            ..*grant
        };
        self.upsert_external_user(tenant, conn, &source, None, address, Some(&grant), audit).await
    }

    /// Fills the attributes an upstream left empty (it sends them only sometimes) with the
    /// ones the user has, so that a later login does not erase them.
    async fn keep_missing_attributes(
        &self,
        tenant: &str,
        conn: &Resolved,
        source: &mut ExternalProfile,
    ) -> Result<(), Status> {
        let Some((user_id, identity)) =
            self.store.find_identity(tenant, &conn.connection.id, &source.source_id).await?
        else {
            return Ok(());
        };
        let Some(user) = self.store.get_user(tenant, &user_id).await? else { return Ok(()) };
        let (p, kept) = (&mut source.profile, &user.profile);
        for (mine, theirs) in [
            (&mut p.name, &kept.name),
            (&mut p.given_name, &kept.given_name),
            (&mut p.family_name, &kept.family_name),
            (&mut p.nickname, &kept.nickname),
            (&mut p.picture, &kept.picture),
        ] {
            if mine.is_empty() {
                mine.clone_from(theirs);
            }
        }
        if let (Some(raw), Some(before)) = (source.raw.as_object_mut(), identity.profile_data.as_object()) {
            for (k, v) in before {
                raw.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(())
    }

    /// The document this side publishes for a redirect connection (a SAML SP's metadata),
    /// its callback being `callback_url`: NOT_FOUND for an unknown connection,
    /// FAILED_PRECONDITION for one whose protocol publishes none.
    pub async fn service_metadata(
        &self,
        tenant: &str,
        connection: &str,
        callback_url: &str,
    ) -> Result<postern_connector::ServiceMetadata, Status> {
        let conn = self.cache.resolve_any(tenant, connection).await?;
        let connector = self.redirect_connector(&conn)?;
        connector.metadata(tenant, &conn, callback_url).await.map_err(connector_status)
    }

    /// Tries a connection (name or id) step by step without logging anyone in, through the
    /// connector of its strategy: its strategy and the steps.
    pub async fn test_connection(
        &self,
        tenant: &str,
        connection: &str,
    ) -> Result<(String, postern_connector::TestReport), Status> {
        let conn = self.cache.resolve_any(tenant, connection).await?;
        let spec = &conn.connection.spec;
        let strategy = spec.strategy;
        let report = if let Some(c) = self.connectors.password(strategy) {
            c.test(tenant, &conn).await
        } else if let Some(c) = self.connectors.redirect(strategy) {
            c.test(tenant, &conn).await
        } else if let Some(c) = self.connectors.code(strategy) {
            c.test(tenant, &conn).await
        } else {
            return Err(no_connector(spec, "any means"));
        };
        let report = report.map_err(connector_status)?;
        tracing::info!(tenant = %tenant, connection = %spec.name, ok = report.ok, "connection tested");
        Ok((strategy.as_str().to_owned(), report))
    }

    fn redirect_connector(&self, conn: &Resolved) -> Result<Arc<dyn RedirectConnector>, Status> {
        let spec = &conn.connection.spec;
        self.connectors.redirect(spec.strategy).cloned().ok_or_else(|| no_connector(spec, "redirect"))
    }

    /// The password connector of a connection's strategy: FAILED_PRECONDITION when its
    /// strategy logs users in otherwise (or no connector serves it in this process).
    fn password_connector(&self, conn: &Resolved) -> Result<Arc<dyn PasswordConnector>, Status> {
        let spec = &conn.connection.spec;
        self.connectors.password(spec.strategy).cloned().ok_or_else(|| {
            failed_precondition(
                "NOT_A_DATABASE_CONNECTION",
                format!(
                    "connection {:?} uses strategy {:?}; passwords are checked only by database connections (strategy `auth0`)",
                    spec.name,
                    spec.strategy.as_str()
                ),
            )
        })
    }

    /// Whether an identity's strategy checks passwords in this process.
    fn has_password(&self, identity: &Identity) -> bool {
        Strategy::parse(&identity.strategy).is_some_and(|s| self.connectors.password(s).is_some())
    }

    /// Changes the password of a user's password identity (in `connection`, required when it
    /// has several), checked against the connection's policy and password history by its
    /// connector: kept here as a hash, or by the source that keeps it.
    pub(crate) async fn change_password(
        &self,
        tenant: &str,
        user_id: &str,
        connection: &str,
        new_password: &str,
        changed: Option<tenant_pb::AuditEvent>,
    ) -> Result<User, Status> {
        let store = &self.store.auditing(changed.into_iter().collect());
        let user = store.get_user(tenant, user_id).await?.ok_or_else(|| user_not_found(tenant, user_id))?;
        let candidates: Vec<&Identity> = user
            .identities
            .iter()
            .filter(|i| self.has_password(i) && (connection.is_empty() || i.connection == connection))
            .collect();
        let identity = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(failed_precondition(
                    "NO_DATABASE_IDENTITY",
                    "the user has no identity in a database connection (with that name); only database users have passwords",
                ));
            }
            _ => return Err(invalid_field("connection", "is required: the user has several database identities")),
        };
        let conn = self.cache.resolve_any(tenant, &identity.connection_id).await?;
        let connector = self.password_connector(&conn)?;
        let history = store.password_history(tenant, &identity.connection_id, &identity.source_id).await?;
        let pr = &user.profile;
        let change = PasswordChange {
            user: PersonalInfo {
                email: &pr.email,
                username: &pr.username,
                nickname: &pr.nickname,
                name: &pr.name,
                given_name: &pr.given_name,
                family_name: &pr.family_name,
                other: &[],
            },
            history: &history,
            local: identity.password_hash.is_some(),
            new_password,
        };
        match connector.change_password(tenant, &conn, &change, &pr.email).await.map_err(connector_status)? {
            PasswordChanged::External => {
                store.unblock(tenant, &user.user_id, MAX_CONSECUTIVE_FAILURES).await?;
            }
            PasswordChanged::Local { hash, history } => {
                store
                    .set_password(tenant, &user.user_id, &identity.connection_id, &identity.source_id, &hash, history)
                    .await?;
            }
        }
        tracing::info!(tenant = %tenant, user_id = %user.user_id, "password changed");
        store.get_user(tenant, user_id).await?.ok_or_else(|| user_not_found(tenant, user_id))
    }

    /// Deletes, from their sources, the users behind `user`'s external identities (a
    /// connection that no longer exists is skipped).
    pub(crate) async fn delete_external_identities(&self, tenant: &str, user: &User) -> Result<(), Status> {
        for identity in user.identities.iter().filter(|i| i.external && self.has_password(i)) {
            let conn = match self.cache.resolve_any(tenant, &identity.connection_id).await {
                Ok(c) => c,
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(s),
            };
            if let Some(connector) = self.connectors.password(conn.connection.spec.strategy) {
                connector.delete(tenant, &conn, &identity.source_id).await.map_err(connector_status)?;
            }
        }
        Ok(())
    }

    /// Checks the credentials through the connector, applying brute-force protection around
    /// the check. A failed check is settled here; a successful one answers its brute-force
    /// key, which the caller clears with the login's record ([`LoginUpdate::clear_failures`])
    /// or, when the login stops short of that, with [`crate::Store::settle`]. A failure
    /// written now carries the login's audit events (and the `USER_BLOCKED` event of the
    /// failure that blocks) in its transaction; a block found without a write of its own
    /// (PostgreSQL counts in advance) goes with the login's event.
    #[allow(clippy::too_many_arguments)] // the login's facts, each needed apart
    async fn check_credentials(
        &self,
        tenant: &str,
        conn: &Resolved,
        connector: &dyn PasswordConnector,
        login: &str,
        password: &str,
        address: &str,
        audit: &LoginAudit,
    ) -> Result<(Checked, Option<Admitted>), Status> {
        let store = &self.store;
        let local = store.find_login_from(tenant, &conn.connection.id, login, address).await?;
        let known_user = local.as_ref().map(|f| f.user_id.clone()).unwrap_or_default();
        let (user_key, known) = match &local {
            Some(found) => (found.user_id.clone(), found.stored),
            None => (format!("login:{}:{login}", conn.connection.id), None),
        };
        let attempt = if connector.brute_force_protection(conn) {
            match store.admit(tenant, &user_key, address, MAX_CONSECUTIVE_FAILURES, known).await? {
                Some(attempt) => Some(attempt),
                None => {
                    // Attempts in flight count as failures until settled (`bruteforce`), so
                    // a burst of correct ones can be refused too: the log says which case.
                    postern_common::telemetry::refused("TOO_MANY_ATTEMPTS");
                    tracing::warn!(
                        reason = "TOO_MANY_ATTEMPTS",
                        tenant,
                        connection = %conn.connection.spec.name,
                        address,
                        user_id = local.as_ref().map_or("", |f| f.user_id.as_str()),
                        max_consecutive_failures = MAX_CONSECUTIVE_FAILURES,
                        "login refused: this user's failed and in-flight attempts from this address reached the limit"
                    );
                    return Err(too_many_attempts());
                }
            }
        } else {
            None
        };
        let local_hash = local.as_ref().and_then(|f| f.identity.password_hash.clone());
        let checked = match connector.verify(tenant, conn, login, password, local_hash.as_deref()).await {
            Ok(Verified::Local { rehash }) => match local {
                Some(found) => Ok(Checked::Local { found: Box::new(found), rehash }),
                // A connector answers Local only for the hash it was given.
                None => Err(internal(&"a connector verified a local hash it was not given")),
            },
            Ok(Verified::External { profile, import_hash }) => Ok(Checked::External { profile, import_hash }),
            Err(e) => Err(connector_status(e)),
        };
        match checked {
            Ok(checked) => Ok((checked, attempt)),
            Err(s) => {
                if let Some(attempt) = attempt {
                    let outcome =
                        if s.code() == Code::Unauthenticated { Outcome::WrongCredentials } else { Outcome::NotChecked };
                    let blocked = audit.blocked(&known_user, MAX_CONSECUTIVE_FAILURES);
                    let settled = store.auditing(audit.failure(&s)).settle(attempt, outcome, blocked.as_ref()).await?;
                    if settled.audited {
                        audit.written();
                    } else if let (true, Some(event)) = (settled.blocked, blocked) {
                        audit.with(event);
                    }
                    if settled.blocked {
                        tracing::warn!(
                            tenant,
                            connection = %conn.connection.spec.name,
                            address,
                            user_id = %known_user,
                            max_consecutive_failures = MAX_CONSECUTIVE_FAILURES,
                            "brute-force protection blocked a user from an address"
                        );
                    }
                }
                Err(s)
            }
        }
    }

    /// Creates or updates the user of a login whose profile came from the connection's
    /// source, under the connection's profile-sync rule. `import_hash` makes the identity
    /// local (its next logins are checked against the hash). A browser login's `grant` and
    /// the login's audit events are written in the same transaction.
    #[allow(clippy::too_many_arguments)] // the login's facts, each needed apart
    pub(crate) async fn upsert_external_user(
        &self,
        tenant: &str,
        conn: &Resolved,
        source: &ExternalProfile,
        import_hash: Option<String>,
        ip: &str,
        grant: Option<&crate::store::oauth::LoginGrant<'_>>,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        let store = &self.store;
        let spec = &conn.connection.spec;
        let sync = spec.user_profile_sync;
        let external = import_hash.is_none();
        let found = store.find_identity_of_user(tenant, &conn.connection.id, &source.source_id).await?;
        if let Some((user_id, identity, identities)) = found {
            let profile = with_default_nickname(source.profile.clone());
            // The root attributes are the primary identity's: a linked identity's login
            // refreshes only its own profile data.
            let sync_root = sync == ProfileSync::OnEachLogin && identity.is_primary_of(&user_id);
            // The source's profile is written only when it differs from the one kept: a
            // returning user's login usually leaves the identity's row as it is.
            let update = LoginUpdate {
                ip,
                profile: sync_root.then_some(&profile),
                asserted: Asserted::of_strategy(spec.strategy.as_str()),
                profile_data: (identity.profile_data != source.raw).then_some(&source.raw),
                profile_sync: sync,
                external,
                password_hash: import_hash.as_deref(),
                clear_failures: None,
                identity_current: identity.profile_sync == sync && identity.external == external,
                identities: Some(&identities),
                grant,
            };
            let audited = store.auditing(audit.success(&user_id));
            let r = audited.record_login(tenant, &user_id, &conn.connection.id, &source.source_id, &update).await?;
            if matches!(r, Recorded::Login(_)) {
                audit.written();
            }
            return recorded(r);
        }
        let profile = match sync {
            ProfileSync::NeverOnLogin => source.profile.identifying_only(),
            _ => with_default_nickname(source.profile.clone()),
        };
        let new = NewUser {
            user_id: format!("{}|{}", spec.strategy.as_str(), source.source_id),
            profile,
            user_metadata: source.user_metadata.clone(),
            app_metadata: source.app_metadata.clone(),
        };
        let identity = Identity {
            connection_id: conn.connection.id.clone(),
            connection: spec.name.clone(),
            strategy: spec.strategy.as_str().to_owned(),
            source_id: source.source_id.clone(),
            is_social: spec.category() == postern_connection::Category::Social,
            login_email: domain::login_key(&source.profile.email),
            // A passwordless SMS identity logs in by its phone number.
            login_username: domain::login_key(if source.profile.username.is_empty() {
                &source.profile.phone_number
            } else {
                &source.profile.username
            }),
            profile_data: source.raw.clone(),
            profile_sync: sync,
            external,
            password_hash: import_hash,
        };
        let audited = store.auditing(audit.success(&new.user_id));
        let user =
            audited.create_user_with_grant(tenant, &new, &identity, Some(ip), grant).await.map_err(|e| match e {
                StoreError::AlreadyExists => failed_precondition(
                    "USER_CONFLICT",
                    "the connection's source answered a user whose email, username or id belongs to another user of \
                 this tenant; its ids must be stable and unique",
                ),
                e => e.into(),
            })?;
        audit.written();
        Ok(user)
    }

    /// Records a login whose password Postern's own hash verified, clearing `clear` (the
    /// brute-force count) in the same transaction; `rehash` replaces a hash of outdated
    /// parameters.
    async fn record_local_login(
        &self,
        l: &PasswordLogin<'_>,
        conn: &Resolved,
        found: &LoginFound,
        rehash: Option<&str>,
        clear: Option<(&str, &str)>,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        let sync = conn.connection.spec.user_profile_sync;
        let update = LoginUpdate {
            ip: l.address,
            profile: None,
            asserted: Asserted::Profile,
            profile_data: None,
            profile_sync: sync,
            external: false,
            password_hash: rehash,
            clear_failures: clear,
            identity_current: found.identity.profile_sync == sync && !found.identity.external,
            identities: Some(&found.identities),
            grant: l.grant,
        };
        let identity = &found.identity;
        let r = self
            .store
            .auditing(audit.success(&found.user_id))
            .record_login(l.tenant, &found.user_id, &identity.connection_id, &identity.source_id, &update)
            .await?;
        if matches!(r, Recorded::Login(_)) {
            audit.written();
        }
        recorded(r)
    }
}
