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
