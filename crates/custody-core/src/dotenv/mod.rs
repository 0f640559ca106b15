//! Parsing `.env` files for `custody import`.
//!
//! The syntax is the common subset of docker-compose, python-dotenv and Node
//! dotenv, so a file that works with those tools imports the same values:
//!
//! - `NAME=value`, optionally prefixed with `export `; spaces and tabs around
//!   the name and the `=` are ignored. Blank lines and lines starting with `#`
//!   are ignored.
//! - Unquoted values run to the end of the line, are trimmed of spaces and
//!   tabs, and end at an inline comment: a `#` preceded by a space or tab
//!   (`A=x#y` is `x#y`, `A=x #y` is `x`). No escapes, no expansion.
//! - `'single'` and `` `backtick` `` quoted values are literal and may span
//!   lines. `"double"` quoted values may span lines and understand `\n`, `\r`,
//!   `\t`, `\"`, `\\` and `\$`; any other backslash pair is kept as both bytes.
//!   After the closing quote only spaces, tabs and a `# comment` may follow.
//! - CRLF line endings are accepted everywhere; inside quoted values a CRLF is
//!   read as LF, like python-dotenv (universal newlines) and Node dotenv do,
//!   so a PEM key saved on Windows imports the same as on Unix. A lone CR is
//!   kept. A UTF-8 byte order mark at the start is ignored.
//! - Values are bytes: non-UTF-8 is imported as is.
//!
//! Non-features, on purpose: no `${VAR}` expansion (a `$` is just a byte, so
//! what is imported is exactly what the file says), no `NAME: value` YAML-ish
//! form, no old-Mac CR-only line endings.
//!
//! Anything that does not parse is skipped and reported with its line number
//! and a reason built from the line number and the rule only: never from the
//! value, and not even from a rejected name, because a "name" on a broken line
//! is often a fragment of a secret (a base64 line of a PEM key, say). A bad
//! entry never takes the rest of the file with it: parsing resumes on the line
//! after the one where the entry started.
//!
//! When a name appears more than once the last value wins, as in every shell
//! and dotenv loader; each earlier occurrence is reported as a
//! [`SkipReason::Duplicate`] so the user sees what was overridden.

use std::collections::HashMap;
use std::fmt;

use secrecy::SecretSlice;
use zeroize::Zeroizing;

use crate::names::{VAR_NAME_RULE, VarName};

/// Largest input [`parse`] accepts, in bytes.
///
/// Callers should check a file's size against this before reading it (and
/// read at most this much), so an accidental `custody import ENV /dev/zero`
/// or a huge log file is refused without allocating. [`parse`] checks it
/// again and parses nothing if it is exceeded. Real `.env` files are a few
/// kilobytes; 16 MiB leaves room for many embedded certificates.
pub const MAX_INPUT_LEN: usize = 16 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a `.env` file contained: the entries to import and what was skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid entries in file order, at most one per name (the last one).
    pub entries: Vec<Entry>,
    /// Everything not imported, ordered by line number.
    pub skipped: Vec<Skipped>,
}

impl Parsed {
    /// How many entries were dropped because the same name came later.
    pub fn duplicate_count(&self) -> usize {
        self.skipped
            .iter()
            .filter(|s| matches!(s.reason, SkipReason::Duplicate { .. }))
            .count()
    }
}

/// One `NAME=value` entry.
///
/// `Debug` shows the name and line only; the value prints as `[REDACTED]`.
pub struct Entry {
    /// The variable name, checked against [`VAR_NAME_RULE`].
    pub name: VarName,
    /// The value bytes, zeroized on drop.
    pub value: SecretSlice<u8>,
    /// 1-based line where the entry starts.
    pub line: usize,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name.as_str())
            .field("value", &"[REDACTED]")
            .field("line", &self.line)
            .finish()
    }
}

