//! Assembly of the suite: the settings, and the wiring of the services and the gateway for
//! the all-in-one process (`postern serve`) and for each piece alone (`postern serve tenant`,
//! `postern serve registry`, `postern serve gateway`). Both modes call the same builders of
//! the service crates; the all-in-one mode only routes the gateway to the services in process
//! instead of over sockets. The test kit starts the suite through [`run`] too.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod logs;
pub mod management;
pub mod otlp;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use postern_common::connections::{ConnectionLimits, Connections};
use postern_common::db::{DbLocation, SchemaPolicy};
use postern_common::files::{Existing, write_private};
use postern_common::principal::InternalKey;
use postern_common::server::{RpcSpanLayer, in_process};
use postern_gateway::{Backend, Endpoint, Gateway, GatewayConfig, RateLimit, RouteTable};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;

/// Which piece of the suite a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// Every service and the gateway, in one process.
    All,
    /// The tenant service alone.
    Tenant,
    /// The gateway alone, in front of services running elsewhere.
    Gateway,
    /// The connection registry alone (needs `--tenant-url`).
    Registry,
    /// The authenticator alone (needs `--tenant-url` and `--registry-url`).
    Authn,
}

impl Component {
    /// The name its spans are exported under (OTLP `service.name`): `postern` for the whole
    /// suite in one process, `postern-<piece>` for a piece alone.
    pub fn service_name(self) -> &'static str {
        match self {
            Component::All => "postern",
            Component::Tenant => "postern-tenant",
            Component::Gateway => "postern-gateway",
            Component::Registry => "postern-registry",
            Component::Authn => "postern-authn",
        }
    }
}

