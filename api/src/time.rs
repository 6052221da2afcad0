//! Timestamps for people and tools: the API carries milliseconds since the Unix epoch
//! (`*_at_ms`, exact and easy to compare) and the same instant as RFC 3339 text (`*_at`),
//! which is what people read and what Docker's API and most tooling expect.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond
/// (`2026-12-01T23:19:47.123Z`). An instant out of range gives the epoch.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_167_187_123), "2026-12-01T23:19:47.123Z");
        assert!(rfc3339(u64::MAX).starts_with("1970"), "out of range gives the epoch, no panic");
    }
}
