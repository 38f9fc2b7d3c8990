//! The soak (`--soak [--minutes N]`, issue 10): mixed traffic for N minutes (default 10)
//! against a real `postern serve` this program starts on a fresh data directory — logins,
//! signups (and deletions of the new users), `client_credentials` at the token endpoint,
//! management reads and writes, JWKS fetches, and hostile-ish inputs (an undecodable
//! message, a malformed connection name, 10,000 bad `update_mask` paths, a `Struct` nested
//! too deep, a wrong password, a missing tenant) whose refusals are expected.
//!
//! It prints the calls made, the errors (answers the traffic did not expect: a refusal it
//! expected is not one) and the server's resident memory at the start, every minute and at
//! the end, and exits non-zero when there was any error.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::{ADMIN_KEY, Clients, MASTER_KEY, Process, channel};
use tonic::Code;

use crate::oauth::{AUDIENCE, TENANT, has_jwt_access_token, http, populate, post_form, urlencode};

/// The operations of the mix, each with how often it comes in a round of [`MIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Login,
    ClientCredentials,
    Jwks,
    GetTenant,
    ListUsers,
    ClientLifecycle,
    UpdateTenant,
    SignupAndDelete,
    BadConnectionName,
    Undecodable,
    HugeUpdateMask,
    DeepStruct,
    WrongPassword,
    MissingTenant,
    HugeField,
}

/// One round of the mix: cheap reads often, password hashing (logins, signups) less.
const MIX: &[Op] = &[
    Op::Login,
    Op::ClientCredentials,
    Op::Jwks,
    Op::GetTenant,
    Op::ListUsers,
    Op::ClientCredentials,
    Op::Jwks,
    Op::ClientLifecycle,
    Op::UpdateTenant,
    Op::GetTenant,
    Op::BadConnectionName,
    Op::Undecodable,
    Op::HugeUpdateMask,
    Op::DeepStruct,
    Op::MissingTenant,
    Op::SignupAndDelete,
    Op::WrongPassword,
    Op::Jwks,
];

/// The hostile-input mix alone (`--mix hostile`), each call on a new connection: what the
/// probe of issue 10 sent, to watch the server's memory under it.
const HOSTILE: &[Op] =
    &[Op::Undecodable, Op::DeepStruct, Op::HugeUpdateMask, Op::HugeField, Op::BadConnectionName, Op::MissingTenant];

const PASSWORD: &str = "Bench-Mark-2026!";

/// What every caller shares.
struct Shared {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    m2m: tenant::Client,
    web: tenant::Client,
    calls: AtomicU64,
    errors: AtomicU64,
    /// The first errors, printed as they happen (a few, not a flood).
    printed: AtomicU64,
}

impl Shared {
    fn outcome(&self, op: Op, ok: Result<(), String>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(why) = ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if self.printed.fetch_add(1, Ordering::Relaxed) < 20 {
                println!("  ERROR {op:?}: {why}");
            }
        }
    }
}

/// `Ok` when `answer` is a success.
fn ok<T>(answer: Result<T, tonic::Status>) -> Result<T, String> {
    answer.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// `Ok` when `answer` is the refusal `code`.
fn refused<T>(answer: Result<T, tonic::Status>, code: Code) -> Result<(), String> {
    match answer {
        Err(s) if s.code() == code => Ok(()),
        Err(s) => Err(format!("expected {code:?}, got {:?}: {}", s.code(), s.message())),
        Ok(_) => Err(format!("expected {code:?}, got a success")),
    }
}

fn login_request(s: &Shared, user: usize, password: &str) -> authn::LoginRequest {
    authn::LoginRequest {
        tenant: TENANT.into(),
        client_id: s.web.client_id.clone(),
        client_secret: s.web.client_secret.clone(),
        connection: "db".into(),
        username: format!("user{user}@bench.example"),
        password: password.into(),
        ..Default::default()
    }
}

fn nested(depth: usize) -> prost_types::Struct {
    let mut st = prost_types::Struct::default();
    for _ in 1..depth {
        let inner = prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(st)) };
        st = prost_types::Struct { fields: [("a".to_owned(), inner)].into() };
    }
    st
}

