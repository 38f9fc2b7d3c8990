//! The registry at scale: `ListClientConnections` and `ResolveConnection`, the two questions
//! asked at every login, in tenants of 10, 10,000 and 100,000 connections (1, 1,000 and
//! 10,000 clients), side by side. Each client has 10 connections enabled at every scale, so
//! the answers are the same size and only the tenant's size differs: with the indexes the
//! figures should not depend on it.
//!
//! The tenants are loaded through the store in bulk transactions (not 100,000 RPCs); the
//! calls go through the real service (`postern serve registry`'s routes on a loopback socket,
//! over SQLite in a temporary directory), signed as Postern's authenticator would sign them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_common::db::DbLocation;
use postern_common::principal::{InternalKey, PRINCIPAL_HEADER, Principal};
use postern_proto::connections::v1 as pb;
use postern_proto::connections::v1::connection_service_client::ConnectionServiceClient;
use postern_registry::domain::{Connection, NewConnection};
use postern_registry::{ConnectionSeal, MasterKey, Registry, Store};
use tonic::transport::Channel;

use crate::stats::{Call, Measurement, call, interleaved};

/// Connections per tenant, smallest first.
const SCALES: [usize; 3] = [10, 10_000, 100_000];
/// Connections enabled per client.
const PER_CLIENT: usize = 10;
/// Rows per seeding transaction.
const BATCH: usize = 5_000;
/// Measurements per path are merged over this many alternating rounds.
const ROUNDS: u32 = 3;

const LIST: &str = "/postern.connections.v1.ConnectionService/ListClientConnections";
const RESOLVE: &str = "/postern.connections.v1.ConnectionService/ResolveConnection";

fn tenant(scale: usize) -> String {
    format!("scale-{scale}")
}

fn clients(scale: usize) -> usize {
    (scale / PER_CLIENT).max(1)
}

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== registry: ListClientConnections and ResolveConnection by tenant size");
    let dir = tempfile::tempdir()?;
    let key = InternalKey::generate();
    let master = MasterKey::generate()?;
    let tenant_store = postern_tenant::Store::open(&DbLocation::SqliteFile(dir.path().join("tenant.db"))).await?;
    let tenant_service = postern_common::server::in_process(postern_tenant::routes(tenant_store, key.clone()));
    let store = Store::open(&DbLocation::SqliteFile(dir.path().join("registry.db"))).await?;

    let started = Instant::now();
    for scale in SCALES {
        seed(&store, &master, scale).await?;
    }
    println!(
        "  loaded {} connections and {} clients (SQLite) in {:.1} s",
        SCALES.iter().sum::<usize>(),
        SCALES.iter().map(|s| clients(*s)).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );

    let registry = Registry::start(store, master, key.clone(), tenant_service).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(postern_common::server::serve_backend(
        listener,
        registry.routes(),
        postern_registry::SERVICES,
        postern_common::connections::Connections::new(
            postern_common::connections::ConnectionLimits::with_max_connections(1024),
        ),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?);
    }
    let channels: Arc<[Channel]> = channels.into();

    let list_paths: Vec<Call> = SCALES.iter().map(|s| list_call(*s, channels.clone(), key.clone())).collect();
    let resolve_paths: Vec<Call> = SCALES.iter().map(|s| resolve_call(*s, channels.clone(), key.clone())).collect();
    let seconds = Duration::from_secs(args.seconds);
    let header = SCALES.iter().map(|s| format!("{:>28}", format!("{s} connections"))).collect::<String>();
    for (title, concurrency) in [
        (format!("throughput, {} concurrent callers", args.concurrency), args.concurrency),
        ("latency, one caller at a time".to_owned(), 1),
    ] {
        println!("  {title} ({ROUNDS} rounds, interleaved):");
        println!("    {:<22}{header}", "");
        for (name, paths) in [("ListClientConnections", &list_paths), ("ResolveConnection", &resolve_paths)] {
            let m = interleaved(concurrency, seconds, ROUNDS, paths).await;
            println!("    {name:<22}{}", m.iter().map(cell).collect::<String>());
            println!("    {:<22}{}", "", m.iter().map(tail).collect::<String>());
        }
    }
    println!("  target: 100,000 connections answer about as fast as 10 (index lookups, no scans)");

    let _ = stop.send(true);
    registry.shutdown();
    let _ = server.await;
    Ok(())
}

