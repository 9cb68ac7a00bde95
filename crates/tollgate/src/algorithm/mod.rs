//! The six algorithms as pure step functions.
//!
//! No I/O, no clock: time is an argument, in integer microseconds. Every
//! function here has a Lua twin in the Redis store, and a differential test
//! requires both to decide identically, so the arithmetic is integer-only and
//! every intermediate value stays below 2^53 (guaranteed by [`Policy::new`]).
//!
//! Each algorithm follows the same shape: bring the stored state up to `now`
//! (without mutating it), decide, and commit the new state only when the
//! request is allowed and the caller consumes. A denied request never
//! changes state, so it never consumes quota.

mod fixed_window;
mod gcra;
mod leaky_bucket;
mod lease;
mod reserve;
mod sliding_log;
mod sliding_window;
mod token_bucket;

pub use lease::{LEASE_SHARE, give_back, lease_size, lease_until, lease_want};
pub use reserve::{can_reserve, overdraw};
pub use sliding_log::Log;

use std::time::Duration;

use crate::{Algorithm, Decision, Mode, Policy};

/// The state one key holds for one policy.
///
/// Fields are public so that other stores can persist them; their units are
/// documented per variant. Levels of the bucket algorithms are in scaled units
/// where one token is [`Policy::scaled_unit`] and one microsecond adds
/// [`Policy::scaled_rate`]: exact at any request rate. Each such state records
/// the unit (or rate) it was written in, so that a policy changed under a
/// live key reads it in absolute units (tokens, instants) rather than
/// misreading another policy's scale.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Units counted in the window starting at `start` (µs, a multiple of the period).
    FixedWindow {
        /// Start of the counted window.
        start: u64,
        /// Units admitted in it.
        count: u64,
    },
    /// Units counted in the window starting at `start` and in the one before.
    SlidingWindow {
        /// Start of the current window (a multiple of the period).
        start: u64,
        /// Units admitted in the previous window.
        prev: u64,
        /// Units admitted in the current window.
        curr: u64,
    },
    /// Every admitted request of the last period (boxed: it is the only
    /// state that is not a few integers, and keeps `State` small).
    SlidingLog(Box<Log>),
    /// Tokens (scaled) at instant `last`.
    TokenBucket {
        /// Scaled tokens in the bucket at `last`.
        level: u64,
        /// When `level` was measured.
        last: u64,
        /// The scaled unit `level` is counted in (one token).
        unit: u64,
    },
    /// The theoretical arrival time: `tat_us + tat_frac / rate` µs.
    Gcra {
        /// Whole microseconds of the TAT.
        tat_us: u64,
        /// The fraction of a microsecond, in `1 / rate` steps.
        tat_frac: u64,
        /// The scaled rate `tat_frac` is counted in.
        rate: u64,
    },
    /// Scaled units queued at instant `last`.
    LeakyBucket {
        /// Scaled units waiting in the queue at `last`.
        level: u64,
        /// When `level` was measured.
        last: u64,
        /// The scaled unit `level` is counted in (one queued unit).
        unit: u64,
    },
}

impl State {
    /// The state of a key never seen (or whose state has expired) at `now`.
    pub fn fresh(policy: &Policy, now: u64) -> State {
        let p = policy.period_us();
        match policy.algorithm() {
            Algorithm::FixedWindow => State::FixedWindow {
                start: now - now % p,
                count: 0,
            },
            Algorithm::SlidingWindow => State::SlidingWindow {
                start: now - now % p,
                prev: 0,
                curr: 0,
            },
            Algorithm::SlidingLog => State::SlidingLog(Box::default()),
            Algorithm::TokenBucket => State::TokenBucket {
                level: policy.burst() * policy.scaled_unit(),
                last: now,
                unit: policy.scaled_unit(),
            },
            Algorithm::Gcra => State::Gcra {
                tat_us: now,
                tat_frac: 0,
                rate: policy.scaled_rate(),
            },
            Algorithm::LeakyBucket => State::LeakyBucket {
                level: 0,
                last: now,
                unit: policy.scaled_unit(),
            },
        }
    }

