//! The gateway's cost: the same unary read (`TenantService/GetTenant`) called directly on
//! the tenant service and through the gateway, in the same run.
//!
//! Three set-ups, all on loopback in this process:
//! - direct: the client calls the tenant service running alone (`postern serve tenant`),
//!   sending the signed principal the gateway would send;
//! - gateway, all-in-one: the client calls `postern serve`'s gateway, whose backend is the
//!   tenant service in process (the default deployment);
//! - gateway, split: the client calls a gateway (`postern serve gateway`) that forwards over a
//!   second HTTP/2 hop to the tenant service alone (one more network hop, on the same 2 cores).

use std::time::Duration;

use postern::{Component, Settings};
use postern_common::principal::{InternalKey, PRINCIPAL_HEADER, Principal};
use postern_proto::tenant::v1 as pb;
use postern_proto::tenant::v1::tenant_service_client::TenantServiceClient;
use tonic::transport::Channel;

use crate::stats::{call, interleaved, micros};

const TENANT: &str = "fabrikam-internal";
const METHOD: &str = "/postern.tenant.v1.TenantService/GetTenant";

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== gateway: GetTenant direct vs through the gateway");
    let internal = InternalKey::generate();
    let dir = tempfile::tempdir()?;
    let base = |data: &str| {
        let mut s = postern_testkit::settings(&dir.path().join(data));
        s.internal_key = Some(internal.to_hex());
        // The limiter stays on (its cost is part of the path) at a quota the load never meets.
        s.rate_limit = 10_000_000;
        s.rate_burst = 10_000_000;
        s
    };
    let tenant = start(Component::Tenant, base("split")).await?;
    let split =
        start(Component::Gateway, Settings { tenant_url: vec![format!("http://{}", tenant.0)], ..base("split") })
            .await?;
    let all = start(Component::All, base("all")).await?;

    // The data: one tenant in each store.
    for addr in [all.0, split.0] {
        let mut c = postern_testkit::Clients::new(postern_testkit::channel(addr).await, postern_testkit::ADMIN_KEY);
        c.create_tenant(TENANT).await?;
    }

    let channels = |addr| async move {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?);
        }
        anyhow::Ok(v)
    };
    let seconds = Duration::from_secs(args.seconds);

    let direct_channels = channels(tenant.0).await?;
    let key = internal.clone();
    let direct = move |w: usize| {
        let mut client = TenantServiceClient::new(direct_channels[w % direct_channels.len()].clone());
        let key = key.clone();
        async move {
            let mut req = tonic::Request::new(pb::GetTenantRequest { name: TENANT.into() });
            if let Ok(Ok(v)) = key.sign(&Principal::Admin, METHOD).to_str().map(str::parse) {
                req.metadata_mut().insert(PRINCIPAL_HEADER, v);
            }
            client.get_tenant(req).await.is_ok()
        }
    };
    let via = |chans: Vec<Channel>| {
        move |w: usize| {
            let mut client = TenantServiceClient::new(chans[w % chans.len()].clone());
            async move {
                let mut req = tonic::Request::new(pb::GetTenantRequest { name: TENANT.into() });
                if let Ok(v) = format!("Bearer {}", postern_testkit::ADMIN_KEY).parse() {
                    req.metadata_mut().insert("authorization", v);
                }
                client.get_tenant(req).await.is_ok()
            }
        }
    };
    let all_in_one = via(channels(all.0).await?);
    let split_mode = via(channels(split.0).await?);

    // Throughput under load (many callers), and latency unloaded (one caller at a time), so
    // that the latency figure is the path's own cost rather than queueing.
    let n = args.concurrency;
    let paths = [call(direct), call(all_in_one), call(split_mode)];
    let names =
        ["direct to the tenant service    ", "through the gateway (all-in-one)", "through the gateway (split)     "];
    println!("  throughput, {n} concurrent callers ({} rounds, interleaved):", ROUNDS);
    let loaded = interleaved(n, seconds, ROUNDS, &paths).await;
    for (name, m) in names.iter().zip(&loaded) {
        println!("    {name} {}", m.line());
    }
    println!("  latency, one caller at a time ({} rounds, interleaved):", ROUNDS);
    let unloaded = interleaved(1, seconds, ROUNDS, &paths).await;
    for (name, m) in names.iter().zip(&unloaded) {
        println!("    {name} {}", m.line());
    }
    for (i, mode) in [(1, "all-in-one"), (2, "split")] {
        println!(
            "  gateway ({mode}): {:.0}% of direct throughput; adds {:+.1} µs at p50, {:+.1} µs at p99 (unloaded)",
            100.0 * loaded[i].throughput / loaded[0].throughput.max(1.0),
            micros(unloaded[i].p50) - micros(unloaded[0].p50),
            micros(unloaded[i].p99) - micros(unloaded[0].p99),
        );
    }
    println!("  target: the gateway keeps >= 80% of direct throughput and adds <= 150 µs at p50");

    for (_, stop, task) in [all, split, tenant] {
        let _ = stop.send(true);
        let _ = task.await;
    }
    Ok(())
}

/// Measurements per path are merged over this many alternating rounds.
const ROUNDS: u32 = 5;

type Running = (std::net::SocketAddr, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<()>>);

async fn start(component: Component, settings: Settings) -> anyhow::Result<Running> {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (tx, bound) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(postern::run(component, settings, rx, move |b| {
        let _ = tx.send(b.grpc);
    }));
    let addr = bound.await.map_err(|_| anyhow::anyhow!("{component:?} did not start"))?;
    Ok((addr, stop, task))
}
