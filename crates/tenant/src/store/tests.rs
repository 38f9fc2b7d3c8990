//! The event log's store tests, run on SQLite and on PostgreSQL (`POSTERN_TEST_POSTGRES_URL`;
//! skipped with a printed reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use postern_common::db::DbLocation;

use super::*;
use crate::domain::{AppType, NewClient};

async fn each_backend<F, Fut>(test: &str, body: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbLocation::SqliteFile(dir.path().join("tenant.db"))).await.unwrap();
    body(store.clone()).await;
    store.close().await;

    let Some(base) = postern_common::testing::postgres(test) else { return };
    let db = postern_common::testing::TestDatabase::create(&base).await.expect("a fresh database");
    let store = Store::open(&DbLocation::Postgres {
        url: db.url.clone(),
        schema: "tenant".into(),
        pool_size: postern_common::db::DEFAULT_POOL_SIZE,
        min_open: postern_common::db::MIN_OPEN_CONNECTIONS,
    })
    .await
    .expect("PostgreSQL");
    body(store.clone()).await;
    store.close().await;
    db.drop_db().await.expect("drop the database");
}

fn client(id: &str) -> NewClient {
    NewClient {
        client_id: id.into(),
        name: "Fabrikam Employee Timesheets".into(),
        app_type: AppType::RegularWeb,
        callbacks: Vec::new(),
        allowed_logout_urls: Vec::new(),
        allowed_origins: Vec::new(),
        backchannel_logout_uri: String::new(),
    }
}

#[tokio::test]
async fn deletions_are_logged_in_order_and_only_when_they_happen() {
    each_backend("deletions_are_logged_in_order_and_only_when_they_happen", |store| async move {
        let mut changed = store.subscribe_events();
        store.create_tenant("fabrikam-internal", "Fabrikam-Internal", "").await.unwrap();
        store.create_tenant("fabrikam-public", "Fabrikam-Public", "").await.unwrap();
        store.create_client("fabrikam-internal", &client("c1"), b"h").await.unwrap();
        store.create_client("fabrikam-internal", &client("c2"), b"h").await.unwrap();
        assert!(store.events_after(0, 10).await.unwrap().is_empty(), "creations are not logged");

        assert!(store.delete_client("fabrikam-internal", "c1").await.unwrap());
        assert!(changed.has_changed().unwrap(), "followers in this process are woken");
        assert!(!store.delete_client("fabrikam-internal", "c1").await.unwrap(), "nothing to delete, nothing logged");
        assert!(!store.delete_client("fabrikam-public", "c2").await.unwrap(), "another tenant's client");
        assert!(store.delete_tenant("fabrikam-internal").await.unwrap());
        assert!(!store.delete_tenant("fabrikam-internal").await.unwrap());

        let events = store.events_after(0, 10).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.event_type, e.tenant.as_str(), e.client_id.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (EventType::ClientDeleted, "fabrikam-internal", "c1"),
                (EventType::TenantDeleted, "fabrikam-internal", "")
            ]
        );
        assert!(events[0].sequence < events[1].sequence);
        let created = store.get_tenant("fabrikam-public").await.unwrap().unwrap().create_time;
        assert!(events.iter().all(|e| e.tenant_create_time > 0 && e.tenant_create_time <= created));
        let after_first = store.events_after(events[0].sequence, 10).await.unwrap();
        assert_eq!(after_first, events[1..]);
        assert!(store.events_after(events[1].sequence, 10).await.unwrap().is_empty());
        assert_eq!(store.events_after(0, 1).await.unwrap(), events[..1]);
        changed.mark_unchanged();
    })
    .await;
}

