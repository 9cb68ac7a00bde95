//! The reservation cases of the conformance suite: [`Store::reserve`] and
//! [`Store::settle`] on the store itself (so that the cases can name other
//! keys, other policies and nonces never drawn), and through a
//! [`Limiter`] where it adds rules of its own (deadlines, algorithms it
//! refuses, cancel).
//!
//! Every case runs on the four algorithms that can be reserved, with
//! `<algorithm> 100/1h` (buckets: burst 100) unless it says otherwise: at
//! [`START_US`] a window has 2 800 s to run and a bucket refills one unit
//! in 36 s, so nothing moves unless a case moves the clock. Windows give
//! back what an estimate charged too much; buckets forfeit it (see
//! `tollgate::algorithm::give_back`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tollgate::{
    Algorithm, Check, Decision, Decisions, Error, Limiter, ManualClock, Mode, Policy, PolicyRef,
    ReserveCall, SettleAnswer, SettleCall, Settled, Store,
};

use super::START_US;

/// The algorithms that can be reserved (`sliding_log` and `leaky_bucket`
/// are refused).
pub fn reservable_algorithms() -> Vec<Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| tollgate::algorithm::can_reserve(*a))
        .collect()
}

/// The deadline of the cases' reservations: one minute.
pub const RESERVE_DEADLINE_US: u64 = 60_000_000;

/// `<a> <limit>/1h` (a bucket's burst: the limit), owing at most
/// `overdraft` units (`None`: the default, the capacity).
fn hourly(a: Algorithm, limit: u64, overdraft: Option<u64>) -> Policy {
    let text = if a.has_burst() {
        format!("{a} {limit}/1h burst {limit}")
    } else {
        format!("{a} {limit}/1h")
    };
    let p = super::policy(&text);
    match overdraft {
        Some(units) => p.with_max_overdraft(units).expect("an overdraft it allows"),
        None => p,
    }
}

/// A store on a clock at [`START_US`], which must keep reservations.
async fn reserving_store<S, F, Fut>(make: &F) -> (S, ManualClock)
where
    S: Store,
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, clock) = super::store_at_start(make).await;
    assert!(
        store.reserves(),
        "the reservation cases run on a store whose `reserves()` is true"
    );
    (store, clock)
}

