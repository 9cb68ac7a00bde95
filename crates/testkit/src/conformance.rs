//! The store conformance suite: the contract of [`Store`], checked through a
//! [`Limiter`] on a timeline driven by a [`ManualClock`].
//!
//! A store under test is built by a factory that receives the clock: the
//! memory store reads it directly, the Redis store sends its time on the
//! test-only path. Each case gets a fresh store and clock, and panics with
//! the case's name and what differed.
//!
//! [`conformance_suite!`](crate::conformance_suite) makes one test per
//! case for a store; each case is also a public function, to call alone:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! tollgate_testkit::conformance::peek_consumes_nothing(&|clock| async move {
//!     tollgate::MemoryStore::with_clock(clock)
//! })
//! .await;
//! # });
//! ```

use std::future::Future;
use std::time::Duration;

use tollgate::{Algorithm, Clock, Decision, Limiter, ManualClock, Policy, Store};

/// Where every case's clock starts: a realistic Unix time in microseconds,
/// so stores that align windows to Unix time see ordinary values.
pub const START_US: u64 = 1_790_000_000_000_000;

fn policy(text: &str) -> Policy {
    text.parse()
        .unwrap_or_else(|e| panic!("test policy `{text}`: {e}"))
}

/// Every algorithm with a limit of 4 per second (bucket algorithms: burst 4).
pub fn four_per_second() -> Vec<(String, Policy)> {
    Algorithm::ALL
        .into_iter()
        .map(|a| (a.name().to_owned(), policy(&format!("{a} 4/1s"))))
        .collect()
}

/// Builds a limiter with every algorithm's 4/s policy plus `extra`.
async fn limiter<S, F, Fut>(make: &F, extra: &[(&str, &str)]) -> (Limiter<S>, ManualClock)
where
    S: Store,
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let clock = ManualClock::new(START_US);
    let mut builder = Limiter::builder(make(clock.clone()).await).max_key_len(16 * 1024);
    for (name, p) in four_per_second() {
        builder = builder.policy(name, p);
    }
    for (name, text) in extra {
        builder = builder.policy(*name, policy(text));
    }
    (builder.build(), clock)
}

/// `limiter.check(policy, key, cost)`, which the store must answer.
async fn check<S: Store>(
    limiter: &Limiter<S>,
    policy: &str,
    key: impl AsRef<[u8]>,
    cost: u64,
) -> Decision {
    limiter.check(policy, key, cost).await.expect("store works")
}

/// `limiter.peek(policy, key, cost)`, which the store must answer.
async fn peek<S: Store>(
    limiter: &Limiter<S>,
    policy: &str,
    key: impl AsRef<[u8]>,
    cost: u64,
) -> Decision {
    limiter.peek(policy, key, cost).await.expect("store works")
}

/// Defines one `#[tokio::test]` per conformance case for a store, so that
/// each case passes or fails on its own (and runs in parallel with the
/// others). `$make` is an expression evaluated once per test that yields the
/// factory `Fn(ManualClock) -> impl Future<Output = S>`; whatever it
/// captures (a Redis server, say) lives as long as the test.
///
/// ```text
/// mod memory {
///     tollgate_testkit::conformance_suite!(|clock: tollgate::ManualClock| async move {
///         tollgate::MemoryStore::with_clock(clock)
///     });
/// }
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            counts_down_to_the_limit_then_denies,
            retry_after_is_honest_through_the_store,
            peek_consumes_nothing,
            denied_requests_charge_nothing,
            costs_above_capacity_never_pass,
            keys_are_independent_whatever_their_bytes,
            policies_are_independent_for_one_key,
            several_policies_are_all_or_nothing,
            reset_returns_a_key_to_fresh,
            state_is_fresh_after_reset_after,
            leaky_bucket_reports_its_delay,
            a_changed_policy_carries_the_state_over,
            concurrent_checks_admit_exactly_the_limit,
            a_policy_named_twice_is_refused_and_charges_nothing,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let make = $make;
                $crate::conformance::$case(&make).await;
            }
        )*
    };
}

/// Four single-unit checks pass with remaining 3, 2, 1, 0; the fifth fails.
pub async fn counts_down_to_the_limit_then_denies<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        let remaining: Vec<u64> = futures_remaining(&limiter, a.name(), b"counts", 4).await;
        assert_eq!(remaining, [3, 2, 1, 0], "{a}: remaining after each check");
        let d = check(&limiter, a.name(), "counts", 1).await;
        assert!(!d.allowed, "{a}: fifth check allowed");
        assert_eq!((d.limit, d.remaining), (4, 0), "{a}");
        assert!(
            d.retry_after.is_some_and(|r| r > Duration::ZERO),
            "{a}: {d:?}"
        );
    }
}

