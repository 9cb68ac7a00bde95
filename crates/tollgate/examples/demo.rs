//! Shows decisions of every algorithm on the embedded memory store.
//!
//! `cargo run --example demo` — one client sends bursts against a policy of
//! 5 requests per second in each algorithm; the output shows what each one
//! admits, what it reports as remaining, and when it says to retry. Time is
//! simulated with a manual clock, so the output is the same on every run.

use std::time::Duration;

use tollgate::{Algorithm, Limiter, ManualClock, MemoryStore};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new(0);
    let mut builder = Limiter::builder(MemoryStore::with_clock(clock.clone()));
    for algorithm in Algorithm::ALL {
        builder = builder.policy(algorithm.name(), format!("{algorithm} 5/1s").parse()?);
    }
    let limiter = builder.build();

    // (time in ms, requests sent at that instant)
    let timeline = [(900, 5), (1000, 5), (1300, 2), (2500, 4)];
    println!("tollgate demo: 5 requests/second per client, memory store, simulated time\n");
    for algorithm in Algorithm::ALL {
        println!("{algorithm}:");
        // Each algorithm has its own policy name, so its own state: replay
        // the same timeline from zero.
        clock.set_us(0);
        let mut now_ms = 0;
        for (at_ms, burst) in timeline {
            clock.advance(Duration::from_millis(at_ms - now_ms));
            now_ms = at_ms;
            let mut line = format!("  t={:>5} ms  {burst} requests ->", at_ms);
            for _ in 0..burst {
                let d = limiter.check(algorithm.name(), "client-1", 1).await?;
                line += &if d.allowed && !d.delay.is_zero() {
                    format!(" wait {}ms", d.delay.as_millis())
                } else if d.allowed {
                    format!(" ok({} left)", d.remaining)
                } else {
                    match d.retry_after {
                        Some(r) => format!(" 429(retry {}ms)", r.as_micros().div_ceil(1000)),
                        None => " 429".to_owned(),
                    }
                };
            }
            println!("{line}");
        }
        println!();
    }
    Ok(())
}
