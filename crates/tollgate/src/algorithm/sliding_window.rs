//! Sliding window counter: the previous window's count, weighted by the part
//! of it that the sliding window `(now - period, now]` still overlaps, plus
//! the current window's count.
//!
//! All comparisons are multiplied through by the period so that they stay in
//! integers: the request is allowed when
//! `prev * (period - elapsed) + (curr + cost) * period <= limit * period`.

use super::Computed;
use crate::{Mode, Policy};

/// When a state whose stored start is `start` is fresh, from the window
/// holding that start (which, kept under a changed period, need not be its
/// first microsecond).
pub(super) fn fresh_at(start: u64, prev: u64, curr: u64, period: u64) -> u64 {
    window_fresh_at(start - start % period, prev, curr, period)
}

/// [`fresh_at`] of a window's own start, already a multiple of `period`.
fn window_fresh_at(window: u64, prev: u64, curr: u64, period: u64) -> u64 {
    if curr > 0 {
        window + 2 * period
    } else if prev > 0 {
        window + period
    } else {
        0
    }
}

/// The counters as seen at `now`: `(window start, prev, curr)`.
///
/// The counts belong to the window of this policy that holds the stored
/// start: the same window under the policy that wrote them, and under a
/// changed period the new window they fall in. Counts are read as at most
/// the limit: a count written under a larger limit means a full window, and
/// the cap keeps the arithmetic below 2^53.
pub(super) fn normalize(
    start: u64,
    prev: u64,
    curr: u64,
    now: u64,
    policy: &Policy,
) -> (u64, u64, u64) {
    let (period, limit) = (policy.period_us(), policy.limit());
    let held = start - start % period;
    if now < held + period {
        // Same window, or the clock stepped back: keep what was counted.
        (held, prev.min(limit), curr.min(limit))
    } else if now < held + 2 * period {
        (held + period, curr.min(limit), 0)
    } else {
        (now - now % period, 0, 0)
    }
}

pub(super) fn decide(
    policy: &Policy,
    start: &mut u64,
    prev: &mut u64,
    curr: &mut u64,
    now: u64,
    cost: u64,
    mode: Mode,
) -> Computed {
    let period = policy.period_us();
    let limit = policy.limit();
    let (window, p, c) = normalize(*start, *prev, *curr, now, policy);
    let elapsed = now.saturating_sub(window);
    // prev's weight: the part of the previous window still inside the slide.
    let weighted_prev = p * (period - elapsed);
    let budget = limit * period;
    let allowed = cost <= limit && weighted_prev + (c + cost) * period <= budget;
    let charged = allowed && mode == Mode::Consume;
    let c_after = if charged { c + cost } else { c };
    if charged {
        (*start, *prev, *curr) = (super::stored_start(*start, window, period), p, c_after);
    }
    let remaining = budget.saturating_sub(weighted_prev + c_after * period) / period;
    Computed {
        allowed,
        remaining,
        fresh_at: window_fresh_at(window, p, c_after, period),
        retry_at: retry_at(window, p, c, period, limit, cost),
        delay: 0,
    }
}

/// The earliest instant at which `cost` fits, if nothing else is admitted.
/// The estimate only decreases with time (and is continuous at the window
/// edge), so this is the first instant the inequality holds.
fn retry_at(window: u64, prev: u64, curr: u64, period: u64, limit: u64, cost: u64) -> u64 {
    // In the current window: prev * (period - e) <= room * period.
    // The smallest e is `period - floor(room * period / prev)`; no `prev`
    // means nothing decays in this window.
    if let Some(room) = limit.checked_sub(curr + cost) {
        if let Some(slack) = (room * period).checked_div(prev) {
            let e = period - slack.min(period);
            if e < period {
                return window + e;
            }
        }
    }
    // In the next window, where the current count becomes the previous one
    // (an empty current window leaves nothing to wait for).
    let room = limit.saturating_sub(cost);
    let e = (room * period)
        .checked_div(curr)
        .map_or(0, |slack| period - slack.min(period));
    window + period + e
}
