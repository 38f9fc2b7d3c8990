//! Keeping a process's caches of tenant data true to the durable tenant event log.
//!
//! A cache that remembers something decided by the tenant service (who an API key belongs
//! to, a tenant's published documents) must stop using it as soon as the tenant service
//! changes it, in every process, not after a time to live. [`Coherence`] is what such a
//! cache consults: the process's follower of `WatchTenantEvents` bumps a tenant's
//! *generation* for each event about it, and says whether it is following the log at all.
//! A cache takes a [`Stamp`] before it asks the owner, stores the answer with it, and uses
//! the answer only while the stamp is still [`current`](Coherence::current): an answer
//! fetched before an event is never used after it, even if the fetch finished later, and
//! nothing is served from a cache while the log is not followed (a gap in the stream could
//! hide an event).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most tenants whose generation is remembered; past this every stamp is invalidated at
/// once (the epoch moves) and the map starts over, so that a flood of events cannot grow
/// memory without bound.
const MAX_TENANTS: usize = 100_000;

/// The shared state of a process's tenant-data caches. Cloning shares it.
#[derive(Clone, Default)]
pub struct Coherence(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Whether the event log is being followed now.
    live: AtomicBool,
    /// Moves when everything cached must go: the follower lost the stream, or the map of
    /// generations was reset.
    epoch: AtomicU64,
    /// How many events and gaps there were, all tenants together.
    changes: AtomicU64,
    /// Per tenant, how many events concerned it, and when the last one was heard.
    generations: Mutex<HashMap<String, (u64, Instant)>>,
}

/// When a cached answer was fetched, in the terms of [`Coherence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    epoch: u64,
    generation: u64,
}

impl std::fmt::Debug for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherence").field("live", &self.is_live()).finish_non_exhaustive()
    }
}

impl Coherence {
    /// A stamp for an answer about `tenant` fetched from now on; `None` when the log is not
    /// followed, in which case the answer must not be cached.
    pub fn stamp(&self, tenant: &str) -> Option<Stamp> {
        if !self.is_live() {
            return None;
        }
        let epoch = self.0.epoch.load(Ordering::SeqCst);
        let generation = self.generations().get(tenant).map_or(0, |g| g.0);
        Some(Stamp { epoch, generation })
    }

    /// Whether an answer about `tenant` stamped `stamp` may still be used.
    pub fn current(&self, tenant: &str, stamp: Stamp) -> bool {
        self.is_live() && self.stamp(tenant) == Some(stamp)
    }

    /// A counter that moves with every event and every gap, whichever tenant it concerns:
    /// for an answer whose tenant is known only once it arrives, compare the counter before
    /// asking with the counter when the answer is in, and stamp it only if they agree.
    pub fn changes(&self) -> u64 {
        self.0.changes.load(Ordering::SeqCst)
    }

    /// Whether the event log is followed now.
    pub fn is_live(&self) -> bool {
        self.0.live.load(Ordering::SeqCst)
    }

    /// The follower started (`true`) or stopped (`false`) following the log. Stopping
    /// invalidates every stamp.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.0.epoch.fetch_add(1, Ordering::SeqCst);
            self.0.changes.fetch_add(1, Ordering::SeqCst);
        }
        self.0.live.store(live, Ordering::SeqCst);
    }

    /// An event concerned `tenant`: what was cached about it goes.
    pub fn tenant_changed(&self, tenant: &str) {
        let mut generations = self.generations();
        if generations.len() >= MAX_TENANTS && !generations.contains_key(tenant) {
            generations.clear();
            self.0.epoch.fetch_add(1, Ordering::SeqCst);
        }
        let entry = generations.entry(tenant.to_owned()).or_insert((0, Instant::now()));
        *entry = (entry.0 + 1, Instant::now());
        self.0.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether no event about `tenant` was heard in the last `quiet`: an answer that comes
    /// from another service which follows the same log (and may hear an event a moment
    /// later than this process) is worth caching only then.
    pub fn settled(&self, tenant: &str, quiet: Duration) -> bool {
        self.generations().get(tenant).is_none_or(|g| g.1.elapsed() >= quiet)
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.0.generations.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_or_a_gap_retires_what_was_stamped_before() {
        let c = Coherence::default();
        assert_eq!(c.stamp("acme"), None, "nothing is cached before the log is followed");
        c.set_live(true);
        let a = c.stamp("acme").unwrap();
        let b = c.stamp("globex").unwrap();
        assert!(c.current("acme", a) && c.current("globex", b));
        let before = c.changes();
        c.tenant_changed("acme");
        assert_ne!(c.changes(), before);
        assert!(!c.current("acme", a), "an event about the tenant retires its answers");
        assert!(c.current("globex", b), "and only its own");
        assert!(!c.settled("acme", Duration::from_secs(60)) && c.settled("globex", Duration::from_secs(60)));
        assert!(c.settled("acme", Duration::ZERO));
        let a2 = c.stamp("acme").unwrap();
        assert!(c.current("acme", a2));
        c.set_live(false);
        assert!(!c.current("acme", a2) && !c.current("globex", b));
        c.set_live(true);
        assert!(!c.current("globex", b), "a gap in the stream retires everything stamped before it");
    }
}
