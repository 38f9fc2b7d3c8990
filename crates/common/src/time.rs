//! Time as the stores keep it (unix microseconds in a `BIGINT`) and as the contracts carry it.

use std::time::{SystemTime, UNIX_EPOCH};

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
    fn round_trip() {
        for m in [0, 1, 1_700_000_000_123_456, -5] {
            assert_eq!(from_timestamp(&to_timestamp(m)), Some(m));
        }
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: 1, nanos: -1 }), None);
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }
}
