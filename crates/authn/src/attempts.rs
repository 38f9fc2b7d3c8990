//! Login attempts in flight, counted in this process: how brute-force protection stays
//! exact on SQLite without a durable write before every password check.
//!
//! The rule of [`bruteforce`](crate::bruteforce) counts an admitted attempt as a failure in
//! advance, so that of 20 simultaneous wrong attempts exactly 10 are checked. PostgreSQL,
//! which several authenticator replicas may share, keeps that advance count in the table:
//! admission is one atomic upsert, a durable write on every login. SQLite has one writer,
//! this process, so the advance count can live here instead, beside the stored count:
//!
//! - the table holds only *settled* failures (each written, durably, before the caller is
//!   told its credentials were wrong), so a crash loses no acknowledged failure;
//! - this map holds, per tenant, user and address, the attempts admitted and not yet
//!   settled, with the stored count read once while any are in flight.
//!
//! An attempt is admitted while `stored + in_flight < max`. Reading the stored count and
//! writing a failure take the key's *turn* (an async lock), so neither interleaves with the
//! other; the password check runs outside the turn. The login's first read (its identity)
//! also reads the stored count, outside any turn; it is used only if no failure was written
//! anywhere since (an epoch counter tells), and read again within the turn otherwise. An entry lives only while an attempt
//! for its key is in flight or waiting, so the map is bounded by the calls in progress. An
//! [`Attempt`] dropped unsettled (the caller went away mid-check) gives its place back, as a
//! check that did not happen does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Whose attempts: tenant, user key (see [`bruteforce`](crate::bruteforce)), address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The tenant.
    pub tenant: String,
    /// The user's id, or the login name of a user who does not exist.
    pub user_key: String,
    /// The caller's address.
    pub address: String,
}

/// What this process knows of one key.
#[derive(Debug, Default)]
struct Local {
    /// The settled failures in the table; `None` until read, or after something changed
    /// the table outside a turn (a success, an unblock).
    stored: Option<u32>,
    /// Attempts admitted and not yet settled.
    in_flight: u32,
}

#[derive(Debug, Default)]
struct Cell {
    turn: Arc<tokio::sync::Mutex<()>>,
    local: Mutex<Local>,
}

impl Cell {
    fn local(&self) -> MutexGuard<'_, Local> {
        // Every update below is a single assignment: a poisoned lock holds no half-state.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Cells = Mutex<HashMap<Key, Arc<Cell>>>;

/// The attempts in flight in this process.
#[derive(Debug, Default)]
pub struct InFlight {
    cells: Arc<Cells>,
    /// Counts the failures written: a count read outside a turn holds while this has not
    /// moved since before the read (writes that lower a count only make it cautious).
    epoch: AtomicU64,
}

/// A key's turn: held while its stored count is read or a failure is written.
pub struct Turn {
    key: Key,
    cell: Arc<Cell>,
    cells: Arc<Cells>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        evict(&self.cells, &self.key, &self.cell);
    }
}

impl Turn {
    /// The stored count, if this process knows it.
    pub fn stored(&self) -> Option<u32> {
        self.cell.local().stored
    }

    /// Admits an attempt if `stored + in_flight < max`, recording `stored` (from
    /// [`stored`](Self::stored), or read from the table within this turn); `None` if the
    /// key is blocked.
    pub fn admit(&self, stored: u32, max: u32) -> Option<Attempt> {
        let mut local = self.cell.local();
        local.stored = Some(stored);
        if stored.saturating_add(local.in_flight) >= max {
            return None;
        }
        local.in_flight += 1;
        drop(local);
        Some(Attempt {
            key: self.key.clone(),
            stored,
            cell: self.cell.clone(),
            cells: self.cells.clone(),
            settled: false,
        })
    }

    /// Records a failure just written to the table within this turn, settling `attempt`.
    pub fn failed(&self, mut attempt: Attempt) {
        let mut local = self.cell.local();
        local.stored = local.stored.map(|n| n.saturating_add(1));
        local.in_flight = local.in_flight.saturating_sub(1);
        drop(local);
        attempt.settled = true;
    }
}

/// One admitted attempt, counted until it is settled or dropped.
#[derive(Debug)]
pub struct Attempt {
    key: Key,
    stored: u32,
    cell: Arc<Cell>,
    cells: Arc<Cells>,
    settled: bool,
}

impl Attempt {
    /// Whose attempt this is.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The settled failures stored when this attempt was admitted.
    pub fn stored_at_admission(&self) -> u32 {
        self.stored
    }

