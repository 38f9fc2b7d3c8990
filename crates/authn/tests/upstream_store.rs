//! Redirect logins' storage (upstream login transactions, upstream tokens on an identity),
//! the same tests on SQLite and PostgreSQL (`POSTERN_TEST_POSTGRES_URL`; skipped with a
//! reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use postern_authn::domain::{Asserted, Identity, Profile, ProfileSync, UserPatch};
use postern_authn::store::oauth::{LoginGrant, Redeemed, UsesUp, secret_digest};
use postern_authn::store::upstream::NewUpstreamTransaction;
use postern_authn::store::{LoginUpdate, NewUser, Recorded, Store, StoreError};
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

fn identity(name: &str) -> Identity {
    Identity {
        connection_id: "con_op".into(),
        connection: "fabrikam-op".into(),
        strategy: "oidc".into(),
        source_id: format!("fabrikam-op|{name}"),
        is_social: false,
        login_email: format!("{name}@example.com"),
        login_username: String::new(),
        profile_data: serde_json::json!({}),
        profile_sync: ProfileSync::OnEachLogin,
        external: true,
        password_hash: None,
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        user_id: format!("oidc|fabrikam-op|{name}"),
        profile: Profile { email: format!("{name}@example.com"), ..Profile::default() },
        user_metadata: serde_json::Map::new(),
        app_metadata: serde_json::Map::new(),
    }
}

/// A redirect login's grant: session `session`, code `code`, using up `state`'s transaction.
fn grant<'a>(state_hash: &'a str, session: &'a str, code: &'a str) -> LoginGrant<'a> {
    LoginGrant {
        uses: Some(UsesUp::Upstream(state_hash)),
        upstream_tokens: Some("sealed-tokens"),
        connection: "fabrikam-op",
        upstream_session: "{\"name_id\":\"alice\"}",
        now: T0,
        session_hash: session,
        session_idle_expire: T0 + 100 * SEC,
        session_absolute_expire: T0 + 200 * SEC,
        code_hash: code,
        code_expire: T0 + 60 * SEC,
        client_id: "app",
        redirect_uri: "https://app.example.com/callback",
        scope: "openid email",
        audience: "",
        nonce: "app-nonce",
        code_challenge: "",
    }
}

/// A returning user's login (profile data synced) with `grant`.
fn login<'a>(data: &'a serde_json::Value, grant: &'a LoginGrant<'a>) -> LoginUpdate<'a> {
    LoginUpdate {
        ip: "192.0.2.2",
        profile: None,
        asserted: Asserted::Profile,
        profile_data: Some(data),
        profile_sync: ProfileSync::OnEachLogin,
        external: true,
        password_hash: None,
        clear_failures: None,
        identity_current: false,
        identities: None,
        grant: Some(grant),
    }
}

