//! The Sentinel store through real failovers: a master, one replica and
//! three `redis-sentinel` processes (testkit), the master demoted by
//! `SENTINEL FAILOVER`, killed, or hung with `SIGSTOP`. Decisions resume on
//! the new master within a bounded time, nothing is ever written to a
//! demoted master, a limit stays exact across the failover when every
//! charge was replicated before it (docs/REDIS.md, "Exactness across a
//! failover": what asynchronous replication can lose), a reservation
//! replicated before it is settled once on the new master, and resets
//! reach every deny cache before and after it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use tollgate::{Decision, Limiter};
use tollgate_redis::{RedisOptions, RedisStore, SentinelMaster};
use tollgate_testkit::redis::{RedisSentinel, SentinelSetup};

/// How long decisions may fail while the sentinels fail over.
const RESUME_WITHIN: Duration = Duration::from_secs(30);
/// The policy: exact, and nothing refills within a test (an hour).
const POLICY: &str = "sliding_log 10/1h";

fn limiter(store: RedisStore) -> Limiter<RedisStore> {
    Limiter::builder(store)
        .policy("api", POLICY.parse().unwrap())
        .build()
}

/// Runs a blocking testkit call without stalling the runtime's other
/// tasks (the store's connections).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Checks until one decision succeeds (bounded by [`RESUME_WITHIN`]);
/// returns it and how many calls failed before it.
async fn first_decision(limiter: &Limiter<RedisStore>, key: &str) -> (Decision, usize) {
    let deadline = Instant::now() + RESUME_WITHIN;
    let mut failures = 0;
    loop {
        match limiter.check("api", key, 1).await {
            Ok(decision) => return (decision, failures),
            Err(e) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "no decision within {RESUME_WITHIN:?} of the failover; last error: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Spends the rest of the limit after `admitted` charges: every decision
/// allowed with exactly the remaining count, then denied.
async fn spend_the_rest(limiter: &Limiter<RedisStore>, key: &str, mut admitted: u64) {
    while admitted < 10 {
        let decision = limiter.check("api", key, 1).await.unwrap();
        admitted += 1;
        assert!(decision.allowed, "charge {admitted} of 10 is allowed");
        assert_eq!(decision.remaining, 10 - admitted, "charge {admitted}");
    }
    let denied = limiter.check("api", key, 1).await.unwrap();
    assert!(
        !denied.allowed,
        "the 11th charge is denied: the limit stays exact across the failover"
    );
}

/// The stored sliding log's size on the node at `port` (`ZCARD`).
fn entries(group: &RedisSentinel, port: u16, key: &str) -> String {
    group.query(port, &["ZCARD", key]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_a_forced_failover_and_never_write_to_the_demoted_master() {
    let group = blocking(RedisSentinel::start);
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(&group),
        common::options(),
    )
    .await
    .unwrap();
    let old = group.master_port();
    assert!(
        format!("{store:?}").contains(&format!("127.0.0.1:{old}")),
        "{store:?}"
    );
    let key = format!("{}:{{forced}}:api:sliding_log", store.prefix());
    let limiter = limiter(store.clone());
    for admitted in 1..=5 {
        let decision = limiter.check("api", "forced", 1).await.unwrap();
        assert_eq!(
            (decision.allowed, decision.remaining),
            (true, 10 - admitted)
        );
    }
    // Every charge reached the replica: a failover now loses nothing.
    blocking(|| group.wait_replicated(Duration::from_secs(10)));

    // The old master stays up and becomes a replica of the promoted one.
    let new = blocking(|| group.failover());
    assert_ne!(new, old);
    let (decision, _failures) = first_decision(&limiter, "forced").await;
    assert_eq!(
        (decision.allowed, decision.remaining),
        (true, 4),
        "the sixth charge, counted on the new master"
    );
    assert!(
        format!("{store:?}").contains(&format!("127.0.0.1:{new}")),
        "the store follows the master to {new}: {store:?}"
    );
    spend_the_rest(&limiter, "forced", 6).await;

    // All ten charges are on the new master, and the demoted one holds
    // them only by replication from it: nothing was written to it.
    assert_eq!(entries(&group, new, &key), "10");
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    assert_eq!(entries(&group, old, &key), "10");
    let role = group.query(old, &["ROLE"]).unwrap();
    assert!(role.starts_with("slave"), "{role}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_a_killed_master_and_stay_exact() {
    let mut group = blocking(RedisSentinel::start);
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(&group),
        common::options(),
    )
    .await
    .unwrap();
    let limiter = limiter(store.clone());
    for admitted in 1..=3 {
        let decision = limiter.check("api", "killed", 1).await.unwrap();
        assert_eq!(
            (decision.allowed, decision.remaining),
            (true, 10 - admitted)
        );
    }
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    let started = Instant::now();
    let (old, new) = blocking(|| group.kill_master());
    // Decisions sent to the dead master fail (nothing ran there: it is
    // gone); once the sentinels have promoted the replica, they resume.
    let (decision, _failures) = first_decision(&limiter, "killed").await;
    assert!(started.elapsed() < RESUME_WITHIN);
    assert_eq!(
        (decision.allowed, decision.remaining),
        (true, 6),
        "the fourth charge, on the promoted replica, which had the first three"
    );
    let described = format!("{store:?}");
    assert!(
        described.contains(&format!("127.0.0.1:{new}"))
            && !described.contains(&format!("127.0.0.1:{old}")),
        "{described}"
    );
    spend_the_rest(&limiter, "killed", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_is_left_for_the_promoted_replica() {
    let group = blocking(RedisSentinel::start);
    // A deadline, as the resilience layer would set: calls to the hung
    // master are abandoned at it, and the store asks the sentinels.
    let options = RedisOptions::default()
        .prefix(common::unique_prefix())
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(500));
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(&group),
        options,
    )
    .await
    .unwrap();
    let limiter = limiter(store.clone());
    let decision = limiter.check("api", "hung", 1).await.unwrap();
    assert_eq!(decision.remaining, 9);
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    let old = group.master_port();
    let mut group = group;
    let hung = group.servers().iter().find(|s| s.port() == old).unwrap();
    hung.stop_signal();
    let new = blocking(|| group.wait_for_new_master(old, RESUME_WITHIN));
    // A call abandoned at the deadline may have been sent to the hung
    // master; if it ever runs there, it runs on a node the sentinels have
    // replaced and will resynchronise from the new master, so it charges
    // nothing that counts. Its caller saw an error, never an admission.
    let (decision, _failures) = first_decision(&limiter, "hung").await;
    assert_eq!((decision.allowed, decision.remaining), (true, 8));
    assert!(format!("{store:?}").contains(&format!("127.0.0.1:{new}")));
    let hung = group.servers().iter().find(|s| s.port() == old).unwrap();
    hung.cont_signal();
    spend_the_rest(&limiter, "hung", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_master_credentials_are_separate() {
    let group = blocking(|| {
        RedisSentinel::start_with(
            SentinelSetup::default()
                .nodes(1, 1)
                .master_password("master-s3cret")
                .sentinel_password("sentinel-s3cret"),
        )
    });
    let urls = group.sentinel_urls();
    assert!(urls[0].contains(":sentinel-s3cret@"), "{urls:?}");
    let master = SentinelMaster::new(group.master_name()).password("master-s3cret");
    let store = RedisStore::connect_sentinel(&urls, master, common::options())
        .await
        .unwrap();
    let decision = limiter(store).check("api", "auth", 1).await.unwrap();
    assert_eq!((decision.allowed, decision.remaining), (true, 9));

    // The master's password is not the sentinels': each refused alone, and
    // no message echoes a password.
    let wrong_master = SentinelMaster::new(group.master_name()).password("nope-master");
    let error = RedisStore::connect_sentinel(&urls, wrong_master, common::options())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !error.contains("nope-master") && !error.contains("sentinel-s3cret"),
        "{error}"
    );
    let no_sentinel_auth = vec![urls[0].replace(":sentinel-s3cret@", "")];
    let master = SentinelMaster::new(group.master_name()).password("master-s3cret");
    let error = RedisStore::connect_sentinel(&no_sentinel_auth, master, common::options())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("NOAUTH") || error.to_lowercase().contains("auth"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_or_no_sentinel_is_a_clear_error() {
    let group = blocking(|| RedisSentinel::start_with(SentinelSetup::default().nodes(0, 1)));
    let error = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        SentinelMaster::new("no-such-master"),
        common::options(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("no-such-master") && error.contains("does not monitor"),
        "{error}"
    );
    let none: [&str; 0] = [];
    let error = RedisStore::connect_sentinel(&none, SentinelMaster::new("m"), common::options())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least one sentinel"), "{error}");
    let error = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        SentinelMaster::new(""),
        common::options(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("the master's name"), "{error}");
    let error = RedisStore::connect_sentinel(
        &["unix:///tmp/sentinel.sock"],
        SentinelMaster::new("m"),
        common::options(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("redis:// or rediss://"), "{error}");
}

/// A limiter behind the resilience layer with its deny cache fed by the
/// store's invalidation feed, waiting until the feed is live.
async fn cached(
    group: &RedisSentinel,
    prefix: &str,
) -> Limiter<tollgate::resilience::Resilient<RedisStore>> {
    use tollgate::resilience::{ResilienceOptions, Resilient};

    let options = common::options().prefix(prefix);
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(group),
        options,
    )
    .await
    .unwrap();
    let limiter = Limiter::builder(Resilient::with_invalidations(
        store,
        // Six Redis processes share the machine: the default deadline
        // (50 ms) would degrade decisions this test requires exact.
        ResilienceOptions::default().timeout(Duration::from_secs(1)),
    ))
    .policy("api", "fixed_window 1/1h".parse().unwrap())
    .build();
    let started = Instant::now();
    while limiter.store().stats().invalidation_feed_live != Some(true) {
        assert!(started.elapsed() < Duration::from_secs(5), "feed not live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    limiter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_reach_every_deny_cache_before_and_after_a_failover() {
    let group = blocking(RedisSentinel::start);
    let prefix = common::unique_prefix();
    let first = cached(&group, &prefix).await;
    let second = cached(&group, &prefix).await;
    let deny_both = || async {
        for limiter in [&first, &second] {
            let _ = limiter.check("api", "k", 1).await.unwrap();
            let d = limiter.check("api", "k", 1).await.unwrap();
            assert!(!d.allowed && !d.degraded, "denied by Redis: {d:?}");
            assert_eq!(limiter.store().stats().deny_cache_len, 1);
        }
    };
    deny_both().await;
    // A reset through one instance reaches the other over the master's
    // pub/sub, found through the sentinels.
    second.reset("api", "k").await.unwrap();
    let started = Instant::now();
    while !first.check("api", "k", 1).await.unwrap().allowed {
        assert!(started.elapsed() < Duration::from_secs(2), "reset not seen");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(first.store().stats().invalidations, 1);

    deny_both().await;
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    blocking(|| group.failover());
    // Both instances find the new master (a decision on Redis, not a
    // degraded one from the failure mode)...
    for (limiter, probe) in [(&first, "probe-1"), (&second, "probe-2")] {
        let deadline = Instant::now() + RESUME_WITHIN;
        loop {
            let d = limiter.check("api", probe, 1).await.unwrap();
            if !d.degraded {
                assert!(d.allowed, "a fresh key, admitted by the new master");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no decision on Redis after the failover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // "k" is still charged there (it was replicated): denied by Redis or
    // by the cache...
    assert!(!second.check("api", "k", 1).await.unwrap().allowed);
    assert!(!first.check("api", "k", 1).await.unwrap().allowed);
    // ...and a reset there still reaches the other instance's cache.
    second.reset("api", "k").await.unwrap();
    let started = Instant::now();
    loop {
        let d = first.check("api", "k", 1).await.unwrap();
        if d.allowed {
            assert!(!d.degraded);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "reset not seen after the failover"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_failover_that_fails_no_call() {
    let group = blocking(RedisSentinel::start);
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(&group),
        common::options(),
    )
    .await
    .unwrap();
    let old = group.master_port();
    let new = blocking(|| group.failover());
    // No call is made: the store's watch asks the sentinels every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !format!("{store:?}").contains(&format!("127.0.0.1:{new}")) {
        assert!(
            Instant::now() < deadline,
            "still on {old} 10 s after the failover: {store:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // So the first call after it goes straight to the new master.
    let decision = limiter(store).check("api", "watched", 1).await.unwrap();
    assert_eq!((decision.allowed, decision.remaining), (true, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_and_master_with_a_private_ca_through_a_failover() {
    let dir = tollgate_testkit::files::temp_dir("sentinel-tls");
    let certificates = tollgate_testkit::tls::Certificates::create(&dir);
    let ca = std::fs::read(&certificates.ca).unwrap();
    let group = blocking(|| RedisSentinel::start_with(SentinelSetup::default().tls(certificates)));
    let urls = group.sentinel_urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    // TLS to the master by default, as the sentinels' scheme says.
    let store = RedisStore::connect_sentinel(
        &urls,
        common::sentinel_master(&group),
        common::options().tls_root_cert(ca.clone()),
    )
    .await
    .unwrap();
    let limiter = limiter(store.clone());
    for admitted in 1..=2 {
        let decision = limiter.check("api", "tls", 1).await.unwrap();
        assert_eq!(
            (decision.allowed, decision.remaining),
            (true, 10 - admitted)
        );
    }
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    blocking(|| group.failover());
    let (decision, _failures) = first_decision(&limiter, "tls").await;
    assert_eq!((decision.allowed, decision.remaining), (true, 7));
    spend_the_rest(&limiter, "tls", 3).await;

    // The master speaks only TLS to clients that trust its CA: the public
    // roots, or plain text to its TLS port, fail.
    let error =
        RedisStore::connect_sentinel(&urls, common::sentinel_master(&group), common::options())
            .await
            .unwrap_err()
            .to_string();
    assert!(error.contains("connect"), "{error}");
    let plain = SentinelMaster::new(group.master_name()).tls(false);
    let error = RedisStore::connect_sentinel(&urls, plain, common::options().tls_root_cert(ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no sentinel named a reachable master"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A reservation replicated before a failover is settled on the promoted
/// master, once: its record and its charge were both replicated
/// (docs/REDIS.md, "Reservations": what a failover can lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_reservation_is_settled_once_on_the_promoted_master() {
    use tollgate::{Check, Mode, PolicyRef, ReserveCall, SettleAnswer, SettleCall, Store};
    let group = blocking(RedisSentinel::start);
    let store = RedisStore::connect_sentinel(
        &group.sentinel_urls(),
        common::sentinel_master(&group),
        common::options(),
    )
    .await
    .unwrap();
    let policy: tollgate::Policy = "fixed_window 10/1h".parse().unwrap();
    let refs = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    for (nonce, estimate, remaining) in [(1, 6, 4), (2, 3, 1)] {
        let call = ReserveCall {
            check: Check::new(b"reserved", &refs, estimate, Mode::Consume),
            nonce,
            deadline_us: 600_000_000,
        };
        let decisions = store.reserve(call).await.unwrap();
        assert_eq!(
            (decisions[0].allowed, decisions[0].remaining),
            (true, remaining)
        );
    }
    blocking(|| group.wait_replicated(Duration::from_secs(10)));
    let old = group.master_port();
    let new = blocking(|| group.failover());
    assert_ne!(new, old);
    let settle = |nonce, actual| SettleCall {
        key: b"reserved",
        policies: &refs,
        nonce,
        actual,
    };
    // The first settle after the failover, retried while it fails.
    let deadline = Instant::now() + RESUME_WITHIN;
    let first: SettleAnswer = loop {
        match store.settle(settle(1, 2)).await {
            Ok(answer) => break answer.expect("the record was replicated"),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no settle after the failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Either this settle ran on the new master, or an earlier attempt ran
    // there and lost its reply: the same answer.
    assert_eq!(first.settled[0].returned, 4, "{first:?}");
    assert_eq!(first.decisions[0].remaining, 5, "{first:?}");
    let again = store.settle(settle(1, 9)).await.unwrap().unwrap();
    assert!(
        again.replayed && again.settled == first.settled,
        "{again:?}"
    );
    let second = store.settle(settle(2, 5)).await.unwrap().unwrap();
    assert_eq!(
        (second.settled[0].charged, second.decisions[0].remaining),
        (2, 3),
        "{second:?}"
    );
    assert!(
        format!("{store:?}").contains(&format!("127.0.0.1:{new}")),
        "{store:?}"
    );
}
