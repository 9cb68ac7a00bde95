//! Reservations: a cost charged up front as an estimate, settled later at
//! the actual cost.
//!
//! Settling gives back what the estimate charged too much with
//! [`give_back`](super::give_back), under the same rule as a lease's unspent
//! units (a window's counter, while the window the estimate was charged in
//! lasts; a bucket forfeits), and charges what it charged too little with
//! [`overdraw`], the one function here, which has a Lua twin in the Redis
//! store. `docs/RESERVATIONS.md` argues why the two together keep a policy
//! within its limit plus one overdraft.

use super::{State, div_ceil, gcra, rescale_down, token_bucket};
use crate::{Algorithm, Policy};

/// Charges up to `units` more to `state` at `now`, whether or not they fit:
/// the part of a settled cost its estimate did not cover. At most what
/// remains plus `max_overdraft` is charged, counting any debt an earlier
/// overdraft left, so a policy never owes more than `max_overdraft`; the
/// rest is not charged (the caller reports it as unpaid). Returns the units
/// charged.
///
/// What owing means, per algorithm:
/// - `fixed_window`: the window's counter goes past the limit; the window
///   admits nothing more until it ends. Debt ends with the window.
/// - `sliding_window`: the current window's counter goes past the limit;
///   nothing more is admitted in this window, and the next one sees a full
///   previous window (a check reads a count past the limit as the limit;
///   an overdraft counts the debt). At every instant the weighted count
///   stays within the limit plus `max_overdraft`.
/// - `token_bucket`: the bucket goes below empty: refill pays the debt
///   first (held as an empty bucket whose refill starts later).
/// - `gcra`: the theoretical arrival time moves further ahead.
///
/// `max_overdraft` is at most [`Policy::overdraft_cap`] (callers use
/// [`Policy::max_overdraft`]), which keeps every intermediate value below
/// 2^53. `sliding_log` and `leaky_bucket` take nothing (they cannot be
/// reserved). A state of another algorithm than the policy's is replaced
/// by a fresh one first, as [`decide`](super::decide) does.
///
/// ```
/// use tollgate::Mode;
/// use tollgate::algorithm::{State, decide, overdraw};
/// let policy: tollgate::Policy = "fixed_window 100/s".parse().unwrap();
/// let mut state = State::fresh(&policy, 0);
/// decide(&policy, &mut state, 0, 90, Mode::Consume);
/// // 10 remain; an overdraft of up to 25 more is allowed: 35 of 50 charged.
/// assert_eq!(overdraw(&policy, &mut state, 0, 50, 25), 35);
/// assert_eq!(overdraw(&policy, &mut state, 0, 5, 25), 0); // already owes 25
/// assert!(!decide(&policy, &mut state, 999_999, 1, Mode::Peek).allowed);
/// assert!(decide(&policy, &mut state, 1_000_000, 1, Mode::Peek).allowed);
/// ```
pub fn overdraw(
    policy: &Policy,
    state: &mut State,
    now: u64,
    units: u64,
    max_overdraft: u64,
) -> u64 {
    if units == 0 || !can_reserve(policy.algorithm()) {
        return 0;
    }
    if state.algorithm() != policy.algorithm() {
        // As `decide` does: a state of another algorithm means nothing here.
        *state = State::fresh(policy, now);
    }
    let max_overdraft = max_overdraft.min(policy.overdraft_cap());
    let p = policy.period_us();
    match state {
        State::FixedWindow { start, count } => {
            let held = *start - *start % p;
            let (window, used) = if now >= held + p {
                (now - now % p, 0)
            } else {
                (held, *count)
            };
            let charged = units.min((policy.limit() + max_overdraft).saturating_sub(used));
            if charged > 0 {
                (*start, *count) = (super::stored_start(*start, window, p), used + charged);
            }
            charged
        }
        State::SlidingWindow { start, prev, curr } => {
            // The counts as they are, up to a full overdraft: `decide` reads
            // a count past the limit as the limit (a full window), but a
            // debt already owed must count here, or a second overdraft in
            // the window would be charged as if the first had never been.
            // `overdraft_cap` keeps `2 x (limit + max_overdraft) x period`
            // below 2^53.
            let cap = policy.limit() + max_overdraft;
            let held = *start - *start % p;
            let (window, prev_now, curr_now) = if now < held + p {
                (held, *prev, *curr)
            } else if now < held + 2 * p {
                (held + p, *curr, 0)
            } else {
                (now - now % p, 0, 0)
            };
            let (prev_now, curr_now) = (prev_now.min(cap), curr_now.min(cap));
            let elapsed = now.saturating_sub(window);
            // Multiplied through by the period, as `decide` compares.
            let weighted = prev_now * (p - elapsed.min(p)) + curr_now * p;
            let room = (cap * p).saturating_sub(weighted) / p;
            let charged = units.min(room);
            if charged > 0 {
                (*start, *prev, *curr) = (
                    super::stored_start(*start, window, p),
                    prev_now,
                    curr_now + charged,
                );
            }
            charged
        }
        State::TokenBucket { level, last, unit } => {
            let scaled = policy.scaled_unit();
            let rate = policy.scaled_rate();
            let current =
                token_bucket::refill(policy, rescale_down(*level, *unit, policy), *last, now);
            // An empty bucket whose refill starts after now owes what that
            // refill will pay first (counted at most past a full overdraft,
            // beyond which nothing more is charged anyway).
            let owed = if current == 0 && *last > now {
                let cap = div_ceil((max_overdraft + 1) * scaled, rate) + 1;
                (*last - now).min(cap) * rate
            } else {
                0
            };
            let allowance = (current + max_overdraft * scaled).saturating_sub(owed);
            let charged = units.min(allowance / scaled);
            if charged == 0 {
                return 0;
            }
            let stamp = (*last).max(now);
            let need = charged * scaled;
            (*level, *last, *unit) = if need <= current {
                (current - need, stamp, scaled)
            } else {
                // Below empty: the refill that pays the shortfall starts later.
                (0, stamp + div_ceil(need - current, rate), scaled)
            };
            charged
        }
        State::Gcra {
            tat_us,
            tat_frac,
            rate,
        } => {
            let scaled = policy.scaled_unit();
            let (stored_us, stored_frac) = gcra::as_read(policy, *tat_us, *tat_frac, *rate);
            // How far ahead the TAT is. A TAT past a full overdraft leaves
            // nothing to charge: decided before multiplying, so every
            // product stays below 2^53.
            let owed_max = (policy.burst() + max_overdraft) * scaled;
            let ahead_us = stored_us.saturating_sub(now);
            if ahead_us > div_ceil(owed_max, policy.scaled_rate()) {
                return 0;
            }
            let before = if stored_us >= now {
                ahead_us * policy.scaled_rate() + stored_frac
            } else {
                0
            };
            let allowance = ((policy.burst() + max_overdraft) * scaled).saturating_sub(before);
            let charged = units.min(allowance / scaled);
            if charged > 0 {
                let after = before + charged * scaled;
                let (whole, frac) = super::div_rem(after, policy.scaled_rate());
                (*tat_us, *tat_frac, *rate) = (now + whole, frac, policy.scaled_rate());
            }
            charged
        }
        State::SlidingLog(_) | State::LeakyBucket { .. } => 0,
    }
}

/// Whether a policy of `algorithm` can be reserved: `sliding_log` and
/// `leaky_bucket` cannot ([`PolicyError::ReserveNotSupported`](crate::PolicyError::ReserveNotSupported)
/// says why).
pub const fn can_reserve(algorithm: Algorithm) -> bool {
    !matches!(algorithm, Algorithm::SlidingLog | Algorithm::LeakyBucket)
}
