//! Token bucket: `burst` tokens, refilled at `limit` per `period`.
//!
//! The level is kept in scaled units (one token = `scaled_unit`, one
//! microsecond adds `scaled_rate`), so refill is exact at any request rate:
//! no fraction of a token is ever rounded away.

use super::{Verdict, div_ceil};
use crate::Policy;

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
    level: &mut u64,
    last: &mut u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Verdict {
    let unit = policy.scaled_unit();
    let rate = policy.scaled_rate();
    let current = refill(policy, *level, *last, now);
    let allowed = cost <= policy.burst() && cost * unit <= current;
    let charged = allowed && consume;
    let after = if charged {
        current - cost * unit
    } else {
        current
    };
    // The clock stepping back must not count the same time twice.
    let stamp = (*last).max(now);
    if charged {
        (*level, *last) = (after, stamp);
    }
    Verdict {
        allowed,
        remaining: after / unit,
        fresh_at: fresh_at(policy, after, stamp),
        retry_at: now + div_ceil((cost * unit).saturating_sub(current), rate),
        delay: 0,
    }
}
