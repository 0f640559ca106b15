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

/// Shortens `text` to at most `max` characters for a table cell, every
/// hidden character shown as an escape first ([`shown`]).
pub fn cell(text: &str, max: usize) -> String {
    cut(&shown(text), max)
}

/// Longest field printed whole (argv elements, paths, names); longer ones
/// are cut with a marker that says how much was left out.
pub const MAX_FIELD: usize = 300;

/// [`shown`], cut at [`MAX_FIELD`] characters with a visible marker.
pub fn field(text: &str) -> String {
    let s = shown(text);
    let n = s.chars().count();
    if n <= MAX_FIELD {
        return s;
    }
    let mut out: String = s.chars().take(MAX_FIELD).collect();
    out.push_str(&format!("…[{} more characters]", n - MAX_FIELD));
    out
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Whether `c` would not show as itself on a terminal: C0 and C1 controls,
/// ESC, DEL, line and paragraph separators, bidi embeddings, overrides,
/// isolates and marks, zero-width and other invisible or blank-looking
/// format characters, tag characters.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{17b4}'
                | '\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// `text` with every character that could rewrite or hide part of a
/// terminal line ([`is_hidden`]) shown as a visible escape (`\x1b`,
/// `\u202e`), and backslashes doubled so an escape the text spells out is
/// told apart from one custody wrote. What the human reads is what runs.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_hidden(c) {
            let n = u32::from(c);
            if n < 0x100 {
                out.push_str(&format!("\\x{n:02x}"));
            } else if n < 0x10000 {
                out.push_str(&format!("\\u{n:04x}"));
            } else {
                out.push_str(&format!("\\U{n:08x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `text` holds anything [`shown`] escapes.
pub fn has_hidden(text: &str) -> bool {
    text.chars().any(is_hidden)
}

/// Dynamic credentials not yet revoked; an *irrevocable* one with its reason.
pub fn credentials(creds: &[custody_broker::protocol::CredentialView]) {
    use custody_broker::protocol::CredentialState;
    if creds.is_empty() {
        return;
    }
    println!("dynamic credentials: {}", creds.len());
    for c in creds {
        let shown = match c.state {
            CredentialState::Live => "live",
            CredentialState::Revoking => "revoking",
            CredentialState::Irrevocable => "IRREVOCABLE",
        };
        print!(
            "  {shown} {} ({}) of lease {}, expires {}",
            c.credential, c.source, c.lease_id, c.expires
        );
        match &c.reason {
            Some(r) => println!(
                "\n    since {}, {} attempts: {r} (retrying)",
                c.since.as_deref().unwrap_or_default(),
                c.attempts
            ),
            None => println!(),
        }
    }
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
        assert_eq!(cell("a\nb", 10), "a\\x0ab");
        assert_eq!(cell("abcdef", 4), "abc…");
    }

    /// One row per character class the agent could use to rewrite or hide
    /// part of what the human reads.
    #[test]
    fn every_hidden_class_is_shown_as_an_escape() {
        for (class, raw, visible) in [
            ("C0 control", "a\rb", "a\\x0db"),
            ("escape (CSI)", "\x1b[2K\x1b[1A", "\\x1b[2K\\x1b[1A"),
            ("newline and tab", "a\nb\tc", "a\\x0ab\\x09c"),
            ("DEL", "a\x7fb", "a\\x7fb"),
            ("C1 control (CSI)", "a\u{9b}2Kb", "a\\x9b2Kb"),
            ("bidi override", "a\u{202e}b", "a\\u202eb"),
            ("bidi isolate", "a\u{2066}b\u{2069}", "a\\u2066b\\u2069"),
            ("Arabic letter mark", "a\u{61c}b", "a\\u061cb"),
            ("zero-width space", "a\u{200b}b", "a\\u200bb"),
            ("zero-width joiner", "a\u{200d}b", "a\\u200db"),
            ("word joiner", "a\u{2060}b", "a\\u2060b"),
            ("line separator", "a\u{2028}b", "a\\u2028b"),
            ("soft hyphen", "a\u{ad}b", "a\\xadb"),
            ("byte order mark", "\u{feff}a", "\\ufeffa"),
            ("Hangul filler", "a\u{3164}b", "a\\u3164b"),
            ("tag character", "a\u{e0041}b", "a\\U000e0041b"),
            ("variation selector", "a\u{fe0f}b", "a\\ufe0fb"),
            ("backslash", "a\\x1b", "a\\\\x1b"),
            ("plain Unicode", "päss 日本 ✓", "päss 日本 ✓"),
        ] {
            assert_eq!(shown(raw), visible, "{class}");
            assert!(!shown(raw).chars().any(is_hidden), "{class}");
        }
    }

    #[test]
    fn long_fields_are_cut_with_a_marker() {
        let long = "x".repeat(MAX_FIELD + 20);
        let f = field(&long);
        assert!(f.ends_with("…[20 more characters]"), "{f}");
        assert_eq!(field("short"), "short");
    }
}
