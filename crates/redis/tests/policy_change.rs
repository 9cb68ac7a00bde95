//! Issue 12, item 1, on Redis's own clock: a policy changed under a live
//! key keeps the key alive as long as the policy in force needs it. The key
//! kept the old policy's TTL: after `sliding_log 5/1s` became `5/1h`, five
//! more were admitted 1.1 s later; a drained `token_bucket 1/1s burst 2`
//! under `burst 100` admitted 100 after 2.05 s. (The same timelines on a test
//! clock, for every algorithm and change, are in the conformance suite.)

mod common;

use std::time::{Duration, Instant};

use tollgate::{Mode, Policy, PolicyRef, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

async fn check(store: &RedisStore, key: &[u8], policy: &Policy) -> tollgate::Decision {
    let refs = [PolicyRef {
        name: "changing",
        policy,
    }];
    store
        .apply(tollgate::Check::new(key, &refs, 1, Mode::Consume))
        .await
        .expect("redis")[0]
}

async fn a_lengthened_period_keeps_the_log(store: &RedisStore) {
    let (short, long) = (policy("sliding_log 5/1s"), policy("sliding_log 5/1h"));
    for _ in 0..5 {
        assert!(check(store, b"log", &short).await.allowed);
    }
    let denied = check(store, b"log", &long).await;
    assert!(!denied.allowed);
    assert!(
        denied.retry_after > Some(Duration::from_secs(3598)),
        "{denied:?}"
    );
    // Past the old policy's expiry: the five still count under 5/1h.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..5 {
        let d = check(store, b"log", &long).await;
        assert!(!d.allowed, "admitted after the old TTL ran out: {d:?}");
    }
}

async fn a_raised_burst_keeps_the_tokens(store: &RedisStore) {
    let (small, large) = (
        policy("token_bucket 1/1s burst 2"),
        policy("token_bucket 1/1s burst 100"),
    );
    assert!(check(store, b"bucket", &small).await.allowed);
    assert!(check(store, b"bucket", &small).await.allowed);
    let drained = Instant::now();
    assert!(!check(store, b"bucket", &large).await.allowed);
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    let mut admitted = 0u64;
    for _ in 0..100 {
        admitted += u64::from(check(store, b"bucket", &large).await.allowed);
    }
    // One token a second since the drain (a slow machine may add one).
    let elapsed = drained.elapsed().as_secs();
    assert!(
        admitted >= 2 && admitted <= elapsed + 1,
        "{admitted} admitted {elapsed} s after the drain"
    );
}

#[tokio::test]
async fn standalone_keys_live_as_long_as_the_policy_in_force_needs() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    tokio::join!(
        a_lengthened_period_keeps_the_log(&store),
        a_raised_burst_keeps_the_tokens(&store)
    );
}

#[tokio::test]
async fn cluster_keys_live_as_long_as_the_policy_in_force_needs() {
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::connect_cluster(&cluster.urls(), common::options())
        .await
        .expect("connect");
    tokio::join!(
        a_lengthened_period_keeps_the_log(&store),
        a_raised_burst_keeps_the_tokens(&store)
    );
}

/// Two instances on one Redis during a rolling reload: one still decides
/// `fixed_window 10/10s`, the other already `fixed_window 1000/1h`. A
/// charge under the longer period wrote the state's start back to the
/// hour's, so the next check under 10 s found its window ended and started
/// it over: every charge of the new instance handed the old one ten more
/// in the same 10 s window (50 in five rounds here, against a limit of 10).
/// The stored start now stays where it was while its count carries, so
/// the old instance keeps counting every unit charged in its window.
#[tokio::test]
async fn a_rolling_reload_never_restarts_the_shorter_window() {
    let server = RedisServer::start();
    let options = common::options();
    let old_instance = RedisStore::connect(&server.url(), options.clone())
        .await
        .expect("connect");
    let new_instance = RedisStore::connect(&server.url(), options)
        .await
        .expect("connect");
    let (old, new) = (
        policy("fixed_window 10/10s"),
        policy("fixed_window 1000/1h"),
    );
    let mut redis = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ten_s_window = |t: (u64, u64)| t.0 / 10;
    for attempt in 0.. {
        let key = format!("rolling-{attempt}");
        let before: (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
        // Not in an hour's first 10 s (where both windows start together),
        // and with room left in this 10 s window.
        if before.0 % 3600 < 10 || before.0 % 10 > 7 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut admitted_old = 0u64;
        for _ in 0..5 {
            for _ in 0..10 {
                admitted_old += u64::from(check(&old_instance, key.as_bytes(), &old).await.allowed);
            }
            assert!(check(&new_instance, key.as_bytes(), &new).await.allowed);
        }
        let after: (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
        if ten_s_window(before) != ten_s_window(after) {
            continue; // crossed a 10 s edge: try again in one window
        }
        assert_eq!(
            admitted_old, 10,
            "the old instance admitted {admitted_old} in one 10 s window of fixed_window 10/10s"
        );
        break;
    }
}