#[tokio::test]
async fn a_redirect_login_is_stored_with_its_session_and_code_at_once_or_not_at_all() {
    for (store, backend) in stores("a_redirect_login_is_stored_with_its_session_and_code_at_once_or_not_at_all").await {
        let digests: Vec<String> = (0..8).map(|i| secret_digest(&format!("secret-{i}"))).collect();
        let d = |i: usize| digests[i].as_str();
        let alive = |s: &str| {
            let store = store.clone();
            let s = s.to_owned();
            async move { store.touch_session(T, &s, T0 + SEC, 100 * SEC).await.unwrap() }
        };

        // A new user: stored with its session, its code and its upstream tokens, and the
        // upstream transaction used up, in one write.
        let state = secret_digest("state-1");
        store.create_upstream_transaction(&transaction(&state, "app")).await.unwrap();
        let first = grant(&state, d(0), d(1));
        let alice = store
            .create_user_with_grant(T, &new_user("alice"), &identity("alice"), Some("192.0.2.1"), Some(&first))
            .await
            .unwrap();
        assert!(store.upstream_transaction(T, &state).await.unwrap().is_none(), "used up");
        let session = alive(d(0)).await.expect("the login's session");
        assert_eq!((session.user_id.as_str(), session.auth_time), (alice.user_id.as_str(), T0));
        let Redeemed::Granted(code) = store.redeem_code(T, d(1), "fam-1", T0 + SEC).await.unwrap() else {
            panic!("the login's code")
        };
        assert_eq!((code.user_id.as_str(), code.session_hash.as_str()), (alice.user_id.as_str(), d(0)));
        assert_eq!((code.client_id.as_str(), code.nonce.as_str(), code.auth_time), ("app", "app-nonce", T0));
        let tokens = store.upstream_tokens(T, "con_op", "fabrikam-op|alice").await.unwrap();
        assert_eq!(tokens.as_deref(), Some("sealed-tokens"));
        // The session knows its connection: a federated logout ends the upstream's too.
        let ended = store.end_session(T, d(0)).await.unwrap().expect("ended");
        assert_eq!(
            (ended.connection.as_str(), ended.upstream_session.as_str()),
            ("fabrikam-op", "{\"name_id\":\"alice\"}")
        );

        // The same state again (a second callback): nothing of it is written.
        let again = LoginGrant { upstream_tokens: Some("sealed-tokens-refused"), ..grant(&state, d(2), d(3)) };
        let refused =
            store.create_user_with_grant(T, &new_user("bob"), &identity("bob"), Some("192.0.2.1"), Some(&again)).await;
        assert!(matches!(refused, Err(StoreError::Used)), "{refused:?}");
        assert!(store.get_user(T, "oidc|fabrikam-op|bob").await.unwrap().is_none(), "no user");
        let data = serde_json::json!({"name": "Alice"});
        let refused = store.record_login(T, &alice.user_id, "con_op", "fabrikam-op|alice", &login(&data, &again)).await;
        assert!(matches!(refused, Err(StoreError::Used)), "{refused:?}");
        let kept = store.get_user(T, &alice.user_id).await.unwrap().expect("alice");
        assert_eq!(kept.logins_count, 1, "the login is not counted");
        assert_eq!(kept.identities[0].profile_data, serde_json::json!({}), "nor its profile kept");
        assert!(alive(d(2)).await.is_none(), "no session");
        assert_eq!(store.redeem_code(T, d(3), "fam-2", T0 + SEC).await.unwrap(), Redeemed::Unknown, "no code");
        let tokens = store.upstream_tokens(T, "con_op", "fabrikam-op|alice").await.unwrap();
        assert_eq!(tokens.as_deref(), Some("sealed-tokens"), "nor its upstream tokens");

        // Two callbacks of one login at once: exactly one is stored.
        let state = secret_digest("state-2");
        store.create_upstream_transaction(&transaction(&state, "app")).await.unwrap();
        // Each returning login keeps the upstream's new tokens on the identity.
        let (ga, gb) = (
            LoginGrant { upstream_tokens: Some("sealed-tokens-2"), ..grant(&state, d(4), d(5)) },
            LoginGrant { upstream_tokens: Some("sealed-tokens-2"), ..grant(&state, d(6), d(7)) },
        );
        let (la, lb) = (login(&data, &ga), login(&data, &gb));
        let (a, b) = tokio::join!(
            store.record_login(T, &alice.user_id, "con_op", "fabrikam-op|alice", &la),
            store.record_login(T, &alice.user_id, "con_op", "fabrikam-op|alice", &lb),
        );
        let (a, b) = (a.map(|r| matches!(r, Recorded::Login(_))), b.map(|r| matches!(r, Recorded::Login(_))));
        assert!(
            matches!((&a, &b), (Ok(true), Err(StoreError::Used)) | (Err(StoreError::Used), Ok(true))),
            "exactly one of two concurrent logins with one state: {a:?} {b:?}"
        );
        assert_eq!(store.get_user(T, &alice.user_id).await.unwrap().expect("alice").logins_count, 2);
        assert!(alive(d(4)).await.is_some() != alive(d(6)).await.is_some(), "one session");
        let tokens = store.upstream_tokens(T, "con_op", "fabrikam-op|alice").await.unwrap();
        assert_eq!(tokens.as_deref(), Some("sealed-tokens-2"), "the returning login's tokens replace the first");

        // A blocked user: nothing recorded, no grant; the transaction is left for the caller
        // to use up with its refusal.
        let patch = UserPatch { blocked: Some(true), ..UserPatch::default() };
        store.update_user(T, &alice.user_id, &patch).await.unwrap().expect("blocked");
        let state = secret_digest("state-3");
        store.create_upstream_transaction(&transaction(&state, "app")).await.unwrap();
        let blocked = grant(&state, d(2), d(3));
        let r = store.record_login(T, &alice.user_id, "con_op", "fabrikam-op|alice", &login(&data, &blocked)).await;
        assert!(matches!(r, Ok(Recorded::Blocked)), "{r:?}");
        assert!(alive(d(2)).await.is_none(), "no session for a blocked user");
        assert!(store.upstream_transaction(T, &state).await.unwrap().is_some(), "left in place");
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
