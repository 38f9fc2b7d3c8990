//! The test kit: starts Postern the way users run it and hands back typed clients that
//! talk to it as users do (through the gateway, with a bearer key).
//!
//! - [`Suite::start`] runs the all-in-one suite in this process on free ports, over SQLite
//!   in a temporary directory (or PostgreSQL), through the same `postern::run` as the binary.
//! - [`Process`] runs the real binary (`postern serve …`) as a child process, for restarts,
//!   crashes and the split mode.
//! - [`peers`] finds the real peers (PostgreSQL, grpcurl) and decides between skipping and
//!   failing when one is missing (`POSTERN_REQUIRE_PEERS=1`).
//! - [`browser`] drives headless Chromium over WebDriver, a fresh profile per test.
//! - [`web`] walks HTML pages over HTTP as a browser without JavaScript does (a cookie
//!   jar, forms, redirects looked at one by one).
//! - [`upstream`] shares one npm `oidc-provider` per test binary as the upstream of
//!   federated logins, with broken answers on demand.
//! - [`slapd`] runs a throwaway OpenLDAP directory with TLS, an Active Directory shaped
//!   schema, users and groups, once per test binary.
//! - [`saml`] shares one pysaml2 SAML 2.0 identity provider per test binary (`tests/saml/idp.py`),
//!   with broken and forged responses on demand.
//! - [`smtp`] shares one aiosmtpd SMTP server per test binary (`tests/smtp/server.py`), in
//!   every transport mode of an `email` connection: plain, opportunistic STARTTLS, required
//!   STARTTLS with authentication, implicit TLS with authentication.
//! - [`node`] runs the scripts of the node workspace (`tests/node`): npm's `openid-client`
//!   as an independent relying party, npm's `oidc-provider` as a reference provider.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod browser;
pub mod node;
pub mod peers;
mod process;
pub mod raw;
pub mod saml;
pub mod slapd;
pub mod smtp;
pub mod tls;
pub mod upstream;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use postern::{Component, Settings};
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as connections;
use postern_proto::tenant::v1 as tenant;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use process::{Process, output_within};

/// The admin key the kit starts suites with.
pub const ADMIN_KEY: &str = "psta_test-admin-key-0123456789abcdef";

/// The master key the kit starts suites with (64 hex digits), so that a suite restarted on
/// the same PostgreSQL database with a fresh data directory reads its connection secrets.
pub const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Settings for a suite on free loopback ports with data under `data_dir`.
pub fn settings(data_dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        http_listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        management_listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        data_dir: data_dir.to_owned(),
        database_url: None,
        admin_key: Some(ADMIN_KEY.to_owned()),
        internal_key: None,
        tenant_url: Vec::new(),
        registry_url: Vec::new(),
        master_key: Some(MASTER_KEY.to_owned()),
        previous_master_keys: Vec::new(),
        authn_url: Vec::new(),
        public_url: None,
        connection_cache: true,
        rate_limit: 0,
        rate_burst: 0,
        call_timeout_ms: 30_000,
        key_cache_secs: 10,
        max_connections: 0,
        handshake_timeout_ms: 10_000,
        idle_timeout_ms: 60_000,
        long_call_ms: 10_000,
        hash_concurrency: 0,
        hash_queue_timeout_ms: 10_000,
        db_pool_size: postern_common::db::DEFAULT_POOL_SIZE,
        db_pool_min: postern_common::db::MIN_OPEN_CONNECTIONS,
        audit_retention_days: 30,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        tls_reload_ms: 2_000,
        internal_ca: None,
        internal_cert: None,
        internal_cert_key: None,
        migrate: postern::MigrateOnStart::Auto,
        egress_deny: Vec::new(),
        egress_allow: Vec::new(),
        connectors: None,
        clock: None,
    }
}

/// A running all-in-one suite in this process.
pub struct Suite {
    /// The gateway's gRPC address.
    pub grpc: SocketAddr,
    /// The gateway's HTTP address.
    pub http: SocketAddr,
    /// The management address (metrics and health).
    pub management: SocketAddr,
    /// The data directory (kept until the suite is dropped, unless given by the caller).
    pub data_dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _temp: Option<tempfile::TempDir>,
}

