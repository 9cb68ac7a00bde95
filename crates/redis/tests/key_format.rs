//! The stored form of each algorithm's state (docs/REDIS.md, "Keys and
//! state"): compact states are one integer that Redis keeps like a counter,
//! states that do not fit fall back to the text form, states written by the
//! previous release are read as that release read them, and that release
//! refuses the compact states instead of misreading them (a rolling
//! upgrade runs both on one Redis). A state a lease's give-back writes
//! keeps the same forms, with its expiry exactly from when it is fresh. A
//! reservation's record has its key, layout and expiry (docs/REDIS.md,
//! "Reservations").

mod common;

use std::time::Duration;

use tollgate::algorithm::decision_from_parts;
use tollgate::{Algorithm, Decision, ManualClock, MemoryStore, Mode, Policy, PolicyRef, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::conformance::START_US;
use tollgate_testkit::redis::RedisServer;

/// The decision script of the release before compact states, frozen.
const PREVIOUS_RELEASE: &str = include_str!("fixtures/previous_release.lua");

fn policy(algorithm: Algorithm, limit: u64, period_us: u64) -> Policy {
    Policy::new(algorithm, limit, Duration::from_micros(period_us), None).expect("valid")
}

fn key_name(store: &RedisStore, identity: &[u8], policy: &Policy) -> String {
    let name = store.key(identity, &PolicyRef { name: "p", policy });
    String::from_utf8(name).expect("ascii key")
}

/// Consumes `cost` once at each of `at` (µs after START_US) on `store`.
async fn consume(
    store: &RedisStore,
    clock: &ManualClock,
    identity: &[u8],
    policy: &Policy,
    cost: u64,
    at: &[u64],
) {
    let refs = [PolicyRef { name: "p", policy }];
    for &t in at {
        clock.set_us(START_US + t);
        let d = store
            .apply(tollgate::Check::new(identity, &refs, cost, Mode::Consume))
            .await
            .expect("redis");
        assert!(d[0].allowed, "{policy:?}: setup request denied");
    }
}

#[tokio::test]
async fn each_state_is_stored_compact_when_it_fits_and_as_text_otherwise() {
    let server = RedisServer::start();
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock.clone()).await;
    let hour = 3_600_000_000;
    let second = 1_000_000;
    // START_US = 1_790_000_000_000_000 is a whole second. 100/1h: one token
    // or queued unit is 36_000_000 µs (rate 1).
    let cases: [(Policy, u64, &[u64], &str, &str); 11] = [
        (
            policy(Algorithm::FixedWindow, 100, second),
            1,
            &[0, 5, 9],
            "-1790000000000000003",
            "int",
        ),
        // A count of 10^6 does not fit its six digits.
        (
            policy(Algorithm::FixedWindow, 2_000_000, second),
            1_000_000,
            &[0],
            "1790000000000000:1000000",
            "embstr",
        ),
        // 1.5 ms windows: this one starts at ...999_500 µs, not a whole ms.
        (
            policy(Algorithm::FixedWindow, 10, 1_500),
            1,
            &[0],
            "1789999999999500:1",
            "embstr",
        ),
        (
            policy(Algorithm::SlidingWindow, 100, second),
            1,
            &[0, second + 7],
            "-1790000001000001001",
            "int",
        ),
        (
            policy(Algorithm::SlidingWindow, 5_000, second),
            1_000,
            &[0],
            "1790000000000000:0:1000",
            "embstr",
        ),
        (
            policy(Algorithm::TokenBucket, 100, hour),
            1,
            &[0],
            "-1790000000000000099",
            "int",
        ),
        // Bought back 1 µs of refill: not a whole number of tokens.
        (
            policy(Algorithm::TokenBucket, 100, hour),
            1,
            &[0, 1],
            "3528000001:1790000000000001:36000000",
            "embstr",
        ),
        (
            policy(Algorithm::LeakyBucket, 100, hour),
            1,
            &[0],
            "-1790000000000000",
            "int",
        ),
        // Two queued units: the compact form holds exactly one.
        (
            policy(Algorithm::LeakyBucket, 100, hour),
            2,
            &[0],
            "72000000:1790000000000000:36000000",
            "embstr",
        ),
        (
            policy(Algorithm::Gcra, 100, hour),
            1,
            &[0],
            "1790000036000000",
            "int",
        ),
        // A drained bucket: zero tokens.
        (
            policy(Algorithm::TokenBucket, 2, hour),
            2,
            &[0],
            "-1790000000000000000",
            "int",
        ),
    ];
    for (i, (policy, cost, at, value, encoding)) in cases.iter().enumerate() {
        let identity = format!("case-{i}");
        consume(&store, &clock, identity.as_bytes(), policy, *cost, at).await;
        let name = key_name(&store, identity.as_bytes(), policy);
        assert_eq!(server.cli(&["GET", &name]), *value, "case {i}: {policy:?}");
        assert_eq!(
            server.cli(&["OBJECT", "ENCODING", &name]),
            *encoding,
            "case {i}: {policy:?}"
        );
    }
}

