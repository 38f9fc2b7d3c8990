//! The gRPC face of the authenticator: `AuthenticationService` (signup, the login path,
//! password changes), `UserService` and `SigningKeyService`. Each handler establishes who
//! calls, validates the request into domain types, and answers in the contract's terms.

use std::sync::Arc;
use std::time::SystemTime;

use postern_common::error::{
    Violations, already_exists, failed_precondition, internal, invalid_field, not_found, permission_denied, status,
    unauthenticated,
};
use postern_common::paging::{decode_token, encode_token, page_size};
use postern_common::principal::{Principal, principal};
use postern_common::time::to_timestamp;
use postern_common::validate::truncate;
use postern_proto::authn::v1 as pb;
use postern_proto::connections::v1 as conn_pb;
use postern_proto::tenant::v1 as tenant_pb;
use tonic::{Code, Request, Response, Status};

use crate::bruteforce::{MAX_CONSECUTIVE_FAILURES, Outcome};
use crate::cache::ConnectionCache;
use crate::clients::ClientChecks;
use crate::customdb::{CustomDbClient, CustomDbError, SourceUser, Target};
use crate::domain::{self, Identity, Profile, ProfileSync, SYNCED_ATTRIBUTES, User, UserPatch};
use crate::keys::{KeyError, KeyRing};
use crate::password::{self, PasswordPolicy, PersonalInfo, Strength};
use crate::store::{Admitted, LoginFound, LoginUpdate, NewUser, Recorded, Store, StoreError};
use crate::tokens::{self, Algorithm, ProfileClaims, TokenRequest};
use crate::{Config, Peer};

/// The one message of wrong credentials, whether the user exists or not.
const WRONG_CREDENTIALS: &str = "wrong email, username or password";
/// How long an HTTP cache may keep the key set and discovery documents.
const DOCUMENT_MAX_AGE_SECS: i32 = 60;
/// The strategy of database connections.
const DATABASE_STRATEGY: &str = "auth0";

struct Inner {
    store: Store,
    keys: Arc<KeyRing>,
    cache: ConnectionCache,
    customdb: CustomDbClient,
    tenant_clients: tenant_pb::client_service_client::ClientServiceClient<Peer>,
    /// The client checks that passed, retired by the tenant event log.
    client_checks: Arc<ClientChecks>,
    tenants: tenant_pb::tenant_service_client::TenantServiceClient<Peer>,
    config: Config,
}

/// The authenticator's handlers, sharing one state.
#[derive(Clone)]
pub struct AuthnApi {
    inner: Arc<Inner>,
}

impl AuthnApi {
    /// Handlers over `store`, calling the tenant service and the registry through `tenant`
    /// and `registry`. Starts following the registry's change stream.
    pub fn new(store: Store, tenant: Peer, registry: Peer, config: Config) -> Self {
        let keys = Arc::new(KeyRing::new(store.clone(), config.master_key.clone(), config.lifetimes));
        let client_checks = Arc::new(ClientChecks::new());
        tokio::spawn(crate::tenants::follow(
            store.clone(),
            Arc::downgrade(&keys),
            client_checks.clone(),
            tenant.clone(),
        ));
        let cache = ConnectionCache::new(registry, store.clone(), config.cache_connections);
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                cache,
                customdb: CustomDbClient::new(),
                tenant_clients: tenant_pb::client_service_client::ClientServiceClient::new(tenant.clone()),
                client_checks,
                tenants: tenant_pb::tenant_service_client::TenantServiceClient::new(tenant),
                config,
            }),
        }
    }

    /// The connection cache (to measure how often the registry is asked).
    pub fn connection_cache(&self) -> &ConnectionCache {
        &self.inner.cache
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => already_exists("ALREADY_EXISTS", "a user with that email or username exists"),
            e => internal(&e),
        }
    }
}

impl From<KeyError> for Status {
    fn from(e: KeyError) -> Self {
        internal(&e)
    }
}

impl From<password::Error> for Status {
    fn from(e: password::Error) -> Self {
        internal(&e)
    }
}

fn check_tenant(v: &mut Violations, field: &str, tenant: &str) {
    v.check(field, postern_common::validate::tenant_name(tenant));
}

fn required(v: &mut Violations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    }
}

fn wrong_credentials() -> Status {
    unauthenticated("INVALID_CREDENTIALS", WRONG_CREDENTIALS)
}

fn user_not_found(tenant: &str, user_id: &str) -> Status {
    not_found("USER_NOT_FOUND", format!("tenant {tenant:?} has no user {:?}", truncate(user_id, 128)))
}

/// Checks an email address: one `@`, something on each side, a dot in the domain, no
/// spaces, at most 254 characters.
fn check_email(v: &mut Violations, field: &str, email: &str) {
    if email.is_empty() {
        v.add(field, "is required");
        return;
    }
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !ok {
        v.add(field, "must be an email address such as alice@example.com, at most 254 characters");
    }
}

/// The database options of a resolved connection, with Auth0's defaults.
struct DatabaseRules {
    policy: PasswordPolicy,
    requires_username: bool,
    username_min: usize,
    username_max: usize,
    brute_force: bool,
    disable_signup: bool,
    custom: Option<conn_pb::CustomDatabase>,
}

