//! The store conformance suite: the contract of [`Store`], checked through a
//! [`Limiter`] on a timeline driven by a [`ManualClock`], and
//! [`Store::lease`]'s on the store itself (the lease cases: charged at once,
//! sized from what remains, full buckets, give-backs in time and too late,
//! denials, several policies, concurrency), and [`Store::reserve`] and
//! [`Store::settle`]'s (the reservation cases: charged at once, given back
//! or overdrawn, replayed, named exactly, deadlines, several policies,
//! concurrency).
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

mod reservations;
pub use reservations::*;

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
///
/// `conformance_suite!(@without_leases $make)` makes every case but the
/// lease cases, for a store that decides lease calls as plain checks
/// ([`Store::lease`]'s default); `conformance_suite!(@leases $make)` only
/// the lease cases. `conformance_suite!(@reservations $make)` makes the
/// reservation cases ([`Store::reserve`] and [`Store::settle`]), for a
/// store whose [`Store::reserves`] is true: they fail on one that keeps no
/// reservations.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@without_leases $make);
        $crate::conformance_suite!(@leases $make);
    };
    (@without_leases $make:expr) => {
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
    (@leases $make:expr) => {
        $crate::conformance_suite!(@cases $make;
            a_lease_is_charged_and_sized_from_what_remains,
            a_full_bucket_leases_nothing,
            units_given_back_in_time_restore_what_remains,
            units_given_back_too_late_change_nothing,
            a_denied_lease_call_leases_and_charges_nothing,
            one_policy_denying_leases_nothing_anywhere,
            concurrent_lease_calls_grant_exactly_what_they_charge,
        );
    };
    (@reservations $make:expr) => {
        $crate::conformance_suite!(@cases $make;
            a_reservation_is_charged_and_a_denied_one_records_nothing,
            settling_below_the_estimate_gives_back_to_windows,
            a_window_gives_back_only_while_the_estimate_s_window_lasts,
            settling_above_the_estimate_overdraws_up_to_max_overdraft,
            an_overdraft_counts_what_the_policy_already_owes,
            a_settle_uses_the_numbers_in_force_now,
            a_replayed_settle_changes_nothing,
            a_settle_must_name_the_reservation_exactly,
            several_policies_reserve_all_or_nothing,
            the_limiter_reserves_settles_and_cancels,
            concurrent_reservations_hold_the_budget,
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

/// The algorithms that lease (`sliding_log` and `leaky_bucket` refuse).
pub fn leasing_algorithms() -> Vec<Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| policy(&format!("{a} 1/1s")).with_lease(lease(2)).is_ok())
        .collect()
}

/// Leases of at most `max` units, living at most [`LEASE_TTL_US`].
fn lease(max: u64) -> tollgate::Lease {
    tollgate::Lease::new(max, Duration::from_micros(LEASE_TTL_US)).expect("a valid lease")
}

/// The longest life of the lease cases' leases: 10 s.
pub const LEASE_TTL_US: u64 = 10_000_000;

/// `<algorithm> <limit>/<period>` (a bucket's burst: the limit), leasing
/// up to 50 units.
fn leasing(a: Algorithm, rate: &str) -> Policy {
    let text = if a.has_burst() {
        let limit = rate.split('/').next().unwrap_or(rate);
        format!("{a} {rate} burst {limit}")
    } else {
        format!("{a} {rate}")
    };
    policy(&text).with_lease(lease(50)).expect("leases")
}

/// An ask for the policy's whole lease (`want` units), giving back `held`.
fn ask(want: u64, held: tollgate::Held) -> tollgate::LeaseAsk {
    tollgate::LeaseAsk {
        want,
        ttl_us: LEASE_TTL_US,
        held,
    }
}

/// A lease call of `cost` on `policies` for `key`, which the store must
/// answer with one decision and one lease per policy.
async fn lease_call<S: Store>(
    store: &S,
    key: &str,
    policies: &[tollgate::PolicyRef<'_>],
    cost: u64,
    asks: &[tollgate::LeaseAsk],
) -> tollgate::LeaseAnswer {
    let check = tollgate::Check::new(key.as_bytes(), policies, cost, tollgate::Mode::Consume);
    let answer = store
        .lease(tollgate::LeaseCall { check, asks })
        .await
        .expect("store works");
    assert_eq!(answer.decisions.len(), policies.len(), "{key}: {answer:?}");
    assert_eq!(answer.leased.len(), policies.len(), "{key}: {answer:?}");
    answer
}

/// `cost` of `policy` for `key` on the store itself, in `mode`.
async fn store_check<S: Store>(
    store: &S,
    key: &str,
    policy: tollgate::PolicyRef<'_>,
    cost: u64,
    mode: tollgate::Mode,
) -> Decision {
    let refs = [policy];
    store
        .apply(tollgate::Check::new(key.as_bytes(), &refs, cost, mode))
        .await
        .expect("store works")[0]
}

/// What remains of `policy` for `key`: a peek of one unit.
async fn store_remaining<S: Store>(store: &S, key: &str, policy: tollgate::PolicyRef<'_>) -> u64 {
    store_check(store, key, policy, 1, tollgate::Mode::Peek)
        .await
        .remaining
}

/// A store on a clock at [`START_US`].
async fn store_at_start<S, F, Fut>(make: &F) -> (S, ManualClock)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let clock = ManualClock::new(START_US);
    (make(clock.clone()).await, clock)
}

/// A lease is charged in the store when it is taken (the next check sees
/// less remaining), and holds what it wants scaled to how long it can live
/// (`lease_want`), but at most a 16th of what remains after the check, at
/// least one while anything remains: leases shrink near the limit, the
/// last units go one at a time, and check costs plus leased units add up
/// to exactly the limit. It lives until the end of its window or the
/// instant the bucket would be full again, at most its time to live.
pub async fn a_lease_is_charged_and_sized_from_what_remains<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::PolicyRef;
    use tollgate::algorithm::{lease_size, lease_want};
    let (store, _clock) = store_at_start(make).await;
    for a in leasing_algorithms() {
        for rate in ["160/1h", "160/1s"] {
            let p = leasing(a, rate);
            let refs = [PolicyRef {
                name: "leasing",
                policy: &p,
            }];
            let key = format!("sized-{a}-{rate}");
            // A check first: a full bucket would lease nothing.
            let first = store_check(&store, &key, refs[0], 1, tollgate::Mode::Consume).await;
            assert_eq!((first.allowed, first.remaining), (true, 159), "{a} {rate}");
            let (mut remaining, mut spent) = (159, 1);
            for want in [2, 50] {
                loop {
                    let answer =
                        lease_call(&store, &key, &refs, 1, &[ask(want, Default::default())]).await;
                    let (d, l) = (answer.decisions[0], answer.leased[0]);
                    if remaining == 0 {
                        assert!(!d.allowed, "{a} {rate}: allowed past the limit: {answer:?}");
                        assert_eq!(l, tollgate::Leased::default(), "{a} {rate}");
                        break;
                    }
                    // The clock stands at the window's start: a window's
                    // lease lives a period; a bucket's until the units
                    // spent so far would have come back (exact here:
                    // whole microseconds per unit).
                    let lives = if a.has_burst() {
                        (160 - remaining) * p.period_us() / 160
                    } else {
                        p.period_us()
                    }
                    .min(LEASE_TTL_US);
                    let after_check = remaining - 1;
                    let expected = lease_size(lease_want(want, lives, LEASE_TTL_US), after_check);
                    assert!(d.allowed, "{a} {rate}: {answer:?}");
                    assert_eq!(
                        l.units, expected,
                        "{a} {rate}: {remaining} remained, want {want}"
                    );
                    assert_eq!(l.returned, 0, "{a} {rate}");
                    assert_eq!(d.remaining, after_check - l.units, "{a} {rate}: {answer:?}");
                    if l.units > 0 {
                        assert_eq!(l.valid_us, lives, "{a} {rate}: {l:?}");
                        assert_eq!(l.until, START_US + l.valid_us, "{a} {rate}: {l:?}");
                    }
                    remaining = d.remaining;
                    spent += 1 + l.units;
                    let seen = store_remaining(&store, &key, refs[0]).await;
                    assert_eq!(seen, remaining, "{a} {rate}: the lease was not charged");
                    if want == 2 && remaining < 100 {
                        break;
                    }
                }
            }
            assert_eq!(spent, 160, "{a} {rate}: checks and leases took {spent}");
        }
    }
}

