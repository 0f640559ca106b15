//! Finding secrets at rest: vault values (every form the masking engine
//! knows) and well-known token shapes, in bytes handed in by a caller.
//!
//! This module is pure: it never opens a file or starts a process. The
//! broker walks trees, reads git objects and feeds the bytes here
//! (`custody_broker::scan`), with an engine built from the vault's values
//! where those values are (G1/G2: they never leave the broker). Without a
//! vault, a [`Detector`] with no engine still finds token shapes.
//!
//! A [`Hit`] names a variable or a rule and a line, never the matched text:
//! scan output may reach an agent, so it must not become a way to read a
//! value back.
//!
//! # Token shapes ([`RULES`])
//! AWS access key ids, GitHub and GitLab tokens, Slack tokens, Stripe live
//! keys, private key blocks and JWTs are matched by one combined pattern
//! (the regex crate's literal prefilter skips everything else at memory
//! speed); the match is then named by its prefix. In dotenv-like files
//! (`.env*`, `*.env`) an assignment whose value is at least
//! [`ENTROPY_MIN_LEN`] characters with a Shannon entropy of at least
//! [`ENTROPY_MIN_BITS`] bits per character is reported as
//! `high-entropy-assignment`.
//!
//! # Not covered
//! Values shorter than [`MIN_MASKABLE_LEN`](crate::mask::MIN_MASKABLE_LEN),
//! the masking engine's residual forms (double encodings, wrapped base64,
//! compressed or encrypted copies), and token shapes not in [`RULES`].

use std::collections::BTreeSet;
use std::sync::Arc;

use regex::bytes::Regex;
use serde::Serialize;

use crate::mask::MaskingEngine;

/// Shortest value the entropy rule looks at, in characters.
pub const ENTROPY_MIN_LEN: usize = 20;
/// Entropy at or above which a dotenv value looks like a secret, in bits per
/// character (random base64 is ~6, hex ~4, English words ~3.5 at most).
pub const ENTROPY_MIN_BITS: f64 = 4.0;
/// Name of the entropy rule.
pub const ENTROPY_RULE: &str = "high-entropy-assignment";

/// The token-shape rules, by name, with what each matches.
pub const RULES: &[(&str, &str)] = &[
    (
        "aws-access-key-id",
        "AKIA or ASIA followed by 16 upper-case letters or digits",
    ),
    (
        "github-token",
        "ghp_, gho_, ghu_, ghs_ or ghr_ followed by 36 letters or digits; github_pat_…",
    ),
    (
        "gitlab-token",
        "glpat- followed by 20 or more letters, digits, - or _",
    ),
    (
        "slack-token",
        "xoxb-, xoxa-, xoxp-, xoxr- or xoxs- followed by 10 or more characters",
    ),
    (
        "stripe-live-key",
        "sk_live_ or rk_live_ followed by 16 or more letters or digits",
    ),
    ("private-key", "a -----BEGIN … PRIVATE KEY----- line"),
    (
        "jwt",
        "three base64url segments, the first two starting eyJ",
    ),
    (
        ENTROPY_RULE,
        "a KEY=value line in a .env file whose value is long and random-looking",
    ),
];

/// One combined pattern; [`rule_of`] names a match by its first bytes.
const TOKEN_PATTERN: &str = concat!(
    r"(?-u)",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"|\bgh[pousr]_[A-Za-z0-9]{36}\b",
    r"|\bgithub_pat_[A-Za-z0-9_]{22,255}",
    r"|\bglpat-[A-Za-z0-9_-]{20,}",
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"|\b[rs]k_live_[A-Za-z0-9]{16,}",
    r"|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
);

fn rule_of(m: &[u8]) -> &'static str {
    match m {
        [b'A', ..] => "aws-access-key-id",
        [b'g', b'h', ..] | [b'g', b'i', ..] => "github-token",
        [b'g', b'l', ..] => "gitlab-token",
        [b'x', ..] => "slack-token",
        [b's' | b'r', b'k', ..] => "stripe-live-key",
        [b'-', ..] => "private-key",
        _ => "jwt",
    }
}

/// What was found: a vault variable or a token-shape rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// A vault variable's value (in some form); the variable's name.
    Variable(String),
    /// A token shape; the rule's name.
    Rule(&'static str),
}

/// One thing found in one buffer: what and on which line (1-based) it
/// first occurs, when known.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    /// The variable or rule.
    pub what: What,
    /// First line it occurs on, if known.
    pub line: Option<u64>,
}

