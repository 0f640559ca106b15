//! Guarantee G1 from the outside: forms computed by independent encoders
//! (base64, hex, serde_json, a percent encoder written here) never survive
//! the masking engine, whatever the chunking, and unmasked text is kept.
// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use custody_core::mask::{MIN_MASKABLE_LEN, MaskingEngine};
use proptest::prelude::*;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn percent(value: &[u8]) -> String {
    value
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The forms an agent could decode a value from, by independent encoders.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![
        value.to_vec(),
        hex::encode(value).into_bytes(),
        hex::encode_upper(value).into_bytes(),
        STANDARD.encode(value).into_bytes(),
        STANDARD_NO_PAD.encode(value).into_bytes(),
        URL_SAFE.encode(value).into_bytes(),
        URL_SAFE_NO_PAD.encode(value).into_bytes(),
        percent(value).into_bytes(),
    ];
    if let Ok(text) = std::str::from_utf8(value) {
        let json = serde_json::to_string(text).unwrap();
        // Strip exactly the enclosing quotes: `trim_matches` would also eat
        // the quote of an escaped `\"` at the end of the value.
        forms.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    forms
}

fn stream(engine: &Arc<MaskingEngine>, input: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut masker = engine.masker();
    let mut out = Vec::new();
    let (mut rest, mut i) = (input, 0);
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        masker.push(&rest[..n], &mut out);
        rest = &rest[n..];
        i += 1;
    }
    masker.finish(&mut out);
    out
}

/// The text between masks must be the input's own bytes, in order.
fn assert_unmasked_text_kept(input: &[u8], out: &[u8]) {
    let text = out.to_vec();
    let mut pos = 0;
    let mut rest: &[u8] = &text;
    loop {
        let (segment, tail) = match rest.windows(8).position(|w| w == b"[masked:") {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let found = input[pos..]
            .windows(segment.len().max(1))
            .position(|w| segment.is_empty() || w == segment);
        assert!(
            found.is_some() || segment.is_empty(),
            "segment not in input: {:?}",
            String::from_utf8_lossy(segment)
        );
        pos += found.unwrap_or(0) + segment.len();
        let Some(tail) = tail else { break };
        let close = tail.iter().position(|&b| b == b']').unwrap();
        rest = &tail[close + 1..];
    }
}

#[test]
fn realistic_values_in_every_form_are_masked() {
    let values: Vec<(&str, &[u8])> = vec![
        ("GITHUB_TOKEN", b"ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        ("DB_URL", b"postgres://app:S3cr3t!p@ss w0rd@db:5432/app"),
        ("AWS_SECRET", b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("UNICODE", "pässwörd-\u{1F511}-\"quoted\"\\n".as_bytes()),
        ("BINARY", b"\x00\x01\xfe\xff binary \x80\x81"),
    ];
    let engine = Arc::new(MaskingEngine::new(values.iter().copied()));
    let mut input = Vec::new();
    for (_, value) in &values {
        for form in forms(value) {
            input.extend_from_slice(b"2025-11-23T08:47:12Z INFO value=");
            input.extend_from_slice(&form);
            input.extend_from_slice(b" json={\"v\":\"");
            input.extend_from_slice(&form);
            input.extend_from_slice(b"\"}\r\n");
        }
        // Inside a larger base64 blob, at each alignment.
        for pad in 0..3 {
            let blob = [&b"{\"k\":\""[..3 + pad], value, b"\"}"].concat();
            input.extend_from_slice(format!("secret: {}\n", STANDARD.encode(&blob)).as_bytes());
        }
    }
    for sizes in [&[1usize][..], &[7, 3], &[4096], &[usize::MAX]] {
        let out = stream(&engine, &input, sizes);
        for (name, value) in &values {
            for form in forms(value) {
                assert!(
                    !contains(&out, &form),
                    "{name}: form {:?} leaked",
                    String::from_utf8_lossy(&form)
                );
            }
        }
        assert_unmasked_text_kept(&input, &out);
        assert!(out.windows(4).any(|w| w == b"\"}\r\n"), "CRLF kept");
    }
}

#[test]
fn masking_is_idempotent_on_masked_output() {
    let engine = Arc::new(MaskingEngine::new([(
        "T",
        b"tok_abcdefghijklmnop".as_slice(),
    )]));
    let (once, _) = engine.mask_all(b"a tok_abcdefghijklmnop b");
    let (twice, counts) = engine.mask_all(&once);
    assert_eq!(once, twice);
    assert!(counts.is_empty());
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), MIN_MASKABLE_LEN..40),
        "[ -~]{8,40}".prop_map(String::into_bytes),
        "[a-c]{8,12}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_form_survives_any_chunking(
        values in proptest::collection::vec(value(), 1..5),
        layout in proptest::collection::vec((any::<usize>(), 0..10usize, "[ -~\\n]{0,30}"), 1..12),
        sizes in proptest::collection::vec(1..64usize, 1..6),
    ) {
        // Brackets would let a value overlap a `[masked:NAME]` label.
        let values: Vec<Vec<u8>> = values.into_iter().filter(|v| !v.contains(&b'[') && !v.contains(&b']')).collect();
        prop_assume!(!values.is_empty());
        let names: Vec<String> = (0..values.len()).map(|i| format!("V{i}")).collect();
        let engine = Arc::new(MaskingEngine::new(names.iter().zip(&values)));
        let mut input = Vec::new();
        for (which, form, noise) in &layout {
            input.extend_from_slice(noise.as_bytes());
            let all = forms(&values[which % values.len()]);
            input.extend_from_slice(&all[form % all.len()]);
        }
        let out = stream(&engine, &input, &sizes);
        prop_assert_eq!(&out, &engine.mask_all(&input).0);
        for v in &values {
            for form in forms(v) {
                prop_assert!(!contains(&out, &form));
            }
        }
        assert_unmasked_text_kept(&input, &out);
    }
}

/// Regression (found by the proptest on a clean clone): a value that starts
/// with a space and ends in a quote is masked in every form, the JSON one
/// (`\"` at the end) included.
#[test]
fn value_ending_in_a_quote_is_masked_in_every_form() {
    let value = b" a0a  A\"".to_vec();
    let engine = Arc::new(MaskingEngine::new([("V0", &value)]));
    for form in forms(&value) {
        let input = [b"x ".as_slice(), &form, b" y"].concat();
        let out = stream(&engine, &input, &[1, 3]);
        assert!(
            !contains(&out, &form),
            "form {:?} leaked",
            String::from_utf8_lossy(&form)
        );
        assert!(contains(&out, b"[masked:V0]"));
    }
}
