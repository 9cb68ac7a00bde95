//! The Redis store against the raw ceiling of the same script, in one run.
//!
//! `cargo bench -p tollgate-redis --bench redis_store` (takes about three
//! minutes; `TOLLGATE_BENCH_SECS` sets the seconds per measurement, default
//! 3; `TOLLGATE_BENCH_ALGORITHMS=gcra,sliding_log` measures only those,
//! `TOLLGATE_BENCH_MEMORY=0` skips the memory part;
//! `TOLLGATE_BENCH_CONNECTIONS=n` sets the store's connections, default
//! [`RedisOptions::connections`]'s).
//!
//! Starts its own redis-server on a free loopback port, then measures:
//! 1. for each algorithm, the ceiling: `redis-benchmark` sending the very
//!    call the store sends (`FCALL` of the function library, consuming) with
//!    `-P 1 -c 50`, `-P 16 -c 50` and `-P 1 -c 1`, on one hot key, and with
//!    `-P 1 -c 50` and `-P 16 -c 50` on 100 000 random keys (`-r`);
//! 2. decisions per second and latency through `Limiter` over `RedisStore`
//!    at 1 and 50 concurrent callers, for each algorithm, on one hot key
//!    and on 100 000 random keys, each against its algorithm's ceiling on
//!    the same keys (random-key rows also against the hot-key ceiling);
//! 3. Redis memory per idle key for each algorithm (`INFO memory` over
//!    100 000 keys) next to a plain integer counter with the same key names
//!    and a TTL.
//!
//! Policies never deny (10^9 per hour), so every call does the full write path.

#![allow(missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate::{Algorithm, Limiter, Policy};
use tollgate_redis::{RedisOptions, RedisStore, script};
use tollgate_testkit::redis::RedisServer;

const KEYS: u64 = 100_000;

/// The label of the rows on random keys.
const RANDOM: &str = "100k random";

fn seconds() -> u64 {
    std::env::var("TOLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn policy(algorithm: Algorithm) -> Policy {
    let text = match algorithm {
        Algorithm::SlidingLog => "sliding_log 1000000/1h".to_owned(),
        // 3 x limit x period must stay exact (below 2^53 µs).
        Algorithm::SlidingWindow => "sliding_window 1000000000/1s".to_owned(),
        a => format!("{a} 1000000000/1h"),
    };
    text.parse().expect("valid")
}

/// The algorithms to measure: `TOLLGATE_BENCH_ALGORITHMS`, or all six.
fn algorithms() -> Vec<Algorithm> {
    match std::env::var("TOLLGATE_BENCH_ALGORITHMS") {
        Ok(list) => list
            .split(',')
            .map(|name| name.trim().parse().expect("an algorithm name"))
            .collect(),
        Err(_) => Algorithm::ALL.to_vec(),
    }
}

struct Ceiling {
    algorithm: Algorithm,
    label: &'static str,
    rps: f64,
    p50_us: f64,
}

/// Runs redis-benchmark sending the store's `FCALL` for one policy of
/// `algorithm` on one hot key, or on 100 000 random keys with `random`;
/// returns requests/s and p50.
fn redis_benchmark(
    server: &RedisServer,
    algorithm: Algorithm,
    (pipeline, clients, requests): (u32, u32, u32),
    random: bool,
) -> (f64, f64) {
    let p = policy(algorithm);
    let port = server.port().to_string();
    // `-r` puts a random number below KEYS in place of `__rand_int__`.
    let (key, spread) = if random {
        ("__rand_int__", vec!["-r".to_owned(), KEYS.to_string()])
    } else {
        ("hot", Vec::new())
    };
    let args: Vec<String> = spread
        .into_iter()
        .chain(vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port,
            "-n".into(),
            requests.to_string(),
            "-c".into(),
            clients.to_string(),
            "-P".into(),
            pipeline.to_string(),
            "--precision".into(),
            "3".into(),
            "FCALL".into(),
            script::LIBRARY.name.clone(),
            "1".into(),
            format!("tollgate:{{{key}}}:bench:{algorithm}"),
            "1".into(),
            "1".into(),
            "".into(),
            script::policy_arg(&p),
        ])
        .collect();
    let out = Command::new("redis-benchmark")
        .args(&args)
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(!text.contains("ERR"), "redis-benchmark errors:\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("throughput summary:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no throughput in:\n{text}"));
    let mut lines = text.lines().skip_while(|l| !l.contains("latency summary"));
    let header: Vec<&str> = lines
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let values: Vec<f64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let p50 = header
        .iter()
        .position(|h| *h == "p50")
        .and_then(|i| values.get(i))
        .copied()
        .unwrap_or(f64::NAN);
    (rps, p50 * 1000.0)
}

struct Run {
    algorithm: Algorithm,
    keys: &'static str,
    callers: usize,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn load(store: &RedisStore, algorithm: Algorithm, random_keys: bool, callers: usize) -> Run {
    let limiter = Limiter::builder(store.clone())
        .policy("bench", policy(algorithm))
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (limiter, stop, count) = (limiter.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut i = c as u64 * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = if random_keys {
                        format!("user-{}", (i >> 33) % KEYS)
                    } else {
                        "hot".to_owned()
                    };
                    let t = Instant::now();
                    let d = limiter.check("bench", key, 1).await.expect("redis");
                    hist.record(t.elapsed().as_micros() as u64)
                        .expect("in range");
                    assert!(d.allowed);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                hist
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds())).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        hist.add(t.await.expect("task")).expect("same bounds");
    }
    let elapsed = start.elapsed().as_secs_f64();
    Run {
        algorithm,
        keys: if random_keys { RANDOM } else { "hot" },
        callers,
        rps: count.load(Ordering::Relaxed) as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    }
}

