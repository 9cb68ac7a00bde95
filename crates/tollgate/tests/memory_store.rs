//! Properties of the memory store beyond the shared conformance suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::{Algorithm, ManualClock, MemoryStore, Mode, Policy, PolicyRef};

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

/// Charges one unit of `p`, named `p`, to `key`.
fn charge(store: &MemoryStore, key: &[u8], p: &Policy) -> tollgate::Decision {
    let refs = [PolicyRef {
        name: "p",
        policy: p,
    }];
    store.apply_sync(tollgate::Check::new(key, &refs, 1, Mode::Consume))[0]
}

#[test]
fn eight_threads_on_one_key_admit_exactly_the_limit() {
    for algorithm in Algorithm::ALL.into_iter().filter(|a| a.is_exact()) {
        for limit in [1u64, 7, 1000] {
            let clock = ManualClock::new(1_000_000);
            let store = MemoryStore::with_clock(clock);
            let p = policy(&format!("{algorithm} {limit}/1h"));
            let admitted = Arc::new(AtomicU64::new(0));
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        let refs = [PolicyRef {
                            name: "p",
                            policy: &p,
                        }];
                        for _ in 0..2 * limit {
                            if store.apply_sync(tollgate::Check::new(
                                b"hot",
                                &refs,
                                1,
                                Mode::Consume,
                            ))[0]
                                .allowed
                            {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(
                admitted.load(Ordering::Relaxed),
                limit,
                "{algorithm} {limit}"
            );
        }
    }
}

#[test]
fn a_million_one_off_keys_leave_memory_bounded() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::with_clock_and_shards(clock.clone(), 16);
    let policies: Vec<Policy> = Algorithm::ALL
        .iter()
        .map(|a| policy(&format!("{a} 5/10ms")))
        .collect();
    let mut peak_len = 0;
    let mut peak_capacity = 0;
    for i in 0..1_000_000u64 {
        // One request per key, 1 µs apart: at any instant only the keys of
        // the last 20 ms (two periods, for the sliding window) are live.
        clock.advance_us(1);
        let p = &policies[(i % 6) as usize];
        let refs = [PolicyRef {
            name: "p",
            policy: p,
        }];
        assert!(
            store.apply_sync(tollgate::Check::new(
                &i.to_le_bytes(),
                &refs,
                1,
                Mode::Consume
            ))[0]
                .allowed
        );
        if i % 10_000 == 0 {
            peak_len = peak_len.max(store.len());
            peak_capacity = peak_capacity.max(store.capacity());
        }
    }
    // Live keys: at most 20 000. Each shard sweeps when it doubles, never
    // below 1024 entries: 16 shards x 2048 plus the live set bounds it.
    assert!(peak_len <= 16 * 2048 + 20_000, "peak {peak_len} entries");
    assert!(
        peak_capacity <= 4 * (16 * 2048 + 20_000),
        "peak capacity {peak_capacity}"
    );
    clock.advance_us(20_000);
    store.purge_expired();
    assert_eq!(store.len(), 0, "every state is fresh again");
    assert!(
        store.capacity() <= 16 * 4096,
        "memory released: capacity {}",
        store.capacity()
    );
}

#[test]
fn expired_entries_are_dropped_but_live_ones_kept() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::with_clock(clock.clone());
    let long = policy("token_bucket 1/1h burst 1");
    let short = policy("fixed_window 1/1s");
    let apply = |key: &[u8], p: &Policy| charge(&store, key, p);
    assert!(apply(b"long", &long).allowed);
    assert!(apply(b"short", &short).allowed);
    // Fresh at 1 s; dropped, like a Redis key, once the clock is past that
    // millisecond.
    clock.advance_us(1_000_999);
    store.purge_expired();
    assert_eq!(store.len(), 2, "still live until 1.001 s");
    clock.advance_us(1);
    store.purge_expired();
    assert_eq!(store.len(), 1);
    assert!(
        !apply(b"long", &long).allowed,
        "purging must not forget a live state"
    );
}

