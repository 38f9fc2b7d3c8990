//! The connection registry through the gateway, as users reach it: the seed's Fabrikam
//! example, tenant scoping, write-only secrets (in reads, change events and logs), the change
//! stream, enablement and its integrity with the tenant service, concurrent creates, and the
//! internal-only ResolveConnection.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use postern_proto::connections::v1 as pb;
use postern_proto::tenant::v1 as tpb;
use postern_testkit::{Clients, Suite, eventually, reason, violated_fields};
use prost_types::FieldMask;
use tonic::Code;

const INTERNAL: &str = "fabrikam-internal";
const PUBLIC: &str = "fabrikam-public";

/// Every secret the tests send: none may come back or reach a log line.
const SECRETS: &[&str] =
    &["ad-bind-password-1", "google-internal-secret-2", "google-public-secret-3", "fb-secret-4", "li-secret-5"];

// ---- log capture: every log line of this test binary, to look for secrets in ----

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured logs of the whole binary (installed once, at debug level for Postern).
fn logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,postern=debug,postern_registry=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        captured
    })
    .clone()
}

fn captured_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
}

// ---- fixtures ----

fn ad(name: &str) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        display_name: "Fabrikam AD".into(),
        strategy: "ad".into(),
        domain_aliases: vec!["corp.fabrikam.example".into()],
        options: Some(pb::connection::Options::Ldap(pb::LdapOptions {
            url: "ldaps://dc1.corp.fabrikam.example".into(),
            bind_dn: "CN=postern,OU=Service,DC=corp,DC=fabrikam,DC=example".into(),
            bind_password: SECRETS[0].into(),
            base_dn: "OU=People,DC=corp,DC=fabrikam,DC=example".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn google_apps(domain: &str, secret: &str) -> pb::Connection {
    pb::Connection {
        name: "fabrikam-google-apps".into(),
        strategy: "google-apps".into(),
        options: Some(pb::connection::Options::GoogleApps(pb::GoogleAppsOptions {
            domain: domain.into(),
            client_id: "google-client".into(),
            client_secret: secret.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn social(name: &str, secret: &str) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        strategy: name.into(),
        show_as_button: true,
        options: Some(pb::connection::Options::Oauth2(pb::OAuth2Options {
            client_id: format!("{name}-app"),
            client_secret: secret.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn auth0(name: &str) -> pb::Connection {
    pb::Connection { name: name.into(), strategy: "auth0".into(), ..Default::default() }
}

async fn create(c: &mut Clients, tenant: &str, connection: pb::Connection) -> Result<pb::Connection, tonic::Status> {
    let r = c
        .connections
        .create_connection(pb::CreateConnectionRequest { tenant: tenant.into(), connection: Some(connection) })
        .await?;
    r.into_inner().connection.ok_or_else(|| tonic::Status::internal("no connection in the answer"))
}

async fn enable(c: &mut Clients, tenant: &str, connection: &str, client_id: &str) -> Result<(), tonic::Status> {
    c.connections
        .enable_client(pb::EnableClientRequest {
            tenant: tenant.into(),
            connection: connection.into(),
            client_id: client_id.into(),
        })
        .await
        .map(|_| ())
}

async fn client_connections(c: &mut Clients, tenant: &str, client_id: &str) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .connections
        .list_client_connections(pb::ListClientConnectionsRequest {
            tenant: tenant.into(),
            client_id: client_id.into(),
        })
        .await?;
    Ok(r.into_inner().connections.into_iter().map(|c| c.name).collect())
}

async fn list(c: &mut Clients, tenant: &str) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .connections
        .list_connections(pb::ListConnectionsRequest { tenant: tenant.into(), ..Default::default() })
        .await?;
    Ok(r.into_inner().connections.into_iter().map(|c| c.name).collect())
}

/// Asserts that no secret appears in `what` (a debug rendering of an answer).
#[track_caller]
fn no_secret(what: &str) {
    for s in SECRETS {
        assert!(!what.contains(s), "a secret came back: {what}");
    }
}

/// The seed's example: two tenants, their clients, five connections, all enabled.
struct Fabrikam {
    timesheets: String,
    portal: String,
}

async fn fabrikam(admin: &mut Clients) -> Fabrikam {
    admin.create_tenant(INTERNAL).await.expect("tenant");
    admin.create_tenant(PUBLIC).await.expect("tenant");
    let timesheets = admin.create_client(INTERNAL, "Fabrikam Employee Timesheets").await.expect("client").client_id;
    let portal = admin.create_client(PUBLIC, "Fabrikam Customer Portal").await.expect("client").client_id;
    for c in [ad("fabrikam-ad"), google_apps("fabrikam.example", SECRETS[1])] {
        let name = c.name.clone();
        let created = create(admin, INTERNAL, c).await.expect("create");
        no_secret(&format!("{created:?}"));
        enable(admin, INTERNAL, &name, &timesheets).await.expect("enable");
    }
    for c in [
        google_apps("fabrikam-partners.example", SECRETS[2]),
        social("facebook", SECRETS[3]),
        social("linkedin", SECRETS[4]),
    ] {
        let name = c.name.clone();
        create(admin, PUBLIC, c).await.expect("create");
        enable(admin, PUBLIC, &name, &portal).await.expect("enable");
    }
    Fabrikam { timesheets, portal }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fabrikam_example_through_the_gateway() {
    let _ = logs();
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let f = fabrikam(&mut admin).await;

    assert_eq!(
        client_connections(&mut admin, INTERNAL, &f.timesheets).await.expect("list"),
        ["fabrikam-ad", "fabrikam-google-apps"]
    );
    assert_eq!(
        client_connections(&mut admin, PUBLIC, &f.portal).await.expect("list"),
        ["fabrikam-google-apps", "facebook", "linkedin"]
    );
    // A client of one tenant has nothing in the other.
    assert!(client_connections(&mut admin, PUBLIC, &f.timesheets).await.expect("list").is_empty());

    // Each tenant's key sees its own connections only.
    let internal_key = admin.create_api_key(INTERNAL).await.expect("key");
    let public_key = admin.create_api_key(PUBLIC).await.expect("key");
    let mut internal = suite.clients(&internal_key).await;
    let mut public = suite.clients(&public_key).await;
    assert_eq!(list(&mut internal, INTERNAL).await.expect("own"), ["fabrikam-ad", "fabrikam-google-apps"]);
    assert_eq!(list(&mut public, PUBLIC).await.expect("own"), ["fabrikam-google-apps", "facebook", "linkedin"]);
    for (c, other, client) in [(&mut internal, PUBLIC, &f.portal), (&mut public, INTERNAL, &f.timesheets)] {
        assert_eq!(list(c, other).await.expect_err("other tenant").code(), Code::PermissionDenied);
        assert_eq!(client_connections(c, other, client).await.expect_err("other").code(), Code::PermissionDenied);
        let err = c
            .connections
            .get_connection(pb::GetConnectionRequest {
                tenant: other.into(),
                connection: "fabrikam-google-apps".into(),
            })
            .await
            .expect_err("other tenant");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = create(c, other, auth0("intruder")).await.expect_err("other tenant");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = c
            .connections
            .watch_connections(pb::WatchConnectionsRequest { tenant: other.into() })
            .await
            .expect_err("other tenant");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    // A tenant key manages its own tenant's connections.
    create(&mut public, PUBLIC, auth0("customers")).await.expect("own tenant");
    enable(&mut public, PUBLIC, "customers", &f.portal).await.expect("own tenant");

    // Home realm discovery.
    let found = admin
        .connections
        .discover_connection(pb::DiscoverConnectionRequest {
            tenant: INTERNAL.into(),
            client_id: f.timesheets.clone(),
            email: "Alice@Corp.Fabrikam.Example".into(),
        })
        .await
        .expect("discover")
        .into_inner();
    assert_eq!(found.connection.map(|c| c.name).as_deref(), Some("fabrikam-ad"));
    let err = admin
        .connections
        .discover_connection(pb::DiscoverConnectionRequest {
            tenant: INTERNAL.into(),
            client_id: f.timesheets.clone(),
            email: "bob@elsewhere.example".into(),
        })
        .await
        .expect_err("no connection for that domain");
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_write_only_in_reads_events_and_logs() {
    let _ = logs();
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let mut watch = admin
        .connections
        .watch_connections(pb::WatchConnectionsRequest { tenant: INTERNAL.into() })
        .await
        .expect("watch")
        .into_inner();
    let f = fabrikam(&mut admin).await;

    let got = admin
        .connections
        .get_connection(pb::GetConnectionRequest { tenant: INTERNAL.into(), connection: "fabrikam-ad".into() })
        .await
        .expect("get")
        .into_inner();
    no_secret(&format!("{got:?}"));
    let Some(pb::connection::Options::Ldap(ldap)) = got.connection.and_then(|c| c.options) else {
        panic!("ldap options expected")
    };
    assert!(ldap.bind_password_set);
    assert!(ldap.bind_password.is_empty());

    for tenant in [INTERNAL, PUBLIC] {
        let all = admin
            .connections
            .list_connections(pb::ListConnectionsRequest { tenant: tenant.into(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        no_secret(&format!("{all:?}"));
    }
    let mine = admin
        .connections
        .list_client_connections(pb::ListClientConnectionsRequest {
            tenant: INTERNAL.into(),
            client_id: f.timesheets.clone(),
        })
        .await
        .expect("list")
        .into_inner();
    no_secret(&format!("{mine:?}"));

    // An update that leaves the secret out keeps it.
    let mut patch = ad("fabrikam-ad");
    if let Some(pb::connection::Options::Ldap(l)) = &mut patch.options {
        l.bind_password.clear();
        l.url = "ldaps://dc2.corp.fabrikam.example".into();
    }
    let updated = admin
        .connections
        .update_connection(pb::UpdateConnectionRequest {
            tenant: INTERNAL.into(),
            connection: Some(patch),
            update_mask: Some(FieldMask { paths: vec!["options.ldap.url".into()] }),
        })
        .await
        .expect("update")
        .into_inner();
    let Some(pb::connection::Options::Ldap(ldap)) = updated.connection.and_then(|c| c.options) else {
        panic!("ldap options expected")
    };
    assert_eq!(ldap.url, "ldaps://dc2.corp.fabrikam.example");
    assert!(ldap.bind_password_set, "the stored bind password is kept");

    // Change events carry no secrets either.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < 5 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), watch.message()).await {
            Ok(Ok(Some(e))) => {
                no_secret(&format!("{e:?}"));
                seen += 1;
            }
            _ => break,
        }
    }
    assert_eq!(seen, 5, "2 creates, 2 enablements and 1 update");

    // The database holds them sealed.
    let db = std::fs::read(suite.data_dir.join("registry.db")).expect("registry.db");
    let wal = std::fs::read(suite.data_dir.join("registry.db-wal")).unwrap_or_default();
    for s in SECRETS {
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{s} stored in clear");
        }
    }
    suite.stop().await.expect("stop");

    // And no log line ever shows one.
    let text = captured_text();
    assert!(text.contains("connection created"), "the registry's logs were captured");
    for s in SECRETS {
        assert!(!text.contains(s), "a log line holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watch_stream_delivers_each_change() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    admin.create_tenant(PUBLIC).await.expect("tenant");
    let client = admin.create_client(INTERNAL, "Fabrikam Employee Timesheets").await.expect("client").client_id;
    let mut watch = admin
        .connections
        .watch_connections(pb::WatchConnectionsRequest { tenant: INTERNAL.into() })
        .await
        .expect("watch")
        .into_inner();
    // An admin key must name a tenant; every tenant at once is for Postern's services.
    let err = admin
        .connections
        .watch_connections(pb::WatchConnectionsRequest { tenant: String::new() })
        .await
        .expect_err("empty tenant");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut next = async || {
        let e = tokio::time::timeout(Duration::from_secs(1), watch.message())
            .await
            .expect("delivered within a second")
            .expect("stream")
            .expect("open");
        (
            pb::ChangeType::try_from(e.change_type).expect("type"),
            e.connection.map(|c| c.name).unwrap_or_default(),
            e.client_id,
            e.tenant,
        )
    };
    create(&mut admin, PUBLIC, auth0("not-watched")).await.expect("other tenant");
    create(&mut admin, INTERNAL, auth0("employees")).await.expect("create");
    assert_eq!(next().await, (pb::ChangeType::Created, "employees".into(), String::new(), INTERNAL.into()));
    admin
        .connections
        .update_connection(pb::UpdateConnectionRequest {
            tenant: INTERNAL.into(),
            connection: Some(pb::Connection {
                name: "employees".into(),
                display_name: "Employees".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
        })
        .await
        .expect("update");
    assert_eq!(next().await.0, pb::ChangeType::Updated);
    enable(&mut admin, INTERNAL, "employees", &client).await.expect("enable");
    assert_eq!(next().await, (pb::ChangeType::ClientEnabled, "employees".into(), client.clone(), INTERNAL.into()));
    // Enabling again changes nothing and says nothing.
    enable(&mut admin, INTERNAL, "employees", &client).await.expect("enable again");
    admin
        .connections
        .disable_client(pb::DisableClientRequest {
            tenant: INTERNAL.into(),
            connection: "employees".into(),
            client_id: client.clone(),
        })
        .await
        .expect("disable");
    assert_eq!(next().await, (pb::ChangeType::ClientDisabled, "employees".into(), client.clone(), INTERNAL.into()));
    // Deleting the client in the tenant service disables it everywhere, and says so.
    enable(&mut admin, INTERNAL, "employees", &client).await.expect("enable");
    assert_eq!(next().await.0, pb::ChangeType::ClientEnabled);
    admin
        .clients
        .delete_client(tpb::DeleteClientRequest { tenant: INTERNAL.into(), client_id: client.clone() })
        .await
        .expect("delete client");
    assert_eq!(next().await, (pb::ChangeType::ClientDisabled, "employees".into(), client.clone(), INTERNAL.into()));
    admin
        .connections
        .delete_connection(pb::DeleteConnectionRequest { tenant: INTERNAL.into(), connection: "employees".into() })
        .await
        .expect("delete");
    assert_eq!(next().await, (pb::ChangeType::Deleted, "employees".into(), String::new(), INTERNAL.into()));
    suite.stop().await.expect("stop ends the open stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn enablement_is_idempotent_and_checks_the_client() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let f = fabrikam(&mut admin).await;
    for _ in 0..3 {
        enable(&mut admin, INTERNAL, "fabrikam-ad", &f.timesheets).await.expect("idempotent");
    }
    let clients = admin
        .connections
        .list_connection_clients(pb::ListConnectionClientsRequest {
            tenant: INTERNAL.into(),
            connection: "fabrikam-ad".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(clients.client_ids, std::slice::from_ref(&f.timesheets));

    // Unknown client, a client of another tenant, unknown connection.
    let err = enable(&mut admin, INTERNAL, "fabrikam-ad", "no-such-client").await.expect_err("unknown client");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::NotFound, Some("CLIENT_NOT_FOUND")));
    let err = enable(&mut admin, INTERNAL, "fabrikam-ad", &f.portal).await.expect_err("other tenant's client");
    assert_eq!(err.code(), Code::NotFound);
    let err = enable(&mut admin, INTERNAL, "no-such-connection", &f.timesheets).await.expect_err("unknown");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::NotFound, Some("CONNECTION_NOT_FOUND")));

    // Disabling twice is fine too.
    for _ in 0..2 {
        admin
            .connections
            .disable_client(pb::DisableClientRequest {
                tenant: INTERNAL.into(),
                connection: "fabrikam-ad".into(),
                client_id: f.timesheets.clone(),
            })
            .await
            .expect("idempotent");
    }
    assert_eq!(client_connections(&mut admin, INTERNAL, &f.timesheets).await.expect("list"), ["fabrikam-google-apps"]);

    // A connection cannot be created in a tenant that does not exist.
    let err = create(&mut admin, "no-such-tenant", auth0("x")).await.expect_err("no tenant");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::NotFound, Some("TENANT_NOT_FOUND")));
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_clients_and_tenants_leave_no_trace() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let f = fabrikam(&mut admin).await;
    let other = admin.create_client(INTERNAL, "Another app").await.expect("client").client_id;
    enable(&mut admin, INTERNAL, "fabrikam-ad", &other).await.expect("enable");

    admin
        .clients
        .delete_client(tpb::DeleteClientRequest { tenant: INTERNAL.into(), client_id: f.timesheets.clone() })
        .await
        .expect("delete client");
    let mut a = admin.clone();
    eventually("the deleted client leaving its connections", || {
        let mut a = a.clone();
        let client = f.timesheets.clone();
        async move { client_connections(&mut a, INTERNAL, &client).await.is_ok_and(|l| l.is_empty()) }
    })
    .await;
    let clients = a
        .connections
        .list_connection_clients(pb::ListConnectionClientsRequest {
            tenant: INTERNAL.into(),
            connection: "fabrikam-ad".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(clients.client_ids, std::slice::from_ref(&other), "only the deleted client left");
    let err = enable(&mut a, INTERNAL, "fabrikam-ad", &f.timesheets).await.expect_err("deleted client");
    assert_eq!(err.code(), Code::NotFound);

    admin.tenants.delete_tenant(tpb::DeleteTenantRequest { name: PUBLIC.into() }).await.expect("delete tenant");
    eventually("the deleted tenant's connections going", || {
        let mut a = a.clone();
        async move { list(&mut a, PUBLIC).await.is_ok_and(|l| l.is_empty()) }
    })
    .await;
    assert!(client_connections(&mut admin, PUBLIC, &f.portal).await.expect("list").is_empty());
    // A new tenant of the same name starts empty, and can reuse the names.
    admin.create_tenant(PUBLIC).await.expect("tenant again");
    create(&mut admin, PUBLIC, social("facebook", "fresh")).await.expect("the name is free again");
    // The other tenant is untouched.
    assert_eq!(list(&mut admin, INTERNAL).await.expect("list"), ["fabrikam-ad", "fabrikam-google-apps"]);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_name_let_exactly_one_win() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = auth0("race");
            conn.display_name = format!("racer {i}");
            create(&mut c, INTERNAL, conn).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(
                (e.code(), reason(&e).as_deref()),
                (Code::AlreadyExists, Some("CONNECTION_ALREADY_EXISTS")),
                "{e:?}"
            ),
        }
    }
    assert_eq!(ok, 1, "exactly one create wins");
    assert_eq!(list(&mut admin, INTERNAL).await.expect("list"), ["race"]);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_connection_is_refused_from_outside() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let f = fabrikam(&mut admin).await;
    let err = admin
        .connections
        .resolve_connection(pb::ResolveConnectionRequest {
            tenant: INTERNAL.into(),
            client_id: f.timesheets.clone(),
            connection: "fabrikam-ad".into(),
        })
        .await
        .expect_err("internal only");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::PermissionDenied, Some("INTERNAL_ONLY")));
    no_secret(&format!("{err:?}"));
    // Nor does the tenant service's log of deletions, which the registry follows.
    let mut events = admin
        .tenants
        .watch_tenant_events(tpb::WatchTenantEventsRequest { after_sequence: 0, from_end: false })
        .await
        .expect_err("internal only");
    assert_eq!((events.code(), reason(&events).as_deref()), (Code::PermissionDenied, Some("INTERNAL_ONLY")));
    events = admin
        .connections
        .watch_connections(pb::WatchConnectionsRequest { tenant: String::new() })
        .await
        .expect_err("every tenant at once is internal");
    assert_eq!(events.code(), Code::InvalidArgument);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_options_name_their_field() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    let mut bad_url = ad("bad-ldap");
    if let Some(pb::connection::Options::Ldap(l)) = &mut bad_url.options {
        l.url = "http://dc1.corp.fabrikam.example".into();
    }
    let mut wrong_family = social("facebook", "x");
    wrong_family.strategy = "ad".into();
    let mut unknown = auth0("mystery");
    unknown.strategy = "myspace".into();
    let mut bad_name = auth0("x");
    bad_name.name = "-bad_name-".into();
    let cases = [
        (bad_url, "connection.options.ldap.url"),
        (wrong_family, "connection.options"),
        (unknown, "connection.strategy"),
        (bad_name, "connection.name"),
    ];
    for (connection, field) in cases {
        let err = create(&mut admin, INTERNAL, connection).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(violated_fields(&err).iter().any(|f| f == field), "{field} not in {:?}", violated_fields(&err));
    }
    let err = create(
        &mut admin,
        INTERNAL,
        pb::Connection { name: "x".into(), strategy: "myspace".into(), ..Default::default() },
    )
    .await
    .expect_err("unknown strategy");
    assert!(err.message().contains("google-oauth2"), "lists the known strategies: {}", err.message());
    // A bad update names the mask path.
    create(&mut admin, INTERNAL, auth0("employees")).await.expect("create");
    let err = admin
        .connections
        .update_connection(pb::UpdateConnectionRequest {
            tenant: INTERNAL.into(),
            connection: Some(pb::Connection { name: "employees".into(), strategy: "ad".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["strategy".into()] }),
        })
        .await
        .expect_err("immutable");
    assert_eq!(violated_fields(&err), ["update_mask.paths[0]"]);
    suite.stop().await.expect("stop");
}

/// Starts a suite on `data` with `master_key` and `previous` keys.
async fn start_keyed(data: &std::path::Path, master_key: &str, previous: &[&str]) -> anyhow::Result<Suite> {
    Suite::start_with(|s| {
        s.data_dir = data.to_owned();
        s.master_key = Some(master_key.to_owned());
        s.previous_master_keys = previous.iter().map(|k| (*k).to_owned()).collect();
    })
    .await
}

/// The ID token's `kid` of a login of alice through `db` for `client`, signing up first
/// when `signup`.
async fn login_kid(admin: &mut Clients, client: &tpb::Client, signup: bool) -> String {
    use postern_proto::authn::v1 as authn;
    if signup {
        admin
            .authn
            .signup(authn::SignupRequest {
                tenant: INTERNAL.into(),
                client_id: client.client_id.clone(),
                connection: "db".into(),
                email: "alice@fabrikam.example".into(),
                password: "Wonder-Land-42!".into(),
                ..Default::default()
            })
            .await
            .expect("signup");
    }
    let login = admin
        .authn
        .login(authn::LoginRequest {
            tenant: INTERNAL.into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            connection: "db".into(),
            username: "alice@fabrikam.example".into(),
            password: "Wonder-Land-42!".into(),
            ..Default::default()
        })
        .await
        .expect("login")
        .into_inner();
    jsonwebtoken::decode_header(&login.id_token).expect("a JWT").kid.expect("kid")
}

/// Whether connection `fabrikam-ad`'s bind password reads back (as its flag).
async fn bind_password_readable(admin: &mut Clients) -> bool {
    let got = admin
        .connections
        .get_connection(pb::GetConnectionRequest { tenant: INTERNAL.into(), connection: "fabrikam-ad".into() })
        .await
        .expect("get")
        .into_inner();
    matches!(got.connection.and_then(|c| c.options), Some(pb::connection::Options::Ldap(l)) if l.bind_password_set)
}

/// A master-key rotation: a start with the new key and the old one as previous opens what
/// the old key sealed and re-seals it (connection secrets, the check value, signing keys),
/// so that the next start needs the new key alone, and the old one alone is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_key_rotation_reseals_every_secret_under_the_new_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_owned();
    let (old, new) = ("a".repeat(64), "c".repeat(64));
    let suite = start_keyed(&data, &old, &[]).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    create(&mut admin, INTERNAL, ad("fabrikam-ad")).await.expect("create");
    let client = admin.create_client(INTERNAL, "Timesheets").await.expect("client");
    create(&mut admin, INTERNAL, auth0("db")).await.expect("create");
    admin
        .connections
        .enable_client(pb::EnableClientRequest {
            tenant: INTERNAL.into(),
            connection: "db".into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("enable");
    let kid = login_kid(&mut admin, &client, true).await;
    suite.stop().await.expect("stop");

    // The new key alone: refused, naming the way to rotate.
    let err = format!("{:#}", start_keyed(&data, &new, &[]).await.err().expect("refused"));
    assert!(err.contains("master key does not match") && err.contains("POSTERN_PREVIOUS_MASTER_KEYS"), "{err}");

    // The new key with the old one as previous: everything reads, and is re-sealed.
    let suite = start_keyed(&data, &new, &[&old]).await.expect("rotating");
    let mut admin = suite.admin().await;
    assert!(bind_password_readable(&mut admin).await);
    assert_eq!(login_kid(&mut admin, &client, false).await, kid, "the same signing key");
    suite.stop().await.expect("stop");

    // The new key alone now: nothing is left under the old one.
    let suite = start_keyed(&data, &new, &[]).await.expect("the new key alone, after the rotation");
    let mut admin = suite.admin().await;
    assert!(bind_password_readable(&mut admin).await);
    assert_eq!(login_kid(&mut admin, &client, false).await, kid);
    suite.stop().await.expect("stop");
    let err = format!("{:#}", start_keyed(&data, &old, &[]).await.err().expect("the old key is refused"));
    assert!(err.contains("master key does not match"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_another_master_key_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_owned();
    let first = "a".repeat(64);
    let suite = Suite::start_with(|s| {
        s.data_dir = data.clone();
        s.master_key = Some(first.clone());
    })
    .await
    .expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    create(&mut admin, INTERNAL, ad("fabrikam-ad")).await.expect("create");
    suite.stop().await.expect("stop");

    let err = match Suite::start_with(|s| {
        s.data_dir = data.clone();
        s.master_key = Some("b".repeat(64));
    })
    .await
    {
        Ok(_) => panic!("a different master key must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("master key does not match"), "{err}");

    // The right key still reads everything, secrets included (as flags).
    let suite = Suite::start_with(|s| {
        s.data_dir = data.clone();
        s.master_key = Some(first.clone());
    })
    .await
    .expect("suite");
    let mut admin = suite.admin().await;
    let got = admin
        .connections
        .get_connection(pb::GetConnectionRequest { tenant: INTERNAL.into(), connection: "fabrikam-ad".into() })
        .await
        .expect("get after restart")
        .into_inner();
    let Some(pb::connection::Options::Ldap(ldap)) = got.connection.and_then(|c| c.options) else {
        panic!("ldap options expected")
    };
    assert!(ldap.bind_password_set);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_and_filter() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(INTERNAL).await.expect("tenant");
    create(&mut admin, INTERNAL, ad("fabrikam-ad")).await.expect("create");
    create(&mut admin, INTERNAL, google_apps("fabrikam.example", "s")).await.expect("create");
    for name in ["db-1", "db-2", "db-3"] {
        create(&mut admin, INTERNAL, auth0(name)).await.expect("create");
    }
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .connections
            .list_connections(pb::ListConnectionsRequest {
                tenant: INTERNAL.into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        names.extend(page.connections.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["db-1", "db-2", "db-3", "fabrikam-ad", "fabrikam-google-apps"]);

    let filtered = |strategy: &str, category: pb::Category| pb::ListConnectionsRequest {
        tenant: INTERNAL.into(),
        strategy: strategy.into(),
        category: category as i32,
        ..Default::default()
    };
    let enterprise =
        admin.connections.list_connections(filtered("", pb::Category::Enterprise)).await.expect("list").into_inner();
    assert_eq!(
        enterprise.connections.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["fabrikam-ad", "fabrikam-google-apps"]
    );
    let ad_only =
        admin.connections.list_connections(filtered("ad", pb::Category::Unspecified)).await.expect("list").into_inner();
    assert_eq!(ad_only.connections.len(), 1);
    let err = admin
        .connections
        .list_connections(filtered("myspace", pb::Category::Unspecified))
        .await
        .expect_err("unknown strategy");
    assert_eq!(violated_fields(&err), ["strategy"]);
    // A token is bound to its list and filters.
    let first = admin
        .connections
        .list_connections(pb::ListConnectionsRequest { tenant: INTERNAL.into(), page_size: 1, ..Default::default() })
        .await
        .expect("page")
        .into_inner();
    let err = admin
        .connections
        .list_connections(pb::ListConnectionsRequest {
            page_token: first.next_page_token,
            ..filtered("auth0", pb::Category::Unspecified)
        })
        .await
        .expect_err("token of another list");
    assert_eq!(violated_fields(&err), ["page_token"]);
    suite.stop().await.expect("stop");
}
