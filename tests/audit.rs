//! The audit stream end to end (`postern.tenant.v1.AuditService`): logins that succeed and
//! fail, a signup, a block, a connection created and enabled, a client created, each in
//! `ListAuditEvents` with who, what, where and why; `WatchAuditEvents` seeing a login made
//! after it started; filters and paging; no secret in any event; one tenant's key unable to
//! read another's log; and an event written while the tenant service is down delivered once
//! it is back.

use std::time::Duration;

use futures_util::StreamExt;
use postern_proto::authn::v1 as authn;
use postern_proto::tenant::v1 as tpb;
use postern_testkit::{Clients, Suite, eventually, reason, violated_fields};
use tonic::Code;

const TENANT: &str = "fabrikam-public";
const CONNECTION: &str = "Username-Password-Authentication";
const PASSWORD: &str = "Wonder-Land-42!";
const WRONG: &str = "Not-The-Password-7";

async fn list(
    c: &mut Clients,
    req: tpb::ListAuditEventsRequest,
) -> Result<tpb::ListAuditEventsResponse, tonic::Status> {
    c.audit.list_audit_events(req).await.map(tonic::Response::into_inner)
}

fn all(tenant: &str) -> tpb::ListAuditEventsRequest {
    tpb::ListAuditEventsRequest { tenant: tenant.into(), page_size: 1000, ..Default::default() }
}

fn kind(e: &tpb::AuditEvent) -> tpb::AuditEventType {
    tpb::AuditEventType::try_from(e.r#type).unwrap_or(tpb::AuditEventType::Unspecified)
}

fn actor(e: &tpb::AuditEvent) -> (tpb::AuditActorType, String) {
    let a = e.actor.clone().unwrap_or_default();
    (tpb::AuditActorType::try_from(a.r#type).unwrap_or(tpb::AuditActorType::Unspecified), a.id)
}

/// The events of `tenant`, as `ListAuditEvents` answers them, once `ready` holds of them (the
/// authenticator's and the registry's arrive through their outboxes, shortly after the
/// change). Waits on the log itself: `WatchAuditEvents` from the oldest event until what it
/// sent (newest first) is ready, then the list must show the same.
async fn events_when(
    c: &mut Clients,
    tenant: &str,
    what: &str,
    ready: impl Fn(&[tpb::AuditEvent]) -> bool,
) -> Vec<tpb::AuditEvent> {
    let request = tpb::WatchAuditEventsRequest { tenant: tenant.into(), ..Default::default() };
    let mut stream = c.audit.watch_audit_events(request).await.expect("watch").into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<tpb::AuditEvent> = Vec::new();
    while !ready(&seen) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(answer))) => seen.splice(0..0, answer.event).for_each(drop),
            other => panic!("{what} did not happen within 20 s ({other:?}): {seen:#?}"),
        }
    }
    let found = list(c, all(tenant)).await.expect("list").events;
    assert!(ready(&found), "{what}: watched, but not in the list: {found:#?}");
    found
}

