//! GCRA (generic cell rate algorithm): one theoretical arrival time (TAT).
//!
//! Each unit pushes the TAT one emission interval `period / limit` into the
//! future; a request fits when the TAT it would produce is at most
//! `burst` intervals ahead of now. This is exactly a token bucket of
//! `burst` tokens refilled at `limit` per `period`, held in one value.
//!
//! The emission interval is rarely a whole number of microseconds (3/s is
//! 333 333.3 µs), so the TAT carries its fraction: `tat_frac / scaled_rate`.
//! Differences are taken in scaled units relative to `now`, which keeps them
//! below 2^53 however large absolute time is.
//!
//! The TAT is an instant, so it means the same under any policy: a policy
//! changed under a live key keeps it. Only its fraction is in the writing
//! policy's steps, so the state records `rate`; read under another rate the
//! TAT is rounded up to the next whole microsecond (never earlier).

use super::{Computed, div_ceil, div_rem};
use crate::{Mode, Policy};

pub(super) fn fresh_at(tat_us: u64, tat_frac: u64) -> u64 {
    // Fresh once the TAT is not in the future; round a fraction up.
    tat_us + u64::from(tat_frac > 0)
}

/// The stored TAT as `policy` reads it: its fraction is in steps of the
/// rate that wrote it, so under another rate it is rounded up to the next
/// whole microsecond (never earlier).
pub(super) fn as_read(policy: &Policy, tat_us: u64, tat_frac: u64, tat_rate: u64) -> (u64, u64) {
    if tat_rate == policy.scaled_rate() || tat_frac == 0 {
        (tat_us, tat_frac)
    } else {
        (tat_us + 1, 0)
    }
}

/// The most whole microseconds [`ahead`] counts.
fn ahead_cap(policy: &Policy) -> u64 {
    div_ceil(
        (policy.burst() + 1) * policy.scaled_unit(),
        policy.scaled_rate(),
    ) + 1
}

/// How far the TAT is ahead of `now`, in scaled units (0 if behind), at
/// most one microsecond past the tolerance plus one unit: beyond that every
/// request is denied whatever the distance, and the cap keeps the product
/// below 2^53 when the TAT was written under a slower policy.
fn ahead(policy: &Policy, tat_us: u64, tat_frac: u64, now: u64) -> u64 {
    if tat_us >= now {
        (tat_us - now).min(ahead_cap(policy)) * policy.scaled_rate() + tat_frac
    } else {
        0
    }
}

/// When `cost` fits again: `before + cost * unit - tolerance` scaled units
/// must have passed. Computed from the TAT itself when it is beyond the cap
/// of [`ahead`], so that `retry_after` stays exact however far it is.
fn retry_at(
    policy: &Policy,
    (tat_us, tat_frac): (u64, u64),
    before: u64,
    now: u64,
    cost: u64,
) -> u64 {
    let rate = policy.scaled_rate();
    let need = cost * policy.scaled_unit();
    let tolerance = policy.burst() * policy.scaled_unit();
    if tat_us >= now && tat_us - now > div_ceil((policy.burst() + 1) * policy.scaled_unit(), rate) {
        // tat + (frac + need - tolerance) / rate, rounded up, in µs.
        return if tat_frac + need >= tolerance {
            tat_us + div_ceil(tat_frac + need - tolerance, rate)
        } else {
            tat_us - (tolerance - need - tat_frac) / rate
        };
    }
    now + div_ceil((before + need).saturating_sub(tolerance), rate)
}

pub(super) fn decide(
    policy: &Policy,
    (tat_us, tat_frac, tat_rate): (&mut u64, &mut u64, &mut u64),
    now: u64,
    cost: u64,
    mode: Mode,
) -> Computed {
    let unit = policy.scaled_unit();
    let rate = policy.scaled_rate();
    let tolerance = policy.burst() * unit;
    let (stored_us, stored_frac) = as_read(policy, *tat_us, *tat_frac, *tat_rate);
    let before = ahead(policy, stored_us, stored_frac, now);
    let allowed = cost <= policy.burst() && before + cost * unit <= tolerance;
    let charged = allowed && mode == Mode::Consume;
    let after = if charged {
        before + cost * unit
    } else {
        before
    };
    if charged {
        let (whole, frac) = div_rem(after, rate);
        (*tat_us, *tat_frac, *tat_rate) = (now + whole, frac, rate);
    }
    Computed {
        allowed,
        // Saturating: a clock stepping back can leave the TAT beyond the
        // tolerance.
        remaining: tolerance.saturating_sub(after) / unit,
        fresh_at: if after == 0 {
            0
        } else if charged {
            now + div_ceil(after, rate)
        } else {
            // The TAT as stored: `before` may be capped.
            fresh_at(stored_us, stored_frac)
        },
        // Read only for a denial (`decision_from_parts`).
        retry_at: if allowed {
            0
        } else {
            retry_at(policy, (stored_us, stored_frac), before, now, cost)
        },
        delay: 0,
    }
}
