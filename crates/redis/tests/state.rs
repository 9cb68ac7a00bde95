//! Redis state handling: TTLs, sliding-log members, exact refill, exact
//! integers, hash tags. Each of these has bitten real Redis limiters.

mod common;

use std::time::Duration;

use tollgate::{
    Algorithm, Clock, Limiter, ManualClock, MemoryStore, Mode, Policy, PolicyRef, Store,
};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::conformance::START_US;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

/// Stores on Redis's own clock (the production path).
async fn real_clock_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect")
}

fn pttl(server: &RedisServer, key: &[u8]) -> i64 {
    let key = String::from_utf8(key.to_vec()).expect("ascii key");
    server
        .cli(&["PTTL", &key])
        .parse()
        .expect("PTTL is an integer")
}

#[tokio::test]
async fn every_key_gets_a_ttl_equal_to_when_its_state_is_fresh() {
    let server = RedisServer::start();
    let store = real_clock_store(&server).await;
    for algorithm in Algorithm::ALL {
        let p = if algorithm.has_burst() {
            policy(&format!("{algorithm} 10/1s burst 100"))
        } else {
            policy(&format!("{algorithm} 100/10s"))
        };
        let refs = [PolicyRef {
            name: "ttl",
            policy: &p,
        }];
        let mut last = None;
        for _ in 0..100 {
            last = Some(
                store
                    .apply(tollgate::Check::new(b"drained", &refs, 1, Mode::Consume))
                    .await
                    .expect("redis")[0],
            );
        }
        let d = last.expect("ran");
        let expected_ms = d.reset_after.as_micros().div_ceil(1000) as i64;
        let ttl = pttl(&server, &store.key(b"drained", &refs[0]));
        // Read right after the decision: equal but for the time between the
        // two calls, and never shorter than the state needs.
        assert!(ttl > 0, "{algorithm}: key has no TTL ({ttl})");
        assert!(
            ttl <= expected_ms && ttl >= expected_ms - 200,
            "{algorithm}: PTTL {ttl} ms, state fresh in {expected_ms} ms"
        );
        if algorithm.has_burst() && algorithm != Algorithm::LeakyBucket {
            // A bucket of 100 refilling at 10/s is full again after 10 s, not 2 s.
            assert!(
                ttl > 9_500,
                "{algorithm}: a drained bucket of 100 at 10/s expires after {ttl} ms"
            );
        }
    }
}

#[tokio::test]
async fn no_key_is_left_without_a_ttl() {
    let server = RedisServer::start();
    let store = real_clock_store(&server).await;
    let policies: Vec<Policy> = Algorithm::ALL
        .iter()
        .map(|a| policy(&format!("{a} 3/2s")))
        .collect();
    let names: Vec<String> = Algorithm::ALL.iter().map(|a| a.name().to_owned()).collect();
    for i in 0..300u32 {
        let key = format!("k{}", i % 17);
        let refs: Vec<PolicyRef<'_>> = (0..6)
            .filter(|j| (i as usize + j) % 3 != 0)
            .map(|j| PolicyRef {
                name: &names[j],
                policy: &policies[j],
            })
            .collect();
        store
            .apply(tollgate::Check::new(
                key.as_bytes(),
                &refs,
                u64::from(i % 4 + 1),
                Mode::Consume,
            ))
            .await
            .expect("redis");
    }
    let keys = server.cli(&["--scan", "--pattern", &format!("{}:*", store.prefix())]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 17, "expected keys, found {}", keys.len());
    for key in keys {
        // -2: expired between SCAN and PTTL (windows end); 0: expires within
        // the millisecond; -1 would be a key without a TTL, which must never
        // exist.
        let ttl: i64 = server.cli(&["PTTL", key]).parse().expect("integer");
        assert!(ttl == -2 || (0..=4_000).contains(&ttl), "{key}: PTTL {ttl}");
    }
}

