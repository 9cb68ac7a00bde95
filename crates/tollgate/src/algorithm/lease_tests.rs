//! Edge cases of the lease functions, on explicit timelines. The property
//! test `tests/lease_exactness.rs` drives them through a simulated fleet.

use super::{LEASE_SHARE, State, decide, give_back, lease_size, lease_until};
use crate::{Mode, Policy};

const S: u64 = 1_000_000;

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

/// One lease step on one policy, as `MemoryStore::lease_sync` takes it:
/// the end read before anything is charged, capped at `ttl_us`, the cost
/// charged, then the lease's units. Returns `(units, until)`.
fn lease(p: &Policy, state: &mut State, now: u64, cost: u64, want: u64, ttl_us: u64) -> (u64, u64) {
    let until = lease_until(p, state, now).min(now + ttl_us);
    let decision = decide(p, state, now, cost, Mode::Consume);
    assert!(decision.allowed, "the lease's cost fits");
    let units = if until > now {
        lease_size(want, decision.remaining)
    } else {
        0
    };
    if units > 0 {
        assert!(decide(p, state, now, units, Mode::Consume).allowed);
    }
    (units, until)
}

fn remaining(p: &Policy, state: &State, now: u64) -> u64 {
    decide(p, &mut state.clone(), now, 1, Mode::Peek).remaining
}

// The counterexample to giving units back to a bucket (the rule before
// this test): lease A's units returned after lease B was sized on the
// bucket without them filled the bucket while B still held a unit, and
// 101 units could pass in one instant from a bucket of 100.
#[test]
fn a_bucket_forfeits_a_lease_so_that_a_later_lease_never_overspends() {
    for a in ["token_bucket", "gcra"] {
        let p = policy(&format!("{a} 10/1s burst 100"));
        let mut state = State::fresh(&p, 0);
        assert!(decide(&p, &mut state, 0, 1, Mode::Consume).allowed);
        let (a_units, a_until) = lease(&p, &mut state, 0, 1, 8, 1);
        assert_eq!((a_units, a_until), (6, 1), "{a}");
        let (b_units, b_until) = lease(&p, &mut state, 0, 1, 1, S);
        assert_eq!(
            (b_units, b_until),
            (1, 800_000),
            "{a}: when 91 + 1 refill to 100"
        );
        assert_eq!(remaining(&p, &state, 0), 90, "{a}");
        let returned = give_back(&p, &mut state, 0, a_units, a_until);
        // B may still spend its unit at 0.5 s: the bucket must hold at
        // most 99 then. Given back, it held 100.
        let at = S / 2;
        assert!(at < b_until);
        assert!(
            remaining(&p, &state, at) + b_units <= p.burst(),
            "{a}: over-admits"
        );
        assert_eq!(returned, 0, "{a}");
        assert_eq!(remaining(&p, &state, at), 95, "{a}");
    }
}

#[test]
fn a_bucket_takes_nothing_back_in_any_state() {
    for a in ["token_bucket", "gcra"] {
        let p = policy(&format!("{a} 10/1s burst 10"));
        // Full: a give-back would overflow it.
        let mut state = State::fresh(&p, 0);
        let full = state.clone();
        assert_eq!(give_back(&p, &mut state, 0, 3, S), 0, "{a}");
        assert_eq!(state, full, "{a}");
        // Drained: room for every unit, still none taken back.
        for _ in 0..10 {
            assert!(decide(&p, &mut state, 0, 1, Mode::Consume).allowed);
        }
        let drained = state.clone();
        assert_eq!(give_back(&p, &mut state, 0, 3, S), 0, "{a}");
        assert_eq!(state, drained, "{a}");
    }
    // GCRA's arrival time written under a slower policy, far beyond what
    // any decision of this one reads.
    let slow = policy("gcra 1/1h burst 10");
    let mut state = State::fresh(&slow, 0);
    for _ in 0..10 {
        assert!(decide(&slow, &mut state, 0, 1, Mode::Consume).allowed);
    }
    let fast = policy("gcra 10/1s burst 10");
    let before = state.clone();
    assert_eq!(give_back(&fast, &mut state, 0, 5, S), 0);
    assert_eq!(state, before);
    assert_eq!(lease_until(&fast, &state, 0), 10 * 3600 * S);
}

