//! The OpenID provider's storage (login transactions, codes, SSO sessions, refresh tokens),
//! the same tests on SQLite and PostgreSQL (`POSTERN_TEST_POSTGRES_URL`; skipped with a
//! reason when unset, a failure under `POSTERN_REQUIRE_PEERS=1`). Time is given to every
//! call, so expiry needs no sleep.

use postern_authn::domain::{Identity, Profile, ProfileSync};
use postern_authn::store::oauth::{
    CodeGrant, LoginGrant, NewTransaction, Redeemed, RefreshGrant, Revoked, Rotated, Session, UsesUp, secret_digest,
};
use postern_authn::store::{NewUser, Store, StoreError};
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

fn code_grant(user: &str, client: &str) -> CodeGrant {
    CodeGrant {
        client_id: client.into(),
        redirect_uri: "https://app.example.com/callback".into(),
        user_id: user.into(),
        scope: "openid offline_access".into(),
        audience: String::new(),
        nonce: "n-1".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        session_hash: secret_digest("session"),
        auth_time: T0,
    }
}

fn refresh_grant(family: &str, user: &str, client: &str) -> RefreshGrant {
    RefreshGrant {
        family_id: family.into(),
        client_id: client.into(),
        user_id: user.into(),
        scope: "openid offline_access".into(),
        audience: String::new(),
        nonce: String::new(),
        auth_time: T0,
        session_hash: secret_digest("session"),
        family_expire: T0 + 30 * 86_400 * SEC,
    }
}

async fn create_user(store: &Store, id: &str) {
    let identity = Identity {
        connection_id: "con_db".into(),
        connection: "db".into(),
        strategy: "auth0".into(),
        source_id: id.into(),
        is_social: false,
        login_email: format!("{id}@example.com"),
        login_username: String::new(),
        profile_data: serde_json::json!({}),
        profile_sync: ProfileSync::OnEachLogin,
        external: false,
        password_hash: Some("h".into()),
    };
    let new = NewUser {
        user_id: format!("auth0|{id}"),
        profile: Profile { email: format!("{id}@example.com"), ..Profile::default() },
        user_metadata: serde_json::Map::new(),
        app_metadata: serde_json::Map::new(),
    };
    store.create_user(T, &new, &identity, None).await.unwrap();
}

