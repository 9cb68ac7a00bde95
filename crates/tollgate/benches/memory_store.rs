//! Throughput of the memory store against governor's keyed limiter, in one run.
//!
//! `cargo bench -p tollgate --bench memory_store`
//!
//! Cases: one hot key, and 100 000 keys visited in turn; one thread and two.
//! Both limiters get the same GCRA quota, 10 per second with a burst of
//! 4 000 000 000: every request is allowed during a run and every key's state
//! stays live, so both measure the full decision on state that exists. Each
//! uses its own default clock. Two-thread cases time `iters` decisions split
//! over two threads, so their figure is per decision across the pair.
//!
//! The `churn` case measures what governor does not do: a quota whose state
//! is fresh again 1 µs after each request (10^9 per second), so the memory
//! store drops and re-creates entries as it cycles over 100 000 keys, where
//! governor keeps every key forever.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use tollgate::{MemoryStore, Mode, Policy, PolicyRef};

const KEYS: u64 = 100_000;

fn key_of(case_keys: u64, i: u64) -> u64 {
    if case_keys == 1 { 0 } else { i % case_keys }
}

/// Runs `op(i)` for `iters` iterations over `threads` threads; returns wall time.
fn timed(threads: u64, iters: u64, op: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                let share = iters / threads;
                for i in 0..share {
                    op(t * 7919 + i);
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let policy: Policy = "gcra 10/1s burst 4000000000".parse().expect("valid");
    let quota = Quota::per_second(NonZeroU32::new(10).expect("non-zero"))
        .allow_burst(NonZeroU32::new(4_000_000_000).expect("non-zero"));
    let mut group = c.benchmark_group("memory_store");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (keys, label) in [(1, "hot_key"), (KEYS, "100k_keys")] {
        for threads in [1u64, 2] {
            let id = format!("{label}/{threads}_thread");
            let store = MemoryStore::new();
            let refs = [PolicyRef {
                name: "api",
                policy: &policy,
            }];
            group.bench_function(BenchmarkId::new("tollgate", &id), |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, |i| {
                        let key = key_of(keys, i).to_le_bytes();
                        black_box(store.apply_sync(tollgate::Check::new(
                            &key,
                            &refs,
                            1,
                            Mode::Consume,
                        )));
                    })
                })
            });
            let governor = RateLimiter::keyed(quota);
            group.bench_function(BenchmarkId::new("governor", &id), |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, |i| {
                        let _ = black_box(governor.check_key(&key_of(keys, i)));
                    })
                })
            });
        }
    }
    let churn: Policy = "gcra 1000000000/1s".parse().expect("valid");
    let store = MemoryStore::new();
    let refs = [PolicyRef {
        name: "api",
        policy: &churn,
    }];
    group.bench_function(
        BenchmarkId::new("tollgate", "churn_100k_keys/1_thread"),
        |b| {
            b.iter_custom(|iters| {
                timed(1, iters, |i| {
                    black_box(store.apply_sync(tollgate::Check::new(
                        &key_of(KEYS, i).to_le_bytes(),
                        &refs,
                        1,
                        Mode::Consume,
                    )));
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