#[tokio::test]
async fn every_change_of_an_api_is_logged_for_the_tenant() {
    each_backend("every_change_of_an_api_is_logged_for_the_tenant", |store| async move {
        store.create_tenant("fabrikam-public", "Fabrikam-Public", "").await.unwrap();
        let api = crate::domain::ResourceServer {
            id: postern_common::ids::new_id(),
            identifier: "https://api.fabrikam.com".into(),
            name: "Fabrikam API".into(),
            scopes: vec![crate::domain::ApiScope { value: "read:timesheets".into(), description: String::new() }],
            create_time: 0,
            update_time: 0,
        };
        store.create_resource_server("fabrikam-public", &api).await.unwrap();
        let patch = crate::domain::ResourceServerPatch { name: Some("Timesheets API".into()), scopes: None };
        store.update_resource_server("fabrikam-public", &api.identifier, &patch).await.unwrap().unwrap();
        assert!(store.update_resource_server("fabrikam-public", "https://nope", &patch).await.unwrap().is_none());
        assert!(store.delete_resource_server("fabrikam-public", &api.identifier).await.unwrap());
        assert!(!store.delete_resource_server("fabrikam-public", &api.identifier).await.unwrap());
        assert!(matches!(store.create_resource_server("nobody", &api).await, Err(StoreError::TenantNotFound)));
        let kinds: Vec<_> = store
            .events_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event_type, e.tenant, e.client_id))
            .collect();
        let changed = (EventType::ResourceServersChanged, "fabrikam-public".to_owned(), String::new());
        assert_eq!(kinds, [changed.clone(), changed.clone(), changed], "created, updated, deleted; nothing else");
    })
    .await;
}

#[tokio::test]
async fn a_tenant_update_is_logged_for_followers_that_remember_its_branding() {
    each_backend("a_tenant_update_is_logged_for_followers_that_remember_its_branding", |store| async move {
        store.create_tenant("fabrikam-public", "Fabrikam-Public", "").await.unwrap();
        let mut changed = store.subscribe_events();
        changed.mark_unchanged();
        let updated = store.update_tenant("fabrikam-public", Some("Fabrikam"), None).await.unwrap().unwrap();
        assert_eq!(updated.display_name, "Fabrikam");
        assert!(changed.has_changed().unwrap(), "followers in this process are woken");
        assert!(store.update_tenant("nobody", Some("Nobody"), None).await.unwrap().is_none());
        let events = store.events_after(0, 10).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.event_type, e.tenant.as_str(), e.client_id.as_str())).collect();
        assert_eq!(
            kinds,
            [(EventType::TenantUpdated, "fabrikam-public", "")],
            "no event for a tenant that is not there"
        );
        assert_eq!(events[0].tenant_create_time, updated.create_time);
    })
    .await;
}

#[tokio::test]
async fn api_key_scopes_are_kept_and_older_keys_have_them_all() {
    use postern_common::scope::{Scope, Scopes};
    each_backend("api_key_scopes_are_kept_and_older_keys_have_them_all", |store| async move {
        store.create_tenant("fabrikam-public", "Fabrikam-Public", "").await.unwrap();
        let key = |id: &str, scopes| ApiKey {
            id: id.into(),
            description: String::new(),
            create_time: now_micros(),
            expire_time: None,
            scopes,
        };
        let narrow = Scopes::from_iter([Scope::ReadOnly, Scope::Users]);
        store.create_api_key("fabrikam-public", &key("key_narrow", narrow), b"narrow").await.unwrap();
        store.create_api_key("fabrikam-public", &key("key_full", Scopes::full()), b"full").await.unwrap();
        // A key written as before scopes existed: the migration's default applies.
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, seq, description, key_hash, create_time) \
             SELECT 'key_old', id, 'zzz', '', $1, 0 FROM tenants WHERE name = 'fabrikam-public'",
        )
        .bind(&b"old"[..])
        .execute(store.db.writer())
        .await
        .unwrap();
        let found = |hash: &'static [u8]| {
            let store = store.clone();
            async move { store.find_api_key(hash).await.unwrap().map(|k| k.scopes) }
        };
        assert_eq!(found(b"narrow").await, Some(narrow));
        assert_eq!(found(b"full").await, Some(Scopes::full()));
        assert_eq!(found(b"old").await, Some(Scopes::full()));
        let listed = store.list_api_keys("fabrikam-public", None, 10).await.unwrap();
        let scopes: Vec<_> = listed.iter().map(|(_, k)| (k.id.as_str(), k.scopes)).collect();
        assert_eq!(scopes, [("key_narrow", narrow), ("key_full", Scopes::full()), ("key_old", Scopes::full())]);
    })
    .await;
}

