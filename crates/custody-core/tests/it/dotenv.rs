//! Round trips through the dotenv parser: whatever `quote` writes, `parse`
//! reads back byte for byte, whatever surrounds it in a real-looking file.

use custody_core::dotenv::{self, SkipReason};
use custody_core::secrecy::ExposeSecret;
use proptest::prelude::*;

/// Bytes that exercise the quoting rules, mixed with arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(&b"\n\r\t\"'`\\$# =\xff\xef\xbb\xbf"[..]),
    ];
    prop::collection::vec(byte, 0..48)
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Few distinct short names, so duplicates happen often.
        3 => "[A-C]",
        5 => "[A-Za-z_][A-Za-z0-9_]{0,20}",
        1 => "[A-Za-z_][A-Za-z0-9_]{127}",
    ]
}

/// Comment text: anything but a newline.
fn comment() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
        0..24,
    )
}

/// How one entry is laid out in the file.
#[derive(Debug, Clone)]
struct Layout {
    /// Blank lines (possibly with blanks or a CR) and `#` comment lines before it.
    before: Vec<Option<Vec<u8>>>,
    indent: &'static str,
    export: bool,
    around_eq: (&'static str, &'static str),
    trailing_comment: Option<Vec<u8>>,
    crlf: bool,
}

fn layout() -> impl Strategy<Value = Layout> {
    let blanks = prop::sample::select(vec!["", " ", "\t", " \t "]);
    (
        prop::collection::vec(prop::option::of(comment()), 0..3),
        blanks.clone(),
        any::<bool>(),
        (blanks.clone(), blanks),
        prop::option::of(comment()),
        any::<bool>(),
    )
        .prop_map(
            |(before, indent, export, around_eq, trailing_comment, crlf)| Layout {
                before,
                indent,
                export,
                around_eq,
                trailing_comment,
                crlf,
            },
        )
}

fn write_file(bom: bool, entries: &[(String, Vec<u8>, Layout)]) -> Vec<u8> {
    let mut file = Vec::new();
    if bom {
        file.extend_from_slice(b"\xEF\xBB\xBF");
    }
    for (name, value, l) in entries {
        let eol: &[u8] = if l.crlf { b"\r\n" } else { b"\n" };
        for extra in &l.before {
            match extra {
                None => file.extend_from_slice(l.indent.as_bytes()),
                Some(c) => {
                    file.extend_from_slice(l.indent.as_bytes());
                    file.push(b'#');
                    file.extend_from_slice(c);
                }
            }
            file.extend_from_slice(eol);
        }
        file.extend_from_slice(l.indent.as_bytes());
        if l.export {
            file.extend_from_slice(b"export ");
        }
        file.extend_from_slice(name.as_bytes());
        file.extend_from_slice(l.around_eq.0.as_bytes());
        file.push(b'=');
        file.extend_from_slice(l.around_eq.1.as_bytes());
        file.extend_from_slice(&dotenv::quote(value));
        if let Some(c) = &l.trailing_comment {
            file.extend_from_slice(b" #");
            file.extend_from_slice(c);
        }
        file.extend_from_slice(eol);
    }
    file
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn quote_then_parse_round_trips(
        bom in any::<bool>(),
        entries in prop::collection::vec((name(), value(), layout()), 0..12),
    ) {
        let file = write_file(bom, &entries);
        let parsed = dotenv::parse(&file);

        // Last one wins, placed where it occurs.
        let mut expected: Vec<(&str, &[u8])> = Vec::new();
        for (i, (name, value, _)) in entries.iter().enumerate() {
            if !entries[i + 1..].iter().any(|(n, _, _)| n == name) {
                expected.push((name, value));
            }
        }
        let got: Vec<(&str, &[u8])> = parsed
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.expose_secret()))
            .collect();
        prop_assert_eq!(got, expected.clone());

        // The only things skipped are the overridden duplicates.
        let only_duplicates = parsed
            .skipped
            .iter()
            .all(|s| matches!(s.reason, SkipReason::Duplicate { .. }));
        prop_assert!(only_duplicates, "{:?}", parsed.skipped);
        prop_assert_eq!(parsed.duplicate_count(), entries.len() - expected.len());

        // Line numbers are increasing and inside the file.
        let lines = file.iter().filter(|&&b| b == b'\n').count();
        let mut prev = 0;
        for e in &parsed.entries {
            prop_assert!(e.line > prev && e.line <= lines);
            prev = e.line;
        }
    }

    #[test]
    fn quote_is_one_line(v in value()) {
        let q = dotenv::quote(&v);
        prop_assert!(!q.contains(&b'\n') && !q.contains(&b'\r'));
    }

    #[test]
    fn parse_never_panics(input in prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(&b"\n\r\"'`\\=# \texport"[..])],
        0..256,
    )) {
        let parsed = dotenv::parse(&input);
        for s in &parsed.skipped {
            prop_assert!(s.line >= 1);
            let _ = s.to_string();
        }
    }
}

/// `Debug` of an entry and of a whole parse result shows names, never values.
#[test]
fn debug_output_shows_no_value() {
    let file = b"TOKEN=hunter2-plain\nKEY=\"hunter2-quoted\\nline\"\nPEM='hunter2\nmulti'\nTOKEN=hunter2-again\n";
    let parsed = dotenv::parse(file);
    assert_eq!(parsed.entries.len(), 3);
    let shown = format!("{parsed:?} {parsed:#?}");
    for e in &parsed.entries {
        let one = format!("{e:?}");
        assert!(!one.contains("hunter2"), "{one}");
        assert!(one.contains(e.name.as_str()), "{one}");
    }
    assert!(!shown.contains("hunter2"), "{shown}");
    for s in &parsed.skipped {
        assert!(!s.to_string().contains("hunter2"), "{s}");
    }
}