#[test]
fn digests_are_hex_sha256() {
    assert_eq!(secret_digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[tokio::test]
async fn login_transactions_expire_and_are_used_once() {
    for (store, backend) in stores("login_transactions_expire_and_are_used_once").await {
        let id = secret_digest("tx-1");
        let tx = NewTransaction {
            tenant: T,
            id_hash: &id,
            csrf_hash: &secret_digest("csrf"),
            client_id: "c1",
            request: r#"{"state":"s"}"#,
            now: T0,
            expire_time: T0 + 600 * SEC,
        };
        store.create_transaction(&tx).await.unwrap();
        let found = store.transaction(T, &id, T0 + SEC).await.unwrap().expect("live");
        assert_eq!(found.client_id, "c1");
        assert_eq!(found.csrf_hash, secret_digest("csrf"));
        assert_eq!(found.request, r#"{"state":"s"}"#);
        // Another tenant's namesake sees nothing; expired means gone.
        assert_eq!(store.transaction("other", &id, T0 + SEC).await.unwrap(), None);
        assert_eq!(store.transaction(T, &id, T0 + 600 * SEC).await.unwrap(), None);
        // A login's grant uses the transaction up in its write: not once expired, and once.
        create_user(&store, "u1").await;
        let grant = |now: i64, n: &'static str| LoginGrant {
            uses: Some(UsesUp::Page(&id)),
            upstream_tokens: None,
            connection: "",
            upstream_session: "",
            now,
            session_hash: n,
            session_idle_expire: now + 100 * SEC,
            session_absolute_expire: now + 200 * SEC,
            code_hash: n,
            code_expire: now + 60 * SEC,
            client_id: "c1",
            redirect_uri: "https://app.example.com/callback",
            scope: "openid",
            audience: "",
            nonce: "",
            code_challenge: "",
        };
        let refused = store.create_login_grant(T, "auth0|u1", &grant(T0 + 601 * SEC, "late")).await;
        assert!(matches!(refused, Err(StoreError::Used)), "expired cannot be used: {refused:?}");
        assert_eq!(store.peek_code(T, "late", T0 + 601 * SEC).await.unwrap(), None, "nothing written");
        store.create_login_grant(T, "auth0|u1", &grant(T0 + 2 * SEC, "first")).await.unwrap();
        assert!(store.peek_code(T, "first", T0 + 3 * SEC).await.unwrap().is_some());
        let again = store.create_login_grant(T, "auth0|u1", &grant(T0 + 3 * SEC, "again")).await;
        assert!(matches!(again, Err(StoreError::Used)), "single use: {again:?}");
        assert_eq!(store.touch_session(T, "again", T0 + 3 * SEC, 100 * SEC).await.unwrap(), None, "nothing written");
        assert_eq!(store.peek_code(T, "again", T0 + 3 * SEC).await.unwrap(), None, "nothing written");
        assert_eq!(store.transaction(T, &id, T0 + 3 * SEC).await.unwrap(), None);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn codes_are_single_use_and_a_replay_revokes_their_refresh_tokens() {
    for (store, backend) in stores("codes_are_single_use_and_a_replay_revokes_their_refresh_tokens").await {
        let code = secret_digest("code-1");
        let grant = code_grant("auth0|u1", "c1");
        store.create_code(T, &code, &grant, T0, T0 + 60 * SEC).await.unwrap();
        assert_eq!(store.redeem_code("other", &code, "fam-x", T0).await.unwrap(), Redeemed::Unknown);
        assert_eq!(store.redeem_code(T, &code, "fam-1", T0 + SEC).await.unwrap(), Redeemed::Granted(grant.clone()));
        // The exchange issued a refresh token of family fam-1; another family stays.
        let rt = secret_digest("rt-1");
        store
            .create_refresh_token(T, &rt, &refresh_grant("fam-1", "auth0|u1", "c1"), T0, T0 + 86_400 * SEC)
            .await
            .unwrap();
        let other = secret_digest("rt-other");
        store
            .create_refresh_token(T, &other, &refresh_grant("fam-2", "auth0|u1", "c1"), T0, T0 + 86_400 * SEC)
            .await
            .unwrap();
        assert_eq!(
            store.redeem_code(T, &code, "fam-3", T0 + 2 * SEC).await.unwrap(),
            Redeemed::Replayed { user_id: "auth0|u1".into() }
        );
        assert_eq!(
            store.rotate_refresh_token(T, &rt, &secret_digest("rt-1b"), T0 + 3 * SEC, 86_400 * SEC).await.unwrap(),
            Rotated::Unknown,
            "the replay revoked the code's refresh token"
        );
        assert!(matches!(
            store.rotate_refresh_token(T, &other, &secret_digest("rt-2b"), T0 + 3 * SEC, 86_400 * SEC).await.unwrap(),
            Rotated::Rotated(_)
        ));
        // A code expires after its lifetime, unused.
        let late = secret_digest("code-2");
        store.create_code(T, &late, &grant, T0, T0 + 60 * SEC).await.unwrap();
        assert_eq!(store.redeem_code(T, &late, "fam-4", T0 + 60 * SEC).await.unwrap(), Redeemed::Unknown);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn a_code_is_read_then_used_up_once_with_its_refresh_token_and_audit_event() {
    for (store, backend) in stores("a_code_is_read_then_used_up_once_with_its_refresh_token_and_audit_event").await {
        let code = secret_digest("code-1");
        let grant = code_grant("auth0|u1", "c1");
        store.create_code(T, &code, &grant, T0, T0 + 60 * SEC).await.unwrap();
        // Reading it changes nothing: it can be read again, and is still unused.
        assert_eq!(store.peek_code(T, &code, T0 + SEC).await.unwrap(), Some(grant.clone()));
        assert_eq!(store.peek_code(T, &code, T0 + SEC).await.unwrap(), Some(grant.clone()));
        assert_eq!(store.peek_code("other", &code, T0 + SEC).await.unwrap(), None, "another tenant's");
        assert_eq!(store.peek_code(T, &code, T0 + 60 * SEC).await.unwrap(), None, "expired");
        // Read with its user: none while the user does not exist, the user with its identity
        // once it does; nothing for a code that is not live.
        let (read, user) = store.peek_code_with_user(T, &code, T0 + SEC).await.unwrap().expect("live");
        assert_eq!((read, user), (grant.clone(), None), "the code, and no user");
        create_user(&store, "u1").await;
        let (read, user) = store.peek_code_with_user(T, &code, T0 + SEC).await.unwrap().expect("live");
        assert_eq!(read, grant);
        let user = user.expect("the code's user");
        assert_eq!(user.user_id, "auth0|u1");
        assert_eq!(user.profile.email, "u1@example.com");
        assert_eq!(user.identities.len(), 1, "with its identity");
        assert_eq!(store.get_user(T, "auth0|u1").await.unwrap().as_ref(), Some(&user), "as get_user reads it");
        assert!(store.peek_code_with_user(T, &code, T0 + 60 * SEC).await.unwrap().is_none(), "expired");
        assert!(store.peek_code_with_user("other", &code, T0 + SEC).await.unwrap().is_none(), "another tenant's");

        let exchanged = || {
            use postern_proto::tenant::v1::{AuditEventType, AuditOutcome};
            postern_common::audit::event(T, AuditEventType::TokenExchange, AuditOutcome::Success)
        };
        let event = exchanged();
        let rt = secret_digest("rt-1");
        let refresh = refresh_grant("fam-1", "auth0|u1", "c1");
        let used = store
            .auditing(vec![event.clone()])
            .use_authorization_code(T, &code, "fam-1", T0 + 2 * SEC, Some((&rt, &refresh, T0 + 86_400 * SEC)))
            .await
            .unwrap();
        assert!(used, "the first use");
        let pending = store.outbox().pending(10).await.unwrap();
        assert_eq!(pending.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(), [event.id.as_str()]);
        assert_eq!(store.peek_code(T, &code, T0 + 3 * SEC).await.unwrap(), None, "used up");

        // A second exchange that read it before the first used it writes nothing.
        let late = store
            .auditing(vec![exchanged()])
            .use_authorization_code(
                T,
                &code,
                "fam-2",
                T0 + 3 * SEC,
                Some((&secret_digest("rt-2"), &refresh_grant("fam-2", "auth0|u1", "c1"), T0 + 86_400 * SEC)),
            )
            .await
            .unwrap();
        assert!(!late, "used once only");
        assert_eq!(store.outbox().pending(10).await.unwrap().len(), 1, "no event of the refused use");
        assert_eq!(
            store
                .rotate_refresh_token(T, &secret_digest("rt-2"), &secret_digest("x"), T0 + 4 * SEC, SEC)
                .await
                .unwrap(),
            Rotated::Unknown,
            "no refresh token of the refused use"
        );
        // The code's family is the first use's: its replay revokes the first refresh token.
        assert_eq!(
            store.redeem_code(T, &code, "fam-3", T0 + 5 * SEC).await.unwrap(),
            Redeemed::Replayed { user_id: "auth0|u1".into() }
        );
        assert_eq!(
            store.rotate_refresh_token(T, &rt, &secret_digest("rt-1b"), T0 + 6 * SEC, SEC).await.unwrap(),
            Rotated::Unknown,
            "the replay revoked the refresh token stored with the use"
        );
        cleanup(store, backend).await;
    }
}

/// The clients that got a code in a session come back, once each, when it ends by a logout
/// (what back-channel logout tells), and go with it; those of a session that ended
/// otherwise (expired) go at the next prune.
#[tokio::test]
async fn a_sessions_clients_come_back_when_it_ends() {
    for (store, backend) in stores("a_sessions_clients_come_back_when_it_ends").await {
        let (s, other) = (secret_digest("session"), secret_digest("other session"));
        for id in [&s, &other] {
            store.create_session(T, id, "auth0|u1", T0, T0 + 100 * SEC, T0 + 1000 * SEC).await.unwrap();
        }
        for (i, client) in ["web", "spa", "web"].into_iter().enumerate() {
            let code = secret_digest(&format!("code-{i}"));
            store.create_code(T, &code, &code_grant("auth0|u1", client), T0, T0 + 60 * SEC).await.unwrap();
        }
        let other_grant = CodeGrant { session_hash: other.clone(), ..code_grant("auth0|u1", "elsewhere") };
        store.create_code(T, &secret_digest("code-x"), &other_grant, T0, T0 + 60 * SEC).await.unwrap();
        let mut ended = store.end_session(T, &s).await.unwrap().expect("ended");
        ended.clients.sort();
        assert_eq!((ended.user_id.as_str(), ended.clients), ("auth0|u1", vec!["spa".to_owned(), "web".to_owned()]));
        // The other session expires: its client goes at the prune, with it.
        assert!(store.prune_oauth(T0 + 101 * SEC).await.unwrap() >= 2, "the session and its client");
        store.create_session(T, &other, "auth0|u1", T0, T0 + 100 * SEC, T0 + 1000 * SEC).await.unwrap();
        assert_eq!(store.end_session(T, &other).await.unwrap().expect("ended").clients, Vec::<String>::new());
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn sessions_have_idle_and_absolute_lifetimes() {
    for (store, backend) in stores("sessions_have_idle_and_absolute_lifetimes").await {
        let s = secret_digest("s-1");
        let idle = 100 * SEC;
        store.create_session(T, &s, "auth0|u1", T0, T0 + idle, T0 + 250 * SEC).await.unwrap();
        let expect = Session { user_id: "auth0|u1".into(), auth_time: T0, absolute_expire: T0 + 250 * SEC };
        assert_eq!(store.touch_session(T, &s, T0 + 90 * SEC, idle).await.unwrap(), Some(expect.clone()));
        // Touched at 90 s: alive at 180 s, past the first idle deadline.
        assert_eq!(store.touch_session(T, &s, T0 + 180 * SEC, idle).await.unwrap(), Some(expect.clone()));
        // The absolute lifetime caps it, however active.
        assert_eq!(store.touch_session(T, &s, T0 + 249 * SEC, idle).await.unwrap(), Some(expect));
        assert_eq!(store.touch_session(T, &s, T0 + 250 * SEC, idle).await.unwrap(), None);

        let idle_out = secret_digest("s-2");
        store.create_session(T, &idle_out, "auth0|u1", T0, T0 + idle, T0 + 1000 * SEC).await.unwrap();
        assert_eq!(store.touch_session(T, &idle_out, T0 + 101 * SEC, idle).await.unwrap(), None, "idle too long");

        let ended = secret_digest("s-3");
        store.create_session(T, &ended, "auth0|u1", T0, T0 + idle, T0 + 1000 * SEC).await.unwrap();
        assert_eq!(store.end_session(T, &ended).await.unwrap().map(|e| e.connection).as_deref(), Some(""));
        assert!(store.end_session(T, &ended).await.unwrap().is_none());
        assert_eq!(store.touch_session(T, &ended, T0 + SEC, idle).await.unwrap(), None);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    for (store, backend) in stores("refresh_tokens_rotate_and_reuse_revokes_the_family").await {
        let day = 86_400 * SEC;
        let grant = refresh_grant("fam-1", "auth0|u1", "c1");
        let (r1, r2, r3) = (secret_digest("r1"), secret_digest("r2"), secret_digest("r3"));
        store.create_refresh_token(T, &r1, &grant, T0, T0 + day).await.unwrap();
        assert_eq!(
            store.rotate_refresh_token(T, &r1, &r2, T0 + SEC, day).await.unwrap(),
            Rotated::Rotated(grant.clone())
        );
        assert_eq!(store.rotate_refresh_token(T, &r2, &r3, T0 + 2 * SEC, day).await.unwrap(), Rotated::Rotated(grant));
        // r1 again: reuse. The family goes, r3 with it.
        assert_eq!(
            store.rotate_refresh_token(T, &r1, &secret_digest("x"), T0 + 3 * SEC, day).await.unwrap(),
            Rotated::Reused { user_id: "auth0|u1".into() }
        );
        assert_eq!(
            store.rotate_refresh_token(T, &r3, &secret_digest("y"), T0 + 4 * SEC, day).await.unwrap(),
            Rotated::Unknown
        );

        // Idle expiry, and the family's absolute end.
        let short = RefreshGrant { family_expire: T0 + 10 * day, ..refresh_grant("fam-2", "auth0|u1", "c1") };
        let (a, b) = (secret_digest("a"), secret_digest("b"));
        store.create_refresh_token(T, &a, &short, T0, T0 + day).await.unwrap();
        assert_eq!(store.rotate_refresh_token(T, &a, &b, T0 + day, day).await.unwrap(), Rotated::Unknown, "idle");
        let (c, d, e) = (secret_digest("c"), secret_digest("d"), secret_digest("e"));
        // Created for 20 days, but the family ends at 10.
        store.create_refresh_token(T, &c, &short, T0, T0 + 20 * day).await.unwrap();
        assert!(matches!(
            store.rotate_refresh_token(T, &c, &d, T0 + 9 * day + 1, 5 * day).await.unwrap(),
            Rotated::Rotated(_)
        ));
        assert_eq!(
            store.rotate_refresh_token(T, &d, &e, T0 + 10 * day, 5 * day).await.unwrap(),
            Rotated::Unknown,
            "past the family's absolute end"
        );

        // Revocation: only by the client it was issued to, and the whole family.
        let g = refresh_grant("fam-3", "auth0|u1", "c1");
        let (f1, f2, f3) = (secret_digest("f1"), secret_digest("f2"), secret_digest("f3"));
        store.create_refresh_token(T, &f1, &g, T0, T0 + day).await.unwrap();
        assert!(matches!(store.rotate_refresh_token(T, &f1, &f2, T0 + SEC, day).await.unwrap(), Rotated::Rotated(_)));
        assert_eq!(store.revoke_refresh_token(T, &f2, "c2").await.unwrap(), Revoked::OtherClient, "another client's");
        assert!(
            matches!(store.rotate_refresh_token(T, &f2, &f3, T0 + 2 * SEC, day).await.unwrap(), Rotated::Rotated(_)),
            "another client's refusal revokes nothing"
        );
        assert_eq!(store.revoke_refresh_token(T, &f1, "c1").await.unwrap(), Revoked::Revoked, "names its family");
        assert_eq!(store.revoke_refresh_token(T, &f1, "c1").await.unwrap(), Revoked::Unknown, "already gone");
        let f4 = secret_digest("f4");
        assert_eq!(store.rotate_refresh_token(T, &f3, &f4, T0 + 3 * SEC, day).await.unwrap(), Rotated::Unknown);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn deleting_users_clients_and_tenants_removes_their_grants() {
    for (store, backend) in stores("deleting_users_clients_and_tenants_removes_their_grants").await {
        let day = 86_400 * SEC;
        create_user(&store, "u1").await;
        create_user(&store, "u2").await;
        let now = postern_common::time::now_micros();
        let (r1, r2, r3) = (secret_digest("r1"), secret_digest("r2"), secret_digest("r3"));
        store.create_refresh_token(T, &r1, &refresh_grant("f1", "auth0|u1", "c1"), now, now + day).await.unwrap();
        store.create_refresh_token(T, &r2, &refresh_grant("f2", "auth0|u2", "c1"), now, now + day).await.unwrap();
        store.create_refresh_token(T, &r3, &refresh_grant("f3", "auth0|u2", "c2"), now, now + day).await.unwrap();
        let s1 = secret_digest("s1");
        store.create_session(T, &s1, "auth0|u1", now, now + day, now + 2 * day).await.unwrap();

        assert!(store.delete_user(T, "auth0|u1").await.unwrap());
        assert_eq!(store.rotate_refresh_token(T, &r1, &secret_digest("x1"), now, day).await.unwrap(), Rotated::Unknown);
        assert_eq!(store.touch_session(T, &s1, now, day).await.unwrap(), None);

        assert!(store.delete_client_grants(T, "c1").await.unwrap() >= 1);
        assert_eq!(store.rotate_refresh_token(T, &r2, &secret_digest("x2"), now, day).await.unwrap(), Rotated::Unknown);

        let s2 = secret_digest("s2");
        store.create_session(T, &s2, "auth0|u2", now, now + day, now + 2 * day).await.unwrap();
        assert!(store.apply_tenant_event(1, Some((T, now + 1))).await.unwrap());
        assert_eq!(store.rotate_refresh_token(T, &r3, &secret_digest("x3"), now, day).await.unwrap(), Rotated::Unknown);
        assert_eq!(store.touch_session(T, &s2, now, day).await.unwrap(), None);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn pruning_removes_only_what_expired() {
    for (store, backend) in stores("pruning_removes_only_what_expired").await {
        // Codes alone (a session's clients go with their session).
        let grant = CodeGrant { session_hash: String::new(), ..code_grant("auth0|u1", "c1") };
        store.create_code(T, &secret_digest("old"), &grant, T0, T0 + 60 * SEC).await.unwrap();
        let fresh = secret_digest("fresh");
        store.create_code(T, &fresh, &grant, T0 + 100 * SEC, T0 + 160 * SEC).await.unwrap();
        assert_eq!(store.prune_oauth(T0 + 120 * SEC).await.unwrap(), 1);
        assert!(matches!(store.redeem_code(T, &fresh, "f", T0 + 121 * SEC).await.unwrap(), Redeemed::Granted(_)));
        cleanup(store, backend).await;
    }
}
