//! Edge cases of every algorithm, on explicit timelines.

use std::time::Duration;

use super::{State, decide};
use crate::{Algorithm, Decision, Mode, Policy};

const S: u64 = 1_000_000;

fn policy(text: &str) -> Policy {
    text.parse().expect("valid policy")
}

/// A key's timeline: one policy, one state.
struct Key {
    policy: Policy,
    state: State,
}

impl Key {
    fn new(text: &str) -> Self {
        let policy = policy(text);
        Key {
            state: State::fresh(&policy, 0),
            policy,
        }
    }
    fn check(&mut self, now: u64, cost: u64) -> Decision {
        decide(&self.policy, &mut self.state, now, cost, Mode::Consume)
    }
    fn peek(&mut self, now: u64, cost: u64) -> Decision {
        decide(&self.policy, &mut self.state, now, cost, Mode::Peek)
    }
    /// Admitted units out of `n` single-unit requests at `now`.
    fn burst(&mut self, now: u64, n: u64) -> u64 {
        (0..n).filter(|_| self.check(now, 1).allowed).count() as u64
    }
}

fn us(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_micros() as u64)
}

#[test]
fn fixed_window_admits_twice_the_limit_across_an_edge() {
    let mut k = Key::new("fixed_window 10/1s");
    // Ten at the very end of one window, ten at the start of the next:
    // twenty within two microseconds. This is the documented weakness.
    assert_eq!(k.burst(S - 1, 20), 10);
    assert_eq!(k.burst(S, 20), 10);
    let denied = k.check(S + 1, 1);
    assert!(!denied.allowed);
    assert_eq!(us(denied.retry_after), Some(2 * S - (S + 1)));
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.reset_after, Duration::from_micros(S - 1));
}

#[test]
fn fixed_window_windows_are_aligned_and_reset() {
    let mut k = Key::new("fixed_window 3/1s");
    let d = k.check(2 * S + 400_000, 2);
    assert_eq!((d.allowed, d.remaining, d.limit), (true, 1, 3));
    assert_eq!(d.reset_after, Duration::from_micros(600_000));
    let d = k.check(2 * S + 500_000, 2);
    assert!(!d.allowed, "cost above what remains is denied");
    assert_eq!(d.remaining, 1, "and charges nothing");
    assert!(k.check(2 * S + 500_000, 1).allowed);
    assert!(k.check(3 * S, 3).allowed, "the next window starts empty");
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let mut k = Key::new("sliding_window 10/1s");
    assert_eq!(k.burst(0, 10), 10);
    // A quarter into the next window, 3/4 of the previous one still counts:
    // 7.5 estimated, so two more fit (9.5) and a third does not (10.5).
    assert_eq!(k.burst(S + S / 4, 5), 2);
    let d = k.peek(S + S / 4, 1);
    assert!(!d.allowed);
    // 10 * (1 - e) + 2 + 1 <= 10  <=>  e >= 0.3 s into the window.
    assert_eq!(us(d.retry_after), Some(S + 300_000 - (S + S / 4)));
    assert!(!k.check(S + 299_999, 1).allowed);
    assert!(k.check(S + 300_000, 1).allowed);
}

#[test]
fn sliding_window_retry_can_fall_in_the_next_window() {
    let mut k = Key::new("sliding_window 4/1s");
    assert_eq!(k.burst(S / 2, 4), 4);
    // The current window is full: nothing fits until the next one, where the
    // four count as `prev`; cost 2 needs 4 * (1 - e) + 2 <= 4, e >= 0.5 s.
    let d = k.peek(S / 2, 2);
    assert_eq!(us(d.retry_after), Some(S + S / 2 - S / 2));
    assert!(!k.peek(S + S / 2 - 1, 2).allowed);
    assert!(k.peek(S + S / 2, 2).allowed);
    // A cost equal to the limit has to wait until the four no longer count.
    let d = k.peek(S / 2, 4);
    assert_eq!(us(d.retry_after), Some(2 * S - S / 2));
}

