//! The authenticator through the gateway, as an application drives it: signup and login
//! through database connections (Postern's store and a custom database), tokens verified
//! by an independent JWT implementation against the key set fetched over HTTP, password
//! policies, brute-force protection, profile sync, and tenant isolation.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::FutureExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_testkit::{Clients, Suite, eventually, http_get, http_request, reason, violated_fields};
use tonic::Code;

const STRONG: &str = "Wonder-Land-42!";

/// A tenant with a confidential client: `(client_id, client_secret)`.
async fn tenant_with_client(admin: &mut Clients, tenant: &str) -> (String, String) {
    admin.create_tenant(tenant).await.expect("tenant");
    let client = admin.create_client(tenant, "Fabrikam Customer Portal").await.expect("client");
    (client.client_id, client.client_secret)
}

/// Creates a database connection with `options` and enables it for `client_id`.
async fn database(
    admin: &mut Clients,
    tenant: &str,
    name: &str,
    options: conn::DatabaseOptions,
    sync: conn::UserProfileSync,
    client_id: Option<&str>,
) {
    let connection = conn::Connection {
        name: name.into(),
        strategy: "auth0".into(),
        user_profile_sync: sync as i32,
        options: Some(conn::connection::Options::Database(options)),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: tenant.into(), connection: Some(connection) })
        .await
        .expect("create connection");
    if let Some(client_id) = client_id {
        admin
            .connections
            .enable_client(conn::EnableClientRequest {
                tenant: tenant.into(),
                connection: name.into(),
                client_id: client_id.into(),
            })
            .await
            .expect("enable");
    }
}

fn policy(level: conn::PasswordPolicy) -> conn::DatabaseOptions {
    conn::DatabaseOptions { password_policy: level as i32, ..Default::default() }
}

fn signup(tenant: &str, client_id: &str, connection: &str, email: &str, password: &str) -> authn::SignupRequest {
    authn::SignupRequest {
        tenant: tenant.into(),
        client_id: client_id.into(),
        connection: connection.into(),
        email: email.into(),
        password: password.into(),
        ..Default::default()
    }
}

#[derive(Clone, Copy)]
struct App<'a> {
    tenant: &'a str,
    client_id: &'a str,
    secret: &'a str,
    connection: &'a str,
}

impl App<'_> {
    fn login(&self, username: &str, password: &str, ip: &str) -> authn::LoginRequest {
        authn::LoginRequest {
            tenant: self.tenant.into(),
            client_id: self.client_id.into(),
            client_secret: self.secret.into(),
            connection: self.connection.into(),
            username: username.into(),
            password: password.into(),
            ip: ip.into(),
            ..Default::default()
        }
    }
}