#[tokio::test]
async fn sliding_log_counts_every_request_in_the_same_microsecond() {
    let server = RedisServer::start();
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock).await;
    let limiter = Limiter::builder(store.clone())
        .policy("log", policy("sliding_log 500/1h"))
        .build();
    // 64 tasks, 20 requests each, all at the same microsecond.
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                for _ in 0..20 {
                    n += u64::from(
                        limiter
                            .check("log", "same-us", 1)
                            .await
                            .expect("redis")
                            .allowed,
                    );
                }
                n
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    assert_eq!(
        admitted, 500,
        "every request of the microsecond counted, none lost to a member collision"
    );
    let p = policy("sliding_log 500/1h");
    let key = store.key(
        b"same-us",
        &PolicyRef {
            name: "log",
            policy: &p,
        },
    );
    let key = String::from_utf8(key).expect("ascii");
    // One member for the microsecond, carrying the 500 units admitted in it
    // (running total 500, cost 500).
    assert_eq!(server.cli(&["ZRANGE", &key, "0", "-1"]), "500:500");
}

/// Issue 12, item 3: a cost of a million once took 1.36 s inside Redis and
/// left a 122 MB key (one member per unit). Now one member per admitted
/// request carries its cost, so the same request is O(log n) work and a
/// key of a few dozen bytes, and what it admitted still counts exactly.
#[tokio::test]
async fn sliding_log_work_and_memory_do_not_grow_with_the_cost() {
    let server = RedisServer::start();
    let store = real_clock_store(&server).await;
    let p = policy("sliding_log 1000000/1h");
    let refs = [PolicyRef {
        name: "big",
        policy: &p,
    }];
    let d = store
        .apply(tollgate::Check::new(
            b"heavy",
            &refs,
            1_000_000,
            Mode::Consume,
        ))
        .await
        .expect("redis")[0];
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    let key = String::from_utf8(store.key(b"heavy", &refs[0])).expect("ascii");
    assert_eq!(server.cli(&["ZCARD", &key]), "1");
    let bytes: u64 = server
        .cli(&["MEMORY", "USAGE", &key])
        .parse()
        .expect("integer");
    assert!(bytes < 1024, "a key of {bytes} bytes");
    let denied = store
        .apply(tollgate::Check::new(b"heavy", &refs, 1, Mode::Consume))
        .await
        .expect("redis")[0];
    assert!(!denied.allowed);
    let retry = denied.retry_after.expect("fits after the entry expires");
    assert!(
        retry > Duration::from_secs(3599) && retry <= Duration::from_secs(3600),
        "{retry:?}"
    );
}

#[tokio::test]
async fn no_fraction_of_refill_is_lost_at_any_request_rate() {
    let server = RedisServer::start();
    for text in [
        "token_bucket 3/1s burst 1",
        "gcra 3/1s burst 1",
        "leaky_bucket 3/1s burst 1",
    ] {
        let clock = ManualClock::new(START_US);
        let store = common::standalone(&server.url(), clock.clone()).await;
        let p = policy(text);
        let refs = [PolicyRef {
            name: "rate",
            policy: &p,
        }];
        let mut admitted = 0;
        // Poll every 997 µs for 2 s: one token every 333 333.3 µs. Tokens at
        // 0 (full bucket) and k/3 s for k = 1..=5 fall inside; k = 6 (2 s)
        // is after the last poll at 1 999 982 µs. Rounding refill per call
        // would lose ~0.3 µs of refill at every poll and admit fewer.
        while clock.now_us() - START_US <= 2_000_000 {
            admitted += u32::from(
                store
                    .apply(tollgate::Check::new(b"poller", &refs, 1, Mode::Consume))
                    .await
                    .expect("redis")[0]
                    .allowed,
            );
            clock.advance_us(997);
        }
        assert_eq!(admitted, 6, "{text}");
    }
}