impl DatabaseRules {
    fn of(conn: &conn_pb::Connection) -> Result<Self, Status> {
        let opts = match &conn.options {
            Some(conn_pb::connection::Options::Database(d)) => d.clone(),
            None if conn.strategy == DATABASE_STRATEGY => conn_pb::DatabaseOptions::default(),
            _ => {
                return Err(failed_precondition(
                    "NOT_A_DATABASE_CONNECTION",
                    format!(
                        "connection {:?} uses strategy {:?}; passwords are checked only by database connections (strategy `auth0`)",
                        conn.name, conn.strategy
                    ),
                ));
            }
        };
        let strength = match conn_pb::PasswordPolicy::try_from(opts.password_policy) {
            Ok(conn_pb::PasswordPolicy::None) => Strength::None,
            Ok(conn_pb::PasswordPolicy::Low) => Strength::Low,
            Ok(conn_pb::PasswordPolicy::Fair) => Strength::Fair,
            Ok(conn_pb::PasswordPolicy::Excellent) => Strength::Excellent,
            _ => Strength::Good,
        };
        let dictionary = opts.password_dictionary.clone().unwrap_or_default();
        let positive = |n: i32, default: usize| if n > 0 { usize::try_from(n).unwrap_or(default) } else { default };
        Ok(DatabaseRules {
            policy: PasswordPolicy {
                strength,
                min_length: u32::try_from(opts.password_min_length).ok().filter(|n| *n > 0),
                history_size: u32::try_from(opts.password_history_size).unwrap_or(0),
                no_personal_info: opts.password_no_personal_info,
                dictionary: dictionary.enable,
                dictionary_words: dictionary.words,
            },
            requires_username: opts.requires_username,
            username_min: positive(opts.username_min_length, 1),
            username_max: positive(opts.username_max_length, 15),
            brute_force: opts.brute_force_protection.unwrap_or(true),
            disable_signup: opts.disable_signup,
            custom: opts.custom_database.filter(|c| !c.endpoint.is_empty()),
        })
    }

    fn import(&self) -> bool {
        self.custom.as_ref().is_some_and(|c| c.import_mode == conn_pb::ImportMode::Lazy as i32)
    }

    fn check_username(&self, v: &mut Violations, field: &str, username: &str) {
        if !self.requires_username {
            if !username.is_empty() {
                v.add(field, "must be empty: this connection does not use usernames (requires_username is off)");
            }
            return;
        }
        let len = username.chars().count();
        if len < self.username_min || len > self.username_max {
            v.add(field, format!("must be {} to {} characters long (got {len})", self.username_min, self.username_max));
        }
        if !username.chars().all(|c| c.is_ascii_alphanumeric() || "_-.+!#$'^`~".contains(c)) {
            v.add(field, "may contain only letters, digits and _ - . + ! # $ ' ^ ` ~ (no @, no spaces)");
        }
    }
}

fn sync_of(conn: &conn_pb::Connection) -> ProfileSync {
    ProfileSync::from_i64(i64::from(conn.user_profile_sync))
}

fn custom_db_status(e: CustomDbError) -> Status {
    match e {
        CustomDbError::WrongCredentials => wrong_credentials(),
        CustomDbError::NotFound => not_found("USER_NOT_FOUND", "the custom database has no such user"),
        CustomDbError::AlreadyExists => {
            already_exists("USER_ALREADY_EXISTS", "the connection already has a user with that email or username")
        }
        CustomDbError::Invalid(msg) => invalid_field("password", format!("refused by the custom database: {msg}")),
        CustomDbError::Unavailable(_) => status(
            Code::Unavailable,
            "CUSTOM_DATABASE_UNAVAILABLE",
            "the connection's custom database is unavailable; retry later",
        ),
    }
}

/// The address brute-force protection counts against: the one the application reports,
/// else the caller's.
fn address<T>(req: &Request<T>, reported: &str) -> String {
    if !reported.trim().is_empty() {
        return truncate(reported.trim(), 64).to_owned();
    }
    postern_common::principal::peer_addr(req).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The user in the contract's terms.
pub fn user_to_pb(u: &User) -> pb::User {
    let p = &u.profile;
    pb::User {
        user_id: u.user_id.clone(),
        email: p.email.clone(),
        email_verified: p.email_verified,
        username: p.username.clone(),
        name: p.name.clone(),
        given_name: p.given_name.clone(),
        family_name: p.family_name.clone(),
        nickname: p.nickname.clone(),
        picture: p.picture.clone(),
        identities: u
            .identities
            .iter()
            .map(|i| pb::Identity {
                connection: i.connection.clone(),
                strategy: i.strategy.clone(),
                user_id: i.source_id.clone(),
                is_social: i.is_social,
                profile_data: match &i.profile_data {
                    serde_json::Value::Object(m) if !m.is_empty() => Some(crate::json::to_struct(m)),
                    _ => None,
                },
            })
            .collect(),
        user_metadata: Some(crate::json::to_struct(&u.user_metadata)),
        app_metadata: Some(crate::json::to_struct(&u.app_metadata)),
        blocked: u.blocked,
        last_login: u.last_login.map(to_timestamp),
        last_ip: u.last_ip.clone(),
        logins_count: u.logins_count,
        create_time: Some(to_timestamp(u.create_time)),
        update_time: Some(to_timestamp(u.update_time)),
    }
}

fn claims_of(u: &User) -> ProfileClaims {
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
    }
}

fn with_default_nickname(mut p: Profile) -> Profile {
    if p.nickname.is_empty() {
        p.nickname = domain::default_nickname(&p.email);
    }
    p
}

/// What the credential check found.
enum Checked {
    /// Postern's own hash matched this identity.
    Local { found: LoginFound, rehash: bool },
    /// The custom database accepted the credentials.
    Source(SourceUser),
}

