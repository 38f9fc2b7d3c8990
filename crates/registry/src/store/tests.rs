//! The store's tests, each run on SQLite and on PostgreSQL (`POSTERN_TEST_POSTGRES_URL`;
//! skipped with a printed reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use std::future::Future;

use postern_common::db::DbLocation;
use postern_proto::connections::v1 as pb;

use super::*;
use crate::domain::{Connection, NewConnection};

const T: &str = "fabrikam-internal";

/// Runs `body` against a fresh store on each backend.
async fn each_backend<F, Fut>(test: &str, body: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbLocation::SqliteFile(dir.path().join("registry.db"))).await.unwrap();
    body(store.clone()).await;
    store.close().await;

    let Some(base) = postern_common::testing::postgres(test) else { return };
    let db = postern_common::testing::TestDatabase::create(&base).await.expect("a fresh database");
    let store = Store::open(&DbLocation::Postgres {
        url: db.url.clone(),
        schema: "registry".into(),
        pool_size: postern_common::db::DEFAULT_POOL_SIZE,
        min_open: postern_common::db::MIN_OPEN_CONNECTIONS,
    })
    .await
    .expect("PostgreSQL");
    body(store.clone()).await;
    store.close().await;
    db.drop_db().await.expect("drop the database");
}

fn connection(name: &str, strategy: &str) -> Connection {
    let options = match strategy {
        "ad" => Some(pb::connection::Options::Ldap(pb::LdapOptions {
            url: "ldaps://dc1.fabrikam.example".into(),
            bind_dn: "CN=postern,DC=fabrikam,DC=example".into(),
            bind_password: "pw".into(),
            base_dn: "DC=fabrikam,DC=example".into(),
            ..Default::default()
        })),
        "google-apps" => Some(pb::connection::Options::GoogleApps(pb::GoogleAppsOptions {
            domain: "fabrikam.example".into(),
            client_id: "gid".into(),
            client_secret: "gsecret".into(),
            ..Default::default()
        })),
        "facebook" => Some(pb::connection::Options::Oauth2(pb::OAuth2Options {
            client_id: "fb".into(),
            client_secret: "fbsecret".into(),
            ..Default::default()
        })),
        _ => None,
    };
    let aliases = if strategy == "ad" { vec!["corp.fabrikam.example".to_owned()] } else { Vec::new() };
    let new = NewConnection::try_from(pb::Connection {
        name: name.into(),
        strategy: strategy.into(),
        domain_aliases: aliases,
        options,
        ..Default::default()
    })
    .expect("a valid connection");
    let now = postern_common::time::now_micros();
    Connection { id: Connection::new_id(), spec: new.spec, create_time: now, update_time: now }
}

fn names(rows: &[Stored]) -> Vec<&str> {
    rows.iter().map(|s| s.connection.spec.name.as_str()).collect()
}

#[tokio::test]
async fn create_get_list_and_unique_names() {
    each_backend("create_get_list_and_unique_names", |store| async move {
        let ad = connection("fabrikam-ad", "ad");
        store.create(T, 1, &ad, b"sealed-ad").await.unwrap();
        for (n, s) in [("google", "google-apps"), ("facebook", "facebook"), ("db", "auth0")] {
            store.create(T, 1, &connection(n, s), b"x").await.unwrap();
        }
        // Same name in another tenant is fine; in the same tenant it is not.
        store.create("fabrikam-public", 1, &connection("fabrikam-ad", "ad"), b"x").await.unwrap();
        assert!(matches!(
            store.create(T, 1, &connection("fabrikam-ad", "auth0"), b"x").await,
            Err(StoreError::AlreadyExists)
        ));

        let by_name = store.get(T, &ConnectionRef::Name("fabrikam-ad".into())).await.unwrap().unwrap();
        assert_eq!(by_name.connection, ad);
        assert_eq!(by_name.sealed, b"sealed-ad");
        let by_id = store.get(T, &ConnectionRef::Id(ad.id.clone())).await.unwrap().unwrap();
        assert_eq!(by_id.connection.id, ad.id);
        assert!(store.get("fabrikam-public", &ConnectionRef::Id(ad.id.clone())).await.unwrap().is_none());

        let all = store.list(T, "", 0, None, 10).await.unwrap();
        assert_eq!(names(&all), ["db", "fabrikam-ad", "facebook", "google"]);
        let page = store.list(T, "", 0, Some("fabrikam-ad"), 1).await.unwrap();
        assert_eq!(names(&page), ["facebook"]);
        let social = store.list(T, "", pb::Category::Social as i32, None, 10).await.unwrap();
        assert_eq!(names(&social), ["facebook"]);
        let ad_only = store.list(T, "ad", 0, None, 10).await.unwrap();
        assert_eq!(names(&ad_only), ["fabrikam-ad"]);
    })
    .await;
}