/// Decisions at the edge of exact integer arithmetic (products just below
/// 2^53) match the memory store exactly.
#[tokio::test]
async fn arithmetic_stays_exact_at_the_largest_policies() {
    let server = RedisServer::start();
    // Limits that share no factor with one minute, at the largest values
    // Policy::new accepts (docs/ALGORITHMS.md, "Integer bounds").
    let policies = [
        policy("token_bucket 75059993/1m"),
        policy("gcra 75059993/1m"),
        policy("leaky_bucket 75059993/1m"),
        policy("sliding_window 50039993/1m"),
        policy("fixed_window 4294967296/1m"),
        policy("sliding_log 1000000/1m"),
    ];
    assert!(
        Policy::new(Algorithm::Gcra, 75_059_999, Duration::from_secs(60), None).is_err(),
        "the bound is tight"
    );
    let clock = ManualClock::new(START_US);
    let redis = common::standalone(&server.url(), clock.clone()).await;
    let memory = MemoryStore::with_clock(clock.clone());
    for p in &policies {
        let refs = [PolicyRef {
            name: "big",
            policy: p,
        }];
        let costs = [
            1u64,
            75_000_000,
            3,
            4_294_967_295,
            50_000_000,
            999_999,
            1,
            12_345_678,
        ];
        for (i, &cost) in costs.iter().cycle().take(40).enumerate() {
            clock.advance_us([0, 1, 799, 59_999_999, 13][i % 5]);
            let expected = memory
                .apply(tollgate::Check::new(b"k", &refs, cost, Mode::Consume))
                .await
                .expect("memory");
            let actual = redis
                .apply(tollgate::Check::new(b"k", &refs, cost, Mode::Consume))
                .await
                .expect("redis");
            assert_eq!(expected, actual, "{p}: op {i}, cost {cost}");
        }
    }
}

#[tokio::test]
async fn hostile_identities_keep_their_keys_in_one_cluster_slot() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = RedisStore::connect_cluster(&cluster.urls(), common::options())
        .await
        .expect("connect");
    let per_second = policy("fixed_window 5/1s");
    let per_hour = policy("sliding_log 50/1h");
    let refs = [
        PolicyRef {
            name: "second",
            policy: &per_second,
        },
        PolicyRef {
            name: "hour",
            policy: &per_hour,
        },
    ];
    let long = "}{".repeat(5_000);
    for identity in ["a}:{b", "{", "}", "", "%7B", "user:{42}", long.as_str()] {
        let d = store
            .apply(tollgate::Check::new(
                identity.as_bytes(),
                &refs,
                2,
                Mode::Consume,
            ))
            .await
            .expect("no CROSSSLOT");
        assert!(d.iter().all(|d| d.allowed), "{identity:.20}");
        let node = &cluster.nodes()[0];
        let slots: Vec<String> = refs
            .iter()
            .map(|r| {
                let key = String::from_utf8(store.key(identity.as_bytes(), r)).expect("utf-8");
                node.cli(&["CLUSTER", "KEYSLOT", &key])
            })
            .collect();
        assert_eq!(slots[0], slots[1], "{identity:.20}");
    }
    // A client cannot aim at the slot of another identity by closing the tag.
    let victim = String::from_utf8(store.key(b"victim", &refs[0])).expect("utf-8");
    let attacker = String::from_utf8(store.key(b"victim}x", &refs[0])).expect("utf-8");
    let node = &cluster.nodes()[0];
    assert_ne!(
        node.cli(&["CLUSTER", "KEYSLOT", &victim]),
        node.cli(&["CLUSTER", "KEYSLOT", &attacker])
    );
}

#[tokio::test]
async fn a_bad_prefix_or_url_is_a_clear_error() {
    let err = RedisStore::connect(
        "redis://127.0.0.1:1",
        RedisOptions::default().prefix("a{b}"),
    )
    .await
    .expect_err("brace in prefix");
    assert!(err.to_string().contains("hash tag"), "{err}");
    let err = RedisStore::connect("http://user:secret@example", RedisOptions::default())
        .await
        .expect_err("not a redis URL");
    assert!(
        err.to_string().contains("invalid Redis URL") && !err.to_string().contains("secret"),
        "{err}"
    );
    let seeds: [&str; 0] = [];
    assert!(
        RedisStore::connect_cluster(&seeds, RedisOptions::default())
            .await
            .is_err()
    );
}
