//! Federated logins end to end against npm's `oidc-provider` on loopback
//! (`tests/node/upstream.mjs`, the upstream of `tests/federation.rs`), as a browser and the
//! application's back end do them:
//!
//! 1. `GET /<tenant>/authorize?connection=upstream` — Postern starts the upstream login
//!    transaction and redirects to the upstream;
//! 2. the upstream's authorization endpoint, its login page and its redirect back — the
//!    upstream alone;
//! 3. `GET /<tenant>/login/callback` — Postern checks the state, exchanges the code at the
//!    upstream's token endpoint, validates the ID token (keys cached), upserts the user,
//!    starts the session and redirects to the application with its code;
//! 4. `POST /<tenant>/oauth/token` — the application exchanges its code for tokens.
//!
//! A fresh cookie jar each time, so that no session at either side skips a step. Postern's
//! three requests go over the load generator's keep-alive connections, as a browser and a
//! back end keep theirs (and as Postern behind an ingress sees pooled ones); the upstream's
//! pages, not Postern's time, over a connection each.
//!
//! Printed: logins per second at the configured concurrency, and beside it the share of the
//! time spent in Postern, measured two ways:
//!
//! - **Wall time, one login at a time** (no queueing): Postern's own time per login is the
//!   time the client waits on Postern's three requests (1, 3, 4), minus the time the upstream
//!   itself spent serving the token request Postern makes inside step 3 (the upstream
//!   measures each request from arrival to answer, `token_ms` of `/__test/stats`). What is
//!   left is Postern's work plus loopback HTTP between the processes, and its waits on the
//!   disk. Target: under 2 ms. The mean of each of the three requests is printed beside the
//!   sum.
//! - **CPU time**: with `--own-runtime`, the CPU time of Postern's threads per login
//!   (Postern then runs in this process on a runtime of its own,
//!   [`crate::stats::server_runtime`], apart from the load generator's HTTP client and HTML
//!   parsing), one login at a time (target: under 2 ms) and at full concurrency; beside it
//!   this process's and the upstream node process's (`/proc/<pid>/stat`).

use std::time::{Duration, Instant};

use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::Suite;
use postern_testkit::upstream::{Back, Upstream};

use crate::browser::{Visit, encode_form};
use crate::oauth::{Http, http, post_form};
use crate::stats::{cpu_in, measure, process_cpu, server_cpu};

const TENANT: &str = "bench-federation";
/// Where the application is sent back: nothing listens there; the bench reads the redirect.
const CALLBACK: &str = "http://127.0.0.1:9/callback";
/// Distinct upstream accounts: after the first round every login is a returning user's.
const ACCOUNTS: usize = 64;

/// What the bench logs in through.
#[derive(Clone)]
struct Setup {
    http: std::net::SocketAddr,
    /// The keep-alive connections Postern's requests go over.
    client: Http,
    upstream: &'static Upstream,
    web: tenant::Client,
}

/// Where one login's wall time went, as the client saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    /// Waiting on Postern: `/authorize`, `/login/callback` (which includes the upstream's
    /// token endpoint) and `/oauth/token`.
    postern: Duration,
    /// Of which `/authorize`, `/login/callback` and `/oauth/token`.
    steps: [Duration; 3],
    /// Waiting on the upstream's own pages.
    upstream: Duration,
}