async fn futures_remaining<S: Store>(
    limiter: &Limiter<S>,
    name: &str,
    key: &[u8],
    n: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = check(limiter, name, key, 1).await;
        assert!(d.allowed, "{name}: {d:?}");
        out.push(d.remaining);
    }
    out
}

/// After a denial, the same request fails 1 µs before `retry_after` and
/// passes exactly at it.
pub async fn retry_after_is_honest_through_the_store<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    for a in Algorithm::ALL {
        let (limiter, clock) = limiter(make, &[]).await;
        clock.advance_us(123_457);
        assert!(check(&limiter, a.name(), "retry", 3).await.allowed);
        clock.advance_us(10_001);
        let d = check(&limiter, a.name(), "retry", 2).await;
        assert!(!d.allowed, "{a}: {d:?}");
        let wait = d.retry_after.expect("cost 2 fits in 4 eventually");
        let wait = u64::try_from(wait.as_micros()).expect("small");
        clock.advance_us(wait - 1);
        let early = check(&limiter, a.name(), "retry", 2).await;
        assert!(
            !early.allowed,
            "{a}: allowed 1 µs before retry_after ({wait} µs)"
        );
        clock.advance_us(1);
        let on_time = check(&limiter, a.name(), "retry", 2).await;
        assert!(
            on_time.allowed,
            "{a}: denied at retry_after ({wait} µs): {on_time:?}"
        );
    }
}

/// Peeking any number of times changes nothing.
pub async fn peek_consumes_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        assert!(check(&limiter, a.name(), "peek", 1).await.allowed);
        for _ in 0..10 {
            let d = peek(&limiter, a.name(), "peek", 3).await;
            assert_eq!((d.allowed, d.remaining), (true, 3), "{a}: peek {d:?}");
        }
        let d = check(&limiter, a.name(), "peek", 3).await;
        assert_eq!(
            (d.allowed, d.remaining),
            (true, 0),
            "{a}: after peeks {d:?}"
        );
    }
}

/// A cost above what remains is denied and leaves the remainder intact.
pub async fn denied_requests_charge_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        assert!(check(&limiter, a.name(), "charge", 3).await.allowed);
        for _ in 0..5 {
            let d = check(&limiter, a.name(), "charge", 2).await;
            assert_eq!((d.allowed, d.remaining), (false, 1), "{a}: {d:?}");
        }
        let d = check(&limiter, a.name(), "charge", 1).await;
        assert_eq!(
            (d.allowed, d.remaining),
            (true, 0),
            "{a}: the last unit is still there"
        );
    }
}

/// A cost above the capacity is denied with no `retry_after`, and charges nothing.
pub async fn costs_above_capacity_never_pass<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        let d = check(&limiter, a.name(), "huge", 5).await;
        assert_eq!(
            (d.allowed, d.retry_after, d.remaining),
            (false, None, 4),
            "{a}: {d:?}"
        );
        let d = check(&limiter, a.name(), "huge", u64::from(u32::MAX)).await;
        assert_eq!((d.allowed, d.retry_after), (false, None), "{a}: {d:?}");
    }
}

/// Keys that look alike, contain separators, braces, spaces, bytes that are
/// not UTF-8, or are 10 KB long, each have their own state.
pub async fn keys_are_independent_whatever_their_bytes<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let long = vec![b'k'; 10 * 1024];
    let keys: Vec<&[u8]> = vec![
        b"a",
        b"a:b",
        b"a:",
        b":a",
        b"{a}",
        b"{a",
        b"a}",
        b"}:{",
        b"a}:{fixed_window",
        b"with space",
        b"",
        b"\xff\xfe\x00\x01",
        b"\x00",
        &long,
    ];
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        for key in &keys {
            let d = check(&limiter, a.name(), key, 3).await;
            assert_eq!(
                (d.allowed, d.remaining),
                (true, 1),
                "{a}: key {:?} shares state",
                String::from_utf8_lossy(&key[..key.len().min(20)])
            );
        }
    }
}

/// Two policy names on one key keep separate state.
pub async fn policies_are_independent_for_one_key<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[("twin", "fixed_window 4/1s")]).await;
    assert!(check(&limiter, "fixed_window", "k", 4).await.allowed);
    let d = check(&limiter, "twin", "k", 4).await;
    assert!(d.allowed, "twin shares state with fixed_window: {d:?}");
}

