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
//!
//! Run it in release mode: `cargo run --release -p postern-bench` (`--help` for options;
//! `--only gateway` runs one section).

#![forbid(unsafe_code)]

mod authn;
mod federation;
mod gateway;
mod ldap;
mod oauth;
mod registry;
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
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "postern-bench: {} s per measurement, {} concurrent callers, {} cores",
        args.seconds,
        args.concurrency,
        num_cpus()
    );
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
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
