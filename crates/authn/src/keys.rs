//! A tenant's signing keys as the service uses them: sealed under the master key in the
//! store, opened once and kept in memory for a few seconds (so that a login does not
//! decrypt and parse a private key), created on first need, rotated on request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_common::seal::MasterKey;

use crate::store::{Store, StoreError, StoredKey};
use crate::tokens::{Algorithm, Lifetimes, SigningKey};

/// The label binding sealed signing keys to their use.
const SEAL_LABEL: &[u8] = b"postern.authn.v1/signing-key";

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
}

/// The keys of every tenant.
pub struct KeyRing {
    store: Store,
    master: MasterKey,
    lifetimes: Lifetimes,
    cache: Mutex<Cache>,
}

fn to_system(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl KeyRing {
    /// Keys kept in `store`, sealed with `master`.
    pub fn new(store: Store, master: MasterKey, lifetimes: Lifetimes) -> Self {
        Self { store, master, lifetimes, cache: Mutex::new(Cache::default()) }
    }

    /// The token lifetimes (a retired key stays published for the longest).
    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The tenant's published keys, current first; empty when it has none yet.
    pub async fn keys(&self, tenant: &str) -> Result<Arc<Vec<SigningKey>>, KeyError> {
        let forgotten = {
            let cache = self.cache();
            if let Some((at, keys)) = cache.tenants.get(tenant)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(keys.clone());
            }
            cache.forgotten
        };
        let now = SystemTime::now();
        let max = self.lifetimes.max();
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

    /// The tenant's current key, creating the first one (RS256) when it has none. The
    /// caller must know that the tenant exists.
    pub async fn current(&self, tenant: &str) -> Result<SigningKey, KeyError> {
        if let Some(k) = self.keys(tenant).await?.iter().find(|k| k.is_current()) {
            return Ok(k.clone());
        }
        let key = SigningKey::generate_async(Algorithm::Rs256, SystemTime::now()).await?;
        match self.store.add_signing_key(tenant, &self.seal(tenant, &key)?, to_micros(key.created), true).await {
            Ok(()) => {}
            // Another replica or call created the first key meanwhile: use that one.
            Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(tenant);
        self.keys(tenant)
            .await?
            .iter()
            .find(|k| k.is_current())
            .cloned()
            .ok_or_else(|| KeyError::Store(StoreError::Corrupt("no current signing key after creating one".into())))
    }

    /// Makes a new current key with `alg`, retiring the current one. Answers the new key and
    /// the retired one.
    pub async fn rotate(&self, tenant: &str, alg: Algorithm) -> Result<(SigningKey, Option<SigningKey>), KeyError> {
        let now = SystemTime::now();
        let previous = self.keys(tenant).await?.iter().find(|k| k.is_current()).cloned();
        let key = SigningKey::generate_async(alg, now).await?;
        self.store.add_signing_key(tenant, &self.seal(tenant, &key)?, to_micros(now), false).await?;
        // Keys that left the key set long ago are of no use to anyone.
        let _ = self
            .store
            .prune_signing_keys(tenant, to_micros(now) - to_micros(UNIX_EPOCH + self.lifetimes.max()) * 2)
            .await;
        self.forget(tenant);
        let retired = previous.map(|mut k| {
            k.retire(now);
            k
        });
        Ok((key, retired))
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
            stored.retire_time.map(to_system),
        )?)
    }
}
