//! The authenticator's store, the same tests on SQLite and PostgreSQL
//! (`POSTERN_TEST_POSTGRES_URL`; skipped with a reason when unset, a failure under
//! `POSTERN_REQUIRE_PEERS=1`).

use std::sync::Arc;

use postern_authn::bruteforce::{MAX_CONSECUTIVE_FAILURES, Outcome};
use postern_authn::domain::{Asserted, Identity, Profile, ProfileSync, UserPatch};
use postern_authn::store::{LoginUpdate, NewUser, Promoted, Recorded, RotationRefused, Store, StoreError, StoredKey};
use postern_common::db::DbLocation;
use postern_common::testing::TestDatabase;

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
    },
    /// A fresh database, dropped at the end of the test, or when it panics.
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

fn identity(conn: &str, source: &str, email: &str, username: &str, hash: Option<&str>) -> Identity {
    Identity {
        connection_id: format!("con_{conn}"),
        connection: conn.into(),
        strategy: "auth0".into(),
        source_id: source.into(),
        is_social: false,
        login_email: email.to_lowercase(),
        login_username: username.to_lowercase(),
        profile_data: serde_json::json!({}),
        profile_sync: ProfileSync::OnEachLogin,
        external: false,
        password_hash: hash.map(str::to_owned),
    }
}

fn new_user(id: &str, email: &str) -> NewUser {
    NewUser {
        user_id: format!("auth0|{id}"),
        profile: Profile { email: email.into(), nickname: "n".into(), ..Profile::default() },
        user_metadata: serde_json::Map::new(),
        app_metadata: serde_json::Map::new(),
    }
}