/// A bucket that is full (fresh, or refilled) leases nothing: no refill
/// can be lost to its cap while a lease is out only if the lease ends
/// before the bucket would be full again, which it already is. The check
/// itself is charged.
pub async fn a_full_bucket_leases_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::PolicyRef;
    let (store, clock) = store_at_start(make).await;
    for a in leasing_algorithms() {
        let p = leasing(a, "160/1h");
        let refs = [PolicyRef {
            name: "leasing",
            policy: &p,
        }];
        let key = format!("full-{a}");
        let answer = lease_call(&store, &key, &refs, 1, &[ask(50, Default::default())]).await;
        assert!(answer.decisions[0].allowed, "{a}: {answer:?}");
        if a.has_burst() {
            assert_eq!(answer.leased[0], tollgate::Leased::default(), "{a}");
            assert_eq!(answer.decisions[0].remaining, 159, "{a}: {answer:?}");
            // Refilled to full: nothing again.
            clock.advance_us(3_600_000_000);
            let again = lease_call(&store, &key, &refs, 1, &[ask(50, Default::default())]).await;
            assert_eq!(again.leased[0], tollgate::Leased::default(), "{a}");
            assert_eq!(again.decisions[0].remaining, 159, "{a}: {again:?}");
        } else {
            // A window is never full: it leases from its first check.
            assert_eq!(answer.leased[0].units, 9, "{a}: {answer:?}");
        }
    }
}

