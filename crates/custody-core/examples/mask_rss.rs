//! Peak memory of a masker streaming N MiB of build-log text in 64 KiB chunks,
//! to show it does not grow with the output size:
//!
//! `cargo run --release -p custody-core --example mask_rss -- 64`
//! `cargo run --release -p custody-core --example mask_rss -- 512`
//!
//! Prints MiB streamed, masks made, throughput and VmHWM (peak RSS).
#![allow(clippy::unwrap_used)] // an example: a panic is the error report

use std::sync::Arc;
use std::time::Instant;

use custody_core::mask::MaskingEngine;

const CHUNK: usize = 64 * 1024;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    // 100 values shaped like real tokens (with one PEM key).
    let mut state = 7u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alnum = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = |len: usize| -> String {
        (0..len)
            .map(|_| alnum[(next() % 62) as usize] as char)
            .collect()
    };
    let mut values: Vec<(String, String)> = (0..99)
        .map(|i| (format!("SECRET_{i}"), format!("tok_{}", token(36))))
        .collect();
    let pem: Vec<String> = (0..25).map(|_| token(64)).collect();
    values.push((
        "KEY".into(),
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            pem.join("\n")
        ),
    ));
    let engine = Arc::new(MaskingEngine::new(values.iter().map(|(k, v)| (k, v))));

    // One 64 KiB block of log lines, with a different secret in each block.
    let base = "   Compiling serde v1.0.200 (/home/runner/.cargo/registry/src/index.crates.io/serde-1.0.200)\n\
        2025-11-23T08:47:12.345Z INFO  [worker-3] GET /api/v1/users/1234 status=200 took=12ms\n\
        commit 4f1c0e2a9d7b3c5e8f6a1b2c3d4e5f60718293a4 Merge pull request #812 from dev/feature\n";
    let before = peak_rss_kib();
    let mut masker = engine.masker();
    let mut out = Vec::with_capacity(2 * CHUNK);
    let mut block = String::with_capacity(CHUNK + 1024);
    let start = Instant::now();
    let mut streamed = 0usize;
    let mut i = 0usize;
    while streamed < mib << 20 {
        block.clear();
        while block.len() < CHUNK - 200 {
            block.push_str(base);
        }
        let value = &values[i % values.len()].1;
        let shown = if value.contains('\n') {
            value.lines().nth(1 + i % 25).unwrap_or("")
        } else {
            value
        };
        block.push_str(&format!("token={shown}\n"));
        i += 1;
        out.clear();
        masker.push(block.as_bytes(), &mut out);
        streamed += block.len();
    }
    out.clear();
    masker.finish(&mut out);
    let secs = start.elapsed().as_secs_f64();
    let masks: u64 = masker.counts().values().sum();
    println!(
        "streamed {} MiB in 64 KiB chunks: {masks} masks, {:.2} GiB/s, VmHWM before streaming {} KiB, after {} KiB",
        streamed >> 20,
        streamed as f64 / secs / (1u64 << 30) as f64,
        before,
        peak_rss_kib()
    );
}
