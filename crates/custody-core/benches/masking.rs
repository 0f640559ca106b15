//! Masking engine throughput on 64 MiB of generated build-log text, side by
//! side with the naive approach (one `str::replace` pass per form of every
//! value, longest first), and engine build time.
//!
//! `cargo bench -p custody-core --bench masking`
#![allow(missing_docs)] // a bench binary
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use custody_core::mask::MaskingEngine;

const MIB: usize = 1 << 20;
const LOG_SIZE: usize = 64 * MIB;
const CHUNK: usize = 64 * 1024;

/// splitmix64: a small deterministic generator, so every run masks the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Secret values shaped like real ones: tokens, keys, passwords, URLs, PEM.
pub fn values(n: usize) -> Vec<(String, String)> {
    let mut rng = Rng(n as u64);
    (0..n)
        .map(|i| {
            let value = match i % 8 {
                0 => format!("ghp_{}", rng.string(ALNUM, 36)),
                1 => format!(
                    "AKIA{}",
                    rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
                ),
                2 => format!("sk_live_{}", rng.string(ALNUM, 24)),
                3 => rng.string(HEX, 64),
                4 => format!("{}!@#{}", rng.string(ALNUM, 12), rng.string(ALNUM, 6)),
                5 => format!(
                    "postgres://app:{}@db.internal:5432/app",
                    rng.string(ALNUM, 20)
                ),
                6 if i % 48 == 6 => {
                    let body: Vec<String> = (0..25).map(|_| rng.string(B64, 64)).collect();
                    format!(
                        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                        body.join("\n")
                    )
                }
                _ => rng.string(B64, 40),
            };
            (format!("SECRET_{i}"), value)
        })
        .collect()
}

/// About `size` bytes of cargo/npm/service log lines, with a real occurrence
/// of a secret (in some form) every ~5,000 lines.
pub fn build_log(size: usize, secrets: &[(String, String)]) -> Vec<u8> {
    let mut rng = Rng(42);
    let crates = [
        "serde",
        "tokio",
        "aho-corasick",
        "regex-syntax",
        "clap_derive",
        "proc-macro2",
        "hyper",
        "rustls",
    ];
    let levels = ["INFO ", "DEBUG", "WARN ", "INFO ", "TRACE"];
    let mut out = String::with_capacity(size + 4096);
    let mut line = 0u64;
    while out.len() < size {
        line += 1;
        let (h, m, s, ms) = (
            line / 3_600_000 % 24,
            line / 60_000 % 60,
            line / 1000 % 60,
            line % 1000,
        );
        match rng.below(12) {
            0 | 1 => out.push_str(&format!(
                "   Compiling {} v{}.{}.{} (/home/runner/.cargo/registry/src/index.crates.io-6f17d22bba15001f/{})\n",
                rng.pick(&crates),
                rng.below(3),
                rng.below(40),
                rng.below(20),
                rng.pick(&crates)
            )),
            2 => out.push_str(&format!(
                "test {}::tests::{}_{} ... ok\n",
                rng.pick(&crates).replace('-', "_"),
                rng.pick(&["parses", "rejects", "round_trips", "handles"]),
                rng.pick(&["empty_input", "unicode", "large_frames", "bad_header"])
            )),
            3 => out.push_str(&format!(
                "npm WARN deprecated {}@{}.{}.{}: This module is not supported, and leaks memory. Do not use it.\n",
                rng.pick(&["inflight", "glob", "rimraf", "request"]),
                rng.below(9),
                rng.below(9),
                rng.below(9)
            )),
            4 => out.push_str(&format!("commit {} Merge pull request #{} from dev/{}\n", rng.string(HEX, 40), rng.below(9000), rng.pick(&crates))),
            5 => out.push_str(&format!("  sha256:{}  layer {}/{}\n", rng.string(HEX, 64), rng.below(12), 12)),
            6 => out.push_str(&format!("    data: {}\n", rng.string(B64, 76))),
            7 => out.push_str(&format!("added {} packages, and audited {} packages in {}s\n", rng.below(2000), rng.below(2000), rng.below(60))),
            8 => out.push_str(&format!(
                "{}:{}:{} [worker-{}] at /src/app/{}.ts:{}:{} TypeError: Cannot read properties of undefined (reading 'map')\r\n",
                rng.pick(&["src/components", "lib/util", "node_modules/.pnpm"]),
                rng.below(400),
                rng.below(80),
                rng.below(8),
                rng.pick(&crates),
                rng.below(400),
                rng.below(80)
            )),
            _ => out.push_str(&format!(
                "2025-11-23T{h:02}:{m:02}:{s:02}.{ms:03}Z {} [worker-{}] GET /api/v1/{}/{} status={} took={}ms\n",
                rng.pick(&levels),
                rng.below(16),
                rng.pick(&["users", "orders", "sessions"]),
                rng.below(100_000),
                rng.pick(&["200", "200", "304", "404", "500"]),
                rng.below(900)
            )),
        }
        if !secrets.is_empty() && rng.below(5000) == 0 {
            let value = &secrets[rng.below(secrets.len())].1;
            let shown = match rng.below(6) {
                0 => value.clone(),
                1 => hex::encode(value),
                2 => STANDARD.encode(value),
                // `| base64` (76 columns) and `| xxd -p` (60), wrapped.
                3 => wrapped(STANDARD.encode(value).as_bytes(), 76),
                4 => wrapped(hex::encode(value).as_bytes(), 60),
                _ => serde_json::to_string(value).unwrap(),
            };
            out.push_str(&format!("env dump: TOKEN={shown}\n"));
        }
    }
    out.into_bytes()
}