/// The settings of `postern serve`; every flag has a `POSTERN_…` environment twin.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// The gRPC address to listen on (the gateway's, or the service's when it runs alone).
    #[arg(long, env = "POSTERN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The HTTP address of the gateway (backend health, the OpenID provider).
    #[arg(long, env = "POSTERN_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// The management address of every process, gateway and services alike: `/metrics`,
    /// `/health/live`, `/health/ready`, `/health/started` (Keycloak's port 9000 likewise).
    /// Loopback by default: expose it only to the scraper and the orchestrator.
    #[arg(long, env = "POSTERN_MANAGEMENT_LISTEN", default_value = "127.0.0.1:9000")]
    pub management_listen: SocketAddr,
    /// Where the SQLite databases (one per service) and generated keys live.
    #[arg(long, env = "POSTERN_DATA_DIR", default_value = "./postern-data")]
    pub data_dir: PathBuf,
    /// A `postgres://` URL to keep the data in PostgreSQL instead (one schema per service).
    #[arg(long, env = "POSTERN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The admin key. When unset, the first start generates one, writes it to
    /// `<data-dir>/admin-key` and prints it once; only its hash is kept.
    #[arg(long, env = "POSTERN_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The secret (64 hex digits) that Postern's processes share to vouch for callers. The
    /// all-in-one process makes its own; split processes read it from here or from
    /// `<data-dir>/internal-key`, which the first of them creates.
    #[arg(long, env = "POSTERN_INTERNAL_KEY", hide_env_values = true)]
    pub internal_key: Option<String>,
    /// The tenant service's addresses, for `serve gateway` (comma-separated `http://host:port`)
    /// and `serve registry` (one address).
    #[arg(long, env = "POSTERN_TENANT_URL", value_delimiter = ',')]
    pub tenant_url: Vec<String>,
    /// The connection registry's addresses, for `serve gateway` (comma-separated
    /// `http://host:port`). Without it the gateway serves no connection registry.
    #[arg(long, env = "POSTERN_REGISTRY_URL", value_delimiter = ',')]
    pub registry_url: Vec<String>,
    /// The master key that encrypts connection secrets at rest: 64 hex digits or the base64
    /// of 32 bytes (`openssl rand -base64 32`). When unset, the first start generates one into
    /// `<data-dir>/master-key` (mode 0600) and later starts read it from there. Losing it
    /// loses every connection secret.
    #[arg(long, env = "POSTERN_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Master keys replaced by `--master-key` (comma-separated), during a rotation: values
    /// sealed under them still open, and every start re-seals the stored ones (connection
    /// secrets, signing keys, upstream tokens) under the current key. Remove them once a
    /// start has logged that nothing is left under them and a day has passed (opaque access
    /// tokens sealed under them live 24 hours).
    #[arg(long, env = "POSTERN_PREVIOUS_MASTER_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub previous_master_keys: Vec<String>,
    /// The authenticator's addresses, for `serve gateway` (comma-separated
    /// `http://host:port`). Without it the gateway serves no authenticator.
    #[arg(long, env = "POSTERN_AUTHN_URL", value_delimiter = ',')]
    pub authn_url: Vec<String>,
    /// The public URL of the gateway's HTTP port, as relying parties reach it
    /// (`https://id.example.com`): tokens are issued by `<public-url>/<tenant>/`, whose
    /// `.well-known/jwks.json` publishes the keys. Default: `http://<http-listen>`.
    #[arg(long, env = "POSTERN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Whether the authenticator caches resolved connections (kept fresh by the registry's
    /// change stream). Turn off only to measure what the cache saves.
    #[arg(long, env = "POSTERN_CONNECTION_CACHE", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    pub connection_cache: bool,
    /// Calls per second allowed per API key (and per address for failed authentication); 0
    /// turns the limit off.
    #[arg(long, env = "POSTERN_RATE_LIMIT", default_value_t = 200)]
    pub rate_limit: u32,
    /// Calls a key may make at once above the sustained rate.
    #[arg(long, env = "POSTERN_RATE_BURST", default_value_t = 400)]
    pub rate_burst: u32,
    /// The longest a call may take, in milliseconds (a caller's shorter deadline wins).
    #[arg(long, env = "POSTERN_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub call_timeout_ms: u64,
    /// How long the gateway trusts a checked API key before asking again, in seconds.
    #[arg(long, env = "POSTERN_KEY_CACHE_SECS", default_value_t = 10)]
    pub key_cache_secs: u64,
    /// Connections open at once across the process's ports; 0 means as many as the open-file
    /// limit allows (raised to its hard maximum at start), less what the process needs
    /// besides. At the limit a new connection replaces the one idle longest.
    #[arg(long, env = "POSTERN_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// How long a new connection may take to start its first request, in milliseconds.
    #[arg(long, env = "POSTERN_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// How long a connection may stay open with no call in flight, in milliseconds.
    #[arg(long, env = "POSTERN_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// How long a connection may stay busy without a break (a stream held open, a body that
    /// trickles in, an answer never read), in milliseconds, before it may be closed to make
    /// room when every connection is busy, or to finish a shutdown.
    #[arg(long, env = "POSTERN_LONG_CALL_MS", default_value_t = 10_000)]
    pub long_call_ms: u64,
    /// Password hashes (Argon2id: 19 MiB and a core each) run at once; 0 means one per core.
    /// Logins beyond it wait their turn, so a burst holds at most this many times 19 MiB.
    #[arg(long, env = "POSTERN_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,
    /// The longest a login waits for its turn to hash, in milliseconds, before it is refused
    /// with UNAVAILABLE (reason PASSWORD_CHECKS_BUSY: retry shortly).
    #[arg(long, env = "POSTERN_HASH_QUEUE_TIMEOUT_MS", default_value_t = 10_000)]
    pub hash_queue_timeout_ms: u64,
    /// The most connections each service's pool opens to PostgreSQL (the all-in-one process
    /// runs three services, so up to three times this many). SQLite keeps its own pools.
    #[arg(long, env = "POSTERN_DB_POOL_SIZE", default_value_t = postern_common::db::DEFAULT_POOL_SIZE)]
    pub db_pool_size: u32,
    /// The connections each service's pool opens to PostgreSQL at start and keeps open (at
    /// most `--db-pool-size`). A call that finds none idle opens another and waits for it
    /// alone (sqlx hands it no connection freed meanwhile): where opening one can stall (a
    /// name lookup left unanswered, a server slow to accept), make it `--db-pool-size`, a
    /// fixed pool whose calls wait only for each other.
    #[arg(long, env = "POSTERN_DB_POOL_MIN", default_value_t = postern_common::db::MIN_OPEN_CONNECTIONS)]
    pub db_pool_min: u32,
    /// How many days the tenant service keeps audit events (`AuditService`); older ones are
    /// deleted at start and then every hour, by a timer of the tenant service. 0 keeps them forever.
    #[arg(long, env = "POSTERN_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    pub audit_retention_days: u32,
    /// The certificate chain (PEM, the server's certificate first) of the gateway's public gRPC
    /// and HTTP ports, with `--tls-key`: both ports then speak TLS only (HTTP/2 and HTTP/1.1
    /// by ALPN on the HTTP port). Re-read every `--tls-reload-ms`: a renewed pair is served
    /// without a restart. Unset: plaintext.
    #[arg(long, env = "POSTERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "POSTERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): with it, the public ports require of every client a certificate
    /// issued by one of them (mTLS).
    #[arg(long, env = "POSTERN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate files (`--tls-cert`, `--internal-cert` and their keys) are
    /// checked for a change, in milliseconds. A changed pair that fits is used from the next
    /// handshake on; one that does not is logged and the previous pair kept.
    #[arg(long, env = "POSTERN_TLS_RELOAD_MS", default_value_t = 2_000)]
    pub tls_reload_ms: u64,
    /// CA certificates (PEM) of the split services: the `https://` service addresses
    /// (`--tenant-url https://…`) are verified against them (against the public roots without
    /// it), and a service alone with `--internal-cert` requires of its callers a certificate
    /// issued by them (mTLS).
    #[arg(long, env = "POSTERN_INTERNAL_CA")]
    pub internal_ca: Option<PathBuf>,
    /// The certificate chain (PEM) a split process presents: a service alone serves its gRPC
    /// port over TLS with it, and every split process presents it to the services it calls.
    /// Re-read like `--tls-cert`.
    #[arg(long, env = "POSTERN_INTERNAL_CERT")]
    pub internal_cert: Option<PathBuf>,
    /// The private key (PEM) of `--internal-cert`.
    #[arg(long, env = "POSTERN_INTERNAL_CERT_KEY")]
    pub internal_cert_key: Option<PathBuf>,
    /// Addresses and ranges (CIDR: `127.0.0.0/8,10.0.0.0/8,::1`) the connectors must not
    /// connect to on a tenant's behalf (OpenID and OAuth 2.0 endpoints, SAML sign-in URLs,
    /// directories, custom databases, SMTP and SMS providers), on top of the built-in
    /// link-local and cloud metadata ranges (`169.254.0.0/16`, `fe80::/10`, `fd00:ec2::254`…).
    /// A name is checked on what it resolves to. On a server whose tenants are not its
    /// operators, add the loopback and private ranges.
    #[arg(long, env = "POSTERN_EGRESS_DENY", value_delimiter = ',')]
    pub egress_deny: Vec<String>,
    /// Addresses and ranges (CIDR) the connectors may connect to even where
    /// `--egress-deny` or the built-in ranges refuse them (a directory at `10.1.2.3` on a server
    /// that refuses `10.0.0.0/8`).
    #[arg(long, env = "POSTERN_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<String>,
    /// The connectors the authenticator runs, by strategy; `None` (always, from the command
    /// line) is every connector this binary has ([`connectors`]). Tests set it to add one.
    #[arg(skip)]
    pub connectors: Option<postern_connector::Connectors>,
    /// Whether this process applies pending migrations as it starts: `auto` (the default) does
    /// on SQLite, where the process owns its files, and on PostgreSQL only checks, refusing to
    /// start on a schema that is behind until `postern migrate` has run; `always` migrates on
    /// PostgreSQL too (under the same advisory lock as `postern migrate`); `never` checks on
    /// SQLite too.
    #[arg(long, env = "POSTERN_MIGRATE", value_enum, default_value = "auto")]
    pub migrate: MigrateOnStart,
    /// Where the OpenID provider's expiry rules (login transactions, codes, SSO sessions,
    /// refresh tokens, passwordless codes and their rate windows) and the tokens' `iat`/`exp` read the time: `None` (always, from the
    /// command line) is the system clock. Tests set a manual clock to move time instead of
    /// sleeping.
    #[arg(skip)]
    pub clock: Option<postern_common::time::Clock>,
}

