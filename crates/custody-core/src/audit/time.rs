//! RFC 3339 UTC timestamps, on `jiff`.
//!
//! The audit log always writes one fixed shape, `YYYY-MM-DDTHH:MM:SS.mmmZ`,
//! so timestamps in the file sort lexicographically in time order. The parser
//! takes any RFC 3339 timestamp a human may type for `custody audit --since`
//! (with or without a fraction, `Z` or an offset, converted to UTC); times
//! before 1970 and anything else are `None`.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// Formats `t` as RFC 3339 UTC with millisecond precision,
/// e.g. `2026-05-17T09:30:00.042Z`. Times before 1970 print as the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let t = t.max(UNIX_EPOCH);
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::MAX);
    // Truncated (not rounded) to the millisecond, as the file always had.
    let ms = Timestamp::from_millisecond(ts.as_millisecond()).unwrap_or(ts);
    format!("{ms:.3}")
}

/// Parses an RFC 3339 timestamp. Returns `None` for anything else and for
/// times before 1970.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let ts: Timestamp = s.parse().ok()?;
    let t = SystemTime::from(ts);
    (t >= UNIX_EPOCH).then_some(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::time::Duration;

    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(format_rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn round_trips_over_many_days() {
        for day in (0..200_000u64).step_by(37) {
            let t = UNIX_EPOCH + Duration::from_millis(day * 86_400_000 + day * 7_919 % 86_400_000);
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "day {day}");
        }
    }

    #[test]
    fn parses_variants_and_rejects_junk() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(t));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20+00:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z"),
            Some(t + Duration::from_millis(500))
        );
        // Another offset is the same instant in UTC.
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(t));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.1234567890Z",
            "2023-11-14T22:13:2xZ",
            "+023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
