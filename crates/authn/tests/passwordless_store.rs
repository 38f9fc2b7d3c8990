//! Passwordless storage (one live code per recipient, attempts, single use, rate-limit
//! windows), the same tests on SQLite and PostgreSQL (`POSTERN_TEST_POSTGRES_URL`; skipped
//! with a reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`). Time is given to
//! every call, so expiry needs no sleep.

use postern_authn::store::Store;
use postern_authn::store::passwordless::{NewCode, StoredLink};
use postern_common::db::DbLocation;
use postern_common::testing::TestDatabase;

const T: &str = "fabrikam";
const C: &str = "con_email";
const SEC: i64 = 1_000_000;
const T0: i64 = 1_800_000_000 * SEC;

enum Backend {
    Sqlite { _dir: tempfile::TempDir },
    Postgres(TestDatabase),
}

async fn stores(test: &str) -> Vec<(Store, Backend)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&DbLocation::SqliteFile(dir.path().join("authn.db"))).await.unwrap();
    let mut out = vec![(sqlite, Backend::Sqlite { _dir: dir })];
    if let Some(base) = postern_common::testing::postgres(test) {
        let db = TestDatabase::create(&base).await.expect("a fresh database");
        let store = Store::open(&DbLocation::Postgres {
            url: db.url.clone(),
            schema: "authn".into(),
            pool_size: postern_common::db::DEFAULT_POOL_SIZE,
            min_open: postern_common::db::MIN_OPEN_CONNECTIONS,
        })
        .await
        .unwrap();
        out.push((store, Backend::Postgres(db)));
    }
    out
}

async fn cleanup(store: Store, backend: Backend) {
    store.close().await;
    if let Backend::Postgres(db) = backend {
        db.drop_db().await.expect("drop the database");
    }
}

fn code<'a>(recipient: &'a str, hash: &'a str, link: Option<&'a str>) -> NewCode<'a> {
    NewCode {
        tenant: T,
        connection_id: C,
        recipient,
        client_id: "client-1",
        code_hash: hash,
        link_hash: link,
        transaction_hash: link.map(|_| "tx-hash"),
        csrf_hash: link.map(|_| "csrf-hash"),
        max_attempts: 3,
        now: T0,
        expire_time: T0 + 180 * SEC,
    }
}

#[tokio::test]
async fn only_a_delivered_latest_code_counts_and_attempts_run_out() {
    for (store, backend) in stores("only_a_delivered_latest_code_counts_and_attempts_run_out").await {
        let r = "alice@example.com";
        store.put_code(&code(r, "h1", None)).await.unwrap();
        assert_eq!(store.attempt_code(T, C, r, T0).await.unwrap(), None, "not delivered yet");
        assert!(store.code_delivered(T, C, r, "h1").await.unwrap());
        // A resend replaces it: the first one is gone, the new one waits for its delivery.
        store.put_code(&code(r, "h2", None)).await.unwrap();
        assert!(!store.code_delivered(T, C, r, "h1").await.unwrap(), "the replaced code stays out");
        assert!(store.code_delivered(T, C, r, "h2").await.unwrap());
        for _ in 0..3 {
            let a = store.attempt_code(T, C, r, T0 + SEC).await.unwrap().expect("an attempt left");
            assert_eq!((a.code_hash.as_str(), a.client_id.as_str()), ("h2", "client-1"));
        }
        assert_eq!(store.attempt_code(T, C, r, T0 + SEC).await.unwrap(), None, "the 4th attempt");
        assert!(store.use_code(T, C, r, "h2", T0 + SEC).await.unwrap(), "used even after its attempts");
        assert!(!store.use_code(T, C, r, "h2", T0 + SEC).await.unwrap(), "used once");

        // Expiry, and a failed delivery forgets the code.
        store.put_code(&code("bob@example.com", "h3", None)).await.unwrap();
        store.code_delivered(T, C, "bob@example.com", "h3").await.unwrap();
        assert_eq!(store.attempt_code(T, C, "bob@example.com", T0 + 180 * SEC).await.unwrap(), None, "expired");
        assert!(!store.use_code(T, C, "bob@example.com", "h3", T0 + 180 * SEC).await.unwrap());
        store.put_code(&code("carol@example.com", "h4", None)).await.unwrap();
        store.drop_code(T, C, "carol@example.com", "h4").await.unwrap();
        assert!(!store.code_delivered(T, C, "carol@example.com", "h4").await.unwrap());
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn concurrent_attempts_get_at_most_the_allowance() {
    for (store, backend) in stores("concurrent_attempts_get_at_most_the_allowance").await {
        let r = "+14155550100";
        store.put_code(&code(r, "h", None)).await.unwrap();
        store.code_delivered(T, C, r, "h").await.unwrap();
        let tries = (0..20).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.attempt_code(T, C, r, T0).await.unwrap().is_some() })
        });
        let got = futures_count(tries).await;
        assert_eq!(got, 3, "3 attempts, whatever the concurrency");
        let uses = (0..20).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_code(T, C, r, "h", T0).await.unwrap() })
        });
        assert_eq!(futures_count(uses).await, 1, "one use");
        cleanup(store, backend).await;
    }
}

async fn futures_count(tasks: impl Iterator<Item = tokio::task::JoinHandle<bool>>) -> usize {
    let mut n = 0;
    for t in tasks.collect::<Vec<_>>() {
        n += usize::from(t.await.unwrap());
    }
    n
}

#[tokio::test]
async fn magic_links_are_found_by_token_until_used_or_replaced() {
    for (store, backend) in stores("magic_links_are_found_by_token_until_used_or_replaced").await {
        let r = "dana@example.com";
        store.put_code(&code(r, "h1", Some("link-1"))).await.unwrap();
        assert_eq!(store.live_link(T, "link-1", T0).await.unwrap(), None, "not delivered yet");
        store.code_delivered(T, C, r, "h1").await.unwrap();
        let link = store.live_link(T, "link-1", T0).await.unwrap().expect("live");
        assert_eq!(
            link,
            StoredLink {
                connection_id: C.into(),
                recipient: r.into(),
                client_id: "client-1".into(),
                code_hash: "h1".into(),
                transaction_hash: "tx-hash".into(),
                csrf_hash: "csrf-hash".into(),
            }
        );
        assert_eq!(store.live_link("contoso", "link-1", T0).await.unwrap(), None, "another tenant's");
        assert_eq!(store.live_link(T, "link-1", T0 + 180 * SEC).await.unwrap(), None, "expired");
        store.put_code(&code(r, "h2", Some("link-2"))).await.unwrap();
        store.code_delivered(T, C, r, "h2").await.unwrap();
        assert_eq!(store.live_link(T, "link-1", T0).await.unwrap(), None, "replaced");
        assert!(store.use_code(T, C, r, "h2", T0).await.unwrap());
        assert_eq!(store.live_link(T, "link-2", T0).await.unwrap(), None, "used");
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn rate_windows_count_and_reset() {
    for (store, backend) in stores("rate_windows_count_and_reset").await {
        let window = 600 * SEC;
        for n in 1..=6 {
            assert_eq!(store.count_in_window(T, "recipient:x", T0 + n, window).await.unwrap(), n as u32);
        }
        assert_eq!(store.count_in_window(T, "recipient:y", T0, window).await.unwrap(), 1, "per bucket");
        assert_eq!(store.count_in_window("contoso", "recipient:x", T0, window).await.unwrap(), 1, "per tenant");
        assert_eq!(store.count_in_window(T, "recipient:x", T0 + 1 + window, window).await.unwrap(), 1, "a new window");
        cleanup(store, backend).await;
    }
}