#[tokio::test]
async fn concurrent_creates_of_one_name_let_exactly_one_win() {
    each_backend("concurrent_creates_of_one_name_let_exactly_one_win", |store| async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.create(T, 1, &connection("race", "auth0"), b"x").await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::AlreadyExists) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 1);
    })
    .await;
}

#[tokio::test]
async fn enablement_both_ways_resolve_and_discovery() {
    each_backend("enablement_both_ways_resolve_and_discovery", |store| async move {
        let ad = connection("fabrikam-ad", "ad");
        let google = connection("fabrikam-google-apps", "google-apps");
        let other = connection("other", "auth0");
        for c in [&ad, &google, &other] {
            store.create(T, 1, c, b"x").await.unwrap();
        }
        assert!(store.enable(T, &ad.id, "timesheets").await.unwrap());
        assert!(!store.enable(T, &ad.id, "timesheets").await.unwrap(), "idempotent");
        assert!(store.enable(T, &google.id, "timesheets").await.unwrap());
        assert!(store.enable(T, &ad.id, "portal").await.unwrap());
        // A connection of another tenant cannot be enabled through this one.
        assert!(matches!(store.enable("fabrikam-public", &ad.id, "x").await, Err(StoreError::NotFound)));
        assert!(matches!(store.enable(T, "con_missing", "x").await, Err(StoreError::NotFound)));

        let for_client = store.client_connections(T, "timesheets").await.unwrap();
        assert_eq!(names(&for_client), ["fabrikam-ad", "fabrikam-google-apps"]);
        assert!(store.client_connections("fabrikam-public", "timesheets").await.unwrap().is_empty());
        assert_eq!(store.connection_clients(&ad.id, None, 10).await.unwrap(), ["portal", "timesheets"]);
        assert_eq!(store.connection_clients(&ad.id, Some("portal"), 10).await.unwrap(), ["timesheets"]);

        let resolved = store.resolve(T, "timesheets", &ConnectionRef::Name("fabrikam-ad".into())).await.unwrap();
        assert_eq!(resolved.map(|s| s.connection.id), Some(ad.id.clone()));
        assert!(store.resolve(T, "timesheets", &ConnectionRef::Id(other.id.clone())).await.unwrap().is_none());

        let found = store.discover(T, "timesheets", "corp.fabrikam.example").await.unwrap();
        assert_eq!(names(&found), ["fabrikam-ad"]);
        let found = store.discover(T, "timesheets", "fabrikam.example").await.unwrap();
        assert_eq!(names(&found), ["fabrikam-google-apps"]);
        assert!(store.discover(T, "portal", "fabrikam.example").await.unwrap().is_empty());

        assert!(store.disable(T, &ad.id, "timesheets").await.unwrap());
        assert!(!store.disable(T, &ad.id, "timesheets").await.unwrap(), "idempotent");
        assert_eq!(names(&store.client_connections(T, "timesheets").await.unwrap()), ["fabrikam-google-apps"]);

        // Deleting a connection takes its enablement and domains with it.
        let deleted = store.delete(T, &ConnectionRef::Name("fabrikam-google-apps".into())).await.unwrap();
        assert_eq!(deleted.map(|s| s.connection.id), Some(google.id.clone()));
        assert!(store.client_connections(T, "timesheets").await.unwrap().is_empty());
        assert!(store.discover(T, "timesheets", "fabrikam.example").await.unwrap().is_empty());
        assert!(store.delete(T, &ConnectionRef::Id(google.id.clone())).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn updates_are_optimistic_and_reindex_domains() {
    each_backend("updates_are_optimistic_and_reindex_domains", |store| async move {
        let ad = connection("fabrikam-ad", "ad");
        store.create(T, 1, &ad, b"v1").await.unwrap();
        store.enable(T, &ad.id, "c").await.unwrap();
        let mut spec = ad.spec.clone();
        spec.domain_aliases = vec!["new.fabrikam.example".into()];
        let t = store.update(T, &ad.id, ad.update_time, &spec, b"v2").await.unwrap().expect("applies");
        assert!(t > ad.update_time);
        // A writer that read the old version loses and must read again.
        assert!(store.update(T, &ad.id, ad.update_time, &spec, b"v3").await.unwrap().is_none());
        let now = store.get(T, &ConnectionRef::Id(ad.id.clone())).await.unwrap().unwrap();
        assert_eq!(now.sealed, b"v2");
        assert_eq!(now.connection.spec.domain_aliases, ["new.fabrikam.example"]);
        assert!(store.discover(T, "c", "corp.fabrikam.example").await.unwrap().is_empty());
        assert_eq!(names(&store.discover(T, "c", "new.fabrikam.example").await.unwrap()), ["fabrikam-ad"]);
    })
    .await;
}

#[tokio::test]
async fn tenant_events_apply_once_and_block_deleted_clients() {
    each_backend("tenant_events_apply_once_and_block_deleted_clients", |store| async move {
        let ad = connection("fabrikam-ad", "ad");
        let google = connection("google", "google-apps");
        store.create(T, 1, &ad, b"x").await.unwrap();
        store.create(T, 1, &google, b"x").await.unwrap();
        store.create("fabrikam-public", 1, &connection("facebook", "facebook"), b"x").await.unwrap();
        store.enable(T, &ad.id, "timesheets").await.unwrap();
        store.enable(T, &google.id, "timesheets").await.unwrap();
        store.enable(T, &ad.id, "other").await.unwrap();
        assert_eq!(store.tenant_events_cursor().await.unwrap(), 0);

        let left = store.apply_client_deleted(1, T, "timesheets").await.unwrap();
        assert_eq!(names(&left), ["fabrikam-ad", "google"]);
        assert_eq!(store.tenant_events_cursor().await.unwrap(), 1);
        assert!(store.client_connections(T, "timesheets").await.unwrap().is_empty());
        assert_eq!(store.connection_clients(&ad.id, None, 10).await.unwrap(), ["other"]);
        // A deleted client cannot come back through a late EnableClient.
        assert!(matches!(store.enable(T, &ad.id, "timesheets").await, Err(StoreError::ClientDeleted)));
        // Replayed events are no-ops.
        store.enable(T, &ad.id, "late").await.unwrap();
        assert!(store.apply_client_deleted(1, T, "late").await.unwrap().is_empty());
        assert_eq!(store.connection_clients(&ad.id, None, 10).await.unwrap(), ["late", "other"]);

        store.skip_tenant_event(2).await.unwrap();
        // A later tenant of the same name (created at 2) is not the deleted one (created at 1).
        store.create(T, 2, &connection("reborn", "auth0"), b"x").await.unwrap();
        let deleted = store.apply_tenant_deleted(3, T, 1).await.unwrap();
        assert_eq!(names(&deleted), ["fabrikam-ad", "google"]);
        // A create that raced the deletion is refused once it is applied.
        assert!(matches!(store.create(T, 1, &connection("late", "auth0"), b"x").await, Err(StoreError::TenantDeleted)));
        assert!(store.apply_tenant_deleted(3, T, 2).await.unwrap().is_empty(), "replayed: a no-op");
        assert_eq!(names(&store.list(T, "", 0, None, 10).await.unwrap()), ["reborn"]);
        store.apply_tenant_deleted(4, T, 2).await.unwrap();
        assert!(store.list(T, "", 0, None, 10).await.unwrap().is_empty());
        assert!(store.client_connections(T, "other").await.unwrap().is_empty());
        assert_eq!(names(&store.list("fabrikam-public", "", 0, None, 10).await.unwrap()), ["facebook"]);
        assert_eq!(store.tenant_events_cursor().await.unwrap(), 4);
    })
    .await;
}

#[tokio::test]
async fn the_first_master_key_is_the_only_one_accepted() {
    each_backend("the_first_master_key_is_the_only_one_accepted", |store| async move {
        let key = crate::MasterKey::generate().unwrap();
        crate::check_master_key(&store, &key).await.expect("first use records it");
        crate::check_master_key(&store, &key).await.expect("same key again");
        let other = crate::MasterKey::generate().unwrap();
        let err = crate::check_master_key(&store, &other).await.expect_err("another key");
        assert!(matches!(err, crate::MasterKeyError::Mismatch));
        assert!(err.to_string().contains("does not match"));
    })
    .await;
}

/// The login-path queries are index searches, never scans (checked on SQLite's plans; the
/// benchmark shows the same on the figures).
#[tokio::test]
async fn login_path_queries_search_indexes_and_never_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbLocation::SqliteFile(dir.path().join("registry.db"))).await.unwrap();
    let plans = [
        ("ListClientConnections", CLIENT_CONNECTIONS.to_owned()),
        ("ResolveConnection by name", resolve_sql("name")),
        ("ResolveConnection by id", resolve_sql("id")),
        ("DiscoverConnection", DISCOVER.to_owned()),
    ];
    for (what, sql) in plans {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .bind("t")
            .bind("x")
            .bind("c")
            .fetch_all(store.db.pool())
            .await
            .unwrap();
        let details: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail").unwrap()).collect();
        eprintln!("{what}: {details:?}");
        assert!(!details.is_empty(), "{what}: no plan");
        assert!(details.iter().all(|d| !d.starts_with("SCAN")), "{what} scans: {details:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn every_change_is_logged_in_order_with_its_transaction() {
    each_backend("every_change_is_logged_in_order_with_its_transaction", |store| async move {
        let start = store.last_change_sequence().await.unwrap();
        let ad = connection("fabrikam-ad", "ad");
        let google = connection("google", "google-apps");
        store.create(T, 1, &ad, b"x").await.unwrap();
        store.create(T, 1, &google, b"x").await.unwrap();
        // Refused writes log nothing.
        assert!(store.create(T, 1, &connection("fabrikam-ad", "auth0"), b"x").await.is_err());
        assert!(store.enable(T, &ad.id, "timesheets").await.unwrap());
        assert!(!store.enable(T, &ad.id, "timesheets").await.unwrap(), "already enabled: nothing logged");
        let mut spec = ad.spec.clone();
        spec.domain_aliases = vec!["new.fabrikam.example".into()];
        store.update(T, &ad.id, ad.update_time, &spec, b"v2").await.unwrap().expect("applies");
        assert!(store.update(T, &ad.id, ad.update_time, &spec, b"v3").await.unwrap().is_none(), "lost: nothing logged");
        assert!(store.disable(T, &ad.id, "timesheets").await.unwrap());
        assert!(!store.disable(T, &ad.id, "timesheets").await.unwrap(), "not enabled: nothing logged");
        store.enable(T, &google.id, "portal").await.unwrap();
        store.apply_client_deleted(1, T, "portal").await.unwrap();
        store.delete(T, &ConnectionRef::Id(ad.id.clone())).await.unwrap().expect("deleted");
        store.apply_tenant_deleted(2, T, 1).await.unwrap();

        let log = store.changes_after(start, 100).await.unwrap();
        let seen: Vec<(ChangeKind, &str, &str)> =
            log.iter().map(|c| (c.kind, c.connection.spec.name.as_str(), c.client_id.as_str())).collect();
        assert_eq!(
            seen,
            [
                (ChangeKind::Created, "fabrikam-ad", ""),
                (ChangeKind::Created, "google", ""),
                (ChangeKind::ClientEnabled, "fabrikam-ad", "timesheets"),
                (ChangeKind::Updated, "fabrikam-ad", ""),
                (ChangeKind::ClientDisabled, "fabrikam-ad", "timesheets"),
                (ChangeKind::ClientEnabled, "google", "portal"),
                (ChangeKind::ClientDisabled, "google", "portal"),
                (ChangeKind::Deleted, "fabrikam-ad", ""),
                (ChangeKind::Deleted, "google", ""),
            ]
        );
        assert!(log.windows(2).all(|w| w[0].sequence < w[1].sequence), "in sequence order");
        assert_eq!(log[3].connection.spec.domain_aliases, ["new.fabrikam.example"], "the update's new spec");
        assert!(log.iter().all(|c| c.tenant == T));
        assert_eq!(store.last_change_sequence().await.unwrap(), log[8].sequence);
        assert_eq!(store.last_own_change(), log[8].sequence);
        // Paging and pruning.
        assert_eq!(store.changes_after(log[6].sequence, 1).await.unwrap()[0].sequence, log[7].sequence);
        assert_eq!(store.prune_changes(log[8].time + 1).await.unwrap(), 9);
        assert!(store.changes_after(start, 100).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn changes_made_by_a_caller_are_audited_in_their_transaction() {
    each_backend("changes_made_by_a_caller_are_audited_in_their_transaction", |store| async move {
        use postern_proto::tenant::v1 as tpb;
        let admin = store.acting(Actor {
            actor: tpb::AuditActor { r#type: tpb::AuditActorType::Admin as i32, id: String::new() },
            source_ip: "192.0.2.1".into(),
            cause: None,
        });
        let c = connection("fabrikam-ad", "ad");
        admin.create(T, 0, &c, b"sealed").await.unwrap();
        assert!(
            matches!(admin.create(T, 0, &c, b"sealed").await, Err(StoreError::AlreadyExists)),
            "refused: not audited"
        );
        assert!(admin.enable(T, &c.id, "client-1").await.unwrap());
        assert!(
            !admin.enable(T, &c.id, "client-1").await.unwrap(),
            "enabled already: nothing changed, nothing audited"
        );
        assert!(admin.disable(T, &c.id, "client-1").await.unwrap());
        let other = connection("fabrikam-google", "google-apps");
        // The registry's own changes (no caller) are not audited here.
        store.create(T, 0, &other, b"sealed").await.unwrap();
        admin.delete(T, &ConnectionRef::Name("fabrikam-ad".into())).await.unwrap().expect("deleted");

        let events: Vec<tpb::AuditEvent> =
            store.outbox().pending(10).await.unwrap().into_iter().map(|(_, e)| e).collect();
        let kinds: Vec<_> = events.iter().map(|e| tpb::AuditEventType::try_from(e.r#type).unwrap()).collect();
        use tpb::AuditEventType as K;
        assert_eq!(kinds, [K::ConnectionCreated, K::ConnectionEnabled, K::ConnectionDisabled, K::ConnectionDeleted]);
        assert!(events.iter().all(|e| e.connection == "fabrikam-ad" && e.tenant == T && e.source_ip == "192.0.2.1"));
        assert_eq!(events[1].client_id, "client-1");
        assert_eq!(events[0].details.get("strategy").map(String::as_str), Some("ad"));
        // Never the connection's secrets: its id and strategy only.
        assert!(events.iter().all(|e| e.details.keys().all(|k| k == "connection_id" || k == "strategy")));
    })
    .await;
}

#[tokio::test]
async fn connections_removed_with_a_deleted_client_are_audited_as_the_registry() {
    each_backend("connections_removed_with_a_deleted_client_are_audited_as_the_registry", |store| async move {
        use postern_proto::tenant::v1 as tpb;
        let ad = connection("fabrikam-ad", "ad");
        let google = connection("google", "google-apps");
        store.create(T, 1, &ad, b"x").await.unwrap();
        store.create(T, 1, &google, b"x").await.unwrap();
        store.enable(T, &ad.id, "timesheets").await.unwrap();
        store.enable(T, &google.id, "portal").await.unwrap();
        // Changes without a caller (as above) write nothing to the outbox.
        assert!(store.outbox().pending(10).await.unwrap().is_empty());

        store.apply_client_deleted(1, T, "timesheets").await.unwrap();
        // Applied again (a replayed event): nothing changes, nothing more is audited.
        store.apply_client_deleted(1, T, "timesheets").await.unwrap();
        let events: Vec<tpb::AuditEvent> =
            store.outbox().pending(10).await.unwrap().into_iter().map(|(_, e)| e).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(tpb::AuditEventType::try_from(e.r#type), Ok(tpb::AuditEventType::ConnectionDisabled));
        assert_eq!((e.tenant.as_str(), e.connection.as_str(), e.client_id.as_str()), (T, "fabrikam-ad", "timesheets"));
        let actor = e.actor.clone().unwrap();
        assert_eq!((actor.r#type, actor.id.as_str()), (tpb::AuditActorType::System as i32, "registry"));
        assert_eq!(e.details.get("cause").map(String::as_str), Some("client_deleted"));
        assert_eq!(e.source_ip, "");
    })
    .await;
}

#[tokio::test]
async fn concurrent_records_share_commits_and_each_is_answered_once_committed() {
    each_backend("concurrent_records_share_commits_and_each_is_answered_once_committed", |store| async move {
        use postern_proto::tenant::v1 as tpb;
        const CALLERS: usize = 64;
        let outbox = store.outbox().clone();
        let before = outbox.group_commits();
        let calls: Vec<_> = (0..CALLERS)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let mut e =
                        postern_common::audit::event(T, tpb::AuditEventType::TokenExchange, tpb::AuditOutcome::Success);
                    e.client_id = format!("client-{i}");
                    outbox.record(&[e.clone()]).await.map(|()| e.id)
                })
            })
            .collect();
        let mut ids = Vec::new();
        for call in calls {
            ids.push(call.await.unwrap().expect("recorded"));
        }
        // Every caller was answered only once its event was committed: all are there now.
        let pending: Vec<String> = store.outbox().pending(1000).await.unwrap().into_iter().map(|(_, e)| e.id).collect();
        for id in &ids {
            assert!(pending.contains(id), "an answered event is not in the outbox");
        }
        assert_eq!(pending.len(), CALLERS);
        let commits = outbox.group_commits() - before;
        assert!(commits < CALLERS as u64 / 2, "{CALLERS} concurrent records took {commits} commits");
    })
    .await;
}
