//! An LLM-token budget under concurrency, on real Redis and a real Cluster:
//! several limiters with their own connections reserve estimates at once,
//! and settle each at an actual cost drawn around it. The budget holds to
//! within its overdraft, every unit is accounted for (settled, given back,
//! or reported unpaid), and the store's counter is exactly what was
//! charged.

mod common;

use std::time::Duration;

use tollgate::{Clock, Limiter, ManualClock, Policy};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

const LIMIT: u64 = 20_000;
const OVERDRAFT: u64 = 1_500;

/// A clock stopped in the middle of a window of an hour (and of a bucket's
/// hour of refill): the test never crosses a window's edge, so every
/// surplus is given back in the window it was charged in.
fn mid_window() -> ManualClock {
    let now = tollgate::SystemClock::new().now_us();
    let hour = 3_600_000_000;
    ManualClock::new(now - now % hour + hour / 2)
}

async fn connect(urls: &[String], prefix: &str, clock: &ManualClock) -> RedisStore {
    let options = RedisOptions::default()
        .prefix(prefix)
        .timeout(Duration::from_secs(5));
    if urls.len() == 1 {
        RedisStore::connect(&urls[0], options)
            .await
            .expect("connect")
            .with_test_clock(clock.clone())
    } else {
        RedisStore::connect_cluster(urls, options)
            .await
            .expect("connect")
            .with_test_clock(clock.clone())
    }
}

/// What one task saw: per allowed reservation, (estimate, actual,
/// returned, charged, unpaid).
type Ledger = Vec<(u64, u64, u64, u64, u64)>;

/// A small deterministic generator (xorshift), seeded per task.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn task(limiter: Limiter<RedisStore>, name: String, seed: u64) -> Ledger {
    let mut rng = seed | 1;
    let mut ledger = Ledger::new();
    for _ in 0..12 {
        let estimate = 200 + next(&mut rng) % 600;
        // Actual cost from nothing to twice the estimate.
        let actual = next(&mut rng) % (2 * estimate + 1);
        let reservation = limiter
            .reserve(&[&name], "tenant", estimate, Duration::from_secs(60))
            .await
            .expect("redis");
        let Some(id) = reservation.id else {
            continue;
        };
        tokio::task::yield_now().await; // the response streams
        let settled = limiter
            .settle(&id, actual)
            .await
            .expect("redis")
            .expect("open");
        assert!(!settled.replayed);
        let s = settled.settled[0];
        ledger.push((estimate, actual, s.returned, s.charged, s.unpaid));
        // A retried settle changes nothing and answers the same.
        let again = limiter
            .settle(&id, actual)
            .await
            .expect("redis")
            .expect("kept");
        assert!(again.replayed);
        assert_eq!(again.settled, settled.settled);
    }
    ledger
}

async fn budget_holds(urls: &[String]) {
    let prefix = common::unique_prefix();
    let clock = mid_window();
    for algorithm in ["fixed_window", "sliding_window", "token_bucket", "gcra"] {
        let policy: Policy = format!("{algorithm} {LIMIT}/1h")
            .parse::<Policy>()
            .expect("policy")
            .with_max_overdraft(OVERDRAFT)
            .expect("overdraft");
        let mut limiters = Vec::new();
        for _ in 0..4 {
            let store = connect(urls, &prefix, &clock).await;
            limiters.push(Limiter::builder(store).policy(algorithm, policy).build());
        }
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let limiter = limiters[t as usize % limiters.len()].clone();
                tokio::spawn(task(limiter, algorithm.to_owned(), 0x9E37_79B9 * (t + 1)))
            })
            .collect();
        let mut ledger = Ledger::new();
        for t in tasks {
            ledger.extend(t.await.expect("task"));
        }
        let charged: u64 = ledger.iter().map(|(e, _, r, c, _)| e - r + c).sum();
        let actual: u64 = ledger.iter().map(|(_, a, ..)| a).sum();
        let unpaid: u64 = ledger.iter().map(|(.., u)| u).sum();
        assert!(
            ledger.len() > 10,
            "{algorithm}: only {} reservations",
            ledger.len()
        );
        // The budget holds to within its overdraft (the clock stands still:
        // no bucket refills meanwhile).
        assert!(
            charged <= LIMIT + OVERDRAFT,
            "{algorithm}: {charged} charged against {LIMIT} + {OVERDRAFT}"
        );
        for &(estimate, actual, returned, extra, not_paid) in &ledger {
            // Each settle's report adds up.
            assert_eq!(
                extra + not_paid,
                actual.saturating_sub(estimate),
                "{algorithm}"
            );
            assert!(returned <= estimate.saturating_sub(actual), "{algorithm}");
        }
        if algorithm.ends_with("window") {
            // A window gives back every surplus within its window (one
            // hour here): every unit is settled, given back or unpaid.
            assert_eq!(actual, charged + unpaid, "{algorithm}");
            // The store holds exactly what was charged.
            let remaining = limiters[0]
                .peek(algorithm, "tenant", 1)
                .await
                .expect("redis")
                .remaining;
            assert_eq!(remaining, LIMIT.saturating_sub(charged), "{algorithm}");
        } else {
            // A bucket forfeits surpluses: never more used than charged.
            assert!(actual <= charged + unpaid, "{algorithm}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_budget_holds_on_standalone() {
    let server = RedisServer::start();
    budget_holds(&[server.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_budget_holds_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    budget_holds(&cluster.urls()).await;
}