/// Reserves `estimate` of `policies` for `key` under `nonce`, which the
/// store must answer with one decision per policy.
async fn reserve<S: Store>(
    store: &S,
    key: &str,
    policies: &[PolicyRef<'_>],
    estimate: u64,
    nonce: u128,
) -> Decisions {
    let decisions = store
        .reserve(ReserveCall {
            check: Check::new(key.as_bytes(), policies, estimate, Mode::Consume),
            nonce,
            deadline_us: RESERVE_DEADLINE_US,
        })
        .await
        .expect("store works");
    assert_eq!(decisions.len(), policies.len(), "{key}: {decisions:?}");
    decisions
}

/// Settles `nonce` of `key` and `policies` at `actual`; a settle that finds
/// the reservation answers one entry per policy.
async fn settle<S: Store>(
    store: &S,
    key: &str,
    policies: &[PolicyRef<'_>],
    nonce: u128,
    actual: u64,
) -> Option<SettleAnswer> {
    let answer = store
        .settle(SettleCall {
            key: key.as_bytes(),
            policies,
            nonce,
            actual,
        })
        .await
        .expect("store works");
    if let Some(answer) = &answer {
        assert_eq!(answer.settled.len(), policies.len(), "{key}: {answer:?}");
        assert_eq!(answer.decisions.len(), policies.len(), "{key}: {answer:?}");
    }
    answer
}

/// What remains of `policy` for `key`: a peek of one unit.
async fn remaining<S: Store>(store: &S, key: &str, policy: PolicyRef<'_>) -> u64 {
    super::store_remaining(store, key, policy).await
}

/// A peek of one unit of `policy` for `key`.
async fn peek<S: Store>(store: &S, key: &str, policy: PolicyRef<'_>) -> Decision {
    super::store_check(store, key, policy, 1, Mode::Peek).await
}

/// What settling gives back on `a`: everything asked on a window (the
/// estimate charged in the window that still runs), nothing on a bucket.
fn given_back(a: Algorithm, units: u64) -> u64 {
    if a.has_burst() { 0 } else { units }
}

/// A reservation allowed is charged its estimate at once; one denied
/// charges nothing and records nothing (settling its nonce finds nothing).
/// The decisions are those of a check of the estimate.
pub async fn a_reservation_is_charged_and_a_denied_one_records_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let p = hourly(a, 100, None);
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("charged-{a}");
        let d = reserve(&store, &key, &refs, 30, 1).await;
        assert_eq!((d[0].allowed, d[0].remaining), (true, 70), "{a}: {d:?}");
        assert_eq!(remaining(&store, &key, refs[0]).await, 70, "{a}");
        let denied = reserve(&store, &key, &refs, 71, 2).await;
        assert!(!denied[0].allowed, "{a}: {denied:?}");
        assert_eq!(denied[0].remaining, 70, "{a}: {denied:?}");
        assert!(denied[0].retry_after.is_some(), "{a}: {denied:?}");
        assert_eq!(remaining(&store, &key, refs[0]).await, 70, "{a}");
        assert_eq!(
            settle(&store, &key, &refs, 2, 0).await,
            None,
            "{a}: a denied reservation was recorded"
        );
        assert_eq!(remaining(&store, &key, refs[0]).await, 70, "{a}");
        // Above the capacity: never, with no retry_after.
        let never = reserve(&store, &key, &refs, 101, 3).await;
        assert_eq!(
            (never[0].allowed, never[0].retry_after),
            (false, None),
            "{a}"
        );
        // The last 70 fit exactly.
        let last = reserve(&store, &key, &refs, 70, 4).await;
        assert_eq!((last[0].allowed, last[0].remaining), (true, 0), "{a}");
    }
}

/// Settled below its estimate, a reservation gives the difference back to
/// a window (exactly: what remains is as if only `actual` had been
/// charged) and forfeits it on a bucket; settled at its estimate it
/// changes nothing; settled at 0 (a cancel) it gives back the whole
/// estimate to a window. The answer says what happened, and its decision
/// is a peek of one unit after it. A check denied before a give-back is
/// allowed after it (a deny cache in front of the store must let go).
pub async fn settling_below_the_estimate_gives_back_to_windows<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let p = hourly(a, 100, None);
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("below-{a}");
        // Under: 30 reserved, 10 spent.
        reserve(&store, &key, &refs, 30, 1).await;
        let answer = settle(&store, &key, &refs, 1, 10).await.expect("open");
        assert_eq!(
            (answer.estimate, answer.actual, answer.replayed),
            (30, 10, false),
            "{a}: {answer:?}"
        );
        let returned = given_back(a, 20);
        assert_eq!(
            answer.settled[0],
            Settled {
                returned,
                charged: 0,
                unpaid: 0
            },
            "{a}"
        );
        let mut left = 70 + returned;
        assert_eq!(remaining(&store, &key, refs[0]).await, left, "{a}");
        assert_eq!(
            (answer.decisions[0].allowed, answer.decisions[0].remaining),
            (true, left),
            "{a}: the answer's decision is a peek after the settle"
        );
        // Equal: nothing moves.
        reserve(&store, &key, &refs, 15, 2).await;
        left -= 15;
        let answer = settle(&store, &key, &refs, 2, 15).await.expect("open");
        assert_eq!(answer.settled[0], Settled::default(), "{a}: {answer:?}");
        assert_eq!(remaining(&store, &key, refs[0]).await, left, "{a}");
        // Zero: the whole estimate back to a window.
        reserve(&store, &key, &refs, 25, 3).await;
        let answer = settle(&store, &key, &refs, 3, 0).await.expect("open");
        assert_eq!(answer.settled[0].returned, given_back(a, 25), "{a}");
        left = left - 25 + given_back(a, 25);
        assert_eq!(remaining(&store, &key, refs[0]).await, left, "{a}");
        // Everything reserved: a check is denied; given back, it passes.
        reserve(&store, &key, &refs, left, 4).await;
        let denied = super::store_check(&store, &key, refs[0], 1, Mode::Consume).await;
        assert!(!denied.allowed, "{a}: {denied:?}");
        let answer = settle(&store, &key, &refs, 4, left - 5)
            .await
            .expect("open");
        assert_eq!(answer.settled[0].returned, given_back(a, 5), "{a}");
        let after = super::store_check(&store, &key, refs[0], 1, Mode::Consume).await;
        assert_eq!(
            after.allowed,
            !a.has_burst(),
            "{a}: a check after 5 units went back: {after:?}"
        );
    }
}

