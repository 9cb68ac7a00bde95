//! Leaky bucket as a queue: capacity `burst`, drained at `limit` per
//! `period`. While the queue has room a request is accepted and told how
//! long to wait (the time for the units ahead of it to drain); when it is
//! full the request is denied and charged nothing.
//!
//! The level is scaled as for the token bucket, and the state records the
//! unit it was written in (see [`super::rescale_up`]).

use super::{Computed, div_ceil, rescale_up};
use crate::{Mode, Policy};

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
    (level, last, unit): (&mut u64, &mut u64, &mut u64),
    now: u64,
    cost: u64,
    mode: Mode,
) -> Computed {
    let scaled = policy.scaled_unit();
    let rate = policy.scaled_rate();
    let capacity = policy.burst() * scaled;
    // Queued units are kept, a fraction of one counts whole (never admitted
    // twice), at most a full queue of the policy in force.
    let stored = rescale_up(*level, *unit, policy);
    let current = drain(policy, stored, *last, now);
    let allowed = cost <= policy.burst() && current + cost * scaled <= capacity;
    let charged = allowed && mode == Mode::Consume;
    let after = if charged {
        current + cost * scaled
    } else {
        current
    };
    // The queue drains only from `last`, also when the clock stepped back.
    let stamp = (*last).max(now);
    if charged {
        (*level, *last, *unit) = (after, stamp, scaled);
    }
    Computed {
        allowed,
        remaining: capacity.saturating_sub(after) / scaled,
        fresh_at: fresh_at(policy, after, stamp),
        retry_at: stamp + div_ceil((current + cost * scaled).saturating_sub(capacity), rate),
        delay: if allowed {
            div_ceil(current, rate) + (stamp - now)
        } else {
            0
        },
    }
}
