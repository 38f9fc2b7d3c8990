//! Postern's benchmark program. It measures, in one run on this machine, what the issues
//! set targets for, and prints each figure beside what it is compared against:
//!
//! - `gateway`: the same unary read called directly on the tenant service and through the
//!   gateway (throughput, p50/p99 latency, and their ratio).
//! - `authn`: the raw Argon2id verify rate against logins per second through the gateway,
//!   and logins with the connection cache warm against the registry asked on every login.
//! - `oauth`: `client_credentials` tokens per second at the token endpoint against npm's
//!   oidc-provider and the raw RS256 signing rate; authorization-code logins per second end
//!   to end against the raw Argon2id verify rate.
//! - `ldap`: LDAP logins per second end to end against the throwaway slapd's raw bind rate
//!   measured with the `ldap3` crate alone.
//! - `federation`: federated logins per second end to end against npm's oidc-provider as
//!   the upstream, with Postern's own time per login beside it.
//! - `replicas`: two replicas on one PostgreSQL: the time from a change acknowledged by one
//!   to its effect at the other (p50/p99 over 100 changes of each kind).
//! - `burst`: the peak resident memory of a `postern serve` (the binary beside this one)
//!   under a burst of concurrent logins, password hashing bounded (the default) and not.
//!
//! Run it in release mode: `cargo run --release -p postern-bench` (`--help` for options;
//! `--only gateway` runs one section).
//!
//! `--soak [--minutes N]` runs the soak instead (see [`soak`]): N minutes (default 10) of
//! mixed traffic against a `postern serve` it starts (the `postern` binary built beside this
//! one: `cargo build --release -p postern -p postern-bench`), printing calls, errors and the
//! server's RSS over time; it exits non-zero on any error.

#![forbid(unsafe_code)]

mod authn;
mod browser;
mod burst;
mod federation;
mod gateway;
mod ldap;
mod oauth;
mod registry;
mod replicas;
mod soak;
mod stats;

use clap::Parser;

/// Postern's benchmark.
#[derive(Debug, Parser)]
#[command(about)]
pub struct Args {
    /// Run only these sections (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Run the soak (mixed traffic against a real `postern serve`) instead of the sections.
    #[arg(long)]
    soak: bool,
    /// Minutes the soak runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The soak's traffic: `mixed`, or `hostile` (hostile inputs alone, a new connection per
    /// call: to watch memory under the probe of issue 10).
    #[arg(long, default_value = "mixed")]
    mix: String,
    /// The `postern` binary the soak starts (default: the one beside this program).
    #[arg(long)]
    postern: Option<std::path::PathBuf>,
    /// Run Postern on a runtime of its own, apart from the callers', and print the CPU time
    /// of its threads beside the process's (`Postern's threads`; not known without this
    /// option, where Postern's tasks and the callers' share the same worker threads). Every
    /// hand-off between a caller and Postern then crosses threads, which lowers the login
    /// paths' rates (the authn section's logins: 85% of the raw verify rate against 91-92%
    /// without it, on 2026-12-04).
    #[arg(long)]
    own_runtime: bool,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.soak {
        let clean = soak::run(args.minutes, args.concurrency, args.postern.clone(), args.mix == "hostile").await?;
        if !clean {
            std::process::exit(1);
        }
        return Ok(());
    }
    println!(
        "postern-bench: {} s per measurement, {} concurrent callers, {} cores{}",
        args.seconds,
        args.concurrency,
        num_cpus(),
        if args.own_runtime { ", Postern on a runtime of its own" } else { "" }
    );
    stats::own_runtime(args.own_runtime);
    if args.wants("gateway") {
        gateway::run(&args).await?;
    }
    if args.wants("registry") {
        registry::run(&args).await?;
    }
    if args.wants("authn") {
        authn::run(&args).await?;
    }
    if args.wants("oauth") {
        oauth::run(&args).await?;
    }
    if args.wants("ldap") {
        ldap::run(&args).await?;
    }
    if args.wants("federation") {
        federation::run(&args).await?;
    }
    if args.wants("replicas") {
        replicas::run(&args).await?;
    }
    if args.wants("burst") {
        burst::run(&args).await?;
    }
    Ok(())
}

pub(crate) fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