/// What `postern serve` does about pending migrations as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MigrateOnStart {
    /// Migrate on SQLite (one owner per file, as in the all-in-one default); on PostgreSQL,
    /// which replicas share, refuse a schema that is behind and leave migrating to
    /// `postern migrate`.
    Auto,
    /// Migrate whatever the backend (on PostgreSQL under the migration lock).
    Always,
    /// Never migrate: refuse a schema that is behind.
    Never,
}

impl Settings {
    /// What opening the stores does about their schemas, per [`Settings::migrate`] and the
    /// backend.
    pub fn schema_policy(&self) -> SchemaPolicy {
        match (self.migrate, &self.database_url) {
            (MigrateOnStart::Always, _) | (MigrateOnStart::Auto, None) => SchemaPolicy::Migrate,
            (MigrateOnStart::Never, _) | (MigrateOnStart::Auto, Some(_)) => SchemaPolicy::RequireCurrent,
        }
    }
}

/// The services that own a database, with their migrations, in the order `postern migrate`
/// applies them.
const DATABASES: [(&str, postern_common::db::Migrations); 3] = [
    ("tenant", postern_tenant::store::MIGRATIONS),
    ("registry", postern_registry::store::MIGRATIONS),
    ("authn", postern_authn::store::MIGRATIONS),
];

/// Applies every service's pending migrations (`postern migrate`): to the schemas of the
/// PostgreSQL database at `database_url`, or to the SQLite files in `data_dir`. On PostgreSQL
/// it holds the advisory lock [`postern_common::db::MIGRATION_LOCK`] while it works, as a
/// starting server does, so that any number may run at once (an init container per replica,
/// say). Answers what it did, per service.
pub async fn migrate(
    data_dir: &Path,
    database_url: Option<&str>,
) -> anyhow::Result<Vec<(&'static str, postern_common::db::Migrated)>> {
    let database_url = database_url.filter(|u| !u.trim().is_empty());
    let mut done = Vec::new();
    for (service, migrations) in DATABASES {
        let location = DbLocation::for_service(service, data_dir, database_url);
        let migrated = postern_common::db::migrate(&location, migrations)
            .await
            .with_context(|| format!("cannot migrate the {service} service's database"))?;
        done.push((service, migrated));
    }
    Ok(done)
}

