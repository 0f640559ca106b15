//! The forms of a secret value that the engine masks: the value itself and the
//! encodings a child process commonly prints it in.
//!
//! Every buffer here is a [`Form`] (zeroized on drop) allocated at its final
//! capacity up front, so no reallocation leaves an unzeroized copy behind.

use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use super::MIN_MASKABLE_LEN;

/// One pattern's bytes, zeroized on drop.
pub(crate) type Form = Zeroizing<Vec<u8>>;

/// Lines of a multi-line value shorter than this are not patterns of their
/// own: short lines (`-----END-----`, blank lines, `}`) are ordinary text.
pub(crate) const MIN_LINE_LEN: usize = 16;

/// Appends every form of `value` (and of its trimmed variant and its lines,
/// for multi-line values) that is at least [`MIN_MASKABLE_LEN`] bytes long.
/// Duplicates are left for the caller to remove.
pub(crate) fn all_forms(value: &[u8], out: &mut Vec<Form>) {
    full_forms(value, out);
    // A value read from a file often ends in a newline that the child never
    // prints next to the value itself (`echo "token: $T"` prints it inline).
    let trimmed = value.trim_ascii();
    if trimmed.len() != value.len() && trimmed.len() >= MIN_MASKABLE_LEN {
        full_forms(trimmed, out);
    }
    if value.contains(&b'\n') {
        // The masker searches the stream's joined view (`wrap.rs`), where a
        // multi-line value whose lines are wrapped base64 (a PEM body) reads
        // without those line breaks: its exact form (and its trimmed one)
        // there too, both as a line of its own and right after base64 or hex
        // text (where its first line break may be left out as well).
        for v in [value, trimmed] {
            for start in [0, super::wrap::MIN_WRAP] {
                let mut joined = Zeroizing::new(Vec::with_capacity(v.len() + 1));
                let mut breaks = std::collections::VecDeque::new();
                let view = super::wrap::Joiner::continuing(start).feed(v, &mut joined, &mut breaks);
                if !breaks.is_empty() {
                    push(out, Zeroizing::new(view.to_vec()));
                }
            }
        }
        for line in value.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // PEM armour lines carry no secret, and masking them would hide
            // every certificate header in the output.
            if line.len() < MIN_LINE_LEN
                || line.starts_with(b"-----BEGIN ")
                || line.starts_with(b"-----END ")
            {
                continue;
            }
            // A line printed on its own (`head -3 key.pem`, a log that
            // re-wraps the value) or inside a JSON / URL string.
            push(out, Zeroizing::new(line.to_vec()));
            json_forms(line, out);
            percent_forms(line, out);
        }
    }
}

/// The forms of a whole value.
fn full_forms(value: &[u8], out: &mut Vec<Form>) {
    push(out, Zeroizing::new(value.to_vec()));
    json_forms(value, out);
    percent_forms(value, out);
    push(out, hex(value, b"0123456789abcdef"));
    push(out, hex(value, b"0123456789ABCDEF"));
    base64_forms(value, out, &STANDARD, &STANDARD_NO_PAD);
    base64_forms(value, out, &URL_SAFE, &URL_SAFE_NO_PAD);
}

fn push(out: &mut Vec<Form>, form: Form) {
    if form.len() >= MIN_MASKABLE_LEN {
        out.push(form);
    }
}

fn hex(value: &[u8], digits: &[u8; 16]) -> Form {
    let mut buf = Zeroizing::new(Vec::with_capacity(value.len() * 2));
    for &b in value {
        buf.push(digits[usize::from(b >> 4)]);
        buf.push(digits[usize::from(b & 0x0f)]);
    }
    buf
}

/// Encodes `input` with `engine` into a zeroized buffer of the exact size.
fn encode(engine: &GeneralPurpose, input: &[u8], padded: bool) -> Form {
    let len = base64::encoded_len(input.len(), padded).unwrap_or(0);
    let mut buf = Zeroizing::new(vec![0u8; len]);
    let written = engine.encode_slice(input, &mut buf[..]).unwrap_or(0);
    buf.truncate(written);
    buf
}