fn audit_event(tenant: &str, event_type: &str, outcome: &str, user: &str, time: i64) -> AuditEvent {
    AuditEvent {
        id: postern_common::ids::new_id(),
        tenant: tenant.into(),
        event_time: time,
        event_type: event_type.into(),
        outcome: outcome.into(),
        reason: if outcome == "FAILURE" { "WRONG_CREDENTIALS".into() } else { String::new() },
        actor_type: "USER".into(),
        user_id: user.into(),
        connection: "Username-Password-Authentication".into(),
        client_id: "c1".into(),
        details: [("grant_type".to_owned(), "password".to_owned())].into(),
        ..AuditEvent::default()
    }
}

#[tokio::test]
async fn audit_appends_are_idempotent_by_id() {
    each_backend("audit_appends_are_idempotent_by_id", |store| async move {
        let mut woken = store.subscribe_audit();
        let events = [
            audit_event("fabrikam-internal", "LOGIN", "SUCCESS", "auth0|1", 10),
            audit_event("fabrikam-internal", "LOGIN", "FAILURE", "", 20),
        ];
        assert_eq!(store.append_audit(&events).await.unwrap(), 2);
        assert!(woken.has_changed().unwrap(), "followers in this process are woken");
        woken.borrow_and_update();
        assert_eq!(store.append_audit(&events).await.unwrap(), 0, "a repeated delivery adds nothing");
        let mut again = events.to_vec();
        again.push(audit_event("fabrikam-internal", "SIGNUP", "SUCCESS", "auth0|2", 30));
        assert_eq!(store.append_audit(&again).await.unwrap(), 1, "only the new one of a mixed batch");
        let listed = store.list_audit("fabrikam-internal", &AuditFilter::default(), None, 10).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[2].details.get("grant_type").map(String::as_str), Some("password"));
        let first = store.audit_after("fabrikam-internal", 0, 10).await.unwrap();
        assert_eq!(
            first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec![events[0].id.as_str(), events[1].id.as_str(), again[2].id.as_str()]
        );
        assert!(first.windows(2).all(|w| w[0].sequence < w[1].sequence));

        // A delivery larger than one statement's rows (200), repeating an event within the
        // same statement, one in a later statement, and one already held: each new id once,
        // in the delivery's order.
        let mut big: Vec<AuditEvent> =
            (0..450).map(|i| audit_event("fabrikam-public", "LOGIN", "SUCCESS", &format!("auth0|{i}"), i)).collect();
        big.insert(50, big[10].clone());
        big.insert(300, big[20].clone());
        big.push(events[0].clone());
        assert_eq!(store.append_audit(&big).await.unwrap(), 450, "450 new ids of 453 events");
        let held = store.audit_after("fabrikam-public", 0, 1000).await.unwrap();
        let ids: Vec<&str> = held.iter().map(|e| e.user_id.as_str()).collect();
        let expected: Vec<String> = (0..450).map(|i| format!("auth0|{i}")).collect();
        assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn audit_lists_filter_and_page_newest_first() {
    each_backend("audit_lists_filter_and_page_newest_first", |store| async move {
        let mut events = Vec::new();
        for i in 0..7 {
            let (kind, outcome) = if i % 2 == 0 { ("LOGIN", "SUCCESS") } else { ("LOGIN", "FAILURE") };
            events.push(audit_event("fabrikam-internal", kind, outcome, &format!("auth0|{}", i % 3), 100 + i));
        }
        events.push(audit_event("fabrikam-internal", "SIGNUP", "SUCCESS", "auth0|9", 200));
        events.push(audit_event("fabrikam-public", "LOGIN", "SUCCESS", "auth0|0", 150));
        store.append_audit(&events).await.unwrap();
        let list = |filter: AuditFilter| {
            let store = store.clone();
            async move {
                store
                    .list_audit("fabrikam-internal", &filter, None, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.event_type, e.outcome, e.user_id, e.event_time))
                    .collect::<Vec<_>>()
            }
        };
        let all = list(AuditFilter::default()).await;
        assert_eq!(all.len(), 8, "the other tenant's event is not listed");
        assert_eq!(all[0].0, "SIGNUP", "newest first");
        assert_eq!(list(AuditFilter { types: vec!["SIGNUP".into()], ..Default::default() }).await.len(), 1);
        let both = AuditFilter { types: vec!["SIGNUP".into(), "LOGIN".into()], ..Default::default() };
        assert_eq!(list(both).await.len(), 8);
        let failures = list(AuditFilter { outcome: Some("FAILURE".into()), ..Default::default() }).await;
        assert_eq!(failures.len(), 3);
        assert!(failures.iter().all(|e| e.1 == "FAILURE"));
        let user = list(AuditFilter { user_id: "auth0|1".into(), ..Default::default() }).await;
        assert_eq!(user.iter().map(|e| e.3).collect::<Vec<_>>(), vec![104, 101]);
        let window = AuditFilter { start_time: Some(102), end_time: Some(105), ..Default::default() };
        assert_eq!(list(window).await.iter().map(|e| e.3).collect::<Vec<_>>(), vec![104, 103, 102]);
        let combined = AuditFilter {
            outcome: Some("SUCCESS".into()),
            user_id: "auth0|0".into(),
            connection: "Username-Password-Authentication".into(),
            client_id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(list(combined).await.iter().map(|e| e.3).collect::<Vec<_>>(), vec![106, 100]);
        assert!(list(AuditFilter { client_id: "other".into(), ..Default::default() }).await.is_empty());

        // Pages of 3, each before the last sequence of the previous one.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.list_audit("fabrikam-internal", &AuditFilter::default(), before, 3).await.unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().map(|e| e.sequence);
            seen.extend(page.into_iter().map(|e| e.event_time));
        }
        assert_eq!(seen, vec![200, 106, 105, 104, 103, 102, 101, 100]);
    })
    .await;
}

#[tokio::test]
async fn audit_retention_prunes_only_older_events() {
    each_backend("audit_retention_prunes_only_older_events", |store| async move {
        let old = audit_event("fabrikam-internal", "LOGIN", "SUCCESS", "auth0|1", 1_000);
        let new = audit_event("fabrikam-internal", "LOGIN", "SUCCESS", "auth0|1", 3_000);
        store.append_audit(&[old, new.clone()]).await.unwrap();
        assert_eq!(store.prune_audit(2_000).await.unwrap(), 1);
        assert_eq!(store.prune_audit(2_000).await.unwrap(), 0);
        let left = store.list_audit("fabrikam-internal", &AuditFilter::default(), None, 10).await.unwrap();
        assert_eq!(left.into_iter().map(|e| e.id).collect::<Vec<_>>(), vec![new.id.clone()]);

        // Without a retention, nothing is past it.
        assert_eq!(store.prune_audit_now().await.unwrap(), 0);
    })
    .await;
}

async fn audit_ids(store: &Store, tenant: &str) -> Vec<String> {
    let events = store.list_audit(tenant, &AuditFilter::default(), None, 10).await.unwrap();
    events.into_iter().map(|e| e.id).collect()
}

/// Waits for prunings (each signals the audit watch) until the event `gone` left the log.
async fn wait_pruned(store: &Store, tenant: &str, gone: &str, changed: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while audit_ids(store, tenant).await.iter().any(|id| id == gone) {
            changed.changed().await.unwrap();
        }
    })
    .await
    .expect("the pruner deleted the stale event");
}