/// Units given back once the window the estimate was charged in has ended
/// change nothing (the new window never saw them), and none is counted as
/// returned.
pub async fn a_window_gives_back_only_while_the_estimate_s_window_lasts<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    for a in reservable_algorithms()
        .into_iter()
        .filter(|a| !a.has_burst())
    {
        let (store, clock) = reserving_store(make).await;
        let p = super::policy(&format!("{a} 100/1s"));
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("late-{a}");
        reserve(&store, &key, &refs, 60, 1).await;
        reserve(&store, &key, &refs, 20, 2).await;
        // 1 µs before the window ends: given back.
        let to_end = 1_000_000 - START_US % 1_000_000;
        clock.advance_us(to_end - 1);
        let answer = settle(&store, &key, &refs, 2, 5).await.expect("open");
        assert_eq!(answer.settled[0].returned, 15, "{a}: {answer:?}");
        // At the window's end: the new window never held the estimate.
        clock.advance_us(1);
        let before = remaining(&store, &key, refs[0]).await;
        let answer = settle(&store, &key, &refs, 1, 10).await.expect("open");
        assert_eq!(answer.settled[0], Settled::default(), "{a}: {answer:?}");
        assert_eq!(remaining(&store, &key, refs[0]).await, before, "{a}");
    }
}

/// Settled above its estimate, a reservation charges the difference,
/// whether or not it fits: up to what remains plus the policy's
/// `max_overdraft` (counting what it already owes), the rest reported as
/// unpaid, never silently dropped. An overdrawn policy denies the next
/// request, and its `retry_after` is honest: the request fails 1 µs before
/// it and passes at it. With `max_overdraft` 0 nothing past the limit is
/// charged.
pub async fn settling_above_the_estimate_overdraws_up_to_max_overdraft<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    for a in reservable_algorithms() {
        let (store, clock) = reserving_store(make).await;
        let p = hourly(a, 100, Some(20));
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("above-{a}");
        // Within what remains.
        reserve(&store, &key, &refs, 10, 1).await;
        let answer = settle(&store, &key, &refs, 1, 50).await.expect("open");
        let fits = Settled {
            returned: 0,
            charged: 40,
            unpaid: 0,
        };
        assert_eq!((answer.actual, answer.settled[0]), (50, fits), "{a}");
        assert_eq!(remaining(&store, &key, refs[0]).await, 50, "{a}");
        assert!(answer.decisions[0].allowed, "{a}: {answer:?}");
        // Past it: 30 of 40 extra (the 10 left and the overdraft of 20),
        // 10 unpaid.
        reserve(&store, &key, &refs, 40, 2).await;
        let answer = settle(&store, &key, &refs, 2, 80).await.expect("open");
        let owing = Settled {
            returned: 0,
            charged: 30,
            unpaid: 10,
        };
        assert_eq!(answer.settled[0], owing, "{a}: {answer:?}");
        assert!(!answer.decisions[0].allowed, "{a}: {answer:?}");
        assert_eq!(remaining(&store, &key, refs[0]).await, 0, "{a}");
        let denied = super::store_check(&store, &key, refs[0], 1, Mode::Consume).await;
        assert!(
            !denied.allowed,
            "{a}: an overdrawn policy allowed {denied:?}"
        );
        let none = reserve(&store, &key, &refs, 1, 3).await;
        assert!(!none[0].allowed, "{a}: an overdrawn policy reserved");
        // A window owes its 20 as a count past its limit until it ends; a
        // bucket as a later refill.
        let wait = denied.retry_after.expect("an overdraft ends");
        let wait = u64::try_from(wait.as_micros()).expect("small");
        clock.advance_us(wait - 1);
        let early = peek(&store, &key, refs[0]).await;
        assert!(
            !early.allowed,
            "{a}: allowed 1 µs before retry_after ({wait} µs): {early:?}"
        );
        clock.advance_us(1);
        let on_time = peek(&store, &key, refs[0]).await;
        assert!(
            on_time.allowed,
            "{a}: denied at retry_after ({wait} µs): {on_time:?}"
        );

        let key = format!("strict-{a}");
        let zero = hourly(a, 100, Some(0));
        let refs = [PolicyRef {
            name: "strict",
            policy: &zero,
        }];
        reserve(&store, &key, &refs, 100, 6).await;
        let answer = settle(&store, &key, &refs, 6, 101).await.expect("open");
        assert_eq!(
            answer.settled[0],
            Settled {
                returned: 0,
                charged: 0,
                unpaid: 1
            },
            "{a}: max_overdraft 0"
        );
    }
}