/// A line (or multi-line entry) that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line where the skipped entry starts.
    pub line: usize,
    /// Why it was skipped.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Why an entry was skipped. The text never contains a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A non-blank, non-comment line without `=`.
    MissingEquals,
    /// The text before `=` is not a valid variable name. The name itself is
    /// not kept: on a broken line it may be part of a secret.
    InvalidName,
    /// A quoted value has no closing quote before the end of the file.
    UnterminatedQuote,
    /// Something other than spaces, tabs or a `# comment` follows a closing
    /// quote (often a sign that quotes were paired up wrongly).
    TrailingText,
    /// The same name is set again later; the later value wins.
    Duplicate {
        /// The repeated name (names are not secret).
        name: VarName,
        /// Line of the entry whose value is kept.
        kept_line: usize,
    },
    /// The input is larger than [`MAX_INPUT_LEN`]; nothing was parsed.
    InputTooLarge {
        /// Size of the input in bytes.
        len: usize,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::MissingEquals => f.write_str("missing '=' (expected NAME=value)"),
            SkipReason::InvalidName => write!(f, "invalid variable name: use {VAR_NAME_RULE}"),
            SkipReason::UnterminatedQuote => {
                f.write_str("unterminated quote: no closing quote before the end of the file")
            }
            SkipReason::TrailingText => {
                f.write_str("unexpected text after the closing quote (only a # comment may follow)")
            }
            SkipReason::Duplicate { name, kept_line } => {
                write!(
                    f,
                    "{name} is set again on line {kept_line}; that value is kept"
                )
            }
            SkipReason::InputTooLarge { len } => write!(
                f,
                "input is {len} bytes, over the {MAX_INPUT_LEN}-byte limit; nothing was parsed"
            ),
        }
    }
}

/// Parses the bytes of a `.env` file. Never panics; linear in the input size.
///
/// See the [module docs](self) for the syntax. Inputs over [`MAX_INPUT_LEN`]
/// yield no entries and one [`SkipReason::InputTooLarge`].
pub fn parse(input: &[u8]) -> Parsed {
    if input.len() > MAX_INPUT_LEN {
        return Parsed {
            entries: Vec::new(),
            skipped: vec![Skipped {
                line: 1,
                reason: SkipReason::InputTooLarge { len: input.len() },
            }],
        };
    }
    let input = input.strip_prefix(BOM).unwrap_or(input);

    let mut all = Vec::new();
    let mut skipped = Vec::new();
    let mut pos = 0;
    let mut line = 1;
    while pos < input.len() {
        let step = parse_entry(input, pos);
        match step.outcome {
            Outcome::Blank => {}
            Outcome::Entry(name, value) => all.push(Entry { name, value, line }),
            Outcome::Skip(reason) => skipped.push(Skipped { line, reason }),
        }
        // Every step consumes at least one whole line, so this terminates.
        pos = step.resume;
        line += step.lines;
    }

    let entries = last_wins(all, &mut skipped);
    skipped.sort_by_key(|s| s.line);
    Parsed { entries, skipped }
}

/// Keeps the last entry per name, in file order, and reports the others.
fn last_wins(all: Vec<Entry>, skipped: &mut Vec<Skipped>) -> Vec<Entry> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in &all {
        last.insert(e.name.as_str().to_owned(), e.line);
    }
    let mut entries = Vec::with_capacity(last.len());
    for e in all {
        match last.get(e.name.as_str()) {
            Some(&kept_line) if kept_line != e.line => skipped.push(Skipped {
                line: e.line,
                reason: SkipReason::Duplicate {
                    name: e.name,
                    kept_line,
                },
            }),
            // Dropping the overridden entry zeroizes its value.
            _ => entries.push(e),
        }
    }
    entries
}

/// The result of parsing one entry (one or more lines).
struct Step {
    outcome: Outcome,
    /// Byte offset of the next line to parse.
    resume: usize,
    /// Number of lines consumed (at least 1).
    lines: usize,
}