#[test]
fn sliding_log_is_exact_over_any_window() {
    let mut k = Key::new("sliding_log 3/1s");
    assert!(k.check(100, 1).allowed);
    assert!(k.check(500_000, 2).allowed);
    let d = k.check(999_999, 1);
    assert!(!d.allowed);
    // The first unit expires at 100 + 1 s.
    assert_eq!(us(d.retry_after), Some(S + 100 - 999_999));
    assert!(!k.check(S + 99, 1).allowed);
    assert!(k.check(S + 100, 1).allowed);
    // Cost 2 needs the pair admitted at 0.5 s to expire.
    let d = k.peek(S + 200, 2);
    assert_eq!(us(d.retry_after), Some(S + 500_000 - (S + 200)));
    // Fresh once the newest entry has expired.
    assert_eq!(
        d.reset_after,
        Duration::from_micros(2 * S + 100 - (S + 200))
    );
}

#[test]
fn token_bucket_bursts_then_refills_at_the_rate() {
    let mut k = Key::new("token_bucket 10/1s burst 20");
    assert_eq!(k.burst(0, 25), 20);
    let d = k.peek(0, 1);
    assert_eq!(us(d.retry_after), Some(100_000));
    assert_eq!(
        d.reset_after,
        Duration::from_secs(2),
        "empty to full takes 20 / 10 per s"
    );
    assert!(!k.check(99_999, 1).allowed);
    assert!(k.check(100_000, 1).allowed);
    // After a long idle the bucket is full, not more.
    assert_eq!(k.burst(1_000 * S, 25), 20);
}

#[test]
fn refill_is_exact_at_any_request_rate() {
    // 3 per second: one token every 333 333.3 µs. Polling every microsecond
    // must not lose the fractions: exactly 3 tokens per second over 10 s.
    for text in [
        "token_bucket 3/1s burst 1",
        "gcra 3/1s burst 1",
        "leaky_bucket 3/1s burst 1",
    ] {
        let mut k = Key::new(text);
        let mut admitted = 0;
        let mut now = 0;
        while now < 10 * S {
            if k.check(now, 1).allowed {
                admitted += 1;
            }
            now += 7; // a prime step, so polls never line up with refills
        }
        assert_eq!(admitted, 30, "{text}");
    }
}

#[test]
fn gcra_matches_a_token_bucket() {
    let mut gcra = Key::new("gcra 7/3s burst 4");
    let mut bucket = Key::new("token_bucket 7/3s burst 4");
    let mut now = 0;
    for i in 0..2_000u64 {
        now += (i * 7919) % 611_111;
        let cost = 1 + i % 3;
        assert_eq!(
            gcra.check(now, cost),
            bucket.check(now, cost),
            "at {now}, cost {cost}"
        );
    }
}

#[test]
fn leaky_bucket_shapes_then_denies_when_full() {
    let mut k = Key::new("leaky_bucket 10/1s burst 3");
    let waits: Vec<_> = (0..4).map(|_| k.check(0, 1)).collect();
    assert_eq!(waits[0].delay, Duration::ZERO);
    assert_eq!(waits[1].delay, Duration::from_millis(100));
    assert_eq!(waits[2].delay, Duration::from_millis(200));
    assert!(!waits[3].allowed, "the queue holds three");
    assert_eq!(us(waits[3].retry_after), Some(100_000));
    assert_eq!(waits[2].reset_after, Duration::from_millis(300));
    let d = k.check(150_000, 1);
    assert!(d.allowed);
    assert_eq!(d.delay, Duration::from_millis(150), "1.5 units still ahead");
}

