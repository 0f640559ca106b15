//! Durations as people write them: `90s`, `15m`, `1h`, `2d`, `1h30m`.

use std::time::Duration;

/// Parses `2s`, `15m`, `1h`, `1d` and sums like `1h30m` (also jiff's
/// other friendly forms, `1h 30m`, `90 minutes`, `1.5h`, and ISO 8601's
/// `PT15M`); a day is 24 hours, months and years are refused (not a fixed
/// length). A bare number is refused too (is `15` seconds or minutes?),
/// as are negative durations. `None` on anything else.
pub fn parse(text: &str) -> Option<Duration> {
    use jiff::{Span, SpanRelativeTo, Unit};
    let span: Span = text.trim().parse().ok()?;
    if span.is_negative() {
        return None;
    }
    let secs = span
        .total((Unit::Second, SpanRelativeTo::days_are_24_hours()))
        .ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Formats a duration in the same notation (`1h30m`, `45s`, `0s`).
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if s >= unit {
            out.push_str(&format!("{}{name}", s / unit));
            s %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("PT15M"), Some(Duration::from_secs(900)));
        for bad in [
            "",
            "15",
            "m",
            "1x",
            "-1s",
            "1mo",
            "1y",
            "99999999999999999999d",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in [0, 1, 59, 60, 61, 3600, 5400, 90_061] {
            let d = Duration::from_secs(s);
            assert_eq!(parse(&format(d)), Some(d), "{}", format(d));
        }
    }
}