impl AuthnApi {
    /// Checks that the client belongs to the tenant and, if it is confidential, its secret:
    /// remembered when it passed before and nothing has changed the client since
    /// ([`ClientChecks`]), asked of the tenant service otherwise.
    async fn verify_client(&self, tenant: &str, client_id: &str, secret: &str) -> Result<(), Status> {
        let checks = &self.inner.client_checks;
        if checks.passed(tenant, client_id, secret) {
            return Ok(());
        }
        let asked = checks.asking();
        metrics::counter!("postern_authn_client_checks_total").increment(1);
        let answer = self
            .inner
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

    async fn client_exists(&self, tenant: &str, client_id: &str) -> Result<(), Status> {
        let answer = self
            .inner
            .tenant_clients
            .clone()
            .get_client(tenant_pb::GetClientRequest { tenant: tenant.to_owned(), client_id: client_id.to_owned() })
            .await;
        answer.map(|_| ()).map_err(|s| client_refusal(tenant, client_id, &s))
    }

    async fn tenant_exists(&self, tenant: &str) -> Result<(), Status> {
        match self.inner.tenants.clone().get_tenant(tenant_pb::GetTenantRequest { name: tenant.to_owned() }).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => {
                Err(not_found("TENANT_NOT_FOUND", format!("tenant {tenant:?} does not exist")))
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "tenant service call failed");
                Err(Status::unavailable("the tenant service is unavailable; retry shortly"))
            }
        }
    }

    fn issuer(&self, tenant: &str) -> String {
        let url = self.inner.config.public_url.get().map_or("http://localhost", String::as_str);
        tokens::issuer(url, tenant)
    }

    /// Checks the credentials, applying brute-force protection around the check. A failed
    /// check is settled here; a successful one answers its brute-force key, which the caller
    /// clears with the login's record ([`LoginUpdate::clear_failures`]) or, when the login
    /// stops short of that, with [`Store::settle`].
    async fn check_credentials(
        &self,
        tenant: &str,
        conn: &conn_pb::Connection,
        rules: &DatabaseRules,
        login: &str,
        password: &str,
        address: &str,
    ) -> Result<(Checked, Option<Admitted>), Status> {
        let store = &self.inner.store;
        let local = store.find_login_from(tenant, &conn.id, login, address).await?;
        let (user_key, known) = match &local {
            Some(found) => (found.user_id.clone(), found.stored),
            None => (format!("login:{}:{login}", conn.id), None),
        };
        let attempt = if rules.brute_force {
            match store.admit(tenant, &user_key, address, MAX_CONSECUTIVE_FAILURES, known).await? {
                Some(attempt) => Some(attempt),
                None => {
                    return Err(status(
                        Code::ResourceExhausted,
                        "TOO_MANY_ATTEMPTS",
                        "this user is blocked from this address after too many failed logins; an administrator can \
                         lift the block with UserService/UnblockUser, or the password can be changed",
                    ));
                }
            }
        } else {
            None
        };
        match self.check_inner(tenant, conn, rules, local, login, password).await {
            Ok(checked) => Ok((checked, attempt)),
            Err(s) => {
                if let Some(attempt) = attempt {
                    let outcome =
                        if s.code() == Code::Unauthenticated { Outcome::WrongCredentials } else { Outcome::NotChecked };
                    store.settle(attempt, outcome).await?;
                }
                Err(s)
            }
        }
    }

    async fn check_inner(
        &self,
        tenant: &str,
        conn: &conn_pb::Connection,
        rules: &DatabaseRules,
        local: Option<LoginFound>,
        login: &str,
        password: &str,
    ) -> Result<Checked, Status> {
        match (local, &rules.custom) {
            (Some(found), _) if found.identity.password_hash.is_some() => {
                let hash = found.identity.password_hash.clone();
                if password::verify_async(password.to_owned(), hash.clone()).await? {
                    let rehash = hash.as_deref().is_some_and(password::needs_rehash);
                    Ok(Checked::Local { found, rehash })
                } else {
                    Err(wrong_credentials())
                }
            }
            (_, Some(custom)) => {
                let target = Target::of(tenant, conn, custom);
                match self.inner.customdb.login(&target, login, password).await {
                    Ok(source) => Ok(Checked::Source(source)),
                    Err(e) => Err(custom_db_status(e)),
                }
            }
            _ => {
                // Unknown user: spend the time of a real check, then answer as for a wrong one.
                password::verify_async(password.to_owned(), None).await?;
                Err(wrong_credentials())
            }
        }
    }

    /// Creates or updates the user of a login whose profile came from a custom database.
    async fn upsert_source_user(
        &self,
        tenant: &str,
        conn: &conn_pb::Connection,
        rules: &DatabaseRules,
        source: &SourceUser,
        password: &str,
        ip: &str,
    ) -> Result<User, Status> {
        let store = &self.inner.store;
        let sync = sync_of(conn);
        let import = rules.import();
        let hash = if import { Some(password::hash_async(password.to_owned()).await?) } else { None };
        if let Some((user_id, _)) = store.find_identity(tenant, &conn.id, &source.id).await? {
            let profile = with_default_nickname(source.profile.clone());
            let update = LoginUpdate {
                ip,
                profile: (sync == ProfileSync::OnEachLogin).then_some(&profile),
                profile_data: Some(&source.raw),
                profile_sync: sync,
                external: !import,
                password_hash: hash.as_deref(),
                clear_failures: None,
                identity_current: false,
                identities: None,
            };
            return recorded(store.record_login(tenant, &user_id, &conn.id, &source.id, &update).await?);
        }
        let profile = match sync {
            ProfileSync::NeverOnLogin => source.profile.identifying_only(),
            _ => with_default_nickname(source.profile.clone()),
        };
        let new = NewUser {
            user_id: format!("{DATABASE_STRATEGY}|{}", source.id),
            profile,
            user_metadata: source.user_metadata.clone(),
            app_metadata: source.app_metadata.clone(),
        };
        let identity = Identity {
            connection_id: conn.id.clone(),
            connection: conn.name.clone(),
            strategy: conn.strategy.clone(),
            source_id: source.id.clone(),
            is_social: false,
            login_email: domain::login_key(&source.profile.email),
            login_username: domain::login_key(&source.profile.username),
            profile_data: source.raw.clone(),
            profile_sync: sync,
            external: !import,
            password_hash: hash,
        };
        store.create_user(tenant, &new, &identity, Some(ip)).await.map_err(|e| match e {
            StoreError::AlreadyExists => failed_precondition(
                "USER_CONFLICT",
                "the custom database answered a user whose email, username or id belongs to another user of \
                 this tenant; its ids must be stable and unique",
            ),
            e => e.into(),
        })
    }

    /// Records a login whose password Postern's own hash verified, clearing `clear` (the
    /// brute-force count) in the same transaction; rehashes a hash of outdated parameters.
    async fn record_local_login(
        &self,
        req: &pb::LoginRequest,
        conn: &conn_pb::Connection,
        found: &LoginFound,
        rehash: bool,
        clear: Option<(&str, &str)>,
        address: &str,
    ) -> Result<User, Status> {
        let hash = if rehash { Some(password::hash_async(req.password.clone()).await?) } else { None };
        let sync = sync_of(conn);
        let update = LoginUpdate {
            ip: address,
            profile: None,
            profile_data: None,
            profile_sync: sync,
            external: false,
            password_hash: hash.as_deref(),
            clear_failures: clear,
            identity_current: found.identity.profile_sync == sync && !found.identity.external,
            identities: Some(&found.identities),
        };
        let identity = &found.identity;
        recorded(
            self.inner
                .store
                .record_login(&req.tenant, &found.user_id, &identity.connection_id, &identity.source_id, &update)
                .await?,
        )
    }

    /// The tokens of a successful login.
    async fn issue_login(&self, req: &pb::LoginRequest, user: User) -> Result<Response<pb::LoginResponse>, Status> {
        let key = self.inner.keys.current(&req.tenant).await?;
        let issuer = self.issuer(&req.tenant);
        let issued = tokens::issue(
            &key,
            &TokenRequest {
                tenant: &req.tenant,
                master: &self.inner.config.master_key,
                issuer: &issuer,
                client_id: &req.client_id,
                audience: Some(req.audience.as_str()),
                user_id: &user.user_id,
                scope: &req.scope,
                profile: claims_of(&user),
                nonce: None,
                now: SystemTime::now(),
                lifetimes: self.inner.keys.lifetimes(),
            },
        )
        .map_err(|e| internal(&e))?;
        Ok(Response::new(pb::LoginResponse {
            id_token: issued.id_token,
            access_token: issued.access_token,
            token_type: issued.token_type.to_owned(),
            expires_in: i64::try_from(issued.expires_in).unwrap_or(i64::MAX),
            user: Some(user_to_pb(&user)),
            scope: issued.scope,
        }))
    }
}

