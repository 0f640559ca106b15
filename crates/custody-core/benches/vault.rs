//! Vault benchmarks: open an unlocked vault and list 10,000 variables
//! (target < 20 ms), read one value (target < 100 µs), reveal 1,000 values
//! of an environment in one read (what a 1,000-variable run does), and the cost of the
//! default passphrase KDF (tuned to about 0.5 s).
//!
//! `cargo bench -p custody-core --bench vault`
#![allow(clippy::unwrap_used)] // benchmark setup: a panic is the report

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use custody_core::crypto::{self, KdfParams};
use custody_core::names::{EnvName, VarName};
use custody_core::vault::Vault;

fn setup(dir: &std::path::Path) -> (std::path::PathBuf, EnvName) {
    let path = dir.join("vault.db");
    let mut v = Vault::create(
        &path,
        b"bench passphrase",
        b"123456",
        KdfParams::INSECURE_FAST,
    )
    .unwrap();
    let env = EnvName::new("bench").unwrap();
    v.create_environment(&env, "benchmark environment").unwrap();
    let names: Vec<VarName> = (0..10_000)
        .map(|i| VarName::new(&format!("VARIABLE_{i:05}")).unwrap())
        .collect();
    let values: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("secret-value-{i:05}-{}", "x".repeat(24)).into_bytes())
        .collect();
    v.import(
        &env,
        names.iter().zip(values.iter().map(Vec::as_slice)),
        1000,
        |_| {},
    )
    .unwrap();
    (path, env)
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (path, env) = setup(dir.path());
    let key = Vault::unlock(&path, b"bench passphrase")
        .unwrap()
        .vault_key()
        .duplicate();

    let mut g = c.benchmark_group("vault");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    g.bench_function("open_unlocked_and_list_10k", |b| {
        b.iter(|| {
            let v = Vault::open_with_key(&path, key.duplicate()).unwrap();
            let vars = v.variables(&env).unwrap();
            assert_eq!(vars.len(), 10_000);
            black_box(vars)
        })
    });
    let v = Vault::open_with_key(&path, key.duplicate()).unwrap();
    let var = VarName::new("VARIABLE_04321").unwrap();
    g.sample_size(100);
    g.bench_function("read_one_value", |b| {
        b.iter(|| black_box(v.reveal(&env, &var).unwrap()))
    });
    // What one run in a 1,000-variable environment reveals (MCP `run`
    // target: the whole call within 5 ms).
    let thousand: Vec<VarName> = (0..1000)
        .map(|i| VarName::new(&format!("VARIABLE_{:05}", i * 10)).unwrap())
        .collect();
    g.bench_function("reveal_many_1000", |b| {
        b.iter(|| black_box(v.reveal_many(&env, &thousand).unwrap()))
    });
    g.finish();

    let mut k = c.benchmark_group("kdf");
    k.sample_size(10).measurement_time(Duration::from_secs(8));
    k.bench_function("argon2id_default_params", |b| {
        b.iter(|| {
            black_box(
                crypto::derive_kek(b"bench passphrase", &[7; 16], &KdfParams::DEFAULT).unwrap(),
            )
        })
    });
    k.finish();
}

criterion_group!(vault, benches);
criterion_main!(vault);
