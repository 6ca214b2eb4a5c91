//! Micro-benchmarks of the purchase hot path's pure parts (criterion).
//!
//! `cargo bench --bench hot_path`. The end-to-end figures come from
//! `flashsale bench` (see docs/BENCHMARKS.md); these isolate the pieces:
//! the ledger's reservation (granted, sold out, limit reached) and buyer
//! token verification with and without the verified-token cache.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use flashsale::auth::{mint_token, Authenticator, Secret};
use flashsale::domain::Ledger;

fn ledger(c: &mut Criterion) {
    let users: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
    c.bench_function("ledger/reserve_granted_100k_buyers", |b| {
        b.iter_batched(
            || Ledger::new(1_000_000, 1),
            |l| {
                for u in &users {
                    let _ = black_box(l.try_reserve(u, 1));
                }
                l
            },
            BatchSize::LargeInput,
        )
    });
    let sold_out = Ledger::new(1, 1);
    sold_out.try_reserve("first", 1).expect("the only unit");
    c.bench_function("ledger/reserve_sold_out", |b| {
        b.iter(|| black_box(sold_out.try_reserve(black_box("user-7"), 1)))
    });
    let limited = Ledger::new(1_000, 1);
    limited.try_reserve("user-7", 1).expect("the first unit");
    c.bench_function("ledger/reserve_limit_reached", |b| {
        b.iter(|| black_box(limited.try_reserve(black_box("user-7"), 1)))
    });
}

fn tokens(c: &mut Criterion) {
    let secret = Secret::new("bench-secret");
    let token = mint_token(&secret, "user-7", 3600).expect("minting");
    let auth = Authenticator::new(&secret, Secret::new("admin"));
    c.bench_function("auth/verify_cached", |b| {
        b.iter(|| black_box(auth.verify_buyer(black_box(&token)).is_ok()))
    });
    let fresh: Vec<String> = (0..10_000)
        .map(|i| mint_token(&secret, &format!("u{i}"), 3600).expect("minting"))
        .collect();
    c.bench_function("auth/verify_uncached", |b| {
        b.iter_batched(
            || Authenticator::new(&secret, Secret::new("admin")),
            |auth| {
                for t in &fresh[..100] {
                    black_box(auth.verify_buyer(t).is_ok());
                }
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, ledger, tokens);
criterion_main!(benches);