enum Outcome {
    Blank,
    Entry(VarName, SecretSlice<u8>),
    Skip(SkipReason),
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_blank(b)).count();
    s.get(n..).unwrap_or_default()
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| is_blank(b)).count();
    s.get(..s.len() - n).unwrap_or_default()
}

/// Offset of the `\n` ending the line that contains `pos`, or the input end.
fn line_end(input: &[u8], pos: usize) -> usize {
    match input
        .get(pos..)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
    {
        Some(k) => pos + k,
        None => input.len(),
    }
}

/// The line starting at `start`, without its `\n` and one trailing `\r`.
fn line_text(input: &[u8], start: usize, end: usize) -> &[u8] {
    let text = input.get(start..end).unwrap_or_default();
    text.strip_suffix(b"\r").unwrap_or(text)
}

fn parse_entry(input: &[u8], start: usize) -> Step {
    let end = line_end(input, start);
    // Where to resume if this entry stays on one line or is rejected.
    let next = Step {
        outcome: Outcome::Blank,
        resume: end.saturating_add(1),
        lines: 1,
    };
    let text = line_text(input, start, end);
    let body = trim_start(text);
    if body.is_empty() || body.first() == Some(&b'#') {
        return next;
    }
    let body = match body.strip_prefix(b"export") {
        Some(rest) if rest.first().is_some_and(|&b| is_blank(b)) => trim_start(rest),
        _ => body,
    };
    let Some(eq) = body.iter().position(|&b| b == b'=') else {
        return Step {
            outcome: Outcome::Skip(SkipReason::MissingEquals),
            ..next
        };
    };
    let raw_name = trim_end(body.get(..eq).unwrap_or_default());
    let name = std::str::from_utf8(raw_name)
        .ok()
        .and_then(|s| VarName::new(s).ok());
    let after_eq = body.get(eq + 1..).unwrap_or_default();
    let value_text = trim_start(after_eq);

    // Offset of the value's first byte in `input`: `value_text` is a suffix
    // of this line's text, which starts at `start`.
    let value_at = start + (text.len() - value_text.len());
    let value = match value_text.first().copied() {
        Some(q @ (b'"' | b'\'' | b'`')) => quoted(input, value_at, q),
        _ => Ok(Value {
            bytes: Zeroizing::new(unquoted(after_eq).to_vec()),
            resume: next.resume,
            lines: 1,
        }),
    };

    // The value is parsed even when the name is bad, so that a well-formed
    // multi-line value is skipped as a whole instead of its inner lines being
    // read as entries of their own.
    match (name, value) {
        (Some(name), Ok(v)) => Step {
            outcome: Outcome::Entry(name, secret_from(&v.bytes)),
            resume: v.resume,
            lines: v.lines,
        },
        (None, Ok(v)) => Step {
            outcome: Outcome::Skip(SkipReason::InvalidName),
            resume: v.resume,
            lines: v.lines,
        },
        (None, Err(_)) => Step {
            outcome: Outcome::Skip(SkipReason::InvalidName),
            ..next
        },
        (Some(_), Err(reason)) => Step {
            outcome: Outcome::Skip(reason),
            ..next
        },
    }
}

/// Copies value bytes into a secret box of exactly their length, so no
/// spare capacity holding a copy is left behind.
fn secret_from(bytes: &[u8]) -> SecretSlice<u8> {
    let boxed: Box<[u8]> = bytes.into();
    SecretSlice::from(boxed)
}

/// A parsed value and where the next entry starts.
struct Value {
    bytes: Zeroizing<Vec<u8>>,
    resume: usize,
    lines: usize,
}

/// An unquoted value: everything after `=` up to an inline comment, trimmed.
fn unquoted(after_eq: &[u8]) -> &[u8] {
    let mut cut = after_eq.len();
    for (i, w) in after_eq.windows(2).enumerate() {
        if let [prev, b'#'] = w
            && is_blank(*prev)
        {
            cut = i;
            break;
        }
    }
    trim_start(trim_end(after_eq.get(..cut).unwrap_or_default()))
}