/// A give-back writes the state in the same compact form a decision does,
/// expiring at the millisecond the memory store's entry does (where the
/// state is fresh); a window it empties is deleted; a bucket takes nothing
/// back and keeps the state its lease left. Each lease call gives back
/// with a check that costs more than the capacity, so that it is denied
/// and the give-back is the call's only write.
#[tokio::test]
async fn states_given_back_keep_their_compact_forms_and_exact_expiry() {
    use tollgate::{Held, LeaseAsk, LeaseCall};
    let server = RedisServer::start();
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock.clone()).await;
    let (hour, second) = (3_600_000_000, 1_000_000);
    // Expiries are 2^52 ms ahead under the test clock (prelude.lua).
    let expiry = |fresh_at: u64| ((1u64 << 52) + fresh_at.div_ceil(1000)).to_string();
    // (policy, units given back of the 6 leased, value, fresh at): each
    // after one charged unit and a lease of 6 (a 16th of the 98 left);
    // buckets take none back.
    let cases: [(Policy, u64, Option<&str>, u64); 5] = [
        (
            policy(Algorithm::FixedWindow, 100, second),
            5,
            Some("-1790000000000000003"),
            START_US + second,
        ),
        (
            policy(Algorithm::SlidingWindow, 100, second),
            5,
            Some("-1790000000000000003"),
            START_US + 2 * second,
        ),
        (
            policy(Algorithm::TokenBucket, 100, hour),
            0,
            Some("-1790000000000000092"),
            START_US + 8 * 36_000_000,
        ),
        (
            policy(Algorithm::Gcra, 100, hour),
            0,
            Some("1790000288000000"),
            START_US + 8 * 36_000_000,
        ),
        // Every unit back: the window is fresh, its key gone.
        (policy(Algorithm::FixedWindow, 100, second), 8, None, 0),
    ];
    for (i, (policy, back, value, fresh_at)) in cases.iter().enumerate() {
        let identity = format!("given-{i}");
        consume(&store, &clock, identity.as_bytes(), policy, 1, &[0]).await;
        let refs = [PolicyRef { name: "p", policy }];
        // A time to live no longer than any of these leases can live,
        // so that the want is not scaled down.
        let ask = |want, held| LeaseAsk {
            want,
            ttl_us: second,
            held,
        };
        let take = [ask(50, Held::default())];
        let check = tollgate::Check::new(identity.as_bytes(), &refs, 1, Mode::Consume);
        let taken = store
            .lease(LeaseCall { check, asks: &take })
            .await
            .expect("redis");
        let lease = taken.leased[0];
        assert_eq!(lease.units, 6, "case {i}: {taken:?}");
        // Buckets are offered 5 as well: they take none.
        let held = Held {
            units: (*back).max(5),
            until: lease.until,
        };
        let give = [ask(0, held)];
        let check = tollgate::Check::new(identity.as_bytes(), &refs, 101, Mode::Consume);
        let given = store
            .lease(LeaseCall { check, asks: &give })
            .await
            .expect("redis");
        assert!(!given.decisions[0].allowed, "case {i}: {given:?}");
        assert_eq!(given.leased[0].returned, *back, "case {i}: {given:?}");
        let name = key_name(&store, identity.as_bytes(), policy);
        match value {
            Some(value) => {
                assert_eq!(server.cli(&["GET", &name]), *value, "case {i}: {policy:?}");
                assert_eq!(
                    server.cli(&["OBJECT", "ENCODING", &name]),
                    "int",
                    "case {i}"
                );
                assert_eq!(
                    server.cli(&["PEXPIRETIME", &name]),
                    expiry(*fresh_at),
                    "case {i}: {policy:?}"
                );
            }
            None => assert_eq!(server.cli(&["EXISTS", &name]), "0", "case {i}: {policy:?}"),
        }
    }
}

