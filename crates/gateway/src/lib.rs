//! The gateway: one public gRPC port in front of every Postern service, and the HTTP port.
//!
//! A call's route is the service name in its gRPC path; its body streams through without
//! being decoded, so adding a service is a line in the [`RouteTable`]. In the all-in-one
//! process a route's backend is the service's routes in process; when the services run apart
//! it is a set of HTTP/2 channels, balanced round robin over the healthy ones. The same
//! middleware runs either way: the caller's bearer key is authenticated (through the tenant
//! service, cached briefly), a signed principal replaces whatever identity headers the
//! caller sent, a per-key rate limit applies, and each call gets a request id, a deadline and
//! a span whose W3C trace context reaches the backend. Reflection and health are served here
//! for every routed service and need no key.
//!
//! # Layout
//! - [`routing`]: the route table, backends, balancing, health tracking.
//! - [`auth`]: bearer keys to principals, with a cache.
//! - [`events`]: the tenant event log, which retires what the caches hold.
//! - [`proxy`]: the forwarding path.
//! - [`closing`]: answers still streaming when the gateway shuts down.
//! - [`web`]: the HTTP port (`/healthz`, and routes other crates add: the
//!   OpenID provider of `postern-provider`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod budget;
pub mod closing;
pub mod events;
pub mod proxy;
pub mod routing;
pub mod web;

use std::time::Duration;

use postern_common::connections::Connections;
use postern_common::principal::InternalKey;
use postern_common::server::BoxError;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use proxy::RateLimit;
pub use routing::{Backend, Endpoint, RouteTable};

/// The service that owns API keys; the gateway asks it who a key belongs to.
pub const KEY_SERVICE: &str = "postern.tenant.v1.ApiKeyService";

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Signs the principals handed to backends.
    pub internal_key: InternalKey,
    /// How long an authenticated key is trusted without asking again.
    pub key_cache_ttl: Duration,
    /// The per-key rate limit.
    pub rate_limit: RateLimit,
    /// The longest a call may take (a caller's shorter `grpc-timeout` wins).
    pub default_deadline: Duration,
    /// How often remote backends are health-checked.
    pub health_interval: Duration,
    /// The process's connections: timeouts, limits, HTTP/2 settings.
    pub connections: Connections,
}

/// A gateway ready to serve.
pub struct Gateway {
    routes: RouteTable,
    proxy: proxy::Proxy,
    config: GatewayConfig,
    tenant_service: postern_common::server::HttpService,
    coherence: postern_common::coherence::Coherence,
    close: tokio::sync::watch::Sender<bool>,
}

/// A gateway that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route leads to the tenant service, so keys cannot be checked.
    #[error("the route table has no backend for {KEY_SERVICE}, which checks bearer keys")]
    NoKeyService,
    /// Reflection could not be built.
    #[error(transparent)]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Serving failed.
    #[error("gateway server failed: {0}")]
    Serve(BoxError),
}

impl Gateway {
    /// A gateway over `routes`.
    pub fn new(routes: RouteTable, config: GatewayConfig) -> Result<Self, GatewayError> {
        let key_backend = routes.get(KEY_SERVICE).ok_or(GatewayError::NoKeyService)?.clone();
        let tenant_service = postern_common::server::in_process(KeyBackend(key_backend));
        let coherence = postern_common::coherence::Coherence::default();
        let auth = auth::KeyAuthenticator::new(
            tenant_service.clone(),
            config.internal_key.clone(),
            config.key_cache_ttl,
            coherence.clone(),
        );
        let (close, closing) = tokio::sync::watch::channel(false);
        let proxy = proxy::Proxy::new(
            routes.clone(),
            auth,
            config.internal_key.clone(),
            config.rate_limit,
            config.default_deadline,
            config.connections.limits().request_bytes_in_flight,
            closing,
        );
        Ok(Self { routes, proxy, config, tenant_service, coherence, close })
    }

    /// What this gateway's caches of tenant data consult, for others in the process that
    /// cache tenant data too (the OpenID provider's documents): it is kept by the gateway's
    /// follower of the tenant event log once [`serve`](Self::serve) runs.
    pub fn coherence(&self) -> postern_common::coherence::Coherence {
        self.coherence.clone()
    }

