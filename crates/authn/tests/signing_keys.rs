//! A tenant's signing keys through rotations (issue 10, item 2): a key is in the published
//! key set for `PUBLISH_LEAD` before it signs anything, on a clock the test moves; the same
//! tests on SQLite and PostgreSQL (`POSTERN_TEST_POSTGRES_URL`; skipped with a reason when
//! unset, a failure under `POSTERN_REQUIRE_PEERS=1`).

use std::time::Duration;

use postern_authn::keys::{KeyError, KeyRing, PUBLISH_LEAD};
use postern_authn::store::Store;
use postern_authn::tokens::{Algorithm, Lifetimes, SigningKey};
use postern_common::db::DbLocation;
use postern_common::seal::MasterKey;
use postern_common::testing::TestDatabase;
use postern_common::time::Clock;

const T: &str = "fabrikam";
const T0: i64 = 1_800_000_000 * 1_000_000;

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

/// The kids a relying party finds in the key set at the ring's now.
async fn published(ring: &KeyRing) -> Vec<String> {
    let keys = ring.keys(T).await.unwrap();
    let set = postern_authn::tokens::jwks(&keys, ring.now(), ring.published_after_retirement());
    set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect()
}

/// The key that signs now, checked against the rule: it was published `PUBLISH_LEAD`
/// before now (or is the tenant's very first key, which nobody can have cached a key set
/// without), and it is in the key set.
async fn signing(ring: &KeyRing, first: &str) -> SigningKey {
    ring.forget(T);
    let key = ring.current(T).await.unwrap();
    assert!(published(ring).await.contains(&key.kid), "the signing key {} is not published", key.kid);
    if key.kid != first {
        assert!(key.created + PUBLISH_LEAD <= ring.now(), "{} signs before it was published for the lead", key.kid);
    }
    key
}

#[tokio::test]
async fn a_key_is_published_before_it_signs() {
    for (store, backend) in stores("a_key_is_published_before_it_signs").await {
        let clock = Clock::manual(T0);
        let ring = KeyRing::new(store.clone(), MasterKey::generate().unwrap(), Lifetimes::DEFAULT, clock.clone());
        let ring = &ring;

        // The first keys: one signs, the next one is published beside it.
        let first = ring.current(T).await.unwrap();
        let keys = ring.keys(T).await.unwrap();
        assert_eq!(keys.len(), 2);
        let next = keys.iter().find(|k| k.is_next()).expect("a next key").clone();
        assert!(!next.is_current(ring.now()));
        assert_eq!(published(ring).await.len(), 2);

        // A rotation 10 s later: the next key is 10 s old, so it signs only at 80 s.
        clock.advance(Duration::from_secs(10));
        let r = ring.rotate(T, Algorithm::Rs256).await.unwrap();
        assert_eq!(r.promoted.kid, next.kid);
        assert_eq!(r.promoted.activates, Some(next.created + PUBLISH_LEAD));
        assert_eq!(r.retired.as_ref().map(|k| k.kid.clone()), Some(first.kid.clone()));
        assert!(published(ring).await.contains(&r.next.kid));
        assert_eq!(signing(ring, &first.kid).await.kid, first.kid, "the old key signs until the activation");

        // A second rotation while the first is pending is refused, naming when.
        match ring.rotate(T, Algorithm::Rs256).await {
            Err(KeyError::RotationPending(at)) => assert_eq!(Some(at), r.promoted.activates),
            other => panic!("expected RotationPending, got {:?}", other.map(|r| r.promoted.kid)),
        }

        // Just before and at the activation.
        clock.advance(PUBLISH_LEAD - Duration::from_secs(10) - Duration::from_micros(1));
        assert_eq!(signing(ring, &first.kid).await.kid, first.kid);
        clock.advance(Duration::from_micros(1));
        assert_eq!(signing(ring, &first.kid).await.kid, next.kid);
        // The retired key stays published (its tokens are valid), the new next key too.
        let kids = published(ring).await;
        assert!(kids.contains(&first.kid) && kids.contains(&r.next.kid), "{kids:?}");

        // The next key has now been published long enough: the next rotation is immediate.
        clock.advance(PUBLISH_LEAD);
        let r2 = ring.rotate(T, Algorithm::Rs256).await.unwrap();
        assert_eq!(r2.promoted.kid, r.next.kid);
        assert_eq!(r2.promoted.activates, Some(ring.now()));
        assert_eq!(signing(ring, &first.kid).await.kid, r.next.kid);

        // Another algorithm than the next key's: a new key, published now, signs in 80 s.
        clock.advance(PUBLISH_LEAD);
        let r3 = ring.rotate(T, Algorithm::EdDsa).await.unwrap();
        assert_eq!(r3.promoted.alg, Algorithm::EdDsa);
        assert_eq!(r3.promoted.activates, Some(ring.now() + PUBLISH_LEAD));
        assert_eq!(r3.next.alg, Algorithm::EdDsa);
        assert!(!published(ring).await.contains(&r2.next.kid), "the replaced next key signed nothing; it goes");
        assert_eq!(signing(ring, &first.kid).await.kid, r.next.kid);
        clock.advance(PUBLISH_LEAD);
        assert_eq!(signing(ring, &first.kid).await.alg, Algorithm::EdDsa);

        // The first key leaves the key set once its tokens have all expired.
        clock.advance(ring.published_after_retirement());
        assert!(!published(ring).await.contains(&first.kid));
        cleanup(store, backend).await;
    }
}

#[tokio::test]
async fn concurrent_rotations_schedule_one_key() {
    for (store, backend) in stores("concurrent_rotations_schedule_one_key").await {
        let clock = Clock::manual(T0);
        let master = MasterKey::generate().unwrap();
        // Two replicas over one store.
        let a = KeyRing::new(store.clone(), master.clone(), Lifetimes::DEFAULT, clock.clone());
        let b = KeyRing::new(store.clone(), master.clone(), Lifetimes::DEFAULT, clock.clone());
        let first = a.current(T).await.unwrap();
        clock.advance(PUBLISH_LEAD);
        let (ra, rb) = tokio::join!(a.rotate(T, Algorithm::Rs256), b.rotate(T, Algorithm::Rs256));
        // Either they overlapped, and exactly one won while the other found it pending, or the
        // store ran them one after the other: then the first promoted the published next key
        // at once and the second, meeting a next key published just now, scheduled it.
        match (&ra, &rb) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
                assert!(matches!(e, KeyError::RotationPending(_)), "{e}");
            }
            (Ok(x), Ok(y)) => {
                let now = clock.now();
                let mut activates = [x.promoted.activates, y.promoted.activates];
                activates.sort();
                assert_eq!(activates, [Some(now), Some(now + PUBLISH_LEAD)], "one promoted, one scheduled");
            }
            (Err(x), Err(y)) => panic!("no rotation won: {x}; {y}"),
        }
        let keys = a.keys(T).await.unwrap();
        let now = clock.now();
        assert_eq!(keys.iter().filter(|k| k.is_current(now)).count(), 1);
        assert_eq!(keys.iter().filter(|k| k.is_next()).count(), 1);
        assert_ne!(a.current(T).await.unwrap().kid, first.kid);
        cleanup(store, backend).await;
    }
}