impl Suite {
    /// Starts the suite over SQLite in a fresh temporary directory.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts the suite with settings adjusted by `adjust` (a fresh temporary data directory
    /// unless `adjust` sets one). On PostgreSQL it first migrates the database as an operator
    /// does (`postern migrate`), since `serve` there refuses a schema that is behind.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        Self::start_on(&tokio::runtime::Handle::current(), adjust).await
    }

    /// Starts the suite as [`Suite::start_with`] does, with its tasks on `runtime` rather
    /// than the caller's: the benchmark runs Postern on a runtime of its own, so that the CPU
    /// time of Postern's threads can be told apart from its load generator's.
    pub async fn start_on(
        runtime: &tokio::runtime::Handle,
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let mut s = settings(temp.path());
        adjust(&mut s);
        if s.database_url.is_some() && s.migrate == postern::MigrateOnStart::Auto {
            postern::migrate(&s.data_dir, s.database_url.as_deref()).await.map_err(|e| e.context("postern migrate"))?;
        }
        let keep = (s.data_dir == temp.path()).then_some(temp);
        let data_dir = s.data_dir.clone();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(postern::run(Component::All, s, rx, move |b| {
            let _ = bound_tx.send(b);
        }));
        let bound = match bound_rx.await {
            Ok(b) => b,
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => e.context("the suite failed to start"),
                    Ok(Ok(())) => anyhow::anyhow!("the suite stopped before binding"),
                    Err(e) => anyhow::anyhow!("the suite panicked: {e}"),
                });
            }
        };
        Ok(Self {
            grpc: bound.grpc,
            http: bound.http.ok_or_else(|| anyhow::anyhow!("no HTTP address"))?,
            management: bound.management,
            data_dir,
            stop,
            task,
            _temp: keep,
        })
    }

    /// Stops the suite, draining in-flight calls, and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }

    /// A channel to the gateway.
    pub async fn channel(&self) -> Channel {
        channel(self.grpc).await
    }

    /// Typed clients authenticated with `key`.
    pub async fn clients(&self, key: &str) -> Clients {
        Clients::new(self.channel().await, key)
    }

    /// Typed clients with the admin key.
    pub async fn admin(&self) -> Clients {
        self.clients(ADMIN_KEY).await
    }
}

/// A lazily connecting channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    match Channel::from_shared(format!("http://{addr}")) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(_) => unreachable!("a socket address is a valid URI"),
    }
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that sends a bearer key.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The typed clients of every service, sharing one channel and key.
#[derive(Clone)]
pub struct Clients {
    /// `postern.tenant.v1.TenantService`
    pub tenants: tenant::tenant_service_client::TenantServiceClient<Authed>,
    /// `postern.tenant.v1.ClientService`
    pub clients: tenant::client_service_client::ClientServiceClient<Authed>,
    /// `postern.tenant.v1.ApiKeyService`
    pub keys: tenant::api_key_service_client::ApiKeyServiceClient<Authed>,
    /// `postern.connections.v1.ConnectionService`
    pub connections: connections::connection_service_client::ConnectionServiceClient<Authed>,
    /// `postern.authn.v1.AuthenticationService`
    pub authn: authn::authentication_service_client::AuthenticationServiceClient<Authed>,
    /// `postern.authn.v1.UserService`
    pub users: authn::user_service_client::UserServiceClient<Authed>,
    /// `postern.authn.v1.SigningKeyService`
    pub signing_keys: authn::signing_key_service_client::SigningKeyServiceClient<Authed>,
    /// `postern.authn.v1.OAuthService` (its public RPCs; the gateway refuses the internal ones)
    pub oauth: authn::o_auth_service_client::OAuthServiceClient<Authed>,
    /// `postern.tenant.v1.ResourceServerService` (APIs)
    pub apis: tenant::resource_server_service_client::ResourceServerServiceClient<Authed>,
    /// `postern.tenant.v1.ClientGrantService`
    pub grants: tenant::client_grant_service_client::ClientGrantServiceClient<Authed>,
    /// `postern.tenant.v1.AuditService`
    pub audit: tenant::audit_service_client::AuditServiceClient<Authed>,
}

impl Clients {
    /// Clients over `channel` sending `key` (none when empty).
    pub fn new(channel: Channel, key: &str) -> Self {
        let bearer = Bearer((!key.is_empty()).then(|| format!("Bearer {key}").parse().ok()).flatten());
        let authed = InterceptedService::new(channel, bearer);
        Self {
            tenants: tenant::tenant_service_client::TenantServiceClient::new(authed.clone()),
            clients: tenant::client_service_client::ClientServiceClient::new(authed.clone()),
            keys: tenant::api_key_service_client::ApiKeyServiceClient::new(authed.clone()),
            connections: connections::connection_service_client::ConnectionServiceClient::new(authed.clone()),
            authn: authn::authentication_service_client::AuthenticationServiceClient::new(authed.clone()),
            users: authn::user_service_client::UserServiceClient::new(authed.clone()),
            signing_keys: authn::signing_key_service_client::SigningKeyServiceClient::new(authed.clone()),
            oauth: authn::o_auth_service_client::OAuthServiceClient::new(authed.clone()),
            apis: tenant::resource_server_service_client::ResourceServerServiceClient::new(authed.clone()),
            grants: tenant::client_grant_service_client::ClientGrantServiceClient::new(authed.clone()),
            audit: tenant::audit_service_client::AuditServiceClient::new(authed),
        }
    }

    /// Sets the allowed logout URLs of the client `client_id` of `tenant` (an update masked to
    /// `allowed_logout_urls`).
    pub async fn allow_logout_urls(
        &mut self,
        tenant: &str,
        client_id: &str,
        urls: &[&str],
    ) -> Result<tenant::Client, tonic::Status> {
        let update = tenant::UpdateClientRequest {
            tenant: tenant.into(),
            client: Some(tenant::Client {
                client_id: client_id.into(),
                allowed_logout_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["allowed_logout_urls".into()] }),
        };
        let updated = self.clients.update_client(update).await?.into_inner();
        updated.client.ok_or_else(|| tonic::Status::internal("UpdateClient answered no client"))
    }

