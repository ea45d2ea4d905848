//! The one clock: monotonic time comes from tokio (so tests can pause it), wall time from here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the wall clock; 0 if the clock is before 1970.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The last instant RFC 3339 can write with four year digits: 9999-12-31T23:59:59Z.
const LAST_SHOWABLE_MS: u64 = 253_402_300_799_999;

/// RFC 3339 in whole seconds, UTC. Timestamps come from files and stores too, so a value out of
/// range is written as such instead of overflowing.
pub(crate) fn rfc3339_ms(unix_ms: u64) -> String {
    if unix_ms > LAST_SHOWABLE_MS {
        return format!("(out of range: {unix_ms} ms)");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// Now, as `rfc3339_ms` writes it.
pub(crate) fn rfc3339_now() -> String {
    rfc3339_ms(unix_now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_in_range_and_never_overflow() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_ms(LAST_SHOWABLE_MS), "9999-12-31T23:59:59Z");
        assert!(rfc3339_ms(LAST_SHOWABLE_MS + 1).contains("out of range"));
        assert!(rfc3339_ms(u64::MAX).contains("out of range"));
    }
}
