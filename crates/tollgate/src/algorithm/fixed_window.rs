//! Fixed window: one counter per window `[k * period, (k + 1) * period)`.
//!
//! Windows are aligned to multiples of the period on the store's clock (Unix
//! time for Redis), so every instance agrees on where a window starts.

use super::Computed;
use crate::{Mode, Policy};

/// When a state whose stored start is `start` is fresh: the end of the
/// window holding that start (which, kept under a changed period, need not
/// be its first microsecond).
pub(super) fn fresh_at(start: u64, count: u64, period: u64) -> u64 {
    window_fresh_at(start - start % period, count, period)
}

/// [`fresh_at`] of a window's own start, already a multiple of `period`.
fn window_fresh_at(window: u64, count: u64, period: u64) -> u64 {
    if count == 0 { 0 } else { window + period }
}

pub(super) fn decide(
    policy: &Policy,
    start: &mut u64,
    count: &mut u64,
    now: u64,
    cost: u64,
    mode: Mode,
) -> Computed {
    let period = policy.period_us();
    // The count belongs to the window of this policy that holds its start:
    // the same window under the policy that wrote it, and under a changed
    // period the new window it falls in, so windows never overlap. A window
    // that has ended counts nothing. A window that starts after `now` (the
    // clock stepped back) is kept: forgetting it would re-grant.
    let held = *start - *start % period;
    let (window, used) = if now >= held + period {
        (now - now % period, 0)
    } else {
        (held, *count)
    };
    let allowed = used + cost <= policy.limit();
    let charged = allowed && mode == Mode::Consume;
    let used_after = if charged { used + cost } else { used };
    if charged {
        (*start, *count) = (super::stored_start(*start, window, period), used_after);
    }
    Computed {
        allowed,
        // Saturating: a store may hold a count made under a larger limit.
        remaining: policy.limit().saturating_sub(used_after),
        fresh_at: window_fresh_at(window, used_after, period),
        // The next window starts empty: any cost up to the limit fits.
        retry_at: window + period,
        delay: 0,
    }
}