    /// Settles a success: the table's count was cleared, outside any turn, so it is read
    /// again before the next admission.
    pub fn succeeded(mut self) {
        let mut local = self.cell.local();
        local.stored = None;
        local.in_flight = local.in_flight.saturating_sub(1);
        drop(local);
        self.settled = true;
    }

    /// Settles an attempt whose check did not happen: its place is given back.
    pub fn not_checked(self) {
        // Dropping does exactly that.
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            let mut local = self.cell.local();
            local.in_flight = local.in_flight.saturating_sub(1);
        }
        evict(&self.cells, &self.key, &self.cell);
    }
}

/// Removes the entry of `key` if nothing but the map and `cell` (about to go) refers to it
/// and no attempt is in flight.
fn evict(cells: &Cells, key: &Key, cell: &Arc<Cell>) {
    let mut map = cells.lock().unwrap_or_else(PoisonError::into_inner);
    // References are taken under the map's lock, so none can appear while it is held.
    if Arc::strong_count(cell) == 2 && cell.local().in_flight == 0 {
        map.remove(key);
    }
}

impl InFlight {
    /// No attempt in flight.
    pub fn new() -> Self {
        Self::default()
    }

    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut map = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone()).or_default().clone()
    }

    /// The epoch of failure writes: take it before reading a count outside a turn.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Moves the epoch on, after a failure was written (and before its turn ends).
    pub fn failure_written(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits for `key`'s turn.
    pub async fn turn(&self, key: &Key) -> Turn {
        let cell = self.cell(key);
        let guard = cell.turn.clone().lock_owned().await;
        Turn { key: key.clone(), cell, cells: self.cells.clone(), _turn: guard }
    }

    /// Forgets the stored counts of the keys that match, after the table changed outside
    /// their turns (an unblock, a password change, a deletion): they are read again.
    pub fn reload(&self, matches: impl Fn(&Key) -> bool) {
        let map = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, cell) in map.iter().filter(|(k, _)| matches(k)) {
            cell.local().stored = None;
        }
    }

    /// Attempts in flight for `key`.
    pub fn in_flight(&self, key: &Key) -> u32 {
        let map = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map_or(0, |c| c.local().in_flight)
    }

    /// How many keys have an entry (attempts in flight or waiting for a turn).
    pub fn len(&self) -> usize {
        self.cells.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no key has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: &str) -> Key {
        Key { tenant: "t".into(), user_key: "auth0|u".into(), address: address.into() }
    }

    #[tokio::test]
    async fn admission_counts_attempts_in_flight() {
        let f = InFlight::new();
        let k = key("203.0.113.1");
        let mut held = Vec::new();
        for _ in 0..3 {
            let turn = f.turn(&k).await;
            held.push(turn.admit(7, 10).expect("7 stored and fewer than 3 in flight"));
        }
        let turn = f.turn(&k).await;
        assert_eq!(turn.stored(), Some(7));
        assert!(turn.admit(7, 10).is_none(), "7 stored and 3 in flight make 10");
        drop(turn);
        assert_eq!(f.in_flight(&k), 3);
        assert_eq!(f.in_flight(&key("198.51.100.1")), 0, "addresses are counted apart");
        // A failure written within the turn moves from in flight to stored.
        let turn = f.turn(&k).await;
        turn.failed(held.pop().unwrap());
        assert_eq!((turn.stored(), f.in_flight(&k)), (Some(8), 2));
        drop(turn);
        // A success forgets the stored count; an abandoned attempt gives its place back.
        held.pop().unwrap().succeeded();
        drop(held);
        assert!(f.is_empty(), "nothing in flight, nothing kept");
    }

    #[tokio::test]
    async fn entries_live_only_while_attempts_do() {
        let f = InFlight::new();
        let k = key("203.0.113.2");
        drop(f.turn(&k).await);
        assert!(f.is_empty(), "a turn given up (the read failed) leaves nothing");
        let turn = f.turn(&k).await;
        assert!(turn.admit(10, 10).is_none());
        drop(turn);
        assert!(f.is_empty(), "a refused attempt leaves nothing");
        let turn = f.turn(&k).await;
        let a = turn.admit(0, 10).unwrap();
        drop(turn);
        f.reload(|k| k.user_key == "auth0|u");
        assert_eq!(f.turn(&k).await.stored(), None, "reloaded: read again at the next admission");
        assert_eq!(f.len(), 1);
        drop(a);
        assert!(f.is_empty());
    }
}
