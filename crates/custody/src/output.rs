//! Printing helpers shared by the subcommands.

use std::io::Write;

use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC), the
/// audit log's calendar arithmetic in a table-friendly shape.
pub fn timestamp(secs: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    // format_rfc3339 gives `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    let full = custody_core::audit::format_rfc3339(t);
    match (full.get(..10), full.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time}Z"),
        _ => full,
    }
}

/// Shortens `text` to at most `max` characters for a table cell.
pub fn cell(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut s: String = one_line.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// `text` with every character that could rewrite a terminal (C0/C1
/// controls, ESC, DEL, bidi overrides and isolates, zero-width characters)
/// shown as a visible escape, so what the human reads is what will run.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if hidden {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(timestamp(1_795_000_000), "2026-11-18 11:06:40Z");
    }

    #[test]
    fn cells() {
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdef", 4), "abc…");
    }
}
