//! The management port (`--management-listen`, like Keycloak's port 9000): what operators
//! and orchestrators ask a process, apart from the ports callers use, so that neither a flood
//! of callers (it is not subject to the public ports' connection limit) nor a firewall rule
//! for the public ports gets in the way of a probe, and metrics are not public.
//!
//! - `GET /metrics`: Prometheus text (every metric of the process, with the process's own
//!   figures and its database pools read at the scrape).
//! - `GET /health/live`: 200 while the process answers at all.
//! - `GET /health/started`: 200 once the process has opened its databases and bound its
//!   ports; 503 before.
//! - `GET /health/ready`: 200 while it serves calls and each of its databases answers a
//!   trivial query within [`DB_CHECK_TIMEOUT`]; 503 with the reason otherwise (also while it
//!   drains at a stop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use postern_common::db::{Backend, Db};
use tokio::net::TcpListener;

/// How long a readiness check waits for a database's answer.
pub const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Histogram buckets for every `_seconds` histogram, in seconds: go-grpc-prometheus's default
/// buckets with finer ones below 5 ms, where in-process calls land, and 30 s, the default
/// call deadline.
const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What the endpoints report about this process.
pub struct State {
    started: AtomicBool,
    serving: AtomicBool,
    /// The databases this process's services own, by service.
    dbs: Vec<(&'static str, Db)>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
}

impl State {
    /// Marks the process as started and serving (its ports bound), or no longer serving (a
    /// stop has begun).
    pub fn set_serving(&self, serving: bool) {
        if serving {
            self.started.store(true, Ordering::SeqCst);
        }
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Why this process is not ready, if it is not.
    async fn not_ready(&self) -> Option<String> {
        if !self.serving.load(Ordering::SeqCst) {
            let why = if self.started.load(Ordering::SeqCst) { "stopping" } else { "starting" };
            return Some(format!("not serving: {why}"));
        }
        // The databases at once, so that a probe waits at most one timeout.
        let checks: Vec<_> = self
            .dbs
            .iter()
            .map(|(service, db)| {
                let (service, pool) = (*service, db.pool().clone());
                tokio::spawn(async move {
                    let check = sqlx::query("SELECT 1").execute(&pool);
                    match tokio::time::timeout(DB_CHECK_TIMEOUT, check).await {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(format!("the {service} database: {e}")),
                        Err(_) => Some(format!("the {service} database did not answer within {DB_CHECK_TIMEOUT:?}")),
                    }
                })
            })
            .collect();
        let mut reasons = Vec::new();
        for check in checks {
            match check.await {
                Ok(None) => {}
                Ok(Some(reason)) => reasons.push(reason),
                Err(e) => reasons.push(format!("a database check failed: {e}")),
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("\n"))
    }

    fn metrics(&self) -> String {
        postern_common::telemetry::process_gauges();
        for (service, db) in &self.dbs {
            let pools = match db.backend() {
                Backend::Sqlite => {
                    let (commits, writes) = db.shared_commits();
                    postern_common::telemetry::commit_counters(service, commits, writes);
                    vec![("read", db.pool().figures()), ("write", db.writer().figures())]
                }
                Backend::Postgres => vec![("shared", db.pool().figures())],
            };
            for (name, (size, idle, most)) in pools {
                postern_common::telemetry::pool_gauges(service, name, size, idle, most);
            }
        }
        (self.render)()
    }
}

/// The management port, bound and not yet serving.
pub struct Management {
    listener: TcpListener,
    state: Arc<State>,
}

impl Management {
    /// Binds `address` for a process whose services own `dbs`.
    pub async fn bind(address: SocketAddr, dbs: Vec<(&'static str, Db)>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (the management port, --management-listen)"))?;
        let state = Arc::new(State {
            started: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            dbs,
            render: metrics_render(),
        });
        Ok(Self { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Marks the process started and serving (call it once its public ports are bound: the
    /// system queues their connections from then on), and serves the endpoints in a task
    /// until the returned handle is aborted; answers the state, to mark a stop.
    pub fn spawn(self) -> (Arc<State>, tokio::task::JoinHandle<()>) {
        // Before the task runs, so that no probe sees a bound process as starting.
        self.state.set_serving(true);
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, router(self.state)).await {
                tracing::error!(error = %e, "the management port stopped");
            }
        });
        (state, task)
    }
}

fn router(state: Arc<State>) -> Router {
    let text = |code: StatusCode, body: String| (code, [(axum::http::header::CONTENT_TYPE, "text/plain")], body);
    let (ready, started, metrics) = (state.clone(), state.clone(), state);
    Router::new()
        .route("/health/live", get(move || async move { text(StatusCode::OK, "live\n".into()) }))
        .route(
            "/health/started",
            get(move || async move {
                if started.started.load(Ordering::SeqCst) {
                    text(StatusCode::OK, "started\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
                }
            }),
        )
        .route(
            "/health/ready",
            get(move || async move {
                match ready.not_ready().await {
                    None => text(StatusCode::OK, "ready\n".into()),
                    Some(reason) => {
                        tracing::warn!(%reason, "not ready");
                        text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.metrics()).into_response()
            }),
        )
}

/// Installs the Prometheus recorder once per process (histograms with [`BUCKETS`], the build
/// info set) and returns its renderer.
pub(crate) fn metrics_render() -> Arc<dyn Fn() -> String + Send + Sync> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new().set_buckets(&BUCKETS).ok()?;
            let handle = builder.install_recorder().ok()?;
            metrics::gauge!("postern_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Histogram samples pile up until drained: drain them now and then, so that a
            // server nobody scrapes does not grow without bound.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .clone();
    Arc::new(move || handle.as_ref().map(|h| h.render()).unwrap_or_default())
}