/// What a policy already owes counts against every later overdraft, so
/// that it never owes more than its `max_overdraft` (20 here): three
/// reservations (40, 40, 20) drain the policy; the first, settled 15
/// over, owes 15, so the second, 10 over, may owe only 5 more (5 unpaid);
/// the third, cancelled, gives its 20 back to a window, which then counts
/// exactly its limit (100 + 20 owed - 20 given back): the next check is
/// denied.
pub async fn an_overdraft_counts_what_the_policy_already_owes<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let p = hourly(a, 100, Some(20));
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("owes-{a}");
        for (nonce, estimate) in [(1, 40), (2, 40), (3, 20)] {
            assert!(reserve(&store, &key, &refs, estimate, nonce).await[0].allowed);
        }
        let answer = settle(&store, &key, &refs, 1, 55).await.expect("open");
        let first = Settled {
            returned: 0,
            charged: 15,
            unpaid: 0,
        };
        assert_eq!(answer.settled[0], first, "{a}: {answer:?}");
        let answer = settle(&store, &key, &refs, 2, 50).await.expect("open");
        let second = Settled {
            returned: 0,
            charged: 5,
            unpaid: 5,
        };
        assert_eq!(
            answer.settled[0], second,
            "{a}: the debt is counted: {answer:?}"
        );
        let answer = settle(&store, &key, &refs, 3, 0).await.expect("open");
        assert_eq!(answer.settled[0].returned, given_back(a, 20), "{a}");
        let next = super::store_check(&store, &key, refs[0], 1, Mode::Consume).await;
        assert!(
            !next.allowed,
            "{a}: 120 charged of 100 plus 20, 20 given back, yet a check passed: {next:?}"
        );
    }
}

