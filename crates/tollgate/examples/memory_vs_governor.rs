//! The memory store and governor's keyed limiter, decision by decision, for
//! docs/BENCHMARKS.md ("Memory store vs governor"): the criterion bench
//! (`benches/memory_store.rs`) measures four cases; this measures what
//! explains them.
//!
//! ```sh
//! # Nanoseconds per decision over 1 to 200 000 keys, one thread, both
//! # limiters in turn (same GCRA quota as the bench):
//! cargo run --release -p tollgate --example memory_vs_governor -- sweep
//! # One limiter only, N decisions over K keys, for valgrind: run it twice
//! # with different N and divide the difference in instructions by the
//! # difference in N, so that start-up cancels out.
//! cargo run --release -p tollgate --example memory_vs_governor -- tollgate N K
//! cargo run --release -p tollgate --example memory_vs_governor -- governor N K
//! ```

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use governor::{Quota, RateLimiter};
use tollgate::{Check, MemoryStore, Mode, Policy, PolicyRef};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "sweep".to_owned());
    let policy: Policy = "gcra 10/1s burst 4000000000".parse()?;
    let burst = NonZeroU32::new(4_000_000_000).ok_or("burst")?;
    let quota = Quota::per_second(NonZeroU32::new(10).ok_or("rate")?).allow_burst(burst);
    let refs = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    let tollgate = |store: &MemoryStore, n: u64, keys: u64| {
        for i in 0..n {
            let key = (i % keys).to_le_bytes();
            black_box(store.apply_sync(Check::new(&key, &refs, 1, Mode::Consume)));
        }
    };
    let governor = |limiter: &governor::DefaultKeyedRateLimiter<u64>, n: u64, keys: u64| {
        for i in 0..n {
            let _ = black_box(limiter.check_key(&(i % keys)));
        }
    };
    match mode.as_str() {
        "sweep" => {
            println!("keys     tollgate ns  governor ns  ratio (governor / tollgate time)");
            for keys in [1, 1_000, 10_000, 25_000, 50_000, 100_000, 200_000] {
                let n = 4_000_000;
                let store = MemoryStore::new();
                tollgate(&store, keys, keys);
                let start = Instant::now();
                tollgate(&store, n, keys);
                let t = start.elapsed().as_secs_f64() * 1e9 / n as f64;
                let limiter = RateLimiter::keyed(quota);
                governor(&limiter, keys, keys);
                let start = Instant::now();
                governor(&limiter, n, keys);
                let g = start.elapsed().as_secs_f64() * 1e9 / n as f64;
                println!("{keys:<8} {t:>11.1} {g:>12.1}  {:.2}", g / t);
            }
        }
        which @ ("tollgate" | "governor") => {
            let n: u64 = args.next().ok_or("N")?.parse()?;
            let keys: u64 = args.next().map_or(Ok(1), |k| k.parse())?;
            if which == "tollgate" {
                tollgate(&MemoryStore::new(), n, keys.max(1));
            } else {
                governor(&RateLimiter::keyed(quota), n, keys.max(1));
            }
        }
        other => return Err(format!("unknown mode {other}: sweep, tollgate or governor").into()),
    }
    Ok(())
}