fn cell(m: &Measurement) -> String {
    format!("{:>28}", format!("{:.0}/s p50 {:.0} µs", m.throughput, crate::stats::micros(m.p50)))
}

fn tail(m: &Measurement) -> String {
    let errors = if m.errors > 0 { format!(" ({} errors)", m.errors) } else { String::new() };
    format!("{:>28}", format!("p99 {:.0} µs{errors}", crate::stats::micros(m.p99)))
}

/// Loads `scale` connections (social, each with a sealed client secret) into tenant
/// `scale-<scale>`, connection `i` enabled for client `i % clients`.
async fn seed(store: &Store, master: &MasterKey, scale: usize) -> anyhow::Result<()> {
    let tenant = tenant(scale);
    let template = NewConnection::try_from(pb::Connection {
        name: "template".into(),
        strategy: "facebook".into(),
        options: Some(pb::connection::Options::Oauth2(pb::OAuth2Options {
            client_id: "fabrikam-fb-app".into(),
            client_secret: "facebook-app-secret".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .map_err(|v| anyhow::anyhow!("bad template: {v:?}"))?;
    let n_clients = clients(scale);
    let now = postern_common::time::now_micros();
    let mut start = 0;
    while start < scale {
        let end = (start + BATCH).min(scale);
        let mut rows = Vec::with_capacity(end - start);
        let mut enable = Vec::with_capacity(end - start);
        for i in start..end {
            let mut spec = template.spec.clone();
            spec.name = format!("conn-{i:06}");
            spec.display_name = spec.name.clone();
            let connection = Connection { id: Connection::new_id(), spec, create_time: now, update_time: now };
            let sealed = master.seal_secrets(&tenant, &connection.id, &template.secrets)?;
            enable.push((connection.id.clone(), format!("client-{:05}", i % n_clients)));
            rows.push((connection, sealed));
        }
        store.bulk_load(&tenant, &rows, &enable).await?;
        start = end;
    }
    Ok(())
}

fn signed<T>(key: &InternalKey, method: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(Ok(v)) = key.sign(&Principal::Service("authn".into()), method).to_str().map(str::parse) {
        req.metadata_mut().insert(PRINCIPAL_HEADER, v);
    }
    req
}

fn list_call(scale: usize, channels: Arc<[Channel]>, key: InternalKey) -> Call {
    let next = Arc::new(AtomicUsize::new(0));
    call(move |w| {
        let mut client = ConnectionServiceClient::new(channels[w % channels.len()].clone());
        let k = next.fetch_add(1, Ordering::Relaxed);
        let req = signed(
            &key,
            LIST,
            pb::ListClientConnectionsRequest {
                tenant: tenant(scale),
                client_id: format!("client-{:05}", k % clients(scale)),
            },
        );
        async move { client.list_client_connections(req).await.is_ok_and(|r| r.get_ref().connections.len() == PER_CLIENT) }
    })
}

fn resolve_call(scale: usize, channels: Arc<[Channel]>, key: InternalKey) -> Call {
    let next = Arc::new(AtomicUsize::new(0));
    call(move |w| {
        let mut client = ConnectionServiceClient::new(channels[w % channels.len()].clone());
        let i = next.fetch_add(1, Ordering::Relaxed) % scale;
        let req = signed(
            &key,
            RESOLVE,
            pb::ResolveConnectionRequest {
                tenant: tenant(scale),
                client_id: format!("client-{:05}", i % clients(scale)),
                connection: format!("conn-{i:06}"),
            },
        );
        async move { client.resolve_connection(req).await.is_ok() }
    })
}
