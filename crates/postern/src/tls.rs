//! The TLS of a process, from its settings ([`configure`]), and of `postern health`
//! ([`HealthTls`]).
//!
//! Two sets of certificates, for two kinds of link:
//! - *public*: the gateway's gRPC and HTTP ports (`postern serve` and `serve gateway`), from
//!   `--tls-cert`/`--tls-key`, asking clients for certificates issued by `--tls-client-ca`
//!   when it is set;
//! - *internal*: between split processes. A service alone serves its gRPC port over TLS with
//!   `--internal-cert`/`--internal-cert-key` and, with `--internal-ca`, requires of its callers
//!   a certificate issued by that CA (mTLS); every process verifies the `https://` service
//!   addresses it is given (`--tenant-url https://…`) against `--internal-ca` (the public
//!   roots without it) and presents its `--internal-cert` to services that ask.
//!
//! Certificates and keys are re-read every `--tls-reload-ms` and a pair that changed and fits
//! is used from the next handshake on ([`postern_common::tls::Identity`]). Without these
//! settings every port is plaintext, as `postern serve` is by default on loopback. The
//! management port is always plaintext: probes and scrapers reach it on the pod's network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use postern_common::tls::{ALPN_GRPC, ALPN_HTTP, Acceptor, ClientTls, Identity};

use crate::{Component, Settings};

/// The TLS of the public ports (the gateway's), when on.
#[derive(Clone, Debug)]
pub struct PublicTls {
    /// The gRPC port's (ALPN `h2`).
    pub grpc: Acceptor,
    /// The HTTP port's (ALPN `h2`, `http/1.1`).
    pub http: Acceptor,
}

/// The TLS of one process.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// The gateway's ports, when `--tls-cert` is set.
    pub public: Option<PublicTls>,
    /// A service alone: its gRPC port, when `--internal-cert` is set.
    pub internal_server: Option<Acceptor>,
    /// The channels to other services with `https://` addresses, when `--internal-ca` or
    /// `--internal-cert` is set (otherwise such addresses are verified against the public
    /// roots, with no certificate presented).
    pub internal_client: Option<ClientTls>,
}

/// A path setting, with an empty value (`POSTERN_TLS_CERT=`) meaning unset.
fn given(path: &Option<PathBuf>) -> Option<&PathBuf> {
    path.as_ref().filter(|p| !p.as_os_str().is_empty())
}

