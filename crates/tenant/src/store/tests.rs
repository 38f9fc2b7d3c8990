//! The event log's store tests, run on SQLite and on PostgreSQL (`POSTERN_TEST_POSTGRES_URL`;
//! skipped with a printed reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use postern_common::db::DbLocation;
use sqlx::Connection as _;

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

    let base = match std::env::var("POSTERN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("POSTERN_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
                panic!("{test}: POSTERN_TEST_POSTGRES_URL is not set, and POSTERN_REQUIRE_PEERS=1 requires it");
            }
            eprintln!("SKIPPED {test} on PostgreSQL: POSTERN_TEST_POSTGRES_URL is not set");
            return;
        }
    };
    let name = format!("postern_test_{}", postern_common::ids::random_alphanumeric(16).to_lowercase());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((head, _)) if head.contains("://") && !head.ends_with('/') => format!("{head}/{name}"),
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    };
    let store = Store::open(&DbLocation::Postgres { url, schema: "tenant".into() }).await.expect("PostgreSQL");
    body(store.clone()).await;
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
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
        store.create_tenant("fabrikam-internal", "Fabrikam-Internal").await.unwrap();
        store.create_tenant("fabrikam-public", "Fabrikam-Public").await.unwrap();
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
