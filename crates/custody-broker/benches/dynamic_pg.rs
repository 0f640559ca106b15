//! Mint + revoke round trip of a PostgreSQL dynamic credential, on loopback
//! against a throwaway server started here: connect as admin, CREATE ROLE
//! (SCRAM verifier, VALID UNTIL); connect again, run the five default
//! revocation statements. Target: median ≤ 30 ms.
//!
//! `cargo bench -p custody-broker --bench dynamic_pg`
#![allow(clippy::unwrap_used)] // bench setup: a panic is the failure report

use custody_testkit::pg;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use custody_broker::sources::postgres;
use custody_core::sources::{DEFAULT_CREATION, DEFAULT_REVOCATION, PostgresSource};

fn mint_revoke(c: &mut Criterion) {
    let db = pg::Pg::start();
    let cfg = postgres::admin_config(db.admin_url().as_bytes()).unwrap();
    let source = PostgresSource {
        admin_from: "infra/PG_ADMIN_URL".into(),
        creation: DEFAULT_CREATION.iter().map(|s| (*s).to_owned()).collect(),
        revocation: DEFAULT_REVOCATION.iter().map(|s| (*s).to_owned()).collect(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("dynamic_postgres");
    g.sample_size(50).measurement_time(Duration::from_secs(10));
    g.bench_function("mint_and_revoke_role", |b| {
        b.iter(|| {
            n += 1;
            let role = format!("custody-bench000-{n:016x}");
            rt.block_on(async {
                postgres::create(
                    &cfg,
                    &source,
                    &role,
                    b"bench-password-0123456789abcdef",
                    "2099-01-01T00:00:00Z",
                )
                .await
                .unwrap();
                postgres::revoke(&cfg, &source, &role).await.unwrap();
            });
        })
    });
    g.finish();
    assert!(
        db.roles_like("custody-bench000-").is_empty(),
        "every role was revoked"
    );
}

criterion_group!(benches, mint_revoke);
criterion_main!(benches);
