//! Brute-force protection: the counting rule, as a pure state machine that the store
//! applies atomically.
//!
//! The rule (after Auth0's): after [`MAX_CONSECUTIVE_FAILURES`] consecutive failed logins
//! for one user from one address, that user is blocked from that address, even with the
//! right password, until `UnblockUser` or a password change. A successful login resets the
//! count. Other addresses are unaffected, so an attacker cannot lock a user out everywhere.
//!
//! To be exact under concurrent attempts, an attempt is *admitted* before its password is
//! checked, and admission counts it as a failure in advance: at most
//! [`MAX_CONSECUTIVE_FAILURES`] attempts are ever checked, however many arrive at once (of
//! 20 simultaneous wrong attempts, exactly 10 are checked and refused as wrong credentials
//! and 10 are refused as blocked). Afterwards the attempt is *settled*: a success resets
//! the count, a wrong password keeps the failure already counted, and an attempt whose
//! check did not happen (the source was unavailable) gives its failure back.
//!
//! On PostgreSQL, which several authenticator replicas may share, admission is one
//! statement, atomic on its own, with `max` = [`MAX_CONSECUTIVE_FAILURES`]:
//!
//! ```sql
//! INSERT INTO login_failures (tenant, user_key, address, failures) VALUES ($1, $2, $3, 1)
//! ON CONFLICT (tenant, user_key, address)
//!   DO UPDATE SET failures = login_failures.failures + 1 WHERE login_failures.failures < $4
//! RETURNING failures;          -- no row: blocked
//! ```
//!
//! Success is `DELETE … WHERE tenant, user_key, address`; giving a failure back is
//! `UPDATE … SET failures = failures - 1 WHERE … AND failures > 0`; `UnblockUser` and a
//! password change are `DELETE … WHERE tenant, user_key`.
//!
//! On SQLite, whose file one process owns, the advance count lives in that process
//! ([`attempts`](crate::attempts)) and the table holds the settled failures only, each
//! written before its caller is answered: the same rule, without a durable write before
//! every password check.
//!
//! The `user_key` should be the user's id when the user exists and the normalized login
//! name (connection and lowercased email or username) when it does not, so that unknown
//! users are blocked just the same and the answer does not reveal which users exist.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// How many consecutive failures from one address block a user from that address.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// The count kept for one user and one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Consecutive failures, including the attempts admitted and not yet settled.
    pub failures: u32,
}

/// Whether an attempt may check its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the password, then [`settle`](Counter::settle) with the outcome.
    Admitted,
    /// Refuse without checking: RESOURCE_EXHAUSTED, even if the password is right.
    Blocked,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The credentials were right: the count starts over.
    Success,
    /// The credentials were wrong (or the user unknown): the failure stays counted.
    WrongCredentials,
    /// The check did not happen (the source was unavailable, an internal error): the
    /// failure counted in advance is given back.
    NotChecked,
}

impl Counter {
    /// Whether the user is blocked from this address.
    pub fn is_blocked(self, max_failures: u32) -> bool {
        self.failures >= max_failures
    }

    /// Admits an attempt or refuses it, with the counter to store: an admitted attempt is
    /// counted as a failure until it is settled.
    pub fn admit(self, max_failures: u32) -> (Admission, Counter) {
        if self.is_blocked(max_failures) {
            (Admission::Blocked, self)
        } else {
            (Admission::Admitted, Counter { failures: self.failures + 1 })
        }
    }

    /// The counter after an admitted attempt ended with `outcome`.
    pub fn settle(self, outcome: Outcome) -> Counter {
        match outcome {
            Outcome::Success => Counter::default(),
            Outcome::WrongCredentials => self,
            Outcome::NotChecked => Counter { failures: self.failures.saturating_sub(1) },
        }
    }
}

/// The counting rule over an in-memory map from a key (user and address) to its counter,
/// each step under one lock: the reference the SQL store must match, and enough for a
/// single-process deployment.
#[derive(Debug)]
pub struct MemoryCounters<K> {
    max_failures: u32,
    counters: Mutex<HashMap<K, Counter>>,
}

