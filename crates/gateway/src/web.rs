//! The HTTP port: `/healthz` (200 when every backend is up, 503 otherwise) and `/metrics`
//! (Prometheus text). Other pieces (the authenticator's JWKS and discovery documents) merge
//! their own routes into the router this returns.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::routing::RouteTable;

/// Renders the metrics in Prometheus text format.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP routes of the gateway.
pub fn router(routes: RouteTable, metrics: MetricsRender) -> Router {
    Router::new()
        .route(
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
        .route("/metrics", get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics()).into_response() }
        }))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
