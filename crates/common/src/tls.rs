//! TLS with rustls on aws-lc-rs (the tree's one crypto provider): certificates from PEM files,
//! reloaded when the files change, on the server side of a port and on the client side of a
//! channel to another Postern service.
//!
//! - [`Identity`]: a certificate chain and its private key read from two files and re-read
//!   every so often ([`Identity::watch`]); a new pair that fits replaces the old one for every
//!   handshake after it (it is the `ResolvesServerCert` and the `ResolvesClientCert` of the
//!   configs below), a pair that does not is logged and the old one kept.
//! - [`Acceptor`]: a port's server side (the identity, the ALPN protocols, and the CA whose
//!   certificates clients must present, when one is given: mTLS).
//! - [`Incoming`]: a port's accepted connections, through [`Connections`] (its limits and
//!   timeouts, the TLS handshake included), plaintext or TLS, as [`ServerStream`]s.
//! - [`ClientTls`], [`channel`] and [`connect`]: a gRPC channel to an `https://`
//!   address, verified against a configured CA (or the public roots), presenting an identity
//!   when the server asks for one.
//!
//! The CA files are read once, at start: trust anchors change with a restart.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::connections::{ConnInfo, Connections, LimitedStream};

/// ALPN of a gRPC port: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of an HTTP port: HTTP/2, or HTTP/1.1 for clients that do not speak it.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable certificate or key, or the key does not fit the certificate.
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The configuration is refused by rustls.
    #[error("{0}")]
    Config(String),
}

/// The crypto provider of every TLS config here: aws-lc-rs, as tonic, sqlx and reqwest use.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// The certified key of a PEM chain (`cert`, the server's or client's certificate first) and
/// PEM private key (`key`: PKCS#8, PKCS#1 or SEC1), checked to fit each other.
fn certified_key(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<CertifiedKey, TlsError> {
    let invalid = |path: &Path, why: String| TlsError::Invalid { path: path.to_owned(), why };
    let chain = CertificateDer::pem_slice_iter(cert.1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert.0, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert.0, "holds no certificate (PEM `CERTIFICATE`)".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(key.1).map_err(|e| {
        invalid(key.0, format!("holds no private key (PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`): {e}"))
    })?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| invalid(key.0, format!("is not the private key of the certificate in {}: {e}", cert.0.display())))
}

/// The trust anchors of the PEM certificates in `path` (one or more CA certificates).
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(path)?;
    let invalid = |why: String| TlsError::Invalid { path: path.to_owned(), why };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
        roots.add(der).map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("holds no certificate (PEM `CERTIFICATE`)".into()));
    }
    Ok(roots)
}

/// How long a pair that does not fit is given to settle before it counts as bad.
const SETTLE: Duration = Duration::from_millis(50);

/// What a look at an identity's files found.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// A new pair was read and is served from now on.
    Loaded,
    /// The files changed but cannot be used; the previous pair is kept.
    Failed(TlsError),
}