impl<K: Hash + Eq> MemoryCounters<K> {
    /// Counters that block after `max_failures` consecutive failures.
    pub fn new(max_failures: u32) -> Self {
        MemoryCounters { max_failures, counters: Mutex::new(HashMap::new()) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<K, Counter>) -> R) -> R {
        // A panic while holding the lock cannot leave a counter half-written.
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut map)
    }

    /// Admits an attempt for `key` or refuses it.
    pub fn admit(&self, key: K) -> Admission {
        self.with(|map| {
            let counter = map.entry(key).or_default();
            let (admission, next) = counter.admit(self.max_failures);
            *counter = next;
            admission
        })
    }

    /// Settles an admitted attempt for `key`.
    pub fn settle(&self, key: &K, outcome: Outcome) {
        self.with(|map| {
            if let Some(counter) = map.get_mut(key) {
                *counter = counter.settle(outcome);
                if counter.failures == 0 {
                    map.remove(key);
                }
            }
        });
    }

    /// Whether `key` is blocked.
    pub fn is_blocked(&self, key: &K) -> bool {
        self.with(|map| map.get(key).is_some_and(|c| c.is_blocked(self.max_failures)))
    }

    /// Forgets every counter whose key matches (`UnblockUser`, a password change) and
    /// answers how many of them were blocking.
    pub fn unblock(&self, mut matches: impl FnMut(&K) -> bool) -> usize {
        self.with(|map| {
            let mut blocked = 0;
            map.retain(|key, counter| {
                if !matches(key) {
                    return true;
                }
                if counter.is_blocked(self.max_failures) {
                    blocked += 1;
                }
                false
            });
            blocked
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MAX: u32 = MAX_CONSECUTIVE_FAILURES;

    /// Runs `attempts` (true = right password) one after the other and compares the answers
    /// (`'u'` wrong credentials, `'b'` blocked, `'s'` success) with `expected`.
    #[track_caller]
    fn check(attempts: &str, expected: &str) {
        let mut counter = Counter::default();
        let mut got = String::new();
        for a in attempts.chars() {
            let (admission, next) = counter.admit(MAX);
            counter = next;
            got.push(match admission {
                Admission::Blocked => 'b',
                Admission::Admitted if a == 'R' => {
                    counter = counter.settle(Outcome::Success);
                    's'
                }
                Admission::Admitted if a == '?' => {
                    counter = counter.settle(Outcome::NotChecked);
                    '?'
                }
                Admission::Admitted => {
                    counter = counter.settle(Outcome::WrongCredentials);
                    'u'
                }
            });
        }
        assert_eq!(got, expected, "attempts {attempts}");
    }

    #[test]
    fn counting_rule() {
        // W = wrong password, R = right password, ? = the check did not happen.
        check("WWWWWWWWW", "uuuuuuuuu");
        check("WWWWWWWWWR", "uuuuuuuuus");
        check("WWWWWWWWWW", "uuuuuuuuuu");
        check("WWWWWWWWWWR", "uuuuuuuuuub");
        check("WWWWWWWWWWWRR", "uuuuuuuuuubbb");
        // Only consecutive failures count.
        check("WWWWWWWWWRWWWWWWWWWW", "uuuuuuuuusuuuuuuuuuu");
        check("WWWWWWWWWRWWWWWWWWWWR", "uuuuuuuuusuuuuuuuuuub");
        // An unchecked attempt is not a failure.
        check("WWWWWWWWW?????R", "uuuuuuuuu?????s");
        check("??", "??");
    }

    #[test]
    fn admission_counts_in_advance() {
        let (admission, counter) = Counter { failures: 9 }.admit(MAX);
        assert_eq!(admission, Admission::Admitted);
        assert!(counter.is_blocked(MAX), "the tenth admitted attempt blocks those after it");
        assert_eq!(counter.admit(MAX), (Admission::Blocked, counter));
        assert_eq!(Counter::default().settle(Outcome::NotChecked), Counter::default());
    }

    #[test]
    fn concurrent_attempts_are_counted_exactly() {
        let counters = Arc::new(MemoryCounters::new(MAX));
        let barrier = Arc::new(std::sync::Barrier::new(20));
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (counters, barrier) = (counters.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let key = ("auth0|alice", "203.0.113.7");
                    let admission = counters.admit(key);
                    if admission == Admission::Admitted {
                        std::thread::yield_now(); // the password check
                        counters.settle(&key, Outcome::WrongCredentials);
                    }
                    admission
                })
            })
            .collect();
        let answers: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let admitted = answers.iter().filter(|a| **a == Admission::Admitted).count();
        assert_eq!(admitted, 10, "{answers:?}");
        assert!(counters.is_blocked(&("auth0|alice", "203.0.113.7")));
        // Another address is not blocked; neither is another user.
        assert_eq!(counters.admit(("auth0|alice", "198.51.100.1")), Admission::Admitted);
        assert_eq!(counters.admit(("auth0|bob", "203.0.113.7")), Admission::Admitted);

        // UnblockUser: every address of the user, and only that user.
        assert_eq!(counters.unblock(|(user, _)| *user == "auth0|alice"), 1);
        assert!(!counters.is_blocked(&("auth0|alice", "203.0.113.7")));
        assert_eq!(counters.admit(("auth0|alice", "203.0.113.7")), Admission::Admitted);
        assert_eq!(counters.unblock(|(user, _)| *user == "auth0|bob"), 0);
    }

    #[test]
    fn success_forgets_the_counter() {
        let counters = MemoryCounters::new(MAX);
        let key = ("auth0|alice", "203.0.113.7");
        assert_eq!(counters.admit(key), Admission::Admitted);
        counters.settle(&key, Outcome::Success);
        assert_eq!(counters.with(|map| map.len()), 0);
    }
}
