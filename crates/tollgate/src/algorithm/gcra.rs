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

use super::{Verdict, div_ceil};
use crate::Policy;

pub(super) fn fresh_at(tat_us: u64, tat_frac: u64) -> u64 {
    // Fresh once the TAT is not in the future; round a fraction up.
    tat_us + u64::from(tat_frac > 0)
}

/// How far the TAT is ahead of `now`, in scaled units (0 if behind).
fn ahead(policy: &Policy, tat_us: u64, tat_frac: u64, now: u64) -> u64 {
    if tat_us >= now {
        (tat_us - now) * policy.scaled_rate() + tat_frac
    } else {
        0
    }
}

pub(super) fn decide(
    policy: &Policy,
    tat_us: &mut u64,
    tat_frac: &mut u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Verdict {
    let unit = policy.scaled_unit();
    let rate = policy.scaled_rate();
    let tolerance = policy.burst() * unit;
    let before = ahead(policy, *tat_us, *tat_frac, now);
    let allowed = cost <= policy.burst() && before + cost * unit <= tolerance;
    let charged = allowed && consume;
    let after = if charged {
        before + cost * unit
    } else {
        before
    };
    if charged {
        (*tat_us, *tat_frac) = (now + after / rate, after % rate);
    }
    Verdict {
        allowed,
        // Saturating: a clock stepping back can leave the TAT beyond the
        // tolerance.
        remaining: tolerance.saturating_sub(after) / unit,
        fresh_at: if after == 0 {
            0
        } else {
            now + div_ceil(after, rate)
        },
        retry_at: now + div_ceil((before + cost * unit).saturating_sub(tolerance), rate),
        delay: 0,
    }
}