#[test]
fn a_changed_policy_under_the_same_name_keeps_its_count() {
    let store = MemoryStore::with_clock(ManualClock::new(0));
    let before = policy("fixed_window 1/1h");
    let after = policy("fixed_window 3/1h");
    let apply = |p: &Policy| charge(&store, b"k", p);
    assert!(apply(&before).allowed);
    assert!(!apply(&before).allowed);
    // The window's count (1) carries over to the raised limit.
    let d = apply(&after);
    assert_eq!((d.allowed, d.remaining), (true, 1));
    assert!(apply(&after).allowed);
    assert!(!apply(&after).allowed);
}

#[tokio::test]
async fn the_limiter_rejects_what_it_cannot_decide() {
    use tollgate::{Error, Limiter};
    let limiter = Limiter::builder(MemoryStore::new())
        .policy("api", policy("10/s"))
        .max_key_len(8)
        .build();
    assert!(
        matches!(limiter.check("nope", "k", 1).await, Err(Error::UnknownPolicy(name)) if name == "nope")
    );
    assert!(matches!(
        limiter.check("api", "k", 0).await,
        Err(Error::ZeroCost)
    ));
    assert!(matches!(
        limiter.check("api", "123456789", 1).await,
        Err(Error::KeyTooLong { len: 9, max: 8 })
    ));
    assert!(matches!(
        limiter.check_all(&[], "k", 1).await,
        Err(Error::NoPolicy)
    ));
    assert!(matches!(
        limiter.check_all(&["api", "nope"], "k", 1).await,
        Err(Error::UnknownPolicy(_))
    ));
    assert!(matches!(
        limiter.reset("nope", "k").await,
        Err(Error::UnknownPolicy(_))
    ));
    // The same for policies passed by value (`Limiter::apply`).
    let ten = policy("10/s");
    let api = [PolicyRef {
        name: "api",
        policy: &ten,
    }];
    let no_policy = limiter.apply(&[], "k", 1, Mode::Consume).await;
    let zero_cost = limiter.apply(&api, "k", 0, Mode::Consume).await;
    let too_long = limiter.apply(&api, "123456789", 1, Mode::Peek).await;
    assert!(matches!(no_policy, Err(Error::NoPolicy)), "{no_policy:?}");
    assert!(matches!(zero_cost, Err(Error::ZeroCost)), "{zero_cost:?}");
    assert!(
        matches!(too_long, Err(Error::KeyTooLong { len: 9, max: 8 })),
        "{too_long:?}"
    );
    // Nothing above was charged.
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("works").remaining,
        9
    );
}

/// `Limiter::apply` decides policies that are not registered (an Envoy
/// `limit` override) through the same store: the name is part of the
/// state's identity, exactly as for registered policies.
#[tokio::test]
async fn unregistered_policies_are_decided_by_name_and_key() {
    use tollgate::Limiter;
    let limiter = Limiter::builder(MemoryStore::new())
        .policy("api", policy("fixed_window 5/1h"))
        .build();
    let two = policy("fixed_window 2/1h");
    let refs = |name| [PolicyRef { name, policy: &two }];
    let consume = |name, key: &'static str| {
        let limiter = limiter.clone();
        async move {
            limiter
                .apply(&refs(name), key, 1, Mode::Consume)
                .await
                .expect("decides")
        }
    };
    let first = consume("extra", "k").await;
    assert!(first.allowed);
    assert_eq!(first.decisions[0].limit, 2);
    assert_eq!(first.decisions[0].remaining, 1);
    assert!(consume("extra", "k").await.allowed);
    assert!(!consume("extra", "k").await.allowed);
    // Another key, or another name, is another state.
    assert_eq!(consume("extra", "k2").await.decisions[0].remaining, 1);
    assert_eq!(consume("other", "k").await.decisions[0].remaining, 1);
    // The registered policy of a different name was never charged.
    assert_eq!(
        limiter.check("api", "k", 1).await.expect("works").remaining,
        4
    );
    // A peek charges nothing.
    let peek = limiter
        .apply(&refs("other"), "k", 1, Mode::Peek)
        .await
        .expect("decides");
    assert_eq!((peek.allowed, peek.decisions[0].remaining), (true, 1));
    assert_eq!(consume("other", "k").await.decisions[0].remaining, 0);
}