#[test]
fn a_full_bucket_leases_nothing_and_a_drained_one_leases_until_it_would_be_full() {
    for a in ["token_bucket", "gcra"] {
        let p = policy(&format!("{a} 10/1s burst 10"));
        let mut state = State::fresh(&p, 5 * S);
        assert_eq!(lease_until(&p, &state, 5 * S), 5 * S, "{a}: full");
        assert!(decide(&p, &mut state, 5 * S, 4, Mode::Consume).allowed);
        // Four tokens missing at 10/s: full 400 ms later.
        assert_eq!(lease_until(&p, &state, 5 * S), 5 * S + 400_000, "{a}");
        assert_eq!(
            lease_until(&p, &state, 5 * S + 100_000),
            5 * S + 400_000,
            "{a}"
        );
        // Full again: nothing to lease, whenever asked.
        assert_eq!(lease_until(&p, &state, 7 * S), 7 * S, "{a}");
    }
}

#[test]
fn a_window_gives_back_to_its_own_window_only() {
    for a in ["fixed_window", "sliding_window"] {
        let p = policy(&format!("{a} 100/1s"));
        let mut state = State::fresh(&p, S);
        let (units, until) = lease(&p, &mut state, S + 100, 1, 10, 10 * S);
        assert_eq!((units, until), (6, 2 * S), "{a}: 99 left, a sixteenth is 6");
        assert_eq!(remaining(&p, &state, S + 200), 93, "{a}");
        assert_eq!(give_back(&p, &mut state, S + 200, 4, until), 4, "{a}");
        assert_eq!(remaining(&p, &state, S + 200), 97, "{a}");
        // Never below zero: only what the counter holds goes back.
        assert_eq!(give_back(&p, &mut state, S + 300, 50, until), 3, "{a}");
        assert_eq!(remaining(&p, &state, S + 300), 100, "{a}");
        // Once the window moved (the lease ended with it), nothing goes
        // back, and the previous window's count stays as it was.
        let (units, until) = lease(&p, &mut state, S + 400, 10, 10, 10 * S);
        assert_eq!(units, 5, "{a}");
        let moved = state.clone();
        assert_eq!(give_back(&p, &mut state, 2 * S, units, until), 0, "{a}");
        assert_eq!(give_back(&p, &mut state, 2 * S + 1, units, until), 0, "{a}");
        assert_eq!(state, moved, "{a}");
        // A lease whose end is not within the counter's window (forged,
        // or of an earlier window) takes nothing back.
        let mut state = moved;
        assert_eq!(
            give_back(&p, &mut state, S + 500, 5, S),
            0,
            "{a}: ended before it"
        );
        assert_eq!(
            give_back(&p, &mut state, S + 500, 5, 3 * S),
            0,
            "{a}: beyond it"
        );
        assert_eq!(
            give_back(&p, &mut state, S + 500, 0, 2 * S),
            0,
            "{a}: nothing held"
        );
    }
}