/// The pruner's timer deletes what is past the retention at start and then on every tick,
/// on its own (no delivery needed), and stops at shutdown.
#[tokio::test]
async fn the_audit_pruner_prunes_on_its_timer() {
    each_backend("the_audit_pruner_prunes_on_its_timer", |store| async move {
        let tenant = "fabrikam-internal";
        let stale = audit_event(tenant, "LOGIN", "SUCCESS", "auth0|1", 1_000);
        store.append_audit(std::slice::from_ref(&stale)).await.unwrap();
        let mut changed = store.subscribe_audit();
        changed.borrow_and_update();
        let kept = store
            .with_audit_retention(std::time::Duration::from_secs(3600))
            .with_audit_pruner(std::time::Duration::from_millis(50));
        wait_pruned(&store, tenant, &stale.id, &mut changed).await;
        // A later stale event (no delivery through `kept`) goes at a later tick; a fresh one stays.
        let fresh = audit_event(tenant, "SIGNUP", "SUCCESS", "auth0|2", postern_common::time::now_micros());
        let later = audit_event(tenant, "LOGIN", "SUCCESS", "auth0|1", 2_000);
        store.append_audit(&[fresh.clone(), later.clone()]).await.unwrap();
        wait_pruned(&store, tenant, &later.id, &mut changed).await;
        assert_eq!(audit_ids(&store, tenant).await, vec![fresh.id.clone()]);
        kept.shutdown_streams();
    })
    .await;
}