/// Copies every service's SQLite database in `data_dir` to `to` (`postern backup`), each
/// as one consistent snapshot taken while the server keeps serving
/// ([`postern_common::db::backup_sqlite`]). `to` is created private (0700) when missing and
/// must not hold an earlier copy. The services' copies are taken one after another, each
/// consistent in itself (as the services are when they run apart). The master key and the
/// other key files are not copied: the backup is useless without the master key, which is
/// kept apart from it. Answers each service, its copy and its size.
pub async fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf, u64)>> {
    let mut found = Vec::new();
    for (service, _) in DATABASES {
        let path = data_dir.join(format!("{service}.db"));
        if path.is_file() {
            found.push((service, path));
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "{} holds no Postern database (tenant.db, registry.db, authn.db); is --data-dir right? (PostgreSQL: use pg_dump)",
        data_dir.display()
    );
    postern_common::files::private_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut done = Vec::new();
    for (service, path) in found {
        let copy = to.join(format!("{service}.db"));
        let bytes = postern_common::db::backup_sqlite(&path, &copy)
            .await
            .with_context(|| format!("cannot back up the {service} service's database"))?;
        done.push((service, copy, bytes));
    }
    Ok(done)
}

/// Asks the gRPC health service (`grpc.health.v1.Health/Check`) at `address` (`host:port` or
/// a URL) about `service` (`""`: the server as a whole) within `timeout`: `Ok` when it answers
/// SERVING, otherwise `Err` with the reason in one line (`postern health`, the container's
/// health check).
pub async fn check_health(address: &str, service: &str, timeout: Duration) -> Result<(), String> {
    check_health_with(address, service, timeout, &tls::HealthTls::default()).await
}

/// [`check_health`] over TLS as `tls` says (a `host:port` address then means `https://`).
pub async fn check_health_with(
    address: &str,
    service: &str,
    timeout: Duration,
    tls: &tls::HealthTls,
) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let url = match address {
        a if a.contains("://") => a.to_owned(),
        a if tls.wanted() => format!("https://{a}"),
        a => format!("http://{a}"),
    };
    let client = if url.starts_with("https://") { Some(tls.client()?) } else { None };
    let ask = async {
        let channel = postern_common::tls::connect(&url, client.as_ref(), tls.server_name(), |e| {
            e.connect_timeout(timeout).timeout(timeout)
        })
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", source_chain(&e)))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .map_err(|s| format!("{url} answered {:?}: {}", s.code(), s.message()))?;
        let status = answer.into_inner().status;
        let name =
            ServingStatus::try_from(status).map_or_else(|_| format!("status {status}"), |s| s.as_str_name().to_owned());
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            let what = if service.is_empty() { "the server".to_owned() } else { service.to_owned() };
            Err(format!("{url}: {what} is {name}"))
        }
    };
    tokio::time::timeout(timeout, ask).await.unwrap_or_else(|_| Err(format!("{url} did not answer within {timeout:?}")))
}

/// An error with its causes, on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The addresses a started suite listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The HTTP address, when this process serves one.
    pub http: Option<SocketAddr>,
    /// The management address (metrics and health).
    pub management: SocketAddr,
}