#[test]
fn a_sliding_window_gives_back_to_the_current_count_never_the_previous() {
    let p = policy("sliding_window 100/1s");
    let mut state = State::fresh(&p, 0);
    assert!(decide(&p, &mut state, 0, 50, Mode::Consume).allowed);
    // A quarter into the next window, 3/4 of the previous 50 still count.
    let (units, until) = lease(&p, &mut state, S + S / 4, 1, 10, S);
    assert_eq!(
        (units, until),
        (3, 2 * S),
        "62 left before the lease, 61 after its cost"
    );
    assert_eq!(give_back(&p, &mut state, S + S / 2, units, until), 3);
    match state {
        State::SlidingWindow { start, prev, curr } => assert_eq!((start, prev, curr), (S, 50, 1)),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn a_clock_stepping_back_gives_back_to_the_window_the_units_were_charged_in() {
    for a in ["fixed_window", "sliding_window"] {
        let p = policy(&format!("{a} 100/1s"));
        let mut state = State::fresh(&p, S);
        let (units, until) = lease(&p, &mut state, S + 100, 1, 10, 10 * S);
        assert_eq!((units, until), (6, 2 * S), "{a}");
        // Back into the previous window: the state still counts the window
        // it was charged in, and that is where the units go back.
        assert_eq!(give_back(&p, &mut state, S / 2, units, until), units, "{a}");
        assert_eq!(remaining(&p, &state, S + 100), 99, "{a}");
        // The state moved on to the next window, then the clock stepped
        // back inside the lease's window: the counter is another window's.
        let (units, until) = lease(&p, &mut state, S + 200, 1, 10, 10 * S);
        assert!(decide(&p, &mut state, 2 * S + 100, 1, Mode::Consume).allowed);
        let moved = state.clone();
        assert_eq!(give_back(&p, &mut state, S + 300, units, until), 0, "{a}");
        assert_eq!(state, moved, "{a}");
        // Read back there, the lease ends with the window the state holds.
        assert_eq!(lease_until(&p, &state, S + 300), 3 * S, "{a}");
    }
}

#[test]
fn a_bucket_stepped_back_leases_until_it_would_be_full_from_its_last_measure() {
    for a in ["token_bucket", "gcra"] {
        let p = policy(&format!("{a} 10/1s burst 10"));
        let mut state = State::fresh(&p, 10 * S);
        assert!(decide(&p, &mut state, 10 * S, 2, Mode::Consume).allowed);
        // Two tokens missing at 10 s: full at 10.2 s, however far back the
        // clock stepped — never earlier.
        assert_eq!(lease_until(&p, &state, 5 * S), 10 * S + 200_000, "{a}");
    }
}

#[test]
fn a_state_of_another_algorithm_reads_as_fresh_and_takes_nothing_back() {
    let window = policy("fixed_window 10/1s");
    let bucket = policy("token_bucket 10/1s burst 10");
    let mut bucket_state = State::fresh(&bucket, 0);
    assert!(decide(&bucket, &mut bucket_state, 0, 5, Mode::Consume).allowed);
    // Under the window policy, the bucket's state is a fresh window.
    assert_eq!(lease_until(&window, &bucket_state, S / 2), S);
    let before = bucket_state.clone();
    assert_eq!(give_back(&window, &mut bucket_state, S / 2, 3, S), 0);
    assert_eq!(bucket_state, before);
    // Under the bucket policy, a window's state is a full bucket.
    let mut window_state = State::fresh(&window, 0);
    assert!(decide(&window, &mut window_state, 0, 5, Mode::Consume).allowed);
    assert_eq!(lease_until(&bucket, &window_state, S / 2), S / 2);
    let before = window_state.clone();
    assert_eq!(give_back(&bucket, &mut window_state, S / 2, 3, S), 0);
    assert_eq!(window_state, before);
}

#[test]
fn a_window_changed_under_a_live_key_takes_back_only_into_a_window_holding_the_lease() {
    for a in ["fixed_window", "sliding_window"] {
        let old = policy(&format!("{a} 10/1s"));
        let mut state = State::fresh(&old, S);
        let (units, until) = lease(&old, &mut state, S + 100, 1, 10, 10 * S);
        assert_eq!((units, until), (1, 2 * S), "{a}: 9 left, at least one unit");
        // A longer period: the count falls in the window [0, 2 s), which
        // holds the whole lease, but a stored start is proof that the
        // counter still holds the lease only in the lease's own window (a
        // start written under another period can merely overlap it, after
        // the counter was emptied): nothing goes back, which costs a unit
        // of utilisation, never exactness.
        let longer = policy(&format!("{a} 20/2s"));
        let mut changed = state.clone();
        assert_eq!(
            give_back(&longer, &mut changed, S + 200, units, until),
            0,
            "{a}"
        );
        assert_eq!(remaining(&longer, &changed, S + 200), 18, "{a}");
        // A shorter period: the count falls in [1 s, 1.5 s), which ends
        // before the lease: the counter is no longer the one the lease was
        // charged to, and takes nothing back.
        let shorter = policy(&format!("{a} 10/500ms"));
        let mut changed = state.clone();
        assert_eq!(
            give_back(&shorter, &mut changed, S + 200, units, until),
            0,
            "{a}"
        );
        assert_eq!(changed, state, "{a}");
        // A lower limit, same period: the counter is the lease's; it goes back.
        let lower = policy(&format!("{a} 2/1s"));
        let mut changed = state.clone();
        assert_eq!(
            give_back(&lower, &mut changed, S + 200, units, until),
            1,
            "{a}"
        );
        assert_eq!(remaining(&lower, &changed, S + 200), 1, "{a}");
    }
}

#[test]
fn lease_size_shrinks_to_single_units_near_the_limit() {
    assert_eq!(lease_size(10, 0), 0, "nothing remains");
    assert_eq!(lease_size(0, 1_000), 0, "nothing wanted");
    for remaining in 1..2 * LEASE_SHARE {
        assert_eq!(lease_size(10, remaining), 1, "{remaining} remaining");
    }
    assert_eq!(lease_size(10, 2 * LEASE_SHARE), 2);
    assert_eq!(lease_size(10, 2 * LEASE_SHARE - 1), 1);
    assert_eq!(lease_size(10, 160), 10);
    assert_eq!(lease_size(10, 159), 9);
    assert_eq!(lease_size(10, u64::MAX), 10);
    assert_eq!(lease_size(u64::MAX, u64::MAX), u64::MAX / LEASE_SHARE);
}

#[test]
fn a_window_leases_until_the_end_of_the_window_a_charge_lands_in() {
    for a in ["fixed_window", "sliding_window"] {
        let p = policy(&format!("{a} 10/1s"));
        let state = State::fresh(&p, S);
        assert_eq!(
            lease_until(&p, &state, S),
            2 * S,
            "{a}: at the window's start"
        );
        assert_eq!(
            lease_until(&p, &state, 2 * S - 1),
            2 * S,
            "{a}: at its last µs"
        );
        // A state of an earlier window: the charge lands in the current one.
        assert_eq!(lease_until(&p, &state, 3 * S + 5), 4 * S, "{a}");
    }
}

#[test]
fn a_bucket_changed_under_a_live_key_leases_until_full_under_the_policy_in_force() {
    // Six of ten tokens spent at 0: four left.
    let old = policy("token_bucket 10/1s burst 10");
    let mut state = State::fresh(&old, 0);
    assert!(decide(&old, &mut state, 0, 6, Mode::Consume).allowed);
    // A smaller bucket holds at most its own five tokens: one missing.
    let smaller = policy("token_bucket 10/1s burst 5");
    assert_eq!(lease_until(&smaller, &state, 0), 100_000);
    // A faster refill: six tokens missing at 20/s.
    let faster = policy("token_bucket 20/1s burst 10");
    assert_eq!(lease_until(&faster, &state, 0), 300_000);
    // A bucket already full under the new policy leases nothing.
    let tiny = policy("token_bucket 10/1s burst 3");
    assert_eq!(lease_until(&tiny, &state, 0), 0);
    // GCRA keeps its arrival time: full (not ahead) at 600 ms whatever
    // the burst, which is when its bucket stops losing nothing to the cap.
    let old = policy("gcra 10/1s burst 10");
    let mut state = State::fresh(&old, 0);
    assert!(decide(&old, &mut state, 0, 6, Mode::Consume).allowed);
    assert_eq!(
        lease_until(&policy("gcra 10/1s burst 5"), &state, 0),
        600_000
    );
    assert_eq!(
        lease_until(&policy("gcra 20/1s burst 10"), &state, 0),
        600_000
    );
}

// A give-back trusts a stored start equal to the lease's window to mean the
// counter still holds the lease. A shorter period (an instance not yet
// reloaded) started its own window over the lease's units; a charge under
// the longer period then wrote the longer window's start back, and the
// lease gave its 50 units back out of the shorter window's 100.
#[test]
fn a_give_back_never_returns_units_a_shorter_period_let_go() {
    for a in ["fixed_window", "sliding_window"] {
        let (long, short) = (
            policy(&format!("{a} 1000/1h")),
            policy(&format!("{a} 100/10s")),
        );
        let mut state = State::fresh(&long, 0);
        let now = 100 * S;
        let (units, until) = lease(&long, &mut state, now, 1, 50, S);
        assert_eq!(units, 50, "{a}");
        // Under 10 s the window [0, 10 s) is over: [100 s, 110 s) starts
        // empty, without the lease's units, and admits its 100.
        let admitted = (0..101)
            .filter(|_| decide(&short, &mut state, now + 1, 1, Mode::Consume).allowed)
            .count();
        assert_eq!(admitted, 100, "{a}");
        assert!(decide(&long, &mut state, now + 2, 1, Mode::Consume).allowed);
        assert_eq!(
            give_back(&long, &mut state, now + 3, units, until),
            0,
            "{a}"
        );
        assert_eq!(remaining(&short, &state, now + 4), 0, "{a}");
    }
}
