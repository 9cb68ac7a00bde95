//! A flood: 20 clients hammering 10 hot keys far above their limits, through
//! `Limiter<Resilient<RedisStore>>`, with the deny cache on and off; then
//! the latency of decisions while Redis is down or hung.
//!
//! `cargo bench -p tollgate-redis --bench flood` (`TOLLGATE_BENCH_SECS`
//! sets the seconds per scenario, default 10; six scenarios).
//!
//! Starts its own redis-server on a free loopback port. For each flood it
//! reports decisions per second, allowed decisions per second, and Redis
//! script calls per second (`cmdstat_fcall` + `cmdstat_evalsha` +
//! `cmdstat_eval` deltas of `INFO commandstats`); the deny cache's goal is script calls within
//! 1.1 x allowed decisions (plus breaker probes, none here). For the outage
//! scenarios it reports the latency distribution of decisions (failure
//! mode `open`, timeout 50 ms): the goal is p99 <= the timeout.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate::Limiter;
use tollgate::resilience::{FailureMode, ResilienceOptions, Resilient};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::RedisServer;

const CLIENTS: usize = 20;
const HOT_KEYS: usize = 10;
const TIMEOUT: Duration = Duration::from_millis(50);

fn seconds() -> u64 {
    std::env::var("TOLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter(|line| {
            ["cmdstat_fcall:", "cmdstat_evalsha:", "cmdstat_eval:"]
                .iter()
                .any(|command| line.starts_with(command))
        })
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

struct Flood {
    decisions: u64,
    allowed: u64,
    degraded: u64,
    latency: Histogram<u64>,
}

/// `CLIENTS` tasks checking the hot keys as fast as they can for `period`.
async fn flood(limiter: &Limiter<Resilient<RedisStore>>, tag: &str, period: Duration) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(AtomicU64::new(0));
    let degraded = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let limiter = limiter.clone();
            let stop = Arc::clone(&stop);
            let allowed = Arc::clone(&allowed);
            let degraded = Arc::clone(&degraded);
            let keys: Vec<String> = (0..HOT_KEYS).map(|k| format!("{tag}-hot-{k}")).collect();
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut i = client;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % HOT_KEYS];
                    i += 1;
                    let started = Instant::now();
                    let d = limiter.check("api", key, 1).await.expect("decision");
                    let us = tollgate::clock::micros(started.elapsed());
                    latency.saturating_record(us.max(1));
                    if d.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    if d.degraded {
                        degraded.fetch_add(1, Ordering::Relaxed);
                    }
                    // A cached or short-circuited decision never waits, so
                    // without this the clients would hold every worker and
                    // starve the timer that ends the run.
                    tokio::task::yield_now().await;
                }
                latency
            })
        })
        .collect();
    tokio::time::sleep(period).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for task in tasks {
        latency.add(task.await.expect("task")).expect("same bounds");
    }
    Flood {
        decisions: latency.len(),
        allowed: allowed.load(Ordering::Relaxed),
        degraded: degraded.load(Ordering::Relaxed),
        latency,
    }
}

async fn limiter(
    server: &RedisServer,
    policy: &str,
    options: ResilienceOptions,
) -> Limiter<Resilient<RedisStore>> {
    let prefix = format!("flood-{}", std::process::id());
    let store = RedisStore::connect(&server.url(), RedisOptions::default().prefix(prefix))
        .await
        .expect("connect");
    Limiter::builder(Resilient::with_invalidations(store, options))
        .policy("api", policy.parse().expect("valid"))
        .build()
}

fn options() -> ResilienceOptions {
    ResilienceOptions::default()
        .failure_mode(FailureMode::Open)
        .timeout(TIMEOUT)
}

async fn hot_keys(server: &RedisServer, label: &str, policy: &str, cache: bool, secs: u64) {
    let limiter = limiter(server, policy, options().deny_cache(cache)).await;
    let tag = format!("{label}-{cache}");
    let before = script_calls(server);
    let started = Instant::now();
    let f = flood(&limiter, &tag, Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = script_calls(server) - before;
    let per_s = |n: u64| n as f64 / elapsed;
    println!(
        "flood {label:<26} deny cache {:<3}: {:>9.0} decisions/s, {:>7.0} allowed/s, {:>8.0} Redis calls/s = {:>6.2} x allowed, p50 {:>5} us, p99 {:>6} us, degraded {}",
        if cache { "on" } else { "off" },
        per_s(f.decisions),
        per_s(f.allowed),
        per_s(calls),
        calls as f64 / f.allowed.max(1) as f64,
        f.latency.value_at_quantile(0.5),
        f.latency.value_at_quantile(0.99),
        f.degraded,
    );
}

fn outage_report(label: &str, f: &Flood, secs: u64) {
    println!(
        "outage {label:<36}: {:>9.0} decisions/s, p50 {:>6} us, p99 {:>6} us, p99.9 {:>6} us, max {:>6} us (timeout {} us), degraded {:.1}%",
        f.decisions as f64 / secs as f64,
        f.latency.value_at_quantile(0.5),
        f.latency.value_at_quantile(0.99),
        f.latency.value_at_quantile(0.999),
        f.latency.max(),
        TIMEOUT.as_micros(),
        100.0 * f.degraded as f64 / f.decisions.max(1) as f64,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let secs = seconds();
    println!(
        "{CLIENTS} clients, {HOT_KEYS} hot keys, {secs} s per scenario, Resilient timeout {TIMEOUT:?}, failure mode open"
    );
    {
        let server = RedisServer::start();
        // 100 per second per key: 1 000 allowed/s in all.
        for cache in [true, false] {
            hot_keys(
                &server,
                "fixed_window 100/s",
                "fixed_window 100/s",
                cache,
                secs,
            )
            .await;
        }
        hot_keys(&server, "gcra 100/s", "gcra 100/s", true, secs).await;
    }
    {
        let mut server = RedisServer::start();
        let limiter = limiter(&server, "gcra 100/s", options()).await;
        server.kill();
        let f = flood(&limiter, "killed", Duration::from_secs(secs)).await;
        outage_report("killed (SIGKILL), breaker on", &f, secs);
    }
    {
        let server = RedisServer::start();
        let with_breaker = limiter(&server, "gcra 100/s", options()).await;
        let no_breaker = limiter(&server, "gcra 100/s", options().breaker_failures(u32::MAX)).await;
        server.stop_signal();
        let f = flood(&with_breaker, "hung", Duration::from_secs(secs)).await;
        outage_report("hung (SIGSTOP), breaker on", &f, secs);
        let f = flood(&no_breaker, "hung-nb", Duration::from_secs(secs)).await;
        outage_report("hung (SIGSTOP), breaker off", &f, secs);
        server.cont_signal();
    }
}
