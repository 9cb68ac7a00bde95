//! Leases: units charged in the store before they are spent elsewhere.
//!
//! Three pure functions, each with a Lua twin in the Redis store (the
//! differential test requires both to agree), make up the store's half of
//! leasing; `docs/LEASES.md` argues why together they never let a fleet
//! admit more than a policy allows:
//!
//! - [`lease_until`]: until when units taken from a state now may be spent.
//!   For the windows, the end of the window they are charged in. For the
//!   buckets, the instant the bucket *as it was before the lease* would be
//!   full again: until then, no refill that the leased units would have
//!   made is lost to the bucket's cap, so the store's level plus every unit
//!   still held in leases never exceeds the capacity.
//! - [`lease_size`]: how much one lease takes of what remains.
//! - [`give_back`]: units of a lease not spent, returned to a window while
//!   the lease is valid — exactly as if they had never been charged, since
//!   nothing that happened in between depended on them. A bucket takes
//!   nothing back (later leases' ends depend on those units staying gone).

use super::{State, gcra, rescale_down, token_bucket};
use crate::Policy;

/// One lease takes at most this fraction (`1 / LEASE_SHARE`) of what
/// remains in the store after the request that takes it, and at least one
/// unit when anything remains: near the limit leases shrink to single
/// units, and instances asking in turn get nearly equal shares.
pub const LEASE_SHARE: u64 = 16;

/// Until when (store microseconds) units leased from `state` at `now`,
/// before anything is charged at `now`, may be spent; `now` itself when no
/// lease may be taken (a full bucket, or an algorithm that cannot lease).
/// The caller caps it further at the lease's time to live.
///
/// ```
/// use tollgate::algorithm::{State, lease_until};
/// let window: tollgate::Policy = "fixed_window 100/s".parse().unwrap();
/// let state = State::fresh(&window, 250_000);
/// assert_eq!(lease_until(&window, &state, 250_000), 1_000_000); // the window's end
/// let bucket: tollgate::Policy = "token_bucket 10/s burst 10".parse().unwrap();
/// let full = State::fresh(&bucket, 0);
/// assert_eq!(lease_until(&bucket, &full, 0), 0); // a full bucket leases nothing
/// ```
pub fn lease_until(policy: &Policy, state: &State, now: u64) -> u64 {
    let p = policy.period_us();
    let fresh;
    let state = if state.algorithm() == policy.algorithm() {
        state
    } else {
        fresh = State::fresh(policy, now);
        &fresh
    };
    match *state {
        State::FixedWindow { start, .. } | State::SlidingWindow { start, .. } => {
            // The window a charge at `now` lands in (as `decide` finds it).
            let held = start - start % p;
            let window = if now >= held + p { now - now % p } else { held };
            window + p
        }
        State::TokenBucket { level, last, unit } => {
            let current =
                token_bucket::refill(policy, rescale_down(level, unit, policy), last, now);
            let full = policy.burst() * policy.scaled_unit();
            if current >= full {
                now
            } else {
                token_bucket::fresh_at(policy, current, last.max(now))
            }
        }
        State::Gcra {
            tat_us,
            tat_frac,
            rate,
        } => {
            let (tat_us, tat_frac) = gcra::as_read(policy, tat_us, tat_frac, rate);
            gcra::fresh_at(tat_us, tat_frac).max(now)
        }
        State::SlidingLog(_) | State::LeakyBucket { .. } => now,
    }
}

/// The units worth asking for a lease valid for `valid_us` when `want`
/// units are what a whole time to live (`ttl_us`) would spend: `want`
/// scaled by `valid_us / ttl_us` (at most 1), so that a lease that can only
/// live briefly (a window about to end, a bucket nearly full) holds only
/// what can be spent in that time. The fraction is taken in steps of 2^-20
/// so that every product stays below 2^53 (the Lua twin computes in
/// doubles).
///
/// ```
/// use tollgate::algorithm::lease_want;
/// assert_eq!(lease_want(1_000, 500_000, 100_000), 1_000);
/// assert_eq!(lease_want(1_000, 50_000, 100_000), 500);
/// assert_eq!(lease_want(1_000, 0, 100_000), 0);
/// ```
pub const fn lease_want(want: u64, valid_us: u64, ttl_us: u64) -> u64 {
    if valid_us >= ttl_us {
        return want;
    }
    // valid_us < ttl_us <= 3.6e9 < 2^32; want is capped at 2^32 (what a
    // lease's `max` allows) so that the product stays below 2^53.
    let want = if want > crate::policy::MAX_LIMIT {
        crate::policy::MAX_LIMIT
    } else {
        want
    };
    let fraction = (valid_us << 20) / ttl_us;
    (want * fraction) >> 20
}