/// A certificate chain and its key, from two PEM files that [`Identity::watch`] re-reads.
/// Cloning shares it.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    /// For logs and metrics: `public`, `internal`.
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' contents last read (usable or not), so that a bad pair is reported once.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
    /// The last failure reported, so that a file missing for a while is reported once.
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.inner.name)
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the pair at `cert` and `key`; `name` names it in logs and metrics.
    pub fn load(name: &'static str, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certified = certified_key((cert, cert_pem.as_slice()), (key, key_pem.as_slice()))?;
        Ok(Self {
            inner: Arc::new(IdentityInner {
                name,
                cert: cert.to_owned(),
                key: key.to_owned(),
                current: RwLock::new(Arc::new(certified)),
                seen: Mutex::new((cert_pem, key_pem)),
                failure: Mutex::new(None),
            }),
        })
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.inner.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the files again and, when they changed and fit, serves the new pair from the
    /// next handshake on.
    ///
    /// A pair that does not fit is read once more a moment later before it counts as bad:
    /// two files cannot be replaced at once (even a Kubernetes Secret's swapped link may fall
    /// between the reads of the certificate and of the key), so a pair read half old, half
    /// new is taken for a change in progress, not reported.
    pub async fn reload(&self) -> Reload {
        let inner = &self.inner;
        let mut tries = 0;
        loop {
            let files = async { Ok::<_, TlsError>((read_async(&inner.cert).await?, read_async(&inner.key).await?)) };
            let (cert_pem, key_pem) = match files.await {
                Ok(files) => files,
                Err(e) => return Reload::Failed(e),
            };
            {
                let seen = inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
                if seen.0 == cert_pem && seen.1 == key_pem {
                    return Reload::Unchanged;
                }
            }
            match certified_key((inner.cert.as_path(), cert_pem.as_slice()), (inner.key.as_path(), key_pem.as_slice()))
            {
                Ok(certified) => {
                    *inner.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                    *inner.seen.lock().unwrap_or_else(PoisonError::into_inner) = (cert_pem, key_pem);
                    return Reload::Loaded;
                }
                Err(e) => {
                    tries += 1;
                    tokio::time::sleep(SETTLE).await;
                    let again = (read_async(&inner.cert).await, read_async(&inner.key).await);
                    let settled = matches!(&again, (Ok(c), Ok(k)) if *c == cert_pem && *k == key_pem);
                    if settled || tries >= 3 {
                        // Bad as it stands: reported once, until the files change again.
                        *inner.seen.lock().unwrap_or_else(PoisonError::into_inner) = (cert_pem, key_pem);
                        return Reload::Failed(e);
                    }
                }
            }
        }
    }

    /// Re-reads the files every `every` for as long as the identity is in use, logging what
    /// changed: a new pair at info, one that cannot be used (a key that does not fit, a file
    /// missing or half written) at warn, once. Counted in
    /// `postern_tls_certificate_reloads_total{identity, result}`.
    pub fn watch(&self, every: Duration) {
        let weak: Weak<IdentityInner> = Arc::downgrade(&self.inner);
        let every = every.max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let identity = Identity { inner };
                identity.report(identity.reload().await);
            }
        });
    }

    fn report(&self, reload: Reload) {
        let inner = &self.inner;
        let (cert, key) = (inner.cert.display(), inner.key.display());
        let mut failure = inner.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match reload {
            Reload::Unchanged => {}
            Reload::Loaded => {
                *failure = None;
                metrics::counter!("postern_tls_certificate_reloads_total", "identity" => inner.name, "result" => "loaded")
                    .increment(1);
                tracing::info!(identity = inner.name, %cert, %key, "TLS certificate reloaded; new handshakes use it");
            }
            Reload::Failed(e) => {
                let why = e.to_string();
                if failure.as_deref() != Some(why.as_str()) {
                    metrics::counter!("postern_tls_certificate_reloads_total", "identity" => inner.name, "result" => "failed")
                        .increment(1);
                    tracing::warn!(
                        identity = inner.name, %cert, %key, error = %why,
                        "the TLS certificate files changed but cannot be used; still serving the previous certificate"
                    );
                    *failure = Some(why);
                }
            }
        }
    }
}

async fn read_async(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side of a port's TLS.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    /// For logs and metrics: `grpc`, `http`.
    port: &'static str,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Acceptor {
    /// TLS 1.2 and 1.3 serving `identity` (as it is at each handshake), offering `alpn`, and
    /// when `client_ca` is given, requiring of every client a certificate issued by it.
    /// `port` names the port in logs and metrics.
    pub fn new(
        port: &'static str,
        identity: &Identity,
        client_ca: Option<&Path>,
        alpn: &[&[u8]],
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(path) => {
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider)
                        .build()
                        .map_err(|e| TlsError::Invalid { path: path.to_owned(), why: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(identity.clone()));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self { inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)), port })
    }
}

/// An accepted connection, plaintext or TLS.
#[derive(Debug)]
pub enum ServerStream {
    /// Plaintext.
    Plain(LimitedStream),
    /// TLS, its handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<LimitedStream>>),
}

