//! What the dashboard adds to a decision, in one run: `App::decide` on
//! the memory store for a denied key (answered by the deny cache, the
//! cheapest decision there is, so the sketch's share is the largest) and
//! an allowed one, with `server.dashboard.enabled` true and false; and
//! the sketch alone (`Hitters::denied`: a keyed hash, two locks, a scan of
//! 32 slots).
//!
//! `cargo bench -p tollgate-server --bench dashboard`

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::Mode;
use tollgate_server::hitters::Hitters;
use tollgate_server::{App, Config, ConfigSource, ServerStore};

fn app(enabled: bool) -> App {
    let text = format!(
        "server:\n  dashboard:\n    enabled: {enabled}\npolicies:\n  - name: deny\n    algorithm: fixed_window\n    limit: 1\n    period: 1h\n  - name: allow\n    algorithm: gcra\n    limit: 10\n    period: 1s\n    burst: 4000000000\n"
    );
    let config = Config::parse(&text, "bench.yaml").expect("valid");
    App::new(
        ConfigSource::default(),
        config,
        ServerStore::Memory(Default::default()),
    )
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("dashboard");
    let apps = [(app(false), "disabled"), (app(true), "enabled")];
    // Each load's two cases run one after the other, so the machine's
    // drift between them is small.
    for policy in ["deny", "allow"] {
        for (app, state) in &apps {
            let loaded = app.current();
            // The deny key's one unit is spent here: every check below is
            // a denial.
            runtime
                .block_on(app.decide(&loaded, &[policy], b"http:user-1", 1, Mode::Consume, false))
                .expect("decides");
            group.bench_function(format!("{policy}/{state}"), |b| {
                b.iter(|| {
                    runtime
                        .block_on(app.decide(
                            &loaded,
                            black_box(&[policy]),
                            black_box(b"http:user-1"),
                            1,
                            Mode::Consume,
                            false,
                        ))
                        .expect("decides")
                });
            });
        }
    }
    let hitters = Hitters::default();
    let mut i = 0u64;
    group.bench_function("sketch_only", |b| {
        b.iter(|| {
            i += 1;
            // 64 keys: more than the 32 slots, so replacements happen.
            let key = (i % 64).to_le_bytes();
            let hash = hitters.hash(&key);
            hitters.denied(black_box("deny"), hash, &key, false);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
