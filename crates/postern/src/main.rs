//! `postern`: the one binary. `postern serve` starts every service and the gateway in one
//! process; `postern serve tenant|registry|gateway` starts one piece alone; `postern migrate`
//! brings every service's database up to date; `postern backup` copies the SQLite databases
//! while serving; `postern health` asks a running server whether it is serving (the
//! container's health check).

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use postern::otlp::{Export, OtlpSettings};
use postern::{Component, Settings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How long a stopping process waits for in-flight calls.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Postern: a self-hostable, multi-tenant identity broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written to standard error: `text` (colour only on a terminal and
    /// without NO_COLOR), or `json`, one object a line (for a log collector).
    #[arg(long, env = "POSTERN_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(flatten)]
    otlp: OtlpSettings,
    #[command(subcommand)]
    command: Command,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, the event's fields at the top level beside `timestamp`,
    /// `level`, `target` and `message`, and the spans' fields (method, request id, trace id)
    /// under `span` and `spans`.
    Json,
}

/// Logs to standard error, filtered by POSTERN_LOG (default `info`), in `format`; and, when
/// `service` is named and an OTLP endpoint configured, exports the spans as `service`.
fn init_logs(format: LogFormat, otlp: &OtlpSettings, service: Option<&str>) -> anyhow::Result<Option<Export>> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("POSTERN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
        LogFormat::Text => {
            // Escape codes only for a person at a terminal, and never against NO_COLOR
            // (no-color.org: set and not empty).
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            lines.with_ansi(std::io::stderr().is_terminal() && !no_color).fmt_fields(postern::logs::TextFields).boxed()
        }
    };
    let (spans, export) = match service {
        Some(service) => match postern::otlp::layer(otlp, service)? {
            Some((layer, export)) => (Some(layer), Some(export)),
            None => (None, None),
        },
        None => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(lines).with(spans).init();
    Ok(export)
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Postern: everything in one process by default, or one piece alone.
    Serve {
        /// What to run.
        #[arg(value_enum, default_value = "all")]
        component: Component,
        #[command(flatten)]
        settings: Settings,
    },
    /// Apply every service's pending database migrations, then exit. Safe to run concurrently
    /// on PostgreSQL (an advisory lock); run it before starting servers on PostgreSQL, which
    /// refuse a schema that is behind.
    Migrate {
        /// Where the SQLite databases (one per service) live.
        #[arg(long, env = "POSTERN_DATA_DIR", default_value = "./postern-data")]
        data_dir: PathBuf,
        /// A `postgres://` URL: migrate the services' schemas in this PostgreSQL database.
        #[arg(long, env = "POSTERN_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// How long to wait for PostgreSQL to accept connections before migrating (seconds; 0
        /// fails at once): a migration started beside its database waits for it to come up.
        #[arg(long, env = "POSTERN_WAIT_FOR_DATABASE", default_value_t = 60)]
        wait_for_database: u64,
    },
    /// Copy every service's SQLite database to `--to`, each as one consistent snapshot, while
    /// the server keeps serving. The master key is not copied: keep it apart. For PostgreSQL,
    /// use `pg_dump` (see the README).
    Backup {
        /// Where the SQLite databases (one per service) live.
        #[arg(long, env = "POSTERN_DATA_DIR", default_value = "./postern-data")]
        data_dir: PathBuf,
        /// The directory to write the copies to: created (mode 0700) if missing, and it must
        /// not hold an earlier backup (nothing is overwritten).
        #[arg(long)]
        to: PathBuf,
    },
    /// Ask a running server's gRPC health service whether it is serving: exit 0 when it
    /// answers SERVING, 1 otherwise with the reason on one line.
    Health {
        /// The server's gRPC address (`host:port`, or `https://host:port` for TLS). Default: the
        /// port of POSTERN_LISTEN on loopback when that is set, else 127.0.0.1:50051.
        #[arg(long)]
        address: Option<String>,
        /// The service to ask about (`postern.tenant.v1.TenantService`); empty asks about the
        /// server as a whole.
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: postern::tls::HealthTls,
    },
}

/// The address `postern health` asks by default: this container's own server, from the
/// `POSTERN_LISTEN` it was given (an unspecified address means loopback).
fn default_health_address() -> String {
    let listen = std::env::var("POSTERN_LISTEN").ok().and_then(|v| v.parse::<SocketAddr>().ok());
    match listen {
        Some(addr) if addr.ip().is_unspecified() => {
            let ip: IpAddr = if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            SocketAddr::new(ip, addr.port()).to_string()
        }
        Some(addr) => addr.to_string(),
        None => "127.0.0.1:50051".to_owned(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Serve { component, .. } => Some(component.service_name()),
        _ => None,
    };
    let export = init_logs(cli.log_format, &cli.otlp, service)?;
    match cli.command {
        Command::Serve { component, settings } => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                postern_common::server::shutdown_signal().await;
                let _ = tx.send(true);
                // In-flight calls get this long to finish; a client that never lets its
                // connection go must not keep the process alive.
                tokio::time::sleep(DRAIN_TIMEOUT).await;
                tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting");
                std::process::exit(1);
            });
            postern::run(component, settings, rx, |bound| {
                println!("postern: gRPC listening on {}", bound.grpc);
                if let Some(http) = bound.http {
                    println!("postern: HTTP listening on {http}");
                }
                println!("postern: management listening on {}", bound.management);
            })
            .await?;
            if let Some(export) = export {
                // The last spans go out before the process ends (blocking: off the workers).
                let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
            }
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate { data_dir, database_url, wait_for_database } => {
            if let Some(url) = database_url.as_deref().filter(|u| !u.trim().is_empty()) {
                let within = std::time::Duration::from_secs(wait_for_database);
                let mut told = false;
                postern_common::db::wait_for_postgres(url, within, |e| {
                    if !told {
                        eprintln!(
                            "postern: waiting up to {wait_for_database} s for the database to accept connections ({e})"
                        );
                        told = true;
                    }
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the database: {e}"))?;
            }
            for (service, migrated) in postern::migrate(&data_dir, database_url.as_deref()).await? {
                let version = migrated.status.version();
                if migrated.applied.is_empty() {
                    println!("postern: {service}: up to date at migration {version}");
                } else {
                    let applied: Vec<String> = migrated.applied.iter().map(i64::to_string).collect();
                    println!("postern: {service}: applied {}; now at migration {version}", applied.join(", "));
                }
            }
            Ok(())
        }
        Command::Backup { data_dir, to } => {
            for (service, path, bytes) in postern::backup(&data_dir, &to).await? {
                println!("postern: {service}: {bytes} bytes to {}", path.display());
            }
            Ok(())
        }
        Command::Health { address, service, timeout_ms, tls } => {
            let address = address.unwrap_or_else(default_health_address);
            let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
            match postern::check_health_with(&address, &service, timeout, &tls).await {
                Ok(()) => {
                    println!("SERVING");
                    Ok(())
                }
                Err(reason) => {
                    println!("postern health: {reason}");
                    std::process::exit(1);
                }
            }
        }
    }
}