#[test]
fn costs_above_the_capacity_are_denied_forever() {
    for algorithm in Algorithm::ALL {
        let text = if algorithm.has_burst() {
            format!("{algorithm} 5/1s burst 5")
        } else {
            format!("{algorithm} 5/1s")
        };
        let mut k = Key::new(&text);
        let d = k.check(0, u64::MAX);
        assert_eq!(
            (d.allowed, d.retry_after, d.remaining),
            (false, None, 5),
            "{text}: no overflow"
        );
        let d = k.check(0, 6);
        assert!(!d.allowed, "{text}");
        assert_eq!(d.retry_after, None, "{text}: never allowed");
        assert_eq!(d.remaining, 5, "{text}: nothing charged");
        assert!(k.check(0, 5).allowed, "{text}: exactly the capacity fits");
        let d = k.check(0, 1);
        assert_eq!(
            (d.allowed, d.remaining),
            (false, 0),
            "{text}: zero remaining"
        );
        assert!(d.retry_after.is_some(), "{text}");
    }
}

#[test]
fn peek_changes_nothing() {
    for algorithm in Algorithm::ALL {
        let mut k = Key::new(&format!("{algorithm} 4/1s"));
        assert!(k.check(10, 2).allowed);
        let before = k.state.clone();
        let d = k.peek(20, 1);
        assert_eq!(
            (d.allowed, d.remaining),
            (true, 2),
            "{algorithm}: a peek reports what remains now"
        );
        assert_eq!(k.state, before, "{algorithm}");
    }
}

#[test]
fn a_clock_stepping_back_never_regrants() {
    for algorithm in Algorithm::ALL {
        let mut k = Key::new(&format!("{algorithm} 4/1s"));
        assert_eq!(k.burst(5 * S, 4), 4, "{algorithm}");
        assert!(!k.check(5 * S - 100_000, 1).allowed, "{algorithm}");
    }
}

#[test]
fn fresh_at_is_exactly_when_the_state_is_fresh_again() {
    // Drained bucket of 100 refilling at 10/s: full again after 10 s, not 2 s.
    let p = policy("token_bucket 10/1s burst 100");
    let mut k = Key {
        state: State::fresh(&p, 0),
        policy: p,
    };
    assert_eq!(k.burst(0, 100), 100);
    assert_eq!(k.state.fresh_at(&p), 10 * S);
    let p = policy("gcra 10/1s burst 100");
    let mut k = Key {
        state: State::fresh(&p, 0),
        policy: p,
    };
    assert_eq!(k.burst(0, 100), 100);
    assert_eq!(k.state.fresh_at(&p), 10 * S);
}

/// One key's state read under a sequence of policies of one algorithm.
fn changed(from: &str, spent: u64, to: &str) -> (Policy, State) {
    let old = policy(from);
    let mut state = State::fresh(&old, 0);
    for _ in 0..spent {
        assert!(
            decide(&old, &mut state, 0, 1, Mode::Consume).allowed,
            "{from}"
        );
    }
    (policy(to), state)
}

/// Admitted single units at `now`, out of `n`.
fn admitted(policy: &Policy, state: &mut State, now: u64, n: u64) -> u64 {
    (0..n)
        .filter(|_| decide(policy, state, now, 1, Mode::Consume).allowed)
        .count() as u64
}

// Issue 12, item 1: the level was read in the new policy's scaled units,
// and 8 of 8 were admitted where 1 token was left.
#[test]
fn a_token_bucket_keeps_its_tokens_when_the_limit_changes() {
    let (new, mut state) = changed("token_bucket 7/1d burst 7", 6, "token_bucket 8/1d burst 8");
    assert_eq!(admitted(&new, &mut state, 0, 10), 1);
    // And the reverse, which under-admitted: 2 tokens left of 8, read as 2 of 7.
    let (new, mut state) = changed("token_bucket 8/1d burst 8", 6, "token_bucket 7/1d burst 7");
    assert_eq!(admitted(&new, &mut state, 0, 10), 2);
}

// Issue 12, item 1: 8 queued under 8/1d read under 7/1d admitted 6 at once.
#[test]
fn a_leaky_bucket_keeps_its_queue_clamped_to_the_new_capacity() {
    let (new, mut state) = changed("leaky_bucket 8/1d burst 8", 8, "leaky_bucket 7/1d burst 7");
    assert_eq!(admitted(&new, &mut state, 0, 10), 0);
    // 3 queued of 4/1s, read under 8/1s: 5 more fit, draining at the new rate.
    let (new, mut state) = changed("leaky_bucket 4/1s", 3, "leaky_bucket 8/1s");
    assert_eq!(admitted(&new, &mut state, 0, 10), 5);
    assert_eq!(admitted(&new, &mut state, 125_000, 10), 1);
}