/// A charge after the fact, with nothing reserved, overdraws whether or not
/// the units fit: at most what remains plus `max_overdraft`, counting the
/// debt already owed, the rest unpaid; it records nothing, and the peek it
/// answers says the next request waits. Several policies are each charged.
pub async fn a_charge_overdraws_with_nothing_reserved<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let p = hourly(a, 100, Some(20));
        let wide = hourly(a, 1000, None);
        let refs = [
            PolicyRef {
                name: "tokens",
                policy: &p,
            },
            PolicyRef {
                name: "daily",
                policy: &wide,
            },
        ];
        let key = format!("charge-{a}");
        let charge = |units| {
            let store = &store;
            let (key, refs) = (&key, &refs);
            async move {
                let answer = store
                    .charge(tollgate::ChargeCall {
                        key: key.as_bytes(),
                        policies: refs,
                        units,
                    })
                    .await
                    .expect("store works");
                assert_eq!(answer.settled.len(), 2, "{a}: {answer:?}");
                assert_eq!(answer.decisions.len(), 2, "{a}: {answer:?}");
                answer
            }
        };
        let first = charge(90).await;
        assert_eq!(first.settled[0].charged, 90, "{a}: it fits");
        assert!(first.decisions[0].allowed, "{a}: 10 remain");
        // 10 remain and 20 may be owed: 30 of 50 are charged, 20 unpaid.
        let second = charge(50).await;
        assert_eq!(
            second.settled[0],
            Settled {
                returned: 0,
                charged: 30,
                unpaid: 20
            },
            "{a}"
        );
        assert_eq!(
            second.settled[1].charged, 50,
            "{a}: the wide policy takes all"
        );
        assert!(
            !second.decisions[0].allowed,
            "{a}: the debt holds the next one back"
        );
        assert!(second.decisions[0].retry_after.is_some(), "{a}");
        let third = charge(1).await;
        assert_eq!(third.settled[0].unpaid, 1, "{a}: already owes 20");
        assert_eq!(remaining(&store, &key, refs[1]).await, 1000 - 141, "{a}");
    }
}

/// A settle uses each policy's numbers in force when it runs (a reload or
/// an override may have changed them since the reservation): a window
/// reserved under `100/1h` and settled under `50/1h` with an overdraft of
/// 10 gives back to the same counter, and overdraws up to the new limit
/// plus the new overdraft.
pub async fn a_settle_uses_the_numbers_in_force_now<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms()
        .into_iter()
        .filter(|a| !a.has_burst())
    {
        let (before, now) = (hourly(a, 100, None), hourly(a, 50, Some(10)));
        let reserved = [PolicyRef {
            name: "tokens",
            policy: &before,
        }];
        let settled = [PolicyRef {
            name: "tokens",
            policy: &now,
        }];
        let key = format!("numbers-{a}");
        reserve(&store, &key, &reserved, 40, 1).await;
        reserve(&store, &key, &reserved, 5, 2).await;
        let answer = settle(&store, &key, &settled, 2, 0).await.expect("open");
        assert_eq!(answer.settled[0].returned, 5, "{a}: {answer:?}");
        assert_eq!(remaining(&store, &key, settled[0]).await, 10, "{a}");
        // 40 counted: 20 more fit under 50 plus 10.
        let answer = settle(&store, &key, &settled, 1, 70).await.expect("open");
        let expected = Settled {
            returned: 0,
            charged: 20,
            unpaid: 10,
        };
        assert_eq!(answer.settled[0], expected, "{a}: {answer:?}");
        assert!(!answer.decisions[0].allowed, "{a}: {answer:?}");
        assert_eq!(answer.decisions[0].limit, 50, "{a}: {answer:?}");
    }
}

/// A settle is done once: settled again (the same `actual`, another, or a
/// cancel), nothing is charged or given back, and the answer repeats the
/// first one's `actual` and `settled` with `replayed` set.
pub async fn a_replayed_settle_changes_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let p = hourly(a, 100, None);
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let key = format!("replay-{a}");
        for (nonce, estimate, actual) in [(1, 30, 10), (2, 10, 40), (3, 5, 5), (4, 20, 0)] {
            reserve(&store, &key, &refs, estimate, nonce).await;
            let first = settle(&store, &key, &refs, nonce, actual)
                .await
                .expect("open");
            assert!(!first.replayed, "{a}: {first:?}");
            let left = remaining(&store, &key, refs[0]).await;
            if actual == 0 {
                // A cancel deletes the reservation: a retry finds nothing
                // and gives nothing back twice.
                for again in [0, 5] {
                    let answer = settle(&store, &key, &refs, nonce, again).await;
                    assert_eq!(answer, None, "{a}: a cancel, then a settle at {again}");
                    assert_eq!(remaining(&store, &key, refs[0]).await, left, "{a}");
                }
                continue;
            }
            for again in [actual, actual + 7, 0, 100] {
                let answer = settle(&store, &key, &refs, nonce, again)
                    .await
                    .expect("kept for replays");
                assert!(answer.replayed, "{a}: {answer:?}");
                assert_eq!(
                    (answer.estimate, answer.actual, &answer.settled),
                    (first.estimate, first.actual, &first.settled),
                    "{a}: settled at {actual}, then at {again}"
                );
                assert_eq!(answer.decisions[0].remaining, left, "{a}");
                assert_eq!(
                    remaining(&store, &key, refs[0]).await,
                    left,
                    "{a}: a replay at {again} changed the state"
                );
            }
        }
    }
}

