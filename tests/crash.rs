//! Crash (issue 10): the real `postern serve` under concurrent writes of every kind —
//! tenants, clients, connections, users by signup, API keys — killed with SIGKILL in the
//! middle of them, restarted on the same data, several times; every write that was
//! acknowledged before a kill is read back after every restart. On SQLite and on
//! PostgreSQL (a fresh database per run).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as pb;
use postern_testkit::{ADMIN_KEY, Clients, MASTER_KEY, Process, channel};

const BIN: &str = env!("CARGO_BIN_EXE_postern-e2e");

/// Kill cycles per backend.
const CYCLES: usize = 4;
/// Acknowledged writes per cycle before the kill (at least).
const WRITES_PER_CYCLE: usize = 80;
/// Acknowledged writes of each kind per cycle before the kill (at least).
const EACH_KIND: usize = 2;

/// A write the server acknowledged, with what reads it back.
#[derive(Clone, Debug)]
enum Ack {
    Tenant(String),
    Client { tenant: String, client_id: String, name: String },
    Connection { tenant: String, name: String, id: String },
    User { tenant: String, user_id: String, email: String },
    ApiKey { tenant: String, id: String, key: String },
}

impl Ack {
    fn kind(&self) -> usize {
        match self {
            Ack::Tenant(_) => 0,
            Ack::Client { .. } => 1,
            Ack::Connection { .. } => 2,
            Ack::User { .. } => 3,
            Ack::ApiKey { .. } => 4,
        }
    }
}

const KINDS: usize = 5;

/// `postern serve` on `data` (and PostgreSQL at `database_url`), on free ports.
fn start(data: &Path, database_url: Option<&str>) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("POSTERN_ADMIN_KEY", ADMIN_KEY)
        .env("POSTERN_MASTER_KEY", MASTER_KEY)
        .env("POSTERN_LOG", "warn")
        // The writers outrun the admin key's default 200 calls/s (burst 400) on a fast
        // PostgreSQL; the limit is tested on its own (tenants.rs), not here.
        .env("POSTERN_RATE_LIMIT", "0")
        .env_remove("POSTERN_DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("POSTERN_DATABASE_URL", url);
        // As an operator does: `serve` on PostgreSQL refuses a schema that is behind.
        let migrated = postern_testkit::output_within(
            Command::new(BIN).arg("migrate").env("POSTERN_DATABASE_URL", url).env("POSTERN_LOG", "warn"),
            Duration::from_secs(60),
        )
        .expect("postern migrate runs");
        assert!(migrated.status.success(), "postern migrate: {}", String::from_utf8_lossy(&migrated.stderr));
    }
    Process::spawn(cmd, true).expect("postern starts")
}

/// Reads back one acknowledged write; `Err` says what is missing or wrong.
async fn read_back(admin: &mut Clients, grpc: std::net::SocketAddr, ack: &Ack) -> Result<(), String> {
    let missing = |e: tonic::Status| format!("{ack:?} was acknowledged but is lost: {e:?}");
    match ack {
        Ack::Tenant(name) => {
            let t = admin.tenants.get_tenant(pb::GetTenantRequest { name: name.clone() }).await.map_err(missing)?;
            let t = t.into_inner().tenant.unwrap_or_default();
            (t.name == *name).then_some(()).ok_or_else(|| format!("{ack:?} reads back as {t:?}"))
        }
        Ack::Client { tenant, client_id, name } => {
            let req = pb::GetClientRequest { tenant: tenant.clone(), client_id: client_id.clone() };
            let c = admin.clients.get_client(req).await.map_err(missing)?.into_inner().client.unwrap_or_default();
            (c.name == *name).then_some(()).ok_or_else(|| format!("{ack:?} reads back as {c:?}"))
        }
        Ack::Connection { tenant, name, id } => {
            let req = conn::GetConnectionRequest { tenant: tenant.clone(), connection: name.clone() };
            let c = admin.connections.get_connection(req).await.map_err(missing)?;
            let c = c.into_inner().connection.unwrap_or_default();
            (c.id == *id).then_some(()).ok_or_else(|| format!("{ack:?} reads back as {c:?}"))
        }
        Ack::User { tenant, user_id, email } => {
            let req = authn::GetUserRequest { tenant: tenant.clone(), user_id: user_id.clone() };
            let u = admin.users.get_user(req).await.map_err(missing)?.into_inner().user.unwrap_or_default();
            (u.email == *email).then_some(()).ok_or_else(|| format!("{ack:?} reads back as {u:?}"))
        }
        Ack::ApiKey { tenant, id, key } => {
            // Listed, and still a working key for its tenant.
            let mut listed = Vec::new();
            let mut page_token = String::new();
            loop {
                let req = pb::ListApiKeysRequest { tenant: tenant.clone(), page_size: 1000, page_token };
                let page = admin.keys.list_api_keys(req).await.map_err(missing)?.into_inner();
                listed.extend(page.api_keys.into_iter().map(|k| k.id));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if !listed.contains(id) {
                return Err(format!("{ack:?} is not listed after the restart"));
            }
            let mut scoped = Clients::new(channel(grpc).await, key);
            scoped
                .tenants
                .get_tenant(pb::GetTenantRequest { name: tenant.clone() })
                .await
                .map(|_| ())
                .map_err(|e| format!("{ack:?} no longer authenticates: {e:?}"))
        }
    }
}

/// What every writer task shares: the acknowledged writes, and whether the kill was sent
/// (an error before it is a failure of the test; after it, the end of the writer).
struct Shared {
    acks: Mutex<Vec<Ack>>,
    killed: AtomicBool,
    early_errors: Mutex<Vec<String>>,
    progress: tokio::sync::watch::Sender<[usize; KINDS]>,
}

impl Shared {
    fn acknowledged(&self, ack: Ack) {
        let kind = ack.kind();
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).push(ack);
        self.progress.send_modify(|counts| counts[kind] += 1);
    }

    /// Records `err` if the server was not killed yet; says whether the writer goes on.
    fn failed(&self, what: &str, err: tonic::Status) -> bool {
        if !self.killed.load(Ordering::SeqCst) {
            self.early_errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{what}: {err:?}"));
        }
        false
    }
}

