//! The authenticator's cost: the raw Argon2id verify rate at the configured parameters
//! against end-to-end logins per second through the gateway (target: logins reach at least
//! 90% of the raw rate, so that everything but the hash costs under 10%), and logins with
//! the connection cache warm against the registry asked on every login.
//!
//! All in this process on loopback: `postern serve` twice (one with the connection cache
//! off), each with a tenant, a confidential client, a database connection and 32 users; every
//! caller logs in as its own user from its own address.

use std::time::Duration;

use postern_connector_database::password;
use postern_proto::authn::v1 as authn;
use postern_proto::authn::v1::authentication_service_client::AuthenticationServiceClient;
use postern_proto::connections::v1 as conn;
use postern_testkit::{Authed, Clients, Suite, http_get};

use crate::stats::{call, interleaved};

const TENANT: &str = "bench-authn";
const USERS: usize = 32;
const PASSWORD: &str = "Bench-Mark-2026!";
/// Rounds per path: hashing is slow, so more rounds even out the background load.
const ROUNDS: u32 = 12;

struct Setup {
    suite: Suite,
    client: AuthenticationServiceClient<Authed>,
    client_id: String,
    secret: String,
}

async fn setup(cache: bool) -> anyhow::Result<Setup> {
    let suite = Suite::start_on(&crate::stats::server_runtime(), |s| s.connection_cache = cache).await?;
    let mut admin: Clients = suite.admin().await;
    admin.create_tenant(TENANT).await?;
    let client = admin.create_client(TENANT, "Bench").await?;
    let connection = conn::Connection {
        name: "db".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: TENANT.into(), connection: Some(connection) })
        .await?;
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "db".into(),
            client_id: client.client_id.clone(),
        })
        .await?;
    for i in 0..USERS {
        admin
            .authn
            .signup(authn::SignupRequest {
                tenant: TENANT.into(),
                client_id: client.client_id.clone(),
                connection: "db".into(),
                email: format!("user{i}@bench.example"),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await?;
    }
    Ok(Setup { client: admin.authn.clone(), suite, client_id: client.client_id, secret: client.client_secret })
}

fn login(s: &Setup, worker: usize) -> authn::LoginRequest {
    authn::LoginRequest {
        tenant: TENANT.into(),
        client_id: s.client_id.clone(),
        client_secret: s.secret.clone(),
        connection: "db".into(),
        username: format!("user{}@bench.example", worker % USERS),
        password: PASSWORD.into(),
        ip: format!("198.51.100.{}", worker % 250),
        ..Default::default()
    }
}

async fn resolutions(s: &Setup) -> f64 {
    counter(s, "postern_authn_connection_resolutions_total").await
}

async fn counter(s: &Setup, name: &str) -> f64 {
    let Ok((_, _, body)) = http_get(s.suite.management, "/metrics").await else { return 0.0 };
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!(
        "\n== authn: Argon2id verify (m={} KiB, t={}, p={}) vs logins through the gateway",
        password::ARGON2_M_COST,
        password::ARGON2_T_COST,
        password::ARGON2_P_COST
    );
    let warm = setup(true).await?;
    let cold = setup(false).await?;
    let phc = password::hash(PASSWORD)?;

    // The same turns as the server's: one hash per core.
    let hashing = std::sync::Arc::new(password::Hashing::default());
    let raw = move |_w: usize| {
        let (phc, hashing) = (phc.clone(), hashing.clone());
        async move { matches!(hashing.verify(PASSWORD.to_owned(), Some(phc)).await, Ok(true)) }
    };
    let via = |s: &Setup| {
        let client = s.client.clone();
        let requests: Vec<authn::LoginRequest> = (0..args.concurrency.max(1)).map(|w| login(s, w)).collect();
        move |w: usize| {
            let mut client = client.clone();
            let req = requests[w % requests.len()].clone();
            async move { client.login(req).await.is_ok() }
        }
    };
    // Hashing keeps a core busy per call: four callers per core keep every core busy while
    // others wait on I/O; more would only queue (and stretch calls past the windows. edges).
    let n = args.concurrency.min(4 * crate::num_cpus()).max(1);
    let paths = [call(raw), call(via(&warm)), call(via(&cold))];
    let names = [
        "raw Argon2id verify                           ",
        "logins through the gateway (cache warm)       ",
        "logins through the gateway (registry per call)",
    ];
    // Twice the usual time: a few dozen hashes per second need it for a stable figure.
    let seconds = 2 * args.seconds;
    println!("  {n} concurrent callers, {seconds} s per path ({ROUNDS} rounds, interleaved):");
    let m = interleaved(n, Duration::from_secs(seconds), ROUNDS, &paths).await;
    for (name, m) in names.iter().zip(&m) {
        println!("    {name} {}   {}", m.line().replace("calls/s", "per s  "), m.cpu_split());
    }
    println!(
        "  logins (cache warm) = {:.1}% of the raw verify rate (target >= 90%)",
        100.0 * m[1].throughput / m[0].throughput.max(1e-9)
    );
    // The rate moves with whatever else the machine runs; the CPU a call costs this process
    // moves less, so it tells the story more steadily.
    if let (Some(hash), Some(login)) = (m[0].cpu_per_call, m[1].cpu_per_call) {
        println!(
            "  CPU per login beyond the hash: {:.2} ms ({:.1}% of a login's CPU)",
            login.saturating_sub(hash).as_secs_f64() * 1e3,
            100.0 * (1.0 - hash.as_secs_f64() / login.as_secs_f64().max(1e-9)),
        );
    }
    println!(
        "  cache warm vs registry per login: {:.0} vs {:.0} logins/s ({:+.1}%)",
        m[1].throughput,
        m[2].throughput,
        100.0 * (m[1].throughput / m[2].throughput.max(1e-9) - 1.0)
    );
    // The hash hides the registry call; the same path without it (an empty password is
    // refused after the client check and the connection's resolution, before any hashing)
    // shows what the cache saves.
    let front = |s: &Setup| {
        let client = s.client.clone();
        let requests: Vec<authn::LoginRequest> = (0..args.concurrency.max(1))
            .map(|w| authn::LoginRequest { password: String::new(), ..login(s, w) })
            .collect();
        move |w: usize| {
            let mut client = client.clone();
            let req = requests[w % requests.len()].clone();
            async move { client.login(req).await.is_err_and(|e| e.code() == tonic::Code::Unauthenticated) }
        }
    };
    let fronts = [call(front(&warm)), call(front(&cold))];
    let f = interleaved(n, Duration::from_secs(args.seconds), ROUNDS, &fronts).await;
    println!("  the login path without the hash (client check, connection, refusal), {n} callers:");
    println!("    cache warm          {}", f[0].line());
    println!("    registry per call   {}", f[1].line());
    println!(
        "  the cache: {:+.0}% throughput, {:+.0} µs at p50 on the path without the hash",
        100.0 * (f[0].throughput / f[1].throughput.max(1e-9) - 1.0),
        crate::stats::micros(f[0].p50) - crate::stats::micros(f[1].p50)
    );
    // How often each set-up asked the registry, over 50 sequential logins; and how often
    // the warm one asked the tenant service (the client check, remembered until the tenant
    // event log says the client changed). The metrics recorder is one per process, so the
    // client-check counter is read around the warm logins only.
    for (label, s) in [("cache warm", &warm), ("registry per call", &cold)] {
        let before = resolutions(s).await;
        let checks = counter(s, "postern_authn_client_checks_total").await;
        let mut client = s.client.clone();
        for w in 0..50 {
            client.login(login(s, w)).await?;
        }
        let after = resolutions(s).await;
        println!("  registry calls per login ({label}): {:.2}", (after - before) / 50.0);
        if label == "cache warm" {
            let asked = counter(s, "postern_authn_client_checks_total").await - checks;
            println!("  tenant service calls per login ({label}): {:.2}", asked / 50.0);
        }
    }
    warm.suite.stop().await?;
    cold.suite.stop().await?;
    Ok(())
}
