//! Redirect logins' storage (upstream login transactions, upstream tokens on an identity),
//! the same tests on SQLite and PostgreSQL (`POSTERN_TEST_POSTGRES_URL`; skipped with a
//! reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use postern_authn::domain::{Identity, Profile, ProfileSync};
use postern_authn::store::oauth::secret_digest;
use postern_authn::store::upstream::NewUpstreamTransaction;
use postern_authn::store::{NewUser, Store};
use postern_common::db::DbLocation;
use postern_common::testing::TestDatabase;

const T: &str = "fabrikam";
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
        let store = Store::open(&DbLocation::Postgres { url: db.url.clone(), schema: "authn".into() }).await.unwrap();
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

fn transaction<'a>(state_hash: &'a str, client: &'a str) -> NewUpstreamTransaction<'a> {
    NewUpstreamTransaction {
        tenant: T,
        state_hash,
        binding_hash: "b",
        client_id: client,
        connection: "fabrikam-op",
        request: "{}",
        sealed: "sealed",
        now: T0,
        expire_time: T0 + 600 * SEC,
    }
}

#[tokio::test]
async fn upstream_transactions_are_taken_once_even_concurrently() {
    for (store, backend) in stores("upstream_transactions_are_taken_once_even_concurrently").await {
        let state = secret_digest("state-1");
        store.create_upstream_transaction(&transaction(&state, "app")).await.unwrap();
        let (a, b) =
            tokio::join!(store.take_upstream_transaction(T, &state), store.take_upstream_transaction(T, &state));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_some() != b.is_some(), "exactly one of two concurrent takes gets it");
        let taken = a.or(b).expect("taken");
        assert_eq!((taken.connection.as_str(), taken.client_id.as_str()), ("fabrikam-op", "app"));
        assert_eq!(taken.expire_time, T0 + 600 * SEC, "the caller judges expiry");
        assert!(store.take_upstream_transaction(T, &state).await.unwrap().is_none(), "used up");
        assert!(store.take_upstream_transaction("other", &state).await.unwrap().is_none());

        // Pruned once expired; forgotten with their client.
        let (s2, s3) = (secret_digest("state-2"), secret_digest("state-3"));
        store.create_upstream_transaction(&transaction(&s2, "app")).await.unwrap();
        store.create_upstream_transaction(&transaction(&s3, "gone")).await.unwrap();
        store.delete_client_grants(T, "gone").await.unwrap();
        assert!(store.take_upstream_transaction(T, &s3).await.unwrap().is_none(), "deleted with its client");
        store.prune_oauth(T0 + 601 * SEC).await.unwrap();
        assert!(store.take_upstream_transaction(T, &s2).await.unwrap().is_none(), "pruned after expiry");
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn upstream_tokens_are_kept_on_the_identity() {
    for (store, backend) in stores("upstream_tokens_are_kept_on_the_identity").await {
        let identity = Identity {
            connection_id: "con_op".into(),
            connection: "fabrikam-op".into(),
            strategy: "oidc".into(),
            source_id: "fabrikam-op|alice".into(),
            is_social: false,
            login_email: "alice@example.com".into(),
            login_username: String::new(),
            profile_data: serde_json::json!({}),
            profile_sync: ProfileSync::OnEachLogin,
            external: true,
            password_hash: None,
        };
        let new = NewUser {
            user_id: "oidc|fabrikam-op|alice".into(),
            profile: Profile { email: "alice@example.com".into(), ..Profile::default() },
            user_metadata: serde_json::Map::new(),
            app_metadata: serde_json::Map::new(),
        };
        store.create_user(T, &new, &identity, None).await.unwrap();
        let id = ("con_op", "fabrikam-op|alice");
        assert_eq!(store.upstream_tokens(T, id.0, id.1).await.unwrap(), None);
        store.set_upstream_tokens(T, id.0, id.1, Some("sealed-tokens")).await.unwrap();
        assert_eq!(store.upstream_tokens(T, id.0, id.1).await.unwrap().as_deref(), Some("sealed-tokens"));
        store.set_upstream_tokens(T, id.0, id.1, None).await.unwrap();
        assert_eq!(store.upstream_tokens(T, id.0, id.1).await.unwrap(), None);
        cleanup(store, backend).await;
    }
}
