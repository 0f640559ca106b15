//! Unit tests for the dotenv parser (`super`).

use super::*;
use secrecy::ExposeSecret;

/// `(name, value, line)` of every entry, for compact assertions.
fn entries(input: &[u8]) -> Vec<(String, Vec<u8>, usize)> {
    parse(input)
        .entries
        .iter()
        .map(|e| {
            (
                e.name.as_str().to_owned(),
                e.value.expose_secret().to_vec(),
                e.line,
            )
        })
        .collect()
}

fn one(input: &str) -> Vec<u8> {
    let p = parse(input.as_bytes());
    assert!(p.skipped.is_empty(), "{input:?}: {:?}", p.skipped);
    assert_eq!(p.entries.len(), 1, "{input:?}");
    p.entries[0].value.expose_secret().to_vec()
}

fn skips(input: &[u8]) -> Vec<(usize, SkipReason)> {
    parse(input)
        .skipped
        .into_iter()
        .map(|s| (s.line, s.reason))
        .collect()
}

fn e(name: &str, value: &[u8], line: usize) -> (String, Vec<u8>, usize) {
    (name.to_owned(), value.to_vec(), line)
}

#[test]
fn simple_entries_blank_lines_and_comments() {
    let input = b"# header\n\nA=1\n   # indented comment\nB=two words\n\t\n_c9=x\n";
    assert_eq!(
        entries(input),
        vec![e("A", b"1", 3), e("B", b"two words", 5), e("_c9", b"x", 7)]
    );
    assert!(parse(input).skipped.is_empty());
    // No final newline.
    assert_eq!(entries(b"A=1"), vec![e("A", b"1", 1)]);
    assert!(parse(b"").entries.is_empty());
}

#[test]
fn whitespace_around_name_and_equals() {
    assert_eq!(one("  KEY  =  value  "), b"value");
    assert_eq!(one("\tKEY\t=\tvalue\t"), b"value");
    assert_eq!(one("KEY= \"quoted\" "), b"quoted");
}

#[test]
fn export_prefix() {
    assert_eq!(entries(b"export A=1"), vec![e("A", b"1", 1)]);
    assert_eq!(entries(b"  export\t  A = '1'"), vec![e("A", b"1", 1)]);
    // `export` is only a prefix when followed by a blank.
    assert_eq!(entries(b"exportA=1"), vec![e("exportA", b"1", 1)]);
    assert_eq!(entries(b"export=1"), vec![e("export", b"1", 1)]);
}

#[test]
fn empty_values() {
    assert_eq!(one("KEY="), b"");
    assert_eq!(one("KEY=   "), b"");
    assert_eq!(one("KEY=''"), b"");
    assert_eq!(one("KEY=\"\""), b"");
    assert_eq!(one("KEY= # only a comment"), b"");
}

#[test]
fn equals_inside_values() {
    assert_eq!(
        one("URL=postgres://u:p@h/db?a=b&c=d"),
        b"postgres://u:p@h/db?a=b&c=d"
    );
    assert_eq!(one("B64=YWJj=="), b"YWJj==");
    assert_eq!(one("Q=\"a=b\""), b"a=b");
}

#[test]
fn inline_comments_on_unquoted_values() {
    assert_eq!(one("A=value # comment"), b"value");
    assert_eq!(one("A=value\t# comment"), b"value");
    // A `#` not preceded by a blank is part of the value.
    assert_eq!(one("A=val#ue"), b"val#ue");
    assert_eq!(one("A=#value"), b"#value");
    assert_eq!(one("A=a#b #c"), b"a#b");
}

#[test]
fn comments_after_quoted_values() {
    assert_eq!(
        one("A=\"v # not a comment\" # comment"),
        b"v # not a comment"
    );
    assert_eq!(one("A='v'#comment"), b"v");
    assert_eq!(one("A=`v`   "), b"v");
}