/// Runs `component` with `settings` until `shutdown` flips to true. `on_bound` hears the
/// addresses once the sockets are bound (port 0 picks free ones).
pub async fn run(
    component: Component,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let mut settings = settings;
    // An empty variable means unset, as in most tools (`POSTERN_ADMIN_KEY= postern serve`).
    for value in
        [&mut settings.database_url, &mut settings.admin_key, &mut settings.internal_key, &mut settings.master_key]
    {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *value = None;
        }
    }
    // Checked before anything is opened or written (the authenticator builds its connectors
    // with it later).
    egress(&settings)?;
    let internal_key = internal_key(component, &settings)?;
    let tls = tls::configure(component, &settings)?;
    let connections = connections(&settings);
    let stop = move || {
        let mut rx = shutdown.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    match component {
        Component::All => {
            // A service that fails to start closes the ones started before it, so that their
            // files are given up (their locks) before the error is answered, whatever task
            // (an audit prune under way) still holds a handle.
            let tenant = start_tenant(&settings, internal_key.clone()).await?;
            let tenant_service = in_process(RpcSpanLayer.layer(tenant.routes.clone()));
            let registry = match start_registry(&settings, internal_key.clone(), tenant_service.clone()).await {
                Ok(registry) => registry,
                Err(e) => {
                    tenant.close.await;
                    return Err(e);
                }
            };
            let registry_service = in_process(RpcSpanLayer.layer(registry.routes.clone()));
            let peers = postern_authn::Peers { tenant: tenant_service.clone(), registry: registry_service.clone() };
            let (authn, public_url) = match start_authn(&settings, &internal_key, peers).await {
                Ok(started) => started,
                Err(e) => {
                    registry.close.await;
                    tenant.close.await;
                    return Err(e);
                }
            };
            let authn_service = in_process(RpcSpanLayer.layer(authn.routes.clone()));
            let mut routes = RouteTable::new();
            for (info, backend) in
                [(tenant.info, tenant_service), (registry.info, registry_service), (authn.info, authn_service)]
            {
                route(&mut routes, info, Backend::new(vec![Endpoint::in_process(backend)]));
            }
            let services = [authn, registry, tenant];
            let dbs = services.iter().map(|s| (s.info.label, s.db.clone())).collect();
            let stopping = stop();
            let on_stop: Vec<_> = services.iter().map(|s| s.on_stop.clone()).collect();
            tokio::spawn(async move {
                stopping.await;
                // Streams that never end would hold up the graceful stop.
                on_stop.iter().for_each(|f| f());
            });
            let scheme = http_scheme(&settings);
            let on_bound = move |bound: Bound| {
                if let Some(http) = bound.http {
                    let _ = public_url.set(format!("{scheme}://{http}"));
                }
                on_bound(bound);
            };
            let served = serve_gateway(routes, internal_key, &settings, &tls, connections, dbs, stop, on_bound).await;
            // Closing gives each SQLite file up (its lock) even while tasks still hold handles.
            for service in services {
                service.close.await;
            }
            served
        }
        Component::Gateway => {
            if settings.tenant_url.is_empty() {
                bail!(
                    "`serve gateway` needs the tenant service's address: --tenant-url http://host:port (POSTERN_TENANT_URL)"
                );
            }
            let mut routes = RouteTable::new();
            for (info, urls) in
                [(&TENANT, &settings.tenant_url), (&REGISTRY, &settings.registry_url), (&AUTHN, &settings.authn_url)]
            {
                if urls.is_empty() {
                    continue;
                }
                let endpoints = urls
                    .iter()
                    .map(|u| Endpoint::remote_with(u, tls.internal_client.as_ref()).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                route(&mut routes, info, Backend::new(endpoints));
            }
            serve_gateway(routes, internal_key, &settings, &tls, connections, Vec::new(), stop, on_bound).await
        }
        Component::Registry => {
            let [tenant_url] = settings.tenant_url.as_slice() else {
                bail!(
                    "`serve registry` needs the tenant service's address: --tenant-url http://host:port (POSTERN_TENANT_URL), one address"
                );
            };
            let tenant_service = postern_common::server::remote_with(tenant_url, tls.internal_client.as_ref())
                .map_err(anyhow::Error::msg)?;
            let registry = start_registry(&settings, internal_key, tenant_service).await?;
            serve_alone(registry, &settings, tls.internal_server, connections, stop, on_bound).await
        }
        Component::Authn => {
            let ([tenant_url], [registry_url]) = (settings.tenant_url.as_slice(), settings.registry_url.as_slice())
            else {
                bail!(
                    "`serve authn` needs one tenant service address and one registry address: --tenant-url \
                     http://host:port (POSTERN_TENANT_URL) and --registry-url http://host:port (POSTERN_REGISTRY_URL)"
                );
            };
            let remote = |url: &str| {
                postern_common::server::remote_with(url, tls.internal_client.as_ref()).map_err(anyhow::Error::msg)
            };
            let peers = postern_authn::Peers { tenant: remote(tenant_url)?, registry: remote(registry_url)? };
            let (authn, _) = start_authn(&settings, &internal_key, peers).await?;
            serve_alone(authn, &settings, tls.internal_server, connections, stop, on_bound).await
        }
        Component::Tenant => {
            let tenant = start_tenant(&settings, internal_key).await?;
            serve_alone(tenant, &settings, tls.internal_server, connections, stop, on_bound).await
        }
    }
}

/// What the binary knows of a backend service: its name, and its methods as the gateway
/// routes them.
struct ServiceInfo {
    /// For logs and errors.
    name: &'static str,
    /// For metric labels.
    label: &'static str,
    /// The gRPC services it serves, by full name.
    services: &'static [&'static str],
    /// The methods only other Postern services may call (never routed).
    internal: &'static [&'static str],
    /// The methods any caller may call without a key.
    public: &'static [&'static str],
}

const TENANT: ServiceInfo = ServiceInfo {
    name: "tenant service",
    label: "tenant",
    services: postern_tenant::SERVICES,
    internal: postern_tenant::INTERNAL_METHODS,
    public: postern_tenant::PUBLIC_METHODS,
};
const REGISTRY: ServiceInfo = ServiceInfo {
    name: "connection registry",
    label: "registry",
    services: postern_registry::SERVICES,
    internal: postern_registry::INTERNAL_METHODS,
    public: postern_registry::PUBLIC_METHODS,
};
const AUTHN: ServiceInfo = ServiceInfo {
    name: "authenticator",
    label: "authn",
    services: postern_authn::SERVICES,
    internal: postern_authn::INTERNAL_METHODS,
    public: postern_authn::PUBLIC_METHODS,
};

/// A started backend service, in the one lifecycle the three share: its store opened and its
/// handlers built (`start_*`), its routes served (in process behind the gateway, or alone on
/// a port: [`serve_alone`]), its endless streams ended at the stop, its store closed last.
struct Started {
    info: &'static ServiceInfo,
    routes: tonic::service::Routes,
    /// Ends the streams that would hold up a graceful stop.
    on_stop: Arc<dyn Fn() + Send + Sync>,
    /// Closes the store, giving an SQLite file's lock up even while tasks still hold handles.
    close: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// The store's database, for the management port (readiness, pool gauges).
    db: postern_common::db::Db,
}

/// Adds a backend service's methods to the gateway's route table.
fn route(routes: &mut RouteTable, info: &ServiceInfo, backend: Backend) {
    routes.route(info.services, backend).internal(info.internal).public(info.public);
}