// Issue 12, item 1: a drained `1/1s burst 2` read under `burst 100` admitted
// 100 after 2.05 s; the tokens it had (none) plus 2.05 s of refill is 2.
#[test]
fn a_raised_burst_fills_at_the_refill_rate_not_at_once() {
    let (new, mut state) = changed(
        "token_bucket 1/1s burst 2",
        2,
        "token_bucket 1/1s burst 100",
    );
    assert_eq!(admitted(&new, &mut state, 0, 5), 0);
    assert_eq!(admitted(&new, &mut state, 2_050_000, 200), 2);
}

#[test]
fn gcra_keeps_its_arrival_time_when_the_policy_changes() {
    // 4 of 4/1s spent: the TAT is 1 s ahead. Under 4/1m (burst 4, one unit
    // every 15 s) that is 1 s of a 60 s tolerance: 3 more fit now.
    let (new, mut state) = changed("gcra 4/1s", 4, "gcra 4/1m");
    assert_eq!(admitted(&new, &mut state, 0, 10), 3);
    // Under 4/100ms the TAT is 900 ms past the tolerance: nothing until then.
    let (new, mut state) = changed("gcra 4/1s", 4, "gcra 4/100ms");
    let denied = decide(&new, &mut state, 0, 1, Mode::Peek);
    assert!(!denied.allowed);
    assert_eq!(us(denied.retry_after), Some(1_000_000 - 100_000 + 25_000));
    // A fraction of a microsecond under 3/1s rounds the TAT up under 4/1s.
    let (new, state) = changed("gcra 3/1s", 1, "gcra 4/1s");
    assert_eq!(state.fresh_at(&new), 333_334);
}

#[test]
fn windows_and_logs_keep_their_counts_when_the_policy_changes() {
    // A daily quota raised from 1000 to 1001 leaves one more, not 1001.
    for a in ["fixed_window", "sliding_window", "sliding_log"] {
        let limit = if a == "sliding_log" { 100 } else { 1000 };
        let (new, mut state) = changed(
            &format!("{a} {limit}/1d"),
            limit,
            &format!("{a} {}/1d", limit + 1),
        );
        assert_eq!(admitted(&new, &mut state, 5, 10), 1, "{a}");
    }
    // A lengthened period keeps the count for the new, longer window.
    let (new, mut state) = changed("sliding_log 5/1s", 5, "sliding_log 5/1h");
    let denied = decide(&new, &mut state, 1_100_000, 1, Mode::Consume);
    assert!(!denied.allowed);
    assert_eq!(us(denied.retry_after), Some(3_600_000_000 - 1_100_000));
    let (new, mut state) = changed("fixed_window 4/1s", 4, "fixed_window 4/1m");
    assert_eq!(admitted(&new, &mut state, 1_500_000, 5), 0);
    assert_eq!(admitted(&new, &mut state, 60_000_000, 5), 4);
    // A limit lowered below the count denies until the window moves on.
    let (new, mut state) = changed("sliding_window 4/1s", 4, "sliding_window 2/1s");
    assert_eq!(admitted(&new, &mut state, 0, 5), 0);
    assert!(state.fresh_at(&new) == 2_000_000);
}

#[test]
fn an_algorithm_change_starts_fresh() {
    let (new, mut state) = changed("fixed_window 4/1s", 4, "sliding_log 4/1s");
    assert_eq!(admitted(&new, &mut state, 0, 10), 4);
}

// Issue 12, item 6: after the clock stepped back 5 s, the buckets said 1 s
// where the truth (and gcra) is 6 s.
#[test]
fn retry_after_counts_the_time_the_clock_stepped_back() {
    for a in ["token_bucket", "gcra", "leaky_bucket"] {
        let p = policy(&format!("{a} 1/1s burst 1"));
        let t0 = 10 * S;
        let mut state = State::fresh(&p, t0);
        assert!(decide(&p, &mut state, t0, 1, Mode::Consume).allowed);
        let d = decide(&p, &mut state, t0 - 5 * S, 1, Mode::Consume);
        assert!(!d.allowed, "{a}");
        assert_eq!(us(d.retry_after), Some(6 * S), "{a}");
    }
}