/// How many units one lease takes when `remaining` units remain after the
/// request taking it: `want`, at most [`LEASE_SHARE`]'s share of what
/// remains, and at least one unit when anything remains.
///
/// ```
/// use tollgate::algorithm::lease_size;
/// assert_eq!(lease_size(1_000, 16_000), 1_000);
/// assert_eq!(lease_size(1_000, 1_600), 100);
/// assert_eq!(lease_size(1_000, 3), 1); // the last units go one at a time
/// assert_eq!(lease_size(1_000, 0), 0);
/// ```
pub const fn lease_size(want: u64, remaining: u64) -> u64 {
    let share = remaining / LEASE_SHARE;
    let share = if share == 0 && remaining > 0 {
        1
    } else {
        share
    };
    if want < share { want } else { share }
}

/// Gives back to `state` at `now` up to `units` of a lease that was valid
/// until `until` (store microseconds), and returns how many it gave back.
///
/// Only the windows take units back: a window's counter is decremented,
/// never below zero, and only while the state's stored window is exactly
/// the one the lease was taken in (which it is valid within): a state
/// written since in another window, or under another period in a window
/// that merely overlaps it, takes nothing back. Nothing is given back once the lease is over
/// (`now >= until`), to a state of another algorithm, or to a bucket
/// (`token_bucket`, `gcra`: the comment in the code says why that would
/// not be exact).
///
/// ```
/// use tollgate::Mode;
/// use tollgate::algorithm::{State, decide, give_back, lease_until};
/// let policy: tollgate::Policy = "fixed_window 100/s".parse().unwrap();
/// let mut state = State::fresh(&policy, 0);
/// let until = lease_until(&policy, &state, 0);
/// decide(&policy, &mut state, 0, 10, Mode::Consume); // a lease of 10
/// assert_eq!(give_back(&policy, &mut state, 500_000, 4, until), 4);
/// assert_eq!(decide(&policy, &mut state, 500_000, 1, Mode::Peek).remaining, 94);
/// // Once the window (and with it the lease) is over, nothing goes back.
/// assert_eq!(give_back(&policy, &mut state, 1_000_000, 4, until), 0);
///
/// // A bucket takes nothing back, even while the lease is valid.
/// let bucket: tollgate::Policy = "token_bucket 100/s burst 100".parse().unwrap();
/// let mut state = State::fresh(&bucket, 0);
/// decide(&bucket, &mut state, 0, 50, Mode::Consume);
/// let until = lease_until(&bucket, &state, 0);
/// decide(&bucket, &mut state, 0, 10, Mode::Consume); // a lease of 10
/// assert!(until > 0);
/// assert_eq!(give_back(&bucket, &mut state, 1, 10, until), 0);
/// ```
pub fn give_back(policy: &Policy, state: &mut State, now: u64, units: u64, until: u64) -> u64 {
    if units == 0 || now >= until || state.algorithm() != policy.algorithm() {
        return 0;
    }
    let p = policy.period_us();
    // The window the units were charged in: the one holding `until`'s last
    // microsecond. They are still in the state's counter only if the state
    // was written in that very window and has not moved on since: a stored
    // start moves only forward, to the window of a later charge, so a start
    // equal to it (not merely a window overlapping it, as under another
    // period) proves the counter has not been emptied since.
    let window = (until - 1) - (until - 1) % p;
    match state {
        State::FixedWindow { start, count } => {
            if *start != window {
                return 0;
            }
            let given = units.min(*count);
            *count -= given;
            given
        }
        State::SlidingWindow { start, curr, .. } => {
            if *start != window {
                return 0;
            }
            let given = units.min(*curr);
            *curr -= given;
            given
        }
        // A bucket takes nothing back. Every later lease's `until` was read
        // on a level these units had already left, and assumed they would
        // not come back: returned, they would let the bucket hold more than
        // its capacity, counting the units still held in those later leases,
        // until the last of them ends. (`token_bucket 1000/s burst 1000` at
        // 500 tokens: A leases 31; B then leases 29, valid until the bucket
        // as it was before B is full; A gives its 31 back; just before B's
        // `until` the store admits 1000 at once while B still spends 29.)
        // So they are forfeited: a loss of utilisation, never exactness.
        State::TokenBucket { .. } | State::Gcra { .. } => 0,
        State::SlidingLog(_) | State::LeakyBucket { .. } => 0,
    }
}