/// With several policies, a denial by any of them charges none.
pub async fn several_policies_are_all_or_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[("wide", "sliding_log 10/1h")]).await;
    for a in Algorithm::ALL {
        let names = [a.name(), "wide"];
        let key = format!("multi-{a}");
        let all = limiter
            .check_all(&names, &key, 3)
            .await
            .expect("store works");
        assert!(all.allowed, "{a}: {all:?}");
        assert_eq!(
            (all.decisions[0].remaining, all.decisions[1].remaining),
            (1, 7),
            "{a}"
        );
        // The 4/s policy denies cost 2: the hourly one must not be charged.
        let all = limiter
            .check_all(&names, &key, 2)
            .await
            .expect("store works");
        assert!(
            !all.allowed && !all.decisions[0].allowed && all.decisions[1].allowed,
            "{a}: {all:?}"
        );
        let wide = peek(&limiter, "wide", &key, 1).await;
        assert_eq!(
            wide.remaining, 7,
            "{a}: a denied multi-check charged the other policy"
        );
        assert!(all.retry_after().is_some(), "{a}");
    }
}

/// Reset returns one policy's state for one key to fresh, and only that.
pub async fn reset_returns_a_key_to_fresh<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    for a in Algorithm::ALL {
        assert!(check(&limiter, a.name(), "reset", 4).await.allowed);
        assert!(check(&limiter, a.name(), "other", 4).await.allowed);
        limiter.reset(a.name(), "reset").await.expect("store works");
        let d = check(&limiter, a.name(), "reset", 4).await;
        assert!(d.allowed, "{a}: not fresh after reset: {d:?}");
        let d = check(&limiter, a.name(), "other", 1).await;
        assert!(!d.allowed, "{a}: reset leaked to another key");
    }
    limiter
        .reset("gcra", "never-seen")
        .await
        .expect("resetting a fresh key is fine");
}

/// Once `reset_after` has passed, the key decides exactly like a new one.
pub async fn state_is_fresh_after_reset_after<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    for a in Algorithm::ALL {
        let (limiter, clock) = limiter(make, &[]).await;
        clock.advance_us(777_777);
        let d = check(&limiter, a.name(), "aging", 4).await;
        assert!(d.allowed && d.reset_after > Duration::ZERO, "{a}: {d:?}");
        clock.advance(d.reset_after - Duration::from_micros(1));
        let early = peek(&limiter, a.name(), "aging", 4).await;
        assert!(!early.allowed, "{a}: fresh 1 µs before reset_after");
        clock.advance_us(1);
        let at = peek(&limiter, a.name(), "aging", 4).await;
        let fresh = peek(&limiter, a.name(), "brand-new", 4).await;
        assert_eq!(at, fresh, "{a}: not fresh at reset_after");
    }
}

/// The leaky bucket accepts while the queue has room, with growing delays.
pub async fn leaky_bucket_reports_its_delay<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (limiter, _clock) = limiter(make, &[]).await;
    let mut delays = Vec::new();
    for _ in 0..4 {
        let d = check(&limiter, "leaky_bucket", "queue", 1).await;
        assert!(d.allowed);
        delays.push(d.delay.as_millis());
    }
    assert_eq!(delays, [0, 250, 500, 750]);
    assert!(!check(&limiter, "leaky_bucket", "queue", 1).await.allowed);
}

/// The policy changes a live key may see (reload, rebuilt limiter, override),
/// from `<algorithm> 4/1s` (burst 4): `(what, new policy)`.
pub fn policy_changes(a: Algorithm) -> Vec<(&'static str, Policy)> {
    let mut changes = vec![
        ("limit raised", policy(&format!("{a} 8/1s"))),
        ("limit lowered", policy(&format!("{a} 2/1s"))),
        ("period lengthened", policy(&format!("{a} 4/1m"))),
        ("period shortened", policy(&format!("{a} 4/100ms"))),
    ];
    if a.has_burst() {
        changes.push(("burst raised", policy(&format!("{a} 4/1s burst 8"))));
        changes.push(("burst lowered", policy(&format!("{a} 4/1s burst 2"))));
    }
    changes
}