/// The user of a recorded login, or why there is none.
fn recorded(r: Recorded) -> Result<User, Status> {
    match r {
        Recorded::Login(user) => Ok(*user),
        Recorded::Blocked => Err(blocked()),
        // Deleted while logging in: as if it never existed.
        Recorded::Missing => Err(wrong_credentials()),
    }
}

fn client_refusal(tenant: &str, client_id: &str, s: &Status) -> Status {
    match s.code() {
        Code::NotFound => {
            not_found("CLIENT_NOT_FOUND", format!("tenant {tenant:?} has no client {:?}", truncate(client_id, 64)))
        }
        Code::Unauthenticated => unauthenticated(
            "CLIENT_SECRET_INVALID",
            "the client secret is wrong or missing; a confidential client must present its secret",
        ),
        Code::InvalidArgument => invalid_field("client_id", "is not a valid client id"),
        _ => {
            tracing::warn!(code = ?s.code(), message = s.message(), "tenant service call failed");
            Status::unavailable("the tenant service is unavailable; retry shortly")
        }
    }
}

#[tonic::async_trait]
impl pb::authentication_service_server::AuthenticationService for AuthnApi {
    async fn signup(&self, req: Request<pb::SignupRequest>) -> Result<Response<pb::SignupResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "client_id", &req.client_id);
        required(&mut v, "connection", &req.connection);
        check_email(&mut v, "email", &req.email);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        self.client_exists(&req.tenant, &req.client_id).await?;
        let conn = self.inner.cache.resolve(&req.tenant, &req.client_id, &req.connection).await?;
        let rules = DatabaseRules::of(&conn)?;
        if rules.disable_signup {
            return Err(permission_denied(
                "SIGNUP_DISABLED",
                format!("connection {:?} does not allow signups (disable_signup is on)", conn.name),
            ));
        }
        let mut v = Violations::new();
        rules.check_username(&mut v, "username", &req.username);
        let info = PersonalInfo {
            email: &req.email,
            username: &req.username,
            nickname: &domain::default_nickname(&req.email),
            ..PersonalInfo::default()
        };
        rules.policy.check(&req.password, &info, "password", &mut v);
        v.into_result()?;

        let metadata = req.user_metadata.as_ref().map(crate::json::from_struct).unwrap_or_default();
        let profile = Profile {
            email: req.email.clone(),
            username: req.username.clone(),
            nickname: domain::default_nickname(&req.email),
            ..Profile::default()
        };
        let taken = || {
            already_exists(
                "USER_ALREADY_EXISTS",
                format!("connection {:?} already has a user with that email or username", conn.name),
            )
        };
        let store = &self.inner.store;
        let user = match &rules.custom {
            Some(custom) if !rules.import() => {
                let target = Target::of(&req.tenant, &conn, custom);
                let source = self
                    .inner
                    .customdb
                    .create(&target, &req.email, &req.username, &req.password, req.user_metadata.clone())
                    .await
                    .map_err(custom_db_status)?;
                let sync = sync_of(&conn);
                let new = NewUser {
                    user_id: format!("{DATABASE_STRATEGY}|{}", source.id),
                    profile: with_default_nickname(source.profile.clone()),
                    user_metadata: if source.user_metadata.is_empty() {
                        metadata
                    } else {
                        source.user_metadata.clone()
                    },
                    app_metadata: source.app_metadata.clone(),
                };
                let identity = Identity {
                    connection_id: conn.id.clone(),
                    connection: conn.name.clone(),
                    strategy: conn.strategy.clone(),
                    source_id: source.id.clone(),
                    is_social: false,
                    login_email: domain::login_key(&source.profile.email),
                    login_username: domain::login_key(&source.profile.username),
                    profile_data: source.raw.clone(),
                    profile_sync: sync,
                    external: true,
                    password_hash: None,
                };
                store.create_user(&req.tenant, &new, &identity, None).await.map_err(|e| match e {
                    StoreError::AlreadyExists => taken(),
                    e => e.into(),
                })?
            }
            custom => {
                // With lazy import, a user still only in the customer's store is taken too.
                if let Some(custom) = custom {
                    let target = Target::of(&req.tenant, &conn, custom);
                    for name in [&req.email, &req.username] {
                        if !name.is_empty()
                            && self.inner.customdb.get_user(&target, name).await.map_err(custom_db_status)?.is_some()
                        {
                            return Err(taken());
                        }
                    }
                }
                let hash = password::hash_async(req.password.clone()).await?;
                let id = uuid_simple();
                let new = NewUser {
                    user_id: format!("{DATABASE_STRATEGY}|{id}"),
                    profile,
                    user_metadata: metadata,
                    app_metadata: serde_json::Map::new(),
                };
                let identity = Identity {
                    connection_id: conn.id.clone(),
                    connection: conn.name.clone(),
                    strategy: conn.strategy.clone(),
                    source_id: id,
                    is_social: false,
                    login_email: domain::login_key(&req.email),
                    login_username: domain::login_key(&req.username),
                    profile_data: serde_json::Value::Object(serde_json::Map::new()),
                    profile_sync: sync_of(&conn),
                    external: false,
                    password_hash: Some(hash),
                };
                store.create_user(&req.tenant, &new, &identity, None).await.map_err(|e| match e {
                    StoreError::AlreadyExists => taken(),
                    e => e.into(),
                })?
            }
        };
        tracing::info!(tenant = %req.tenant, user_id = %user.user_id, connection = %conn.name, "user signed up");
        Ok(Response::new(pb::SignupResponse { user: Some(user_to_pb(&user)) }))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let p = principal(&req)?;
        let address = address(&req, &req.get_ref().ip);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "client_id", &req.client_id);
        required(&mut v, "connection", &req.connection);
        required(&mut v, "username", &req.username);
        if req.password.chars().count() > password::MAX_PASSWORD_LENGTH {
            // Wrong by construction: no password this long was ever accepted.
            return Err(wrong_credentials());
        }
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        self.verify_client(&req.tenant, &req.client_id, &req.client_secret).await?;
        let conn = self.inner.cache.resolve(&req.tenant, &req.client_id, &req.connection).await?;
        let rules = DatabaseRules::of(&conn)?;
        if req.password.is_empty() {
            return Err(wrong_credentials());
        }
        let login = domain::login_key(&req.username);
        let (checked, admitted) =
            self.check_credentials(&req.tenant, &conn, &rules, &login, &req.password, &address).await?;
        let store = &self.inner.store;
        let recorded = match checked {
            Checked::Local { found, rehash } => {
                let clear = admitted.as_ref().and_then(Admitted::clear);
                match self.record_local_login(&req, &conn, &found, rehash, clear, &address).await {
                    // Recorded, and the brute-force count cleared with it.
                    Ok(user) => {
                        if let Some(attempt) = admitted {
                            store.recorded(attempt);
                        }
                        return self.issue_login(&req, user).await;
                    }
                    Err(s) => Err(s),
                }
            }
            Checked::Source(source) => {
                self.upsert_source_user(&req.tenant, &conn, &rules, &source, &req.password, &address).await
            }
        };
        // The password was right: the attempt counted in advance is not a failure.
        if let Some(attempt) = admitted {
            store.settle(attempt, Outcome::Success).await?;
        }
        self.issue_login(&req, recorded?).await
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user_id", &req.user_id);
        required(&mut v, "new_password", &req.new_password);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let store = &self.inner.store;
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        let databases: Vec<&Identity> = user
            .identities
            .iter()
            .filter(|i| {
                i.strategy == DATABASE_STRATEGY && (req.connection.is_empty() || i.connection == req.connection)
            })
            .collect();
        let identity = match databases.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(failed_precondition(
                    "NO_DATABASE_IDENTITY",
                    "the user has no identity in a database connection (with that name); only database users have passwords",
                ));
            }
            _ => return Err(invalid_field("connection", "is required: the user has several database identities")),
        };
        let conn = self.inner.cache.resolve_any(&req.tenant, &identity.connection_id).await?;
        let rules = DatabaseRules::of(&conn)?;
        let history = store.password_history(&req.tenant, &identity.connection_id, &identity.source_id).await?;
        let pr = &user.profile;
        let info = PersonalInfo {
            email: &pr.email,
            username: &pr.username,
            nickname: &pr.nickname,
            name: &pr.name,
            given_name: &pr.given_name,
            family_name: &pr.family_name,
            other: &[],
        };
        let mut v = Violations::new();
        rules.policy.check_with_history(&req.new_password, &info, &history, "new_password", &mut v).await?;
        v.into_result()?;
        if identity.password_hash.is_none() {
            let custom = rules.custom.as_ref().ok_or_else(|| {
                failed_precondition("NO_PASSWORD", "this identity's credentials are not kept by Postern")
            })?;
            let target = Target::of(&req.tenant, &conn, custom);
            self.inner
                .customdb
                .change_password(&target, &pr.email, &req.new_password)
                .await
                .map_err(custom_db_status)?;
            store.unblock(&req.tenant, &user.user_id, MAX_CONSECUTIVE_FAILURES).await?;
        } else {
            let hash = password::hash_async(req.new_password.clone()).await?;
            let keep = usize::try_from(rules.policy.history_size).unwrap_or(0).min(password::MAX_HISTORY_SIZE);
            store
                .set_password(&req.tenant, &user.user_id, &identity.connection_id, &identity.source_id, &hash, keep)
                .await?;
        }
        tracing::info!(tenant = %req.tenant, user_id = %user.user_id, "password changed");
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        Ok(Response::new(pb::ChangePasswordResponse { user: Some(user_to_pb(&user)) }))
    }
}

