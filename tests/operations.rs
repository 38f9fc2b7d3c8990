//! The binary as an operator and a container runtime drive it: `postern migrate` (concurrent
//! runs on one empty PostgreSQL database never fail), `serve` refusing a schema that is behind,
//! and `postern health` (the container's health check) against running servers.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use postern_testkit::peers::{TestDatabase, postgres};
use postern_testkit::{ADMIN_KEY, MASTER_KEY, Process, Suite, output_within};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_postern-e2e");

/// Rounds of concurrent migrations, each on a fresh database.
const ROUNDS: usize = 5;
/// Concurrent `postern migrate` processes per round (the replicas starting at once).
const CONCURRENT: usize = 5;

/// `postern <args>` with none of the caller's `POSTERN_…` settings, quiet logs.
fn postern(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTERN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("POSTERN_LOG", "warn").env("NO_COLOR", "1").env("RUST_BACKTRACE", "0");
    cmd
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `postern migrate --database-url url`, to its end.
fn migrate(url: &str) -> Output {
    output_within(&mut postern(&["migrate", "--database-url", url]), Duration::from_secs(120)).expect("postern migrate")
}

/// `postern serve` on loopback with the kit's keys, and `extra` arguments.
fn serve_command(data: &Path, extra: &[&str]) -> Command {
    let mut cmd = postern(&["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"]);
    cmd.arg(data).args(extra).env("POSTERN_ADMIN_KEY", ADMIN_KEY).env("POSTERN_MASTER_KEY", MASTER_KEY);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_on_an_empty_database_never_fail() {
    let Some(base) = postgres("concurrent_migrations_on_an_empty_database_never_fail") else { return };
    let started = Instant::now();
    for round in 0..ROUNDS {
        let db = TestDatabase::create(&base).await.expect("database");
        let runs: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let url = db.url.clone();
                std::thread::spawn(move || migrate(&url))
            })
            .collect();
        let outputs: Vec<Output> = runs.into_iter().map(|r| r.join().expect("migrate thread")).collect();
        for (i, out) in outputs.iter().enumerate() {
            assert!(out.status.success(), "round {round}, run {i} of {CONCURRENT} failed:\n{}", text(out));
        }
        // The lock lets exactly one run apply each service's migrations; the others find the
        // schema current.
        for service in ["tenant", "registry", "authn"] {
            let applied = outputs.iter().filter(|o| text(o).contains(&format!("postern: {service}: applied "))).count();
            let current =
                outputs.iter().filter(|o| text(o).contains(&format!("postern: {service}: up to date"))).count();
            assert_eq!((applied, current), (1, CONCURRENT - 1), "round {round}, {service}: {outputs:#?}");
        }
        db.drop_db().await.expect("drop");
    }
    eprintln!(
        "{ROUNDS} rounds of {CONCURRENT} concurrent `postern migrate` on an empty database: all succeeded in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_migrating_as_they_start_never_race() {
    let Some(base) = postgres("replicas_migrating_as_they_start_never_race") else { return };
    let db = TestDatabase::create(&base).await.expect("database");
    let temp = tempfile::tempdir().expect("tempdir");
    // The trial: replicas starting at once on an empty database, each migrating.
    let starts: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let mut cmd = serve_command(&temp.path().join(format!("r{i}")), &["--migrate", "always"]);
            cmd.env("POSTERN_DATABASE_URL", &db.url);
            std::thread::spawn(move || Process::spawn(cmd, true))
        })
        .collect();
    let replicas: Vec<Process> =
        starts.into_iter().map(|s| s.join().expect("start thread").expect("every replica starts")).collect();
    for replica in replicas {
        assert!(replica.terminate().expect("terminate"), "a replica stops cleanly");
    }
    db.drop_db().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_a_schema_that_is_behind() {
    let Some(base) = postgres("serve_refuses_a_schema_that_is_behind") else { return };
    let db = TestDatabase::create(&base).await.expect("database");
    let temp = tempfile::tempdir().expect("tempdir");
    let refused = |what: &str| {
        let mut cmd = serve_command(temp.path(), &["--database-url", &db.url]);
        let out = output_within(&mut cmd, Duration::from_secs(60)).expect("serve");
        assert!(!out.status.success(), "serve started on {what}");
        text(&out)
    };

    // An empty database: nothing is created, and the message says what to do.
    let said = refused("an empty database");
    assert!(
        said.contains("the tenant schema is behind this binary: it is at migration 0")
            && said.contains("run `postern migrate`"),
        "{said}"
    );
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname IN ('tenant', 'registry', 'authn')",
        )
        .fetch_all(&mut conn)
        .await
        .expect("schemas");
        assert!(schemas.is_empty(), "a refused start created {schemas:?}");
    }

    // One service a migration behind (as after upgrading the binary without migrating).
    let out = migrate(&db.url);
    assert!(out.status.success(), "{}", text(&out));
    let newest: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM authn._sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .expect("newest");
        sqlx::query("DELETE FROM authn._sqlx_migrations WHERE version = $1")
            .bind(newest)
            .execute(&mut conn)
            .await
            .expect("forget the newest migration");
        newest
    };
    let said = refused("a schema a migration behind");
    let expected = format!(
        "the authn schema is behind this binary: it is at migration {} and 1 more is pending ({newest})",
        newest - 1
    );
    assert!(said.contains(&expected), "expected {expected:?} in:\n{said}");

    // Current again: it serves, and says so to `postern health`.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("DROP SCHEMA authn CASCADE").execute(&mut conn).await.expect("drop authn");
    }
    let out = migrate(&db.url);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("postern: authn: applied "), "{}", text(&out));
    assert!(text(&out).contains("postern: tenant: up to date"), "{}", text(&out));
    let server = Process::spawn(serve_command(temp.path(), &["--database-url", &db.url]), true)
        .expect("serve starts on a current schema");
    let health = health(&["--address", &server.grpc.to_string()]);
    assert!(health.status.success(), "{}", text(&health));
    assert!(server.terminate().expect("terminate"));
    db.drop_db().await.expect("drop");
}

