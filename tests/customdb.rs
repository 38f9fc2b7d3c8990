//! Custom databases through the gateway, at the edges of the call to the customer's endpoint:
//! `https` endpoints verified against a private CA (or the public roots), the registry's
//! checks of that CA, and a custom database too slow for its deadline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::customdb::v1 as cdb;
use postern_testkit::{Clients, Suite, violated_fields};
use tonic::{Code, Request, Response, Status};

const CA_FIELD: &str = "connection.options.database.custom_database.ca_certificate";

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Captures the warnings logged in this process (once), so that a test can check that a
/// failure names its cause. Every test of this file shares them: look for what only your
/// test logs.
fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(|| Sink)
                .finish(),
        );
    });
}

fn logged() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
}

/// A throwaway CA and a server certificate it issued for `names`: `(ca_pem, cert_pem, key_pem)`.
fn issue(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Throwaway test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Runs the example custom database over TLS with `cert_pem`/`key_pem` on a free loopback
/// port, with two users (a user of a custom database belongs to one connection of a tenant). Answers the port; the store lives as long as the returned guard.
async fn tls_custom_db(cert_pem: &str, key_pem: &str) -> (u16, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let store = postern_custom_db_example::Store::open(&dir.path().join("users.db")).await.expect("store");
    for (email, name) in [("carol@legacy.example", "Carol Danvers"), ("dana@legacy.example", "Dana Scully")] {
        store
            .add_user(&postern_custom_db_example::NewUser {
                email: email.into(),
                password: "Legacy-Pass-1".into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("add");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tls = postern_custom_db_example::TlsIdentity { cert_pem: cert_pem.into(), key_pem: key_pem.into() };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let served =
            postern_custom_db_example::serve_with_tls(listener, store, Some("tls-token".into()), Some(tls), async {
                let _ = rx.await;
            })
            .await;
        served.expect("the example serves TLS");
    });
    (port, tx, dir)
}

/// A tenant with a confidential client: `(client_id, client_secret)`.
async fn tenant_with_client(admin: &mut Clients, tenant: &str) -> (String, String) {
    admin.create_tenant(tenant).await.expect("tenant");
    let client = admin.create_client(tenant, "Legacy Portal").await.expect("client");
    (client.client_id, client.client_secret)
}

fn custom(endpoint: &str, ca_certificate: &str, timeout_seconds: i32, token: &str) -> conn::DatabaseOptions {
    conn::DatabaseOptions {
        password_policy: conn::PasswordPolicy::Low as i32,
        custom_database: Some(conn::CustomDatabase {
            endpoint: endpoint.into(),
            timeout_seconds,
            token: token.into(),
            ca_certificate: ca_certificate.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn connection(name: &str, options: conn::DatabaseOptions) -> conn::Connection {
    conn::Connection {
        name: name.into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(options)),
        ..Default::default()
    }
}

/// Creates a database connection and enables it for `client_id`.
async fn create(admin: &mut Clients, tenant: &str, client_id: &str, name: &str, options: conn::DatabaseOptions) {
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest {
            tenant: tenant.into(),
            connection: Some(connection(name, options)),
        })
        .await
        .expect("create connection");
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

fn login(
    tenant: &str,
    (client_id, secret): &(String, String),
    connection: &str,
    username: &str,
    password: &str,
) -> authn::LoginRequest {
    authn::LoginRequest {
        tenant: tenant.into(),
        client_id: client_id.clone(),
        client_secret: secret.clone(),
        connection: connection.into(),
        username: username.into(),
        password: password.into(),
        ip: "203.0.113.9".into(),
        ..Default::default()
    }
}

async fn stored_ca(admin: &mut Clients, tenant: &str, name: &str) -> String {
    let got = admin
        .connections
        .get_connection(conn::GetConnectionRequest { tenant: tenant.into(), connection: name.into() })
        .await
        .expect("get")
        .into_inner();
    match got.connection.and_then(|c| c.options) {
        Some(conn::connection::Options::Database(d)) => d.custom_database.expect("custom database").ca_certificate,
        other => panic!("not database options: {other:?}"),
    }
}

#[tokio::test]
async fn https_custom_database_verified_against_the_connections_private_ca() {
    capture_logs();
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "legacy-tls";
    let app = tenant_with_client(&mut admin, tenant).await;
    let (ca, cert, key) = issue(&["localhost", "127.0.0.1"]);
    let (port, _stop, _dir) = tls_custom_db(&cert, &key).await;

    // The private CA, by IP address and by name: logins reach the store and answer tokens.
    let users = [("carol@legacy.example", "Carol Danvers"), ("dana@legacy.example", "Dana Scully")];
    for ((name, host), (email, full_name)) in
        [("tls-by-ip", "127.0.0.1"), ("tls-by-name", "localhost")].into_iter().zip(users)
    {
        create(&mut admin, tenant, &app.0, name, custom(&format!("https://{host}:{port}"), &ca, 5, "tls-token")).await;
        let answer = admin
            .authn
            .login(login(tenant, &app, name, email, "Legacy-Pass-1"))
            .await
            .unwrap_or_else(|e| panic!("login over TLS to {host}: {e:?}"))
            .into_inner();
        assert!(!answer.id_token.is_empty() && !answer.access_token.is_empty(), "tokens: {answer:?}");
        assert_eq!(answer.user.expect("user").name, full_name);
        let err = admin.authn.login(login(tenant, &app, name, email, "wrong")).await.expect_err("wrong password");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // Not a secret: reads show it as it was given.
    assert_eq!(stored_ca(&mut admin, tenant, "tls-by-ip").await, ca);

    // The same endpoint verified against the public roots: refused at once, UNAVAILABLE.
    create(
        &mut admin,
        tenant,
        &app.0,
        "public-roots",
        custom(&format!("https://127.0.0.1:{port}"), "", 5, "tls-token"),
    )
    .await;
    let started = Instant::now();
    let err = admin
        .authn
        .login(login(tenant, &app, "public-roots", "carol@legacy.example", "Legacy-Pass-1"))
        .await
        .expect_err("an unknown issuer is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(err.message().contains("unavailable"), "{}", err.message());
    assert!(!err.message().contains("127.0.0.1"), "no internals: {}", err.message());

    // Another CA than the issuer's: the same.
    let (other_ca, _, _) = issue(&["localhost"]);
    create(
        &mut admin,
        tenant,
        &app.0,
        "wrong-ca",
        custom(&format!("https://127.0.0.1:{port}"), &other_ca, 5, "tls-token"),
    )
    .await;
    let err = admin
        .authn
        .login(login(tenant, &app, "wrong-ca", "carol@legacy.example", "Legacy-Pass-1"))
        .await
        .expect_err("a certificate of another CA is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // A certificate of the right CA for another name: refused too.
    let (ca2, cert2, key2) = issue(&["customdb.example"]);
    let (port2, _stop2, _dir2) = tls_custom_db(&cert2, &key2).await;
    create(
        &mut admin,
        tenant,
        &app.0,
        "wrong-name",
        custom(&format!("https://127.0.0.1:{port2}"), &ca2, 5, "tls-token"),
    )
    .await;
    let err = admin
        .authn
        .login(login(tenant, &app, "wrong-name", "carol@legacy.example", "Legacy-Pass-1"))
        .await
        .expect_err("a certificate for another name is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Each refusal is logged with its cause.
    let logs = logged();
    let about = |port: u16| -> Vec<&str> {
        logs.lines().filter(|l| l.contains(&format!("https://127.0.0.1:{port}"))).collect::<Vec<_>>()
    };
    let lines = about(port);
    assert!(lines.iter().any(|l| l.contains("UnknownIssuer")), "the cause is logged: {lines:#?}");
    let lines = about(port2);
    assert!(lines.iter().any(|l| l.contains("not valid for name")), "the cause is logged: {lines:#?}");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn the_registry_checks_the_ca_certificate() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "legacy-ca-checks";
    admin.create_tenant(tenant).await.expect("tenant");
    let (ca, _, _) = issue(&["localhost"]);
    let create = |name: &str, options| conn::CreateConnectionRequest {
        tenant: tenant.into(),
        connection: Some(connection(name, options)),
    };

    // Not PEM, PEM of something that is not X.509, and a CA on a plaintext endpoint.
    let fake = format!("-----BEGIN CERTIFICATE-----\nMII{}\n-----END CERTIFICATE-----\n", "A".repeat(61));
    for bad in ["hello", fake.as_str(), &ca[..ca.len() / 2]] {
        let err = admin
            .connections
            .create_connection(create("bad-pem", custom("https://customdb.example:443", bad, 0, "")))
            .await
            .expect_err("not a PEM certificate");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(violated_fields(&err).iter().any(|f| f == CA_FIELD), "{:?}", violated_fields(&err));
    }
    let err = admin
        .connections
        .create_connection(create("plaintext", custom("http://customdb.example:50061", &ca, 0, "")))
        .await
        .expect_err("a CA on http");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), [CA_FIELD]);
    assert!(format!("{err:?}").contains("needs an https endpoint"), "{err:?}");

    // Accepted on https, read back, changed and removed through UpdateConnection.
    admin
        .connections
        .create_connection(create("private-ca", custom("https://customdb.example:443", &ca, 0, "")))
        .await
        .expect("a CA on https");
    assert_eq!(stored_ca(&mut admin, tenant, "private-ca").await, ca);
    let update = |options, path: &str| conn::UpdateConnectionRequest {
        tenant: tenant.into(),
        connection: Some(connection("private-ca", options)),
        update_mask: Some(prost_types::FieldMask { paths: vec![path.into()] }),
    };
    let path = "options.database.custom_database";
    let err = admin
        .connections
        .update_connection(update(custom("https://customdb.example:443", "nope", 0, ""), path))
        .await
        .expect_err("update with a bad CA");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(violated_fields(&err).iter().any(|f| f == CA_FIELD), "{:?}", violated_fields(&err));
    assert_eq!(stored_ca(&mut admin, tenant, "private-ca").await, ca, "unchanged by a refused update");
    let (ca2, _, _) = issue(&["localhost"]);
    let both = format!("{ca}{ca2}");
    admin
        .connections
        .update_connection(update(custom("https://customdb.example:443", &both, 0, ""), path))
        .await
        .expect("a bundle of two CAs");
    assert_eq!(stored_ca(&mut admin, tenant, "private-ca").await, both);
    admin
        .connections
        .update_connection(update(custom("https://customdb.example:443", "", 0, ""), path))
        .await
        .expect("back to the public roots");
    assert_eq!(stored_ca(&mut admin, tenant, "private-ca").await, "");
    suite.stop().await.expect("stop");
}

/// A stand-in custom database whose Login takes 3 s while `slow` is set; otherwise it knows
/// one user, `slow@legacy.example` with password `right-pass`.
#[derive(Clone, Default)]
struct SlowDb {
    slow: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl cdb::custom_database_service_server::CustomDatabaseService for SlowDb {
    async fn login(&self, req: Request<cdb::LoginRequest>) -> Result<Response<cdb::LoginResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let req = req.into_inner();
        if req.username != "slow@legacy.example" || req.password != "right-pass" {
            return Err(Status::unauthenticated("wrong credentials"));
        }
        Ok(Response::new(cdb::LoginResponse {
            profile: Some(cdb::Profile {
                user_id: "slow-1".into(),
                email: "slow@legacy.example".into(),
                name: "Slow Poke".into(),
                ..Default::default()
            }),
        }))
    }
    async fn get_user(&self, _: Request<cdb::GetUserRequest>) -> Result<Response<cdb::GetUserResponse>, Status> {
        Err(Status::not_found("no such user"))
    }
    async fn create(&self, _: Request<cdb::CreateRequest>) -> Result<Response<cdb::CreateResponse>, Status> {
        Err(Status::unimplemented("no signups"))
    }
    async fn verify(&self, _: Request<cdb::VerifyRequest>) -> Result<Response<cdb::VerifyResponse>, Status> {
        Err(Status::unimplemented("no verification"))
    }
    async fn change_password(
        &self,
        _: Request<cdb::ChangePasswordRequest>,
    ) -> Result<Response<cdb::ChangePasswordResponse>, Status> {
        Err(Status::unimplemented("no password changes"))
    }
    async fn delete(&self, _: Request<cdb::DeleteRequest>) -> Result<Response<cdb::DeleteResponse>, Status> {
        Err(Status::unimplemented("no deletions"))
    }
}

/// Asserts that `call` is refused with UNAVAILABLE after the 1 s deadline, not long after.
async fn times_out<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) {
    let started = Instant::now();
    let err = call.await.expect_err(what);
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
    assert!(err.message().contains("custom database is unavailable"), "{what}: {}", err.message());
    assert!(took >= Duration::from_millis(950), "{what}: answered after {took:?}, before the deadline");
    assert!(took < Duration::from_secs(5), "{what}: answered after {took:?}");
}

#[tokio::test]
async fn a_slow_custom_database_hits_its_deadline_and_counts_no_failure() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "legacy-slow";
    let app = tenant_with_client(&mut admin, tenant).await;

    let db = SlowDb { slow: Arc::new(AtomicBool::new(true)), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = db.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(cdb::custom_database_service_server::CustomDatabaseServiceServer::new(serving))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("serve");
    });
    // Brute-force protection is on by default.
    create(&mut admin, tenant, &app.0, "slow", custom(&url, "", 1, "")).await;

    // More slow attempts with the right password than the failures that block a user: none
    // counts, since none was checked.
    let attempts = 12;
    for i in 0..attempts {
        times_out(
            &format!("slow attempt {i}"),
            admin.authn.login(login(tenant, &app, "slow", "slow@legacy.example", "right-pass")),
        )
        .await;
    }
    assert_eq!(db.calls.load(Ordering::SeqCst), attempts, "every attempt reached the store");
    db.slow.store(false, Ordering::SeqCst);
    let answer = admin
        .authn
        .login(login(tenant, &app, "slow", "slow@legacy.example", "right-pass"))
        .await
        .expect("once the store is fast again, the right password logs in")
        .into_inner();
    assert!(!answer.id_token.is_empty());

    // Whereas wrong passwords do count: ten of them block the eleventh attempt.
    for _ in 0..10 {
        let err = admin
            .authn
            .login(login(tenant, &app, "slow", "slow@legacy.example", "wrong-pass"))
            .await
            .expect_err("wrong password");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let err =
        admin.authn.login(login(tenant, &app, "slow", "slow@legacy.example", "right-pass")).await.expect_err("blocked");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // An endpoint that accepts connections and never says a word (it ignores the deadline
    // it is sent): the authenticator's own deadline ends the wait.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole_url = format!("http://{}", hole.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    create(&mut admin, tenant, &app.0, "black-hole", custom(&hole_url, "", 1, "")).await;
    times_out("black hole", admin.authn.login(login(tenant, &app, "black-hole", "slow@legacy.example", "right-pass")))
        .await;
    suite.stop().await.expect("stop");
}