/// A settle finds a reservation only by its nonce, key and policy names
/// (the same, in the same order): a nonce never drawn, another key, other
/// policy names, fewer or more policies, find nothing and change nothing;
/// the reservation is still open afterwards.
pub async fn a_settle_must_name_the_reservation_exactly<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    for a in reservable_algorithms() {
        let (p, q) = (hourly(a, 100, None), hourly(a, 50, None));
        let both = [
            PolicyRef {
                name: "tokens",
                policy: &p,
            },
            PolicyRef {
                name: "bytes",
                policy: &q,
            },
        ];
        let key = format!("exact-{a}");
        let nonce = 0x5eed_0000_0000_0000_0000_0000_0000_0001_u128;
        reserve(&store, &key, &both, 20, nonce).await;
        let swapped = [both[1], both[0]];
        let renamed = [
            both[0],
            PolicyRef {
                name: "bytes2",
                policy: &q,
            },
        ];
        let tripled = [
            both[0],
            both[1],
            PolicyRef {
                name: "more",
                policy: &q,
            },
        ];
        let other = format!("{key}x");
        let misses: [(&str, &[PolicyRef<'_>], u128); 8] = [
            (&key, &both, nonce + 1),
            (&key, &both, 0),
            (&other, &both, nonce),
            ("", &both, nonce),
            (&key, &swapped, nonce),
            (&key, &renamed, nonce),
            (&key, &both[..1], nonce),
            (&key, &tripled, nonce),
        ];
        for (i, (k, policies, n)) in misses.into_iter().enumerate() {
            assert_eq!(
                settle(&store, k, policies, n, 0).await,
                None,
                "{a}: miss {i} found the reservation"
            );
        }
        assert_eq!(remaining(&store, &key, both[0]).await, 80, "{a}");
        assert_eq!(remaining(&store, &key, both[1]).await, 30, "{a}");
        let answer = settle(&store, &key, &both, nonce, 0).await.expect("open");
        assert!(!answer.replayed, "{a}: a miss settled it: {answer:?}");
        let back = given_back(a, 20);
        assert_eq!(remaining(&store, &key, both[0]).await, 80 + back, "{a}");
        assert_eq!(remaining(&store, &key, both[1]).await, 30 + back, "{a}");
    }
}

/// A reservation of several policies is all-or-nothing: denied by one, it
/// charges none; allowed, each is charged. Settling treats each policy by
/// its own rules: what it gives back, and how far it may be overdrawn.
pub async fn several_policies_reserve_all_or_nothing<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    let narrow = hourly(Algorithm::FixedWindow, 10, Some(2));
    for a in reservable_algorithms() {
        let wide = hourly(a, 100, None);
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
        let key = format!("multi-{a}");
        let denied = reserve(&store, &key, &refs, 11, 1).await;
        assert!(denied[0].allowed && !denied[1].allowed, "{a}: {denied:?}");
        assert_eq!(settle(&store, &key, &refs, 1, 0).await, None, "{a}");
        assert_eq!(remaining(&store, &key, refs[0]).await, 100, "{a}");
        assert_eq!(remaining(&store, &key, refs[1]).await, 10, "{a}");
        let both = reserve(&store, &key, &refs, 8, 2).await;
        assert!(both.iter().all(|d| d.allowed), "{a}: {both:?}");
        assert_eq!((both[0].remaining, both[1].remaining), (92, 2), "{a}");
        // 5 over: the wide policy takes all 5, the narrow one its 2 left
        // and its overdraft of 2; 1 unpaid.
        let answer = settle(&store, &key, &refs, 2, 13).await.expect("open");
        let expected = [
            Settled {
                returned: 0,
                charged: 5,
                unpaid: 0,
            },
            Settled {
                returned: 0,
                charged: 4,
                unpaid: 1,
            },
        ];
        assert_eq!(answer.settled.as_slice(), expected, "{a}: {answer:?}");
        assert!(answer.decisions[0].allowed && !answer.decisions[1].allowed);
        assert_eq!(remaining(&store, &key, refs[0]).await, 87, "{a}");
        // Under on both: the narrow window gives back, the wide one by its
        // algorithm.
        let key = format!("multi-under-{a}");
        reserve(&store, &key, &refs, 8, 3).await;
        let answer = settle(&store, &key, &refs, 3, 3).await.expect("open");
        assert_eq!(
            (answer.settled[0].returned, answer.settled[1].returned),
            (given_back(a, 5), 5),
            "{a}: {answer:?}"
        );
        assert_eq!(
            remaining(&store, &key, refs[0]).await,
            92 + given_back(a, 5)
        );
        assert_eq!(remaining(&store, &key, refs[1]).await, 7, "{a}");
    }
}