fn login(client_id: &str, secret: &str, username: &str, password: &str) -> authn::LoginRequest {
    authn::LoginRequest {
        tenant: TENANT.into(),
        client_id: client_id.into(),
        client_secret: secret.into(),
        connection: CONNECTION.into(),
        username: username.into(),
        password: password.into(),
        ip: "203.0.113.7".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_stream_shows_the_logins_and_the_changes() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    let client = admin.create_client(TENANT, "Fabrikam Customer Portal").await.expect("client");
    admin.create_database_connection(TENANT, CONNECTION, &client.client_id).await.expect("connection");
    let api_key = admin.create_api_key(TENANT).await.expect("key");

    let user = admin
        .authn
        .signup(authn::SignupRequest {
            tenant: TENANT.into(),
            client_id: client.client_id.clone(),
            connection: CONNECTION.into(),
            email: "alice@fabrikam.example".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let app = suite.clients("").await;
    let ok = app
        .authn
        .clone()
        .login(login(&client.client_id, &client.client_secret, "alice@fabrikam.example", PASSWORD))
        .await
        .expect("login")
        .into_inner();
    let refused = app
        .authn
        .clone()
        .login(login(&client.client_id, &client.client_secret, "alice@fabrikam.example", WRONG))
        .await
        .expect_err("wrong password");
    assert_eq!(reason(&refused).as_deref(), Some("INVALID_CREDENTIALS"));
    admin
        .users
        .update_user(authn::UpdateUserRequest {
            tenant: TENANT.into(),
            user: Some(authn::User { user_id: user.user_id.clone(), blocked: true, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["blocked".into()] }),
        })
        .await
        .expect("block");

    let events = events_when(&mut admin, TENANT, "the logins, the signup and the block in the log", |events| {
        [tpb::AuditEventType::UserBlocked, tpb::AuditEventType::Signup, tpb::AuditEventType::ConnectionEnabled]
            .iter()
            .all(|k| events.iter().any(|e| kind(e) == *k))
            && events.iter().filter(|e| kind(e) == tpb::AuditEventType::Login).count() == 2
    })
    .await;
    assert!(events.windows(2).all(|w| w[0].sequence > w[1].sequence), "newest first");
    let one = |k: tpb::AuditEventType, outcome: tpb::AuditOutcome| {
        events
            .iter()
            .find(|e| kind(e) == k && e.outcome == outcome as i32)
            .unwrap_or_else(|| panic!("no {k:?} {outcome:?} in {events:#?}"))
            .clone()
    };
    use tpb::AuditEventType as T;
    use tpb::AuditOutcome::{Failure, Success};

    let success = one(T::Login, Success);
    assert_eq!(success.tenant, TENANT);
    assert_eq!(success.connection, CONNECTION);
    assert_eq!(success.client_id, client.client_id);
    assert_eq!(success.user_id, user.user_id);
    assert_eq!(success.source_ip, "203.0.113.7");
    assert_eq!(success.reason, "");
    assert_eq!(actor(&success), (tpb::AuditActorType::User, user.user_id.clone()));
    assert!(success.event_time.is_some());
    assert!(uuid::Uuid::parse_str(&success.id).is_ok_and(|u| u.get_version_num() == 7), "{}", success.id);

    let failure = one(T::Login, Failure);
    assert_eq!(failure.reason, "INVALID_CREDENTIALS");
    assert_eq!((failure.connection.as_str(), failure.source_ip.as_str()), (CONNECTION, "203.0.113.7"));
    assert_eq!(failure.user_id, "", "a failed login names no user");
    assert_eq!(failure.details.get("username").map(String::as_str), Some("alice@fabrikam.example"));

    let signup = one(T::Signup, Success);
    assert_eq!((signup.user_id.as_str(), signup.connection.as_str()), (user.user_id.as_str(), CONNECTION));
    assert_eq!(signup.source_ip, "127.0.0.1", "a signup names where it came from");
    let blocked = one(T::UserBlocked, Success);
    assert_eq!(blocked.user_id, user.user_id);
    assert_eq!(actor(&blocked).0, tpb::AuditActorType::Admin);

    let created = one(T::ConnectionCreated, Success);
    assert_eq!(created.connection, CONNECTION);
    assert_eq!(created.details.get("strategy").map(String::as_str), Some("auth0"));
    assert_eq!(actor(&created).0, tpb::AuditActorType::Admin);
    let enabled = one(T::ConnectionEnabled, Success);
    assert_eq!((enabled.connection.as_str(), enabled.client_id.as_str()), (CONNECTION, client.client_id.as_str()));
    let client_created = one(T::ClientCreated, Success);
    assert_eq!(client_created.client_id, client.client_id);
    assert_eq!(actor(&client_created).0, tpb::AuditActorType::Admin);
    assert!(client_created.source_ip.parse::<std::net::IpAddr>().is_ok(), "the admin's address is recorded");
    let key_created = one(T::ApiKeyCreated, Success);
    one(T::TenantCreated, Success);

    // Filters: the failures only; the logins of the user; a time window that holds nothing.
    let failures = list(
        &mut admin,
        tpb::ListAuditEventsRequest { outcome: Failure as i32, types: vec![T::Login as i32], ..all(TENANT) },
    )
    .await
    .expect("failures")
    .events;
    assert_eq!(failures.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [failure.id.as_str()]);
    let theirs = list(&mut admin, tpb::ListAuditEventsRequest { user_id: user.user_id.clone(), ..all(TENANT) })
        .await
        .expect("the user's")
        .events;
    assert!(theirs.iter().all(|e| e.user_id == user.user_id) && theirs.len() >= 3, "{theirs:#?}");
    let by_client =
        list(&mut admin, tpb::ListAuditEventsRequest { client_id: client.client_id.clone(), ..all(TENANT) })
            .await
            .expect("the client's")
            .events;
    assert!(by_client.iter().any(|e| e.id == success.id) && by_client.iter().all(|e| e.client_id == client.client_id));
    let past = prost_types::Timestamp { seconds: 1_000_000, nanos: 0 };
    let none = list(
        &mut admin,
        tpb::ListAuditEventsRequest {
            start_time: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
            end_time: Some(past),
            ..all(TENANT)
        },
    )
    .await
    .expect("window");
    assert!(none.events.is_empty());

    // Pages of 2 give the same events in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page =
            list(&mut admin, tpb::ListAuditEventsRequest { page_size: 2, page_token: token.clone(), ..all(TENANT) })
                .await
                .expect("page");
        assert!(page.events.len() <= 2);
        paged.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let every = list(&mut admin, all(TENANT)).await.expect("all").events;
    assert_eq!(paged, every.iter().map(|e| e.id.clone()).collect::<Vec<_>>());

    // Never a secret: not the password (right or wrong), the client secret, the keys, the
    // tokens the login answered.
    let text = format!("{every:?}");
    for secret in [
        PASSWORD,
        WRONG,
        client.client_secret.as_str(),
        api_key.as_str(),
        postern_testkit::ADMIN_KEY,
        ok.id_token.as_str(),
        ok.access_token.as_str(),
    ] {
        assert!(!secret.is_empty() && !text.contains(secret), "an audit event holds a secret");
    }
    assert_eq!(key_created.details.get("api_key_id").map(|id| api_key.contains(id.as_str())), Some(false));

    // The tenant's own key reads its log.
    let mut own = suite.clients(&api_key).await;
    assert!(!list(&mut own, all(TENANT)).await.expect("own log").events.is_empty());
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_sees_a_login_made_after_it_started() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    let client = admin.create_client(TENANT, "Fabrikam Customer Portal").await.expect("client");
    admin.create_database_connection(TENANT, CONNECTION, &client.client_id).await.expect("connection");
    // The registry's events reach the log through its outbox, shortly after the change (the
    // relay lets events gather for a moment): the watch starts once they are in it.
    events_when(&mut admin, TENANT, "the connection's events", |events| {
        [tpb::AuditEventType::ConnectionCreated, tpb::AuditEventType::ConnectionEnabled]
            .iter()
            .all(|k| events.iter().any(|e| kind(e) == *k))
    })
    .await;
    let mut stream = admin
        .audit
        .watch_audit_events(tpb::WatchAuditEventsRequest {
            tenant: TENANT.into(),
            from_end: true,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    admin
        .authn
        .signup(authn::SignupRequest {
            tenant: TENANT.into(),
            client_id: client.client_id.clone(),
            connection: CONNECTION.into(),
            email: "bob@fabrikam.example".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("signup");
    admin
        .authn
        .login(login(&client.client_id, &client.client_secret, "bob@fabrikam.example", PASSWORD))
        .await
        .expect("login");
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = stream.next().await {
            let event = item.expect("event").event.expect("an event");
            seen.push(kind(&event));
            if kind(&event) == tpb::AuditEventType::Login {
                return Some(event);
            }
        }
        None
    })
    .await
    .expect("the login within 20 s")
    .expect("the stream stays open");
    assert_eq!((got.outcome, got.connection.as_str()), (tpb::AuditOutcome::Success as i32, CONNECTION));
    assert!(
        !seen.contains(&tpb::AuditEventType::ConnectionCreated),
        "from_end starts after the events recorded before the call: {seen:?}"
    );
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_key_reads_only_its_own_log_and_bad_input_names_its_field() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    admin.create_tenant("fabrikam-internal").await.expect("tenant");
    let other_key = admin.create_api_key("fabrikam-internal").await.expect("key");
    let mut other = suite.clients(&other_key).await;
    let err = list(&mut other, all(TENANT)).await.expect_err("another tenant's log");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::PermissionDenied, Some("TENANT_NOT_ALLOWED")));
    let err = other
        .audit
        .watch_audit_events(tpb::WatchAuditEventsRequest { tenant: TENANT.into(), ..Default::default() })
        .await
        .expect_err("another tenant's stream");
    assert_eq!(err.code(), Code::PermissionDenied);
    let own = list(&mut other, all("fabrikam-internal")).await.expect("its own log");
    assert!(own.events.iter().all(|e| e.tenant == "fabrikam-internal"));
    assert!(!own.events.is_empty(), "its tenant's creation and its key");

    // Appending is internal only, whatever the key.
    let forged = tpb::AppendAuditEventsRequest {
        events: vec![tpb::AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: TENANT.into(),
            event_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            r#type: tpb::AuditEventType::Login as i32,
            outcome: tpb::AuditOutcome::Success as i32,
            ..Default::default()
        }],
    };
    for c in [&mut admin, &mut other] {
        let err = c.audit.append_audit_events(forged.clone()).await.expect_err("internal only");
        assert_eq!((err.code(), reason(&err).as_deref()), (Code::PermissionDenied, Some("INTERNAL_ONLY")));
    }

    // Bad filters and tokens: INVALID_ARGUMENT naming the field.
    let cases = [
        (tpb::ListAuditEventsRequest { types: vec![0], ..all(TENANT) }, "types[0]"),
        (tpb::ListAuditEventsRequest { types: vec![1, 999], ..all(TENANT) }, "types[1]"),
        (tpb::ListAuditEventsRequest { outcome: 9, ..all(TENANT) }, "outcome"),
        (tpb::ListAuditEventsRequest { page_token: "garbage".into(), ..all(TENANT) }, "page_token"),
        (tpb::ListAuditEventsRequest { page_size: -1, ..all(TENANT) }, "page_size"),
        (tpb::ListAuditEventsRequest { tenant: "Not A Tenant".into(), ..all(TENANT) }, "tenant"),
        (
            tpb::ListAuditEventsRequest {
                start_time: Some(prost_types::Timestamp { seconds: 20, nanos: 0 }),
                end_time: Some(prost_types::Timestamp { seconds: 10, nanos: 0 }),
                ..all(TENANT)
            },
            "end_time",
        ),
    ];
    for (req, field) in cases {
        let err = list(&mut admin, req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(violated_fields(&err).iter().any(|f| f == field), "{field} not in {:?}", violated_fields(&err));
    }
    // A token of one filter does not page another.
    // (fabrikam-internal's log holds its creation and its key's.)
    let first =
        list(&mut admin, tpb::ListAuditEventsRequest { page_size: 1, ..all("fabrikam-internal") }).await.expect("page");
    assert!(!first.next_page_token.is_empty());
    let err = list(
        &mut admin,
        tpb::ListAuditEventsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            outcome: tpb::AuditOutcome::Failure as i32,
            ..all("fabrikam-internal")
        },
    )
    .await
    .expect_err("another filter");
    assert_eq!(violated_fields(&err), ["page_token"]);
    let err = admin
        .audit
        .watch_audit_events(tpb::WatchAuditEventsRequest { tenant: TENANT.into(), after_sequence: -1, from_end: false })
        .await
        .expect_err("negative sequence");
    assert_eq!(violated_fields(&err), ["after_sequence"]);
    suite.stop().await.expect("stop");
}

/// An event in a service's outbox survives that service's restart and waits for the tenant
/// service: written while no tenant service listens, it is delivered once one does, and a
/// second delivery of the same event (at least once) adds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_event_waits_for_the_tenant_service_and_is_delivered_once() {
    use postern_common::db::DbLocation;
    use postern_common::principal::{InternalKey, Principal, SignLayer};
    use tower::Layer;

    let dir = tempfile::tempdir().expect("dir");
    let key = InternalKey::generate();
    // Where the tenant service will listen; nothing does yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let location = DbLocation::SqliteFile(dir.path().join("registry.db"));
    let registry = postern_registry::Store::open(&location).await.expect("registry store");
    let mut event =
        postern_common::audit::event(TENANT, tpb::AuditEventType::ConnectionCreated, tpb::AuditOutcome::Success);
    event.actor = Some(tpb::AuditActor { r#type: tpb::AuditActorType::Admin as i32, id: String::new() });
    event.connection = "written-offline".into();
    registry.outbox().record(std::slice::from_ref(&event)).await.expect("outbox");
    // A crash before delivery: the row is in the file, not in memory.
    registry.close().await;
    let registry = postern_registry::Store::open(&location).await.expect("registry store again");
    let pending = registry.outbox().pending(10).await.expect("pending");
    assert_eq!(pending.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>(), [event.id.clone()]);
    // The same event twice, as a relay that died between delivery and deletion would leave it.
    let mut again = event.clone();
    again.connection = "written-offline".into();
    let sql = "INSERT INTO audit_outbox (id, event) VALUES ($1, $2)";
    let duplicate = sqlx::query(sql)
        .bind(format!("{}-again", event.id))
        .bind(prost::Message::encode_to_vec(&again))
        .execute(registry.db().pool())
        .await;
    duplicate.expect("a second row of the same event");

    let remote = postern_common::server::remote(&format!("http://{addr}")).expect("channel");
    registry.outbox().spawn_relay(SignLayer::new(key.clone(), Principal::Service("registry".into())).layer(remote));
    assert_eq!(registry.outbox().pending(10).await.expect("pending").len(), 2, "nothing delivered while down");

    // The tenant service comes up on that address.
    let tenant =
        postern_tenant::Store::open(&DbLocation::SqliteFile(dir.path().join("tenant.db"))).await.expect("tenant");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the tenant service's address");
    let routes = postern_tenant::routes(tenant.clone(), key.clone());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let outbox = registry.outbox().clone();
    eventually("the outbox emptied into the audit log", || {
        let outbox = outbox.clone();
        async move { outbox.pending(10).await.is_ok_and(|p| p.is_empty()) }
    })
    .await;
    let logged = tenant.list_audit(TENANT, &Default::default(), None, 10).await.expect("the audit log");
    assert_eq!(logged.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [event.id.clone()], "delivered once");
    assert_eq!(logged[0].connection, "written-offline");
    assert_eq!(logged[0].event_type, "CONNECTION_CREATED");
    server.abort();
    registry.close().await;
    tenant.close().await;
}

/// Brute-force protection's block is an event of its own (`USER_BLOCKED` by the system, as
/// Auth0's "Blocked Account"), recorded once with the failure that blocks; the logins refused
/// afterwards are `TOO_MANY_ATTEMPTS` failures; a `Login` refused at its client secret is
/// a failure too (never with the secret); and the connections a deleted client leaves are
/// disabled by the registry, as the system, saying why.
///
/// On SQLite the block's event is written with the failure that blocks; on PostgreSQL, which
/// counts a failure before the check, with that failure's login event: both are run.
#[tokio::test(flavor = "multi_thread")]
async fn blocks_refused_client_secrets_and_deleted_clients_are_audited_on_sqlite() {
    blocks_refused_client_secrets_and_deleted_clients_are_audited(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_refused_client_secrets_and_deleted_clients_are_audited_on_postgres() {
    let test = "blocks_refused_client_secrets_and_deleted_clients_are_audited_on_postgres";
    let Some(base) = postern_testkit::peers::postgres(test) else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    blocks_refused_client_secrets_and_deleted_clients_are_audited(Some(db.url.clone())).await;
    db.drop_db().await.expect("drop the database");
}

async fn blocks_refused_client_secrets_and_deleted_clients_are_audited(database_url: Option<String>) {
    use tpb::AuditEventType as T;
    use tpb::AuditOutcome::{Failure, Success};

    let suite = Suite::start_with(|s| s.database_url = database_url).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    let client = admin.create_client(TENANT, "Fabrikam Customer Portal").await.expect("client");
    admin.create_database_connection(TENANT, CONNECTION, &client.client_id).await.expect("connection");
    let user = admin
        .authn
        .signup(authn::SignupRequest {
            tenant: TENANT.into(),
            client_id: client.client_id.clone(),
            connection: CONNECTION.into(),
            email: "carol@fabrikam.example".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let app = suite.clients("").await;
    let wrong_secret = "not-the-client-secret-0123456789";
    let refused = app
        .authn
        .clone()
        .login(login(&client.client_id, wrong_secret, "carol@fabrikam.example", PASSWORD))
        .await
        .expect_err("a wrong client secret");
    assert_eq!(reason(&refused).as_deref(), Some("CLIENT_SECRET_INVALID"));
    let max = postern_authn::bruteforce::MAX_CONSECUTIVE_FAILURES;
    for _ in 0..max {
        let err = app
            .authn
            .clone()
            .login(login(&client.client_id, &client.client_secret, "carol@fabrikam.example", WRONG))
            .await
            .expect_err("wrong password");
        assert_eq!(reason(&err).as_deref(), Some("INVALID_CREDENTIALS"));
    }
    for _ in 0..2 {
        let err = app
            .authn
            .clone()
            .login(login(&client.client_id, &client.client_secret, "carol@fabrikam.example", PASSWORD))
            .await
            .expect_err("blocked");
        assert_eq!(reason(&err).as_deref(), Some("TOO_MANY_ATTEMPTS"));
    }
    admin
        .clients
        .delete_client(tpb::DeleteClientRequest { tenant: TENANT.into(), client_id: client.client_id.clone() })
        .await
        .expect("delete the client");

    let logins = 1 + max as usize + 2;
    let events =
        events_when(&mut admin, TENANT, "the failures, the block and the deleted client's connection", |events| {
            events.iter().filter(|e| kind(e) == T::Login).count() == logins
                && events.iter().any(|e| kind(e) == T::UserBlocked)
                && events.iter().any(|e| kind(e) == T::ConnectionDisabled)
        })
        .await;

    // The refused client secret: a login failure with its reason, the name typed, no secret.
    let secret_refused: Vec<_> = events.iter().filter(|e| e.reason == "CLIENT_SECRET_INVALID").collect();
    assert_eq!(secret_refused.len(), 1, "{events:#?}");
    let e = secret_refused[0];
    assert_eq!((kind(e), e.outcome), (T::Login, Failure as i32));
    assert_eq!((e.connection.as_str(), e.client_id.as_str()), (CONNECTION, client.client_id.as_str()));
    assert_eq!((e.source_ip.as_str(), e.user_id.as_str()), ("203.0.113.7", ""));
    assert_eq!(e.details.get("username").map(String::as_str), Some("carol@fabrikam.example"));
    let text = format!("{events:?}");
    for secret in [wrong_secret, client.client_secret.as_str(), PASSWORD, WRONG] {
        assert!(!text.contains(secret), "an audit event holds a secret");
    }

    // One block, by the system, of that user from that address, after the tenth failure.
    let blocks: Vec<_> = events.iter().filter(|e| kind(e) == T::UserBlocked).collect();
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    let block = blocks[0];
    assert_eq!(block.outcome, Success as i32);
    assert_eq!(actor(block), (tpb::AuditActorType::System, "authn".to_owned()));
    assert_eq!((block.user_id.as_str(), block.source_ip.as_str()), (user.user_id.as_str(), "203.0.113.7"));
    assert_eq!((block.connection.as_str(), block.client_id.as_str()), (CONNECTION, client.client_id.as_str()));
    assert_eq!(block.details.get("blocked_by").map(String::as_str), Some("brute_force_protection"));
    assert_eq!(block.details.get("consecutive_failures"), Some(&max.to_string()));
    let reasons = |r: &str| events.iter().filter(|e| kind(e) == T::Login && e.reason == r).count();
    assert_eq!((reasons("INVALID_CREDENTIALS"), reasons("TOO_MANY_ATTEMPTS")), (max as usize, 2));
    // Newest first: the block comes after the failures and before the refusals.
    let position = |e: &tpb::AuditEvent| e.sequence;
    let failures: Vec<i64> = events.iter().filter(|e| e.reason == "INVALID_CREDENTIALS").map(position).collect();
    let blocked: Vec<i64> = events.iter().filter(|e| e.reason == "TOO_MANY_ATTEMPTS").map(position).collect();
    assert!(failures.iter().all(|s| *s < block.sequence) && blocked.iter().all(|s| *s > block.sequence));

    // The connection the deleted client leaves: disabled by the registry, saying why.
    let disabled = events.iter().find(|e| kind(e) == T::ConnectionDisabled).expect("disabled");
    assert_eq!((disabled.connection.as_str(), disabled.client_id.as_str()), (CONNECTION, client.client_id.as_str()));
    assert_eq!(actor(disabled), (tpb::AuditActorType::System, "registry".to_owned()));
    assert_eq!(disabled.details.get("cause").map(String::as_str), Some("client_deleted"));
    suite.stop().await.expect("stop");
}