/// One call of `op` by caller `w` (its `i`th), checked against what it should answer.
async fn one(
    s: &Shared,
    admin: &mut Clients,
    web: &crate::oauth::Http,
    op: Op,
    w: usize,
    i: u64,
) -> Result<(), String> {
    match op {
        Op::Login => {
            // Users 0..30 log in; 31 is the one the wrong passwords are tried on.
            let answer = ok(admin.authn.login(login_request(s, w % 31, PASSWORD)).await)?.into_inner();
            answer.user.map(|_| ()).ok_or_else(|| "no user in the login's answer".to_owned())
        }
        Op::WrongPassword => {
            // Wrong credentials (UNAUTHENTICATED), then, after ten in a row, the user blocked from
            // this address (RESOURCE_EXHAUSTED): both expected.
            let mut req = login_request(s, 31, "not-the-password");
            req.ip = "198.51.100.7".into();
            match admin.authn.login(req).await {
                Err(e) if matches!(e.code(), Code::Unauthenticated | Code::ResourceExhausted) => Ok(()),
                Err(e) => {
                    Err(format!("expected UNAUTHENTICATED or RESOURCE_EXHAUSTED, got {:?}: {}", e.code(), e.message()))
                }
                Ok(_) => Err("a wrong password logged in".to_owned()),
            }
        }
        Op::ClientCredentials => {
            let form = format!(
                "grant_type=client_credentials&client_id={}&client_secret={}&audience={}",
                s.m2m.client_id,
                urlencode(&s.m2m.client_secret),
                urlencode(AUDIENCE)
            );
            let url = format!("http://{}/{TENANT}/oauth/token", s.http);
            let (status, body) = post_form(web, &url, form).await.map_err(|e| e.to_string())?;
            has_jwt_access_token(status, &body)
                .then_some(())
                .ok_or_else(|| format!("token endpoint answered {status}: {}", String::from_utf8_lossy(&body)))
        }
        Op::Jwks => {
            use http_body_util::{BodyExt, Full};
            let url = format!("http://{}/{TENANT}/.well-known/jwks.json", s.http);
            let req = http::Request::get(url).body(Full::new(bytes::Bytes::new())).map_err(|e| e.to_string())?;
            let resp = web.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let keys = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(Vec::len))
                .unwrap_or(0);
            (status == 200 && keys > 0).then_some(()).ok_or_else(|| format!("JWKS answered {status} with {keys} keys"))
        }
        Op::GetTenant => {
            ok(admin.tenants.get_tenant(tenant::GetTenantRequest { name: TENANT.into() }).await).map(|_| ())
        }
        Op::ListUsers => {
            let req = authn::ListUsersRequest { tenant: TENANT.into(), page_size: 50, ..Default::default() };
            let users = ok(admin.users.list_users(req).await)?.into_inner().users;
            (users.len() >= 30).then_some(()).ok_or_else(|| format!("ListUsers answered {} users", users.len()))
        }
        Op::ClientLifecycle => {
            let c = ok(admin.create_client(TENANT, &format!("Soak {w}-{i}")).await)?;
            let req = tenant::DeleteClientRequest { tenant: TENANT.into(), client_id: c.client_id };
            ok(admin.clients.delete_client(req).await).map(|_| ())
        }
        Op::UpdateTenant => {
            let req = tenant::UpdateTenantRequest {
                tenant: Some(tenant::Tenant {
                    name: TENANT.into(),
                    display_name: format!("Bench {w}-{i}"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            };
            ok(admin.tenants.update_tenant(req).await).map(|_| ())
        }
        Op::SignupAndDelete => {
            let req = authn::SignupRequest {
                tenant: TENANT.into(),
                client_id: s.web.client_id.clone(),
                connection: "db".into(),
                email: format!("soak-{w}-{i}@bench.example"),
                password: PASSWORD.into(),
                ..Default::default()
            };
            let user = ok(admin.authn.signup(req).await)?.into_inner().user.unwrap_or_default();
            let req = authn::DeleteUserRequest { tenant: TENANT.into(), user_id: user.user_id };
            ok(admin.users.delete_user(req).await).map(|_| ())
        }
        Op::BadConnectionName => {
            let mut req = login_request(s, 0, PASSWORD);
            req.connection = "Bad_Name".into();
            refused(admin.authn.login(req).await, Code::InvalidArgument)
        }
        Op::Undecodable => {
            // `GetTenant` with a string field holding invalid UTF-8.
            refused(
                raw_call(s.grpc, "/postern.tenant.v1.TenantService/GetTenant", vec![0x0a, 0x02, 0xff, 0xfe]).await,
                Code::InvalidArgument,
            )
        }
        Op::HugeUpdateMask => {
            let paths = (0..10_000).map(|k| format!("no_such_field_{k}")).collect();
            let req = tenant::UpdateTenantRequest {
                tenant: Some(tenant::Tenant { name: TENANT.into(), ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            refused(admin.tenants.update_tenant(req).await, Code::InvalidArgument)
        }
        Op::DeepStruct => {
            let req = authn::SignupRequest {
                tenant: TENANT.into(),
                client_id: s.web.client_id.clone(),
                connection: "db".into(),
                email: format!("deep-{w}-{i}@bench.example"),
                password: PASSWORD.into(),
                user_metadata: Some(nested(200)),
                ..Default::default()
            };
            refused(admin.authn.signup(req).await, Code::InvalidArgument)
        }
        Op::HugeField => {
            // A 1 MB audience.
            let mut req = login_request(s, 0, PASSWORD);
            req.audience = "a".repeat(1_000_000);
            refused(admin.authn.login(req).await, Code::InvalidArgument)
        }
        Op::MissingTenant => refused(
            admin.tenants.get_tenant(tenant::GetTenantRequest { name: format!("no-such-tenant-{w}") }).await,
            Code::NotFound,
        ),
    }
}

async fn raw_call(grpc: std::net::SocketAddr, path: &str, bytes: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel(grpc).await);
    client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(bytes);
    let bearer = format!("Bearer {ADMIN_KEY}").parse().map_err(|_| tonic::Status::internal("key"))?;
    req.metadata_mut().insert("authorization", bearer);
    let path =
        http::uri::PathAndQuery::try_from(path.to_owned()).map_err(|e| tonic::Status::internal(e.to_string()))?;
    client.unary(req, path, postern_testkit::raw::RawCodec).await.map(tonic::Response::into_inner)
}

/// The resident memory of process `pid` (VmRSS), in MB.
pub(crate) fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The `postern` binary: `explicit`, else the one built beside this program.
pub(crate) fn postern_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("postern");
    anyhow::ensure!(
        beside.exists(),
        "{} not found: build it too (`cargo build --release -p postern -p postern-bench`) or pass --postern",
        beside.display()
    );
    Ok(beside)
}

/// Runs the soak; answers whether it saw no error.
pub async fn run(minutes: f64, concurrency: usize, postern: Option<PathBuf>, hostile: bool) -> anyhow::Result<bool> {
    let mix = if hostile { HOSTILE } else { MIX };
    let binary = postern_binary(postern)?;
    let data = tempfile::tempdir()?;
    let mut cmd = Command::new(&binary);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("POSTERN_ADMIN_KEY", ADMIN_KEY)
        .env("POSTERN_MASTER_KEY", MASTER_KEY)
        // The per-key rate limit would refuse the admin key's load; this soaks the rest.
        .env("POSTERN_RATE_LIMIT", "0")
        .env("POSTERN_LOG", "warn");
    let server = Process::spawn(cmd, true)?;
    let pid = server.id();
    let http_addr = server.http.ok_or_else(|| anyhow::anyhow!("no HTTP address"))?;
    let kind = if hostile { "hostile-input" } else { "mixed" };
    println!("\n== soak: {minutes} minutes of {kind} traffic, {concurrency} callers, {} (pid {pid})", binary.display());
    let rss_start = rss_mb(pid);
    println!("  RSS at start (idle, empty): {rss_start:.1} MB");
    let mut admin = Clients::new(channel(server.grpc).await, ADMIN_KEY);
    let (m2m, web) = populate(&mut admin).await?;
    println!("  RSS after set-up (tenant, 2 clients, 32 users): {:.1} MB", rss_mb(pid));
    let shared = Arc::new(Shared {
        grpc: server.grpc,
        http: http_addr,
        m2m,
        web,
        calls: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        printed: AtomicU64::new(0),
    });
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let mut callers = Vec::new();
    for w in 0..concurrency.max(1) {
        let s = shared.clone();
        // A channel per caller: as many HTTP/2 connections as callers.
        let mut admin = Clients::new(channel(s.grpc).await, ADMIN_KEY);
        callers.push(tokio::spawn(async move {
            let web = http(1);
            let mut i: u64 = 0;
            while Instant::now() < until {
                let op = mix[(w + i as usize) % mix.len()];
                if hostile {
                    // Many connections: a new one for each call.
                    admin = Clients::new(channel(s.grpc).await, ADMIN_KEY);
                }
                let outcome = one(&s, &mut admin, &web, op, w, i).await;
                s.outcome(op, outcome);
                i += 1;
            }
        }));
    }
    let mut samples = vec![rss_mb(pid)];
    let (mut last_calls, mut last_time) = (0, started);
    for minute in 1.. {
        let next = (started + Duration::from_secs(60 * minute)).min(until);
        tokio::time::sleep_until(next.into()).await;
        let (calls, errors) = (shared.calls.load(Ordering::Relaxed), shared.errors.load(Ordering::Relaxed));
        let rss = rss_mb(pid);
        samples.push(rss);
        let period = last_time.elapsed().as_secs_f64().max(1e-3);
        println!(
            "  {:>5.1} min: {calls:>8} calls ({:>6.0}/s this period), {errors} errors, RSS {rss:.1} MB",
            started.elapsed().as_secs_f64() / 60.0,
            (calls - last_calls) as f64 / period,
        );
        (last_calls, last_time) = (calls, Instant::now());
        if next >= until {
            break;
        }
    }
    for c in callers {
        c.await?;
    }
    let (calls, errors) = (shared.calls.load(Ordering::Relaxed), shared.errors.load(Ordering::Relaxed));
    let rss_end = rss_mb(pid);
    let middle = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "  soak result: {calls} calls in {:.1} min, {errors} errors; RSS start {rss_start:.1} MB, middle {middle:.1} MB, end {rss_end:.1} MB",
        started.elapsed().as_secs_f64() / 60.0
    );
    // What stays once the traffic is over: the caches and working memory that are let go
    // when idle (Argon2's areas after 30 s) are gone after this.
    tokio::time::sleep(Duration::from_secs(35)).await;
    println!("  RSS 35 s after the traffic ended: {:.1} MB", rss_mb(pid));
    let stopped = server.terminate()?;
    println!("  SIGTERM: {}", if stopped { "stopped cleanly" } else { "did NOT stop cleanly" });
    Ok(errors == 0 && stopped)
}
