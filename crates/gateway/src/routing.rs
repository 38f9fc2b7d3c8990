//! The routing table: which backend serves each gRPC service, balanced over its addresses,
//! with each address's health tracked so that a service whose backends are all down is
//! NOT_SERVING and its calls fail fast.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use postern_common::server::HttpService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// One address of a backend.
#[derive(Clone)]
pub struct Endpoint {
    /// Where it is (`in-process`, `http://host:port` or `https://host:port`), for logs.
    pub address: String,
    svc: HttpService,
    healthy: Arc<AtomicBool>,
    in_process: bool,
}

impl Endpoint {
    /// A backend running in this process: always healthy, no socket.
    pub fn in_process(svc: HttpService) -> Self {
        Self { address: "in-process".into(), svc, healthy: Arc::new(AtomicBool::new(true)), in_process: true }
    }

    /// A backend reached over HTTP/2 at `address` (`http://host:port`).
    pub fn remote(address: &str) -> Result<Self, String> {
        Self::remote_with(address, None)
    }

    /// A backend reached over HTTP/2 at `address`: `http://host:port`, or `https://host:port`
    /// over TLS with `tls` (see [`postern_common::server::remote_with`]).
    pub fn remote_with(address: &str, tls: Option<&postern_common::tls::ClientTls>) -> Result<Self, String> {
        Ok(Self {
            address: address.to_owned(),
            svc: postern_common::server::remote_with(address, tls)?,
            healthy: Arc::new(AtomicBool::new(true)),
            in_process: false,
        })
    }

    /// Whether the last health check or call found it up.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records that a call to it failed at the transport level.
    pub fn mark_down(&self) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(address = %self.address, "backend marked down");
        }
    }

    /// The service to call.
    pub fn service(&self) -> HttpService {
        self.svc.clone()
    }
}

/// The addresses of one backend and a round-robin cursor over the healthy ones.
#[derive(Clone)]
pub struct Backend {
    endpoints: Arc<[Endpoint]>,
    next: Arc<AtomicUsize>,
}

impl Backend {
    /// A backend over `endpoints` (at least one).
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self { endpoints: endpoints.into(), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// The next healthy endpoint, round robin; `None` when all are down.
    pub fn pick(&self) -> Option<&Endpoint> {
        self.picks().next()
    }

    /// The healthy endpoints, each once, starting at the next one round robin: where a call
    /// that may be tried again goes first, then next.
    pub fn picks(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |i| &self.endpoints[(start + i) % n]).filter(|e| e.is_healthy())
    }

    /// Whether at least one endpoint is up.
    pub fn is_serving(&self) -> bool {
        self.endpoints.iter().any(Endpoint::is_healthy)
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

/// The routing table: gRPC service name → backend, the methods never routed from outside,
/// and the methods a caller may reach without a key.
#[derive(Clone, Default)]
pub struct RouteTable {
    routes: HashMap<String, Backend>,
    internal: std::collections::HashSet<String>,
    public: std::collections::HashSet<String>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes each of `services` (`postern.tenant.v1.TenantService`) to `backend`.
    pub fn route(&mut self, services: &[&str], backend: Backend) -> &mut Self {
        for s in services {
            self.routes.insert((*s).to_owned(), backend.clone());
        }
        self
    }

    /// Marks `methods` (`/pkg.Service/Method`) as internal: callers from outside are refused.
    pub fn internal(&mut self, methods: &[&str]) -> &mut Self {
        self.internal.extend(methods.iter().map(|m| (*m).to_owned()));
        self
    }

    /// Marks `methods` (`/pkg.Service/Method`) as public: a caller without a key reaches them
    /// as [`Principal::Anonymous`](postern_common::principal::Principal::Anonymous) (the
    /// service's backend checks the list again).
    pub fn public(&mut self, methods: &[&str]) -> &mut Self {
        self.public.extend(methods.iter().map(|m| (*m).to_owned()));
        self
    }

    /// The backend of a service.
    pub fn get(&self, service: &str) -> Option<&Backend> {
        self.routes.get(service)
    }

    /// Whether a method is internal-only.
    pub fn is_internal(&self, path: &str) -> bool {
        self.internal.contains(path)
    }

    /// Whether a caller without a key may call a method.
    pub fn is_public(&self, path: &str) -> bool {
        self.public.contains(path)
    }

    /// The routed service names, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut v: Vec<_> = self.routes.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Publishes every service's status to `reporter` now and then keeps it current: each
    /// remote endpoint is asked `grpc.health.v1.Health/Check` every `interval`.
    pub async fn watch_health(self, reporter: tonic_health::server::HealthReporter, interval: Duration) {
        let mut last: HashMap<String, bool> = HashMap::new();
        loop {
            for backend in self.routes.values() {
                for endpoint in backend.endpoints().iter().filter(|e| !e.in_process) {
                    let up = check(endpoint).await;
                    let was = endpoint.healthy.swap(up, Ordering::Relaxed);
                    if was != up {
                        tracing::info!(address = %endpoint.address, up, "backend health changed");
                    }
                }
            }
            let mut all = true;
            for name in self.services() {
                let up = self.routes.get(name).is_some_and(Backend::is_serving);
                all &= up;
                if last.get(name) != Some(&up) {
                    let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
                    reporter.set_service_status(name, status).await;
                    last.insert(name.to_owned(), up);
                }
            }
            if last.get("") != Some(&all) {
                let status = if all { ServingStatus::Serving } else { ServingStatus::NotServing };
                reporter.set_service_status("", status).await;
                last.insert(String::new(), all);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Whether every routed service has a healthy endpoint.
    pub fn all_serving(&self) -> bool {
        self.routes.values().all(Backend::is_serving)
    }
}

async fn check(endpoint: &Endpoint) -> bool {
    let mut client = HealthClient::new(endpoint.service());
    let call = client.check(HealthCheckRequest { service: String::new() });
    matches!(
        tokio::time::timeout(Duration::from_secs(1), call).await,
        Ok(Ok(r)) if r.get_ref().status == PbStatus::Serving as i32
    )
}
