//! Times in whole milliseconds, as the wire and the operator reports carry
//! them: saturating, never panicking.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `duration` in whole milliseconds (`u64::MAX` beyond).
pub fn whole_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `at` in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, whole_ms)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate() {
        assert_eq!(whole_ms(Duration::from_micros(2_999)), 2);
        assert_eq!(whole_ms(Duration::MAX), u64::MAX);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_secs(1)), 1000);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