/// The base64 forms: the value encoded on its own (padded and unpadded), and
/// the stable inner run of its encoding at each of the three byte alignments
/// it can have inside a larger encoded blob.
///
/// With `k` unknown bytes before the value (`k` = 0, 1, 2 modulo 3), the first
/// `ceil(8k / 6)` = 0, 2, 3 characters mix in bits of those bytes, and when the
/// value does not end on a 3-byte boundary the last character mixes in bits of
/// the byte after it; the characters in between depend on the value alone.
fn base64_forms(value: &[u8], out: &mut Vec<Form>, padded: &GeneralPurpose, bare: &GeneralPurpose) {
    push(out, encode(padded, value, true));
    push(out, encode(bare, value, false));
    for (k, drop_front) in [(0usize, 0usize), (1, 2), (2, 3)] {
        let mut shifted = Zeroizing::new(Vec::with_capacity(k + value.len()));
        shifted.resize(k, 0);
        shifted.extend_from_slice(value);
        let enc = encode(bare, &shifted, false);
        let drop_back = usize::from(shifted.len() % 3 != 0);
        if enc.len() >= drop_front + drop_back + MIN_MASKABLE_LEN {
            push(
                out,
                Zeroizing::new(enc[drop_front..enc.len() - drop_back].to_vec()),
            );
        }
    }
}

/// The bytes URL encoders leave alone: RFC 3986 unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes `value`, keeping the bytes `keep` accepts, with `+` for a
/// space when `plus` is set.
fn percent(value: &[u8], keep: fn(u8) -> bool, plus: bool, digits: &[u8; 16]) -> Form {
    let mut buf = Zeroizing::new(Vec::with_capacity(value.len() * 3));
    for &b in value {
        if keep(b) {
            buf.push(b);
        } else if plus && b == b' ' {
            buf.push(b'+');
        } else {
            buf.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 0x0f)],
            ]);
        }
    }
    buf
}

/// The percent-encodings of common encoders: everything but unreserved
/// (upper- and lower-case hex digits), form encoding (`+` for space),
/// JavaScript's `encodeURIComponent` (keeps `!'()*`) and Python's `quote`
/// (keeps `/`). Identical forms are skipped here to save work.
fn percent_forms(value: &[u8], out: &mut Vec<Form>) {
    if value.iter().all(|&b| unreserved(b)) {
        return; // every percent form is the value itself
    }
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    push(out, percent(value, unreserved, false, UPPER));
    push(out, percent(value, unreserved, false, LOWER));
    if value.contains(&b' ') {
        push(out, percent(value, unreserved, true, UPPER));
    }
    if value.iter().any(|b| b"!'()*".contains(b)) {
        push(
            out,
            percent(
                value,
                |b| unreserved(b) || b"!'()*".contains(&b),
                false,
                UPPER,
            ),
        );
    }
    if value.contains(&b'/') {
        push(
            out,
            percent(value, |b| unreserved(b) || b == b'/', false, UPPER),
        );
    }
    // Encoders that keep reserved characters: JavaScript's `encodeURI` and
    // Python requests' `requote_uri` (which keeps `%` too).
    const ENCODE_URI: &[u8] = b";,/?:@&=+$!*'()#";
    const REQUOTE_URI: &[u8] = b"!#$%&'()*+,/:;=?@[]~";
    let encode_uri: fn(u8) -> bool = |b| unreserved(b) || ENCODE_URI.contains(&b);
    let requote_uri: fn(u8) -> bool = |b| unreserved(b) || REQUOTE_URI.contains(&b);
    for (keeps, kept) in [(ENCODE_URI, encode_uri), (REQUOTE_URI, requote_uri)] {
        if value.iter().any(|b| keeps.contains(b)) {
            push(out, percent(value, kept, false, UPPER));
        }
    }
}

/// How a JSON encoder escapes a string.
#[derive(Clone, Copy)]
struct JsonStyle {
    /// `/` as `\/` (PHP, some Java encoders).
    slash: bool,
    /// Every non-ASCII character as `\uXXXX` (Python's default `ensure_ascii`).
    ascii: bool,
    /// `<`, `>`, `&`, U+2028 and U+2029 as `\u....` (Go's `encoding/json`).
    html: bool,
    /// Upper-case hex digits in `\u` escapes (Jackson) instead of lower-case.
    upper: bool,
}

