//! Edge cases of [`overdraw`], per algorithm, on explicit timelines. The
//! property test `tests/reservations.rs` drives it through reservations on
//! the memory store.

use super::{State, decide, overdraw};
use crate::{Algorithm, Mode, Policy};

const S: u64 = 1_000_000;

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

/// The four reservable algorithms at 10 per second (buckets: burst 10,
/// one unit every 100 ms).
fn ten_per_second() -> Vec<Policy> {
    [
        "fixed_window 10/1s",
        "sliding_window 10/1s",
        "token_bucket 10/1s burst 10",
        "gcra 10/1s burst 10",
    ]
    .into_iter()
    .map(policy)
    .collect()
}

fn peek(p: &Policy, state: &State, now: u64) -> crate::Decision {
    decide(p, &mut state.clone(), now, 1, Mode::Peek)
}

/// Drained at 0: every unit of the policy charged.
fn drained(p: &Policy) -> State {
    let mut state = State::fresh(p, 0);
    assert!(decide(p, &mut state, 0, 10, Mode::Consume).allowed);
    state
}

#[test]
fn overdraw_charges_what_remains_then_the_overdraft_then_nothing() {
    for p in ten_per_second() {
        let a = p.algorithm();
        let mut state = State::fresh(&p, 0);
        assert!(decide(&p, &mut state, 0, 6, Mode::Consume).allowed);
        // 4 remain: 3 fit without owing anything.
        assert_eq!(overdraw(&p, &mut state, 0, 3, 5), 3, "{a}");
        assert_eq!(peek(&p, &state, 0).remaining, 1, "{a}");
        // 1 remains and 5 may be owed: 6 of 20.
        assert_eq!(overdraw(&p, &mut state, 0, 20, 5), 6, "{a}");
        assert!(!peek(&p, &state, 0).allowed, "{a}");
        assert_eq!(overdraw(&p, &mut state, 0, 1, 5), 0, "{a}: owes 5 already");
        assert_eq!(overdraw(&p, &mut state, 0, 0, 5), 0, "{a}");
    }
}

#[test]
fn a_zero_overdraft_charges_only_what_remains() {
    for p in ten_per_second() {
        let a = p.algorithm();
        let mut state = State::fresh(&p, 0);
        assert!(decide(&p, &mut state, 0, 8, Mode::Consume).allowed);
        assert_eq!(overdraw(&p, &mut state, 0, 5, 0), 2, "{a}");
        assert_eq!(overdraw(&p, &mut state, 0, 5, 0), 0, "{a}");
    }
}

#[test]
fn an_overdraft_past_the_capacity_is_read_as_the_capacity() {
    for p in ten_per_second() {
        let a = p.algorithm();
        let mut state = drained(&p);
        assert_eq!(overdraw(&p, &mut state, 0, 1_000, u64::MAX), 10, "{a}");
        assert_eq!(overdraw(&p, &mut state, 0, 1_000, u64::MAX), 0, "{a}");
    }
}

// Each overdraft is capped by what the policy already owes, however many
// there are: the debt is counted, not forgotten.
#[test]
fn a_second_overdraft_counts_the_debt_of_the_first() {
    for p in ten_per_second() {
        let a = p.algorithm();
        let mut state = drained(&p);
        assert_eq!(overdraw(&p, &mut state, 0, 3, 5), 3, "{a}");
        assert_eq!(
            overdraw(&p, &mut state, 0, 3, 5),
            2,
            "{a}: owes 3 of 5, may owe only 2 more"
        );
        assert_eq!(overdraw(&p, &mut state, 0, 3, 5), 0, "{a}");
    }
}

// A window's debt is its count past the limit: nothing more is admitted
// until the window ends (`fixed_window`), or until the slide has let go
// of enough of it (`sliding_window`, whose next window sees a full one).
#[test]
fn a_window_owes_until_the_window_lets_go() {
    let p = policy("fixed_window 10/1s");
    let mut state = drained(&p);
    assert_eq!(overdraw(&p, &mut state, 0, 5, 5), 5);
    let d = peek(&p, &state, S - 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(std::time::Duration::from_micros(1)));
    let d = peek(&p, &state, S);
    assert_eq!(
        (d.allowed, d.remaining),
        (true, 10),
        "the debt ended with it"
    );

    let p = policy("sliding_window 10/1s");
    let mut state = drained(&p);
    assert_eq!(overdraw(&p, &mut state, 0, 5, 5), 5);
    assert!(!peek(&p, &state, S - 1).allowed);
    // The next window weighs a full previous one: one unit at 100 ms.
    assert!(!peek(&p, &state, S + S / 10 - 1).allowed);
    assert!(peek(&p, &state, S + S / 10).allowed);
}