/// Units of a lease given back to a window while it is valid restore what
/// remains exactly, as if they had never been charged, and are counted as
/// returned. A bucket takes none back (later leases count on them staying
/// gone: see `tollgate::algorithm::give_back`).
pub async fn units_given_back_in_time_restore_what_remains<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::{Held, PolicyRef};
    let (store, clock) = store_at_start(make).await;
    for a in leasing_algorithms() {
        let p = leasing(a, "160/1h");
        let refs = [PolicyRef {
            name: "leasing",
            policy: &p,
        }];
        let key = format!("given-{a}");
        store_check(&store, &key, refs[0], 1, tollgate::Mode::Consume).await;
        let taken = lease_call(&store, &key, &refs, 1, &[ask(50, Default::default())]).await;
        let lease = taken.leased[0];
        assert_eq!((lease.units, taken.decisions[0].remaining), (9, 149), "{a}");
        let taken_back = |n: u64| if a.has_burst() { 0 } else { n };
        // At once: 4 of the 9 back, and the check's unit charged.
        let held = Held {
            units: 4,
            until: lease.until,
        };
        let back = lease_call(&store, &key, &refs, 1, &[ask(0, held)]).await;
        assert_eq!(back.leased[0].returned, taken_back(4), "{a}: {back:?}");
        assert_eq!(back.leased[0].units, 0, "{a}: nothing wanted: {back:?}");
        let now = 148 + taken_back(4);
        assert_eq!(back.decisions[0].remaining, now, "{a}: {back:?}");
        assert_eq!(store_remaining(&store, &key, refs[0]).await, now, "{a}");
        // Later, still within the lease: 3 more back.
        clock.advance_us(lease.valid_us / 2);
        let before = store_remaining(&store, &key, refs[0]).await;
        let held = Held {
            units: 3,
            until: lease.until,
        };
        let back = lease_call(&store, &key, &refs, 1, &[ask(0, held)]).await;
        assert_eq!(back.leased[0].returned, taken_back(3), "{a}: {back:?}");
        let now = before - 1 + taken_back(3);
        assert_eq!(back.decisions[0].remaining, now, "{a}: {back:?}");
        assert_eq!(store_remaining(&store, &key, refs[0]).await, now, "{a}");
    }
}

