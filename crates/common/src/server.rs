//! Serving and calling: the boxed HTTP service every backend is reached through (in process
//! or over a channel), server reflection and health, the per-RPC tracing span and metrics,
//! and the shutdown signal.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tracing::Instrument;

use crate::connections::{Connections, TrackLayer};
use crate::tls::Incoming;

/// The error of an [`HttpService`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A transport failure reaching a backend (a concrete type: tonic clients over a boxed
/// `dyn Error` trip a lifetime inference limit of rustc in async code).
#[derive(Debug)]
pub struct CallError(pub BoxError);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A gRPC backend as a plain HTTP service: a service's routes in process, or a channel to it.
pub type HttpService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, CallError>;

/// The header carrying a request id from the gateway to backends and back to the caller.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Boxes a service's routes (or any infallible HTTP service) as an [`HttpService`].
pub fn in_process<S>(svc: S) -> HttpService
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(svc.map_err(|e: Infallible| match e {}))
}

/// A lazily connecting channel to `uri` (`http://host:port`) as an [`HttpService`].
pub fn remote(uri: &str) -> Result<HttpService, String> {
    remote_with(uri, None)
}

/// A lazily connecting channel to `uri` as an [`HttpService`]: `http://host:port`, or
/// `https://host:port` over TLS with `tls` (trust anchors, and the certificate presented to a
/// server that asks for one; the public roots and none when `None`).
pub fn remote_with(uri: &str, tls: Option<&crate::tls::ClientTls>) -> Result<HttpService, String> {
    let channel = crate::tls::channel(uri, tls, None, |endpoint| {
        endpoint
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true)
    })?;
    Ok(BoxCloneSyncService::new(channel.map_err(|e| CallError(Box::new(e)))))
}

/// Server reflection, v1 and v1alpha (grpcurl 1.8 speaks only the latter), advertising
/// `services` and health, and able to describe every Postern message and the rich error
/// details.
pub fn reflection(
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(postern_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = builder().build_v1()?;
    let v1alpha = builder().build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// Serves a backend alone (the split mode): `routes` (already wrapped in the principal
/// layer) beside health (SERVING for `services` and the whole) and reflection, accepting
/// through `connections`, until `shutdown` resolves; then drains in-flight calls.
pub async fn serve_backend(
    listener: TcpListener,
    routes: tonic::service::Routes,
    services: &[&str],
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    let incoming = Incoming::new(listener, connections.clone(), None)?;
    serve_backend_on(incoming, routes, services, connections, shutdown).await
}

/// [`serve_backend`] on connections accepted by `incoming` (with TLS, say).
pub async fn serve_backend_on(
    incoming: Incoming,
    routes: tonic::service::Routes,
    services: &[&str],
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    for s in services {
        reporter.set_service_status(*s, tonic_health::ServingStatus::Serving).await;
    }
    let (v1, v1alpha) = reflection(services)?;
    let router = routes.add_service(health).add_service(v1).add_service(v1alpha).prepare().into_axum_router();
    grpc_server(&connections)
        .layer(RpcSpanLayer)
        .serve_with_incoming_shutdown(router, incoming.into_stream(), closing(connections.clone(), shutdown))
        .await?;
    Ok(())
}

/// A gRPC server with the HTTP/2 limits of `connections` (keepalive, concurrent streams,
/// header list size) that marks each connection busy while it has a call in flight; serve it
/// with [`Incoming::into_stream`] (or [`Connections::incoming`]) and [`closing`].
pub fn grpc_server(
    connections: &Connections,
) -> tonic::transport::Server<tower::layer::util::Stack<TrackLayer, tower::layer::util::Identity>> {
    let limits = connections.limits();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_max_header_list_size(Some(limits.max_header_list_size))
        .layer(TrackLayer::tonic())
}

/// `shutdown`, then [`Connections::shutdown`]: the signal a server drains on, after which idle
/// connections close at once instead of holding the drain up.
pub async fn closing(connections: Connections, shutdown: impl std::future::Future<Output = ()>) {
    shutdown.await;
    connections.shutdown();
}

/// A tracing span per RPC, carrying the method, the request id and the W3C trace id that
/// the gateway propagates (and, exported over OTLP, the caller's span as its parent), and the RPC's count and latency by method and status
/// ([`crate::telemetry`], side [`Side::Server`](crate::telemetry::Side::Server)): every
/// backend's routes are served through it, in process and alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcSpanLayer;

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

/// The service of [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcSpan<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let traceparent = header(TRACEPARENT_HEADER);
        let trace_id = trace_id(&traceparent).unwrap_or_default().to_owned();
        let path = req.uri().path();
        let span = tracing::info_span!(
            "rpc",
            method = %path,
            request_id = %header(REQUEST_ID_HEADER),
            trace_id = %trace_id,
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
        );
        crate::trace::adopt(&span, &traceparent);
        let call = crate::telemetry::Call::start(crate::telemetry::Side::Server, req.uri().path());
        let answer = self.inner.call(req);
        // The span ends when the answer is ready, not when the server drops the future
        // after it has sent the headers: a caller (the gateway) that has the headers
        // ends its own span, which must enclose this one.
        async move {
            let answer = answer.instrument(span).await;
            answer.map(|response| call.observe(response))
        }
        .boxed()
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(span, 16) && trace != "00000000000000000000000000000000").then_some(trace)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining in-flight calls");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
    }
}