    /// The algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            State::FixedWindow { .. } => Algorithm::FixedWindow,
            State::SlidingWindow { .. } => Algorithm::SlidingWindow,
            State::SlidingLog(_) => Algorithm::SlidingLog,
            State::TokenBucket { .. } => Algorithm::TokenBucket,
            State::Gcra { .. } => Algorithm::Gcra,
            State::LeakyBucket { .. } => Algorithm::LeakyBucket,
        }
    }

    /// The instant (µs) from which this state, as written by `policy`, is
    /// indistinguishable from a fresh one under `policy`: what its expiry
    /// ([`expires_at`]) is derived from. Never earlier (that would re-grant
    /// a burst early).
    pub fn fresh_at(&self, policy: &Policy) -> u64 {
        let p = policy.period_us();
        match *self {
            State::FixedWindow { start, count } => fixed_window::fresh_at(start, count, p),
            State::SlidingWindow { start, prev, curr } => {
                sliding_window::fresh_at(start, prev, curr, p)
            }
            State::SlidingLog(ref log) => log.fresh_at(p),
            State::TokenBucket { level, last, .. } => token_bucket::fresh_at(policy, level, last),
            State::Gcra {
                tat_us, tat_frac, ..
            } => gcra::fresh_at(tat_us, tat_frac),
            State::LeakyBucket { level, last, .. } => leaky_bucket::fresh_at(policy, level, last),
        }
    }
}

/// Decides whether `cost` units may be spent at `now`, and in
/// [`Mode::Consume`] when the answer is yes, charges them to `state`.
///
/// `state` may have been written under another policy of the same name (a
/// reload, an override): it is then read in absolute units — counts and log
/// entries as they are, a bucket's tokens (or queued units) clamped to the
/// new capacity, GCRA's arrival time — and nothing is rewritten unless the
/// request is charged. A `state` of another algorithm is replaced by a fresh
/// one. `cost` should be at least 1; the limiter enforces it. `degraded` is
/// always false here: stores and the limiter set it.
///
/// ```
/// use tollgate::Mode;
/// use tollgate::algorithm::{decide, State};
/// let policy: tollgate::Policy = "fixed_window 2/s".parse().unwrap();
/// let mut state = State::fresh(&policy, 0);
/// assert!(decide(&policy, &mut state, 0, 1, Mode::Consume).allowed);
/// assert!(decide(&policy, &mut state, 10, 1, Mode::Consume).allowed);
/// let third = decide(&policy, &mut state, 20, 1, Mode::Consume);
/// assert!(!third.allowed);
/// // Allowed again when the window ends, at 1 s.
/// assert_eq!(third.retry_after, Some(std::time::Duration::from_micros(1_000_000 - 20)));
/// ```
pub fn decide(policy: &Policy, state: &mut State, now: u64, cost: u64, mode: Mode) -> Decision {
    if state.algorithm() != policy.algorithm() {
        *state = State::fresh(policy, now);
    }
    // A cost above the capacity can never pass: report the state as it is
    // (a zero-cost look); `decision_from_parts` denies it. Deciding it here,
    // before any arithmetic, keeps `cost * unit` within bounds in every
    // algorithm below.
    let over = cost > policy.capacity();
    let (cost_used, mode) = if over { (0, Mode::Peek) } else { (cost, mode) };
    let verdict = match state {
        State::FixedWindow { start, count } => {
            fixed_window::decide(policy, start, count, now, cost_used, mode)
        }
        State::SlidingWindow { start, prev, curr } => {
            sliding_window::decide(policy, start, prev, curr, now, cost_used, mode)
        }
        State::SlidingLog(log) => log.decide(policy, now, cost_used, mode),
        State::TokenBucket { level, last, unit } => {
            token_bucket::decide(policy, (level, last, unit), now, cost_used, mode)
        }
        State::Gcra {
            tat_us,
            tat_frac,
            rate,
        } => gcra::decide(policy, (tat_us, tat_frac, rate), now, cost_used, mode),
        State::LeakyBucket { level, last, unit } => {
            leaky_bucket::decide(policy, (level, last, unit), now, cost_used, mode)
        }
    };
    decision_from_parts(
        policy,
        cost,
        verdict.allowed,
        verdict.remaining,
        verdict.fresh_at.saturating_sub(now),
        verdict.retry_at.saturating_sub(now),
        verdict.delay,
    )
}