// Two instances mid-reload decide one key under two periods (`10/10s`
// still, `1000/1h` already). A charge under the hour wrote the hour's
// start over the 10 s window's, so the next check under 10 s found its
// window over and started it again: ten more for every charge under the
// hour, 50 in one 10 s window here. The stored start stays while the count
// carries, so the 10 s window keeps every unit charged in it.
#[test]
fn a_longer_period_never_moves_the_stored_window_back() {
    for a in ["fixed_window", "sliding_window"] {
        let (old, new) = (
            policy(&format!("{a} 10/10s")),
            policy(&format!("{a} 1000/1h")),
        );
        let mut state = State::fresh(&old, 0);
        // Inside the 10 s window [100 s, 110 s), which does not start an hour.
        let t = 100 * S + S / 2;
        let mut admitted_old = 0;
        for round in 0..5 {
            admitted_old += admitted(&old, &mut state, t + round, 10);
            assert!(
                decide(&new, &mut state, t + round, 1, Mode::Consume).allowed,
                "{a}"
            );
        }
        assert_eq!(admitted_old, 10, "{a}");
        // The hour still counts everything charged in it.
        assert_eq!(
            decide(&new, &mut state, t + 5, 1, Mode::Peek).remaining,
            1000 - 15,
            "{a}"
        );
    }
}

// During a rolling reload (`10/10s` and `1000/1h` on one key) the hour
// counts only what was charged since the 10 s period last started a
// window: 1000 charged under the hour in a 10 s window before its first
// check under 10 s are forgotten when that check starts the window, and
// the hour admits 990 more in it. 2000 in one 10 s window, the bound
// `docs/ALGORITHMS.md` gives (the longer limit plus the larger limit).
#[test]
fn a_rolling_reload_admits_the_longer_limit_twice_in_a_shorter_window() {
    for a in ["fixed_window", "sliding_window"] {
        let (short, long) = (
            policy(&format!("{a} 10/10s")),
            policy(&format!("{a} 1000/1h")),
        );
        let mut state = State::fresh(&long, 0);
        // One 10 s window [100 s, 110 s), not an hour's first.
        let t = 100 * S;
        assert_eq!(admitted(&long, &mut state, t + 1, 1000), 1000, "{a}");
        assert_eq!(admitted(&short, &mut state, t + 2, 10), 10, "{a}");
        assert_eq!(admitted(&long, &mut state, t + 3, 1000), 990, "{a}");
    }
}

// Every period in force whose windows start inside a shorter window
// starts its count again: `10/7s` with `1000/9s` and `1000/10s` (9 s and
// 10 s windows start at 18 s and 20 s, inside [14 s, 21 s)).
#[test]
fn each_longer_window_starting_inside_a_shorter_one_starts_its_count_again() {
    for (a, want) in [("fixed_window", 28), ("sliding_window", 22)] {
        let (p7, p9, p10) = (
            policy(&format!("{a} 10/7s")),
            policy(&format!("{a} 1000/9s")),
            policy(&format!("{a} 1000/10s")),
        );
        let mut state = State::fresh(&p7, 14 * S);
        let mut own = admitted(&p7, &mut state, 14 * S, 10);
        assert!(
            decide(&p9, &mut state, 18 * S, 1, Mode::Consume).allowed,
            "{a}"
        );
        own += admitted(&p7, &mut state, 18 * S + 1, 10);
        assert!(
            decide(&p10, &mut state, 20 * S, 1, Mode::Consume).allowed,
            "{a}"
        );
        own += admitted(&p7, &mut state, 20 * S + 1, 10);
        assert_eq!(own, want, "{a}: admitted under 10/7s in [14 s, 21 s)");
    }
}