/// Through the limiter: a reservation past its deadline is settled at its
/// estimate (a settle at or after it finds nothing and changes nothing;
/// 1 µs before, it settles); cancel gives back the whole estimate to a
/// window; `sliding_log` and `leaky_bucket` are refused, charging nothing
/// on any policy named with them; a denied reservation has no id.
pub async fn the_limiter_reserves_settles_and_cancels<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    for a in reservable_algorithms() {
        let clock = ManualClock::new(START_US);
        let store = make(clock.clone()).await;
        assert!(store.reserves(), "a store whose `reserves()` is true");
        let limiter = Limiter::builder(store)
            .policy("tokens", hourly(a, 100, None))
            .policy("log", super::policy("sliding_log 100/1h"))
            .policy("leaky", super::policy("leaky_bucket 100/1h burst 100"))
            .build();
        let deadline = Duration::from_secs(10);
        let reserve = |estimate| limiter.reserve(&["tokens"], "k", estimate, deadline);
        let peek = || async { limiter.peek("tokens", "k", 1).await.expect("store works") };
        let first = reserve(30).await.expect("store works");
        let second = reserve(30).await.expect("store works");
        let (first, second) = (first.id.expect("allowed"), second.id.expect("allowed"));
        let denied = reserve(41).await.expect("store works");
        assert!(!denied.allowed() && denied.id.is_none(), "{a}: {denied:?}");
        assert_eq!(peek().await.remaining, 40, "{a}");
        // 1 µs before the deadline: cancelled.
        clock.advance_us(10_000_000 - 1);
        let before = peek().await.remaining;
        let cancelled = limiter.cancel(&first).await.expect("store works");
        let cancelled = cancelled.expect("open until its deadline");
        assert_eq!(cancelled.actual, 0, "{a}");
        assert_eq!(cancelled.settled[0].returned, given_back(a, 30), "{a}");
        assert_eq!(peek().await.remaining, before + given_back(a, 30), "{a}");
        // At the deadline: settled at its estimate.
        clock.advance_us(1);
        let before = peek().await.remaining;
        let late = limiter.settle(&second, 0).await.expect("store works");
        assert_eq!(late, None, "{a}: settled at its deadline");
        assert_eq!(peek().await.remaining, before, "{a}: the estimate stays");
        let late = limiter.settle(&first, 0).await.expect("store works");
        assert_eq!(late, None, "{a}: kept for replays past its deadline");
        // Refused algorithms, alone or beside one that can be reserved.
        for names in [
            &["log"][..],
            &["leaky"],
            &["tokens", "log"],
            &["leaky", "tokens"],
        ] {
            let before = peek().await.remaining;
            let refused = limiter.reserve(names, "k", 1, deadline).await;
            assert!(
                matches!(refused, Err(Error::NotReservable { .. })),
                "{a} {names:?}: {refused:?}"
            );
            assert_eq!(peek().await.remaining, before, "{a} {names:?}");
        }
        for name in ["log", "leaky"] {
            let d = limiter.peek(name, "k", 1).await.expect("store works");
            let fresh = limiter.peek(name, "fresh", 1).await.expect("store works");
            assert_eq!(d, fresh, "{a}: a refused reservation charged {name}");
        }
    }
}

