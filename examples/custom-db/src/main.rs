//! `custom-db-example`: a custom database for Postern with its own SQLite user store.
//!
//! ```text
//! custom-db-example --listen 127.0.0.1:50061 --db ./customdb.sqlite \
//!     --add-user 'alice@example.com:Correct-Horse-9:Alice Liddell'
//! ```
//! then point a database connection's `custom_database.endpoint` at `http://127.0.0.1:50061`.
//! With `--tls-cert cert.pem --tls-key key.pem` it serves TLS instead, for an
//! `https://` endpoint (set the connection's `custom_database.ca_certificate` to the CA that
//! issued the certificate unless a public CA did).

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;
use postern_custom_db_example::{NewUser, Store, TlsIdentity, serve_with_tls};

/// A custom database (postern.customdb.v1) over its own SQLite user store.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// The address to serve gRPC on.
    #[arg(long, env = "CUSTOM_DB_LISTEN", default_value = "127.0.0.1:50061")]
    listen: std::net::SocketAddr,
    /// The SQLite file of the user store (created when missing).
    #[arg(long, env = "CUSTOM_DB_PATH", default_value = "./customdb.sqlite")]
    db: std::path::PathBuf,
    /// A bearer token Postern must send (the connection's `custom_database.token`).
    #[arg(long, env = "CUSTOM_DB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Users to add before serving, as `email:password[:name]` (repeatable). Existing
    /// emails are left alone.
    #[arg(long = "add-user")]
    add_user: Vec<String>,
    /// Serve TLS with this PEM certificate chain (leaf first), for an `https://` endpoint;
    /// needs --tls-key. Plaintext (`http://`) without.
    #[arg(long, env = "CUSTOM_DB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CUSTOM_DB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = Store::open(&args.db).await?;
    for spec in &args.add_user {
        let mut parts = spec.splitn(3, ':');
        let (Some(email), Some(password)) = (parts.next(), parts.next()) else {
            anyhow::bail!("--add-user takes email:password[:name], got {spec:?}");
        };
        let user = NewUser {
            email: email.into(),
            password: password.into(),
            name: parts.next().unwrap_or("").into(),
            ..NewUser::default()
        };
        match store.add_user(&user).await {
            Ok(id) => println!("custom-db-example: added {email} as {id}"),
            Err(postern_custom_db_example::Error::Exists) => println!("custom-db-example: {email} exists already"),
            Err(e) => return Err(e.into()),
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert_pem: std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?,
        }),
        _ => None,
    };
    if let Some(tls) = &tls {
        tls.check().context("--tls-cert and --tls-key must be a PEM certificate chain and its PEM private key")?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("custom-db-example: serving postern.customdb.v1 on {scheme}://{}", listener.local_addr()?);
    serve_with_tls(listener, store, args.token, tls, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serving")?;
    Ok(())
}