/// A finding as reported: where, and which variable or rule. Never the text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// Path (relative to the scanned root, or inside the repository). Vault
    /// values in it are masked.
    pub path: String,
    /// First line it occurs on, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The vault variable (`environment/NAME` for `custody scan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// The token-shape rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// The commit that holds it (`--git-history`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl Finding {
    /// A finding from a hit in `path`.
    pub fn new(path: String, hit: Hit, commit: Option<String>) -> Finding {
        let (variable, rule) = match hit.what {
            What::Variable(v) => (Some(v), None),
            What::Rule(r) => (None, Some(r)),
        };
        Finding {
            path,
            line: hit.line,
            variable,
            rule,
            commit,
        }
    }

    /// Whether this is a vault value (rather than a token shape).
    pub fn is_vault_value(&self) -> bool {
        self.variable.is_some()
    }
}

/// Finds vault values and token shapes in buffers.
pub struct Detector {
    engine: Option<Arc<MaskingEngine>>,
    tokens: Option<Regex>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("engine", &self.engine)
            .field("token_shapes", &self.tokens.is_some())
            .finish()
    }
}

impl Detector {
    /// A detector for the engine's values (if any) and, when `token_shapes`,
    /// the [`RULES`].
    pub fn new(engine: Option<Arc<MaskingEngine>>, token_shapes: bool) -> Detector {
        // The pattern is a constant: it compiles, or every test fails.
        let tokens = token_shapes
            .then(|| Regex::new(TOKEN_PATTERN))
            .and_then(Result::ok);
        Detector { engine, tokens }
    }

    /// The engine, if any.
    pub fn engine(&self) -> Option<&Arc<MaskingEngine>> {
        self.engine.as_ref()
    }

    /// How many bytes two consecutive chunks of one stream must share so
    /// that nothing spanning the cut is missed.
    pub fn overlap(&self) -> usize {
        let engine = self.engine.as_ref().map_or(0, |e| e.longest_pattern_len());
        // Token shapes are short, except github_pat_ (≤ 266 bytes).
        engine.max(512)
    }

    /// `path` with any vault value in it masked: a file can be named after
    /// a secret, and the name is reported.
    pub fn display_path(&self, path: &str) -> String {
        match &self.engine {
            Some(e) if !e.find_variables(path.as_bytes()).is_empty() => {
                String::from_utf8_lossy(&e.mask_all(path.as_bytes()).0).into_owned()
            }
            _ => path.to_owned(),
        }
    }

    /// Vault variables whose value occurs in `path` itself.
    pub fn variables_in_name(&self, path: &str) -> BTreeSet<String> {
        self.engine
            .as_ref()
            .map(|e| e.find_variables(path.as_bytes()))
            .unwrap_or_default()
    }

    /// Everything found in `data`, the content (or a chunk) of the file
    /// `name`; `first_line` is the number of `data`'s first line. One hit
    /// per variable or rule, on the first line it occurs.
    pub fn scan(&self, name: &str, data: &[u8], first_line: u64) -> Vec<Hit> {
        let mut hits = Vec::new();
        if let Some(engine) = &self.engine {
            let found = engine.find_variables(data);
            if !found.is_empty() {
                let lines = first_lines(engine, data, &found);
                for var in found {
                    let line = lines
                        .iter()
                        .find(|(v, _)| *v == var)
                        .map(|(_, l)| first_line + *l);
                    hits.push(Hit {
                        what: What::Variable(var),
                        line,
                    });
                }
            }
        }
        if let Some(re) = &self.tokens {
            let mut seen: Vec<&'static str> = Vec::new();
            for m in re.find_iter(data) {
                let rule = rule_of(m.as_bytes());
                if !seen.contains(&rule) {
                    seen.push(rule);
                    hits.push(Hit {
                        what: What::Rule(rule),
                        line: Some(first_line + line_at(data, m.start())),
                    });
                }
            }
            if is_dotenv_name(name)
                && let Some(line) = high_entropy_line(data)
            {
                hits.push(Hit {
                    what: What::Rule(ENTROPY_RULE),
                    line: Some(first_line + line),
                });
            }
        }
        hits
    }
}

/// Zero-based line of byte offset `at`.
fn line_at(data: &[u8], at: usize) -> u64 {
    data[..at.min(data.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

/// For each variable in `found`, the zero-based line it first occurs on
/// (rare path: only buffers with a hit get here).
fn first_lines(
    engine: &MaskingEngine,
    data: &[u8],
    found: &BTreeSet<String>,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if out.len() == found.len() {
            break;
        }
        if line.len() < crate::mask::MIN_MASKABLE_LEN {
            continue;
        }
        for v in engine.find_variables(line) {
            if !out.iter().any(|(n, _)| *n == v) {
                out.push((v, i as u64));
            }
        }
    }
    out
}

/// Whether `name` (a path) is a dotenv-like file: `.env`, `.env.local`,
/// `prod.env`.
pub fn is_dotenv_name(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.starts_with(".env") || base.ends_with(".env")
}

/// Zero-based line of the first `KEY=value` assignment whose value looks
/// random (see [`ENTROPY_MIN_BITS`]).
fn high_entropy_line(data: &[u8]) -> Option<u64> {
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        let line = line.strip_prefix(b"export ").unwrap_or(line);
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (line[..eq].trim_ascii(), line[eq + 1..].trim_ascii());
        let key_ok = !key.is_empty()
            && key
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !key_ok {
            continue;
        }
        let value = unquote(value);
        if value.len() >= ENTROPY_MIN_LEN && shannon_entropy(value) >= ENTROPY_MIN_BITS {
            return Some(i as u64);
        }
    }
    None
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [q @ (b'"' | b'\''), rest @ .., last] if last == q => rest,
        _ => v,
    }
}

