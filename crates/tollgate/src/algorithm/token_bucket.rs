//! Token bucket: `burst` tokens, refilled at `limit` per `period`.
//!
//! The level is kept in scaled units (one token = `scaled_unit`, one
//! microsecond adds `scaled_rate`), so refill is exact at any request rate:
//! no fraction of a token is ever rounded away. The state records the unit
//! it was written in, so a policy changed under a live key reads it in
//! tokens (see [`super::rescale_down`]).

use super::{Computed, div_ceil, rescale_down};
use crate::{Mode, Policy};

pub(super) fn fresh_at(policy: &Policy, level: u64, last: u64) -> u64 {
    let full = policy.burst() * policy.scaled_unit();
    last + div_ceil(full.saturating_sub(level), policy.scaled_rate())
}

/// The level at `now`: refilled since `last`, capped at a full bucket.
pub(super) fn refill(policy: &Policy, level: u64, last: u64, now: u64) -> u64 {
    let full = policy.burst() * policy.scaled_unit();
    let missing = full.saturating_sub(level);
    let elapsed = now.saturating_sub(last);
    // Compare before multiplying: a long idle must not overflow.
    if elapsed >= div_ceil(missing, policy.scaled_rate()) {
        full
    } else {
        level + elapsed * policy.scaled_rate()
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
    // Tokens are kept, a fraction of one is dropped (never granted twice);
    // `refill` caps the level at the policy's own bucket.
    let stored = rescale_down(*level, *unit, policy);
    let current = refill(policy, stored, *last, now);
    let allowed = cost <= policy.burst() && cost * scaled <= current;
    let charged = allowed && mode == Mode::Consume;
    let after = if charged {
        current - cost * scaled
    } else {
        current
    };
    // The clock stepping back must not count the same time twice: the level
    // is known at `last`, and refills only from then.
    let stamp = (*last).max(now);
    if charged {
        (*level, *last, *unit) = (after, stamp, scaled);
    }
    Computed {
        allowed,
        remaining: after / scaled,
        fresh_at: fresh_at(policy, after, stamp),
        retry_at: stamp + div_ceil((cost * scaled).saturating_sub(current), rate),
        delay: 0,
    }
}
