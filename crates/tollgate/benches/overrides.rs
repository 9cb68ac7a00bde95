//! What overrides cost a decision that has none, in one run: a limiter on
//! the memory store without an override table, with an empty one, and with
//! 100 000 overrides of other keys (a miss), and a key that has one (a hit).
//!
//! `cargo bench -p tollgate --bench overrides`

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::overrides::{Override, OverrideLimit, Overrides};
use tollgate::{Limiter, MemoryStore, Policy};

/// A quota that never denies during a run (as in `memory_store`).
fn policy() -> Policy {
    "gcra 10/s burst 4000000000".parse().expect("valid")
}

fn limiter(table: Option<Arc<Overrides>>) -> Limiter<MemoryStore> {
    let mut builder = Limiter::builder(MemoryStore::new()).policy("api", policy());
    if let Some(table) = table {
        builder = builder.overrides(table);
    }
    builder.build()
}

fn full_table() -> Arc<Overrides> {
    let table = Overrides::new();
    let value = Override {
        limit: OverrideLimit::Policy(policy()),
        expires_at_us: None,
    };
    for i in 0..100_000u32 {
        table
            .set("api", format!("tenant-{i}").as_bytes(), value)
            .expect("within the cap");
    }
    Arc::new(table)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("overrides");
    let full = full_table();
    for (name, limiter, key) in [
        ("no_table", limiter(None), "someone"),
        (
            "empty_table",
            limiter(Some(Arc::new(Overrides::new()))),
            "someone",
        ),
        (
            "100k_table_miss",
            limiter(Some(Arc::clone(&full))),
            "someone",
        ),
        (
            "100k_table_hit",
            limiter(Some(Arc::clone(&full))),
            "tenant-77",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    black_box(limiter.check("api", key, 1).await.expect("decision"));
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