/// Builds a [`Decision`] from an algorithm's raw outputs (microseconds
/// relative to now). Every store goes through this one function — the memory
/// store here, the Redis store with the numbers its Lua script returns — so
/// the shared rules live once: `retry_after` is `None` for an allowed request
/// and for a cost above the capacity, `delay` only for an allowed one.
pub fn decision_from_parts(
    policy: &Policy,
    cost: u64,
    allowed: bool,
    remaining: u64,
    reset_after_us: u64,
    retry_after_us: u64,
    delay_us: u64,
) -> Decision {
    let allowed = allowed && cost <= policy.capacity();
    Decision {
        allowed,
        limit: policy.capacity(),
        remaining,
        reset_after: Duration::from_micros(reset_after_us),
        retry_after: (!allowed && cost <= policy.capacity())
            .then(|| Duration::from_micros(retry_after_us)),
        delay: Duration::from_micros(if allowed { delay_us } else { 0 }),
        degraded: false,
    }
}

/// After an allowed, consumed request of `cost` that left less than `cost`
/// remaining, how long until another request of the same cost can pass if
/// nothing else happens: a lower bound, never later than the truth, so a
/// cache that denies until then never denies what the store would allow.
///
/// Known only from the decision's own fields, for the algorithms whose next
/// admission follows from them:
/// - `fixed_window`: exactly `reset_after` (the window's end);
/// - `gcra`, `token_bucket`, `leaky_bucket`: `reset_after` minus the time the
///   bucket takes to drain (refill) `capacity - cost` units, rounded up.
///   `reset_after` is a whole number of microseconds rounded up from the
///   scaled state, so this is exact when [`Policy::scaled_rate`] is 1 (a
///   whole number of microseconds per unit: `10/s`, `100/1m`, ...) and at
///   most 1 µs early otherwise.
///
/// `None` when the decision was denied, left room for another request of
/// `cost`, or comes from `sliding_window` or `sliding_log` (whose next
/// admission depends on state the fields do not carry). A peek's fields
/// describe the state *before* the request, so pass only consumed decisions.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Mode;
/// use tollgate::algorithm::{decide, next_allowed_after, State};
/// let policy: tollgate::Policy = "gcra 10/s burst 2".parse().unwrap();
/// let mut state = State::fresh(&policy, 0);
/// let first = decide(&policy, &mut state, 0, 1, Mode::Consume);
/// assert_eq!(next_allowed_after(&policy, 1, &first), None); // one left
/// let second = decide(&policy, &mut state, 0, 1, Mode::Consume);
/// let wait = next_allowed_after(&policy, 1, &second).unwrap();
/// assert_eq!(wait, Duration::from_millis(100)); // one emission interval
/// assert!(!decide(&policy, &mut state, 99_999, 1, Mode::Peek).allowed);
/// assert!(decide(&policy, &mut state, 100_000, 1, Mode::Peek).allowed);
/// ```
pub fn next_allowed_after(policy: &Policy, cost: u64, decision: &Decision) -> Option<Duration> {
    if !decision.allowed || decision.remaining >= cost || cost > policy.capacity() {
        return None;
    }
    let reset_us = crate::clock::micros(decision.reset_after);
    let wait_us = match policy.algorithm() {
        Algorithm::FixedWindow => reset_us,
        Algorithm::Gcra | Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            // The state is `X` scaled units from fresh, `reset_after` is
            // `ceil(X / rate)`, and the request passes once `X - slack`
            // units have gone, where `slack` is the room for the cost in a
            // fresh bucket: `ceil((X - slack) / rate) >= reset - ceil(slack / rate)`.
            let slack = (policy.capacity() - cost) * policy.scaled_unit();
            reset_us.saturating_sub(div_ceil(slack, policy.scaled_rate()))
        }
        Algorithm::SlidingWindow | Algorithm::SlidingLog => return None,
    };
    Some(Duration::from_micros(wait_us))
}