/// The JSON string escapings of common encoders (the body of the string,
/// without the surrounding quotes).
fn json_forms(value: &[u8], out: &mut Vec<Form>) {
    // Every character as `\uXXXX` (obfuscating encoders, some loggers),
    // lower- and upper-case.
    for digits in [b"0123456789abcdef", b"0123456789ABCDEF"] {
        if let Some(form) = json_all_escaped(value, digits) {
            push(out, form);
        }
    }
    let plain = |b: &u8| (0x20..0x7f).contains(b) && !b"\"\\/<>&".contains(b);
    if value.iter().all(plain) {
        return; // every escaping is the value itself
    }
    let base = JsonStyle {
        slash: false,
        ascii: false,
        html: false,
        upper: false,
    };
    for style in [
        base,
        JsonStyle {
            upper: true,
            ..base
        },
        JsonStyle {
            slash: true,
            ..base
        },
        JsonStyle {
            ascii: true,
            ..base
        },
        JsonStyle {
            ascii: true,
            upper: true,
            ..base
        },
        JsonStyle { html: true, ..base },
    ] {
        if let Some(form) = json_escape(value, style) {
            push(out, form);
        }
    }
}

/// Escapes `value` as the body of a JSON string in `style`; `None` when the
/// style needs valid UTF-8 and the value is not.
fn json_escape(value: &[u8], style: JsonStyle) -> Option<Form> {
    // Worst case: `\u00XX` (6 bytes) for one byte, `\uXXXX\uXXXX` for four.
    let mut buf = Zeroizing::new(Vec::with_capacity(value.len() * 6));
    let digits: &[u8; 16] = if style.upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut unit = |buf: &mut Vec<u8>, u: u16| {
        buf.extend_from_slice(b"\\u");
        for shift in [12u16, 8, 4, 0] {
            buf.push(digits[usize::from((u >> shift) & 0x0f)]);
        }
    };
    if style.ascii || style.html {
        let text = std::str::from_utf8(value).ok()?;
        let mut tmp = [0u8; 4];
        for c in text.chars() {
            if c.is_ascii() {
                let b = c as u8;
                if style.html && matches!(b, b'<' | b'>' | b'&') {
                    unit(&mut buf, u16::from(b));
                } else if style.ascii && b == 0x7f {
                    unit(&mut buf, 0x7f); // Python escapes DEL too
                } else {
                    ascii_escape(&mut buf, b, style.slash, &mut unit);
                }
            } else if style.ascii {
                let mut units = [0u16; 2];
                for &u in c.encode_utf16(&mut units).iter() {
                    unit(&mut buf, u);
                }
            } else if style.html && (c == '\u{2028}' || c == '\u{2029}') {
                unit(&mut buf, c as u16);
            } else {
                buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
        tmp.fill(0);
    } else {
        for &b in value {
            if b.is_ascii() {
                ascii_escape(&mut buf, b, style.slash, &mut unit);
            } else {
                buf.push(b); // raw UTF-8 (serde_json, JSON.stringify)
            }
        }
    }
    Some(buf)
}

fn ascii_escape(buf: &mut Vec<u8>, b: u8, slash: bool, unit: &mut impl FnMut(&mut Vec<u8>, u16)) {
    match b {
        b'"' => buf.extend_from_slice(b"\\\""),
        b'\\' => buf.extend_from_slice(b"\\\\"),
        b'/' if slash => buf.extend_from_slice(b"\\/"),
        b'\n' => buf.extend_from_slice(b"\\n"),
        b'\r' => buf.extend_from_slice(b"\\r"),
        b'\t' => buf.extend_from_slice(b"\\t"),
        0x08 => buf.extend_from_slice(b"\\b"),
        0x0c => buf.extend_from_slice(b"\\f"),
        0..0x20 => unit(buf, u16::from(b)),
        _ => buf.push(b),
    }
}

/// Every UTF-16 unit of `value` as `\uXXXX`; `None` when it is not UTF-8.
fn json_all_escaped(value: &[u8], digits: &[u8; 16]) -> Option<Form> {
    let text = std::str::from_utf8(value).ok()?;
    let mut buf = Zeroizing::new(Vec::with_capacity(value.len() * 12));
    let mut units = [0u16; 2];
    for c in text.chars() {
        for &u in c.encode_utf16(&mut units).iter() {
            buf.extend_from_slice(b"\\u");
            for shift in [12u16, 8, 4, 0] {
                buf.push(digits[usize::from((u >> shift) & 0x0f)]);
            }
        }
    }
    units.fill(0);
    Some(buf)
}