/// Units given back once their lease is over (at its `until` or later)
/// change nothing, and none is counted as returned: the window may have
/// moved, the bucket may have refilled past them.
pub async fn units_given_back_too_late_change_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::{Held, PolicyRef};
    for a in leasing_algorithms() {
        // Ended by the time to live, and by the window or the bucket.
        for rate in ["160/1h", "160/1s"] {
            let (store, clock) = store_at_start(make).await;
            let p = leasing(a, rate);
            let refs = [PolicyRef {
                name: "leasing",
                policy: &p,
            }];
            let key = format!("late-{a}-{rate}");
            // Drained enough that a bucket's lease lives long enough to
            // hold units (a want is scaled to a lease's life).
            store_check(&store, &key, refs[0], 100, tollgate::Mode::Consume).await;
            let taken = lease_call(&store, &key, &refs, 1, &[ask(50, Default::default())]).await;
            let lease = taken.leased[0];
            assert!(lease.units > 0, "{a} {rate}: {taken:?}");
            clock.advance_us(lease.valid_us);
            let before = store_remaining(&store, &key, refs[0]).await;
            let held = Held {
                units: lease.units,
                until: lease.until,
            };
            let back = lease_call(&store, &key, &refs, 1, &[ask(0, held)]).await;
            assert_eq!(back.leased[0].returned, 0, "{a} {rate}: {back:?}");
            assert_eq!(
                back.decisions[0].remaining,
                before - 1,
                "{a} {rate}: {back:?}"
            );
        }
    }
}

/// A lease call whose check is denied leases nothing and charges nothing;
/// one allowed with nothing left after it leases nothing either.
pub async fn a_denied_lease_call_leases_and_charges_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::PolicyRef;
    let (store, _clock) = store_at_start(make).await;
    for a in leasing_algorithms() {
        let p = leasing(a, "160/1h");
        let refs = [PolicyRef {
            name: "leasing",
            policy: &p,
        }];
        let key = format!("denied-{a}");
        let d = store_check(&store, &key, refs[0], 158, tollgate::Mode::Consume).await;
        assert_eq!((d.allowed, d.remaining), (true, 2), "{a}");
        let denied = lease_call(&store, &key, &refs, 3, &[ask(50, Default::default())]).await;
        assert!(!denied.decisions[0].allowed, "{a}: {denied:?}");
        assert_eq!(denied.leased[0], tollgate::Leased::default(), "{a}");
        assert_eq!(store_remaining(&store, &key, refs[0]).await, 2, "{a}");
        let last = lease_call(&store, &key, &refs, 2, &[ask(50, Default::default())]).await;
        assert!(last.decisions[0].allowed, "{a}: {last:?}");
        assert_eq!(last.decisions[0].remaining, 0, "{a}: {last:?}");
        assert_eq!(last.leased[0].units, 0, "{a}: nothing remained: {last:?}");
    }
}