fn used_memory(server: &RedisServer) -> i64 {
    let info = server.cli(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

async fn memory_per_key(server: &RedisServer, store: &RedisStore) -> Vec<(String, f64)> {
    let client = redis::Client::open(server.url()).expect("url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut rows = Vec::new();
    // Baseline: the same key names holding a plain integer with a TTL.
    server.cli(&["FLUSHALL"]);
    let before = used_memory(server);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("{}:{{user-{i:06}}}:bench:gcra", store.prefix()))
                .arg(1_790_000_000_000_000u64)
                .arg("PX")
                .arg(3_600_000)
                .ignore();
        }
        let () = pipe.query_async(&mut con).await.expect("pipeline");
    }
    rows.push((
        "plain counter (SET key <int> PX)".to_owned(),
        (used_memory(server) - before) as f64 / KEYS as f64,
    ));
    for algorithm in Algorithm::ALL {
        server.cli(&["FLUSHALL"]);
        let before = used_memory(server);
        // 100/1h: every state stays live (36 s per unit) for the whole
        // measurement, and a whole number of µs per unit: gcra stores one integer.
        let policy: Policy = format!("{algorithm} 100/1h").parse().expect("valid");
        let limiter = Limiter::builder(store.clone())
            .policy("bench", policy)
            .build();
        let tasks: Vec<_> = (0..50u64)
            .map(|t| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    for i in (t..KEYS).step_by(50) {
                        limiter
                            .check("bench", format!("user-{i:06}"), 1)
                            .await
                            .expect("redis");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        rows.push((
            algorithm.name().to_owned(),
            (used_memory(server) - before) as f64 / KEYS as f64,
        ));
    }
    rows
}

/// `options` with `TOLLGATE_BENCH_CONNECTIONS` connections, when set.
fn connections(options: RedisOptions) -> RedisOptions {
    match std::env::var("TOLLGATE_BENCH_CONNECTIONS").map(|n| n.parse()) {
        Ok(Ok(n)) => options.connections(n),
        Ok(Err(_)) => panic!("TOLLGATE_BENCH_CONNECTIONS must be a number"),
        Err(_) => options,
    }
}

fn main() {
    let server = RedisServer::start();
    server.cli(&["FUNCTION", "LOAD", &script::LIBRARY.source]);
    let n = (seconds() * 100_000) as u32;
    let mut ceilings: Vec<Ceiling> = Vec::new();
    for algorithm in algorithms() {
        for (label, p, c, requests, random) in [
            ("-P 1 -c 50", 1, 50, n, false),
            ("-P 16 -c 50", 16, 50, 4 * n, false),
            ("-P 1 -c 1", 1, 1, n / 5, false),
            ("-P 1 -c 50 -r", 1, 50, n, true),
            ("-P 16 -c 50 -r", 16, 50, 4 * n, true),
        ] {
            server.cli(&["FLUSHALL"]);
            let (rps, p50_us) = redis_benchmark(&server, algorithm, (p, c, requests), random);
            ceilings.push(Ceiling {
                algorithm,
                label,
                rps,
                p50_us,
            });
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (runs, memory) = runtime.block_on(async {
        let store = RedisStore::connect(
            &server.url(),
            connections(RedisOptions::default().timeout(Duration::from_secs(5))),
        )
        .await
        .expect("connect");
        let mut runs = Vec::new();
        for algorithm in algorithms() {
            for random in [false, true] {
                for callers in [1, 50] {
                    server.cli(&["FLUSHALL"]);
                    runs.push(load(&store, algorithm, random, callers).await);
                }
            }
        }
        // TOLLGATE_BENCH_MEMORY=0: decisions only.
        let memory = if std::env::var("TOLLGATE_BENCH_MEMORY").as_deref() == Ok("0") {
            Vec::new()
        } else {
            memory_per_key(&server, &store).await
        };
        (runs, memory)
    });

    println!(
        "\n== ceiling: redis-benchmark, the same FCALL (one hot key; -r: 100 000 random keys)"
    );
    println!(
        "{:<15} {:<14} {:>12} {:>10}",
        "algorithm", "mode", "req/s", "p50 µs"
    );
    for c in &ceilings {
        println!(
            "{:<15} {:<14} {:>12.0} {:>10.0}",
            c.algorithm.name(),
            c.label,
            c.rps,
            c.p50_us
        );
    }
    let ceiling = |algorithm: Algorithm, label: &str| {
        ceilings
            .iter()
            .find(|c| c.algorithm == algorithm && c.label == label)
            .expect("measured")
    };
    println!("\n== Limiter over RedisStore");
    println!(
        "{:<13} {:<12} {:>7} {:>11} {:>8} {:>8}  vs ceiling",
        "algorithm", "keys", "callers", "decisions/s", "p50 µs", "p99 µs"
    );
    for r in &runs {
        let unpipelined = ceiling(r.algorithm, "-P 1 -c 50").rps;
        let pipelined = ceiling(r.algorithm, "-P 16 -c 50").rps;
        let single_p50 = ceiling(r.algorithm, "-P 1 -c 1").p50_us;
        let versus = if r.callers == 50 && r.keys == RANDOM {
            format!(
                "{:.2}x -P1, {:.2}x -P16 of the random-key ceiling; {:.2}x -P1, {:.2}x -P16 of the hot-key one",
                r.rps / ceiling(r.algorithm, "-P 1 -c 50 -r").rps,
                r.rps / ceiling(r.algorithm, "-P 16 -c 50 -r").rps,
                r.rps / unpipelined,
                r.rps / pipelined
            )
        } else if r.callers == 50 {
            format!(
                "{:.2}x -P1, {:.2}x -P16",
                r.rps / unpipelined,
                r.rps / pipelined
            )
        } else {
            format!("p50 {:+.0} µs vs -c 1", r.p50_us as f64 - single_p50)
        };
        println!(
            "{:<13} {:<12} {:>7} {:>11.0} {:>8} {:>8}  {}",
            r.algorithm.name(),
            r.keys,
            r.callers,
            r.rps,
            r.p50_us,
            r.p99_us,
            versus
        );
    }
    println!("\n== Redis memory per idle key (100 000 keys, used_memory delta)");
    for (name, bytes) in memory {
        println!("{name:<34} {bytes:>7.1} B");
    }
}
