//! The wrapper over a store that can be switched to failing or hanging.
//! (The Redis crate's tests do the same with real `redis-server` faults.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::{Limiter, ManualClock};

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;

/// A memory store that can be told to fail or to hang, counting calls.
#[derive(Clone, Default)]
struct Switchable {
    store: MemoryStore,
    health: Arc<AtomicU8>,
    calls: Arc<AtomicU64>,
    /// Milliseconds a healthy call takes.
    delay_ms: Arc<AtomicU64>,
}

impl Switchable {
    fn with_clock(clock: ManualClock) -> Self {
        Switchable {
            store: MemoryStore::with_clock(clock),
            ..Switchable::default()
        }
    }

    fn set(&self, health: u8) {
        self.health.store(health, Ordering::SeqCst);
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Switchable {
    /// Counts a call, then fails, hangs or waits as switched.
    async fn gate(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.health.load(Ordering::SeqCst) {
            FAILING => Err(StoreError::Unavailable("switched off".into())),
            HANGING => std::future::pending().await,
            _ => {
                let delay = self.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok(())
            }
        }
    }
}

impl Store for Switchable {
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        self.gate().await?;
        self.store.apply(check).await
    }

    async fn lease(
        &self,
        call: crate::store::LeaseCall<'_>,
    ) -> Result<crate::store::LeaseAnswer, StoreError> {
        self.gate().await?;
        self.store.lease(call).await
    }

    fn leases(&self) -> bool {
        self.store.leases()
    }

    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        self.store.reset(key, policies).await
    }
}

fn options(clock: &ManualClock) -> ResilienceOptions {
    ResilienceOptions::default()
        .clock(clock.clone())
        .timeout(Duration::from_millis(20))
        .breaker_failures(3)
        .breaker_cooldown(Duration::from_millis(100))
}

fn limiter(store: Resilient<Switchable>) -> Limiter<Resilient<Switchable>> {
    Limiter::builder(store)
        .policy("api", "fixed_window 10/1h".parse().expect("valid"))
        .policy("strict", "fixed_window 10/1h".parse().expect("valid"))
        .policy(
            "bucket",
            "token_bucket 8/1h burst 4".parse().expect("valid"),
        )
        .build()
}

#[tokio::test]
async fn open_allows_degraded_and_the_breaker_short_circuits() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = limiter(Resilient::new(inner.clone(), options(&clock)));
    assert!(!limiter.check("api", "k", 1).await.expect("ok").degraded);
    inner.set(FAILING);
    for _ in 0..10 {
        let d = limiter
            .check("api", "k", 1)
            .await
            .expect("open mode never errs");
        assert!(d.allowed && d.degraded);
    }
    let stats = limiter.store().stats();
    assert_eq!(stats.breaker, BreakerState::Open);
    assert_eq!(inner.calls(), 1 + 3, "three failures opened the breaker");
    assert_eq!(stats.failures, 3);
    assert_eq!(stats.short_circuited, 7);
    assert_eq!(stats.degraded, 10);
    // A cost that can never pass is denied even in open mode.
    assert!(!limiter.check("api", "k", 11).await.expect("ok").allowed);

    // Cool-down over, the store is back: one probe closes the breaker.
    inner.set(HEALTHY);
    clock.advance(Duration::from_millis(100));
    let d = limiter.check("api", "k", 1).await.expect("ok");
    assert!(d.allowed && !d.degraded);
    assert_eq!(d.remaining, 8);
    assert_eq!(limiter.store().breaker_state(), BreakerState::Closed);
}