/// What the previous release's script decides for `policy` at `now`, as a
/// [`Decision`] (built the way the store builds one).
fn previous_release(
    server: &RedisServer,
    sha: &str,
    key: &str,
    policy: &Policy,
    cost: u64,
    now: u64,
) -> Result<Decision, String> {
    let args = [
        "EVALSHA".to_owned(),
        sha.to_owned(),
        "1".to_owned(),
        key.to_owned(),
        "1".to_owned(),
        cost.to_string(),
        now.to_string(),
        "1".to_owned(),
        policy.algorithm().name().to_owned(),
        policy.limit().to_string(),
        policy.period_us().to_string(),
        policy.capacity().to_string(),
        policy.scaled_unit().to_string(),
        policy.scaled_rate().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.cli(&args);
    let numbers: Vec<u64> = out
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| out.clone())?;
    let [allowed, remaining, reset, retry, delay] = numbers[..] else {
        return Err(out);
    };
    Ok(decision_from_parts(
        policy,
        cost,
        allowed == 1,
        remaining,
        reset,
        retry,
        delay,
    ))
}

/// Policies for the rolling-upgrade tests: each algorithm with a compact
/// form, under the policy that wrote a state and under a changed one.
fn upgrade_policies() -> Vec<(Policy, Policy)> {
    let hour = 3_600_000_000;
    [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
    ]
    .into_iter()
    .flat_map(|a| {
        [
            (policy(a, 5, 1_000_000), policy(a, 5, 1_000_000)),
            (policy(a, 100, hour), policy(a, 7, 60_000_000)),
            (policy(a, 6, 3_000), policy(a, 4, 2_000)),
        ]
    })
    .collect()
}

#[tokio::test]
async fn states_written_by_the_previous_release_are_read_as_it_read_them() {
    let server = RedisServer::start();
    let sha = server.cli(&["SCRIPT", "LOAD", PREVIOUS_RELEASE]);
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock.clone()).await;
    for (i, (before, after)) in upgrade_policies().iter().enumerate() {
        let memory = MemoryStore::with_clock(clock.clone());
        let identity = format!("upgrade-{i}");
        let key = key_name(&store, identity.as_bytes(), before);
        // Same algorithm: one key under both policies.
        assert_eq!(key, key_name(&store, identity.as_bytes(), after));
        let mut t = START_US + 400;
        // The previous release writes text states...
        for cost in [1, 2, 1] {
            clock.set_us(t);
            let refs = [PolicyRef {
                name: "p",
                policy: before,
            }];
            let expected = memory
                .apply(tollgate::Check::new(
                    identity.as_bytes(),
                    &refs,
                    cost,
                    Mode::Consume,
                ))
                .await
                .expect("memory");
            let old =
                previous_release(&server, &sha, &key, before, cost, t).expect("previous release");
            assert_eq!(expected[0], old, "case {i}: previous release at {t}");
            t += 700;
        }
        assert!(
            !server.cli(&["GET", &key]).starts_with('-'),
            "case {i}: text form"
        );
        // ...which this release reads, under the same and a changed policy.
        for (policy, cost) in [(before, 1), (after, 1), (before, 2), (after, 3)] {
            clock.set_us(t);
            let refs = [PolicyRef { name: "p", policy }];
            let check = tollgate::Check::new(identity.as_bytes(), &refs, cost, Mode::Consume);
            let expected = memory.apply(check).await.expect("memory");
            let check = tollgate::Check::new(identity.as_bytes(), &refs, cost, Mode::Consume);
            let actual = store.apply(check).await.expect("redis");
            assert_eq!(
                expected, actual,
                "case {i}: this release at {t} under {policy:?}"
            );
            t += 900;
        }
    }
}

#[tokio::test]
async fn the_previous_release_refuses_compact_states_and_charges_nothing() {
    let server = RedisServer::start();
    let sha = server.cli(&["SCRIPT", "LOAD", PREVIOUS_RELEASE]);
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock.clone()).await;
    for (i, (before, after)) in upgrade_policies().iter().enumerate() {
        let identity = format!("rollback-{i}");
        let key = key_name(&store, identity.as_bytes(), before);
        consume(&store, &clock, identity.as_bytes(), before, 1, &[1_000]).await;
        let value = server.cli(&["GET", &key]);
        if !value.starts_with('-') {
            // 3 ms windows starting off a whole millisecond: text, which
            // the previous release reads (the other test).
            assert_eq!(before.period_us(), 3_000, "case {i}: {value}");
            continue;
        }
        for policy in [before, after] {
            for cost in [1, 2] {
                let answer = previous_release(&server, &sha, &key, policy, cost, START_US + 2_000);
                let error =
                    answer.expect_err("the previous release must not decide on a compact state");
                assert!(
                    error.contains("attempt to perform arithmetic"),
                    "case {i}: {error}"
                );
                assert_eq!(server.cli(&["GET", &key]), value, "case {i}: state changed");
            }
        }
    }
}