/// Verifies an ID token as a relying party would, with `jsonwebtoken` and the key set and
/// discovery document fetched from the gateway's HTTP port. Answers the claims.
async fn verify_id_token(http: SocketAddr, tenant: &str, token: &str, audience: &str) -> serde_json::Value {
    let (code, _, body) = http_get(http, &format!("/{tenant}/.well-known/openid-configuration")).await.expect("get");
    assert_eq!(code, 200, "{body}");
    let discovery: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
    let issuer = discovery["issuer"].as_str().expect("issuer").to_owned();
    assert_eq!(issuer, format!("http://{http}/{tenant}/"));
    assert_eq!(discovery["jwks_uri"], format!("http://{http}/{tenant}/.well-known/jwks.json"));

    let (code, headers, body) = http_get(http, &format!("/{tenant}/.well-known/jwks.json")).await.expect("get");
    assert_eq!(code, 200, "{body}");
    assert!(headers.iter().any(|(k, v)| k == "cache-control" && v.contains("max-age=")), "{headers:?}");
    let set: JwkSet = serde_json::from_str(&body).expect("JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("the token's key is in the set");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer.as_str()]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).expect("the ID token verifies").claims
}

#[tokio::test]
async fn signup_login_and_the_token_verifies_against_the_published_keys() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "fabrikam-public";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "customers",
        policy(conn::PasswordPolicy::Good),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let key = admin.create_api_key(tenant).await.expect("key");
    let mut app = suite.clients(&key).await;

    let created = app
        .authn
        .signup(signup(tenant, &client_id, "customers", "Alice@Fabrikam.example", STRONG))
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    assert!(created.user_id.starts_with("auth0|"), "{}", created.user_id);
    assert_eq!(created.nickname, "Alice");
    assert_eq!(created.identities[0].connection, "customers");
    let again = app.authn.signup(signup(tenant, &client_id, "customers", "alice@fabrikam.example", STRONG)).await;
    assert_eq!(again.expect_err("duplicate").code(), Code::AlreadyExists);

    let a = App { tenant, client_id: &client_id, secret: &secret, connection: "customers" };
    let login =
        app.authn.login(a.login("alice@fabrikam.example", STRONG, "203.0.113.7")).await.expect("login").into_inner();
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 86_400);
    let user = login.user.expect("user");
    assert_eq!((user.logins_count, user.last_ip.as_str()), (1, "203.0.113.7"));

    let claims = verify_id_token(suite.http, tenant, &login.id_token, &client_id).await;
    assert_eq!(claims["sub"], created.user_id.as_str());
    assert_eq!(claims["aud"], client_id.as_str());
    assert_eq!(claims["email"], "Alice@Fabrikam.example");
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, 36_000);

    // Wrong password and unknown user: the same answer.
    let wrong = app.authn.login(a.login("alice@fabrikam.example", "Wrong-Pass-42!", "")).await.expect_err("wrong");
    let unknown = app.authn.login(a.login("nobody@fabrikam.example", STRONG, "")).await.expect_err("unknown");
    assert_eq!((wrong.code(), unknown.code()), (Code::Unauthenticated, Code::Unauthenticated));
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(reason(&wrong), reason(&unknown));
    // The confidential client's secret is required.
    let no_secret = App { secret: "", ..a };
    let err = app.authn.login(no_secret.login("alice@fabrikam.example", STRONG, "")).await.expect_err("no secret");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("CLIENT_SECRET_INVALID"));

    // A connection not enabled for the client is refused; an unknown one is not found.
    database(&mut admin, tenant, "staff", policy(conn::PasswordPolicy::None), conn::UserProfileSync::Unspecified, None)
        .await;
    let staff = App { connection: "staff", ..a };
    let err = app.authn.login(staff.login("alice@fabrikam.example", STRONG, "")).await.expect_err("not enabled");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("CONNECTION_NOT_ENABLED"));
    let err =
        app.authn.signup(signup(tenant, &client_id, "staff", "bob@fabrikam.example", STRONG)).await.expect_err("x");
    assert_eq!(err.code(), Code::PermissionDenied);
    let nothing = App { connection: "nothing-here", ..a };
    let err = app.authn.login(nothing.login("alice@fabrikam.example", STRONG, "")).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // An administrator's block stops logins, even with the right password.
    let block = |blocked: bool| authn::UpdateUserRequest {
        tenant: tenant.into(),
        user: Some(authn::User { user_id: created.user_id.clone(), blocked, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["blocked".into()] }),
    };
    app.users.update_user(block(true)).await.expect("block");
    let err = app.authn.login(a.login("alice@fabrikam.example", STRONG, "")).await.expect_err("blocked");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err).as_deref(), Some("USER_BLOCKED"));
    app.users.update_user(block(false)).await.expect("unblock");

    // Tenant isolation: another tenant's key sees nothing; its key set does not verify our token.
    let (other_client, _) = tenant_with_client(&mut admin, "contoso").await;
    let other_key = admin.create_api_key("contoso").await.expect("key");
    let mut other = suite.clients(&other_key).await;
    let err = other
        .users
        .get_user(authn::GetUserRequest { tenant: tenant.into(), user_id: created.user_id.clone() })
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin
        .users
        .get_user(authn::GetUserRequest { tenant: "contoso".into(), user_id: created.user_id.clone() })
        .await
        .expect_err("not in contoso");
    assert_eq!(err.code(), Code::NotFound);
    let (_, _, body) = http_get(suite.http, "/contoso/.well-known/jwks.json").await.expect("get");
    let theirs: JwkSet = serde_json::from_str(&body).expect("JWKS");
    let kid = jsonwebtoken::decode_header(&login.id_token).expect("header").kid.expect("kid");
    assert!(theirs.find(&kid).is_none());
    let _ = other_client;

    // An unknown tenant's documents are a JSON 404.
    let (code, _, body) = http_get(suite.http, "/no-such-tenant/.well-known/jwks.json").await.expect("get");
    assert_eq!(code, 404);
    assert!(body.contains("not_found"), "{body}");

    // Rotation to another algorithm: a new key is published now and signs only once it has
    // been published for 80 s (tests/coherence.rs moves a clock past that); until then the
    // current key signs. The next key of the new algorithm is published too.
    let rotated = admin
        .signing_keys
        .rotate_signing_key(authn::RotateSigningKeyRequest {
            tenant: tenant.into(),
            algorithm: authn::SigningAlgorithm::Eddsa as i32,
        })
        .await
        .expect("rotate")
        .into_inner();
    let retired = rotated.retired_signing_key.expect("retired");
    let promoted = rotated.signing_key.expect("promoted");
    assert_eq!(retired.kid, kid);
    assert_eq!(promoted.algorithm, authn::SigningAlgorithm::Eddsa as i32);
    let activates = promoted.activate_time.expect("activate time").seconds;
    let created = promoted.create_time.expect("create time").seconds;
    assert_eq!(activates - created, 80, "published 80 s before it signs");
    assert_eq!(retired.retire_time.expect("retire time").seconds, activates);
    assert!(!promoted.current && retired.current);
    let keys = admin
        .signing_keys
        .list_signing_keys(authn::ListSigningKeysRequest { tenant: tenant.into() })
        .await
        .expect("list")
        .into_inner()
        .signing_keys;
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, [kid.as_str(), promoted.kid.as_str(), rotated.next_signing_key.expect("next").kid.as_str()]);
    assert!(keys[0].current && !keys[1].current && keys[2].next);
    // The key set the gateway serves (which it keeps up to 10 s) shows it long before it signs.
    eventually("the promoted key in the published key set", || async {
        let (_, _, body) = http_get(suite.http, &format!("/{tenant}/.well-known/jwks.json")).await.expect("get");
        let published: JwkSet = serde_json::from_str(&body).expect("JWKS");
        published.find(&promoted.kid).is_some()
    })
    .await;
    let login2 = app.authn.login(a.login("alice@fabrikam.example", STRONG, "")).await.expect("login").into_inner();
    let header = jsonwebtoken::decode_header(&login2.id_token).expect("header");
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()), "the current key signs until the new one activates");
    // A second rotation while the first is pending says when to try again.
    let err = admin
        .signing_keys
        .rotate_signing_key(authn::RotateSigningKeyRequest { tenant: tenant.into(), ..Default::default() })
        .await
        .expect_err("pending");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::FailedPrecondition, Some("SIGNING_KEY_ROTATION_PENDING")));
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn password_policy_levels() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "policies";
    let (client_id, _) = tenant_with_client(&mut admin, tenant).await;
    // (level, refused password, the violation says, accepted password)
    let cases = [
        (conn::PasswordPolicy::None, "", "at least 1 character", "x"),
        (conn::PasswordPolicy::Low, "abcde", "at least 6 characters", "abcdef"),
        (conn::PasswordPolicy::Fair, "abcdefg1", "uppercase", "Abcdefg1"),
        (conn::PasswordPolicy::Good, "abcdefg1", "3 of these 4", "abcdef1!"),
        (conn::PasswordPolicy::Excellent, "Abc111!xyz", "identical characters", "Abcdef1!xy"),
    ];
    for (i, (level, bad, says, good)) in cases.into_iter().enumerate() {
        let name = format!("level-{i}");
        database(&mut admin, tenant, &name, policy(level), conn::UserProfileSync::Unspecified, Some(&client_id)).await;
        let email = format!("user{i}@example.com");
        let err = admin.authn.signup(signup(tenant, &client_id, &name, &email, bad)).await.expect_err("weak");
        assert_eq!(err.code(), Code::InvalidArgument, "{level:?}: {err:?}");
        assert_eq!(violated_fields(&err), ["password"], "{level:?}");
        assert!(err.message().contains(says), "{level:?}: {}", err.message());
        admin.authn.signup(signup(tenant, &client_id, &name, &email, good)).await.expect("strong enough");
    }
    // Minimum length, personal information, dictionary, usernames and disabled signup.
    let options = conn::DatabaseOptions {
        password_policy: conn::PasswordPolicy::Low as i32,
        password_min_length: 12,
        password_no_personal_info: true,
        password_dictionary: Some(conn::PasswordDictionary { enable: true, words: vec!["fabrikam-rocks".into()] }),
        requires_username: true,
        ..Default::default()
    };
    database(&mut admin, tenant, "strict", options, conn::UserProfileSync::Unspecified, Some(&client_id)).await;
    let mut req = signup(tenant, &client_id, "strict", "marguerite@example.com", "marguerite-1");
    req.username = "x y".into();
    let err = admin.authn.signup(req.clone()).await.expect_err("bad");
    let fields = violated_fields(&err);
    assert!(fields.contains(&"username".to_owned()) && fields.contains(&"password".to_owned()), "{err:?}");
    assert!(err.message().contains("personal information"), "{}", err.message());
    req.username = "marg".into();
    req.password = "FABRIKAM-ROCKS".into();
    let err = admin.authn.signup(req.clone()).await.expect_err("dictionary");
    assert!(err.message().contains("too common"), "{}", err.message());
    req.password = "a-long-enough-one".into();
    admin.authn.signup(req).await.expect("ok");
    database(
        &mut admin,
        tenant,
        "closed",
        conn::DatabaseOptions { disable_signup: true, ..Default::default() },
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let err =
        admin.authn.signup(signup(tenant, &client_id, "closed", "a@example.com", STRONG)).await.expect_err("closed");
    assert_eq!(err.code(), Code::PermissionDenied);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn brute_force_block_and_unblock() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "brute";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "db",
        policy(conn::PasswordPolicy::Low),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let user = admin
        .authn
        .signup(signup(tenant, &client_id, "db", "victim@example.com", STRONG))
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let a = App { tenant, client_id: &client_id, secret: &secret, connection: "db" };

    // 20 wrong attempts at once from one address: exactly 10 are checked.
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let mut c = admin.clone();
            let req = a.login("victim@example.com", "wrong-password", "203.0.113.66");
            tokio::spawn(async move { c.authn.login(req).await.expect_err("wrong").code() })
        })
        .collect();
    let mut codes = Vec::new();
    for h in attempts {
        codes.push(h.await.expect("task"));
    }
    let wrong = codes.iter().filter(|c| **c == Code::Unauthenticated).count();
    let blocked = codes.iter().filter(|c| **c == Code::ResourceExhausted).count();
    assert_eq!((wrong, blocked), (10, 10), "{codes:?}");

    // Blocked even with the right password, from that address only.
    let err = admin.authn.login(a.login("victim@example.com", STRONG, "203.0.113.66")).await.expect_err("blocked");
    assert_eq!(err.code(), Code::ResourceExhausted);
    admin.authn.login(a.login("victim@example.com", STRONG, "198.51.100.9")).await.expect("another address");

    let lifted = admin
        .users
        .unblock_user(authn::UnblockUserRequest { tenant: tenant.into(), user_id: user.user_id.clone() })
        .await
        .expect("unblock")
        .into_inner();
    assert_eq!(lifted.unblocked_addresses, 1);
    admin.authn.login(a.login("victim@example.com", STRONG, "203.0.113.66")).await.expect("unblocked");

    // A password change lifts a block too.
    for _ in 0..10 {
        let _ = admin.authn.login(a.login("victim@example.com", "wrong-password", "203.0.113.67")).await;
    }
    let err = admin.authn.login(a.login("victim@example.com", STRONG, "203.0.113.67")).await.expect_err("blocked");
    assert_eq!(err.code(), Code::ResourceExhausted);
    admin
        .authn
        .change_password(authn::ChangePasswordRequest {
            tenant: tenant.into(),
            user_id: user.user_id.clone(),
            connection: String::new(),
            new_password: "Another-Pass-7".into(),
        })
        .await
        .expect("change");
    admin.authn.login(a.login("victim@example.com", "Another-Pass-7", "203.0.113.67")).await.expect("after change");
    let err = admin.authn.login(a.login("victim@example.com", STRONG, "")).await.expect_err("old password");
    assert_eq!(err.code(), Code::Unauthenticated);
    suite.stop().await.expect("stop");
}