/// `probe` closes the breaker once the store is back, with no check at all,
/// and only when the breaker lets a call through; the breaker's trips and
/// the last error are reported.
#[tokio::test]
async fn a_probe_closes_the_breaker_without_traffic() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock));
    let policy: Policy = "fixed_window 1/1s".parse().expect("valid");
    let refs = [PolicyRef {
        name: "probe",
        policy: &policy,
    }];
    assert_eq!(store.probe(b"p", &refs).await, Some(Ok(())));
    assert_eq!(store.last_error(), None);
    inner.set(FAILING);
    let limiter = limiter(store.clone());
    for _ in 0..3 {
        assert!(limiter.check("api", "k", 1).await.expect("ok").degraded);
    }
    assert_eq!(store.breaker_state(), BreakerState::Open);
    assert_eq!(store.stats().breaker_opened, 1);
    assert_eq!(
        store.last_error(),
        Some(StoreError::Unavailable("switched off".into()))
    );
    // Cooling down: no call.
    let calls = inner.calls();
    assert_eq!(store.probe(b"p", &refs).await, None);
    assert_eq!(inner.calls(), calls);
    // Cool-down over, still failing: the probe fails and re-opens it.
    clock.advance(Duration::from_millis(100));
    assert!(matches!(store.probe(b"p", &refs).await, Some(Err(_))));
    assert_eq!(store.breaker_state(), BreakerState::Open);
    assert_eq!(store.stats().breaker_opened, 1, "a re-open is not a trip");
    // Back: the next probe closes it; nothing was charged.
    inner.set(HEALTHY);
    clock.advance(Duration::from_millis(100));
    assert_eq!(store.probe(b"p", &refs).await, Some(Ok(())));
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    assert_eq!(store.stats().degraded, 3, "probes are not decisions");
    let d = inner
        .store
        .apply(crate::Check::new(b"p", &refs, 1, Mode::Peek))
        .await
        .expect("ok");
    assert_eq!(d[0].remaining, 1, "a probe peeks");
}

#[tokio::test]
async fn closed_denies_with_the_cooldown_and_error_propagates() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(
        inner.clone(),
        options(&clock)
            .failure_mode(FailureMode::Closed)
            .policy_mode("api", FailureMode::Error),
    );
    let limiter = limiter(store);
    inner.set(FAILING);
    let d = limiter
        .check("strict", "k", 1)
        .await
        .expect("closed is a decision");
    assert!(!d.allowed && d.degraded);
    assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    assert!(limiter.check("api", "k", 1).await.is_err(), "error mode");
    let both = limiter.check_all(&["strict", "api"], "k", 1).await;
    assert!(both.is_err(), "error wins over closed");
    // The breaker is open now (3 failures): the short-circuit's retry_after
    // is the rest of the cool-down.
    clock.advance(Duration::from_millis(40));
    let d = limiter.check("strict", "k", 1).await.expect("decision");
    assert_eq!(d.retry_after, Some(Duration::from_millis(60)));

    // A reload replaces the per-policy modes; unnamed policies take the
    // wrapper's mode again.
    let store = limiter.store();
    store.set_policy_modes([("strict", FailureMode::Open)]);
    assert_eq!(
        (store.mode_for("strict"), store.mode_for("api")),
        (FailureMode::Open, FailureMode::Closed)
    );
    let d = limiter.check("strict", "k", 1).await.expect("decision");
    assert!(d.allowed && d.degraded);
    let d = limiter.check("api", "k", 1).await.expect("closed now");
    assert!(!d.allowed && d.degraded);
}

#[tokio::test]
async fn local_mode_enforces_the_share_all_or_nothing() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(
        inner.clone(),
        options(&clock)
            .failure_mode(FailureMode::Local)
            .local_share(0.25),
    );
    let limiter = limiter(store);
    inner.set(FAILING);
    // fixed_window 10/1h at a quarter: 2 per hour here.
    let allowed = [0; 5].len() - {
        let mut denied = 0;
        for _ in 0..5 {
            let d = limiter.check("api", "k", 1).await.expect("decision");
            assert!(d.degraded);
            assert_eq!(d.limit, 2);
            denied += usize::from(!d.allowed);
        }
        denied
    };
    assert_eq!(allowed, 2);
    // token_bucket burst 4 at a quarter: burst 1. With "api" exhausted the
    // pair is denied and the bucket is not charged.
    let pair = limiter
        .check_all(&["bucket", "api"], "k", 1)
        .await
        .expect("decision");
    assert!(!pair.allowed);
    assert!(
        limiter
            .check("bucket", "k", 1)
            .await
            .expect("decision")
            .allowed
    );
    assert!(
        !limiter
            .check("bucket", "k", 1)
            .await
            .expect("decision")
            .allowed
    );
}