#[test]
fn single_and_backtick_quotes_are_literal() {
    assert_eq!(one(r"A='a\nb\\c$HOME\'"), br"a\nb\\c$HOME\");
    assert_eq!(
        one("A='has \"double\" and `tick`'"),
        b"has \"double\" and `tick`"
    );
    assert_eq!(one("A=`it's`"), b"it's");
}

#[test]
fn double_quote_escapes() {
    assert_eq!(
        one(r#"A="n\n r\r t\t q\" b\\ d\$""#),
        b"n\n r\r t\t q\" b\\ d$"
    );
    // Unknown escapes keep both bytes.
    assert_eq!(one(r#"A="\a\x41\'\#""#), br"\a\x41\'\#");
    // `$` is never expanded.
    assert_eq!(one("A=\"${HOME}\""), b"${HOME}");
}

#[test]
fn multi_line_pem_in_double_and_single_quotes() {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\nAT8wggE7AgEAAkEA==\n-----END PRIVATE KEY-----";
    for q in ['"', '\'', '`'] {
        let input = format!("BEFORE=1\nKEY={q}{pem}{q}\nAFTER=2\n");
        assert_eq!(
            entries(input.as_bytes()),
            vec![
                e("BEFORE", b"1", 1),
                e("KEY", pem.as_bytes(), 2),
                e("AFTER", b"2", 6)
            ],
            "quote {q}"
        );
    }
}

#[test]
fn crlf_line_endings() {
    let input = b"A=1\r\nB = two \r\n# c\r\n\r\nC='x'\r\nD=\"y\" # c\r\n";
    assert_eq!(
        entries(input),
        vec![
            e("A", b"1", 1),
            e("B", b"two", 2),
            e("C", b"x", 5),
            e("D", b"y", 6)
        ]
    );
    // Inside quotes, CRLF reads as LF; a lone CR and an escaped `\r` stay.
    assert_eq!(
        entries(b"P=\"l1\r\nl2\rx\\r\"\r\nQ='a\r\nb'\r\n"),
        vec![e("P", b"l1\nl2\rx\r", 1), e("Q", b"a\nb", 3)]
    );
    assert_eq!(entries(b"P=\"a\\\r\nb\""), vec![e("P", b"a\\\nb", 1)]);
}

#[test]
fn byte_order_mark_is_ignored() {
    assert_eq!(
        entries(b"\xEF\xBB\xBFA=1\nB=2"),
        vec![e("A", b"1", 1), e("B", b"2", 2)]
    );
    // Only at the very start.
    assert_eq!(
        skips(b"A=1\n\xEF\xBB\xBFB=2"),
        vec![(2, SkipReason::InvalidName)]
    );
}

#[test]
fn non_utf8_values_are_bytes() {
    assert_eq!(
        entries(b"A=\xff\xfe\x00z"),
        vec![e("A", b"\xff\xfe\x00z", 1)]
    );
    assert_eq!(entries(b"A=\"\xc3\x28\""), vec![e("A", b"\xc3\x28", 1)]);
}

#[test]
fn skip_missing_equals() {
    let input = b"A=1\njust some words\nexport B\nC=3\n";
    assert_eq!(
        skips(input),
        vec![
            (2, SkipReason::MissingEquals),
            (3, SkipReason::MissingEquals)
        ]
    );
    assert_eq!(entries(input), vec![e("A", b"1", 1), e("C", b"3", 4)]);
}

#[test]
fn skip_invalid_names() {
    let long = "A".repeat(129);
    let input = format!("=x\n1A=x\nA-B=x\nA B=x\nÄ=x\n{long}=x\n{}=ok\n", &long[1..]);
    let mut input = input.into_bytes();
    input.extend_from_slice(b"\xff=x\n");
    let reasons = skips(&input);
    assert_eq!(reasons.len(), 7, "{reasons:?}");
    assert!(reasons.iter().all(|(_, r)| *r == SkipReason::InvalidName));
    assert_eq!(parse(&input).entries.len(), 1);
    assert_eq!(parse(&input).entries[0].name.as_str().len(), 128);
}

#[test]
fn invalid_name_with_multi_line_value_skips_the_whole_value() {
    // The base64 line must not become an entry `MIIBAQ` = `=`.
    let input = b"BAD NAME=\"-----BEGIN-----\nMIIBAQ==\n-----END-----\"\nOK=1\n";
    assert_eq!(skips(input), vec![(1, SkipReason::InvalidName)]);
    assert_eq!(entries(input), vec![e("OK", b"1", 4)]);
}

#[test]
fn skip_unterminated_quote_resyncs_on_next_line() {
    for q in ["\"", "'", "`"] {
        let input = format!("A=1\nB={q}never closed\nC=3\nD=4\n");
        assert_eq!(
            skips(input.as_bytes()),
            vec![(2, SkipReason::UnterminatedQuote)],
            "{q}"
        );
        assert_eq!(
            entries(input.as_bytes()),
            vec![e("A", b"1", 1), e("C", b"3", 3), e("D", b"4", 4)]
        );
    }
    // An escaped quote does not close; a trailing backslash escapes nothing.
    assert_eq!(
        skips(br#"A="x\""#),
        vec![(1, SkipReason::UnterminatedQuote)]
    );
    assert_eq!(skips(b"A=\"x\\"), vec![(1, SkipReason::UnterminatedQuote)]);
}

#[test]
fn skip_trailing_text_after_quote() {
    let input = b"A=\"x\" y\nB='x'z\nC=3\n";
    assert_eq!(
        skips(input),
        vec![(1, SkipReason::TrailingText), (2, SkipReason::TrailingText)]
    );
    assert_eq!(entries(input), vec![e("C", b"3", 3)]);
}

#[test]
fn mispaired_quotes_lose_only_the_broken_entry() {
    // A's quote pairs with C's opening quote; the text after it shows
    // the pairing is wrong, so A is skipped and B and C still parse.
    let input = b"A=\"abc\nB=def\nC=\"ghi\"\n";
    assert_eq!(skips(input), vec![(1, SkipReason::TrailingText)]);
    assert_eq!(entries(input), vec![e("B", b"def", 2), e("C", b"ghi", 3)]);
}

#[test]
fn duplicates_last_wins_and_are_reported() {
    let input = b"A=1\nB=2\nA=3\nC=4\nA=5\n";
    let p = parse(input);
    assert_eq!(
        entries(input),
        vec![e("B", b"2", 2), e("C", b"4", 4), e("A", b"5", 5)]
    );
    assert_eq!(p.duplicate_count(), 2);
    let a = VarName::new("A").expect("valid name");
    assert_eq!(
        skips(input),
        vec![
            (
                1,
                SkipReason::Duplicate {
                    name: a.clone(),
                    kept_line: 5
                }
            ),
            (
                3,
                SkipReason::Duplicate {
                    name: a,
                    kept_line: 5
                }
            )
        ]
    );
    assert_eq!(
        p.skipped[0].to_string(),
        "line 1: A is set again on line 5; that value is kept"
    );
}

#[test]
fn input_too_large() {
    let big = vec![b'#'; MAX_INPUT_LEN + 1];
    let p = parse(&big);
    assert!(p.entries.is_empty());
    assert_eq!(
        skips(&big),
        vec![(
            1,
            SkipReason::InputTooLarge {
                len: MAX_INPUT_LEN + 1
            }
        )]
    );
    assert!(p.skipped[0].to_string().contains("nothing was parsed"));
}

#[test]
fn reasons_never_contain_the_line() {
    let input = b"sk_live_SECRET\nsk-SECRET=\"x\" SECRET\nA='SECRET\nB=\"SECRET\n";
    let p = parse(input);
    assert_eq!(p.skipped.len(), 4);
    for s in &p.skipped {
        assert!(!s.to_string().contains("SECRET"), "{s}");
        assert!(!format!("{s:?}").contains("SECRET"), "{s:?}");
    }
}

#[test]
fn debug_shows_no_value() {
    let p = parse(b"TOKEN=hunter2-very-secret\n");
    let shown = format!("{p:?} {:?}", p.entries[0]);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("TOKEN") && shown.contains("[REDACTED]"),
        "{shown}"
    );
}

#[test]
fn quote_round_trips_and_stays_on_one_line() {
    let values: [&[u8]; 6] = [
        b"",
        b"plain",
        b"a\"b\\c$d\ne\rf\tg#h'i`j",
        b"\\",
        b"\r\n\r\n",
        b"\xff\x00\xc3\x28 # x",
    ];
    for v in values {
        let q = quote(v);
        assert!(!q.contains(&b'\n') && !q.contains(&b'\r'));
        let mut file = b"K=".to_vec();
        file.extend_from_slice(&q);
        assert_eq!(entries(&file), vec![e("K", v, 1)], "{v:?}");
    }
    assert_eq!(&quote(b"a$b")[..], br#""a\$b""#);
}

#[test]
fn line_numbers_follow_multi_line_values() {
    let input = b"A=\"1\n2\n3\"\n\nB='x\ny'\nC=z\n";
    assert_eq!(
        entries(input),
        vec![e("A", b"1\n2\n3", 1), e("B", b"x\ny", 5), e("C", b"z", 7)]
    );
}

/// Inputs that would make a naive "scan to the closing quote, resync on
/// failure" parser quadratic. Each is 256 KiB; quadratic would not finish.
#[test]
fn pathological_inputs_stay_linear() {
    let n = 1 << 18;
    let repeat = |unit: &[u8]| unit.repeat(n / unit.len());
    let mut one_long_scan = b"A=\"x\n".to_vec();
    one_long_scan.extend(repeat(b"B=\\\"\n"));
    for input in [
        repeat(b"A='\n"),
        repeat(b"A=\"\\\n"),
        repeat(b"A='\nB=\"\nC=`\n"),
        repeat(b"A=\"x\" y\n"),
        repeat(b"X Y=\"\n"),
        repeat(b"="),
        repeat(b" #"),
        one_long_scan,
    ] {
        let p = parse(&input);
        assert!(p.entries.len() + p.skipped.len() <= input.len());
    }
}

#[test]
fn never_panics_on_awkward_inputs() {
    for input in [
        &b"\""[..],
        b"=",
        b"A=\"",
        b"A=\"\\",
        b"A='",
        b"A=`",
        b"\r",
        b"\r\n",
        b"\n\n\n",
        b"\xEF\xBB",
        b"\xEF\xBB\xBF",
        b"export",
        b"export ",
        b"export =",
        b"A=\"x\"\r",
        b"A= #",
        b"#",
        b" \t",
    ] {
        let p = parse(input);
        for s in &p.skipped {
            let _ = s.to_string();
        }
    }
}
