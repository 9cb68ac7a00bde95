//! The deny cache over a real Redis: a denied key stays denied with no
//! script call until exactly the instant Redis would allow it, never denies
//! what Redis would allow, and a reset through another instance (another
//! connection, another wrapper) is honoured at once.

mod common;

use std::time::{Duration, Instant};

use tollgate::Limiter;
use tollgate::resilience::{ResilienceOptions, Resilient};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::RedisServer;

/// The decisions Redis ran (`FCALL`s in `INFO commandstats`).
fn decision_calls(server: &RedisServer) -> u64 {
    common::calls(server, "fcall")
}

async fn store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&server.url(), RedisOptions::default().prefix(prefix))
        .await
        .expect("connect")
}

async fn cached(
    server: &RedisServer,
    prefix: &str,
    policy: &str,
) -> Limiter<Resilient<RedisStore>> {
    let store =
        Resilient::with_invalidations(store(server, prefix).await, ResilienceOptions::default());
    let limiter = Limiter::builder(store)
        .policy("api", policy.parse().expect("valid"))
        .build();
    // Wait for the invalidation feed, so that no reset can be missed.
    let started = Instant::now();
    while limiter.store().stats().invalidation_feed_live != Some(true) {
        assert!(started.elapsed() < Duration::from_secs(5), "feed not live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    limiter
}

#[tokio::test]
async fn a_denied_key_stays_denied_without_redis_until_exactly_t() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    // sliding_log: the third admission makes the key pass again exactly one
    // period after the first, whatever the alignment.
    let limiter = cached(&server, &prefix, "sliding_log 3/1s").await;
    // The truth, without any cache: same prefix, plain store.
    let truth = Limiter::builder(store(&server, &prefix).await)
        .policy("api", "sliding_log 3/1s".parse().expect("valid"))
        .build();
    for _ in 0..3 {
        assert!(limiter.check("api", "k", 1).await.expect("redis").allowed);
    }
    let denied = limiter.check("api", "k", 1).await.expect("redis");
    assert!(!denied.allowed && !denied.degraded);
    let retry = denied.retry_after.expect("a retry_after");
    let t = Instant::now() + retry;
    assert!(retry > Duration::from_millis(500), "{retry:?}");

    let before = decision_calls(&server);
    let mut hits: u64 = 0;
    while Instant::now() + Duration::from_millis(100) < t {
        let d = limiter.check("api", "k", 1).await.expect("cached");
        assert!(!d.allowed && !d.degraded);
        let left = t.saturating_duration_since(Instant::now());
        let reported = d.retry_after.expect("retry_after");
        assert!(
            reported <= left + Duration::from_millis(5),
            "{reported:?} vs {left:?}"
        );
        // Redis agrees (a peek through the plain store charges nothing).
        if hits % 50 == 0 {
            assert!(!truth.peek("api", "k", 1).await.expect("redis").allowed);
        }
        hits += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let peeks = hits.div_ceil(50);
    assert_eq!(
        decision_calls(&server) - before,
        peeks,
        "{hits} cached denials: the only script calls were the truth's peeks"
    );
    assert!(limiter.store().stats().deny_cache_hits >= hits);

    // At T, the check goes to Redis and passes. The cache counts from when
    // the denied call was sent, so it expires no later than Redis's T; a
    // check landing a hair before it is denied by Redis itself with a
    // retry_after of about the network delay.
    tokio::time::sleep_until(t.into()).await;
    let started = Instant::now();
    loop {
        let d = limiter.check("api", "k", 1).await.expect("redis");
        if d.allowed {
            assert!(!d.degraded);
            break;
        }
        let retry = d.retry_after.expect("retry_after");
        assert!(
            retry < Duration::from_millis(20),
            "denied at T for {retry:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        tokio::time::sleep(retry).await;
    }
}

/// An allow that leaves no room tells when the next request passes
/// (`gcra`: the next token), so the denials that follow it are cached
/// without asking Redis: a flooded key costs one script call per allowed
/// request, not two.
#[tokio::test]
async fn after_an_allow_that_leaves_no_room_redis_is_not_asked_until_the_next_token() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let limiter = cached(&server, &prefix, "gcra 10/s burst 1").await;
    let truth = Limiter::builder(store(&server, &prefix).await)
        .policy("api", "gcra 10/s burst 1".parse().expect("valid"))
        .build();
    for round in 0..3 {
        let before = decision_calls(&server);
        let started = Instant::now();
        let (allowed, sent) = loop {
            let sent = Instant::now();
            let d = limiter.check("api", "k", 1).await.expect("redis");
            if d.allowed {
                break (d, sent);
            }
            assert!(
                started.elapsed() < Duration::from_millis(150),
                "round {round}"
            );
            tokio::time::sleep(
                d.retry_after
                    .expect("retry_after")
                    .min(Duration::from_millis(1)),
            )
            .await;
        };
        assert_eq!(allowed.remaining, 0);
        let after_allow = decision_calls(&server);
        assert!(
            after_allow - before <= 2,
            "round {round}: {}",
            after_allow - before
        );
        // The next token is 100 ms after this one (taken after the call was
        // sent): until shortly before, every check is answered by the
        // cache, and Redis agrees.
        let next_token = sent + Duration::from_millis(100);
        let mut hits = 0;
        while Instant::now() + Duration::from_millis(20) < next_token {
            let d = limiter.check("api", "k", 1).await.expect("cached");
            assert!(!d.allowed && !d.degraded);
            let reported = d.retry_after.expect("retry_after");
            assert!(reported <= Duration::from_millis(100), "{reported:?}");
            hits += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(hits > 10, "{hits}");
        // On a loaded machine the loop may end past the token: Redis then
        // rightly allows, and only the call count below is checked.
        let early = Instant::now() + Duration::from_millis(10) < next_token;
        let peeked = truth.peek("api", "k", 1).await.expect("redis");
        assert!(!early || !peeked.allowed, "Redis allowed before the token");
        assert_eq!(
            decision_calls(&server) - after_allow,
            1,
            "round {round}: {hits} denials from the cache; the one call was the truth's peek"
        );
    }
}

#[tokio::test]
async fn a_larger_cost_is_denied_from_the_cache_a_smaller_one_asks_redis() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let limiter = cached(&server, &prefix, "fixed_window 10/1h").await;
    assert!(limiter.check("api", "k", 8).await.expect("redis").allowed);
    assert!(!limiter.check("api", "k", 3).await.expect("redis").allowed);
    let before = decision_calls(&server);
    assert!(!limiter.check("api", "k", 5).await.expect("cached").allowed);
    assert!(!limiter.peek("api", "k", 3).await.expect("cached").allowed);
    assert_eq!(decision_calls(&server), before);
    let d = limiter.check("api", "k", 2).await.expect("redis");
    assert!(d.allowed, "2 of the 10 remained");
    assert_eq!(decision_calls(&server), before + 1);
}

#[tokio::test]
async fn a_reset_through_another_instance_is_honoured_at_once() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let first = cached(&server, &prefix, "fixed_window 1/1h").await;
    let second = cached(&server, &prefix, "fixed_window 1/1h").await;
    for limiter in [&first, &second] {
        let _ = limiter.check("api", "k", 1).await.expect("redis");
        assert!(!limiter.check("api", "k", 1).await.expect("redis").allowed);
        assert!(!limiter.check("api", "k", 1).await.expect("cached").allowed);
        assert_eq!(limiter.store().stats().deny_cache_len, 1);
    }
    let before = decision_calls(&server);
    second.reset("api", "k").await.expect("reset");
    // The notice travels over pub/sub: within milliseconds, never a period.
    let started = Instant::now();
    loop {
        let d = first.check("api", "k", 1).await.expect("decision");
        if d.allowed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "reset not seen after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(first.store().stats().invalidations, 1);
    assert_eq!(decision_calls(&server), before + 1, "one call, allowed");
    // The instance that reset forgot its own entry too, and the key was
    // charged once by `first` since: denied by Redis, not by a stale cache.
    let d = second.check("api", "k", 1).await.expect("redis");
    assert!(!d.allowed);
    assert_eq!(decision_calls(&server), before + 2);
}

#[tokio::test]
async fn a_restarted_redis_clears_every_cache() {
    let mut server = RedisServer::start();
    let prefix = common::unique_prefix();
    let limiter = cached(&server, &prefix, "fixed_window 1/1h").await;
    assert!(limiter.check("api", "k", 1).await.expect("redis").allowed);
    assert!(!limiter.check("api", "k", 1).await.expect("redis").allowed);
    server.restart(); // empty data set: Redis would allow "k" again
    let started = Instant::now();
    loop {
        if limiter
            .check("api", "k", 1)
            .await
            .expect("decision")
            .allowed
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "cache not cleared: {:?}",
            limiter.store().stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