impl ServerStream {
    /// The connection's addresses and its activity.
    pub fn info(&self) -> &ConnInfo {
        match self {
            Self::Plain(s) => s.info(),
            Self::Tls(s) => s.get_ref().0.info(),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info().clone()
    }
}

/// A port's accepted connections: through [`Connections`], then, for a TLS port, through the
/// handshake. Handshakes run concurrently, so a client that is slow to finish one (or never
/// does, until the handshake timeout closes it) holds up no other.
pub struct Incoming {
    local: SocketAddr,
    kind: IncomingKind,
}

enum IncomingKind {
    Plain { listener: TcpListener, connections: Connections },
    Tls { handshaken: tokio::sync::mpsc::Receiver<ServerStream> },
}

impl Incoming {
    /// The connections accepted on `listener` through `connections`, with TLS when `tls` is
    /// given. For a TLS port, it accepts from a task of its own, which ends (closing the
    /// listener) when this is dropped.
    pub fn new(listener: TcpListener, connections: Connections, tls: Option<Acceptor>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let kind = match tls {
            None => IncomingKind::Plain { listener, connections },
            Some(acceptor) => {
                let (tx, handshaken) = tokio::sync::mpsc::channel(64);
                tokio::spawn(accept_tls(listener, connections, acceptor, tx));
                IncomingKind::Tls { handshaken }
            }
        };
        Ok(Self { local, kind })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection ready to serve.
    pub async fn accept(&mut self) -> ServerStream {
        match &mut self.kind {
            IncomingKind::Plain { listener, connections } => ServerStream::Plain(connections.accept(listener).await),
            IncomingKind::Tls { handshaken } => match handshaken.recv().await {
                Some(stream) => stream,
                // The accepting task never ends while this lives.
                None => std::future::pending().await,
            },
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<ServerStream, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut incoming| async move {
            let stream = incoming.accept().await;
            Some((Ok(stream), incoming))
        })
    }
}

/// Accepts on `listener` and hands each connection whose handshake succeeds to `tx`, until
/// its receiver is gone.
async fn accept_tls(
    listener: TcpListener,
    connections: Connections,
    acceptor: Acceptor,
    tx: tokio::sync::mpsc::Sender<ServerStream>,
) {
    loop {
        let stream = tokio::select! {
            stream = connections.accept(&listener) => stream,
            () = tx.closed() => return,
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let remote = stream.info().tcp.remote_addr;
            // The connection's handshake timeout bounds this: past it the socket reads as
            // ended and the handshake fails.
            match acceptor.inner.accept(stream).await {
                Ok(tls) => {
                    let _ = tx.send(ServerStream::Tls(Box::new(tls))).await;
                }
                Err(e) => {
                    metrics::counter!("postern_tls_handshake_failures_total", "port" => acceptor.port).increment(1);
                    tracing::debug!(port = acceptor.port, ?remote, error = %e, "TLS handshake failed");
                }
            }
        });
    }
}

/// The client side of TLS to other Postern services: trust anchors and, when the server asks
/// for one, the identity presented.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Verifying servers against the CA certificates in `ca` (the public roots when `None`),
    /// presenting `identity` (as it is at each handshake) to servers that ask, speaking HTTP/2.
    pub fn new(ca: Option<&Path>, identity: Option<&Identity>) -> Result<Self, TlsError> {
        let roots = match ca {
            Some(path) => roots(path)?,
            None => webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(identity.clone())),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config) })
    }
}

/// Connects over TCP to a fixed address and runs the TLS handshake, for tonic's
/// `connect_with_connector_lazy`.
#[derive(Clone)]
struct Connector {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A gRPC endpoint ready to connect: plaintext, or with the TLS connector tonic must use.
enum Prepared {
    Plain(tonic::transport::Endpoint),
    Tls(tonic::transport::Endpoint, Connector),
}

/// The endpoint of `uri`: plaintext for `http://`, and for `https://` TLS with `tls` (the
/// public roots and no client certificate when `None`), verifying the server's certificate
/// for `server_name` (default: the URI's host).
fn prepare(uri: &str, tls: Option<&ClientTls>, server_name: Option<&str>) -> Result<Prepared, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{uri:?} is not a valid address: {e}");
    let parsed: http::Uri = uri.parse().map_err(|e| bad(&e))?;
    match parsed.scheme_str() {
        Some("http") => {
            return Ok(Prepared::Plain(tonic::transport::Endpoint::from_shared(uri.to_owned()).map_err(|e| bad(&e))?));
        }
        Some("https") => {}
        _ => return Err(bad(&"it must start with http:// or https://")),
    }
    let authority = parsed.authority().ok_or_else(|| bad(&"no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(443);
    let name = server_name.unwrap_or(&host).to_owned();
    let name =
        ServerName::try_from(name.clone()).map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))?;
    let tls = match tls {
        Some(tls) => tls.clone(),
        None => ClientTls::new(None, None).map_err(|e| e.to_string())?,
    };
    let connector = Connector { host, port, name, tls: tokio_rustls::TlsConnector::from(tls.config) };
    // tonic is given `http://` (the TLS is the connector's) and sends `https` as the requests'
    // scheme.
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{authority}")).map_err(|e| bad(&e))?.origin(parsed);
    Ok(Prepared::Tls(endpoint, connector))
}