/// One writer: `kind` writes back to back, numbered from 0, until one fails.
async fn writer(shared: Arc<Shared>, mut admin: Clients, cycle: usize, worker: usize, kind: usize, base: Base) {
    for i in 0.. {
        let tag = format!("c{cycle}-w{worker}-{i}");
        let outcome = match kind {
            0 => admin.create_tenant(&format!("tenant-{tag}")).await.map(|t| Ack::Tenant(t.name)),
            1 => admin.create_client(&base.tenant, &format!("App {tag}")).await.map(|c| Ack::Client {
                tenant: base.tenant.clone(),
                client_id: c.client_id,
                name: c.name,
            }),
            2 => {
                let c = conn::Connection {
                    name: format!("db-{tag}"),
                    strategy: "auth0".into(),
                    options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
                    ..Default::default()
                };
                let req = conn::CreateConnectionRequest { tenant: base.tenant.clone(), connection: Some(c) };
                admin.connections.create_connection(req).await.map(|r| {
                    let c = r.into_inner().connection.unwrap_or_default();
                    Ack::Connection { tenant: base.tenant.clone(), name: c.name, id: c.id }
                })
            }
            3 => {
                let email = format!("user-{tag}@example.com");
                let req = authn::SignupRequest {
                    tenant: base.tenant.clone(),
                    client_id: base.client_id.clone(),
                    connection: base.connection.clone(),
                    email: email.clone(),
                    password: "Wonder-Land-42!".into(),
                    ..Default::default()
                };
                admin.authn.signup(req).await.map(|r| Ack::User {
                    tenant: base.tenant.clone(),
                    user_id: r.into_inner().user.unwrap_or_default().user_id,
                    email,
                })
            }
            _ => {
                let req = pb::CreateApiKeyRequest {
                    tenant: base.tenant.clone(),
                    api_key: Some(pb::ApiKey { description: format!("key {tag}"), ..Default::default() }),
                };
                admin.keys.create_api_key(req).await.map(|r| {
                    let k = r.into_inner().api_key.unwrap_or_default();
                    Ack::ApiKey { tenant: base.tenant.clone(), id: k.id, key: k.key }
                })
            }
        };
        match outcome {
            Ok(ack) => shared.acknowledged(ack),
            Err(err) => {
                if !shared.failed(&format!("write {kind} {tag}"), err) {
                    return;
                }
            }
        }
    }
}

/// The tenant, client and database connection a cycle's clients, keys and users go into.
#[derive(Clone)]
struct Base {
    tenant: String,
    client_id: String,
    connection: String,
}