// A bucket's debt is paid by refill first: drained and 5 owed, the next
// unit comes 600 ms later (100 ms a unit), and `retry_after` says so.
#[test]
fn a_bucket_owes_until_refill_has_paid_the_debt() {
    for text in ["token_bucket 10/1s burst 10", "gcra 10/1s burst 10"] {
        let p = policy(text);
        let mut state = drained(&p);
        assert_eq!(overdraw(&p, &mut state, 0, 5, 5), 5, "{text}");
        let d = peek(&p, &state, 0);
        assert!(!d.allowed, "{text}");
        assert_eq!(
            d.retry_after,
            Some(std::time::Duration::from_millis(600)),
            "{text}"
        );
        assert!(!peek(&p, &state, 6 * S / 10 - 1).allowed, "{text}");
        assert!(peek(&p, &state, 6 * S / 10).allowed, "{text}");
        // 250 ms on, 2 units of the debt are paid: 2 more may be owed.
        assert_eq!(overdraw(&p, &mut state, S / 4, 5, 5), 2, "{text}");
        assert!(!peek(&p, &state, 6 * S / 10).allowed, "{text}");
        assert!(peek(&p, &state, 8 * S / 10).allowed, "{text}");
    }
}

// Settled after the window it was reserved in, an overdraft lands in the
// window of the settle: a new window's count starts at zero.
#[test]
fn an_overdraft_after_the_window_lands_in_the_new_one() {
    for text in ["fixed_window 10/1s", "sliding_window 10/1s"] {
        let p = policy(text);
        let mut state = drained(&p);
        // Three windows on, nothing of the old one counts.
        assert_eq!(overdraw(&p, &mut state, 3 * S, 12, 5), 12, "{text}");
        assert!(!peek(&p, &state, 3 * S).allowed, "{text}");
        assert_eq!(overdraw(&p, &mut state, 3 * S, 12, 5), 3, "{text}");
    }
}

// A bucket refilled while the estimate was out: the overdraft takes what
// refilled first.
#[test]
fn a_refilled_bucket_takes_an_overdraft_from_its_level() {
    for text in ["token_bucket 10/1s burst 10", "gcra 10/1s burst 10"] {
        let p = policy(text);
        let mut state = drained(&p);
        assert_eq!(overdraw(&p, &mut state, S / 2, 7, 0), 5, "{text}");
        assert!(!peek(&p, &state, S / 2).allowed, "{text}");
        assert!(peek(&p, &state, 6 * S / 10).allowed, "{text}");
    }
}

// Rates that are no whole number of microseconds a unit: never a unit
// more than `max_overdraft` is owed. GCRA keeps the fraction of a
// microsecond and owes it exactly; a token bucket rounds the end of its
// debt up to a whole microsecond with each overdraft (`last`), which can
// cost the last unit of the overdraft (charged less, reported unpaid:
// never more than the policy allows).
#[test]
fn a_bucket_at_an_odd_rate_never_owes_more_than_its_overdraft() {
    for text in ["token_bucket 3/7s burst 5", "gcra 3/7s burst 5"] {
        let p = policy(text);
        let exact = p.algorithm() == Algorithm::Gcra;
        let lost = u64::from(!exact);
        let mut state = State::fresh(&p, 0);
        assert!(decide(&p, &mut state, 0, 5, Mode::Consume).allowed);
        let charged: u64 = (0..20).map(|_| overdraw(&p, &mut state, 0, 1, 4)).sum();
        assert_eq!(charged, 4 - lost, "{text}: one unit at a time");
        let mut state = State::fresh(&p, 0);
        assert!(decide(&p, &mut state, 0, 5, Mode::Consume).allowed);
        assert_eq!(overdraw(&p, &mut state, 0, 10, 4), 4, "{text}: at once");
        // 7/3 s a unit: 7 s pay 3 units of the debt, leaving 1 owed.
        assert_eq!(overdraw(&p, &mut state, 7 * S, 10, 4), 3 - lost, "{text}");
        assert_eq!(overdraw(&p, &mut state, 7 * S, 10, 4), 0, "{text}");
    }
}

#[test]
fn the_algorithms_that_cannot_be_reserved_take_nothing() {
    for text in ["sliding_log 10/1s", "leaky_bucket 10/1s burst 10"] {
        let p = policy(text);
        assert!(!super::can_reserve(p.algorithm()), "{text}");
        let mut state = State::fresh(&p, 0);
        let before = state.clone();
        assert_eq!(overdraw(&p, &mut state, 0, 5, 5), 0, "{text}");
        assert_eq!(
            peek(&p, &state, 0).remaining,
            peek(&p, &before, 0).remaining
        );
    }
    // Nor does a state of another algorithm than the policy's.
    let window = policy("fixed_window 10/1s");
    let mut bucket = State::fresh(&policy("token_bucket 10/1s burst 10"), 0);
    assert_eq!(overdraw(&window, &mut bucket, 0, 5, 5), 0);
    assert!(
        Algorithm::ALL
            .into_iter()
            .filter(|a| super::can_reserve(*a))
            .eq([
                Algorithm::FixedWindow,
                Algorithm::SlidingWindow,
                Algorithm::TokenBucket,
                Algorithm::Gcra
            ])
    );
}