/// A lazily connecting gRPC channel to `uri`: plaintext for `http://`, and for `https://` TLS
/// with `tls` (the public roots and no client certificate when `None`), verifying the
/// server's certificate for `server_name` (default: the URI's host). `configure` sets the
/// endpoint's timeouts and keepalive.
pub fn channel(
    uri: &str,
    tls: Option<&ClientTls>,
    server_name: Option<&str>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    Ok(match prepare(uri, tls, server_name)? {
        Prepared::Plain(endpoint) => configure(endpoint).connect_lazy(),
        Prepared::Tls(endpoint, connector) => configure(endpoint).connect_with_connector_lazy(connector),
    })
}

/// Like [`channel`], connected now: an address that cannot be reached, or a handshake that
/// fails, is the error.
pub async fn connect(
    uri: &str,
    tls: Option<&ClientTls>,
    server_name: Option<&str>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, ConnectError> {
    let connected = match prepare(uri, tls, server_name).map_err(ConnectError::Address)? {
        Prepared::Plain(endpoint) => configure(endpoint).connect().await,
        Prepared::Tls(endpoint, connector) => configure(endpoint).connect_with_connector(connector).await,
    };
    connected.map_err(ConnectError::Connect)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not one.
    #[error("{0}")]
    Address(String),
    /// Connecting or the handshake failed (told with its causes: tonic's own message is
    /// only `transport error`).
    #[error("{}", crate::error::with_causes(.0))]
    Connect(tonic::transport::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params").self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn a_reload_takes_a_new_pair_and_keeps_the_old_one_for_a_bad_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (a_cert, a_key) = pair("a.example");
        std::fs::write(&cert, &a_cert).expect("write");
        std::fs::write(&key, &a_key).expect("write");
        let identity = Identity::load("test", &cert, &key).expect("load");
        let first = identity.current();
        assert!(matches!(identity.reload().await, Reload::Unchanged));

        // The certificate of another key: refused, the first pair still served.
        let (b_cert, b_key) = pair("b.example");
        std::fs::write(&cert, &b_cert).expect("write");
        match identity.reload().await {
            Reload::Failed(TlsError::Invalid { why, .. }) => assert!(why.contains("is not the private key"), "{why}"),
            other => panic!("a mismatched pair must fail, got {other:?}"),
        }
        assert_eq!(identity.current().cert, first.cert);
        // Reported once: the same bad files are not read as a change again.
        assert!(matches!(identity.reload().await, Reload::Unchanged));

        std::fs::write(&key, &b_key).expect("write");
        assert!(matches!(identity.reload().await, Reload::Loaded));
        assert_ne!(identity.current().cert, first.cert);

        std::fs::write(&key, "not a key").expect("write");
        assert!(matches!(identity.reload().await, Reload::Failed(_)));
        std::fs::remove_file(&cert).expect("remove");
        assert!(matches!(identity.reload().await, Reload::Failed(TlsError::Read { .. })));
    }

    #[test]
    fn files_without_certificates_or_keys_are_refused_with_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c, _) = pair("a.example");
        std::fs::write(&cert, "").expect("write");
        std::fs::write(&key, "").expect("write");
        let e = Identity::load("test", &cert, &key).expect_err("empty");
        assert!(e.to_string().contains("tls.crt") && e.to_string().contains("no certificate"), "{e}");
        std::fs::write(&cert, &c).expect("write");
        let e = Identity::load("test", &cert, &key).expect_err("no key");
        assert!(e.to_string().contains("tls.key") && e.to_string().contains("no private key"), "{e}");
        let e = roots(&key).expect_err("no CA");
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = Identity::load("test", &dir.path().join("missing.crt"), &key).expect_err("missing");
        assert!(e.to_string().contains("cannot read") && e.to_string().contains("missing.crt"), "{e}");
    }
}