/// A quoted value whose opening quote `q` is at `open`.
fn quoted(input: &[u8], open: usize, q: u8) -> Result<Value, SkipReason> {
    let from = open + 1;
    let close = if q == b'"' {
        find_double_close(input, from)
    } else {
        input
            .get(from..)
            .and_then(|s| s.iter().position(|&b| b == q))
            .map(|k| from + k)
    }
    .ok_or(SkipReason::UnterminatedQuote)?;

    let end = line_end(input, close);
    let rest = trim_start(line_text(input, close + 1, end));
    if !(rest.is_empty() || rest.first() == Some(&b'#')) {
        return Err(SkipReason::TrailingText);
    }

    let span = input.get(from..close).unwrap_or_default();
    let bytes = if q == b'"' {
        decode_double(span)
    } else {
        decode_literal(span)
    };
    Ok(Value {
        bytes,
        resume: end.saturating_add(1),
        lines: 1 + span.iter().filter(|&&b| b == b'\n').count(),
    })
}

/// Offset of the first unescaped `"` at or after `from`.
///
/// Scanning stays linear over a whole file: an opening `"` is always preceded
/// by `=` or a blank, never by a backslash, so any scan reaching the next
/// entry's opening quote stops there.
fn find_double_close(input: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(&b) = input.get(i) {
        match b {
            // Skip the escaped byte, whatever it is (an escaped `"` included).
            b'\\' => i = i.saturating_add(2),
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Decodes the inside of a double-quoted value.
///
/// The output is never longer than `span`, so it is allocated once and never
/// reallocated (a reallocation would leave an unzeroized copy behind).
fn decode_double(span: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(span.len()));
    let mut i = 0;
    while let Some(&b) = span.get(i) {
        let crlf_at = |k: usize| span.get(k) == Some(&b'\r') && span.get(k + 1) == Some(&b'\n');
        if b == b'\\' {
            let (decoded, used): (&[u8], usize) = match span.get(i + 1).copied() {
                Some(b'n') => (b"\n", 2),
                Some(b'r') => (b"\r", 2),
                Some(b't') => (b"\t", 2),
                Some(b'"') => (b"\"", 2),
                Some(b'\\') => (b"\\", 2),
                Some(b'$') => (b"$", 2),
                // Unknown escapes are kept as both bytes; a CRLF after the
                // backslash is still a newline.
                Some(b'\r') if crlf_at(i + 1) => (b"\\\n", 3),
                Some(c) => {
                    out.push(b'\\');
                    out.push(c);
                    i += 2;
                    continue;
                }
                // Unreachable for spans from `find_double_close` (a final
                // backslash would have escaped the closing quote).
                None => (b"\\", 1),
            };
            out.extend_from_slice(decoded);
            i += used;
        } else if crlf_at(i) {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// The inside of a single- or backtick-quoted value: literal, CRLF read as LF.
fn decode_literal(span: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(span.len()));
    let mut i = 0;
    while let Some(&b) = span.get(i) {
        if b == b'\r' && span.get(i + 1) == Some(&b'\n') {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Writes `value` as a double-quoted dotenv value that [`parse`] reads back
/// as exactly the same bytes.
///
/// The result is a single line: `\`, `"`, `$`, LF, CR and tab are escaped
/// (`$` so that loaders which expand variables leave it alone); every other
/// byte, non-UTF-8 included, is written as is.
pub fn quote(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let escape = |b: u8| -> Option<u8> {
        match b {
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            b'$' => Some(b'$'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            _ => None,
        }
    };
    // Sized up front so the buffer holding the value never reallocates.
    let len = 2 + value
        .iter()
        .map(|&b| if escape(b).is_some() { 2 } else { 1 })
        .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(b'"');
    for &b in value {
        match escape(b) {
            Some(e) => {
                out.push(b'\\');
                out.push(e);
            }
            None => out.push(b),
        }
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests;
