//! The gateway alone, in front of stand-in backends: routing and balancing over several
//! endpoints, the deadline, the identity a backend sees, and fail-fast when all are down.

use std::time::{Duration, Instant};

use postern_common::connections::{ConnectionLimits, Connections};
use postern_common::error::reason;
use postern_common::principal::{InternalKey, Principal, PrincipalLayer, principal};
use postern_common::server::in_process;
use postern_gateway::{Backend, Endpoint, Gateway, GatewayConfig, RateLimit, RouteTable};
use postern_proto::tenant::v1 as pb;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::Layer;

const KEY: &str = "test-key";

/// Answers the key `KEY` as a tenant's key; `Keys::DOWN` answers every check UNAVAILABLE, as a
/// replica does while it shuts down or cannot reach its database.
#[derive(Clone)]
struct Keys {
    down: bool,
}

impl Keys {
    const UP: Keys = Keys { down: false };
    const DOWN: Keys = Keys { down: true };
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for Keys {
    async fn create_api_key(
        &self,
        _: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_api_keys(
        &self,
        _: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn revoke_api_key(
        &self,
        _: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn authenticate_key(
        &self,
        req: Request<pb::AuthenticateKeyRequest>,
    ) -> Result<Response<pb::AuthenticateKeyResponse>, Status> {
        principal(&req)?.require_internal()?;
        if self.down {
            return Err(postern_common::error::unavailable("DATABASE_UNAVAILABLE", "the database is out of reach"));
        }
        if req.get_ref().key != KEY {
            return Err(Status::unauthenticated("unknown key"));
        }
        Ok(Response::new(pb::AuthenticateKeyResponse {
            admin: false,
            tenant: "t-one".into(),
            key_id: "key_1".into(),
            scopes: Vec::new(),
            expire_time: None,
        }))
    }
}

/// GetTenant answers which backend served it and who it thought called; `slow` sleeps.
/// WatchTenantEvents streams what the test sends on `events` (the stream of the first call).
#[derive(Clone)]
struct Tenants(&'static str, Events);

type Events = std::sync::Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<pb::WatchTenantEventsResponse>>>>;

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for Tenants {
    async fn create_tenant(
        &self,
        _: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::GetTenantResponse>, Status> {
        let who = principal(&req)?;
        let peer = postern_common::principal::peer_addr(&req).map(|ip| ip.to_string()).unwrap_or_default();
        if req.get_ref().name == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let tenant = pb::Tenant {
            name: req.into_inner().name,
            display_name: format!("{} {who}|{peer}", self.0),
            ..Default::default()
        };
        Ok(Response::new(pb::GetTenantResponse { tenant: Some(tenant) }))
    }
    async fn list_tenants(
        &self,
        _: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn update_tenant(
        &self,
        _: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn delete_tenant(
        &self,
        _: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type WatchTenantEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchTenantEventsResponse, Status>> + Send>>;
    async fn watch_tenant_events(
        &self,
        _: Request<pb::WatchTenantEventsRequest>,
    ) -> Result<Response<Self::WatchTenantEventsStream>, Status> {
        let events = self.1.lock().expect("lock").take().ok_or_else(|| Status::unavailable("one watch only"))?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(events),
            Ok,
        ))))
    }
}

async fn start(tenant_backend: Backend, deadline: Duration) -> std::net::SocketAddr {
    let key = InternalKey::generate();
    let mut routes = RouteTable::new();
    routes
        .route(&["postern.tenant.v1.ApiKeyService"], Backend::new(vec![key_endpoint(&key, Keys::UP)]))
        .route(&["postern.tenant.v1.TenantService"], tenant_backend)
        .internal(&["/postern.tenant.v1.ApiKeyService/AuthenticateKey"]);
    serve(routes, key, deadline, Duration::from_millis(100)).await
}

/// A gateway over `routes`, signing with `key`, serving on a free loopback port.
async fn serve(
    routes: RouteTable,
    key: InternalKey,
    deadline: Duration,
    health_interval: Duration,
) -> std::net::SocketAddr {
    let config = GatewayConfig {
        internal_key: key,
        key_cache_ttl: Duration::from_secs(10),
        rate_limit: RateLimit { per_second: 0, burst: 0 },
        default_deadline: deadline,
        health_interval,
        connections: Connections::new(ConnectionLimits::with_max_connections(64)),
    };
    let gateway = Gateway::new(routes, config).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    addr
}

/// An in-process key service, `keys`, that trusts `key`'s signatures.
fn key_endpoint(key: &InternalKey, keys: Keys) -> Endpoint {
    let layer = PrincipalLayer::new(key.clone());
    let routes = tonic::service::Routes::new(layer.layer(pb::api_key_service_server::ApiKeyServiceServer::new(keys)));
    Endpoint::in_process(in_process(routes))
}

fn tenant_endpoint(name: &'static str, key: &InternalKey) -> Endpoint {
    tenant_endpoint_with(name, key, Events::default())
}

fn tenant_endpoint_with(name: &'static str, key: &InternalKey, events: Events) -> Endpoint {
    let routes = tonic::service::Routes::new(
        PrincipalLayer::new(key.clone())
            .layer(pb::tenant_service_server::TenantServiceServer::new(Tenants(name, events))),
    );
    Endpoint::in_process(in_process(routes))
}

async fn client(
    addr: std::net::SocketAddr,
) -> pb::tenant_service_client::TenantServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    pb::tenant_service_client::TenantServiceClient::new(channel)
}

fn get(name: &str) -> Request<pb::GetTenantRequest> {
    let mut req = Request::new(pb::GetTenantRequest { name: name.into() });
    req.metadata_mut().insert("authorization", format!("Bearer {KEY}").parse().expect("ascii"));
    req
}

/// A gateway whose tenant route balances over two in-process endpoints sharing its key.
async fn balanced(deadline: Duration) -> std::net::SocketAddr {
    let key = InternalKey::generate();
    let backend = Backend::new(vec![tenant_endpoint("backend-a", &key), tenant_endpoint("backend-b", &key)]);
    gateway_over(key, backend, deadline).await
}

/// A gateway routing the tenant service to `backend`, whose endpoints use `key`.
async fn gateway_over(key: InternalKey, backend: Backend, deadline: Duration) -> std::net::SocketAddr {
    let mut routes = RouteTable::new();
    routes
        .route(&["postern.tenant.v1.ApiKeyService"], Backend::new(vec![key_endpoint(&key, Keys::UP)]))
        .route(&["postern.tenant.v1.TenantService"], backend);
    serve(routes, key, deadline, Duration::from_millis(100)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn balances_and_hands_backends_the_verified_principal() {
    let addr = balanced(Duration::from_secs(5)).await;
    let mut c = client(addr).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let mut req = get("t-one");
        // A forged identity header is dropped, not trusted.
        req.metadata_mut().insert("x-postern-principal", "v1|admin|99999999999|00".parse().expect("ascii"));
        // So is a forged caller address: backends learn the real one.
        req.metadata_mut().insert("x-postern-peer", "10.9.9.9".parse().expect("ascii"));
        let t = c.get_tenant(req).await.expect("get").into_inner().tenant.expect("tenant");
        let expected = Principal::Tenant {
            tenant: "t-one".into(),
            key_id: "key_1".into(),
            scopes: postern_common::scope::Scopes::full(),
        };
        let (who, peer) = t.display_name.split_once('|').expect("who|peer");
        assert!(who.ends_with(&expected.to_string()), "{}", t.display_name);
        assert_eq!(peer, "127.0.0.1");
        seen.insert(t.display_name.split(' ').next().unwrap_or_default().to_owned());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["backend-a", "backend-b"], "round robin over both endpoints");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_cuts_slow_calls() {
    let addr = balanced(Duration::from_millis(200)).await;
    let mut c = client(addr).await;
    let started = Instant::now();
    let err = c.get_tenant(get("slow")).await.expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("SERVICE_DEADLINE_EXCEEDED"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_endpoints_down_fails_fast() {
    // Nothing listens on these ports.
    let down = |port| Endpoint::remote(&format!("http://127.0.0.1:{port}")).expect("endpoint");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = start(Backend::new(vec![down(free()), down(free())]), Duration::from_secs(5)).await;
    let mut c = client(addr).await;
    let started = Instant::now();
    let err = c.get_tenant(get("t-one")).await.expect_err("down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("SERVICE_UNAVAILABLE"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    // After the health check notices (the gateway's health service says so), calls are
    // refused without trying.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: "postern.tenant.v1.TenantService".into() })
        .await
        .expect("watch health")
        .into_inner();
    loop {
        let status = tokio::time::timeout(Duration::from_secs(20), health.message())
            .await
            .expect("the health check notices within 20 s")
            .expect("the health stream")
            .expect("a status");
        if status.status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    let started = Instant::now();
    let err = c.get_tenant(get("t-one")).await.expect_err("down");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err).as_deref(), Some("SERVICE_UNAVAILABLE"), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100), "took {:?}", started.elapsed());
}

/// The deadline bounds the wait for an answer to start, not a stream's life: a watch stays
/// open and delivers long after it. Runs on tokio's paused clock, so "long after" costs no
/// real time.
#[tokio::test(start_paused = true)]
async fn a_stream_outlives_the_deadline() {
    let key = InternalKey::generate();
    let (events, receiver) = tokio::sync::mpsc::channel(4);
    let shared: Events = std::sync::Arc::new(std::sync::Mutex::new(Some(receiver)));
    let backend = Backend::new(vec![tenant_endpoint_with("backend-a", &key, shared)]);
    let addr = gateway_over(key, backend, Duration::from_secs(1)).await;
    let mut c = client(addr).await;
    let mut req = Request::new(pb::WatchTenantEventsRequest::default());
    req.metadata_mut().insert("authorization", format!("Bearer {KEY}").parse().expect("ascii"));
    let mut watch = c.watch_tenant_events(req).await.expect("watch").into_inner();
    let opened = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(opened.elapsed() >= Duration::from_secs(30), "the clock moved past the deadline");
    let event = pb::WatchTenantEventsResponse { sequence: 7, ..Default::default() };
    events.send(event).await.expect("the backend's stream is still open");
    let got = watch.message().await.expect("the stream is still open").expect("an event");
    assert_eq!(got.sequence, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_service_outage_says_so() {
    let key = InternalKey::generate();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let down = Endpoint::remote(&format!("http://127.0.0.1:{free}")).expect("endpoint");
    let mut routes = RouteTable::new();
    routes
        .route(&["postern.tenant.v1.ApiKeyService"], Backend::new(vec![down]))
        .route(&["postern.tenant.v1.TenantService"], Backend::new(vec![tenant_endpoint("backend-a", &key)]));
    let addr = serve(routes, key, Duration::from_secs(5), Duration::from_secs(60)).await;
    let mut c = client(addr).await;
    // Once while the endpoint is thought up (the call fails), once after it is marked down.
    for _ in 0..2 {
        let err = c.get_tenant(get("t-one")).await.expect_err("no key check");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(reason(&err).as_deref(), Some("TENANT_SERVICE_UNAVAILABLE"), "{err:?}");
    }
}

/// A key check is a read: one that a tenant replica answers UNAVAILABLE is asked again of
/// another, so a caller does not see one replica's outage (or its shutdown in a rolling
/// restart) while the other one answers. Nothing is cached while the event log is not
/// followed (it is not here), so every call asks; round robin starts half of them at the
/// replica that is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_check_that_one_replica_cannot_answer_goes_to_another() {
    let key = InternalKey::generate();
    let replicas = vec![key_endpoint(&key, Keys::DOWN), key_endpoint(&key, Keys::UP)];
    let mut routes = RouteTable::new();
    routes
        .route(&["postern.tenant.v1.ApiKeyService"], Backend::new(replicas))
        .route(&["postern.tenant.v1.TenantService"], Backend::new(vec![tenant_endpoint("backend-a", &key)]));
    let addr = serve(routes, key, Duration::from_secs(5), Duration::from_secs(60)).await;
    let mut c = client(addr).await;
    for i in 0..8 {
        let t = c.get_tenant(get("t-one")).await.unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert!(t.into_inner().tenant.is_some());
    }
    // A wrong key is still refused as such, by the replica that answers.
    let mut wrong = get("t-one");
    wrong.metadata_mut().insert("authorization", "Bearer not-the-key".parse().expect("ascii"));
    let err = c.get_tenant(wrong).await.expect_err("wrong key");
    assert_eq!(reason(&err).as_deref(), Some("API_KEY_INVALID"), "{err:?}");
}