/// Serves one backend service alone on `settings.listen` (over TLS with `tls`) until the
/// stop, then closes it.
async fn serve_alone<F, Fut>(
    service: Started,
    settings: &Settings,
    tls: Option<postern_common::tls::Acceptor>,
    connections: Connections,
    stop: F,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Started { info, routes, on_stop, close, db } = service;
    let stopping = stop();
    tokio::spawn(async move {
        stopping.await;
        on_stop();
    });
    let listener =
        TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let management = management::Management::bind(settings.management_listen, vec![(info.label, db)]).await?;
    let grpc = listener.local_addr()?;
    on_bound(Bound { grpc, http: None, management: management.local_addr()? });
    tracing::info!(%grpc, "{} listening", info.name);
    let (state, task) = management.spawn();
    let stopping = stop();
    let draining = state.clone();
    tokio::spawn(async move {
        stopping.await;
        draining.set_serving(false);
    });
    let incoming = postern_common::tls::Incoming::new(listener, connections.clone(), tls)?;
    let served = postern_common::server::serve_backend_on(incoming, routes, info.services, connections, stop()).await;
    task.abort();
    served.map_err(|e| anyhow::anyhow!("{} failed: {e}", info.name))?;
    close.await;
    Ok(())
}

/// Opens the tenant service's store (making the admin key on the first start) and builds its
/// handlers.
async fn start_tenant(settings: &Settings, internal_key: InternalKey) -> anyhow::Result<Started> {
    let store = open_tenant_store(settings).await?;
    // The pruner's timer holds the store only weakly: a start that fails after this point
    // drops `store` and lets its database go.
    let store = match settings.audit_retention_days {
        0 => store,
        days => store
            .with_audit_retention(Duration::from_secs(u64::from(days) * 86_400))
            .with_audit_pruner(postern_tenant::store::PRUNE_EVERY),
    };
    let routes = postern_tenant::routes(store.clone(), internal_key);
    let streams = store.clone();
    Ok(Started {
        info: &TENANT,
        routes,
        on_stop: Arc::new(move || streams.shutdown_streams()),
        db: store.db().clone(),
        close: Box::pin(async move { store.close().await }),
    })
}

async fn open_tenant_store(settings: &Settings) -> anyhow::Result<postern_tenant::Store> {
    let location = DbLocation::for_service("tenant", &settings.data_dir, settings.database_url.as_deref())
        .with_pool(settings.db_pool_size, settings.db_pool_min);
    let store = postern_tenant::Store::open_with(&location, settings.schema_policy())
        .await
        .context("cannot open the tenant service's database")?;
    if let Some(key) =
        postern_tenant::ensure_admin_key(&store, settings.admin_key.as_deref(), &settings.data_dir).await?
    {
        // Printed to standard output once, never logged.
        println!(
            "postern: generated the admin key (shown once; also saved to {}):\n{key}",
            settings.data_dir.join("admin-key").display()
        );
    }
    Ok(store)
}

/// Opens the registry's store and starts it, calling the tenant service through `tenant`.
async fn start_registry(
    settings: &Settings,
    internal_key: InternalKey,
    tenant: postern_common::server::HttpService,
) -> anyhow::Result<Started> {
    let master_key = master_key(settings)?;
    let location = DbLocation::for_service("registry", &settings.data_dir, settings.database_url.as_deref())
        .with_pool(settings.db_pool_size, settings.db_pool_min);
    let store = postern_registry::Store::open_with(&location, settings.schema_policy())
        .await
        .context("cannot open the connection registry's database")?;
    postern_registry::check_master_key(&store, &master_key).await?;
    if master_key.previous_keys() > 0 {
        let done = postern_registry::reseal_secrets(&store, &master_key)
            .await
            .context("cannot re-seal the connection secrets under the current master key")?;
        tracing::info!(
            resealed = done.resealed,
            already_current = done.current,
            unreadable = done.unreadable,
            "master key rotation: connection secrets sealed under a previous key are now under the current one"
        );
    }
    let registry = Arc::new(
        postern_registry::Registry::start(store.clone(), master_key, internal_key, tenant)
            .await
            .context("cannot read the connection registry's change log")?,
    );
    Ok(Started {
        info: &REGISTRY,
        routes: registry.routes(),
        on_stop: Arc::new(move || registry.shutdown()),
        db: store.db().clone(),
        close: Box::pin(async move { store.close().await }),
    })
}