/// What an algorithm computes, as absolute instants in microseconds.
#[derive(Debug, Clone, Copy)]
struct Computed {
    allowed: bool,
    remaining: u64,
    /// Absolute instant at which the state (after this decision) is fresh.
    fresh_at: u64,
    /// Absolute instant at which the same request would be allowed.
    retry_at: u64,
    /// For shaping: microseconds to wait before proceeding.
    delay: u64,
}

/// The start a window algorithm stores when it charges `window` (the
/// window of `period` it decided in) over a stored `start`: `start` itself
/// while it lies in that window, else `window`. Under a changed period the
/// stored start need not be the window's start (a count made under a
/// shorter period, carried into a longer window); writing the longer
/// window's start over it would move it back, and a check under the
/// shorter period (another instance, mid-reload) would then find its own
/// window over and start it again with everything it had counted
/// forgotten. So a stored start only ever moves forward, to a later
/// window, which is what a give-back relies on (`lease::give_back`).
pub(crate) const fn stored_start(start: u64, window: u64, period: u64) -> u64 {
    if start - start % period == window {
        start
    } else {
        window
    }
}

/// When a state that becomes fresh at `fresh_at` (µs) may be dropped: the
/// first microsecond of the millisecond after `ceil(fresh_at / 1000)`.
///
/// This is Redis's expiry, reproduced: the Redis store sets a key to expire
/// at millisecond `ceil(fresh_at / 1000)` and Redis drops it once its clock
/// is past that millisecond. The memory store drops an entry at the same
/// instant, so both stores forget state at the same moment — which matters
/// when the state is read under a changed policy. Always after `fresh_at`.
///
/// ```
/// use tollgate::algorithm::expires_at;
/// assert_eq!(expires_at(1_000), 2_000);
/// assert_eq!(expires_at(1_001), 3_000);
/// ```
pub const fn expires_at(fresh_at: u64) -> u64 {
    (div_ceil(fresh_at, 1000) + 1) * 1000
}

/// A level counted in units of `from` (one token or queued unit), in the
/// policy's own scaled unit, keeping whole units only: what a bucket holds is
/// never read as more than it was. At most the policy's full bucket.
fn rescale_down(level: u64, from: u64, policy: &Policy) -> u64 {
    let to = policy.scaled_unit();
    if from == to {
        return level;
    }
    (level / from.max(1)).min(policy.burst()) * to
}

/// As [`rescale_down`], counting a fraction of a unit as whole: what a queue
/// holds is never read as less than it was.
fn rescale_up(level: u64, from: u64, policy: &Policy) -> u64 {
    let to = policy.scaled_unit();
    if from == to {
        return level;
    }
    div_ceil(level, from.max(1)).min(policy.burst()) * to
}

/// `ceil(a / b)` for `b > 0`. The divisor is a policy's scaled rate, which
/// is 1 for every limit that is a whole number of microseconds per unit
/// (`10/s`, `100/1m`): that case skips the division, the slowest
/// instruction of a decision.
#[inline]
const fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 1 { a } else { a.div_ceil(b) }
}

/// `(a / b, a % b)` for `b > 0`, skipping the division when `b` is 1 (see
/// [`div_ceil`]).
#[inline]
const fn div_rem(a: u64, b: u64) -> (u64, u64) {
    if b == 1 { (a, 0) } else { (a / b, a % b) }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lease_tests;

#[cfg(test)]
mod reserve_tests;
