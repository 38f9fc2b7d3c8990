//! Two replicas of the whole suite (`postern serve` in process, twice) on one fresh
//! PostgreSQL database, as the manifests run them: how long a change acknowledged by replica
//! A takes to be in force at replica B, whose caches held what changed.
//!
//! - **Connection changes** (the registry's change log): the database connection disabled
//!   for the client, then enabled again, through A, alternately. B is probed with a `Signup`
//!   whose password the connection's policy refuses: while the connection is enabled for the
//!   client that is `INVALID_ARGUMENT` (the policy of the connection B resolved from its
//!   cache), once disabled it is refused for the connection — no Argon2 on either side, so
//!   the probe's own time stays well under a millisecond.
//! - **API key revocations** (the tenant service's event log): a key used at B, revoked
//!   through A; B is probed with `GetTenant` under that key until it is refused.
//!
//! The time is measured from A's answer to the first refused (or admitted) probe at B, probing
//! back to back; printed as p50, p99 and the maximum over [`CHANGES`] changes of each kind.
//! PostgreSQL comes from `POSTERN_TEST_POSTGRES_URL` (default the machine's
//! `postgres://postgres@127.0.0.1:5432/test`); a fresh database is created and dropped.

use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as pb;
use postern_testkit::{ADMIN_KEY, Clients, Suite, channel};
use tonic::Code;

/// Changes of each kind measured.
const CHANGES: usize = 100;
/// The longest a change may take before the bench gives up on it.
const GIVE_UP: Duration = Duration::from_secs(10);
const TENANT: &str = "bench-replicas";

/// Runs the section.
pub async fn run(_args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== replicas: a change through replica A, in force at replica B (one PostgreSQL) ==");
    let base = std::env::var("POSTERN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let db = match postern_testkit::peers::TestDatabase::create(&base).await {
        Ok(db) => db,
        Err(e) => {
            println!("  SKIPPED: no PostgreSQL at {base} ({e})");
            return Ok(());
        }
    };
    let url = db.url.clone();
    let a = Suite::start_with(|s| {
        s.database_url = Some(url.clone());
        s.rate_limit = 0;
    })
    .await?;
    let b = Suite::start_with(|s| {
        s.database_url = Some(url.clone());
        s.rate_limit = 0;
    })
    .await?;
    let mut at_a = Clients::new(channel(a.grpc).await, ADMIN_KEY);
    let at_b = Clients::new(channel(b.grpc).await, ADMIN_KEY);

    at_a.create_tenant(TENANT).await?;
    let client = at_a.create_client(TENANT, "Timesheets").await?;
    at_a.create_database_connection(TENANT, "employees", &client.client_id).await?;

    // A signup the connection's password policy refuses: which answer says whether B still
    // has the connection enabled for the client.
    let probe = authn::SignupRequest {
        tenant: TENANT.into(),
        client_id: client.client_id.clone(),
        connection: "employees".into(),
        email: "probe@example.com".into(),
        password: "x".into(),
        ..Default::default()
    };
    let enabled_at_b = |at_b: &Clients| {
        let mut at_b = at_b.clone();
        let probe = probe.clone();
        async move {
            match at_b.authn.signup(probe).await {
                Err(s) if s.code() == Code::InvalidArgument => Ok(true),
                Err(_) => Ok(false),
                Ok(_) => Err(anyhow::anyhow!("the probe's weak password was accepted")),
            }
        }
    };
    anyhow::ensure!(enabled_at_b(&at_b).await?, "the connection is enabled at B at the start");

    let mut disabled = Vec::with_capacity(CHANGES);
    let mut enabled = Vec::with_capacity(CHANGES);
    let pair = conn::DisableClientRequest {
        tenant: TENANT.into(),
        connection: "employees".into(),
        client_id: client.client_id.clone(),
    };
    for _ in 0..CHANGES {
        at_a.connections.disable_client(pair.clone()).await?;
        let t0 = Instant::now();
        while enabled_at_b(&at_b).await? {
            anyhow::ensure!(t0.elapsed() < GIVE_UP, "a disabled connection still enabled at B after {GIVE_UP:?}");
        }
        disabled.push(t0.elapsed());
        at_a.connections
            .enable_client(conn::EnableClientRequest {
                tenant: pair.tenant.clone(),
                connection: pair.connection.clone(),
                client_id: pair.client_id.clone(),
            })
            .await?;
        let t0 = Instant::now();
        while !enabled_at_b(&at_b).await? {
            anyhow::ensure!(t0.elapsed() < GIVE_UP, "an enabled connection still refused at B after {GIVE_UP:?}");
        }
        enabled.push(t0.elapsed());
    }

    let mut revoked = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let key = at_a
            .keys
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: TENANT.into(),
                api_key: Some(pb::ApiKey { description: format!("bench {i}"), ..Default::default() }),
            })
            .await?
            .into_inner()
            .api_key
            .ok_or_else(|| anyhow::anyhow!("no key in the answer"))?;
        let mut with_key = Clients::new(channel(b.grpc).await, &key.key);
        let get = pb::GetTenantRequest { name: TENANT.into() };
        with_key.tenants.get_tenant(get.clone()).await?;
        at_a.keys.revoke_api_key(pb::RevokeApiKeyRequest { tenant: TENANT.into(), id: key.id }).await?;
        let t0 = Instant::now();
        while with_key.tenants.get_tenant(get.clone()).await.is_ok() {
            anyhow::ensure!(t0.elapsed() < GIVE_UP, "a revoked key still works at B after {GIVE_UP:?}");
        }
        revoked.push(t0.elapsed());
    }

    for (what, times) in [
        ("connection disabled for a client (registry change log)", &mut disabled),
        ("connection enabled for a client (registry change log)", &mut enabled),
        ("API key revoked (tenant event log)", &mut revoked),
    ] {
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
        println!(
            "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(times[times.len() - 1]),
            times.len()
        );
    }
    a.stop().await?;
    b.stop().await?;
    db.drop_db().await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