/// 32 concurrent tasks on one key, each reserving and settling (under,
/// equal, over, cancelled, replayed): time stands still, so the units the
/// store kept charged (estimates less what it gave back, plus what it
/// charged past them) never pass the limit plus one `max_overdraft`, and
/// account exactly for what remains. Every settle answer is consistent
/// (no more given back than the estimate exceeded the actual; charged
/// plus unpaid is what the actual exceeded it by), and its replay
/// identical.
pub async fn concurrent_reservations_hold_the_budget<S: Store, F, Fut>(make: &F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    let (store, _clock) = reserving_store(make).await;
    let store = Arc::new(store);
    const LIMIT: u64 = 500;
    const OVERDRAFT: u64 = 40;
    for a in reservable_algorithms() {
        let p = hourly(a, LIMIT, Some(OVERDRAFT));
        let key = format!("concurrent-{a}");
        let tasks: Vec<_> = (0..32u64)
            .map(|task| {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move {
                    let refs = [PolicyRef {
                        name: "tokens",
                        policy: &p,
                    }];
                    let (mut kept, mut denied) = (0u64, 0u64);
                    for call in 0..10u64 {
                        let nonce = u128::from(task << 32 | call) + 1;
                        let estimate = 1 + (task * 7 + call * 3) % 20;
                        let actual = match (task + call) % 4 {
                            0 => 0,
                            1 => estimate / 2,
                            2 => estimate,
                            _ => estimate + 1 + (task + call) % 15,
                        };
                        let d = reserve(&*store, &key, &refs, estimate, nonce).await;
                        if !d[0].allowed {
                            denied += 1;
                            continue;
                        }
                        let answer = settle(&*store, &key, &refs, nonce, actual)
                            .await
                            .expect("open");
                        let s = answer.settled[0];
                        assert!(s.returned <= estimate.saturating_sub(actual), "{answer:?}");
                        assert_eq!(s.charged + s.unpaid, actual.saturating_sub(estimate));
                        kept += estimate - s.returned + s.charged;
                        let again = settle(&*store, &key, &refs, nonce, actual + 1).await;
                        if actual == 0 {
                            assert_eq!(again, None, "a cancel deletes the reservation");
                        } else {
                            let again = again.expect("kept");
                            assert!(again.replayed && again.settled[0] == s, "{again:?}");
                        }
                    }
                    (kept, denied)
                })
            })
            .collect();
        let (mut kept, mut denied) = (0, 0);
        for task in tasks {
            let (k, d) = task.await.expect("task does not panic");
            (kept, denied) = (kept + k, denied + d);
        }
        let refs = [PolicyRef {
            name: "tokens",
            policy: &p,
        }];
        let left = remaining(&*store, &key, refs[0]).await;
        assert!(
            kept <= LIMIT + OVERDRAFT,
            "{a}: {kept} kept of {LIMIT} plus {OVERDRAFT}"
        );
        assert!(denied > 0, "{a}: the tasks never reached the limit");
        assert_eq!(
            left,
            LIMIT.saturating_sub(kept),
            "{a}: {kept} kept, but {left} of {LIMIT} left"
        );
    }
}