fn blocked() -> Status {
    permission_denied("USER_BLOCKED", "the user is blocked by an administrator")
}

fn uuid_simple() -> String {
    postern_common::ids::new_id().replace('-', "")
}

/// Checks the tenant of a user request and the caller's right to it.
fn scope(p: &Principal, tenant: &str, user_id: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    check_tenant(&mut v, "tenant", tenant);
    required(&mut v, "user_id", user_id);
    v.into_result()?;
    p.require_tenant(tenant)
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for AuthnApi {
    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        scope(&p, &req.tenant, &req.user_id)?;
        let user = self
            .inner
            .store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user_to_pb(&user)) }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let limit = page_size(req.page_size)?;
        let scope = format!("users|{}|{}|{}", req.tenant, req.connection, req.email.to_lowercase());
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .inner
            .store
            .list_users(
                &req.tenant,
                Some(req.connection.as_str()).filter(|c| !c.is_empty()),
                Some(req.email.as_str()).filter(|e| !e.is_empty()),
                after.as_deref(),
                limit + 1,
            )
            .await?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(seq, _)| encode_token(&scope, seq)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: rows.iter().map(|(_, u)| user_to_pb(u)).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let user = req.user.ok_or_else(|| invalid_field("user", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user.user_id", &user.user_id);
        if mask.is_empty() {
            v.add("update_mask", "is required: name the fields to change");
        }
        const MUTABLE: &[&str] = &[
            "email",
            "email_verified",
            "username",
            "name",
            "given_name",
            "family_name",
            "nickname",
            "picture",
            "user_metadata",
            "app_metadata",
            "blocked",
        ];
        const IMMUTABLE: &[&str] =
            &["user_id", "identities", "last_login", "last_ip", "logins_count", "create_time", "update_time"];
        let paths = postern_common::mask::effective_paths(&mut v, &mask, MUTABLE, IMMUTABLE, |_| false);
        let mut patch = UserPatch::default();
        for path in &paths {
            match *path {
                "email" => {
                    check_email(&mut v, "user.email", &user.email);
                    patch.email = Some(user.email.clone());
                }
                "email_verified" => patch.email_verified = Some(user.email_verified),
                "username" => patch.username = Some(user.username.clone()),
                "name" => patch.name = Some(user.name.clone()),
                "given_name" => patch.given_name = Some(user.given_name.clone()),
                "family_name" => patch.family_name = Some(user.family_name.clone()),
                "nickname" => patch.nickname = Some(user.nickname.clone()),
                "picture" => patch.picture = Some(user.picture.clone()),
                "user_metadata" => {
                    patch.user_metadata =
                        Some(user.user_metadata.as_ref().map(crate::json::from_struct).unwrap_or_default())
                }
                "app_metadata" => {
                    patch.app_metadata =
                        Some(user.app_metadata.as_ref().map(crate::json::from_struct).unwrap_or_default())
                }
                "blocked" => patch.blocked = Some(user.blocked),
                _ => {}
            }
        }
        for (field, value) in [
            ("user.username", &user.username),
            ("user.name", &user.name),
            ("user.given_name", &user.given_name),
            ("user.family_name", &user.family_name),
            ("user.nickname", &user.nickname),
            ("user.picture", &user.picture),
        ] {
            if paths.contains(&&field[5..]) {
                v.check(field, postern_common::validate::display_text(value, 0, 300));
            }
        }
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let store = &self.inner.store;
        let current = store
            .get_user(&req.tenant, &user.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &user.user_id))?;
        if let Some(locking) = current.identities.iter().find(|i| i.locks_root_attributes()) {
            let synced: Vec<&str> = paths.iter().copied().filter(|p| SYNCED_ATTRIBUTES.contains(p)).collect();
            if !synced.is_empty() {
                return Err(failed_precondition(
                    "PROFILE_SYNCED_ON_EACH_LOGIN",
                    format!(
                        "{} cannot be changed: connection {:?} copies the user's profile from its source on each login \
                         (user_profile_sync ON_EACH_LOGIN), so a change here would be undone; change it at the source, \
                         or set the connection's user_profile_sync to ON_FIRST_LOGIN or NEVER_ON_LOGIN",
                        synced.join(", "),
                        locking.connection
                    ),
                ));
            }
        }
        let updated = store
            .update_user(&req.tenant, &user.user_id, &patch)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists => already_exists(
                    "USER_ALREADY_EXISTS",
                    "another user of the same database connection has that email or username",
                ),
                e => e.into(),
            })?
            .ok_or_else(|| user_not_found(&req.tenant, &user.user_id))?;
        Ok(Response::new(pb::UpdateUserResponse { user: Some(user_to_pb(&updated)) }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        scope(&p, &req.tenant, &req.user_id)?;
        let store = &self.inner.store;
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        for identity in user.identities.iter().filter(|i| i.external && i.strategy == DATABASE_STRATEGY) {
            let conn = match self.inner.cache.resolve_any(&req.tenant, &identity.connection_id).await {
                Ok(c) => c,
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(s),
            };
            if let Ok(rules) = DatabaseRules::of(&conn)
                && let Some(custom) = &rules.custom
            {
                let target = Target::of(&req.tenant, &conn, custom);
                self.inner.customdb.delete(&target, &identity.source_id).await.map_err(custom_db_status)?;
            }
        }
        if !store.delete_user(&req.tenant, &req.user_id).await? {
            return Err(user_not_found(&req.tenant, &req.user_id));
        }
        tracing::info!(tenant = %req.tenant, user_id = %req.user_id, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn unblock_user(
        &self,
        req: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        scope(&p, &req.tenant, &req.user_id)?;
        let store = &self.inner.store;
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        let mut lifted = store.unblock(&req.tenant, &user.user_id, MAX_CONSECUTIVE_FAILURES).await?;
        // Attempts counted before the user existed locally, under its login names.
        for identity in &user.identities {
            for name in [&identity.login_email, &identity.login_username] {
                if !name.is_empty() {
                    let key = format!("login:{}:{name}", identity.connection_id);
                    lifted += store.unblock(&req.tenant, &key, MAX_CONSECUTIVE_FAILURES).await?;
                }
            }
        }
        Ok(Response::new(pb::UnblockUserResponse { unblocked_addresses: i32::try_from(lifted).unwrap_or(i32::MAX) }))
    }
}

fn key_to_pb(k: &tokens::SigningKey, max_lifetime: std::time::Duration) -> pb::SigningKey {
    let ts = |t: SystemTime| {
        let micros = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        to_timestamp(i64::try_from(micros).unwrap_or(i64::MAX))
    };
    pb::SigningKey {
        kid: k.kid.clone(),
        algorithm: match k.alg {
            Algorithm::Rs256 => pb::SigningAlgorithm::Rs256 as i32,
            Algorithm::EdDsa => pb::SigningAlgorithm::Eddsa as i32,
        },
        public_jwk: k.public_jwk_json(),
        current: k.is_current(),
        create_time: Some(ts(k.created)),
        retire_time: k.retired_at.map(ts),
        expire_time: k.expire_time(max_lifetime).map(ts),
    }
}

impl AuthnApi {
    /// The tenant's published keys, making its first key when it has none (and exists).
    async fn published_keys(&self, tenant: &str) -> Result<Arc<Vec<tokens::SigningKey>>, Status> {
        let keys = self.inner.keys.keys(tenant).await?;
        if keys.iter().any(|k| k.is_current()) {
            return Ok(keys);
        }
        self.tenant_exists(tenant).await?;
        self.inner.keys.current(tenant).await?;
        Ok(self.inner.keys.keys(tenant).await?)
    }
}

fn tenant_only(p: &Principal, tenant: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    check_tenant(&mut v, "tenant", tenant);
    v.into_result()?;
    p.require_tenant(tenant)
}

#[tonic::async_trait]
impl pb::signing_key_service_server::SigningKeyService for AuthnApi {
    async fn list_signing_keys(
        &self,
        req: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_only(&p, &req.tenant)?;
        let keys = self.published_keys(&req.tenant).await?;
        let max = self.inner.keys.lifetimes().max();
        Ok(Response::new(pb::ListSigningKeysResponse {
            signing_keys: keys.iter().map(|k| key_to_pb(k, max)).collect(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_only(&p, &req.tenant)?;
        let alg = match pb::SigningAlgorithm::try_from(req.algorithm) {
            Ok(pb::SigningAlgorithm::Unspecified | pb::SigningAlgorithm::Rs256) => Algorithm::Rs256,
            Ok(pb::SigningAlgorithm::Eddsa) => Algorithm::EdDsa,
            Err(_) => {
                return Err(invalid_field(
                    "algorithm",
                    "must be SIGNING_ALGORITHM_RS256 or SIGNING_ALGORITHM_EDDSA (unspecified means RS256)",
                ));
            }
        };
        self.tenant_exists(&req.tenant).await?;
        let (new, retired) = self.inner.keys.rotate(&req.tenant, alg).await?;
        let max = self.inner.keys.lifetimes().max();
        tracing::info!(tenant = %req.tenant, kid = %new.kid, alg = %new.alg, "signing key rotated");
        Ok(Response::new(pb::RotateSigningKeyResponse {
            signing_key: Some(key_to_pb(&new, max)),
            retired_signing_key: retired.as_ref().map(|k| key_to_pb(k, max)),
        }))
    }

    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        // Public: any authenticated caller (the gateway's HTTP port) may read it.
        principal(&req)?;
        let tenant = req.into_inner().tenant;
        tenant_only(&Principal::Admin, &tenant)?;
        let keys = self.published_keys(&tenant).await?;
        let json = tokens::jwks_json(&keys, SystemTime::now(), self.inner.keys.lifetimes().max());
        Ok(Response::new(pb::GetJwksResponse { jwks_json: json, max_age_seconds: DOCUMENT_MAX_AGE_SECS }))
    }

    async fn get_open_id_configuration(
        &self,
        req: Request<pb::GetOpenIdConfigurationRequest>,
    ) -> Result<Response<pb::GetOpenIdConfigurationResponse>, Status> {
        principal(&req)?;
        let tenant = req.into_inner().tenant;
        tenant_only(&Principal::Admin, &tenant)?;
        let keys = self.published_keys(&tenant).await?;
        let algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
        let doc = tokens::openid_configuration(&self.issuer(&tenant), &algs);
        Ok(Response::new(pb::GetOpenIdConfigurationResponse {
            openid_configuration_json: doc.to_string(),
            max_age_seconds: DOCUMENT_MAX_AGE_SECS,
        }))
    }

    async fn get_user_info(
        &self,
        req: Request<pb::GetUserInfoRequest>,
    ) -> Result<Response<pb::GetUserInfoResponse>, Status> {
        // Public like the documents: the access token is the credential.
        principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        v.into_result()?;
        let (user_id, scope) = self.access_token_subject(&req.tenant, &req.access_token).await?;
        let user = self
            .inner
            .store
            .get_user(&req.tenant, &user_id)
            .await?
            .ok_or_else(|| not_found("USER_NOT_FOUND", "the access token's user no longer exists"))?;
        if user.blocked {
            // As at login: a blocked user's tokens serve nothing until the block is lifted.
            return Err(invalid_access_token("the access token's user is blocked"));
        }
        let info = UserInfo { sub: user.user_id.clone(), profile: claims_of(&user).for_scope(&scope) };
        let claims_json = serde_json::to_string(&info).map_err(|e| internal(&e))?;
        Ok(Response::new(pb::GetUserInfoResponse { claims_json }))
    }
}

/// The answer of the userinfo endpoint: the subject, then the claims the scope grants.
#[derive(serde::Serialize)]
struct UserInfo {
    sub: String,
    #[serde(flatten)]
    profile: ProfileClaims,
}

fn invalid_access_token(message: impl Into<String>) -> Status {
    unauthenticated("INVALID_ACCESS_TOKEN", message)
}

impl AuthnApi {
    /// Checks an access token presented at `tenant`'s userinfo endpoint and answers its
    /// subject and scope: an opaque token must open under the master key for this tenant,
    /// a JWT must verify against the tenant's key set with the tenant's issuer and the
    /// userinfo endpoint among its audiences. Both must be unexpired.
    async fn access_token_subject(&self, tenant: &str, token: &str) -> Result<(String, String), Status> {
        let token = token.trim();
        if token.is_empty() {
            return Err(invalid_access_token(
                "no access token: present the access token of a login as `Authorization: Bearer <access token>`",
            ));
        }
        if tokens::is_opaque_access_token(token) {
            let claims = tokens::open_access_token(&self.inner.config.master_key, tenant, token, SystemTime::now())
                .map_err(|e| match e {
                    tokens::Error::Expired => invalid_access_token("the access token has expired; log in again"),
                    _ => invalid_access_token(format!(
                        "the access token is malformed, altered, or was not issued by tenant {tenant:?}"
                    )),
                })?;
            // Issued under a key the tenant still publishes: not by an earlier namesake.
            if !self.inner.keys.keys(tenant).await?.iter().any(|k| k.kid == claims.kid) {
                return Err(invalid_access_token(format!(
                    "the access token was not issued by tenant {tenant:?}, or its signing key has left the key set"
                )));
            }
            return Ok((claims.sub, claims.scope));
        }
        let issuer = self.issuer(tenant);
        let audience = tokens::userinfo_endpoint(&issuer);
        // The published keys only: checking a token never creates a tenant's first key.
        let keys = self.inner.keys.keys(tenant).await?;
        let set = tokens::jwks(&keys, SystemTime::now(), self.inner.keys.lifetimes().max());
        let claims: tokens::AccessTokenClaims =
            tokens::verify(token, &set, &issuer, &audience).map_err(|e| jwt_refusal(tenant, &audience, &e))?;
        Ok((claims.sub, claims.scope))
    }
}

fn jwt_refusal(tenant: &str, audience: &str, e: &tokens::Error) -> Status {
    use jsonwebtoken::errors::ErrorKind;
    let message = match e {
        tokens::Error::UnknownKey => {
            format!("the access token was not signed by a key of tenant {tenant:?} (another tenant's, or no token)")
        }
        tokens::Error::InvalidToken(e) => match e.kind() {
            ErrorKind::ExpiredSignature => "the access token has expired; log in again".to_owned(),
            ErrorKind::InvalidIssuer => format!("the access token was not issued by tenant {tenant:?}"),
            ErrorKind::InvalidAudience => format!(
                "the token is not an access token for this endpoint: its `aud` does not include {audience:?} (an ID \
                 token is not an access token)"
            ),
            ErrorKind::InvalidSignature => "the access token's signature does not verify".to_owned(),
            _ => "the access token is malformed: neither an opaque access token nor a valid JWT".to_owned(),
        },
        _ => "the access token is malformed: neither an opaque access token nor a valid JWT".to_owned(),
    };
    invalid_access_token(message)
}
