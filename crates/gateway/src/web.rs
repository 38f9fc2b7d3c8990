//! The HTTP port: `/healthz` (200 when every backend is up, 503 otherwise). Metrics are not
//! here but on the process's management port (the binary's `management` module). Other pieces (the OpenID provider of `postern-provider`) merge their
//! own routes into the router this returns; their handlers find the peer's address as a
//! [`PeerAddr`] extension.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::get;

use postern_common::connections::{ConnInfo, Connections, TrackLayer};
use postern_common::principal::PeerAddr;
use postern_common::tls::{Incoming, ServerStream};

use crate::routing::RouteTable;

/// The HTTP routes of the gateway.
pub fn router(routes: RouteTable) -> Router {
    Router::new().route(
        "/healthz",
        get(move || {
            let routes = routes.clone();
            async move {
                let body: String = routes
                    .services()
                    .iter()
                    .map(|s| {
                        let up = routes.get(s).is_some_and(crate::routing::Backend::is_serving);
                        format!("{s} {}\n", if up { "SERVING" } else { "NOT_SERVING" })
                    })
                    .collect();
                let code = if routes.all_serving() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                (code, body)
            }
        }),
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, accepting through
/// `connections` (its timeouts and limit); idle connections then close at once, busy ones when
/// answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let incoming = Incoming::new(listener, connections.clone(), None)?;
    serve_on(incoming, router, connections, shutdown).await
}

/// [`serve`] on the connections `incoming` accepts: with TLS, HTTP/2 or HTTP/1.1 as ALPN
/// chose; in plaintext, HTTP/1.1 (or HTTP/2 with prior knowledge).
pub async fn serve_on(
    incoming: Incoming,
    router: Router,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer's address for the handlers (brute-force protection counts per address).
    let router = router.layer(tower::util::MapRequestLayer::new(|mut req: axum::http::Request<axum::body::Body>| {
        let peer = req.extensions().get::<ConnectInfo<HttpConn>>().and_then(|c| c.0.0.tcp.remote_addr);
        if let Some(addr) = peer {
            req.extensions_mut().insert(PeerAddr(addr.ip()));
        }
        req
    }));
    let router = router.layer(TrackLayer::new(|e| e.get::<ConnectInfo<HttpConn>>().map(|c| c.0.0.clone())));
    let closing = connections.clone();
    let listener = HttpListener { incoming };
    axum::serve(listener, router.into_make_service_with_connect_info::<HttpConn>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.shutdown();
        })
        .await
}

/// The HTTP port's listener: accepts through [`Connections`] (and the TLS handshake).
struct HttpListener {
    incoming: Incoming,
}

impl axum::serve::Listener for HttpListener {
    type Io = ServerStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let stream = self.incoming.accept().await;
        let remote = stream.info().tcp.remote_addr.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        (stream, remote)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.incoming.local_addr())
    }
}

/// A request's connection on the HTTP port, for [`TrackLayer`].
#[derive(Clone)]
struct HttpConn(ConnInfo);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>> for HttpConn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        Self(stream.io().info().clone())
    }
}