/// The pruner's timer never keeps the database open: once every handle of a store is
/// dropped (a start that failed after opening it), the SQLite file can be opened again.
#[tokio::test]
async fn the_audit_pruner_lets_the_database_go() {
    let dir = tempfile::tempdir().unwrap();
    let location = DbLocation::SqliteFile(dir.path().join("tenant.db"));
    let store = Store::open(&location).await.unwrap();
    let served = store
        .with_audit_retention(std::time::Duration::from_secs(3600))
        .with_audit_pruner(std::time::Duration::from_millis(10));
    // Let the timer run (its first tick prunes at once).
    tokio::task::yield_now().await;
    drop((store, served));
    let reopened = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match Store::open(&location).await {
                Ok(s) => return s,
                // A pruning in flight holds the store until it ends: then it is let go.
                Err(postern_common::db::DbError::InUse { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the pruner's timer keeps the database open");
    reopened.close().await;
}

#[tokio::test]
async fn own_changes_are_audited_in_their_transaction_by_their_actor() {
    each_backend("own_changes_are_audited_in_their_transaction_by_their_actor", |store| async move {
        let admin =
            store.acting(Actor { actor_type: "ADMIN".into(), actor_id: String::new(), source_ip: "10.0.0.7".into() });
        admin.create_tenant("fabrikam-internal", "Fabrikam-Internal", "").await.unwrap();
        let key =
            store.acting(Actor { actor_type: "API_KEY".into(), actor_id: "key_1".into(), source_ip: String::new() });
        key.create_client("fabrikam-internal", &client("c1"), b"h").await.unwrap();
        assert!(
            matches!(key.create_client("fabrikam-internal", &client("c1"), b"h").await, Err(StoreError::AlreadyExists)),
            "a refused change"
        );
        key.set_client_secret("fabrikam-internal", "c1", b"h2").await.unwrap();
        assert!(!key.delete_client("fabrikam-internal", "nope").await.unwrap(), "nothing deleted, nothing audited");
        key.delete_client("fabrikam-internal", "c1").await.unwrap();
        key.update_tenant("fabrikam-internal", Some("Fabrikam"), None).await.unwrap();
        let events = store.audit_after("fabrikam-internal", 0, 10).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            kinds,
            ["TENANT_CREATED", "CLIENT_CREATED", "CLIENT_SECRET_ROTATED", "CLIENT_DELETED", "TENANT_UPDATED"]
        );
        assert_eq!((events[0].actor_type.as_str(), events[0].source_ip.as_str()), ("ADMIN", "10.0.0.7"));
        assert_eq!((events[1].actor_type.as_str(), events[1].actor_id.as_str()), ("API_KEY", "key_1"));
        assert_eq!(events[1].client_id, "c1");
        assert_eq!(events[4].details.get("fields").map(String::as_str), Some("display_name"));
        assert!(events.iter().all(|e| e.outcome == "SUCCESS"));

        // A deleted tenant's log goes with it.
        store.delete_tenant("fabrikam-internal").await.unwrap();
        assert!(store.audit_after("fabrikam-internal", 0, 10).await.unwrap().is_empty());
    })
    .await;
}
