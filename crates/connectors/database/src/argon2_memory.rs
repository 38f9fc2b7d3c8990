//! Argon2's working memory, kept between hashes.
//!
//! Argon2id at the configured parameters works in 19 MiB. The `argon2` crate allocates that
//! zeroed for every hash and frees it after, which costs a 19 MiB memset and, whenever the
//! allocator hands the pages back to the system, thousands of page faults. Argon2 writes
//! every block before it reads it, so the memory needs no clearing between hashes
//! (`a_used_area_gives_the_same_hash` checks it), and is kept here instead, one area per
//! hashing turn (the turns bound how many hashes run at once). Areas unused for [`IDLE`]
//! are cleared and freed, so an idle server holds none.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use argon2::Block;
// Tokio's clock, which tests can pause and move (outside tests it is the system's).
use tokio::time::Instant;

/// How long unused areas are kept.
pub const IDLE: Duration = Duration::from_secs(30);

/// The areas of the process.
pub static AREAS: Areas = Areas::new(IDLE);

/// Kept working areas of one size.
pub struct Areas {
    kept: Mutex<Kept>,
    /// Whether a task that frees idle areas is running.
    reaper: AtomicBool,
    idle: Duration,
}

struct Kept {
    /// Areas free for the next hash.
    free: Vec<Vec<Block>>,
    /// When an area was last given back.
    last_used: Option<Instant>,
}

impl Areas {
    /// No areas yet; those kept are freed after `idle` unused.
    pub const fn new(idle: Duration) -> Self {
        Areas { kept: Mutex::new(Kept { free: Vec::new(), last_used: None }), reaper: AtomicBool::new(false), idle }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on an area of `blocks` blocks: a kept one when there is one of that size, a
    /// new one otherwise. Areas of `keep` blocks (the configured parameters) are kept
    /// afterwards, at most `max_kept` of them; others (a hash made with older parameters,
    /// verified once before its rehash) are freed at once.
    pub fn with_area<R>(&self, blocks: usize, keep: usize, max_kept: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let reused = if blocks == keep { self.kept().free.pop() } else { None };
        let mut area = reused.unwrap_or_else(|| vec![Block::default(); blocks]);
        let result = f(&mut area);
        if blocks == keep {
            let mut kept = self.kept();
            kept.last_used = Some(Instant::now());
            if kept.free.len() < max_kept {
                kept.free.push(area);
                return result;
            }
        }
        clear(&mut area);
        result
    }

    /// Frees the kept areas once they have been unused for the idle time, from a task on
    /// the current runtime (started unless one is running). Call after a hash, from async
    /// code.
    pub fn free_when_idle(&'static self) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            loop {
                let since = self.kept().last_used.map_or(self.idle, |t| t.elapsed());
                if since < self.idle {
                    tokio::time::sleep(self.idle - since).await;
                    continue;
                }
                let areas = std::mem::take(&mut self.kept().free);
                self.reaper.store(false, Ordering::Release);
                for mut area in areas {
                    clear(&mut area);
                }
                return;
            }
        });
    }

    /// How many areas are kept now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.kept().free.len()
    }
}

/// Overwrites an area before it is freed: it held values derived from passwords.
fn clear(area: &mut [Block]) {
    area.fill(Block::default());
    // Keeps the stores from being dropped as dead before the free.
    std::hint::black_box(area);
}

#[cfg(test)]
mod tests {
    use argon2::{Algorithm, Argon2, Params, Version};

    use super::*;

    fn argon() -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(256, 2, 1, None).unwrap())
    }

    #[test]
    fn a_used_area_gives_the_same_hash() {
        let areas = Areas::new(IDLE);
        let blocks = argon().params().block_count();
        let hash = |password: &[u8]| {
            let mut out = [0u8; 32];
            areas
                .with_area(blocks, blocks, 1, |area| {
                    argon().hash_password_into_with_memory(password, b"saltsaltsalt", &mut out, area)
                })
                .unwrap();
            out
        };
        let mut fresh = [0u8; 32];
        argon().hash_password_into(b"correct horse", b"saltsaltsalt", &mut fresh).unwrap();
        assert_eq!(hash(b"correct horse"), fresh, "a new area");
        assert_eq!(areas.count(), 1);
        assert_ne!(hash(b"battery staple"), fresh, "the area now holds another password's blocks");
        assert_eq!(hash(b"correct horse"), fresh, "a used area");
        assert_eq!(areas.count(), 1, "the area is reused, not added to");
    }

    #[test]
    fn areas_are_kept_up_to_the_limit_and_only_of_the_kept_size() {
        let areas = Areas::new(IDLE);
        areas.with_area(8, 8, 2, |_| {
            areas.with_area(8, 8, 2, |_| areas.with_area(8, 8, 2, |_| areas.with_area(16, 8, 2, |_| ())))
        });
        assert_eq!(areas.count(), 2);
    }

    /// On tokio's paused clock: each sleep moves time exactly, with no real waiting.
    #[tokio::test(start_paused = true)]
    async fn idle_areas_are_freed() {
        static SHORT: Areas = Areas::new(Duration::from_millis(100));
        SHORT.with_area(8, 8, 2, |_| ());
        SHORT.free_when_idle();
        SHORT.free_when_idle();
        assert_eq!(SHORT.count(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        SHORT.with_area(8, 8, 2, |_| ());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(SHORT.count(), 1, "used again within the idle time: kept");
        tokio::time::sleep(Duration::from_millis(71)).await;
        assert_eq!(SHORT.count(), 0, "freed after the idle time");
        SHORT.with_area(8, 8, 2, |_| ());
        SHORT.free_when_idle();
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert_eq!(SHORT.count(), 1, "kept until the idle time is up");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(SHORT.count(), 0, "a later reaper frees again");
    }
}
