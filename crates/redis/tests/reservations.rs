//! Reservations on Redis beyond what the differential test compares: a
//! record expires at its deadline on Redis's own clock (after which a
//! settle finds nothing and the estimate stays charged), a Cluster
//! reserves and settles identities spread over many slots, each record
//! beside the states it charges, and amounts or deadlines past the
//! limiter's bounds are refused before anything is sent.

mod common;

use std::time::Duration;

use tollgate::{Check, Mode, Policy, PolicyRef, ReserveCall, SettleCall, Settled, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

#[tokio::test]
async fn a_record_expires_at_its_deadline_on_redis_clock() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let policy: Policy = "fixed_window 100/1h".parse().expect("valid");
    let refs = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    let deadline = Duration::from_secs(2);
    let call = ReserveCall {
        check: Check::new(b"client", &refs, 40, Mode::Consume),
        nonce: 7,
        deadline_us: deadline.as_micros() as u64,
    };
    let decisions = store.reserve(call).await.expect("reserve");
    assert!(decisions[0].allowed, "{decisions:?}");
    let record = String::from_utf8(store.reservation_key(b"client", 7)).expect("ascii");
    let pttl: u64 = server.cli(&["PTTL", &record]).parse().expect("a TTL");
    assert!(
        (1..=2_000).contains(&pttl),
        "the record lives until its deadline: PTTL {pttl}"
    );
    // Redis expires it once its clock passes the deadline.
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while server.cli(&["EXISTS", &record]) != "0" {
        assert!(std::time::Instant::now() < gone, "the record never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle = SettleCall {
        key: b"client",
        policies: &refs,
        nonce: 7,
        actual: 0,
    };
    assert_eq!(store.settle(settle).await.expect("settle"), None);
    // Settled at its estimate: the 40 units stay charged.
    let peek = store
        .apply(Check::new(b"client", &refs, 1, Mode::Peek))
        .await
        .expect("peek");
    assert_eq!(peek[0].remaining, 60, "{peek:?}");
}

#[tokio::test]
async fn a_cluster_reserves_and_settles_identities_in_many_slots() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = RedisStore::connect_cluster(&cluster.urls(), common::options())
        .await
        .expect("connect");
    let window: Policy = "fixed_window 100/1h".parse().expect("valid");
    let gcra: Policy = "gcra 100/1h".parse().expect("valid");
    let refs = [
        PolicyRef {
            name: "window",
            policy: &window,
        },
        PolicyRef {
            name: "gcra",
            policy: &gcra,
        },
    ];
    let node = &mut cluster.nodes()[0];
    let mut slots = std::collections::HashSet::new();
    for i in 0..60u128 {
        let identity = format!("user-{i}");
        let key = identity.as_bytes();
        let reserve = ReserveCall {
            check: Check::new(key, &refs, 10, Mode::Consume),
            nonce: i,
            deadline_us: 60_000_000,
        };
        let decisions = store.reserve(reserve).await.expect("reserve");
        assert!(decisions.iter().all(|d| d.allowed), "{decisions:?}");
        // The record shares the slot of the states it charges.
        let record = String::from_utf8(store.reservation_key(key, i)).expect("ascii");
        let state = String::from_utf8(store.key(key, &refs[0])).expect("ascii");
        let slot = node.cli(&["CLUSTER", "KEYSLOT", &record]);
        assert_eq!(slot, node.cli(&["CLUSTER", "KEYSLOT", &state]));
        slots.insert(slot);
        // Half settle under the estimate (the window takes 7 back, GCRA
        // none), half over it (15 more each).
        let actual = if i % 2 == 0 { 3 } else { 25 };
        let settle = SettleCall {
            key,
            policies: &refs,
            nonce: i,
            actual,
        };
        let answer = store.settle(settle).await.expect("settle").expect("found");
        let (expected, remaining) = if actual < 10 {
            let back = Settled {
                returned: 7,
                ..Settled::default()
            };
            ([back, Settled::default()], [97, 90])
        } else {
            let more = Settled {
                charged: 15,
                ..Settled::default()
            };
            ([more, more], [75, 75])
        };
        assert_eq!(&answer.settled[..], &expected, "{identity}: {answer:?}");
        let left: Vec<u64> = answer.decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(left, remaining, "{identity}: {answer:?}");
        // A retry replays.
        let again = store.settle(settle).await.expect("settle").expect("found");
        assert!(again.replayed && again.settled == answer.settled);
    }
    assert!(slots.len() > 50, "only {} slots", slots.len());
}

/// The store refuses what the limiter never asks (an amount past 2^53 - 1,
/// which Lua could not compute exactly; a deadline past an hour, a record
/// kept that long) before anything reaches Redis.
#[tokio::test]
async fn amounts_and_deadlines_past_the_bounds_are_refused() {
    use tollgate::StoreError;
    use tollgate::reservation::{MAX_AMOUNT, MAX_DEADLINE};
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), common::options())
        .await
        .expect("connect");
    let policy: Policy = "fixed_window 100/1h".parse().expect("valid");
    let refs = [PolicyRef {
        name: "api",
        policy: &policy,
    }];
    let reserve = |estimate, deadline_us| ReserveCall {
        check: Check::new(b"client", &refs, estimate, Mode::Consume),
        nonce: 1,
        deadline_us,
    };
    let hour = MAX_DEADLINE.as_micros() as u64;
    for call in [reserve(MAX_AMOUNT + 1, 1_000), reserve(1, hour + 1)] {
        let refused = store.reserve(call).await;
        assert!(
            matches!(refused, Err(StoreError::Protocol(_))),
            "{refused:?}"
        );
    }
    let settle = SettleCall {
        key: b"client",
        policies: &refs,
        nonce: 1,
        actual: MAX_AMOUNT + 1,
    };
    let refused = store.settle(settle).await;
    assert!(
        matches!(refused, Err(StoreError::Protocol(_))),
        "{refused:?}"
    );
    assert_eq!(server.cli(&["DBSIZE"]), "0");
    // At the bounds: accepted.
    let decisions = store.reserve(reserve(1, hour)).await.expect("reserve");
    assert!(decisions[0].allowed);
    let settle = SettleCall {
        actual: MAX_AMOUNT,
        ..settle
    };
    let answer = store.settle(settle).await.expect("settle").expect("found");
    // 99 remain, plus an overdraft of the capacity: exact at 2^53 - 1.
    assert_eq!(answer.settled[0].charged, 199, "{answer:?}");
    assert_eq!(answer.settled[0].unpaid, MAX_AMOUNT - 1 - 199, "{answer:?}");
}
