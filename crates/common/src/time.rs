//! Time as the stores keep it (unix microseconds in a `BIGINT`) and as the contracts carry it,
//! and the [`Clock`] that time rules ask, so that tests move time instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the time comes from: the system clock, or a manual clock a test sets and advances.
/// Cloning shares the clock.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A manual clock that reads `start` (unix microseconds) until moved.
    pub fn manual(start: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start))))
    }

    /// Now, in microseconds since the unix epoch.
    pub fn now_micros(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => now_micros(),
        }
    }

    /// Now, as a `SystemTime`.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(u64::try_from(self.now_micros()).unwrap_or(0))
    }

    /// Moves a manual clock forward by `by`; the system clock cannot be moved (no-op).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(i64::try_from(by.as_micros()).unwrap_or(i64::MAX), Ordering::SeqCst);
        }
    }
}

/// Now, in microseconds since the unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A stored time as a protobuf timestamp.
pub fn to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf timestamp as stored time; `None` if it is out of range.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds.checked_mul(1_000_000)?.checked_add(i64::from(ts.nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000_000);
        let shared = clock.clone();
        assert_eq!(clock.now_micros(), 1_000_000);
        shared.advance(Duration::from_secs(60));
        assert_eq!(clock.now_micros(), 61_000_000);
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(61));
        let system = Clock::system();
        let before = now_micros();
        system.advance(Duration::from_secs(3600));
        assert!(system.now_micros() - before < 3_600_000_000);
    }

    #[test]
    fn round_trip() {
        for m in [0, 1, 1_700_000_000_123_456, -5] {
            assert_eq!(from_timestamp(&to_timestamp(m)), Some(m));
        }
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: 1, nanos: -1 }), None);
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }
}