/// The TLS of `component` from `settings`, its identities watched for changes; every mistake
/// in the settings is reported at once.
pub fn configure(component: Component, settings: &Settings) -> anyhow::Result<Tls> {
    let (tls_cert, tls_key, client_ca) =
        (given(&settings.tls_cert), given(&settings.tls_key), given(&settings.tls_client_ca));
    let (internal_ca, internal_cert, internal_key) =
        (given(&settings.internal_ca), given(&settings.internal_cert), given(&settings.internal_cert_key));
    let backend = matches!(component, Component::Tenant | Component::Registry | Component::Authn);
    let mut problems = Vec::new();
    if tls_cert.is_some() != tls_key.is_some() {
        problems.push(
            "--tls-cert (POSTERN_TLS_CERT) and --tls-key (POSTERN_TLS_KEY) go together: give both or neither"
                .to_owned(),
        );
    }
    if client_ca.is_some() && tls_cert.is_none() {
        problems.push(
            "--tls-client-ca (POSTERN_TLS_CLIENT_CA) needs --tls-cert and --tls-key: client certificates are asked for \
             only over TLS"
                .to_owned(),
        );
    }
    if internal_cert.is_some() != internal_key.is_some() {
        problems.push(
            "--internal-cert (POSTERN_INTERNAL_CERT) and --internal-cert-key (POSTERN_INTERNAL_CERT_KEY) go together: \
             give both or neither"
                .to_owned(),
        );
    }
    if backend && (tls_cert.is_some() || client_ca.is_some()) {
        problems.push(format!(
            "`serve {}` has no public port: its gRPC port is internal, so its TLS is --internal-cert and \
             --internal-cert-key (POSTERN_INTERNAL_CERT, POSTERN_INTERNAL_CERT_KEY), with --internal-ca to require its \
             callers' certificates; --tls-cert, --tls-key and --tls-client-ca are the gateway's",
            component_name(component)
        ));
    }
    if !problems.is_empty() {
        anyhow::bail!("TLS settings: {}", problems.join("; "));
    }
    let every = Duration::from_millis(settings.tls_reload_ms.max(1));
    let mut tls = Tls::default();

    if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
        let identity = Identity::load("public", cert, key).context("the public ports' certificate (--tls-cert)")?;
        let client_ca = client_ca.map(PathBuf::as_path);
        let acceptor = |port: &'static str, alpn: &[&[u8]]| {
            Acceptor::new(port, &identity, client_ca, alpn).context("the public ports' TLS (--tls-client-ca)")
        };
        tls.public = Some(PublicTls { grpc: acceptor("grpc", ALPN_GRPC)?, http: acceptor("http", ALPN_HTTP)? });
        identity.watch(every);
        tracing::info!(
            cert = %cert.display(),
            client_certificates = if client_ca.is_some() { "required" } else { "not asked for" },
            reload_every_ms = settings.tls_reload_ms,
            "TLS on the public gRPC and HTTP ports"
        );
    }

    if component == Component::All {
        if internal_ca.is_some() || internal_cert.is_some() {
            tracing::warn!(
                "--internal-ca and --internal-cert are for split processes; the all-in-one process calls its services in \
                 process and ignores them"
            );
        }
        return Ok(tls);
    }
    let identity = match (internal_cert, internal_key) {
        (Some(cert), Some(key)) => {
            let identity =
                Identity::load("internal", cert, key).context("the internal certificate (--internal-cert)")?;
            identity.watch(every);
            Some(identity)
        }
        _ => None,
    };
    let internal_ca = internal_ca.map(PathBuf::as_path);
    if internal_ca.is_some() || identity.is_some() {
        tls.internal_client = Some(
            ClientTls::new(internal_ca, identity.as_ref()).context("the services' trust anchors (--internal-ca)")?,
        );
    }
    if backend {
        match &identity {
            Some(identity) => {
                tls.internal_server = Some(
                    Acceptor::new("grpc", identity, internal_ca, ALPN_GRPC)
                        .context("the callers' trust anchors (--internal-ca)")?,
                );
                if internal_ca.is_some() {
                    tracing::info!(
                        "TLS on the service's port; callers must present a certificate issued by --internal-ca (mTLS)"
                    );
                } else {
                    tracing::warn!(
                        "TLS on the service's port, but callers are not asked for certificates: set --internal-ca \
                         (POSTERN_INTERNAL_CA) to require them"
                    );
                }
            }
            None if internal_ca.is_some() => tracing::info!(
                "--internal-ca verifies the https:// service addresses this service calls; its own port is plaintext \
                 without --internal-cert"
            ),
            None => {}
        }
    }
    Ok(tls)
}

fn component_name(component: Component) -> &'static str {
    match component {
        Component::All => "all",
        Component::Tenant => "tenant",
        Component::Gateway => "gateway",
        Component::Registry => "registry",
        Component::Authn => "authn",
    }
}

/// How `postern health` speaks TLS: with an `https://` address, `--tls` or any of these set.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HealthTls {
    /// Speak TLS to the address (implied by an `https://` address or any option below).
    #[arg(long = "tls", env = "POSTERN_HEALTH_TLS")]
    pub enabled: bool,
    /// The CA certificates (PEM) the server's certificate must be issued by; default: the
    /// public roots.
    #[arg(long, env = "POSTERN_HEALTH_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The name the server's certificate must carry; default: the address's host (a
    /// container asking its own loopback port names the certificate's DNS name here).
    #[arg(long, env = "POSTERN_HEALTH_SERVER_NAME")]
    pub server_name: Option<String>,
    /// A client certificate (PEM) for a port that requires one (a service with
    /// `--internal-ca`, a gateway with `--tls-client-ca`); with `--client-key`.
    #[arg(long, env = "POSTERN_HEALTH_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "POSTERN_HEALTH_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

impl HealthTls {
    /// Whether TLS is asked for.
    pub fn wanted(&self) -> bool {
        self.enabled
            || given(&self.ca_cert).is_some()
            || self.server_name.as_deref().is_some_and(|n| !n.is_empty())
            || given(&self.client_cert).is_some()
    }

    /// The client side of the check's TLS.
    pub fn client(&self) -> Result<ClientTls, String> {
        let identity = match (given(&self.client_cert), given(&self.client_key)) {
            (Some(cert), Some(key)) => Some(Identity::load("health", cert, key).map_err(|e| e.to_string())?),
            (None, None) => None,
            _ => return Err("--client-cert and --client-key go together".to_owned()),
        };
        ClientTls::new(given(&self.ca_cert).map(PathBuf::as_path), identity.as_ref()).map_err(|e| e.to_string())
    }

    /// The server name to verify, if set.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref().filter(|n| !n.is_empty())
    }
}