/// A reservation's record (docs/REDIS.md, "Reservations"): its key is in
/// the identity's slot, its value holds the deadline, the estimate, until
/// when each policy's units may go back and the policy names, and once
/// settled what settling did; it expires at its deadline, which a settle
/// keeps; a denied reservation writes none; past the deadline a settle
/// finds nothing.
#[tokio::test]
async fn a_reservation_record_holds_its_step_and_expires_at_its_deadline() {
    use tollgate::{ReserveCall, SettleCall, Settled};
    let server = RedisServer::start();
    let clock = ManualClock::new(START_US);
    let store = common::standalone(&server.url(), clock.clone()).await;
    let second = 1_000_000;
    let window = policy(Algorithm::FixedWindow, 100, second);
    let bucket = policy(Algorithm::TokenBucket, 100, 3_600 * second);
    let refs = [
        PolicyRef {
            name: "api",
            policy: &window,
        },
        PolicyRef {
            name: "tok|x",
            policy: &bucket,
        },
    ];
    let identity = b"user:{1}";
    let deadline_us = 30 * second;
    let reserve = |nonce, estimate| ReserveCall {
        check: tollgate::Check::new(identity, &refs, estimate, Mode::Consume),
        nonce,
        deadline_us,
    };
    let settle = |nonce, actual| SettleCall {
        key: identity,
        policies: &refs,
        nonce,
        actual,
    };
    let record = String::from_utf8(store.reservation_key(identity, 0xabc)).expect("ascii");
    assert_eq!(
        record,
        format!(
            "{}:{{user:%7B1%7D}}:%r:00000000000000000000000000000abc",
            store.prefix()
        )
    );

    let decisions = store.reserve(reserve(0xabc, 10)).await.expect("reserve");
    assert!(decisions.iter().all(|d| d.allowed), "{decisions:?}");
    // The window's units go back until it ends; a bucket's never (0).
    let deadline = START_US + deadline_us;
    let open = format!("{deadline} 10 {} 0", START_US + second);
    assert_eq!(
        server.cli(&["GET", &record]),
        format!("{open}|3:api5:tok|x")
    );
    // Expiries are 2^52 ms ahead under the test clock (prelude.lua).
    let expiry = ((1u64 << 52) + deadline.div_ceil(1000)).to_string();
    assert_eq!(server.cli(&["PEXPIRETIME", &record]), expiry);

    clock.set_us(START_US + 1_000);
    let answer = store.settle(settle(0xabc, 4)).await.expect("settle");
    let answer = answer.expect("found");
    let back = Settled {
        returned: 6,
        ..Settled::default()
    };
    assert_eq!(
        (answer.estimate, answer.actual, answer.replayed),
        (10, 4, false)
    );
    assert_eq!(&answer.settled[..], &[back, Settled::default()]);
    assert_eq!(answer.decisions[0].remaining, 96, "{answer:?}");
    assert_eq!(answer.decisions[1].remaining, 90, "{answer:?}");
    assert_eq!(
        server.cli(&["GET", &record]),
        format!("{open};4 6 0 0 0 0 0|3:api5:tok|x")
    );
    // The settle kept the expiry.
    assert_eq!(server.cli(&["PEXPIRETIME", &record]), expiry);
    // A retry, with any actual cost, replays.
    let again = store.settle(settle(0xabc, 50)).await.expect("settle");
    let again = again.expect("found");
    assert!(again.replayed);
    assert_eq!((again.actual, &again.settled), (4, &answer.settled));
    assert_eq!(again.decisions, answer.decisions);

    // A denied reservation writes no record.
    let denied = store.reserve(reserve(0xdef, 95)).await.expect("reserve");
    assert!(!denied[1].allowed, "{denied:?}");
    let refused = String::from_utf8(store.reservation_key(identity, 0xdef)).expect("ascii");
    assert_eq!(server.cli(&["EXISTS", &refused]), "0");

    // At the deadline the record is gone: a settle finds nothing and
    // charges nothing.
    clock.set_us(deadline);
    assert_eq!(store.settle(settle(0xabc, 0)).await.expect("settle"), None);
    let reopened = store.reserve(reserve(0x123, 1)).await.expect("reserve");
    clock.set_us(deadline + 1_000);
    assert_eq!(reopened[1].remaining, 89, "{reopened:?}");
    assert_eq!(store.settle(settle(0xabc, 0)).await.expect("settle"), None);
    assert_eq!(server.cli(&["EXISTS", &record]), "0");
}