/// Shannon entropy of `s` in bits per byte.
pub fn shannon_entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn rules(d: &Detector, name: &str, data: &[u8]) -> Vec<(&'static str, Option<u64>)> {
        d.scan(name, data, 1)
            .into_iter()
            .filter_map(|h| match h.what {
                What::Rule(r) => Some((r, h.line)),
                What::Variable(_) => None,
            })
            .collect()
    }

    #[test]
    fn each_token_shape_is_named_by_its_rule() {
        let d = Detector::new(None, true);
        let cases: &[(&str, String)] = &[
            (
                "aws-access-key-id",
                format!("key = {}{}", "AKIA", "Q3EXAMPLE7ABCDEFG".get(..16).unwrap()),
            ),
            ("github-token", format!("t={}{}", "ghp_", "a1B2".repeat(9))),
            (
                "github-token",
                format!("t={}{}", "github_pat_", "11ABCDEFG0".repeat(4)),
            ),
            ("gitlab-token", format!("t={}{}", "glpat-", "x".repeat(20))),
            ("slack-token", format!("{}{}", "xoxb-", "1234567890-abcdef")),
            (
                "stripe-live-key",
                format!("{}{}", "sk_live_", "4eC39HqLyjWDarjtT1zdp7dc"),
            ),
            ("private-key", "-----BEGIN PRIVATE KEY-----\nMIIE".into()),
            ("private-key", "-----BEGIN OPENSSH PRIVATE KEY-----".into()),
            (
                "jwt",
                format!(
                    "{}.{}.{}",
                    "eyJhbGciOiJIUzI1NiJ9",
                    "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
                    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
                ),
            ),
        ];
        for (rule, text) in cases {
            let got = rules(&d, "f.txt", format!("first line\n{text}\n").as_bytes());
            assert_eq!(got, vec![(*rule, Some(2))], "{rule}");
        }
    }

    #[test]
    fn near_misses_are_not_reported() {
        let d = Detector::new(None, true);
        for text in [
            "AKIA1234",                         // too short
            "xAKIAABCDEFGHIJKLMNOP",            // not at a word boundary
            "ghp_short",                        // too short
            "-----BEGIN PUBLIC KEY-----",       // not private
            "eyJhbGciOi.notjwt",                // one segment
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc", // test key
        ] {
            assert!(rules(&d, "f.txt", text.as_bytes()).is_empty(), "{text}");
        }
    }

    #[test]
    fn entropy_rule_only_in_dotenv_files_and_only_for_random_values() {
        let d = Detector::new(None, true);
        let env = b"# comment\nNAME=hello world this is text\nexport API_SECRET=\"q8Zr2LmX0vT7pK4wYc9N1bH6\"\n";
        assert_eq!(
            rules(&d, "app/.env.local", env),
            vec![(ENTROPY_RULE, Some(3))]
        );
        assert_eq!(rules(&d, "prod.env", env), vec![(ENTROPY_RULE, Some(3))]);
        assert!(rules(&d, "notes.txt", env).is_empty());
        assert!(rules(&d, ".env", b"A=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nB=short\n").is_empty());
        assert!(shannon_entropy(b"0123456789abcdef") >= 4.0);
    }

    #[test]
    fn vault_values_in_encoded_forms_are_named_with_their_line_never_shown() {
        let value = b"s3cr3t-VALUE_0123456789abcdefXYZ";
        let engine = Arc::new(MaskingEngine::new([("dev/TOKEN", &value[..])]));
        let d = Detector::new(Some(engine), false);
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        for (i, form) in [value.to_vec(), hex.into_bytes()].into_iter().enumerate() {
            let mut data = b"a\nb\n".to_vec();
            data.extend_from_slice(&form);
            let hits = d.scan("x", &data, 1);
            assert_eq!(
                hits,
                vec![Hit {
                    what: What::Variable("dev/TOKEN".into()),
                    line: Some(3)
                }],
                "form {i}"
            );
        }
        let shown = d.display_path("dir/s3cr3t-VALUE_0123456789abcdefXYZ.txt");
        assert_eq!(shown, "dir/[masked:dev/TOKEN].txt");
        assert!(!format!("{d:?}").contains("s3cr3t"));
    }
}