/// The example custom database serving on a free port; stopped by [`CustomDb::stop`], or
/// when dropped.
struct CustomDb {
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl CustomDb {
    /// Stops the server and waits until it has closed its listener and connections.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.served)
            .await
            .expect("the custom database stops within 20 s")
            .expect("the server task")
            .expect("the server");
    }
}

/// Runs the example custom database on a free port over a fresh SQLite file.
async fn custom_db() -> (postern_custom_db_example::Store, String, CustomDb, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let store = postern_custom_db_example::Store::open(&dir.path().join("users.db")).await.expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = store.clone();
    let served =
        tokio::spawn(postern_custom_db_example::serve(listener, serving, Some("s3cret-token".into()), async {
            let _ = rx.await;
        }));
    (store, url, CustomDb { stop: tx, served }, dir)
}

fn custom_options(endpoint: &str, import: conn::ImportMode) -> conn::DatabaseOptions {
    conn::DatabaseOptions {
        password_policy: conn::PasswordPolicy::Low as i32,
        custom_database: Some(conn::CustomDatabase {
            endpoint: endpoint.into(),
            import_mode: import as i32,
            timeout_seconds: 2,
            token: "s3cret-token".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn custom_database_with_and_without_import() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "legacy";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    let (store, url, stop_db, _dir) = custom_db().await;
    for (email, name) in [("plain@example.com", "Plain"), ("moving@example.com", "Moving")] {
        store
            .add_user(&postern_custom_db_example::NewUser {
                email: email.into(),
                password: "legacy-pass".into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("add");
    }
    database(
        &mut admin,
        tenant,
        "remote",
        custom_options(&url, conn::ImportMode::Never),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    database(
        &mut admin,
        tenant,
        "importing",
        custom_options(&url, conn::ImportMode::Lazy),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let remote = App { tenant, client_id: &client_id, secret: &secret, connection: "remote" };
    let importing = App { connection: "importing", ..remote };

    let login =
        admin.authn.login(remote.login("plain@example.com", "legacy-pass", "")).await.expect("login").into_inner();
    let user = login.user.expect("user");
    assert!(user.user_id.starts_with("auth0|cdb-"), "{}", user.user_id);
    assert_eq!(user.name, "Plain");
    let claims = verify_id_token(suite.http, tenant, &login.id_token, &client_id).await;
    assert_eq!(claims["name"], "Plain");
    let err = admin.authn.login(remote.login("plain@example.com", "nope", "")).await.expect_err("wrong");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin.authn.login(remote.login("ghost@example.com", "nope", "")).await.expect_err("unknown");
    assert_eq!(err.code(), Code::Unauthenticated);
    // Signup without import creates the user in the customer's store.
    admin.authn.signup(signup(tenant, &client_id, "remote", "new@example.com", "fresh-pass")).await.expect("signup");
    assert_eq!(store.count().await.expect("count"), 3);
    admin.authn.login(remote.login("new@example.com", "fresh-pass", "")).await.expect("login new");
    // The store's own refusal reaches the caller as a field violation: a connection whose
    // policy allows any password hands the store one it refuses (it wants 4 characters).
    database(
        &mut admin,
        tenant,
        "lenient",
        conn::DatabaseOptions {
            password_policy: conn::PasswordPolicy::None as i32,
            ..custom_options(&url, conn::ImportMode::Never)
        },
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let err = admin
        .authn
        .signup(signup(tenant, &client_id, "lenient", "short@example.com", "abc"))
        .await
        .expect_err("the store refuses a 3-character password");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["password"], "{err:?}");
    assert!(err.message().contains("at least 4 characters"), "the store's reason: {}", err.message());
    assert_eq!(store.count().await.expect("count"), 3, "nothing was created");

    // A password change of a custom database user goes to the customer's store.
    admin
        .authn
        .change_password(authn::ChangePasswordRequest {
            tenant: tenant.into(),
            user_id: user.user_id.clone(),
            connection: String::new(),
            new_password: "changed-pass".into(),
        })
        .await
        .expect("change at the source");
    admin.authn.login(remote.login("plain@example.com", "changed-pass", "")).await.expect("new password");
    let err = admin.authn.login(remote.login("plain@example.com", "legacy-pass", "")).await.expect_err("old one");
    assert_eq!(err.code(), Code::Unauthenticated);
    // An administrator's password change needs no client: with the connection enabled for
    // none, it still reaches the token-protected store.
    let toggle = |enable: bool| {
        let mut connections = admin.connections.clone();
        let (tenant, client_id) = (tenant.to_owned(), client_id.clone());
        async move {
            if enable {
                connections
                    .enable_client(conn::EnableClientRequest { tenant, connection: "remote".into(), client_id })
                    .await
                    .map(|_| ())
            } else {
                connections
                    .disable_client(conn::DisableClientRequest { tenant, connection: "remote".into(), client_id })
                    .await
                    .map(|_| ())
            }
        }
    };
    toggle(false).await.expect("disable");
    admin
        .authn
        .change_password(authn::ChangePasswordRequest {
            tenant: tenant.into(),
            user_id: user.user_id.clone(),
            connection: String::new(),
            new_password: "changed-again".into(),
        })
        .await
        .expect("change with the connection enabled for no client");
    toggle(true).await.expect("enable");
    // Enabling reaches the login path through the registry's change stream.
    eventually("the connection enabled again logs in", || {
        let mut authn = admin.authn.clone();
        let login = remote.login("plain@example.com", "changed-again", "");
        async move { authn.login(login).await.is_ok() }
    })
    .await;

    admin.authn.login(importing.login("moving@example.com", "legacy-pass", "")).await.expect("first login imports");
    // The customer's store goes away: imported users still log in, the others cannot.
    stop_db.stop().await;
    admin.authn.login(importing.login("moving@example.com", "legacy-pass", "")).await.expect("local after import");
    let err = admin.authn.login(importing.login("moving@example.com", "bad", "")).await.expect_err("wrong");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin.authn.login(remote.login("plain@example.com", "changed-again", "")).await.expect_err("down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("127.0.0.1"), "no internals: {}", err.message());
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn profile_sync_in_all_three_modes() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "syncing";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    let (store, url, _stop, _dir) = custom_db().await;
    let modes = [
        ("each", conn::UserProfileSync::OnEachLogin),
        ("first", conn::UserProfileSync::OnFirstLogin),
        ("never", conn::UserProfileSync::NeverOnLogin),
    ];
    for (name, mode) in modes {
        database(&mut admin, tenant, name, custom_options(&url, conn::ImportMode::Never), mode, Some(&client_id)).await;
        let email = format!("{name}@example.com");
        store
            .add_user(&postern_custom_db_example::NewUser {
                email: email.clone(),
                password: "pass-word".into(),
                name: "Source One".into(),
                ..Default::default()
            })
            .await
            .expect("add");
        let app = App { tenant, client_id: &client_id, secret: &secret, connection: name };
        let first = admin.authn.login(app.login(&email, "pass-word", "")).await.expect("login").into_inner();
        let user = first.user.expect("user");
        let expected_first = if name == "never" { "" } else { "Source One" };
        assert_eq!(user.name, expected_first, "{name}: first login");

        let edit = admin
            .users
            .update_user(authn::UpdateUserRequest {
                tenant: tenant.into(),
                user: Some(authn::User {
                    user_id: user.user_id.clone(),
                    name: "App Edit".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
            })
            .await;
        if name == "each" {
            let err = edit.expect_err("synced attributes are read-only");
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(err.message().contains("ON_EACH_LOGIN"), "{}", err.message());
            // Metadata stays editable.
            let mut meta = prost_types::Struct::default();
            meta.fields.insert(
                "theme".into(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("dark".into())) },
            );
            admin
                .users
                .update_user(authn::UpdateUserRequest {
                    tenant: tenant.into(),
                    user: Some(authn::User {
                        user_id: user.user_id.clone(),
                        user_metadata: Some(meta),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["user_metadata".into()] }),
                })
                .await
                .expect("metadata");
        } else {
            assert_eq!(edit.expect("editable").into_inner().user.expect("user").name, "App Edit");
        }

        store.set_profile(&email, "Source Two", "https://example.com/p.png").await.expect("change at source");
        let second = admin.authn.login(app.login(&email, "pass-word", "")).await.expect("login").into_inner();
        let user = second.user.expect("user");
        let expected = if name == "each" { "Source Two" } else { "App Edit" };
        assert_eq!(user.name, expected, "{name}: second login");
        assert_eq!(user.logins_count, 2);
        // The identity keeps what the source sent, whatever the mode.
        let data = user.identities[0].profile_data.clone().expect("profile data");
        assert!(
            matches!(&data.fields["name"].kind, Some(prost_types::value::Kind::StringValue(s)) if s == "Source Two")
        );
    }
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn deleting_a_connection_deletes_its_users() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "cleanup";
    let (client_id, _) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "doomed",
        policy(conn::PasswordPolicy::None),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    database(
        &mut admin,
        tenant,
        "kept",
        policy(conn::PasswordPolicy::None),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    admin.authn.signup(signup(tenant, &client_id, "doomed", "a@example.com", "x")).await.expect("signup");
    admin.authn.signup(signup(tenant, &client_id, "kept", "b@example.com", "x")).await.expect("signup");
    let list = |connection: &str| authn::ListUsersRequest {
        tenant: tenant.into(),
        connection: connection.into(),
        ..Default::default()
    };
    assert_eq!(admin.users.list_users(list("")).await.expect("list").into_inner().users.len(), 2);
    admin
        .connections
        .delete_connection(conn::DeleteConnectionRequest { tenant: tenant.into(), connection: "doomed".into() })
        .await
        .expect("delete");
    eventually("the deleted connection's user going", || {
        let mut users = admin.users.clone();
        let req = list("");
        async move { users.list_users(req).await.expect("list").into_inner().users.len() == 1 }
    })
    .await;
    assert!(admin.users.list_users(list("doomed")).await.expect("list").into_inner().users.is_empty());
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn deleting_a_tenant_leaves_nothing_for_a_namesake() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "ephemeral";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "db",
        policy(conn::PasswordPolicy::None),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    admin.authn.signup(signup(tenant, &client_id, "db", "a@example.com", "x")).await.expect("signup");
    let a = App { tenant, client_id: &client_id, secret: &secret, connection: "db" };
    let login = admin.authn.login(a.login("a@example.com", "x", "")).await.expect("login").into_inner();
    let old_kid = jsonwebtoken::decode_header(&login.id_token).expect("header").kid.expect("kid");

    admin
        .tenants
        .delete_tenant(postern_proto::tenant::v1::DeleteTenantRequest { name: tenant.into() })
        .await
        .expect("delete tenant");
    admin.create_tenant(tenant).await.expect("a namesake");
    let users_of = |a: &Clients| {
        let mut users = a.users.clone();
        async move {
            let req = authn::ListUsersRequest { tenant: tenant.into(), ..Default::default() };
            users.list_users(req).await.expect("list").into_inner().users.len()
        }
    };
    // The deletion travels through the tenant service's event log.
    eventually("the deleted tenant's users going", || users_of(&admin).map(|n| n == 0)).await;
    // The keys go in the same transaction; the authenticator's key cache lets go of them just
    // after it commits, so look until the namesake answers with a key of its own.
    let keys_of = |a: &Clients| {
        let mut keys = a.signing_keys.clone();
        async move {
            let req = authn::ListSigningKeysRequest { tenant: tenant.into() };
            keys.list_signing_keys(req).await.expect("keys").into_inner().signing_keys
        }
    };
    eventually("the namesake's own signing key", || keys_of(&admin).map(|k| k.iter().all(|k| k.kid != old_kid))).await;
    let keys = keys_of(&admin).await;
    assert_eq!(keys.len(), 2, "a current key and a next key");
    assert!(keys.iter().all(|k| k.kid != old_kid), "the namesake does not inherit the deleted tenant's key");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn users_are_listed_in_pages_updated_with_masks_and_deleted() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "directory";
    let (client_id, _) = tenant_with_client(&mut admin, tenant).await;
    for name in ["one", "two"] {
        database(
            &mut admin,
            tenant,
            name,
            policy(conn::PasswordPolicy::None),
            conn::UserProfileSync::Unspecified,
            Some(&client_id),
        )
        .await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let connection = if i < 3 { "one" } else { "two" };
        let user = admin
            .authn
            .signup(signup(tenant, &client_id, connection, &format!("u{i}@example.com"), "x"))
            .await
            .expect("signup")
            .into_inner()
            .user
            .expect("user");
        ids.push(user.user_id);
    }
    let key = admin.create_api_key(tenant).await.expect("key");
    let mut app = suite.clients(&key).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .users
            .list_users(authn::ListUsersRequest {
                tenant: tenant.into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every user once, oldest first");
    let only = |connection: &str, email: &str| authn::ListUsersRequest {
        tenant: tenant.into(),
        connection: connection.into(),
        email: email.into(),
        ..Default::default()
    };
    assert_eq!(app.users.list_users(only("two", "")).await.expect("list").into_inner().users.len(), 2);
    let by_email = app.users.list_users(only("", "U1@EXAMPLE.COM")).await.expect("list").into_inner().users;
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].user_id, ids[1]);
    let bad = authn::ListUsersRequest { tenant: tenant.into(), page_token: "garbage".into(), ..Default::default() };
    let err = app.users.list_users(bad).await.expect_err("bad token");
    assert_eq!(violated_fields(&err), ["page_token"]);

    let update = |paths: &[&str]| authn::UpdateUserRequest {
        tenant: tenant.into(),
        user: Some(authn::User {
            user_id: ids[0].clone(),
            name: "Una".into(),
            email: "una@example.com".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
    };
    let err = app.users.update_user(update(&["logins_count"])).await.expect_err("output only");
    assert_eq!(violated_fields(&err), ["update_mask.paths[0]"]);
    let err = app.users.update_user(update(&[])).await.expect_err("mask required");
    assert_eq!(violated_fields(&err), ["update_mask"]);
    let user =
        app.users.update_user(update(&["name", "email"])).await.expect("update").into_inner().user.expect("user");
    assert_eq!((user.name.as_str(), user.email.as_str()), ("Una", "una@example.com"));
    // The new email is the user's login name now: nobody else may sign up with it.
    let err = admin.authn.signup(signup(tenant, &client_id, "one", "una@example.com", "x")).await.expect_err("taken");
    assert_eq!(err.code(), Code::AlreadyExists);

    app.users
        .delete_user(authn::DeleteUserRequest { tenant: tenant.into(), user_id: ids[0].clone() })
        .await
        .expect("delete");
    let err = app
        .users
        .get_user(authn::GetUserRequest { tenant: tenant.into(), user_id: ids[0].clone() })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .users
        .delete_user(authn::DeleteUserRequest { tenant: tenant.into(), user_id: ids[0].clone() })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await.expect("stop");
}

/// `GET` (or `POST`) `/<tenant>/userinfo` with `Authorization: Bearer <token>`: the status,
/// the headers and the body.
async fn userinfo(http: SocketAddr, method: &str, tenant: &str, token: &str) -> (u16, Vec<(String, String)>, String) {
    let bearer = format!("Bearer {token}");
    http_request(http, method, &format!("/{tenant}/userinfo"), &[("authorization", bearer.as_str())])
        .await
        .expect("userinfo request")
}

/// The claims of a 200 from `/userinfo`, checking that it is JSON and not cached.
async fn claims_at_userinfo(http: SocketAddr, tenant: &str, token: &str) -> serde_json::Value {
    let (code, headers, body) = userinfo(http, "GET", tenant, token).await;
    assert_eq!(code, 200, "{body}");
    assert!(headers.iter().any(|(k, v)| k == "cache-control" && v == "no-store"), "{headers:?}");
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("application/json")), "{headers:?}");
    serde_json::from_str(&body).expect("userinfo JSON")
}

/// Asserts a 401 with `WWW-Authenticate: Bearer error="invalid_token", …`.
fn assert_invalid_token((code, headers, body): (u16, Vec<(String, String)>, String), what: &str) {
    assert_eq!(code, 401, "{what}: {body}");
    let challenge = headers.iter().find(|(k, _)| k == "www-authenticate").map(|(_, v)| v.as_str());
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate in {headers:?}"));
    assert!(challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""), "{what}: {challenge}");
    assert!(body.contains("invalid_token"), "{what}: {body}");
}

fn keys_of(value: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

/// Changes the character in the middle of `token` (a base64 character stays one).
fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

#[tokio::test]
async fn access_tokens_and_the_userinfo_endpoint() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "fabrikam-public";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "customers",
        policy(conn::PasswordPolicy::Good),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    let created = admin
        .authn
        .signup(signup(tenant, &client_id, "customers", "alice@fabrikam.example", STRONG))
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let a = App { tenant, client_id: &client_id, secret: &secret, connection: "customers" };
    let login_with = |scope: &str, audience: &str| authn::LoginRequest {
        scope: scope.into(),
        audience: audience.into(),
        ..a.login("alice@fabrikam.example", STRONG, "")
    };
    let http = suite.http;

    // Without an audience: an opaque access token, good at /userinfo (GET and POST).
    let login = admin.authn.login(login_with("openid", "")).await.expect("login").into_inner();
    assert_eq!((login.token_type.as_str(), login.expires_in), ("Bearer", 86_400));
    assert_ne!(login.access_token.split('.').count(), 3, "not a JWT: {}", login.access_token);
    assert!(jsonwebtoken::decode_header(&login.access_token).is_err());
    let claims = claims_at_userinfo(http, tenant, &login.access_token).await;
    assert_eq!(claims, serde_json::json!({ "sub": created.user_id }));
    let (code, _, body) = userinfo(http, "POST", tenant, &login.access_token).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("JSON"), claims);

    let full = admin.authn.login(login_with("openid profile email", "")).await.expect("login").into_inner();
    let claims = claims_at_userinfo(http, tenant, &full.access_token).await;
    // The user has no name, given or family name, nor picture: those claims are left out.
    assert_eq!(keys_of(&claims), ["email", "email_verified", "nickname", "sub", "updated_at"]);
    assert_eq!(claims["sub"], created.user_id.as_str());
    assert_eq!(claims["email"], "alice@fabrikam.example");
    assert_eq!(claims["email_verified"], false);
    assert_eq!(claims["nickname"], "alice");
    assert!(claims["updated_at"].as_u64().is_some(), "{claims}");
    let email_only = admin.authn.login(login_with("openid email", "")).await.expect("login").into_inner();
    let claims = claims_at_userinfo(http, tenant, &email_only.access_token).await;
    assert_eq!(keys_of(&claims), ["email", "email_verified", "sub"]);

    // An audience that names none of the tenant's APIs: refused before the password is
    // checked (Auth0's "Service not found"), so no attempt is counted.
    let api = "https://api.fabrikam.example";
    let before = admin
        .users
        .get_user(authn::GetUserRequest { tenant: tenant.into(), user_id: created.user_id.clone() })
        .await
        .expect("user")
        .into_inner()
        .user
        .expect("user")
        .logins_count;
    let unknown = admin.authn.login(login_with("openid profile", api)).await.expect_err("no such API");
    assert_eq!(unknown.code(), Code::PermissionDenied, "{unknown:?}");
    assert_eq!(reason(&unknown).as_deref(), Some("ACCESS_DENIED"));
    assert!(unknown.message().starts_with("Service not found: https://api.fabrikam.example"), "{unknown:?}");
    let wrong = admin.authn.login(authn::LoginRequest { password: "not-it".into(), ..login_with("openid", api) }).await;
    assert_eq!(wrong.expect_err("no such API").code(), Code::PermissionDenied, "the API is checked first");

    // With one of its APIs: a JWT for the API whose aud also names /userinfo, with the
    // scopes asked that are OpenID Connect's or the API's (others dropped, not refused).
    admin
        .apis
        .create_resource_server(postern_proto::tenant::v1::CreateResourceServerRequest {
            tenant: tenant.into(),
            resource_server: Some(postern_proto::tenant::v1::ResourceServer {
                identifier: api.into(),
                name: "Fabrikam API".into(),
                scopes: vec![postern_proto::tenant::v1::ResourceServerScope {
                    value: "read:timesheets".into(),
                    description: "Read timesheets".into(),
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("API");
    let scoped =
        admin.authn.login(login_with("openid read:timesheets write:payroll", api)).await.expect("login").into_inner();
    assert_eq!(scoped.scope, "openid read:timesheets", "write:payroll is not the API's");
    let after = admin
        .users
        .get_user(authn::GetUserRequest { tenant: tenant.into(), user_id: created.user_id.clone() })
        .await
        .expect("user")
        .into_inner()
        .user
        .expect("user")
        .logins_count;
    assert_eq!(after, before + 1, "only the login with a known API counted");
    let for_api = admin.authn.login(login_with("openid profile", api)).await.expect("login").into_inner();
    let issuer = format!("http://{http}/{tenant}/");
    let jwt = verify_id_token(http, tenant, &for_api.access_token, api).await;
    assert_eq!(jwt["aud"], serde_json::json!([api, format!("{issuer}userinfo")]));
    assert_eq!(jwt["sub"], created.user_id.as_str());
    assert_eq!(jwt["azp"], client_id.as_str());
    assert_eq!(jwt["scope"], "openid profile");
    verify_id_token(http, tenant, &for_api.access_token, &format!("{issuer}userinfo")).await;
    let claims = claims_at_userinfo(http, tenant, &for_api.access_token).await;
    assert_eq!(claims["nickname"], "alice");
    assert!(claims.get("email").is_none(), "scope has no email: {claims}");

    // Refused: no token, a tampered token (opaque and JWT), an ID token, garbage.
    let no_token = http_request(http, "GET", &format!("/{tenant}/userinfo"), &[]).await.expect("request");
    assert_invalid_token(no_token, "no token");
    assert_invalid_token(userinfo(http, "GET", tenant, &tamper(&full.access_token)).await, "tampered opaque token");
    let mut parts: Vec<String> = for_api.access_token.split('.').map(str::to_owned).collect();
    parts[1] = tamper(&parts[1]);
    assert_invalid_token(userinfo(http, "GET", tenant, &parts.join(".")).await, "tampered JWT");
    assert_invalid_token(userinfo(http, "GET", tenant, &login.id_token).await, "an ID token");
    assert_invalid_token(userinfo(http, "POST", tenant, "garbage").await, "garbage");

    // Another tenant's tokens, both ways.
    let (other_client, other_secret) = tenant_with_client(&mut admin, "contoso").await;
    database(
        &mut admin,
        "contoso",
        "customers",
        policy(conn::PasswordPolicy::Good),
        conn::UserProfileSync::Unspecified,
        Some(&other_client),
    )
    .await;
    admin
        .authn
        .signup(signup("contoso", &other_client, "customers", "alice@fabrikam.example", STRONG))
        .await
        .expect("signup at contoso");
    let b = App { tenant: "contoso", client_id: &other_client, secret: &other_secret, connection: "customers" };
    let theirs = admin.authn.login(b.login("alice@fabrikam.example", STRONG, "")).await.expect("login").into_inner();
    claims_at_userinfo(http, "contoso", &theirs.access_token).await;
    assert_invalid_token(userinfo(http, "GET", tenant, &theirs.access_token).await, "contoso's token here");
    assert_invalid_token(userinfo(http, "GET", "contoso", &full.access_token).await, "our opaque token at contoso");
    assert_invalid_token(userinfo(http, "GET", "contoso", &for_api.access_token).await, "our JWT at contoso");
    assert_invalid_token(userinfo(http, "GET", "no-such-tenant", &full.access_token).await, "unknown tenant");

    // The current profile, not the token's copy.
    admin
        .users
        .update_user(authn::UpdateUserRequest {
            tenant: tenant.into(),
            user: Some(authn::User {
                user_id: created.user_id.clone(),
                name: "Alice Liddell".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        })
        .await
        .expect("update");
    assert_eq!(claims_at_userinfo(http, tenant, &full.access_token).await["name"], "Alice Liddell");
    assert_eq!(claims_at_userinfo(http, tenant, &for_api.access_token).await["name"], "Alice Liddell");

    // A blocked user's tokens serve nothing until the block is lifted.
    let block = |blocked: bool| authn::UpdateUserRequest {
        tenant: tenant.into(),
        user: Some(authn::User { user_id: created.user_id.clone(), blocked, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["blocked".into()] }),
    };
    admin.users.update_user(block(true)).await.expect("block");
    assert_invalid_token(userinfo(http, "GET", tenant, &full.access_token).await, "blocked user");
    assert_invalid_token(userinfo(http, "GET", tenant, &for_api.access_token).await, "blocked user (JWT)");
    admin.users.update_user(block(false)).await.expect("unblock");
    claims_at_userinfo(http, tenant, &full.access_token).await;

    // A deleted user's tokens stop working.
    admin
        .users
        .delete_user(authn::DeleteUserRequest { tenant: tenant.into(), user_id: created.user_id.clone() })
        .await
        .expect("delete");
    assert_invalid_token(userinfo(http, "GET", tenant, &full.access_token).await, "deleted user");
    suite.stop().await.expect("stop");
}

/// An application logs its users in as itself, with no API key: a confidential client by
/// its id and secret, a public one (SPA) by its id alone; the call acts only for that client.
/// The public key set, discovery and userinfo need no key; everything else still does.
#[tokio::test]
async fn applications_call_as_themselves_without_a_key() {
    use postern_proto::tenant::v1 as tenant_pb;
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "fabrikam-public";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    let spa = tenant_pb::Client {
        name: "Fabrikam Single Page".into(),
        app_type: tenant_pb::AppType::Spa as i32,
        callbacks: vec!["https://spa.fabrikam.example/callback".into()],
        ..Default::default()
    };
    let spa = admin
        .clients
        .create_client(tenant_pb::CreateClientRequest { tenant: tenant.into(), client: Some(spa) })
        .await
        .expect("spa")
        .into_inner()
        .client
        .expect("client");
    database(
        &mut admin,
        tenant,
        "customers",
        policy(conn::PasswordPolicy::Good),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: tenant.into(),
            connection: "customers".into(),
            client_id: spa.client_id.clone(),
        })
        .await
        .expect("enable for the SPA");
    let (other_client, _) = tenant_with_client(&mut admin, "fabrikam-internal").await;
    let mut anonymous = suite.clients("").await;

    // Signup and login with the application's own credentials.
    let user = anonymous
        .authn
        .signup(signup(tenant, &client_id, "customers", "alice@fabrikam.example", STRONG))
        .await
        .expect("signup without a key")
        .into_inner()
        .user
        .expect("user");
    let confidential = App { tenant, client_id: &client_id, secret: &secret, connection: "customers" };
    let login = anonymous
        .authn
        .login(confidential.login("alice@fabrikam.example", STRONG, ""))
        .await
        .expect("a confidential client logs in with its secret")
        .into_inner();
    verify_id_token(suite.http, tenant, &login.id_token, &client_id).await;
    for wrong in ["", "not-the-secret"] {
        let app = App { secret: wrong, ..confidential };
        let err = anonymous.authn.login(app.login("alice@fabrikam.example", STRONG, "")).await.expect_err("no secret");
        assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("CLIENT_SECRET_INVALID")));
    }
    let public = App { tenant, client_id: &spa.client_id, secret: "", connection: "customers" };
    let spa_login = anonymous
        .authn
        .login(public.login("alice@fabrikam.example", STRONG, ""))
        .await
        .expect("a public client logs in with its id alone")
        .into_inner();
    verify_id_token(suite.http, tenant, &spa_login.id_token, &spa.client_id).await;
    // The end user's address counts only from the application's backend: anyone can call as
    // a public client, and a reported address would step around a block of their own.
    let err = anonymous
        .authn
        .login(public.login("alice@fabrikam.example", STRONG, "203.0.113.50"))
        .await
        .expect_err("a public client reports no address");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ip") && err.message().contains("API key"), "{err:?}");
    anonymous
        .authn
        .login(confidential.login("alice@fabrikam.example", STRONG, "203.0.113.50"))
        .await
        .expect("a confidential client reports its user's address");
    // A client acts only in its own tenant.
    let foreign = App { client_id: &other_client, ..public };
    let err = anonymous.authn.login(foreign.login("alice@fabrikam.example", STRONG, "")).await.expect_err("foreign");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = anonymous.authn.signup(signup(tenant, &other_client, "customers", "bob@fabrikam.example", STRONG)).await;
    assert_eq!(err.expect_err("foreign client").code(), Code::NotFound);

    // Public documents and userinfo.
    let jwks = anonymous.signing_keys.get_jwks(authn::GetJwksRequest { tenant: tenant.into() }).await;
    assert!(jwks.expect("jwks without a key").into_inner().jwks_json.contains("\"kid\""));
    anonymous
        .signing_keys
        .get_open_id_configuration(authn::GetOpenIdConfigurationRequest { tenant: tenant.into() })
        .await
        .expect("discovery without a key");
    let info = anonymous
        .signing_keys
        .get_user_info(authn::GetUserInfoRequest { tenant: tenant.into(), access_token: login.access_token })
        .await
        .expect("userinfo without a key");
    assert!(info.into_inner().claims_json.contains(&user.user_id));

    // The token endpoint's twins: the client's own credentials count.
    let mut oauth = authn::o_auth_service_client::OAuthServiceClient::new(suite.channel().await);
    let exchange = authn::ExchangeTokenRequest {
        tenant: tenant.into(),
        grant_type: "password".into(),
        client_id: client_id.clone(),
        client_secret: secret.clone(),
        ..Default::default()
    };
    let err = oauth.exchange_token(exchange).await.expect_err("an unsupported grant");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::InvalidArgument, Some("UNSUPPORTED_GRANT_TYPE")));
    let revoke = authn::RevokeTokenRequest {
        tenant: tenant.into(),
        client_id: client_id.clone(),
        client_secret: secret.clone(),
        token: "not-a-token".into(),
        ..Default::default()
    };
    oauth.revoke_token(revoke).await.expect("revoking an unknown token is no error, and needs no key");

    // Everything else needs a key.
    let missing = |err: tonic::Status| {
        assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("API_KEY_MISSING")), "{err:?}");
    };
    let change = authn::ChangePasswordRequest {
        tenant: tenant.into(),
        user_id: user.user_id.clone(),
        connection: "customers".into(),
        new_password: "Another-Strong-43!".into(),
    };
    missing(anonymous.authn.change_password(change).await.expect_err("change password"));
    missing(
        anonymous
            .users
            .list_users(authn::ListUsersRequest { tenant: tenant.into(), ..Default::default() })
            .await
            .expect_err("users"),
    );
    missing(
        anonymous
            .signing_keys
            .rotate_signing_key(authn::RotateSigningKeyRequest { tenant: tenant.into(), ..Default::default() })
            .await
            .expect_err("rotate"),
    );
    missing(anonymous.tenants.list_tenants(tenant_pb::ListTenantsRequest::default()).await.expect_err("tenants"));
    // A key that is presented is checked, even on a public method.
    let mut bad_key = suite.clients("not-a-key").await;
    let err = bad_key.authn.login(confidential.login("alice@fabrikam.example", STRONG, "")).await.expect_err("bad key");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("API_KEY_INVALID")));
    suite.stop().await.expect("stop");
}

/// Password hashes take turns (`--hash-concurrency`), and a login that waits longer than
/// `--hash-queue-timeout-ms` for its turn is refused UNAVAILABLE (PASSWORD_CHECKS_BUSY),
/// counted and logged, instead of queueing without end: a burst holds at most the turns'
/// memory (19 MiB each).
#[tokio::test]
async fn a_login_burst_beyond_the_hashing_turns_is_refused_busy_after_the_queue_deadline() {
    let suite = Suite::start_with(|s| {
        s.hash_concurrency = 1;
        s.hash_queue_timeout_ms = 1;
    })
    .await
    .expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "fabrikam-public";
    let (client_id, secret) = tenant_with_client(&mut admin, tenant).await;
    database(
        &mut admin,
        tenant,
        "customers",
        policy(conn::PasswordPolicy::Good),
        conn::UserProfileSync::Unspecified,
        Some(&client_id),
    )
    .await;
    admin
        .authn
        .signup(signup(tenant, &client_id, "customers", "alice@fabrikam.example", STRONG))
        .await
        .expect("signup");
    let a = App { tenant, client_id: &client_id, secret: &secret, connection: "customers" };
    // Sixteen at once: one hashes (tens of milliseconds), the others wait over 1 ms.
    let logins = (0..16).map(|i| {
        let mut authn = admin.authn.clone();
        let request = a.login("alice@fabrikam.example", STRONG, &format!("203.0.113.{}", i + 1));
        async move { authn.login(request).await }
    });
    let answers = futures_util::future::join_all(logins).await;
    let served = answers.iter().filter(|a| a.is_ok()).count();
    let busy: Vec<&tonic::Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(served >= 1, "the first login hashes at once: {busy:?}");
    assert!(!busy.is_empty(), "16 logins at once, one turn, a 1 ms queue: some must be refused");
    for s in &busy {
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert_eq!(reason(s).as_deref(), Some("PASSWORD_CHECKS_BUSY"), "{s:?}");
        assert!(s.message().contains("retry shortly"), "{s:?}");
    }
    let (_, _, metrics) = http_get(suite.management, "/metrics").await.expect("metrics");
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("postern_refusals_total{reason=\"PASSWORD_CHECKS_BUSY\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(counted, Some(busy.len()), "each refusal counted");
    // The burst over, a login is served again.
    admin.authn.login(a.login("alice@fabrikam.example", STRONG, "203.0.113.99")).await.expect("login after the burst");
    suite.stop().await.expect("stop");
}
