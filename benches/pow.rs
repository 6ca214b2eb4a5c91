//! What a proof-of-work challenge costs a buyer (criterion).
//!
//! `cargo bench --bench pow`: [`solve`] at 16 and 20 bits on fresh
//! challenges (2^bits hashes expected; the time per solve varies
//! geometrically around that), and the server's side, one check of a
//! solution (one HMAC plus one SHA-256). Figures are in docs/SECURITY.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flashsale::auth::Secret;
use flashsale::engine::admission::pow::solve;
use flashsale::engine::admission::Challenges;

fn pow(c: &mut Criterion) {
    let challenges = Challenges::new(&Secret::new("bench"));
    let mut group = c.benchmark_group("pow");
    group.sample_size(10);
    for bits in [16u8, 20] {
        group.bench_function(format!("solve_{bits}_bits"), |b| {
            let mut now = 0;
            b.iter(|| {
                now += 1;
                let (challenge, _) = challenges.issue(1, "buyer", now);
                black_box(solve(&challenge, bits))
            })
        });
    }
    group.finish();
    let (challenge, _) = challenges.issue(1, "buyer", 0);
    let header = format!("{challenge}:{}", solve(&challenge, 16));
    c.bench_function("pow/check_solution_16_bits", |b| {
        b.iter(|| black_box(challenges.check_solution(&header, 1, "buyer", 16, 1)))
    });
}

criterion_group!(benches, pow);
criterion_main!(benches);
