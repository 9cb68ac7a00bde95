//! Leaky bucket as a queue: capacity `burst`, drained at `limit` per
//! `period`. While the queue has room a request is accepted and told how
//! long to wait (the time for the units ahead of it to drain); when it is
//! full the request is denied and charged nothing.

use super::{Verdict, div_ceil};
use crate::Policy;

pub(super) fn fresh_at(policy: &Policy, level: u64, last: u64) -> u64 {
    if level == 0 {
        0
    } else {
        last + div_ceil(level, policy.scaled_rate())
    }
}

/// The level at `now`: drained since `last`, never below empty.
fn drain(policy: &Policy, level: u64, last: u64, now: u64) -> u64 {
    let elapsed = now.saturating_sub(last);
    // Compare before multiplying: a long idle must not overflow.
    if elapsed >= div_ceil(level, policy.scaled_rate()) {
        0
    } else {
        level - elapsed * policy.scaled_rate()
    }
}

pub(super) fn decide(
    policy: &Policy,
    level: &mut u64,
    last: &mut u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Verdict {
    let unit = policy.scaled_unit();
    let rate = policy.scaled_rate();
    let capacity = policy.burst() * unit;
    let current = drain(policy, *level, *last, now);
    let allowed = cost <= policy.burst() && current + cost * unit <= capacity;
    let charged = allowed && consume;
    let after = if charged {
        current + cost * unit
    } else {
        current
    };
    let stamp = (*last).max(now);
    if charged {
        (*level, *last) = (after, stamp);
    }
    Verdict {
        allowed,
        remaining: capacity.saturating_sub(after) / unit,
        fresh_at: fresh_at(policy, after, stamp),
        retry_at: now + div_ceil((current + cost * unit).saturating_sub(capacity), rate),
        delay: if allowed { div_ceil(current, rate) } else { 0 },
    }
}