async fn setup(upstream: &'static Upstream, callers: usize) -> anyhow::Result<(Suite, Setup)> {
    let suite = Suite::start_on(&crate::stats::server_runtime(), |_| {}).await?;
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await?;
    let web = admin
        .clients
        .create_client(tenant::CreateClientRequest {
            tenant: TENANT.into(),
            client: Some(tenant::Client {
                name: "Portal".into(),
                app_type: tenant::AppType::RegularWeb as i32,
                callbacks: vec![CALLBACK.into()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .client
        .ok_or_else(|| anyhow::anyhow!("no client in the answer"))?;
    let callback = format!("http://{}/{TENANT}/login/callback", suite.http);
    let (id, secret) = upstream.register_client(&callback, "client_secret_basic").await?;
    let connection = conn::Connection {
        name: "upstream".into(),
        strategy: "oidc".into(),
        options: Some(conn::connection::Options::Oidc(conn::OidcOptions {
            issuer: upstream.issuer.clone(),
            client_id: id,
            client_secret: secret,
            scopes: vec!["email".into(), "profile".into()],
            ..Default::default()
        })),
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
            connection: "upstream".into(),
            client_id: web.client_id.clone(),
        })
        .await?;
    let http_addr = suite.http;
    Ok((suite, Setup { http: http_addr, client: http(callers), upstream, web }))
}

/// One federated login of account `worker % ACCOUNTS`, timed per side.
async fn login(s: &Setup, worker: usize) -> anyhow::Result<Split> {
    let mut authorize = url::Url::parse(&format!("http://{}/{TENANT}/authorize", s.http))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &s.web.client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", "openid profile email")
        .append_pair("state", &worker.to_string())
        .append_pair("connection", "upstream");
    let mut visit = Visit::new(&s.client);
    let t0 = Instant::now();
    let start = visit.send(http::Method::GET, &authorize, None).await?;
    let t1 = Instant::now();
    let to_upstream = start
        .location()
        .filter(|l| start.status == 303 && l.starts_with(&s.upstream.issuer))
        .ok_or_else(|| anyhow::anyhow!("/authorize answered {} without a redirect to the upstream", start.status))?
        .to_owned();
    let back = s.upstream.log_in(&mut visit.jar, &to_upstream, &format!("account{}", worker % ACCOUNTS), false).await?;
    let t2 = Instant::now();
    let done = match &back {
        Back::Redirect(u) => visit.send(http::Method::GET, &url::Url::parse(u)?, None).await?,
        Back::FormPost { action, fields } => {
            visit.send(http::Method::POST, &url::Url::parse(action)?, Some(encode_form(fields))).await?
        }
    };
    let t3 = Instant::now();
    let to_app = done
        .location()
        .filter(|l| done.status == 303 && l.starts_with(CALLBACK))
        .ok_or_else(|| anyhow::anyhow!("the callback answered {}: {}", done.status, done.body))?;
    let code = url::Url::parse(to_app)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow::anyhow!("no code in {to_app}"))?;
    let fields = encode_form([
        ("grant_type", "authorization_code"),
        ("client_id", s.web.client_id.as_str()),
        ("client_secret", s.web.client_secret.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
    ]);
    // The application's back end exchanges the code: no browser cookies.
    let t4 = Instant::now();
    let (status, body) = post_form(&s.client, &format!("http://{}/{TENANT}/oauth/token", s.http), fields).await?;
    let t5 = Instant::now();
    anyhow::ensure!(
        status == 200 && String::from_utf8_lossy(&body).contains("id_token"),
        "the exchange answered {status}"
    );
    let steps = [t1 - t0, t3 - t2, t5 - t4];
    Ok(Split { postern: steps.iter().sum(), steps, upstream: t2 - t1 })
}

/// The upstream's own measure of the time it spent serving: (all requests, token requests).
async fn upstream_busy(upstream: &Upstream) -> anyhow::Result<(Duration, Duration)> {
    let stats = upstream.stats().await?;
    let ms = |k: &str| Duration::from_secs_f64(stats[k].as_f64().unwrap_or(0.0) / 1e3);
    Ok((ms("busy_ms"), ms("token_ms")))
}

/// The CPU time (user and system) process `pid` has used, on Linux.
fn cpu_of(pid: u32) -> Option<Duration> {
    cpu_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== federation: federated logins end to end (authorize → upstream → callback → code → token)");
    let Some(upstream) = Upstream::shared("postern-bench --only federation") else {
        println!("  SKIPPED: npm oidc-provider is not available (node and `npm ci` in tests/node)");
        return Ok(());
    };
    let (suite, s) = setup(upstream, args.concurrency.max(1)).await?;
    // Checked logins first, one per account: a broken flow would otherwise measure errors,
    // and afterwards every login is a returning user's.
    for w in 0..ACCOUNTS {
        login(&s, w).await?;
    }

    // One login at a time: where the wall time goes.
    let window = Duration::from_secs(args.seconds);
    let (busy0, token0) = upstream_busy(upstream).await?;
    let postern0 = server_cpu();
    let mut splits = Vec::new();
    let began = Instant::now();
    while began.elapsed() < window {
        splits.push(login(&s, splits.len()).await?);
    }
    let postern_cpu = server_cpu().zip(postern0).map(|(b, a)| b.saturating_sub(a));
    let (busy1, token1) = upstream_busy(upstream).await?;
    let n = u32::try_from(splits.len()).unwrap_or(u32::MAX).max(1);
    let total: Duration = splits.iter().map(|x| x.postern + x.upstream).sum::<Duration>() / n;
    let at_postern: Duration = splits.iter().map(|x| x.postern).sum::<Duration>() / n;
    let upstream_token = (token1.saturating_sub(token0)) / n;
    let upstream_all = (busy1.saturating_sub(busy0)) / n;
    let own = at_postern.saturating_sub(upstream_token);
    let mut owns: Vec<Duration> = splits.iter().map(|x| x.postern.saturating_sub(upstream_token)).collect();
    owns.sort_unstable();
    let p50 = owns[owns.len() / 2];
    println!(
        "  one login at a time, {} logins in {} s ({:.0} logins/s):",
        splits.len(),
        args.seconds,
        f64::from(n) / window.as_secs_f64()
    );
    println!("    a login end to end (client side)            {:>7.2} ms", ms(total));
    println!("    waiting on Postern's 3 requests              {:>7.2} ms", ms(at_postern));
    let step = |i: usize| splits.iter().map(|x| x.steps[i]).sum::<Duration>() / n;
    println!("      GET /authorize                             {:>7.2} ms", ms(step(0)));
    println!("      GET /login/callback                        {:>7.2} ms", ms(step(1)));
    println!(
        "        of which the upstream's token endpoint   {:>7.2} ms (measured by the upstream)",
        ms(upstream_token)
    );
    println!("      POST /oauth/token                          {:>7.2} ms", ms(step(2)));
    println!(
        "    the upstream serving all its requests        {:>7.2} ms (measured by the upstream)",
        ms(upstream_all)
    );
    println!(
        "  Postern's own time = {:.2} ms per login (mean; median {:.2} ms less the mean token time) = {:.0}% of the login (target < 2 ms: {})",
        ms(own),
        ms(p50),
        100.0 * own.as_secs_f64() / total.as_secs_f64().max(1e-9),
        if own < Duration::from_millis(2) { "met" } else { "NOT met" }
    );
    match postern_cpu.map(|c| c / n) {
        Some(cpu) => println!(
            "  Postern's own CPU time = {:.2} ms per login (its threads, one login at a time; target < 2 ms: {})",
            ms(cpu),
            if cpu < Duration::from_millis(2) { "met" } else { "NOT met" }
        ),
        None => println!("  Postern's own CPU time: measured with --own-runtime"),
    }

    // Throughput at the configured concurrency, with the CPU split between the processes.
    let callers = args.concurrency.max(1);
    let node0 = cpu_of(upstream.pid());
    let self0 = process_cpu();
    let s2 = s.clone();
    let m = measure(callers, Duration::from_secs(1), window, move |w| {
        let s = s2.clone();
        async move { login(&s, w).await.is_ok() }
    })
    .await;
    let node = cpu_of(upstream.pid()).zip(node0).map(|(b, a)| b.saturating_sub(a));
    let this = process_cpu().zip(self0).map(|(b, a)| b.saturating_sub(a));
    println!("  {callers} concurrent callers, {} s:", args.seconds);
    println!("    federated logins                      {}", m.line().replace("calls/s", "logins/s"));
    // The windows of the two CPU readings include the warm-up; the per-login figure of the
    // measurement itself is over the measured window only.
    if let (Some(node), Some(this)) = (node, this) {
        let share = this.as_secs_f64() / (this + node).as_secs_f64().max(1e-9);
        let whose = match m.server_cpu_per_call {
            Some(_) => format!("of which Postern's threads {} ms", m.server_cpu_ms()),
            None => "Postern and the load generator".to_owned(),
        };
        println!(
            "    CPU per login: this process {} ms ({whose}); CPU share: this process {:.0}%, the upstream (node) {:.0}%",
            m.cpu_ms(),
            100.0 * share,
            100.0 * (1.0 - share)
        );
    } else {
        println!("    CPU per login: this process {} ms (the upstream's CPU time is not readable here)", m.cpu_ms());
    }
    suite.stop().await?;
    Ok(())
}