/// Issue 12, item 1: a policy changed under a live entry keeps it as long as
/// the policy in force needs, as the Redis store keeps its key: `sliding_log
/// 5/1s` read under `5/1h` must not be forgotten when the old second is up.
#[test]
fn an_entry_lives_as_long_as_the_policy_in_force_needs() {
    let clock = ManualClock::new(0);
    let store = MemoryStore::with_clock(clock.clone());
    let (short, long) = (policy("sliding_log 5/1s"), policy("sliding_log 5/1h"));
    let apply = |p: &Policy| charge(&store, b"k", p);
    for _ in 0..5 {
        assert!(apply(&short).allowed);
    }
    assert!(!apply(&long).allowed, "the log carries over");
    clock.advance_us(1_100_000);
    store.purge_expired();
    assert_eq!(store.len(), 1, "swept by the old policy's expiry");
    assert!(!apply(&long).allowed);
    // Under the policy that wrote it, the entry would have gone: a change
    // after that finds a fresh state (as a Redis key that expired).
    clock.advance_us(3_600_000_000);
    for _ in 0..5 {
        assert!(apply(&short).allowed);
    }
    clock.advance_us(1_001_000);
    assert!(
        apply(&long).allowed,
        "expired under 5/1s before 5/1h read it"
    );
}

/// Issue 13, finding 3: 1.49 M one-off keys under a 1 h policy took the
/// server to 2 GB. The store holds at most `max_keys` entries; past it the
/// entries nearest to becoming fresh go first, and evictions are counted.
#[test]
fn the_store_never_holds_more_than_max_keys() {
    let clock = ManualClock::new(0);
    // Sharded, the cap is split evenly: never above it in total.
    let sharded = MemoryStore::builder().max_keys(1_000).build();
    let p = policy("fixed_window 1/1h");
    for i in 0..20_000u32 {
        sharded.apply_sync(tollgate::Check::new(
            format!("k-{i}").as_bytes(),
            &[PolicyRef {
                name: "p",
                policy: &p,
            }],
            1,
            Mode::Consume,
        ));
    }
    assert!(sharded.len() <= 1_000, "{} entries", sharded.len());
    assert!(sharded.evictions() >= 19_000);
    // One shard, to follow which entries go.
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .shards(1)
        .max_keys(1_000)
        .build();
    let (day, second) = (policy("fixed_window 1/1d"), policy("fixed_window 1/1s"));
    let apply = |key: &[u8], p: &Policy| charge(&store, key, p);
    for i in 0..200u32 {
        assert!(apply(format!("day-{i}").as_bytes(), &day).allowed);
    }
    for i in 0..20_000u32 {
        assert!(apply(format!("flood-{i}").as_bytes(), &second).allowed);
        assert!(store.len() <= 1_000, "{} entries after {i}", store.len());
    }
    assert!(store.evictions() >= 19_000, "{}", store.evictions());
    // The entries nearest to fresh went first: every daily state is kept.
    for i in 0..200u32 {
        assert!(
            !apply(format!("day-{i}").as_bytes(), &day).allowed,
            "day-{i} was evicted before one-second states"
        );
    }
    // Expired entries make room before anything live is evicted.
    clock.advance_us(2_000_000);
    let before = store.evictions();
    for i in 0..500u32 {
        assert!(apply(format!("late-{i}").as_bytes(), &second).allowed);
    }
    assert_eq!(store.evictions(), before, "expired states made the room");
}