/// `text` cut into lines of `width` columns, as encoders wrap.
fn wrapped(text: &[u8], width: usize) -> String {
    let lines: Vec<&str> = text
        .chunks(width)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    lines.join("\n")
}

/// The worst case for the joined view: `size` bytes of `base64` output
/// (76-column lines, every line break left out of the view) of random
/// bytes, with one of `secrets` wrapped in it every ~5,000 lines.
pub fn wrapped_dump(size: usize, secrets: &[(String, String)]) -> Vec<u8> {
    let mut rng = Rng(7);
    let mut out = String::with_capacity(size + 4096);
    let mut lines = 0u64;
    while out.len() < size {
        out.push_str(&rng.string(B64, 76));
        out.push('\n');
        lines += 1;
        if lines.is_multiple_of(5000) && !secrets.is_empty() {
            let value = &secrets[rng.below(secrets.len())].1;
            out.push_str(&wrapped(STANDARD.encode(value).as_bytes(), 76));
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Every form the naive approach replaces (the same families the engine
/// covers for whole values, without the alignment shifts), longest first.
fn naive_forms(secrets: &[(String, String)]) -> Vec<(String, String)> {
    let mut forms = Vec::new();
    for (name, value) in secrets {
        let label = format!("[masked:{name}]");
        let json = serde_json::to_string(value).unwrap();
        let percent: String = value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        for form in [
            value.clone(),
            hex::encode(value),
            hex::encode_upper(value),
            STANDARD.encode(value),
            STANDARD_NO_PAD.encode(value),
            URL_SAFE.encode(value),
            URL_SAFE_NO_PAD.encode(value),
            json.trim_matches('"').to_owned(),
            percent,
        ] {
            forms.push((form, label.clone()));
        }
    }
    forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    forms.dedup_by(|a, b| a.0 == b.0);
    forms
}

fn naive_mask(text: &str, forms: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (form, label) in forms {
        if text.contains(form.as_str()) {
            text = text.replace(form.as_str(), label);
        }
    }
    text
}

fn engine_mask(engine: &Arc<MaskingEngine>, log: &[u8], out: &mut Vec<u8>) -> usize {
    let mut masker = engine.masker();
    let mut total = 0;
    for chunk in log.chunks(CHUNK) {
        out.clear();
        masker.push(chunk, out);
        total += out.len();
    }
    out.clear();
    masker.finish(out);
    total + out.len()
}

fn bench(c: &mut Criterion) {
    let all = values(1000);
    let log = build_log(LOG_SIZE, &all[..100]);
    let text = std::str::from_utf8(&log).unwrap();
    {
        // Sanity: the engine masks every occurrence the log holds.
        let engine = MaskingEngine::new(all[..100].iter().map(|(k, v)| (k, v)));
        let (masked, counts) = engine.mask_all(&log);
        let masked = String::from_utf8(masked).unwrap();
        for (_, value) in &all[..100] {
            for form in [value.clone(), hex::encode(value), STANDARD.encode(value)] {
                assert!(!masked.contains(&form));
            }
        }
        eprintln!(
            "100 values: {} masks in the 64 MiB log",
            counts.values().sum::<u64>()
        );
    }
    let mut group = c.benchmark_group("mask");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in [10, 100, 1000] {
        let secrets = &all[..n];
        let engine = Arc::new(MaskingEngine::new(secrets.iter().map(|(k, v)| (k, v))));
        let mut out = Vec::with_capacity(2 * CHUNK);
        group.throughput(Throughput::Bytes(log.len() as u64));
        group.bench_function(BenchmarkId::new("engine_64MiB", n), |b| {
            b.iter(|| engine_mask(&engine, black_box(&log), &mut out))
        });
        // The naive loop makes one pass per form: on a shorter input, so the
        // whole bench stays within minutes (throughput is per byte either way).
        let forms = naive_forms(secrets);
        let size = match n {
            10 => 64 * MIB,
            100 => 8 * MIB,
            _ => MIB,
        };
        let end = text[..size].rfind('\n').map_or(size, |i| i + 1);
        let part = &text[..end];
        group.throughput(Throughput::Bytes(part.len() as u64));
        group.bench_function(
            BenchmarkId::new(format!("naive_replace_{}MiB", size / MIB), n),
            |b| b.iter(|| naive_mask(black_box(part), &forms).len()),
        );
    }
    // Wrapped output: every line of a 64 MiB `base64` dump is joined.
    let dump = wrapped_dump(LOG_SIZE, &all[..100]);
    let engine = Arc::new(MaskingEngine::new(all[..100].iter().map(|(k, v)| (k, v))));
    let (masked, _) = engine.mask_all(&dump);
    assert!(masked.len() < dump.len(), "no wrapped secret was masked");
    let mut out = Vec::with_capacity(2 * CHUNK);
    group.throughput(Throughput::Bytes(dump.len() as u64));
    group.bench_function(BenchmarkId::new("engine_wrapped_base64_64MiB", 100), |b| {
        b.iter(|| engine_mask(&engine, black_box(&dump), &mut out))
    });
    group.finish();

    let mut group = c.benchmark_group("build");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [100, 1000] {
        let secrets = &all[..n];
        group.bench_function(BenchmarkId::new("engine", n), |b| {
            b.iter(|| {
                MaskingEngine::new(black_box(secrets).iter().map(|(k, v)| (k, v))).pattern_count()
            })
        });
    }
    group.finish();
    for n in [10, 100, 1000] {
        let engine = MaskingEngine::new(all[..n].iter().map(|(k, v)| (k, v)));
        eprintln!(
            "{n} values: {} patterns, longest {} bytes",
            engine.pattern_count(),
            engine.longest_pattern_len()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