/// Sets up a cycle's base (acknowledged writes too).
async fn base(admin: &mut Clients, cycle: usize, acks: &mut Vec<Ack>) -> Base {
    let tenant = format!("base-{cycle}");
    admin.create_tenant(&tenant).await.expect("base tenant");
    acks.push(Ack::Tenant(tenant.clone()));
    let client = admin.create_client(&tenant, "Fabrikam Customer Portal").await.expect("base client");
    acks.push(Ack::Client { tenant: tenant.clone(), client_id: client.client_id.clone(), name: client.name });
    let c = admin.create_database_connection(&tenant, "customers", &client.client_id).await.expect("connection");
    acks.push(Ack::Connection { tenant: tenant.clone(), name: c.name.clone(), id: c.id });
    Base { tenant, client_id: client.client_id, connection: c.name }
}

/// Every acknowledged write is read back from the server at `grpc`; panics naming the lost
/// ones.
async fn all_read_back(grpc: std::net::SocketAddr, acks: &[Ack], after: &str) {
    let mut admin = Clients::new(channel(grpc).await, ADMIN_KEY);
    let mut lost = Vec::new();
    for ack in acks {
        if let Err(e) = read_back(&mut admin, grpc, ack).await {
            lost.push(e);
        }
    }
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost {after}: {lost:#?}", lost.len(), acks.len());
}

/// The whole run on one backend.
async fn acknowledged_writes_survive_kill_9(database_url: Option<&str>) {
    let started = Instant::now();
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let mut all_acks: Vec<Ack> = Vec::new();
    let mut server = start(&data, database_url);
    // Writers per kind: tenants, clients, connections, users (Argon2 makes them slower), keys.
    let writers_per_kind = [2, 2, 1, 2, 1];
    for cycle in 0..CYCLES {
        let mut admin = Clients::new(channel(server.grpc).await, ADMIN_KEY);
        let base = base(&mut admin, cycle, &mut all_acks).await;
        let (progress, mut watch) = tokio::sync::watch::channel([0usize; KINDS]);
        let shared = Arc::new(Shared {
            acks: Mutex::new(Vec::new()),
            killed: AtomicBool::new(false),
            early_errors: Mutex::new(Vec::new()),
            progress,
        });
        let mut tasks = Vec::new();
        let mut worker = 0;
        for (kind, n) in writers_per_kind.iter().enumerate() {
            for _ in 0..*n {
                // A channel (an HTTP/2 connection) per writer, as independent callers.
                let admin = Clients::new(channel(server.grpc).await, ADMIN_KEY);
                tasks.push(tokio::spawn(writer(shared.clone(), admin, cycle, worker, kind, base.clone())));
                worker += 1;
            }
        }
        // Kill when enough writes of every kind were acknowledged, while the writers go on.
        let enough =
            |c: &[usize; KINDS]| c.iter().all(|n| *n >= EACH_KIND) && c.iter().sum::<usize>() >= WRITES_PER_CYCLE;
        let reached =
            tokio::time::timeout(Duration::from_secs(60), watch.wait_for(enough)).await.is_ok_and(|r| r.is_ok());
        let counts = *watch.borrow();
        assert!(reached, "cycle {cycle}: writes stalled at {counts:?} (tenants, clients, connections, users, keys)");
        shared.killed.store(true, Ordering::SeqCst);
        server.crash().expect("kill -9");
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a writer notices the kill")
                .expect("writer task");
        }
        let early = shared.early_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(early.is_empty(), "cycle {cycle}: writes refused before the kill: {early:?}");
        let acked = std::mem::take(&mut *shared.acks.lock().unwrap_or_else(|e| e.into_inner()));
        eprintln!("cycle {cycle}: {} writes acknowledged before kill -9 ({counts:?} by kind)", acked.len());
        all_acks.extend(acked);

        server = start(&data, database_url);
        all_read_back(server.grpc, &all_acks, &format!("after kill {}", cycle + 1)).await;
    }
    assert!(server.terminate().expect("terminate"), "SIGTERM stops postern cleanly after the crashes");
    eprintln!(
        "{} acknowledged writes over {CYCLES} kill -9 cycles, all read back, in {:?}",
        all_acks.len(),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(90), "the run took {:?}", started.elapsed());
}

/// On SQLite: every acknowledged write survives kill -9, four times over.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_on_sqlite() {
    acknowledged_writes_survive_kill_9(None).await;
}

/// On PostgreSQL (a fresh database): every acknowledged write survives kill -9.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("acknowledged_writes_survive_kill_9_on_postgres") else {
        return;
    };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    acknowledged_writes_survive_kill_9(Some(&db.url)).await;
    db.drop_db().await.expect("drop");
}