#[test]
fn on_sqlite_serve_migrates_unless_told_not_to() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let out =
        output_within(&mut serve_command(&data, &["--migrate", "never"]), Duration::from_secs(60)).expect("serve");
    assert!(!out.status.success(), "serve --migrate never started on empty files");
    assert!(text(&out).contains("tenant.db is behind this binary"), "{}", text(&out));
    let out = output_within(postern(&["migrate", "--data-dir"]).arg(&data), Duration::from_secs(60)).expect("migrate");
    assert!(out.status.success(), "{}", text(&out));
    let server = Process::spawn(serve_command(&data, &["--migrate", "never"]), true).expect("starts once migrated");
    // A migration while a server owns the files is refused, not run beside it.
    let out = output_within(postern(&["migrate", "--data-dir"]).arg(&data), Duration::from_secs(60)).expect("migrate");
    assert!(!out.status.success() && text(&out).contains("in use by another process"), "{}", text(&out));
    assert!(server.terminate().expect("terminate"));
    // The default migrates by itself.
    let fresh = temp.path().join("fresh");
    let server = Process::spawn(serve_command(&fresh, &[]), true).expect("the all-in-one default migrates");
    assert!(server.terminate().expect("terminate"));
}

/// `postern health <args>`, to its end.
fn health(args: &[&str]) -> Output {
    let mut cmd = postern(&["health"]);
    cmd.args(args);
    output_within(&mut cmd, Duration::from_secs(30)).expect("postern health")
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_for_a_running_suite() {
    let suite = Suite::start().await.expect("suite");
    let address = suite.grpc.to_string();

    let out = health(&["--address", &address]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let out = health(&["--address", &address, "--service", "postern.tenant.v1.TenantService"]);
    assert!(out.status.success(), "{}", text(&out));
    // The default address is POSTERN_LISTEN's port on loopback, as in the image.
    let mut cmd = postern(&["health"]);
    cmd.env("POSTERN_LISTEN", format!("0.0.0.0:{}", suite.grpc.port()));
    let out = output_within(&mut cmd, Duration::from_secs(30)).expect("health");
    assert!(out.status.success(), "{}", text(&out));

    // A service the server does not have: exit 1 and one line saying so.
    let out = health(&["--address", &address, "--service", "no.such.Service"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("NotFound"), "{said}");
    suite.stop().await.expect("stop");

    // Nobody listening: exit 1 and why.
    let out = health(&["--address", &address, "--timeout-ms", "2000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("postern health: cannot connect to") && said.lines().count() == 1, "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_a_gateway_whose_backend_is_down() {
    // A port with nobody behind it: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let temp = tempfile::tempdir().expect("tempdir");
    let mut cmd =
        postern(&["serve", "gateway", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"]);
    cmd.arg(temp.path()).arg("--tenant-url").arg(format!("http://{closed}"));
    let gateway = Process::spawn(cmd, true).expect("the gateway starts");
    let address = gateway.grpc.to_string();
    // The gateway finds the backend down at its first health round: wait for it on the
    // health service's watch stream, then ask as the container runtime does.
    let mut watch = HealthClient::new(postern_testkit::channel(gateway.grpc).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(answer) = watch.message().await.expect("watch stream") {
            if answer.status == ServingStatus::NotServing as i32 {
                return;
            }
        }
        panic!("the watch stream ended");
    })
    .await;
    assert!(down.is_ok(), "the gateway still says SERVING 20 s after its backend was found down");
    let out = health(&["--address", &address]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("the server is NOT_SERVING") && said.lines().count() == 1, "{said}");
    // A graceful stop ends the watch, a stream that never ends on its own (grpc-go's health
    // checking keeps one open), with UNAVAILABLE after its 2 s grace, instead of waiting for
    // it up to --long-call-ms (10 s, as long as terminate waits).
    let stopping = std::time::Instant::now();
    assert!(gateway.terminate().expect("terminate"));
    assert!(stopping.elapsed() < Duration::from_secs(6), "the stop took {:?}", stopping.elapsed());
    let end = loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable), "{end:?}");
}

/// A user of `tenant` through its database connection `db` for `client`: signs up with
/// `email` when `signup`, then logs in (which signs tokens with the tenant's sealed key).
async fn sign_up_and_log_in(
    admin: &mut postern_testkit::Clients,
    tenant: &str,
    client: &postern_proto::tenant::v1::Client,
    email: &str,
    signup: bool,
) -> Result<String, tonic::Status> {
    use postern_proto::authn::v1 as authn;
    if signup {
        admin
            .authn
            .signup(authn::SignupRequest {
                tenant: tenant.into(),
                client_id: client.client_id.clone(),
                connection: "db".into(),
                email: email.into(),
                password: "Wonder-Land-42!".into(),
                ..Default::default()
            })
            .await?;
    }
    let login = admin
        .authn
        .login(authn::LoginRequest {
            tenant: tenant.into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            connection: "db".into(),
            username: email.into(),
            password: "Wonder-Land-42!".into(),
            ..Default::default()
        })
        .await?;
    Ok(login.into_inner().id_token)
}

/// `postern backup` copies the SQLite databases while the server serves (it holds their
/// locks), never overwrites, and a server started on the copy (with the same master key)
/// has the tenant, its users and its sealed signing keys: a login there signs tokens.
#[tokio::test(flavor = "multi_thread")]
async fn backup_while_serving_and_restore() {
    use postern_proto::connections::v1 as conn;
    let temp = tempfile::tempdir().expect("tempdir");
    let (data, copy) = (temp.path().join("data"), temp.path().join("backup"));
    let server = Process::spawn(serve_command(&data, &[]), true).expect("serve");
    let mut admin = postern_testkit::Clients::new(postern_testkit::channel(server.grpc).await, ADMIN_KEY);
    admin.create_tenant("fabrikam").await.expect("tenant");
    let client = admin.create_client("fabrikam", "Portal").await.expect("client");
    let connection = conn::Connection {
        name: "db".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: "fabrikam".into(), connection: Some(connection) })
        .await
        .expect("connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: "fabrikam".into(),
            connection: "db".into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("enable");
    sign_up_and_log_in(&mut admin, "fabrikam", &client, "alice@fabrikam.example", true).await.expect("alice");

    // While the server runs: copied, each file, private.
    let out =
        output_within(postern(&["backup", "--data-dir"]).arg(&data).arg("--to").arg(&copy), Duration::from_secs(60))
            .expect("backup");
    assert!(out.status.success(), "{}", text(&out));
    for service in ["tenant", "registry", "authn"] {
        assert!(text(&out).contains(&format!("postern: {service}: ")), "{}", text(&out));
        let meta = std::fs::metadata(copy.join(format!("{service}.db"))).expect("copied");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077, 0, "{service}.db is private");
    }
    assert!(!copy.join("master-key").exists(), "the master key is never copied");
    // Written after the copy: not in it.
    sign_up_and_log_in(&mut admin, "fabrikam", &client, "bob@fabrikam.example", true).await.expect("bob");
    // Never overwritten.
    let again =
        output_within(postern(&["backup", "--data-dir"]).arg(&data).arg("--to").arg(&copy), Duration::from_secs(60))
            .expect("backup");
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));
    let empty = output_within(
        postern(&["backup", "--data-dir"]).arg(temp.path().join("nothing")).arg("--to").arg(temp.path().join("b2")),
        Duration::from_secs(60),
    )
    .expect("backup");
    assert!(!empty.status.success() && text(&empty).contains("holds no Postern database"), "{}", text(&empty));
    assert!(server.terminate().expect("terminate"));

    // Restored: a server on the copy serves alice (her hash, the tenant's sealed key), not bob.
    let restored = Process::spawn(serve_command(&copy, &[]), true).expect("serve the copy");
    let mut admin = postern_testkit::Clients::new(postern_testkit::channel(restored.grpc).await, ADMIN_KEY);
    let token =
        sign_up_and_log_in(&mut admin, "fabrikam", &client, "alice@fabrikam.example", false).await.expect("alice");
    assert_eq!(token.split('.').count(), 3, "an ID token signed with the restored key");
    let bob = sign_up_and_log_in(&mut admin, "fabrikam", &client, "bob@fabrikam.example", false).await;
    assert_eq!(bob.expect_err("bob came after the copy").code(), tonic::Code::Unauthenticated);
    assert!(restored.terminate().expect("terminate"));
}

/// `postern migrate` started before its database (a compose one-shot beside PostgreSQL, an
/// init container): it waits for the server to accept connections, then migrates; a server
/// that never comes fails it after `--wait-for-database`; an error that waiting cannot mend (a
/// database that does not exist) fails it at once.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_waits_for_a_database_that_is_still_starting() {
    use tokio::io::AsyncBufReadExt;
    let Some(base) = postgres("migrate_waits_for_a_database_that_is_still_starting") else { return };
    let db = TestDatabase::create(&base).await.expect("database");
    let upstream: std::net::SocketAddr = {
        let url = url::Url::parse(&db.url).expect("url");
        let host = url.host_str().expect("host");
        tokio::net::lookup_host((host, url.port().unwrap_or(5432))).await.expect("resolve").next().expect("an address")
    };
    // A port where nothing listens yet: the database "starting".
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut url = url::Url::parse(&db.url).expect("url");
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["migrate", "--database-url", url.as_str(), "--wait-for-database", "60"])
        .env("POSTERN_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("postern migrate starts");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    // It says it waits (the event this test waits on), and is still running.
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.expect("stderr") {
            if line.contains("waiting up to 60 s for the database") {
                return line;
            }
        }
        panic!("postern migrate ended without saying it waits")
    })
    .await
    .expect("it says it waits within 30 s");
    assert!(child.try_wait().expect("status").is_none(), "it waits rather than exits: {said}");
    // The database comes up: a proxy to the real server on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the port is still free");
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("it migrates within 120 s of the database coming up")
        .expect("output");
    assert!(out.status.success(), "postern migrate: {}", text(&out));
    assert!(text(&out).contains("postern: authn: applied "), "{}", text(&out));
    proxy.abort();

    // Nothing there for the whole wait: it fails, saying so, after about a second.
    let started = Instant::now();
    let out = output_within(
        &mut postern(&["migrate", "--database-url", url.as_str(), "--wait-for-database", "1"]),
        Duration::from_secs(60),
    )
    .expect("postern migrate");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot reach the database"), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited {:?}", started.elapsed());
    // A database that does not exist is not waited for.
    let mut missing = url::Url::parse(&db.url).expect("url");
    missing.set_path("/postern_no_such_database");
    let started = Instant::now();
    let out = output_within(
        &mut postern(&["migrate", "--database-url", missing.as_str(), "--wait-for-database", "60"]),
        Duration::from_secs(60),
    )
    .expect("postern migrate");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("waiting up to"), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a missing database failed only after {:?}",
        started.elapsed()
    );
    db.drop_db().await.expect("drop");
}