    /// Lets the machine-to-machine client `client_id` of `tenant` get `client_credentials`
    /// tokens for the API `audience` with `scopes`: creates the API (defining `scopes`) unless
    /// it exists, then the client's grant for it.
    pub async fn grant_api(
        &mut self,
        tenant: &str,
        client_id: &str,
        audience: &str,
        scopes: &[&str],
    ) -> Result<tenant::ClientGrant, tonic::Status> {
        let api = tenant::ResourceServer {
            identifier: audience.into(),
            name: format!("API {audience}").chars().take(128).collect(),
            scopes: scopes
                .iter()
                .map(|s| tenant::ResourceServerScope { value: (*s).into(), description: String::new() })
                .collect(),
            ..Default::default()
        };
        let created = self
            .apis
            .create_resource_server(tenant::CreateResourceServerRequest {
                tenant: tenant.into(),
                resource_server: Some(api),
            })
            .await;
        match created {
            Err(s) if s.code() != tonic::Code::AlreadyExists => return Err(s),
            _ => {}
        }
        let grant = tenant::ClientGrant {
            client_id: client_id.into(),
            audience: audience.into(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        };
        let r = self
            .grants
            .create_client_grant(tenant::CreateClientGrantRequest { tenant: tenant.into(), client_grant: Some(grant) })
            .await?;
        r.into_inner().client_grant.ok_or_else(|| tonic::Status::internal("no grant in the answer"))
    }

    /// Creates a tenant (display name = name).
    pub async fn create_tenant(&mut self, name: &str) -> Result<tenant::Tenant, tonic::Status> {
        let t = tenant::Tenant { name: name.into(), display_name: name.into(), ..Default::default() };
        let r = self.tenants.create_tenant(tenant::CreateTenantRequest { tenant: Some(t) }).await?;
        r.into_inner().tenant.ok_or_else(|| tonic::Status::internal("no tenant in the answer"))
    }

    /// Creates a regular web client in `tenant`.
    pub async fn create_client(&mut self, tenant: &str, name: &str) -> Result<tenant::Client, tonic::Status> {
        let c = tenant::Client {
            name: name.into(),
            app_type: tenant::AppType::RegularWeb as i32,
            callbacks: vec!["https://app.example.com/callback".into()],
            ..Default::default()
        };
        let r =
            self.clients.create_client(tenant::CreateClientRequest { tenant: tenant.into(), client: Some(c) }).await?;
        r.into_inner().client.ok_or_else(|| tonic::Status::internal("no client in the answer"))
    }

    /// Creates a database connection (`auth0`, default options) named `name` in `tenant` and
    /// enables it for `client_id`.
    pub async fn create_database_connection(
        &mut self,
        tenant: &str,
        name: &str,
        client_id: &str,
    ) -> Result<connections::Connection, tonic::Status> {
        let c = connections::Connection {
            name: name.into(),
            strategy: "auth0".into(),
            options: Some(connections::connection::Options::Database(connections::DatabaseOptions::default())),
            ..Default::default()
        };
        let r = self
            .connections
            .create_connection(connections::CreateConnectionRequest { tenant: tenant.into(), connection: Some(c) })
            .await?;
        self.connections
            .enable_client(connections::EnableClientRequest {
                tenant: tenant.into(),
                connection: name.into(),
                client_id: client_id.into(),
            })
            .await?;
        r.into_inner().connection.ok_or_else(|| tonic::Status::internal("no connection in the answer"))
    }

    /// Creates an API key for `tenant` and returns the bearer key.
    pub async fn create_api_key(&mut self, tenant: &str) -> Result<String, tonic::Status> {
        let r = self
            .keys
            .create_api_key(tenant::CreateApiKeyRequest {
                tenant: tenant.into(),
                api_key: Some(tenant::ApiKey { description: "test".into(), ..Default::default() }),
            })
            .await?;
        r.into_inner().api_key.map(|k| k.key).ok_or_else(|| tonic::Status::internal("no key in the answer"))
    }
}

/// Polls `check` until it holds, for what a service applies asynchronously (deletions that
/// travel through the event logs, cache invalidations); fails the test after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The field paths named in an INVALID_ARGUMENT status's `BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo.reason` of a status, if any.
pub fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

/// An HTTP/1.1 `GET` of `path` on `addr`, as any HTTP client would send it: the status code,
/// the headers (names lowercased) and the body. Enough for the gateway's HTTP port, without
/// an HTTP client library.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    http_request(addr, "GET", path, &[]).await
}

/// An HTTP/1.1 request with no body, `method` and extra `headers` (such as
/// `("authorization", "Bearer …")`) to `addr`: the status, the headers (names in lower
/// case) and the body, as [`http_get`] answers them.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let length = if method == "GET" { "" } else { "Content-Length: 0\r\n" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{extra}{length}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).unwrap_or_default().parse()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))).collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((status, headers, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or_else(|| anyhow::anyhow!("short chunk"))?;
        out.push_str(chunk);
        body = rest.get(size + 2..).unwrap_or_default();
    }
}