    /// The route table, e.g. to report health on the HTTP port.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight calls
    /// (answers still streaming after [`closing::STREAM_GRACE`] end with UNAVAILABLE).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        let incoming = postern_common::tls::Incoming::new(listener, self.config.connections.clone(), None)
            .map_err(|e| GatewayError::Serve(Box::new(e)))?;
        self.serve_on(incoming, shutdown).await
    }

    /// [`serve`](Self::serve) on the connections `incoming` accepts (with TLS, say).
    pub async fn serve_on(
        self,
        incoming: postern_common::tls::Incoming,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let (v1, v1alpha) = postern_common::server::reflection(&self.routes.services())?;
        let watcher = tokio::spawn(self.routes.clone().watch_health(reporter.clone(), self.config.health_interval));
        let stop_watching = watcher.abort_handle();
        let services: Vec<String> = self.routes.services().into_iter().map(str::to_owned).collect();
        let follower = tokio::spawn(events::follow(
            self.tenant_service.clone(),
            self.config.internal_key.clone(),
            self.coherence.clone(),
        ));
        let closing = self.close.subscribe();
        let router = tonic::service::Routes::new(health)
            .add_service(v1)
            .add_service(v1alpha)
            .into_axum_router()
            // The gateway's own answers (a health Watch streams for as long as its client
            // wants) end like the forwarded ones once it closes; the proxy's are wrapped there.
            .layer(axum::middleware::map_response(move |r: axum::response::Response| {
                let closing = closing.clone();
                async move { r.map(|body| axum::body::Body::new(closing::Closable::new(body, closing))) }
            }))
            .fallback_service(
                self.proxy.map_request(|r: http::Request<axum::body::Body>| r.map(tonic::body::Body::new)),
            )
            .with_state(());
        let result = postern_common::server::grpc_server(&self.config.connections)
            .serve_with_incoming_shutdown(
                router,
                incoming.into_stream(),
                postern_common::server::closing(self.config.connections.clone(), {
                    let close = self.close.clone();
                    async move {
                        shutdown.await;
                        // Health watchers (load balancers, grpc-go's health checking) hear
                        // that this gateway is going before their streams end.
                        stop_watching.abort();
                        for name in services.iter().map(String::as_str).chain([""]) {
                            reporter.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
                        }
                        close.send_replace(true);
                    }
                }),
            )
            .await;
        watcher.abort();
        follower.abort();
        self.coherence.set_live(false);
        result.map_err(|e| GatewayError::Serve(Box::new(e)))
    }
}

/// The tenant backend as one service for the gateway's own reads of it (a key check, the
/// event log): each call goes to a healthy endpoint, round robin, and one that an endpoint
/// answers UNAVAILABLE before it sends anything (shutting down, its database out of reach) or
/// cannot be reached goes to the next endpoint, once, so that one replica's outage does not
/// fail callers while another answers. The requests are single small messages, read whole
/// before the first try so that the second can send them again.
#[derive(Clone)]
struct KeyBackend(Backend);

/// How many endpoints a read of the tenant service tries.
const KEY_BACKEND_TRIES: usize = 2;

impl tower::Service<http::Request<tonic::body::Body>> for KeyBackend {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use futures_util::FutureExt;
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let endpoints: Vec<Endpoint> = self.0.picks().take(KEY_BACKEND_TRIES).cloned().collect();
        async move {
            let (parts, body) = req.into_parts();
            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                return Ok(tenant_unavailable().into_http());
            };
            let mut answer = None;
            for endpoint in endpoints {
                let mut again = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(body.clone())));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                match endpoint.service().oneshot(again).await {
                    Ok(r) if refused_unavailable(&r) => {
                        tracing::debug!(address = %endpoint.address, "the tenant service answered UNAVAILABLE; trying another");
                        answer = Some(r);
                    }
                    Ok(r) => return Ok(r),
                    Err(e) => {
                        endpoint.mark_down();
                        tracing::warn!(address = %endpoint.address, error = %e, "tenant service call failed");
                    }
                }
            }
            Ok(answer.unwrap_or_else(|| tenant_unavailable().into_http()))
        }
        .boxed()
    }
}

/// Whether `response` is a refusal with UNAVAILABLE and nothing else (the status in its
/// headers, no message sent): safe to send again elsewhere.
fn refused_unavailable(response: &http::Response<tonic::body::Body>) -> bool {
    response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"14")
}

fn tenant_unavailable() -> tonic::Status {
    postern_common::error::unavailable(
        "TENANT_SERVICE_UNAVAILABLE",
        "cannot check the bearer key now: the tenant service is unavailable; retry",
    )
}
