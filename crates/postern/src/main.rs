//! `postern`: the one binary. `postern serve` starts every service and the gateway in one
//! process; `postern serve tenant|registry|gateway` starts one piece alone.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use postern::{Component, Settings};
use tracing_subscriber::EnvFilter;

/// How long a stopping process waits for in-flight calls.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Postern: a self-hostable, multi-tenant identity broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("POSTERN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
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
            })
            .await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