#[tokio::test]
async fn a_hanging_store_is_bounded_by_the_timeout() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = limiter(Resilient::new(inner.clone(), options(&clock)));
    inner.set(HANGING);
    for _ in 0..3 {
        let started = Instant::now();
        let d = limiter.check("api", "k", 1).await.expect("decision");
        assert!(d.degraded);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
    let stats = limiter.store().stats();
    assert_eq!((stats.timeouts, stats.breaker), (3, BreakerState::Open));
    let started = Instant::now();
    assert!(
        limiter
            .check("api", "k", 1)
            .await
            .expect("decision")
            .degraded
    );
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "short-circuited"
    );
}

#[tokio::test]
async fn a_dropped_probe_frees_its_slot() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = limiter(Resilient::new(
        inner.clone(),
        options(&clock).breaker_failures(1),
    ));
    inner.set(FAILING);
    assert!(
        limiter
            .check("api", "k", 1)
            .await
            .expect("decision")
            .degraded
    );
    clock.advance(Duration::from_millis(100));
    inner.set(HANGING);
    // The probe is cancelled by the caller before the timeout.
    let probe = limiter.check("api", "k", 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(5), probe)
            .await
            .is_err()
    );
    inner.set(HEALTHY);
    let d = limiter.check("api", "k", 1).await.expect("decision");
    assert!(!d.degraded, "a new probe went through");
}

#[tokio::test]
async fn deny_cache_saves_calls_until_the_exact_instant_and_reset_clears_it() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = Limiter::builder(Resilient::new(inner.clone(), options(&clock)))
        .policy("api", "fixed_window 2/s".parse().expect("valid"))
        .build();
    clock.set_us(100_000);
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
    // This allow leaves nothing: the denial that follows is known without
    // asking the store (the window's end) and cached at once.
    let last = limiter.check("api", "k", 1).await.expect("ok");
    assert!(last.allowed && last.remaining == 0);
    assert_eq!(inner.calls(), 2);
    let denied = limiter.check("api", "k", 1).await.expect("ok");
    assert!(!denied.allowed && !denied.degraded);
    assert_eq!(denied.retry_after, Some(Duration::from_millis(900)));
    assert_eq!(inner.calls(), 2, "the derived denial answered");
    clock.set_us(600_000);
    let cached = limiter.check("api", "k", 1).await.expect("ok");
    assert_eq!(cached.retry_after, Some(Duration::from_millis(400)));
    assert!(!cached.allowed && !cached.degraded);
    assert!(!limiter.peek("api", "k", 2).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 2, "no store call while cached");
    assert_eq!(limiter.store().stats().deny_cache_hits, 3);
    // Every check consulted the cache, the two allowed ones included.
    assert_eq!(limiter.store().stats().deny_cache_lookups, 5);
    clock.set_us(999_999);
    assert!(!limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 2);
    clock.set_us(1_000_000);
    assert!(
        limiter.check("api", "k", 1).await.expect("ok").allowed,
        "exactly at T"
    );
    assert_eq!(inner.calls(), 3);
    // A denial made by the store is cached too, and a smaller cost than
    // the one cached is not answered from the cache.
    assert!(!limiter.check("api", "k", 2).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 4);
    assert!(!limiter.check("api", "k", 2).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 4);
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 5);

    assert!(!limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert_eq!(inner.calls(), 5);
    assert_eq!(limiter.store().stats().deny_cache_len, 1);
    limiter.reset("api", "k").await.expect("reset");
    assert_eq!(limiter.store().stats().deny_cache_len, 0);
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
}

#[tokio::test]
async fn an_invalidation_sink_clears_the_cache_and_stops_with_the_wrapper() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock));
    let shared: std::sync::Weak<Shared> = Arc::downgrade(&store.shared);
    let sink = InvalidationSink::new(shared);
    let limiter = Limiter::builder(store)
        .policy("api", "fixed_window 1/1h".parse().expect("valid"))
        .build();
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert!(!limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert_eq!(limiter.store().stats().deny_cache_len, 1);
    // Another instance reset the key in the shared store.
    inner
        .store
        .reset(
            b"k",
            &[PolicyRef {
                name: "api",
                policy: limiter.policy("api").expect("configured"),
            }],
        )
        .await
        .expect("reset");
    assert!(sink.deliver(Invalidation::Reset(b"k".to_vec())));
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
    assert_eq!(limiter.store().stats().invalidations, 1);
    assert!(!sink.is_closed());
    drop(limiter);
    assert!(sink.is_closed());
    assert!(!sink.deliver(Invalidation::Live));
}