/// Opens the authenticator's store and builds its handlers, calling `peers`; answers the
/// public URL too, which `run` sets once the HTTP port is bound.
async fn start_authn(
    settings: &Settings,
    internal_key: &InternalKey,
    peers: postern_authn::Peers,
) -> anyhow::Result<(Started, postern_authn::PublicUrl)> {
    // The same master key as the registry's (postern_common::seal), under its own label.
    let master_key = master_key(settings)?;
    let location = DbLocation::for_service("authn", &settings.data_dir, settings.database_url.as_deref())
        .with_pool(settings.db_pool_size, settings.db_pool_min);
    let store = postern_authn::Store::open_with(&location, settings.schema_policy())
        .await
        .context("cannot open the authenticator's database")?;
    match postern_authn::keys::check_master_key(&store, &master_key).await {
        Ok(()) => {}
        Err(postern_authn::keys::KeyError::Seal(_)) => anyhow::bail!(
            "the master key does not match the one that sealed the authenticator's signing keys; \
             start with the original POSTERN_MASTER_KEY (or <data-dir>/master-key), or, to rotate it, give it in \
             POSTERN_PREVIOUS_MASTER_KEYS beside the new one"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot check the master key against the signing keys")),
    }
    if master_key.previous_keys() > 0 {
        let done = postern_authn::rotation::reseal(&store, &master_key)
            .await
            .context("cannot re-seal the authenticator's sealed values under the current master key")?;
        tracing::info!(
            signing_keys_resealed = done.signing_keys.resealed,
            signing_keys_current = done.signing_keys.current,
            upstream_tokens_resealed = done.upstream_tokens.resealed,
            upstream_tokens_current = done.upstream_tokens.current,
            unreadable = done.signing_keys.unreadable + done.upstream_tokens.unreadable,
            "master key rotation: signing keys and upstream tokens sealed under a previous key are now under the current one"
        );
    }
    let public_url = postern_authn::PublicUrl::default();
    match &settings.public_url {
        Some(url) => {
            let _ = public_url.set(url.trim_end_matches('/').to_owned());
        }
        // A port picked by the system is known only once bound: `run` sets it then.
        None if settings.http_listen.port() != 0 => {
            let _ = public_url.set(format!("{}://{}", http_scheme(settings), settings.http_listen));
        }
        None => {}
    }
    let config = postern_authn::Config {
        public_url: public_url.clone(),
        master_key,
        lifetimes: postern_authn::tokens::Lifetimes::DEFAULT,
        cache_connections: settings.connection_cache,
        clock: settings.clock.clone().unwrap_or_else(postern_common::time::Clock::system),
        connectors: match &settings.connectors {
            Some(c) => c.clone(),
            None => connectors_with(hashing_limits(settings), &egress(settings)?),
        },
    };
    let api = postern_authn::api(store.clone(), &peers, internal_key, config);
    let started = Started {
        info: &AUTHN,
        routes: postern_authn::routes(api, internal_key.clone()),
        on_stop: Arc::new(|| {}),
        db: store.db().clone(),
        close: Box::pin(async move { store.close().await }),
    };
    Ok((started, public_url))
}

/// The password hashing limits of `settings` (`--hash-concurrency`, 0 for one per core;
/// `--hash-queue-timeout-ms`).
fn hashing_limits(settings: &Settings) -> postern_connector_database::password::HashingLimits {
    let default = postern_connector_database::password::HashingLimits::default();
    postern_connector_database::password::HashingLimits {
        concurrent: if settings.hash_concurrency == 0 { default.concurrent } else { settings.hash_concurrency },
        queue_timeout: Duration::from_millis(settings.hash_queue_timeout_ms),
    }
}

/// Every connector this binary has, by strategy, with the default hashing limits and the
/// built-in egress policy: the authenticator runs them and knows no protocol.
pub fn connectors() -> postern_connector::Connectors {
    connectors_with(
        postern_connector_database::password::HashingLimits::default(),
        &postern_connector::Egress::default(),
    )
}

/// The egress policy of `--egress-deny` and `--egress-allow`; an entry that is neither an
/// address nor a range stops the start, named.
pub fn egress(settings: &Settings) -> anyhow::Result<postern_connector::Egress> {
    postern_connector::Egress::new(&settings.egress_deny, &settings.egress_allow).map_err(|e| {
        anyhow::anyhow!("--egress-deny / --egress-allow (POSTERN_EGRESS_DENY / POSTERN_EGRESS_ALLOW): {e}")
    })
}

/// Every connector this binary has, by strategy, the database connector hashing within
/// `limits`, every connector connecting only where `egress` allows. A new connector crate is
/// registered here.
pub fn connectors_with(
    limits: postern_connector_database::password::HashingLimits,
    egress: &postern_connector::Egress,
) -> postern_connector::Connectors {
    let connectors = postern_connector_database::register_with(postern_connector::Connectors::new(), limits, egress);
    let connectors = postern_connector_oidc::register(connectors, egress);
    let connectors = postern_connector_ldap::register(connectors, postern_common::time::Clock::system(), egress);
    let connectors = postern_connector_passwordless::register(connectors, egress);
    let connectors = postern_connector_saml::register(connectors, postern_common::time::Clock::system(), egress);
    postern_connector_social::register(connectors, egress)
}

/// The master key: configured, or the one in `<data-dir>/master-key`, which the first start
/// generates (mode 0600).
fn master_key(settings: &Settings) -> anyhow::Result<postern_common::seal::MasterKey> {
    let mut previous = Vec::new();
    for (i, text) in settings.previous_master_keys.iter().filter(|t| !t.trim().is_empty()).enumerate() {
        previous.push(
            postern_common::seal::MasterKey::parse(text)
                .with_context(|| format!("POSTERN_PREVIOUS_MASTER_KEYS, key {}", i + 1))?,
        );
    }
    Ok(current_master_key(settings)?.with_previous(previous))
}

/// The current master key: configured, or the one in `<data-dir>/master-key`, which the
/// first start generates (mode 0600).
fn current_master_key(settings: &Settings) -> anyhow::Result<postern_common::seal::MasterKey> {
    use postern_common::seal::MasterKey;
    if let Some(text) = &settings.master_key {
        return MasterKey::parse(text).context("POSTERN_MASTER_KEY");
    }
    let path = settings.data_dir.join("master-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        postern_common::files::tighten(&path, postern_common::files::FILE_MODE)?;
        return MasterKey::parse(&text).with_context(|| format!("{}", path.display()));
    }
    let key = MasterKey::generate().context("cannot generate a master key")?;
    postern_common::files::private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    // Zeroized when dropped, like the key itself.
    let mut text = key.to_base64();
    text.push('\n');
    match write_private(&path, text.as_bytes(), Existing::Keep) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the master key of connection secrets; back it up");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            MasterKey::parse(&text).with_context(|| format!("{}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The connections of this process: the open-file limit raised to its hard maximum, and at
/// most as many connections as it leaves room for (fewer when configured so).
fn connections(settings: &Settings) -> Connections {
    let files = postern_common::connections::raise_file_limit();
    let budget = postern_common::connections::connection_budget(files);
    let max = match settings.max_connections {
        0 => budget,
        n if n > budget => {
            tracing::warn!(
                configured = n,
                files = ?files,
                "POSTERN_MAX_CONNECTIONS is more than the open-file limit leaves room for; using {budget}"
            );
            budget
        }
        n => n,
    };
    tracing::info!(files = ?files, max_connections = max, "connection limit");
    Connections::new(ConnectionLimits {
        handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(settings.idle_timeout_ms.max(1)),
        long_call: Duration::from_millis(settings.long_call_ms.max(1)),
        ..ConnectionLimits::with_max_connections(max)
    })
}

/// The scheme of the HTTP port: `https` with TLS on the public ports.
fn http_scheme(settings: &Settings) -> &'static str {
    if settings.tls_cert.as_ref().is_some_and(|p| !p.as_os_str().is_empty()) { "https" } else { "http" }
}

// The wiring's inputs, each used once; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve_gateway<F, Fut>(
    routes: RouteTable,
    internal_key: InternalKey,
    settings: &Settings,
    tls: &tls::Tls,
    connections: Connections,
    dbs: Vec<(&'static str, postern_common::db::Db)>,
    stop: F,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let internal_key_for_web = internal_key.clone();
    let config = GatewayConfig {
        internal_key,
        key_cache_ttl: Duration::from_secs(settings.key_cache_secs),
        rate_limit: RateLimit { per_second: settings.rate_limit, burst: settings.rate_burst },
        default_deadline: Duration::from_millis(settings.call_timeout_ms.max(1)),
        health_interval: Duration::from_secs(1),
        connections: connections.clone(),
    };
    let gateway = Gateway::new(routes, config)?;
    let listener =
        TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let http_listener = TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_listen))?;
    let management = management::Management::bind(settings.management_listen, dbs).await?;
    let bound = Bound {
        grpc: listener.local_addr()?,
        http: Some(http_listener.local_addr()?),
        management: management.local_addr()?,
    };
    let authn_backend = gateway.routes().get("postern.authn.v1.OAuthService").cloned();
    let provider = postern_provider::router(postern_provider::ProviderConfig {
        authn: std::sync::Arc::new(move || authn_backend.as_ref().and_then(|b| b.pick()).map(|e| e.service())),
        internal_key: internal_key_for_web,
        secure_cookies: match settings.public_url.as_deref() {
            Some(url) => url.starts_with("https://"),
            None => http_scheme(settings) == "https",
        },
        coherence: gateway.coherence(),
    });
    let web = postern_gateway::web::router(gateway.routes().clone()).merge(provider);
    tracing::info!(grpc = %bound.grpc, http = ?bound.http, management = %bound.management, "gateway listening");
    on_bound(bound);
    let (state, task) = management.spawn();
    let stopping = stop();
    let draining = state.clone();
    tokio::spawn(async move {
        stopping.await;
        draining.set_serving(false);
    });
    let public = tls.public.as_ref();
    let http_incoming =
        postern_common::tls::Incoming::new(http_listener, connections.clone(), public.map(|p| p.http.clone()))?;
    let incoming = postern_common::tls::Incoming::new(listener, connections.clone(), public.map(|p| p.grpc.clone()))?;
    let http = tokio::spawn(postern_gateway::web::serve_on(http_incoming, web, connections, stop()));
    let served = gateway.serve_on(incoming, stop()).await;
    task.abort();
    served?;
    http.await.context("HTTP server task")?.context("HTTP server")?;
    Ok(())
}

/// The internal key: configured, or for split processes the shared file in the data dir,
/// or for the all-in-one process a fresh one.
fn internal_key(component: Component, settings: &Settings) -> anyhow::Result<InternalKey> {
    if let Some(hex) = &settings.internal_key {
        return InternalKey::from_hex(hex).map_err(anyhow::Error::msg).context("POSTERN_INTERNAL_KEY");
    }
    if component == Component::All {
        return Ok(InternalKey::generate());
    }
    let path = settings.data_dir.join("internal-key");
    read_or_create_key(&path)
}

fn read_or_create_key(path: &Path) -> anyhow::Result<InternalKey> {
    if let Ok(text) = std::fs::read_to_string(path) {
        postern_common::files::tighten(path, postern_common::files::FILE_MODE)?;
        return InternalKey::from_hex(&text).map_err(anyhow::Error::msg).with_context(|| format!("{}", path.display()));
    }
    let key = InternalKey::generate();
    if let Some(dir) = path.parent() {
        postern_common::files::private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match write_private(path, key.to_hex().as_bytes(), Existing::Keep) {
        Ok(()) => Ok(key),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            InternalKey::from_hex(&text).map_err(anyhow::Error::msg)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}