/// A policy changed under a live key carries the key's state over, and the
/// key lives as long as the policy in force needs: for every algorithm and
/// every change in [`policy_changes`], the store decides exactly as the
/// algorithm does on one state that never expires — through a denial under
/// the new policy, past the instant the old policy's state would have
/// expired, and back to the old policy.
pub async fn a_changed_policy_carries_the_state_over<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::algorithm::{State, decide};
    use tollgate::{Mode, PolicyRef};
    for a in Algorithm::ALL {
        let old = policy(&format!("{a} 4/1s"));
        for (change, new) in policy_changes(a) {
            let clock = ManualClock::new(START_US);
            let store = make(clock.clone()).await;
            let mut model = State::fresh(&old, START_US);
            // (advance µs, policy, cost, mode): 4 units under the old policy,
            // then the new one until it denies, then time passes (the old
            // state is fresh after 1 s), and the old policy returns for a
            // charge (a change after a state expired under the policy that
            // wrote it finds it fresh: no model of that here).
            let mut timeline: Vec<(u64, &Policy, u64, Mode)> = vec![(0, &old, 4, Mode::Consume)];
            timeline.extend(std::iter::repeat_n((0, &new, 1, Mode::Consume), 9));
            timeline.extend([
                (1_200_000, &new, 1, Mode::Peek),
                (0, &new, 1, Mode::Consume),
                (30_000_000, &new, 2, Mode::Consume),
                (0, &old, 1, Mode::Consume),
                (100_000, &new, 4, Mode::Peek),
                (0, &new, 1, Mode::Consume),
                (45_000_000, &new, 3, Mode::Consume),
            ]);
            for (i, &(step, p, cost, mode)) in timeline.iter().enumerate() {
                clock.advance_us(step);
                let now = clock.now_us();
                let expected = decide(p, &mut model, now, cost, mode);
                let refs = [PolicyRef {
                    name: "changing",
                    policy: p,
                }];
                let actual = store
                    .apply(tollgate::Check::new(change.as_bytes(), &refs, cost, mode))
                    .await
                    .expect("store works")[0];
                assert_eq!(actual, expected, "{a}, {change} ({p}), step {i}");
            }
        }
    }
}

/// 64 concurrent tasks, 20 attempts each, on one key of limit 4 (and 100):
/// exactly the limit is admitted.
pub async fn concurrent_checks_admit_exactly_the_limit<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let extra: Vec<(String, String)> = Algorithm::ALL
        .into_iter()
        .filter(|a| a.is_exact())
        .map(|a| (format!("{a}-100"), format!("{a} 100/1h")))
        .collect();
    let extra_refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let (limiter, _clock) = limiter(make, &extra_refs).await;
    let mut names: Vec<(String, u64)> = Algorithm::ALL
        .iter()
        .map(|a| (a.name().to_owned(), 4))
        .collect();
    names.extend(extra.iter().map(|(n, _)| (n.clone(), 100)));
    for (name, limit) in names {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let limiter = limiter.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut admitted = 0u64;
                    for _ in 0..20 {
                        if check(&limiter, &name, "hot", 1).await.allowed {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task does not panic");
        }
        assert_eq!(
            total, limit,
            "{name}: 64 tasks admitted {total}, limit {limit}"
        );
    }
}

/// A multi-policy check that names one policy twice (`check_all`,
/// `peek_all` or `apply`) is [`tollgate::Error::DuplicatePolicy`], and
/// charges nothing: not with room for both charges, not with room for one.
pub async fn a_policy_named_twice_is_refused_and_charges_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::{Error, Mode, PolicyRef};
    let (limiter, _clock) = limiter(make, &[("other", "fixed_window 4/1h")]).await;
    for a in Algorithm::ALL {
        let name = a.name();
        let key = format!("twice-{a}");
        let refuse_every_way = || async {
            let policy = *limiter.policy(name).expect("registered");
            let refs = [
                PolicyRef {
                    name,
                    policy: &policy,
                },
                PolicyRef {
                    name,
                    policy: &policy,
                },
            ];
            let attempts = [
                limiter.check_all(&[name, name], &key, 1).await,
                limiter.check_all(&[name, "other", name], &key, 1).await,
                limiter.peek_all(&[name, name], &key, 1).await,
                limiter.apply(&refs, &key, 1, Mode::Consume).await,
            ];
            for (i, attempt) in attempts.into_iter().enumerate() {
                match attempt {
                    Err(Error::DuplicatePolicy(n)) if n == name => {}
                    other => panic!("{a}: duplicate check #{i} was not refused: {other:?}"),
                }
            }
        };
        // Fresh (room for both charges), then with one unit left.
        refuse_every_way().await;
        for i in 0..3 {
            let d = check(&limiter, name, &key, 1).await;
            assert!(
                d.allowed,
                "{a}: unit {i} of 4 denied: a refused check charged"
            );
        }
        refuse_every_way().await;
        let last = check(&limiter, name, &key, 1).await;
        assert!(last.allowed && last.remaining == 0, "{a}: {last:?}");
        let over = check(&limiter, name, &key, 1).await;
        assert!(!over.allowed, "{a}: admitted a fifth unit: {over:?}");
    }
    let other = limiter.check("other", "twice-gcra", 4).await;
    let other = other.expect("store works");
    assert!(
        other.allowed && other.remaining == 0,
        "a refused check charged the other policy: {other:?}"
    );
}