/// `n` concurrent checks of `key`, all started before any store call ends.
async fn concurrently(limiter: &Limiter<Resilient<Switchable>>, n: usize) -> Vec<Decision> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.check("api", "k", 1).await.expect("decision") })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.expect("no panic"));
    }
    decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_denial_is_refreshed_by_one_call_for_all_waiters() {
    const N: usize = 32;
    let clock = ManualClock::new(100_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = Limiter::builder(Resilient::new(inner.clone(), options(&clock)))
        .policy("api", "fixed_window 2/s".parse().expect("valid"))
        .build();
    let policy = *limiter.policy("api").expect("configured");
    for _ in 0..3 {
        limiter.check("api", "k", 1).await.expect("ok");
    }
    // The second allow left no room: the third check was answered by the
    // denial derived from it.
    assert_eq!(
        (inner.calls(), limiter.store().stats().deny_cache_len),
        (2, 1)
    );
    // The denial expires with the window; another instance takes the new
    // window's two requests, so the store denies again.
    clock.set_us(1_000_000);
    let other = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    inner
        .store
        .apply(crate::Check::new(b"k", &other, 2, Mode::Consume))
        .await
        .expect("ok");
    inner.delay_ms.store(5, Ordering::SeqCst);
    let decisions = concurrently(&limiter, N).await;
    assert!(decisions.iter().all(|d| !d.allowed && !d.degraded));
    assert_eq!(inner.calls(), 3, "one store call for {N} callers");
    let stats = limiter.store().stats();
    // One hit before the window ended, and all but the leader now.
    assert_eq!(stats.deny_cache_hits, 1 + N as u64 - 1, "{stats:?}");
    // One lookup per check, however long a waiter waited for the flight.
    assert_eq!(stats.deny_cache_lookups, 3 + N as u64, "{stats:?}");

    // At the next window nothing else took the two requests: the leader is
    // allowed with room, the waiters go to the store themselves, and the
    // store decides exactly two of all.
    clock.set_us(2_000_000);
    let decisions = concurrently(&limiter, N).await;
    assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 2);
    assert!(decisions.iter().all(|d| !d.degraded));
    // Each allow was a store call; once the second allow cached the denial
    // that follows it, the rest hit it.
    assert!(inner.calls() >= 3 + 2, "{}", inner.calls());
    assert!(inner.calls() <= 3 + N as u64, "{}", inner.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_tight_sliding_log_allow_the_waiters_go_one_at_a_time() {
    const N: usize = 16;
    let clock = ManualClock::new(100_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = Limiter::builder(Resilient::new(inner.clone(), options(&clock)))
        .policy("api", "sliding_log 1/s".parse().expect("valid"))
        .build();
    for _ in 0..2 {
        limiter.check("api", "k", 1).await.expect("ok");
    }
    clock.set_us(1_100_000);
    inner.delay_ms.store(5, Ordering::SeqCst);
    let decisions = concurrently(&limiter, N).await;
    assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 1);
    // The leader's allow left no room, and a sliding log cannot say from
    // its decision when there is room again: one waiter went next, was
    // denied, and its denial answered the others.
    assert_eq!(inner.calls(), 2 + 2, "{:?}", limiter.store().stats());
}

/// The flood goal: a key hammered far above a fine-grained rate costs one
/// store call per allowed request, because each allow that leaves no room
/// caches the denial that follows it.
/// Regression: a denial derived from a leaky bucket's allow kept the
/// allow's `delay`, so a denied check told the caller to wait and proceed.
#[tokio::test]
async fn a_derived_leaky_bucket_denial_carries_no_delay() {
    let clock = ManualClock::new(0);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = Limiter::builder(Resilient::new(inner.clone(), options(&clock)))
        .policy("api", "leaky_bucket 10/s burst 2".parse().expect("valid"))
        .build();
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("ok").delay,
        Duration::ZERO
    );
    let queued = limiter.check("api", "k", 1).await.expect("ok");
    assert!(queued.allowed && queued.remaining == 0);
    assert_eq!(queued.delay, Duration::from_millis(100));
    let denied = limiter.check("api", "k", 1).await.expect("ok");
    assert!(!denied.allowed);
    assert_eq!(inner.calls(), 2, "answered by the derived denial");
    assert_eq!(denied.delay, Duration::ZERO);
    assert_eq!(denied.retry_after, Some(Duration::from_millis(100)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooded_gcra_key_costs_one_store_call_per_allowed_request() {
    const N: usize = 16;
    for policy in [
        "gcra 10/s burst 1",
        "token_bucket 10/s burst 1",
        "leaky_bucket 10/s burst 1",
    ] {
        let clock = ManualClock::new(100_000);
        let inner = Switchable::with_clock(clock.clone());
        let limiter = Limiter::builder(Resilient::new(inner.clone(), options(&clock)))
            .policy("api", policy.parse().expect("valid"))
            .build();
        assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
        inner.delay_ms.store(5, Ordering::SeqCst);
        for round in 1..=5u64 {
            // Every 50 ms a flood: only every other one finds a token.
            clock.set_us(100_000 + round * 50_000);
            let calls = inner.calls();
            let decisions = concurrently(&limiter, N).await;
            let allowed = decisions.iter().filter(|d| d.allowed).count() as u64;
            assert_eq!(allowed, u64::from(round % 2 == 0), "{policy} round {round}");
            assert_eq!(inner.calls() - calls, allowed, "{policy} round {round}");
            let denied = decisions.iter().find(|d| !d.allowed).expect("denials");
            assert_eq!(
                denied.delay,
                Duration::ZERO,
                "{policy}: no wait on a denial"
            );
            let next_token_us = 100_000 + (round / 2 + 1) * 100_000;
            assert_eq!(
                denied.retry_after,
                Some(Duration::from_micros(next_token_us - clock.now_us())),
                "{policy} round {round}: exact"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_of_a_failed_flight_fall_back_within_the_timeout() {
    const N: usize = 16;
    let clock = ManualClock::new(100_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = Limiter::builder(Resilient::new(
        inner.clone(),
        options(&clock).failure_mode(FailureMode::Closed),
    ))
    .policy("api", "fixed_window 1/s".parse().expect("valid"))
    .build();
    for _ in 0..2 {
        limiter.check("api", "k", 1).await.expect("ok");
    }
    clock.set_us(1_000_000);
    inner.set(HANGING);
    let started = Instant::now();
    let decisions = concurrently(&limiter, N).await;
    assert!(
        started.elapsed() < Duration::from_millis(20 + 100),
        "{:?}",
        started.elapsed()
    );
    assert!(decisions.iter().all(|d| !d.allowed && d.degraded));
    let stats = limiter.store().stats();
    assert_eq!((inner.calls(), stats.timeouts), (1 + 1, 1), "{stats:?}");
    // The store is back: the expired entry no longer stands in the way.
    inner.set(HEALTHY);
    assert!(limiter.check("api", "k", 1).await.expect("ok").allowed);
}

#[test]
fn failure_modes_parse_and_shares_scale() {
    assert_eq!("Closed".parse::<FailureMode>(), Ok(FailureMode::Closed));
    assert!("maybe".parse::<FailureMode>().is_err());
    let p: Policy = "token_bucket 10/s burst 3".parse().expect("valid");
    let local = local_policy(&p, 0.25).expect("valid");
    assert_eq!((local.limit(), local.burst()), (2, 1));
    let p: Policy = "sliding_log 3/1m".parse().expect("valid");
    assert_eq!(local_policy(&p, 0.1).expect("valid").limit(), 1);
}

// Leases (the local half: `leases.rs`). The store's half is tested with
// the algorithms; these follow a check through the wrapper.

fn leased(text: &str, max: u64, ttl_ms: u64) -> crate::Policy {
    text.parse::<crate::Policy>()
        .expect("valid")
        .with_lease(crate::Lease::new(max, Duration::from_millis(ttl_ms)).expect("valid"))
        .expect("leases")
}

fn lease_limiter(
    store: Resilient<Switchable>,
    policy: crate::Policy,
) -> Limiter<Resilient<Switchable>> {
    Limiter::builder(store).policy("hot", policy).build()
}

#[tokio::test]
async fn a_hot_key_is_served_from_leases_and_admits_exactly_the_limit() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = lease_limiter(
        Resilient::new(inner.clone(), options(&clock)),
        leased("fixed_window 1000/1h", 100, 60_000),
    );
    let mut allowed = 0;
    for i in 0..3000 {
        // A microsecond apart: a hot key's rate.
        clock.advance(Duration::from_micros(1));
        let d = limiter.check("hot", "k", 1).await.expect("ok");
        assert!(!d.degraded);
        if d.allowed {
            allowed += 1;
            assert!(
                d.remaining <= 1000 - allowed,
                "check {i}: remaining {} promises more than is left",
                d.remaining
            );
        }
    }
    assert_eq!(
        allowed, 1000,
        "leases never admit more, and lose nothing on one instance"
    );
    let stats = limiter.store().stats().leases;
    assert!(stats.taken > 0 && stats.units > 0, "{stats:?}");
    assert!(
        inner.calls() < 300,
        "{} store calls for 3000 checks: leases served most",
        inner.calls()
    );
}

#[tokio::test]
async fn instances_sharing_a_store_admit_the_limit_between_them_never_more() {
    let clock = ManualClock::new(1_000_000);
    let shared = Switchable::with_clock(clock.clone());
    let policy = leased("fixed_window 500/1h", 64, 60_000);
    let fleet: Vec<_> = (0..3)
        .map(|_| lease_limiter(Resilient::new(shared.clone(), options(&clock)), policy))
        .collect();
    let mut admitted = [0u64; 3];
    for round in 0..2000 {
        clock.advance(Duration::from_micros(1));
        let i = round % 3;
        if fleet[i].check("hot", "k", 1).await.expect("ok").allowed {
            admitted[i] += 1;
        }
    }
    let total: u64 = admitted.iter().sum();
    assert_eq!(
        total, 500,
        "admitted {admitted:?}: the whole limit, never more"
    );
    for (i, n) in admitted.iter().enumerate() {
        assert!(
            (150..=184).contains(n),
            "instance {i} admitted {n} of 500 ({admitted:?})"
        );
    }
}

#[tokio::test]
async fn a_quiet_key_never_leases() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = lease_limiter(
        Resilient::new(inner.clone(), options(&clock)),
        leased("fixed_window 1000/1h", 100, 100),
    );
    for _ in 0..50 {
        clock.advance(Duration::from_millis(20));
        assert!(limiter.check("hot", "k", 1).await.expect("ok").allowed);
    }
    assert_eq!(limiter.store().stats().leases.taken, 0);
    assert_eq!(inner.calls(), 50, "every check decided in the store");
}

#[tokio::test]
async fn a_lease_in_hand_is_spent_while_the_store_is_down() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let limiter = lease_limiter(
        Resilient::new(
            inner.clone(),
            options(&clock).failure_mode(FailureMode::Closed),
        ),
        leased("fixed_window 100000/1h", 50, 60_000),
    );
    for _ in 0..20 {
        clock.advance(Duration::from_micros(1));
        limiter.check("hot", "k", 1).await.expect("ok");
    }
    let held = limiter.store().stats().leases.units;
    assert!(held > 0, "a lease was taken");
    inner.set(FAILING);
    let calls = inner.calls();
    // Units of the lease still in hand are spent without the store, not degraded.
    let d = limiter.check("hot", "k", 1).await.expect("ok");
    assert!(d.allowed && !d.degraded);
    assert_eq!(inner.calls(), calls, "no store call");
}

#[tokio::test]
async fn a_reset_revokes_leases_and_a_changed_policy_ends_them() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock));
    let limiter = lease_limiter(store.clone(), leased("fixed_window 1000/1h", 100, 60_000));
    let warm = |limiter: Limiter<Resilient<Switchable>>, clock: ManualClock| async move {
        for _ in 0..40 {
            clock.advance(Duration::from_micros(1));
            limiter.check("hot", "k", 1).await.expect("ok");
        }
    };
    warm(limiter.clone(), clock.clone()).await;
    let before = store.stats().leases;
    assert!(before.units > before.forfeited, "{before:?}");
    limiter.reset("hot", "k").await.expect("reset");
    let after = store.stats().leases;
    assert!(
        after.forfeited > before.forfeited,
        "the reset forfeited the lease: {after:?}"
    );
    let calls = inner.calls();
    clock.advance(Duration::from_micros(1));
    limiter.check("hot", "k", 1).await.expect("ok");
    assert_eq!(inner.calls(), calls + 1, "after a reset the store decides");

    warm(limiter.clone(), clock.clone()).await;
    let before = store.stats().leases;
    let changed = lease_limiter(store.clone(), leased("fixed_window 2000/1h", 100, 60_000));
    let calls = inner.calls();
    clock.advance(Duration::from_micros(1));
    changed.check("hot", "k", 1).await.expect("ok");
    assert_eq!(
        inner.calls(),
        calls + 1,
        "a changed policy is decided in the store"
    );
    assert!(store.stats().leases.forfeited > before.forfeited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_three_instances_never_admit_more_than_the_limit() {
    for text in [
        "fixed_window 700/1h",
        "sliding_window 700/1h",
        "token_bucket 700/1h burst 700",
        "gcra 700/1h burst 700",
    ] {
        let clock = ManualClock::new(1_000_000);
        let shared = Switchable::with_clock(clock.clone());
        let policy = leased(text, 50, 60_000);
        let mut tasks = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..3 {
            let store = Resilient::new(shared.clone(), options(&clock));
            stores.push(store.clone());
            let limiter = lease_limiter(store, policy);
            for _ in 0..4 {
                let (limiter, clock) = (limiter.clone(), clock.clone());
                tasks.push(tokio::spawn(async move {
                    let mut admitted = 0u64;
                    for _ in 0..250 {
                        clock.advance(Duration::from_micros(1));
                        let d = limiter.check("hot", "k", 1).await.expect("ok");
                        admitted += u64::from(d.allowed);
                    }
                    admitted
                }));
            }
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("task");
        }
        let taken: u64 = stores.iter().map(|s| s.stats().leases.taken).sum();
        // 3000 checks within 3 ms of a 1 h policy: the buckets refill by
        // less than one unit, so the allowance is the capacity.
        assert!(total <= 700, "{text}: admitted {total} of 700");
        assert!(total >= 650, "{text}: admitted only {total} of 700");
        assert!(taken > 0, "{text}: no lease taken");
    }
}

#[tokio::test]
async fn a_check_of_several_leased_policies_stays_all_or_nothing() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock));
    let limiter = Limiter::builder(store)
        .policy("small", leased("fixed_window 300/1h", 40, 60_000))
        .policy("large", leased("gcra 5000/1h burst 5000", 40, 60_000))
        .build();
    let mut admitted = 0;
    for _ in 0..1000 {
        clock.advance(Duration::from_micros(1));
        let d = limiter
            .check_all(&["small", "large"], "k", 1)
            .await
            .expect("ok");
        admitted += u64::from(d.allowed);
    }
    assert_eq!(admitted, 300, "the smaller policy decides");
    assert!(limiter.store().stats().leases.taken > 0);
    // `large` was charged for every admitted check (plus what its leases
    // hold), never for a denied one: it still has at least 5000 - 300 - 40.
    let peek = limiter.peek("large", "k", 1).await.expect("ok");
    assert!(
        peek.remaining >= 5000 - 300 - 40 - 40,
        "large has {} left",
        peek.remaining
    );
}

#[tokio::test]
async fn the_feed_revokes_leases_by_identity_and_all_of_them_when_lost() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock));
    let sink = InvalidationSink::new(Arc::downgrade(&store.shared) as std::sync::Weak<Shared>);
    let limiter = lease_limiter(store.clone(), leased("fixed_window 100000/1h", 100, 60_000));
    let warm = |key: &'static str| {
        let (limiter, clock) = (limiter.clone(), clock.clone());
        async move {
            for _ in 0..30 {
                clock.advance(Duration::from_micros(1));
                limiter.check("hot", key, 1).await.expect("ok");
            }
        }
    };
    warm("a").await;
    warm("b").await;
    let before = store.stats().leases;
    assert_eq!(before.keys, 2);
    assert!(sink.deliver(Invalidation::Reset(b"a".to_vec())));
    let after = store.stats().leases;
    assert_eq!(after.keys, 1, "a's slot is gone, b's is not");
    assert!(after.forfeited > before.forfeited);
    assert!(sink.deliver(Invalidation::Lost));
    assert_eq!(
        store.stats().leases.keys,
        0,
        "a lost feed revokes every lease"
    );
}

