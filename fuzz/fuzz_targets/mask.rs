//! Masking engine: random values, random output, random chunking.
//!
//! Asserts no panic, that streamed output equals one-shot output, that the
//! held-back tail stays under the longest pattern, and that no value of at
//! least 8 bytes survives in its exact, hex or base64 form, also when the
//! hex or base64 is wrapped across lines (76 or 64 columns, LF or CRLF, or
//! `xxd -p`'s 60) at any position in the stream.
#![no_main]

use std::sync::Arc;

use custody_core::mask::MaskingEngine;
use libfuzzer_sys::fuzz_target;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(value: &[u8]) -> Vec<u8> {
    value.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()
}

fn base64(value: &[u8]) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for c in value.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// Wraps `text` at `width` columns with `eol`, as encoders do.
fn wrap(text: &[u8], width: usize, eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.chunks(width) {
        out.extend_from_slice(line);
        out.extend_from_slice(eol);
    }
    out
}

/// The engine's joined view, written here independently: the line break
/// (`\n` or `\r\n`) after a line that ends in 60 or more base64/hex
/// characters is left out.
fn joined(out: &[u8]) -> Vec<u8> {
    let enc = |b: &u8| b.is_ascii_alphanumeric() || b"+/=-_".contains(b);
    let mut view = Vec::new();
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let (content, cr) = match line.strip_suffix(b"\r") {
            Some(c) if !last => (c, true),
            _ => (*line, false),
        };
        view.extend_from_slice(content);
        let run = content.iter().rev().take_while(|b| enc(b)).count();
        if !last && run < 60 {
            if cr {
                view.push(b'\r');
            }
            view.push(b'\n');
        }
    }
    view
}

fuzz_target!(|data: &[u8]| {
    // Layout: [n values] then n × [len, bytes…], then [chunk sizes seed], then the output.
    let Some((&n, mut rest)) = data.split_first() else { return };
    let mut values = Vec::new();
    for _ in 0..(n % 6) {
        let Some((&len, tail)) = rest.split_first() else { return };
        let len = usize::from(len % 48).min(tail.len());
        values.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    let Some((&seed, output)) = rest.split_first() else { return };
    // Values also appear in the output, in several forms, so matches happen.
    let mut input = output.to_vec();
    for (i, v) in values.iter().enumerate() {
        let at = if input.is_empty() { 0 } else { (usize::from(seed) * (i + 7)) % input.len() };
        let form = match (seed as usize + i) % 6 {
            0 => v.clone(),
            1 => hex(v),
            2 => base64(v),
            3 => wrap(&base64(v), 76, b"\n"),
            4 => wrap(&base64(v), 64, b"\r\n"),
            _ => wrap(&hex(v), 60, b"\n"),
        };
        input.splice(at..at, form);
    }
    let names: Vec<String> = (0..values.len()).map(|i| format!("V{i}")).collect();
    let engine = Arc::new(MaskingEngine::new(names.iter().zip(&values)));
    let (whole, whole_counts) = engine.mask_all(&input);

    let mut masker = engine.masker();
    let mut out = Vec::new();
    let mut left: &[u8] = &input;
    let mut size = usize::from(seed) + 1;
    while !left.is_empty() {
        let take = size.min(left.len());
        masker.push(&left[..take], &mut out);
        assert!(masker.held_back() < engine.longest_pattern_len().max(1));
        left = &left[take..];
        size = (size * 7 + 3) % 97 + 1;
    }
    masker.finish(&mut out);
    assert_eq!(out, whole, "streamed output differs from one-shot output");
    assert_eq!(masker.counts(), whole_counts);

    for v in &values {
        // A value made of label text (`[masked:V0]`) can show through a label.
        if !custody_core::mask::long_enough(v) || v.contains(&b'[') || v.contains(&b']') || names.iter().any(|n| contains(format!("masked:{n}").as_bytes(), v)) {
            continue;
        }
        assert!(!contains(&out, v), "exact form leaked");
        assert!(!contains(&out, &hex(v)), "hex form leaked");
        assert!(!contains(&out, &base64(v)), "base64 form leaked");
        // A wrapped form is whole again in the joined view.
        let view = joined(&out);
        assert!(!contains(&view, &hex(v)), "wrapped hex form leaked");
        assert!(!contains(&view, &base64(v)), "wrapped base64 form leaked");
    }
});
