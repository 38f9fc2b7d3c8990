//! A tenant's signing keys as the service uses them: sealed under the master key in the
//! store, opened once and kept in memory for a few seconds (so that a login does not
//! decrypt and parse a private key), created on first need, rotated on request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_common::seal::MasterKey;
use postern_common::time::Clock;

use crate::store::{Promoted, RotationRefused, Store, StoreError, StoredKey};
use crate::tokens::{Algorithm, Lifetimes, SigningKey};

/// The label binding sealed signing keys to their use.
pub(crate) const SEAL_LABEL: &[u8] = b"postern.authn.v1/signing-key";

/// Checks that `master` opens the signing keys already stored, so that a start with another
/// master key is refused at once instead of failing every login later. `Ok` for a store with
/// no keys yet.
pub async fn check_master_key(store: &Store, master: &MasterKey) -> Result<(), KeyError> {
    match store.any_signing_key().await? {
        None => Ok(()),
        Some((tenant, stored)) => {
            master.open(SEAL_LABEL, &[&tenant, &stored.kid], &stored.sealed_key)?;
            Ok(())
        }
    }
}

/// How long opened keys are reused before the store is read again: the delay after which
/// a rotation made by another replica is seen.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// How long a key is published before it may sign: the key set's HTTP lifetime
/// (`max-age`), plus the gateway's copy of it, plus this cache on every replica. A relying
/// party that fetched the key set just before a rotation already holds the key that signs
/// after it (issue 10, item 2: a key used before it was published could not be verified).
pub const PUBLISH_LEAD: Duration = Duration::from_secs(60 + 10 + 10);