#[tokio::test]
async fn users_and_identities() {
    for (store, backend) in stores("users_and_identities").await {
        let t = "fabrikam";
        let alice = store
            .create_user(
                t,
                &new_user("a1", "Alice@Example.com"),
                &identity("db", "a1", "alice@example.com", "alice", Some("h1")),
                None,
            )
            .await
            .unwrap();
        assert_eq!(alice.user_id, "auth0|a1");
        assert_eq!(alice.identities.len(), 1);
        assert_eq!(alice.logins_count, 0);
        // Same email in the same connection: refused, and nothing half-written.
        let dup = store
            .create_user(
                t,
                &new_user("a2", "alice@example.com"),
                &identity("db", "a2", "alice@example.com", "", None),
                None,
            )
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists)));
        assert!(store.get_user(t, "auth0|a2").await.unwrap().is_none());
        // Same username too; but another connection or tenant is fine.
        let dup = store
            .create_user(
                t,
                &new_user("a3", "x@example.com"),
                &identity("db", "a3", "x@example.com", "ALICE", None),
                None,
            )
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists)));
        store
            .create_user(
                t,
                &new_user("b1", "alice@example.com"),
                &identity("other", "b1", "alice@example.com", "", None),
                None,
            )
            .await
            .unwrap();
        store
            .create_user(
                "contoso",
                &new_user("a1", "alice@example.com"),
                &identity("db", "a1", "alice@example.com", "", None),
                None,
            )
            .await
            .unwrap();

        let found = store.find_login_from(t, "con_db", "alice", "").await.unwrap().unwrap();
        let (uid, found) = (found.user_id, found.identity);
        assert_eq!((uid.as_str(), found.password_hash.as_deref()), ("auth0|a1", Some("h1")));
        assert!(store.find_login_from(t, "con_db", "alice@example.com", "").await.unwrap().is_some());
        assert!(store.find_login_from(t, "con_db", "bob", "").await.unwrap().is_none());
        assert!(store.find_login_from("nobody", "con_db", "alice", "").await.unwrap().is_none());

        let synced = Profile { email: "alice@example.com".into(), name: "Alice L".into(), ..Profile::default() };
        let data = serde_json::json!({"name": "Alice L"});
        // A login admitted by brute-force protection clears its count in its own transaction.
        let here = store.admit(t, "auth0|a1", "203.0.113.7", MAX_CONSECUTIVE_FAILURES, None).await.unwrap();
        let there = store.admit(t, "auth0|a1", "198.51.100.1", MAX_CONSECUTIVE_FAILURES, None).await.unwrap();
        let (here, there) = (here.expect("admitted"), there.expect("admitted"));
        let update = LoginUpdate {
            ip: "203.0.113.7",
            profile: Some(&synced),
            asserted: Asserted::Profile,
            profile_data: Some(&data),
            profile_sync: ProfileSync::OnFirstLogin,
            external: true,
            password_hash: None,
            clear_failures: Some(("auth0|a1", "203.0.113.7")),
            identity_current: false,
            identities: None,
            grant: None,
        };
        let Recorded::Login(after) = store.record_login(t, "auth0|a1", "con_db", "a1", &update).await.unwrap() else {
            panic!("the login of an existing, unblocked user is recorded")
        };
        store.recorded(here);
        assert_eq!(store.failures(t, "auth0|a1", "203.0.113.7").await.unwrap(), 0);
        assert_eq!(store.failures(t, "auth0|a1", "198.51.100.1").await.unwrap(), 1, "other addresses keep theirs");
        drop(there);
        assert_eq!(
            (after.logins_count, after.last_ip.as_str(), after.profile.name.as_str()),
            (1, "203.0.113.7", "Alice L")
        );
        assert!(after.last_login.is_some());
        assert_eq!(after.identities[0].profile_data, data);
        assert_eq!(after.identities[0].password_hash.as_deref(), Some("h1"), "a login without a new hash keeps it");
        assert_eq!(after.identities[0].profile_sync, ProfileSync::OnFirstLogin);

        // The usual login (nothing to write but the counters) takes one statement.
        let usual = LoginUpdate {
            ip: "192.0.2.4",
            profile: None,
            asserted: Asserted::Profile,
            profile_data: None,
            profile_sync: ProfileSync::OnFirstLogin,
            external: false,
            password_hash: None,
            clear_failures: None,
            identity_current: true,
            identities: None,
            grant: None,
        };
        let Recorded::Login(again) = store.record_login(t, "auth0|a1", "con_db", "a1", &usual).await.unwrap() else {
            panic!("recorded")
        };
        assert_eq!((again.logins_count, again.last_ip.as_str()), (2, "192.0.2.4"));
        assert_eq!(again.identities.len(), 1);
        assert_eq!(again.identities[0].profile_data, data, "the identity is left as it was");
        assert!(again.identities[0].external, "the identity is left as it was");

        // A source that asserts only the email (a passwordless login) writes only the email:
        // the name and nickname stay, however empty its profile's are.
        let proven = Profile { email: "Alice@Example.com".into(), email_verified: true, ..Profile::default() };
        let email_only = LoginUpdate {
            ip: "192.0.2.5",
            profile: Some(&proven),
            asserted: Asserted::Email,
            profile_data: None,
            profile_sync: ProfileSync::OnEachLogin,
            external: true,
            password_hash: None,
            clear_failures: None,
            identity_current: false,
            identities: None,
            grant: None,
        };
        let Recorded::Login(third) = store.record_login(t, "auth0|a1", "con_db", "a1", &email_only).await.unwrap()
        else {
            panic!("recorded")
        };
        assert_eq!(
            (third.profile.email.as_str(), third.profile.email_verified, third.profile.name.as_str()),
            ("Alice@Example.com", true, "Alice L")
        );

        let patch = UserPatch {
            name: Some("Alice".into()),
            app_metadata: Some(serde_json::json!({"plan": "gold"}).as_object().unwrap().clone()),
            blocked: Some(true),
            ..UserPatch::default()
        };
        let updated = store.update_user(t, "auth0|a1", &patch).await.unwrap().unwrap();
        assert_eq!(updated.profile.name, "Alice");
        assert!(updated.blocked);
        assert_eq!(updated.app_metadata["plan"], "gold");
        assert!(store.update_user(t, "auth0|none", &patch).await.unwrap().is_none());
        // A blocked user's login is not recorded, nor is a vanished user's.
        for update in [&update, &usual] {
            assert!(matches!(
                store.record_login(t, "auth0|a1", "con_db", "a1", update).await.unwrap(),
                Recorded::Blocked
            ));
            assert_eq!(store.get_user(t, "auth0|a1").await.unwrap().unwrap().logins_count, 3);
            assert!(matches!(
                store.record_login(t, "auth0|none", "con_db", "x", update).await.unwrap(),
                Recorded::Missing
            ));
        }

        // Listing: paging, filters, tenant isolation.
        let all = store.list_users(t, None, None, None, 10).await.unwrap();
        assert_eq!(all.len(), 2);
        let first = store.list_users(t, None, None, None, 1).await.unwrap();
        let rest = store.list_users(t, None, None, Some(&first[0].0), 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_ne!(first[0].1.user_id, rest[0].1.user_id);
        assert_eq!(store.list_users(t, Some("other"), None, None, 10).await.unwrap().len(), 1);
        assert_eq!(store.list_users(t, None, Some("ALICE@example.com"), None, 10).await.unwrap().len(), 2);
        assert_eq!(store.list_users("contoso", None, None, None, 10).await.unwrap().len(), 1);

        // Deleting a connection removes its identities and the users left with none.
        store.set_connection_sync(t, "con_other", ProfileSync::NeverOnLogin).await.unwrap();
        assert_eq!(store.delete_connection(t, "con_other").await.unwrap(), (1, 1));
        assert!(store.get_user(t, "auth0|b1").await.unwrap().is_none());
        assert!(store.get_user(t, "auth0|a1").await.unwrap().is_some());
        assert!(store.get_user("contoso", "auth0|a1").await.unwrap().is_some(), "other tenants untouched");

        assert!(store.delete_user(t, "auth0|a1").await.unwrap());
        assert!(!store.delete_user(t, "auth0|a1").await.unwrap());
        assert!(store.find_login_from(t, "con_db", "alice", "").await.unwrap().is_none());
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn password_history_is_trimmed() {
    for (store, backend) in stores("password_history_is_trimmed").await {
        store
            .create_user(
                "t1",
                &new_user("u", "u@example.com"),
                &identity("db", "u", "u@example.com", "", Some("h0")),
                None,
            )
            .await
            .unwrap();
        for i in 1..=5 {
            store.set_password("t1", "auth0|u", "con_db", "u", &format!("h{i}"), 2).await.unwrap();
        }
        let history = store.password_history("t1", "con_db", "u").await.unwrap();
        assert_eq!(history, ["h5", "h4", "h3"]);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn brute_force_counting_is_exact_under_concurrency() {
    for (store, backend) in stores("brute_force_counting_is_exact_under_concurrency").await {
        let store = Arc::new(store);
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let a =
                        store.admit("t1", "auth0|alice", "203.0.113.7", MAX_CONSECUTIVE_FAILURES, None).await.unwrap();
                    let admitted = a.is_some();
                    if let Some(a) = a {
                        // Some time checking the password, so that the attempts overlap.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        store.settle(a, Outcome::WrongCredentials, None).await.unwrap();
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for h in handles {
            if h.await.unwrap() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(store.failures("t1", "auth0|alice", "203.0.113.7").await.unwrap(), 10);
        assert!(store.admit("t1", "auth0|alice", "203.0.113.7", 10, None).await.unwrap().is_none(), "blocked");
        let elsewhere =
            store.admit("t1", "auth0|alice", "198.51.100.1", 10, None).await.unwrap().expect("other address");
        let other_tenant =
            store.admit("t2", "auth0|alice", "203.0.113.7", 10, None).await.unwrap().expect("other tenant");
        drop(other_tenant);
        // A check that did not happen gives its failure back; a success resets.
        store.settle(elsewhere, Outcome::NotChecked, None).await.unwrap();
        assert_eq!(store.failures("t1", "auth0|alice", "198.51.100.1").await.unwrap(), 0);
        assert_eq!(store.unblock("t1", "auth0|alice", 10).await.unwrap(), 1);
        let again = store.admit("t1", "auth0|alice", "203.0.113.7", 10, None).await.unwrap().expect("unblocked");
        store.settle(again, Outcome::Success, None).await.unwrap();
        assert_eq!(store.failures("t1", "auth0|alice", "203.0.113.7").await.unwrap(), 0);
        let store = Arc::try_unwrap(store).unwrap();
        cleanup(store, backend).await;
    }
}

/// Attempts in flight when an unblock lands are counted against the fresh count, not the
/// lifted one; an attempt whose caller went away mid-check does not count on SQLite, where
/// nothing was written before the check, and counts on PostgreSQL, where it was.
#[tokio::test]
async fn brute_force_unblock_and_abandoned_attempts() {
    for (store, backend) in stores("brute_force_unblock_and_abandoned_attempts").await {
        let (t, who, at) = ("t1", "auth0|bob", "203.0.113.9");
        for _ in 0..9 {
            let a = store.admit(t, who, at, 10, None).await.unwrap().expect("admitted");
            store.settle(a, Outcome::WrongCredentials, None).await.unwrap();
        }
        let last = store.admit(t, who, at, 10, None).await.unwrap().expect("the tenth attempt");
        assert!(store.admit(t, who, at, 10, None).await.unwrap().is_none(), "nine failures and one in flight block");
        store.unblock(t, who, 10).await.unwrap();
        let after_unblock = store.admit(t, who, at, 10, None).await.unwrap().expect("the count started over");
        store.settle(last, Outcome::WrongCredentials, None).await.unwrap();
        // SQLite writes the late failure when it is settled; PostgreSQL counted it in
        // advance, and the unblock lifted that count.
        let (late, abandoned) = match backend {
            Backend::Sqlite { .. } => (1, 0),
            Backend::Postgres(_) => (0, 1),
        };
        assert_eq!(store.failures(t, who, at).await.unwrap(), late + 1, "with the attempt in flight");
        drop(after_unblock);
        assert_eq!(store.failures(t, who, at).await.unwrap(), late + abandoned);
        cleanup(store, backend).await;
    }
}

/// A failure is written before the caller hears of it: a store opened afresh on the same
/// file (a restart) still blocks.
#[tokio::test]
async fn brute_force_failures_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let location = DbLocation::SqliteFile(dir.path().join("authn.db"));
    let store = Store::open(&location).await.unwrap();
    for _ in 0..10 {
        let a = store.admit("t1", "auth0|carol", "203.0.113.5", 10, None).await.unwrap().expect("admitted");
        store.settle(a, Outcome::WrongCredentials, None).await.unwrap();
    }
    drop(store);
    let reopened = Store::open(&location).await.unwrap();
    assert!(reopened.admit("t1", "auth0|carol", "203.0.113.5", 10, None).await.unwrap().is_none());
    assert_eq!(reopened.failures("t1", "auth0|carol", "203.0.113.5").await.unwrap(), 10);
    reopened.close().await;
}

#[tokio::test]
async fn signing_keys() {
    for (store, backend) in stores("signing_keys").await {
        let key = |kid: &str, at: i64, activate: Option<i64>| StoredKey {
            kid: kid.into(),
            alg: "RS256".into(),
            sealed_key: vec![1, 2, 3],
            create_time: at,
            activate_time: activate,
            retire_time: None,
        };
        // The first keys: a current one and a next one; a second next key is refused.
        store.add_signing_keys("t1", &[&key("k1", 0, Some(0)), &key("n1", 1, None)]).await.unwrap();
        assert!(matches!(store.add_signing_keys("t1", &[&key("n2", 2, None)]).await, Err(StoreError::AlreadyExists)));
        // A rotation at 10 makes n1 sign from 81; a second one before then is refused.
        store.rotate_signing_keys("t1", 10, 81, Promoted::Next("n1"), &key("n2", 10, None)).await.unwrap();
        assert!(matches!(
            store.rotate_signing_keys("t1", 20, 100, Promoted::Next("n2"), &key("n3", 20, None)).await,
            Err(RotationRefused::Pending(81))
        ));
        let keys = store.signing_keys("t1").await.unwrap();
        let shown: Vec<(&str, Option<i64>, Option<i64>)> =
            keys.iter().map(|k| (k.kid.as_str(), k.activate_time, k.retire_time)).collect();
        assert_eq!(shown, [("n2", None, None), ("n1", Some(81), None), ("k1", Some(0), Some(81))]);
        // A rotation that names a next key another rotation took is refused as raced.
        assert!(matches!(
            store.rotate_signing_keys("t1", 90, 90, Promoted::Next("n1"), &key("n3", 90, None)).await,
            Err(RotationRefused::Raced)
        ));
        // A replacement (another algorithm) drops the unscheduled next key, which signed nothing.
        let ed = StoredKey { alg: "EdDSA".into(), ..key("e1", 100, None) };
        store.rotate_signing_keys("t1", 100, 180, Promoted::Replacement(&ed), &key("e2", 100, None)).await.unwrap();
        let keys = store.signing_keys("t1").await.unwrap();
        let mut shown: Vec<(&str, Option<i64>, Option<i64>)> =
            keys.iter().map(|k| (k.kid.as_str(), k.activate_time, k.retire_time)).collect();
        shown.sort_unstable();
        assert_eq!(
            shown,
            [("e1", Some(180), None), ("e2", None, None), ("k1", Some(0), Some(81)), ("n1", Some(81), Some(180))]
        );
        assert!(store.signing_keys("t2").await.unwrap().is_empty());
        store.prune_signing_keys("t1", 82).await.unwrap();
        assert_eq!(store.signing_keys("t1").await.unwrap().len(), 3);
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn a_deleted_tenant_leaves_nothing() {
    for (store, backend) in stores("a_deleted_tenant_leaves_nothing").await {
        for t in ["gone", "kept"] {
            store
                .create_user(
                    t,
                    &new_user("u", "u@example.com"),
                    &identity("db", "u", "u@example.com", "", Some("h")),
                    None,
                )
                .await
                .unwrap();
            store.set_password(t, "auth0|u", "con_db", "u", "h2", 5).await.unwrap();
            let a = store.admit(t, "auth0|u", "203.0.113.1", 10, None).await.unwrap().expect("admitted");
            store.settle(a, Outcome::WrongCredentials, None).await.unwrap();
            let key = StoredKey {
                kid: "k".into(),
                alg: "RS256".into(),
                sealed_key: vec![1],
                create_time: 1,
                activate_time: Some(1),
                retire_time: None,
            };
            store.add_signing_keys(t, &[&key]).await.unwrap();
        }
        assert_eq!(store.tenant_events_cursor().await.unwrap(), 0);
        let deleted_at = postern_common::time::now_micros();
        // A namesake created after the deletion keeps what it made, even if the event comes late.
        let key = StoredKey {
            kid: "later".into(),
            alg: "EdDSA".into(),
            sealed_key: vec![2],
            create_time: deleted_at + 1,
            activate_time: Some(deleted_at + 1),
            retire_time: None,
        };
        store.add_signing_keys("gone", &[&key]).await.unwrap();
        assert!(store.apply_tenant_event(3, Some(("gone", deleted_at))).await.unwrap());
        assert!(!store.apply_tenant_event(3, Some(("gone", deleted_at))).await.unwrap(), "applied once");
        assert!(!store.apply_tenant_event(4, None).await.unwrap());
        assert_eq!(store.tenant_events_cursor().await.unwrap(), 4);
        assert!(store.get_user("gone", "auth0|u").await.unwrap().is_none());
        let left: Vec<String> = store.signing_keys("gone").await.unwrap().into_iter().map(|k| k.kid).collect();
        assert_eq!(left, ["later"]);
        assert!(store.password_history("gone", "con_db", "u").await.unwrap().is_empty());
        assert_eq!(store.failures("gone", "auth0|u", "203.0.113.1").await.unwrap(), 0);
        assert!(store.get_user("kept", "auth0|u").await.unwrap().is_some());
        assert_eq!(store.signing_keys("kept").await.unwrap().len(), 1);
        assert_eq!(store.identity_connections().await.unwrap(), [("kept".to_owned(), "con_db".to_owned())]);
        cleanup(store, backend).await;
    }
}

/// A login's first read brings the identity, its user's identities and the failures stored
/// for the address; a count read before a failure was written is not trusted by admission.
#[tokio::test]
async fn the_login_read_and_a_count_read_too_early() {
    for (store, backend) in stores("the_login_read_and_a_count_read_too_early").await {
        let t = "t1";
        store
            .create_user(
                t,
                &new_user("d1", "dan@example.com"),
                &identity("db", "d1", "dan@example.com", "dan", Some("h")),
                None,
            )
            .await
            .unwrap();
        let at = "203.0.113.20";
        let found = store.find_login_from(t, "con_db", "dan", at).await.unwrap().expect("found by username");
        assert_eq!((found.user_id.as_str(), found.identity.source_id.as_str()), ("auth0|d1", "d1"));
        assert_eq!(found.identities.len(), 1);
        assert!(store.find_login_from(t, "con_db", "nobody", at).await.unwrap().is_none());
        assert!(store.find_login_from("t2", "con_db", "dan", at).await.unwrap().is_none(), "tenants apart");

        // Ten failures written after that read: the read's count (none) no longer holds.
        for _ in 0..10 {
            let a = store.admit(t, "auth0|d1", at, 10, None).await.unwrap().expect("admitted");
            store.settle(a, Outcome::WrongCredentials, None).await.unwrap();
        }
        assert!(
            store.admit(t, "auth0|d1", at, 10, found.stored).await.unwrap().is_none(),
            "a stale count is read again"
        );
        let fresh = store.find_login_from(t, "con_db", "dan@example.com", at).await.unwrap().expect("found by email");
        if let Backend::Sqlite { .. } = backend {
            assert!(fresh.stored.is_some(), "SQLite reads the count with the identity");
        }
        assert!(store.admit(t, "auth0|d1", at, 10, fresh.stored).await.unwrap().is_none());
        let elsewhere = store.find_login_from(t, "con_db", "dan", "198.51.100.20").await.unwrap().unwrap();
        let a = store.admit(t, "auth0|d1", "198.51.100.20", 10, elsewhere.stored).await.unwrap();
        assert!(a.is_some(), "another address has no failures");
        drop(a);
        cleanup(store, backend).await;
    }
}

/// Audit events given with `auditing` are written in the change's transaction: with a change
/// that happens, not with one that does not (nothing to delete, a duplicate signup).
#[tokio::test]
async fn audit_events_are_written_with_their_change_only() {
    use postern_proto::tenant::v1 as pb;
    for (store, backend) in stores("audit_events_are_written_with_their_change_only").await {
        let t = "fabrikam";
        let event = |kind: pb::AuditEventType| postern_common::audit::event(t, kind, pb::AuditOutcome::Success);
        let ids = |pending: Vec<(i64, pb::AuditEvent)>| pending.into_iter().map(|(_, e)| e.id).collect::<Vec<_>>();
        let signup = event(pb::AuditEventType::Signup);
        store
            .auditing(vec![signup.clone()])
            .create_user(
                t,
                &new_user("a1", "alice@example.com"),
                &identity("db", "a1", "alice@example.com", "", None),
                None,
            )
            .await
            .unwrap();
        let again = event(pb::AuditEventType::Signup);
        let taken = store
            .auditing(vec![again])
            .create_user(
                t,
                &new_user("a1", "alice@example.com"),
                &identity("db", "a1", "alice@example.com", "", None),
                None,
            )
            .await;
        assert!(matches!(taken, Err(StoreError::AlreadyExists)), "{taken:?}");
        let nothing = event(pb::AuditEventType::UserDeleted);
        assert!(!store.auditing(vec![nothing]).delete_user(t, "auth0|nobody").await.unwrap());
        let blocked = event(pb::AuditEventType::UserBlocked);
        let patch = UserPatch { blocked: Some(true), ..UserPatch::default() };
        assert!(store.auditing(vec![blocked.clone()]).update_user(t, "auth0|nobody", &patch).await.unwrap().is_none());
        store.auditing(vec![blocked.clone()]).update_user(t, "auth0|a1", &patch).await.unwrap().expect("updated");
        let deleted = event(pb::AuditEventType::UserDeleted);
        assert!(store.auditing(vec![deleted.clone()]).delete_user(t, "auth0|a1").await.unwrap());
        assert_eq!(ids(store.outbox().pending(10).await.unwrap()), [signup.id, blocked.id, deleted.id]);

        // Delivered rows go; the others stay.
        let pending = store.outbox().pending(10).await.unwrap();
        store.outbox().delivered(&[pending[0].0, pending[2].0]).await.unwrap();
        assert_eq!(ids(store.outbox().pending(10).await.unwrap()), [pending[1].1.id.clone()]);
        cleanup(store, backend).await;
    }
}

fn audit_event(tenant: &str, user_id: &str) -> postern_proto::tenant::v1::AuditEvent {
    use postern_proto::tenant::v1 as tpb;
    let mut e = postern_common::audit::event(tenant, tpb::AuditEventType::Login, tpb::AuditOutcome::Success);
    e.user_id = user_id.into();
    e
}

async fn outbox_ids(store: &Store) -> Vec<String> {
    store.outbox().pending(100).await.unwrap().into_iter().map(|(_, e)| e.id).collect()
}

/// A login's audit events are written in the login's own transaction: with its record when
/// it is recorded (the usual login's single counting statement included), not at all when
/// it is not (a blocked user).
#[tokio::test]
async fn a_logins_audit_events_go_with_its_record() {
    for (store, backend) in stores("a_logins_audit_events_go_with_its_record").await {
        let t = "fabrikam";
        store
            .create_user(
                t,
                &new_user("a1", "alice@example.com"),
                &identity("db", "a1", "alice@example.com", "", None),
                None,
            )
            .await
            .unwrap();
        let usual = LoginUpdate {
            ip: "192.0.2.4",
            profile: None,
            asserted: Asserted::Profile,
            profile_data: None,
            profile_sync: ProfileSync::OnEachLogin,
            external: false,
            password_hash: None,
            clear_failures: None,
            identity_current: true,
            identities: None,
            grant: None,
        };
        let counted = audit_event(t, "auth0|a1");
        let audited = store.auditing(vec![counted.clone()]);
        let recorded = audited.record_login(t, "auth0|a1", "con_db", "a1", &usual).await.unwrap();
        assert!(matches!(recorded, Recorded::Login(_)));
        assert_eq!(
            outbox_ids(&store).await,
            std::slice::from_ref(&counted.id),
            "the usual login: its counters and its event"
        );
        let synced = Profile { email: "alice@example.com".into(), name: "Alice".into(), ..Profile::default() };
        let full = LoginUpdate { profile: Some(&synced), identity_current: false, ..usual.clone() };
        let updated = audit_event(t, "auth0|a1");
        let audited = store.auditing(vec![updated.clone()]);
        let recorded = audited.record_login(t, "auth0|a1", "con_db", "a1", &full).await.unwrap();
        assert!(matches!(recorded, Recorded::Login(_)));
        assert_eq!(outbox_ids(&store).await, [counted.id.clone(), updated.id.clone()], "a login that syncs");

        let patch = UserPatch { blocked: Some(true), ..UserPatch::default() };
        store.update_user(t, "auth0|a1", &patch).await.unwrap();
        for update in [&usual, &full] {
            let refused = audit_event(t, "auth0|a1");
            let audited = store.auditing(vec![refused]);
            let recorded = audited.record_login(t, "auth0|a1", "con_db", "a1", update).await.unwrap();
            assert!(matches!(recorded, Recorded::Blocked));
        }
        assert_eq!(outbox_ids(&store).await.len(), 2, "a login not recorded writes no event");
        cleanup(store, backend).await;
    }
}

/// A wrong password's failure carries the login's event where it is written once the
/// outcome is known (SQLite), and the failure that blocks carries the block's event, once;
/// on PostgreSQL, which counted the failure before the check, the settlement writes nothing
/// and says which failure blocked.
#[tokio::test]
async fn a_failures_audit_events_go_with_its_count_and_the_block_once() {
    for (store, backend) in stores("a_failures_audit_events_go_with_its_count_and_the_block_once").await {
        let (t, who, at) = ("t1", "auth0|dave", "203.0.113.8");
        let sqlite = matches!(backend, Backend::Sqlite { .. });
        let block = audit_event(t, who);
        let mut failed = Vec::new();
        let mut blocked_at = Vec::new();
        for i in 1..=MAX_CONSECUTIVE_FAILURES {
            let a = store.admit(t, who, at, MAX_CONSECUTIVE_FAILURES, None).await.unwrap().expect("admitted");
            let event = audit_event(t, "");
            failed.push(event.id.clone());
            let audited = store.auditing(vec![event]);
            let settled = audited.settle(a, Outcome::WrongCredentials, Some(&block)).await.unwrap();
            assert_eq!(settled.audited, sqlite, "failure {i}");
            if settled.blocked {
                blocked_at.push(i);
            }
        }
        assert_eq!(blocked_at, [MAX_CONSECUTIVE_FAILURES], "the tenth failure blocks, and only it");
        assert!(store.admit(t, who, at, MAX_CONSECUTIVE_FAILURES, None).await.unwrap().is_none());
        let expected = if sqlite {
            let mut all = failed.clone();
            all.push(block.id.clone());
            all
        } else {
            Vec::new()
        };
        assert_eq!(outbox_ids(&store).await, expected);
        // Unblocked, the count starts over: the next block is recorded again.
        store.unblock(t, who, MAX_CONSECUTIVE_FAILURES).await.unwrap();
        let (mut again, second) = (0, audit_event(t, who));
        for _ in 0..MAX_CONSECUTIVE_FAILURES {
            let a = store.admit(t, who, at, MAX_CONSECUTIVE_FAILURES, None).await.unwrap().expect("admitted");
            if store.settle(a, Outcome::WrongCredentials, Some(&second)).await.unwrap().blocked {
                again += 1;
            }
        }
        assert_eq!(again, 1);
        cleanup(store, backend).await;
    }
}