#[tokio::test]
async fn a_flood_of_keys_stays_within_the_lease_table_cap() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(inner.clone(), options(&clock).lease_max_keys(256));
    let limiter = lease_limiter(store.clone(), leased("fixed_window 10/1h", 5, 60_000));
    for i in 0..5_000 {
        let key = format!("bot-{i}");
        assert!(limiter.check("hot", &key, 1).await.expect("ok").allowed);
    }
    let keys = store.stats().leases.keys;
    assert!(keys <= 256, "{keys} slots for a cap of 256");
}

#[tokio::test]
async fn units_held_go_back_to_their_lease_when_the_breaker_keeps_the_call_in() {
    let clock = ManualClock::new(1_000_000);
    let inner = Switchable::with_clock(clock.clone());
    let store = Resilient::new(
        inner.clone(),
        options(&clock).failure_mode(FailureMode::Closed),
    );
    let limiter = Limiter::builder(store.clone())
        .policy("hot", leased("fixed_window 100000/1h", 50, 60_000))
        .policy("plain", "fixed_window 10/1h".parse().expect("valid"))
        .build();
    for _ in 0..20 {
        clock.advance(Duration::from_micros(1));
        limiter.check("hot", "k", 1).await.expect("ok");
    }
    assert!(store.stats().leases.units > 0);
    // The store fails on another key until the breaker opens.
    inner.set(FAILING);
    for _ in 0..3 {
        limiter.check("plain", "other", 1).await.expect("ok");
    }
    assert_eq!(store.stats().breaker, BreakerState::Open);
    let forfeited = store.stats().leases.forfeited;
    // More than the lease holds: it would give its units back, but the
    // call never leaves, so they stay in the lease.
    let d = limiter.check("hot", "k", 60).await.expect("ok");
    assert!(d.degraded && !d.allowed, "closed mode");
    assert_eq!(
        store.stats().leases.forfeited,
        forfeited,
        "nothing was lost"
    );
    let calls = inner.calls();
    let d = limiter.check("hot", "k", 1).await.expect("ok");
    assert!(d.allowed && !d.degraded, "served from the lease");
    assert_eq!(inner.calls(), calls);
}

#[tokio::test]
async fn a_store_that_cannot_lease_decides_every_check_plainly() {
    /// The memory store behind the trait's default `lease`.
    #[derive(Clone)]
    struct Plain(MemoryStore);
    impl Store for Plain {
        async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
            self.0.apply(check).await
        }
        async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
            self.0.reset(key, policies).await
        }
    }
    let clock = ManualClock::new(1_000_000);
    let store = Resilient::new(
        Plain(MemoryStore::with_clock(clock.clone())),
        options(&clock),
    );
    let limiter = Limiter::builder(store.clone())
        .policy("hot", leased("fixed_window 100/1h", 50, 60_000))
        .build();
    let mut allowed = 0;
    for _ in 0..200 {
        clock.advance(Duration::from_micros(1));
        allowed += u64::from(limiter.check("hot", "k", 1).await.expect("ok").allowed);
    }
    assert_eq!(allowed, 100);
    assert_eq!(
        store.stats().leases,
        LeaseStats::default(),
        "no slot, no lease"
    );
    // One call per allowed check: the last one left nothing, and the deny
    // cache answers every check after it.
    assert_eq!(store.stats().calls, 100);
}