/// What can go wrong with a tenant's keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be generated, opened or parsed.
    #[error(transparent)]
    Token(#[from] crate::tokens::Error),
    /// A sealed key did not open (wrong master key?).
    #[error("a signing key could not be decrypted: {0}")]
    Seal(#[from] postern_common::seal::SealError),
    /// A rotation already scheduled a key that does not sign yet.
    #[error("a rotation is already scheduled")]
    RotationPending(SystemTime),
    /// The tenant's keys are being removed after its deletion (a namesake created in that
    /// moment gets its own keys once it is done).
    #[error("the tenant's signing keys are being replaced after a deletion; retry")]
    Settling,
}

/// Opened keys of a tenant and when they were read.
type Cached = (Instant, Arc<Vec<SigningKey>>);

/// The opened keys, and how many times any were forgotten: a read of the store that began
/// before a [`KeyRing::forget`] must not put back what the forget dropped (for
/// [`CACHE_TTL`] a rotation would go unused, or a deleted tenant's keys stay published).
#[derive(Default)]
struct Cache {
    forgotten: u64,
    tenants: HashMap<String, Cached>,
    /// Tenants whose deletion was heard but is not applied to the store yet, with when it
    /// was heard: their keys made before then are not theirs any more (a namesake created
    /// meanwhile must not publish or sign with them).
    deleting: HashMap<String, SystemTime>,
}

/// The keys of every tenant.
///
/// A tenant has a *current* key that signs, a *next* key published beside it that signs
/// nothing yet, and the retired keys whose tokens may still be valid. A rotation makes the
/// next key sign once it has been published for [`PUBLISH_LEAD`] (at once when it has, the
/// usual case), retires the current key at that moment, and publishes a new next key.
pub struct KeyRing {
    store: Store,
    master: MasterKey,
    lifetimes: Lifetimes,
    clock: Clock,
    cache: Mutex<Cache>,
}

fn to_system(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl KeyRing {
    /// Keys kept in `store`, sealed with `master`, on `clock`.
    pub fn new(store: Store, master: MasterKey, lifetimes: Lifetimes, clock: Clock) -> Self {
        Self { store, master, lifetimes, clock, cache: Mutex::new(Cache::default()) }
    }

    /// The token lifetimes (a retired key stays published for the longest).
    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// How long a retired key stays published: the longest token lifetime, plus the time a
    /// replica that has not seen the rotation yet may still sign with it.
    pub fn published_after_retirement(&self) -> Duration {
        self.lifetimes.max() + CACHE_TTL
    }

    /// Now, on the ring's clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The tenant's published keys (current, scheduled, next and retired alike), newest
    /// first; empty when it has none yet.
    pub async fn keys(&self, tenant: &str) -> Result<Arc<Vec<SigningKey>>, KeyError> {
        let keys = self.cached_or_stored(tenant).await?;
        let deleting = self.cache().deleting.get(tenant).copied();
        Ok(match deleting {
            Some(heard) => Arc::new(keys.iter().filter(|k| k.created >= heard).cloned().collect()),
            None => keys,
        })
    }

    /// A tenant's deletion was heard: until [`tenant_deleted`](Self::tenant_deleted), keys it
    /// made before now are neither published nor used.
    pub fn tenant_deleting(&self, tenant: &str) {
        let now = self.now();
        let mut cache = self.cache();
        if cache.deleting.len() >= 10_000 {
            cache.deleting.clear();
        }
        cache.deleting.insert(tenant.to_owned(), now);
        cache.forgotten += 1;
        cache.tenants.remove(tenant);
    }

    /// A tenant's deletion is applied to the store: its keys are gone from there.
    pub fn tenant_deleted(&self, tenant: &str) {
        let mut cache = self.cache();
        cache.deleting.remove(tenant);
        cache.forgotten += 1;
        cache.tenants.remove(tenant);
    }

    async fn cached_or_stored(&self, tenant: &str) -> Result<Arc<Vec<SigningKey>>, KeyError> {
        let forgotten = {
            let cache = self.cache();
            if let Some((at, keys)) = cache.tenants.get(tenant)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(keys.clone());
            }
            cache.forgotten
        };
        let now = self.now();
        let max = self.published_after_retirement();
        let mut keys = Vec::new();
        for stored in self.store.signing_keys(tenant).await? {
            let key = self.open(tenant, stored)?;
            if key.is_published(now, max) {
                keys.push(key);
            }
        }
        let keys = Arc::new(keys);
        let mut cache = self.cache();
        // Kept only if nothing was forgotten while the store was read.
        if cache.forgotten == forgotten {
            cache.tenants.insert(tenant.to_owned(), (Instant::now(), keys.clone()));
        }
        Ok(keys)
    }

    /// The key that signs now, if any.
    fn signing(keys: &[SigningKey], now: SystemTime) -> Option<&SigningKey> {
        keys.iter().filter(|k| k.is_current(now)).max_by_key(|k| k.activates)
    }

    /// The tenant's current key, creating its first keys (RS256, a current and a next one)
    /// when it has none. The caller must know that the tenant exists.
    pub async fn current(&self, tenant: &str) -> Result<SigningKey, KeyError> {
        let keys = self.keys(tenant).await?;
        if let Some(k) = Self::signing(&keys, self.now()) {
            return Ok(k.clone());
        }
        if keys.is_empty() {
            let now = self.now();
            let first = SigningKey::generate_async(Algorithm::Rs256, now).await?;
            let next = SigningKey::generate_async(Algorithm::Rs256, now).await?.into_next();
            match self.store.add_signing_keys(tenant, &[&self.seal(tenant, &first)?, &self.seal(tenant, &next)?]).await
            {
                // Another replica or call created the first keys meanwhile: use those.
                Ok(()) | Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.forget(tenant);
        let keys = self.keys(tenant).await?;
        match Self::signing(&keys, self.now()) {
            Some(k) => Ok(k.clone()),
            None if self.cache().deleting.contains_key(tenant) => Err(KeyError::Settling),
            None => Err(KeyError::Store(StoreError::Corrupt("the tenant has keys but none signs now".into()))),
        }
    }

    /// Makes sure a tenant whose keys predate next keys has one published (the key set's
    /// readers call this, so that it is published long before a rotation needs it).
    pub async fn ensure_next(&self, tenant: &str) -> Result<(), KeyError> {
        let keys = self.keys(tenant).await?;
        if keys.is_empty() || keys.iter().any(SigningKey::is_next) {
            return Ok(());
        }
        let alg = Self::signing(&keys, self.now()).map_or(Algorithm::Rs256, |k| k.alg);
        let next = SigningKey::generate_async(alg, self.now()).await?.into_next();
        match self.store.add_signing_keys(tenant, &[&self.seal(tenant, &next)?]).await {
            Ok(()) | Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(tenant);
        Ok(())
    }

    /// Rotates to a key of `alg`: the next key when it has `alg`, else a new key of `alg`.
    /// It signs as soon as it has been published for [`PUBLISH_LEAD`]; until then the
    /// current key signs, and retires at that moment. A new next key of `alg` is published.
    /// Answers the promoted key, the key it replaces, and the new next key.
    pub async fn rotate(&self, tenant: &str, alg: Algorithm) -> Result<Rotation, KeyError> {
        self.forget(tenant);
        let now = self.now();
        let keys = self.keys(tenant).await?;
        if let Some(pending) = keys.iter().filter(|k| k.is_scheduled(now)).filter_map(|k| k.activates).max() {
            return Err(KeyError::RotationPending(pending));
        }
        let previous = Self::signing(&keys, now).cloned();
        let next = keys.iter().find(|k| k.is_next() && k.alg == alg).cloned();
        let new_next = SigningKey::generate_async(alg, now).await?.into_next();
        let (mut promoted, replacement) = match next {
            Some(next) => (next, None),
            None => {
                let key = SigningKey::generate_async(alg, now).await?;
                let sealed = self.seal(tenant, &key)?;
                (key, Some(sealed))
            }
        };
        let activate_at = (promoted.created + PUBLISH_LEAD).max(now);
        let which = match &replacement {
            Some(sealed) => Promoted::Replacement(sealed),
            None => Promoted::Next(&promoted.kid),
        };
        let refused = self
            .store
            .rotate_signing_keys(tenant, to_micros(now), to_micros(activate_at), which, &self.seal(tenant, &new_next)?)
            .await;
        self.forget(tenant);
        match refused {
            Ok(()) => {}
            Err(RotationRefused::Pending(at)) => return Err(KeyError::RotationPending(to_system(at))),
            // Another rotation won the race: it is scheduled now.
            Err(RotationRefused::Raced) => {
                let at = self.keys(tenant).await?.iter().filter_map(|k| k.activates).max().unwrap_or(now);
                return Err(KeyError::RotationPending(at));
            }
            Err(RotationRefused::Store(e)) => return Err(e.into()),
        }
        // Keys that left the key set long ago are of no use to anyone.
        let horizon = now.checked_sub(self.published_after_retirement() * 2).unwrap_or(UNIX_EPOCH);
        let _ = self.store.prune_signing_keys(tenant, to_micros(horizon)).await;
        promoted.activates = Some(activate_at);
        let retired = previous.map(|mut k| {
            k.retire(activate_at);
            k
        });
        Ok(Rotation { promoted, retired, next: new_next })
    }

    /// Drops the opened keys of `tenant` (after its deletion).
    pub fn forget(&self, tenant: &str) {
        let mut cache = self.cache();
        cache.forgotten += 1;
        cache.tenants.remove(tenant);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seal(&self, tenant: &str, key: &SigningKey) -> Result<StoredKey, KeyError> {
        Ok(StoredKey {
            kid: key.kid.clone(),
            alg: key.alg.as_str().to_owned(),
            sealed_key: self.master.seal(SEAL_LABEL, &[tenant, &key.kid], key.private_pkcs8_der())?,
            create_time: to_micros(key.created),
            activate_time: key.activates.map(to_micros),
            retire_time: key.retired_at.map(to_micros),
        })
    }

    fn open(&self, tenant: &str, stored: StoredKey) -> Result<SigningKey, KeyError> {
        let der = self.master.open(SEAL_LABEL, &[tenant, &stored.kid], &stored.sealed_key)?;
        let alg: Algorithm = stored.alg.parse()?;
        Ok(SigningKey::from_stored(
            stored.kid,
            alg,
            der.to_vec(),
            to_system(stored.create_time),
            stored.activate_time.map(to_system),
            stored.retire_time.map(to_system),
        )?)
    }
}

/// What a rotation did.
pub struct Rotation {
    /// The key that signs from its `activates` on.
    pub promoted: SigningKey,
    /// The key that signed until then (none for a tenant without keys).
    pub retired: Option<SigningKey>,
    /// The new next key.
    pub next: SigningKey,
}
