//! Memory under a login burst (issue 14): a real `postern serve` (the binary beside this
//! program, as for the soak) on a fresh data directory takes bursts of concurrent logins,
//! once with password hashing bounded (`--hash-concurrency 0`: one hash per core, the
//! default) and once effectively unbounded (`--hash-concurrency` as large as the burst, as
//! before the bound). Each Argon2id hash holds 19 MiB while it runs, so the peak resident
//! memory (the kernel's `VmHWM` of the server) grows with the hashes running at once.
//! Printed per run: RSS idle and after set-up, the peak, logins per second and their
//! latency, and the logins refused (none expected: the queue's deadline is 60 s here).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_testkit::{ADMIN_KEY, Clients, MASTER_KEY, Process, channel};

use crate::oauth::{TENANT, populate};
use crate::soak::{postern_binary, rss_mb};

const PASSWORD: &str = "Bench-Mark-2026!";
/// The users `populate` signs up.
const USERS: usize = 32;

/// A line of `/proc/<pid>/status` in MB (`VmHWM`: the peak resident set).
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One run: `burst` concurrent callers, `rounds` logins each, against a server hashing
/// `concurrency` at once (0: one per core).
async fn one(binary: &PathBuf, concurrency: usize, burst: usize, rounds: usize) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut cmd = Command::new(binary);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("POSTERN_ADMIN_KEY", ADMIN_KEY)
        .env("POSTERN_MASTER_KEY", MASTER_KEY)
        .env("POSTERN_RATE_LIMIT", "0")
        .env("POSTERN_HASH_CONCURRENCY", concurrency.to_string())
        .env("POSTERN_HASH_QUEUE_TIMEOUT_MS", "60000")
        .env("POSTERN_LOG", "warn");
    let server = Process::spawn(cmd, true)?;
    let pid = server.id();
    let idle = rss_mb(pid);
    let mut admin = Clients::new(channel(server.grpc).await, ADMIN_KEY);
    let (_, web) = populate(&mut admin).await?;
    let set_up = rss_mb(pid);
    let web = Arc::new(web);
    let started = Instant::now();
    let mut callers = Vec::new();
    for w in 0..burst {
        let web = web.clone();
        let mut authn = Clients::new(channel(server.grpc).await, ADMIN_KEY).authn;
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(rounds);
            let mut refused = 0usize;
            for r in 0..rounds {
                let request = authn::LoginRequest {
                    tenant: TENANT.into(),
                    client_id: web.client_id.clone(),
                    client_secret: web.client_secret.clone(),
                    connection: "db".into(),
                    username: format!("user{}@bench.example", (w + r) % USERS),
                    password: PASSWORD.into(),
                    ip: format!("198.51.100.{}", w % 250),
                    ..Default::default()
                };
                let t = Instant::now();
                match authn.login(request).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => refused += 1,
                }
            }
            (latencies, refused)
        }));
    }
    let mut latencies = Vec::new();
    let mut refused = 0;
    for c in callers {
        let (l, r) = c.await?;
        latencies.extend(l);
        refused += r;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let label = if concurrency == 0 {
        format!("bounded (--hash-concurrency 0 = {} turns)", crate::num_cpus())
    } else {
        format!("unbounded (--hash-concurrency {concurrency})")
    };
    println!(
        "  {label:<44} RSS idle {idle:5.1} MB, after set-up {set_up:5.1} MB, peak (VmHWM) {:6.1} MB; {:6.1} logins/s, p50 {:7.1} ms, p99 {:7.1} ms, {refused} refused",
        status_mb(pid, "VmHWM:"),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.99)),
    );
    drop(server);
    Ok(())
}

/// Runs the section: the bounded run, then the unbounded one.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    let binary = match postern_binary(args.postern.clone()) {
        Ok(b) => b,
        Err(e) => {
            println!("\n== burst: skipped: {e}");
            return Ok(());
        }
    };
    let burst = args.concurrency.max(1) * 2;
    let rounds = 4;
    println!(
        "\n== burst: peak RSS of `postern serve` under {burst} concurrent logins ×{rounds} (Argon2id, 19 MiB a hash), {}",
        binary.display()
    );
    one(&binary, 0, burst, rounds).await?;
    one(&binary, burst, burst, rounds).await?;
    Ok(())
}
