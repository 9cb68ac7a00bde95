//! Edge cases of the lease functions, on explicit timelines. The property
//! test `tests/lease_exactness.rs` drives them through a simulated fleet.

use super::{State, decide, give_back, lease_size, lease_until};
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