/// With several policies, a lease call denied by one of them leases
/// nothing and charges nothing on any; allowed by all, each policy takes
/// its own lease, sized from what it has left.
pub async fn one_policy_denying_leases_nothing_anywhere<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use tollgate::PolicyRef;
    let (store, _clock) = store_at_start(make).await;
    let narrow = policy("fixed_window 4/1h")
        .with_lease(lease(50))
        .expect("leases");
    for a in leasing_algorithms() {
        let wide = leasing(a, "160/1h");
        let refs = [
            PolicyRef {
                name: "wide",
                policy: &wide,
            },
            PolicyRef {
                name: "narrow",
                policy: &narrow,
            },
        ];
        let asks = [ask(50, Default::default()), ask(50, Default::default())];
        // Both allow: the wide policy leases 9 of the 158 left, the narrow
        // one its last but one unit (a 16th of 2, at least one).
        let key = format!("multi-{a}");
        store_check(&store, &key, refs[0], 1, tollgate::Mode::Consume).await;
        store_check(&store, &key, refs[1], 1, tollgate::Mode::Consume).await;
        let both = lease_call(&store, &key, &refs, 1, &asks).await;
        assert!(both.decisions.iter().all(|d| d.allowed), "{a}: {both:?}");
        assert_eq!(
            (both.leased[0].units, both.decisions[0].remaining),
            (9, 149),
            "{a}: {both:?}"
        );
        assert_eq!(
            (both.leased[1].units, both.decisions[1].remaining),
            (1, 1),
            "{a}: {both:?}"
        );
        // The narrow policy denies a cost of 2: nothing anywhere.
        let denied = lease_call(&store, &key, &refs, 2, &asks).await;
        assert!(
            denied.decisions[0].allowed && !denied.decisions[1].allowed,
            "{a}: {denied:?}"
        );
        assert!(
            denied
                .leased
                .iter()
                .all(|l| *l == tollgate::Leased::default()),
            "{a}: {denied:?}"
        );
        assert_eq!(store_remaining(&store, &key, refs[0]).await, 149, "{a}");
        assert_eq!(store_remaining(&store, &key, refs[1]).await, 1, "{a}");
    }
}

/// 32 concurrent tasks on one key, each making lease calls and giving back
/// part of its previous lease with the next: every unit the store grants
/// (checks allowed, units leased, less units taken back) is charged in it,
/// exactly, and together they never pass the limit. Time stands still, so
/// the limit is the whole allowance.
pub async fn concurrent_lease_calls_grant_exactly_what_they_charge<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    use std::sync::Arc;

    use tollgate::{Held, PolicyRef};
    let (store, _clock) = store_at_start(make).await;
    let store = Arc::new(store);
    for a in leasing_algorithms() {
        let p = leasing(a, "500/1h");
        let key = format!("concurrent-{a}");
        let tasks: Vec<_> = (0..32u64)
            .map(|task| {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move {
                    let refs = [PolicyRef {
                        name: "leasing",
                        policy: &p,
                    }];
                    let (mut granted, mut held) = (0u64, Held::default());
                    for call in 0..12u64 {
                        let want = 1 + (task * 7 + call * 3) % 40;
                        // Give back a part (sometimes all, sometimes none).
                        let back = Held {
                            units: held.units * ((task + call) % 3) / 2,
                            until: held.until,
                        };
                        let cost = 1 + call % 3;
                        let answer =
                            lease_call(&*store, &key, &refs, cost, &[ask(want, back)]).await;
                        let (d, l) = (answer.decisions[0], answer.leased[0]);
                        assert!(l.returned <= back.units, "{a}: {answer:?}");
                        assert!(d.allowed || l.units == 0, "{a}: {answer:?}");
                        granted = granted + if d.allowed { cost } else { 0 } + l.units - l.returned;
                        held = Held {
                            units: l.units,
                            until: l.until,
                        };
                    }
                    granted
                })
            })
            .collect();
        let mut granted = 0;
        for task in tasks {
            granted += task.await.expect("task does not panic");
        }
        let refs = [PolicyRef {
            name: "leasing",
            policy: &p,
        }];
        let remaining = store_remaining(&*store, &key, refs[0]).await;
        assert!(granted <= 500, "{a}: granted {granted} of 500");
        assert_eq!(
            granted,
            500 - remaining,
            "{a}: granted {granted}, but the store has {remaining} of 500 left"
        );
    }
}
