//! Policies: which algorithm, how many units, over what period, with what burst.
//!
//! A [`Policy`] can only be built through [`Policy::new`] (or parsing), which
//! checks every bound, so an invalid policy cannot exist. Among those bounds
//! are the ones that keep every algorithm's arithmetic exact in integers below
//! 2^53: the Redis store runs the same algorithms in Lua, whose numbers are
//! doubles, and both implementations must agree to the microsecond.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest integer every intermediate value must stay below, so that the
/// Lua implementation (IEEE doubles) computes exactly what Rust computes.
pub const MAX_EXACT: u64 = 1 << 53;

/// The longest period a policy may have: 366 days.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest limit or burst a policy may have.
pub const MAX_LIMIT: u64 = 1 << 32;

/// The largest limit of a `sliding_log` policy: its memory grows with the
/// limit (one entry per admitted request), so it is capped lower.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 1_000_000;

/// A rate limiting algorithm.
///
/// See the README's algorithm guide for how each one treats bursts and window
/// edges, and `docs/ALGORITHMS.md` for the exact definition of every
/// [`Decision`](crate::Decision) field per algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Algorithm {
    /// One counter per window aligned to multiples of the period. Exact per
    /// window; admits up to twice the limit across a window edge.
    FixedWindow,
    /// Two counters (previous and current window), the previous one weighted
    /// by how much of it still overlaps the sliding window. O(1) memory,
    /// approximate.
    SlidingWindow,
    /// One entry per admitted request, exact over any window of one period.
    SlidingLog,
    /// A bucket of `burst` tokens refilled at `limit` per `period`.
    TokenBucket,
    /// The generic cell rate algorithm: token bucket semantics kept in one
    /// timestamp (the theoretical arrival time).
    Gcra,
    /// A queue of capacity `burst` drained at `limit` per `period`: while the
    /// queue has room a request is accepted with a delay to wait before
    /// proceeding (shaping); when it is full the request is denied.
    LeakyBucket,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
        Algorithm::LeakyBucket,
    ];

    /// The algorithm's name as written in configuration, e.g. `token_bucket`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    /// Whether the algorithm has a capacity distinct from its rate.
    pub const fn has_burst(self) -> bool {
        matches!(
            self,
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket
        )
    }

    /// Whether the algorithm is exact (never admits more than its policy
    /// allows in any window); only `sliding_window` is an approximation.
    pub const fn is_exact(self) -> bool {
        !matches!(self, Algorithm::SlidingWindow)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| PolicyError::UnknownAlgorithm(s.to_owned()))
    }
}

/// Why a policy is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The limit is zero.
    #[error("limit must be at least 1")]
    ZeroLimit,
    /// The period is zero (or shorter than one microsecond).
    #[error("period must be at least 1 microsecond")]
    ZeroPeriod,
    /// The burst is zero.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// The limit is above [`MAX_LIMIT`] (or [`MAX_SLIDING_LOG_LIMIT`]).
    #[error("limit {limit} is too large for {algorithm} (at most {max})")]
    LimitTooLarge {
        /// The algorithm.
        algorithm: Algorithm,
        /// The limit given.
        limit: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The burst is above [`MAX_LIMIT`].
    #[error("burst {0} is too large (at most {MAX_LIMIT})")]
    BurstTooLarge(u64),
    /// The period is above [`MAX_PERIOD`].
    #[error("period {0:?} is too long (at most 366 days)")]
    PeriodTooLong(Duration),
    /// A burst was given to an algorithm that has none.
    #[error("burst has no meaning for {0}: only token_bucket, gcra and leaky_bucket have one")]
    BurstNotApplicable(Algorithm),
    /// The combination would need integers beyond 2^53 to compute exactly.
    #[error(
        "{algorithm} {limit}/{period:?} (burst {burst}) is too fine-grained to compute exactly: \
         {what} would reach {value}, above 2^53; use a shorter period or a smaller limit/burst"
    )]
    NotExact {
        /// The algorithm.
        algorithm: Algorithm,
        /// The limit.
        limit: u64,
        /// The period.
        period: Duration,
        /// The burst (the limit where the algorithm has none).
        burst: u64,
        /// Which product overflowed.
        what: &'static str,
        /// Its value.
        value: u128,
    },
    /// The algorithm name is not one of the six.
    #[error(
        "unknown algorithm `{0}` (expected one of fixed_window, sliding_window, sliding_log, \
         token_bucket, gcra, leaky_bucket)"
    )]
    UnknownAlgorithm(String),
    /// Leasing was asked of an algorithm that cannot lease exactly.
    #[error("{0} cannot lease: {reason}", reason = lease_refusal(*.0))]
    LeaseNotSupported(Algorithm),
    /// A lease's `max` or `ttl` is out of bounds.
    #[error("invalid lease: {0}")]
    InvalidLease(String),
    /// A reservation was asked of an algorithm that cannot settle exactly.
    #[error("{0} cannot be reserved: {reason}", reason = reserve_refusal(*.0))]
    ReserveNotSupported(Algorithm),
    /// A `max_overdraft` above the policy's capacity.
    #[error("max_overdraft {given} is above the policy's capacity of {capacity} units")]
    OverdraftTooLarge {
        /// The overdraft given.
        given: u64,
        /// The policy's capacity (its limit, or its burst for a bucket).
        capacity: u64,
    },
    /// The text could not be parsed.
    #[error("invalid policy `{text}`: {reason}")]
    Syntax {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A validated rate limiting policy: `limit` units per `period` with
/// `algorithm`, and for bucket algorithms a `burst` capacity.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, Policy};
///
/// let p: Policy = "token_bucket 10/s burst 20".parse()?;
/// assert_eq!(p.algorithm(), Algorithm::TokenBucket);
/// assert_eq!(p.limit(), 10);
/// assert_eq!(p.period(), Duration::from_secs(1));
/// assert_eq!(p.burst(), 20);
///
/// // Without an algorithm name, a policy is GCRA with a burst equal to its limit.
/// let p: Policy = "100/1m".parse()?;
/// assert_eq!((p.algorithm(), p.burst()), (Algorithm::Gcra, 100));
///
/// assert!("0/s".parse::<Policy>().is_err());
/// assert!("fixed_window 10/s burst 5".parse::<Policy>().is_err());
/// # Ok::<(), tollgate::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    algorithm: Algorithm,
    limit: u64,
    period_us: u64,
    burst: u64,
    /// `period_us / gcd(period_us, limit)`: the size of one unit in the
    /// scaled arithmetic of the bucket algorithms.
    unit: u64,
    /// `limit / gcd(period_us, limit)`: scaled units gained per microsecond.
    rate: u64,
    /// Leasing, when turned on ([`Policy::with_lease`]).
    lease: Option<Lease>,
    /// How far a settled reservation may overdraw
    /// ([`Policy::with_max_overdraft`]); `None`: the capacity. A u32 (a
    /// larger one is the capacity anyway, at most 2^32) keeps `Policy` at
    /// one cache line.
    max_overdraft: Option<u32>,
}

/// Why an algorithm cannot be reserved, in the words of its error.
const fn reserve_refusal(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingLog => {
            "sliding_log records every admitted unit at its instant, and a settle that gives \
             units back or charges more would rewrite or invent entries of the past"
        }
        Algorithm::LeakyBucket => {
            "leaky_bucket answers each request with its own delay, its place in the queue, \
             which a later settle would change for every request queued behind it"
        }
        _ => "not supported",
    }
}

/// Why an algorithm cannot lease, in the words of its error.
const fn lease_refusal(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingLog => {
            "sliding_log records the instant of every admitted unit, and a leased unit is \
             spent at an instant the store never sees"
        }
        Algorithm::LeakyBucket => {
            "leaky_bucket answers each request with its own delay, its place in the queue, \
             which only the store knows"
        }
        _ => "not supported",
    }
}

/// Leasing for one policy ([`Policy::with_lease`]): an instance may take up
/// to `max` units of the policy from the shared store in one atomic step —
/// charged there before any of them is spent — and spend them locally for
/// at most `ttl`. `docs/LEASES.md` has the rules and the argument that a
/// fleet spending leases never admits more than the policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    // u32s: a lease rides in every `Policy`, which is copied on hot paths.
    max: u32,
    ttl_us: u32,
}

impl Lease {
    /// The longest a lease may live.
    pub const MAX_TTL: Duration = Duration::from_secs(3600);

    /// The most units one lease may hold.
    pub const MAX_UNITS: u64 = u32::MAX as u64;

    /// At most `max` units per lease, each lease spent within `ttl`.
    ///
    /// # Errors
    /// [`PolicyError::InvalidLease`] when `max` is below 2 (a lease of one
    /// unit is a decision in the store) or above [`Lease::MAX_UNITS`], or
    /// `ttl` is below one millisecond or above [`Lease::MAX_TTL`].
    pub fn new(max: u64, ttl: Duration) -> Result<Lease, PolicyError> {
        let Some(max) = u32::try_from(max).ok().filter(|m| *m >= 2) else {
            return Err(PolicyError::InvalidLease(format!(
                "max must be between 2 and {} units, not {max}",
                Self::MAX_UNITS
            )));
        };
        if ttl < Duration::from_millis(1) || ttl > Self::MAX_TTL {
            return Err(PolicyError::InvalidLease(format!(
                "ttl must be between 1ms and 1h, not {ttl:?}"
            )));
        }
        Ok(Lease {
            max,
            // At most an hour: 3.6e9 µs < 2^32.
            ttl_us: u32::try_from(crate::clock::micros(ttl)).unwrap_or(u32::MAX),
        })
    }

    /// The most units one lease holds.
    pub const fn max(&self) -> u64 {
        self.max as u64
    }

    /// The longest one lease lives.
    pub const fn ttl(&self) -> Duration {
        Duration::from_micros(self.ttl_us as u64)
    }

    /// [`ttl`](Self::ttl) in microseconds.
    pub const fn ttl_us(&self) -> u64 {
        self.ttl_us as u64
    }
}

impl Policy {
    /// Builds a policy, checking every bound.
    ///
    /// `burst` is the capacity of `token_bucket`, `gcra` and `leaky_bucket`
    /// (default: the limit); it is an error for the other algorithms.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the problem: zero limit, period or burst,
    /// values above the documented maxima, a burst where it means nothing, or
    /// a combination too fine-grained to compute exactly below 2^53.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        period: Duration,
        burst: Option<u64>,
    ) -> Result<Self, PolicyError> {
        if limit == 0 {
            return Err(PolicyError::ZeroLimit);
        }
        if period > MAX_PERIOD {
            return Err(PolicyError::PeriodTooLong(period));
        }
        // Below MAX_PERIOD the microsecond count fits in u64.
        let period_us = crate::clock::micros(period);
        if period_us == 0 {
            return Err(PolicyError::ZeroPeriod);
        }
        let max_limit = if algorithm == Algorithm::SlidingLog {
            MAX_SLIDING_LOG_LIMIT
        } else {
            MAX_LIMIT
        };
        if limit > max_limit {
            return Err(PolicyError::LimitTooLarge {
                algorithm,
                limit,
                max: max_limit,
            });
        }
        let burst = match burst {
            Some(_) if !algorithm.has_burst() => {
                return Err(PolicyError::BurstNotApplicable(algorithm));
            }
            Some(0) => return Err(PolicyError::ZeroBurst),
            Some(b) if b > MAX_LIMIT => return Err(PolicyError::BurstTooLarge(b)),
            Some(b) => b,
            None => limit,
        };
        let g = gcd(period_us, limit);
        let policy = Policy {
            algorithm,
            limit,
            period_us,
            burst,
            unit: period_us / g,
            rate: limit / g,
            lease: None,
            max_overdraft: None,
        };
        policy.check_exact()?;
        Ok(policy)
    }

    /// Checks that the largest intermediate value of the algorithm's integer
    /// arithmetic stays below [`MAX_EXACT`] with margin.
    fn check_exact(&self) -> Result<(), PolicyError> {
        let (what, value) = match self.algorithm {
            // count + cost <= 2 * limit: always small.
            Algorithm::FixedWindow | Algorithm::SlidingLog => return Ok(()),
            // prev * (period - elapsed) + (curr + cost) * period <= 3 * limit * period.
            Algorithm::SlidingWindow => (
                "3 x limit x period",
                3 * u128::from(self.limit) * u128::from(self.period_us),
            ),
            // Levels are kept in units of 1/unit of a token: the fullest
            // state plus the largest cost is 2 * burst * unit, and one
            // period's refill is limit * unit.
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => (
                "2 x max(burst, limit) x scaled unit",
                2 * u128::from(self.burst.max(self.limit)) * u128::from(self.unit),
            ),
        };
        if value >= u128::from(MAX_EXACT) {
            return Err(PolicyError::NotExact {
                algorithm: self.algorithm,
                limit: self.limit,
                period: self.period(),
                burst: self.burst,
                what,
                value,
            });
        }
        Ok(())
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Units admitted per period (for bucket algorithms: the refill rate).
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The period in microseconds.
    pub const fn period_us(&self) -> u64 {
        self.period_us
    }

    /// The capacity of a bucket algorithm; the limit for the others.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The most units the policy can ever grant at once: the burst for
    /// bucket algorithms, the limit otherwise. A cost above it is denied
    /// with no `retry_after`.
    pub const fn capacity(&self) -> u64 {
        if self.algorithm.has_burst() {
            self.burst
        } else {
            self.limit
        }
    }

    /// The size of one unit (token) in the bucket algorithms' scaled
    /// arithmetic: `period_us / gcd(period_us, limit)`. Over one microsecond
    /// a bucket gains [`scaled_rate`](Self::scaled_rate) scaled units, so no
    /// fraction of a token is ever rounded away.
    pub const fn scaled_unit(&self) -> u64 {
        self.unit
    }

    /// Scaled units gained per microsecond: `limit / gcd(period_us, limit)`.
    pub const fn scaled_rate(&self) -> u64 {
        self.rate
    }

    /// This policy, leased ([`Lease`]): decisions on a hot key are made
    /// from units taken from the store in batches. Only `fixed_window`,
    /// `sliding_window`, `token_bucket` and `gcra` can lease exactly.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::policy::{Lease, Policy};
    /// let lease = Lease::new(100, Duration::from_millis(200))?;
    /// let p: Policy = "fixed_window 10000/s".parse::<Policy>()?.with_lease(lease)?;
    /// assert_eq!(p.lease(), Some(lease));
    /// assert!("sliding_log 10/s".parse::<Policy>()?.with_lease(lease).is_err());
    /// # Ok::<(), tollgate::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`PolicyError::LeaseNotSupported`] for `sliding_log` and `leaky_bucket`.
    pub fn with_lease(mut self, lease: Lease) -> Result<Policy, PolicyError> {
        if matches!(
            self.algorithm,
            Algorithm::SlidingLog | Algorithm::LeakyBucket
        ) {
            return Err(PolicyError::LeaseNotSupported(self.algorithm));
        }
        self.lease = Some(lease);
        Ok(self)
    }

    /// The policy's leasing, if turned on.
    pub const fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// This policy with a settled reservation allowed to overdraw it by at
    /// most `units` beyond what remains (default: its capacity, one full
    /// allowance). `docs/RESERVATIONS.md` says what owing means per
    /// algorithm.
    ///
    /// ```
    /// use tollgate::policy::Policy;
    /// let p: Policy = "fixed_window 1000/1m".parse::<Policy>()?.with_max_overdraft(200)?;
    /// assert_eq!(p.max_overdraft(), 200);
    /// assert_eq!("fixed_window 1000/1m".parse::<Policy>()?.max_overdraft(), 1000);
    /// assert!("fixed_window 1000/1m".parse::<Policy>()?.with_max_overdraft(1001).is_err());
    /// # Ok::<(), tollgate::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// [`PolicyError::ReserveNotSupported`] for `sliding_log` and
    /// `leaky_bucket`, [`PolicyError::OverdraftTooLarge`] above the
    /// capacity.
    pub fn with_max_overdraft(mut self, units: u64) -> Result<Policy, PolicyError> {
        if !crate::algorithm::can_reserve(self.algorithm) {
            return Err(PolicyError::ReserveNotSupported(self.algorithm));
        }
        if units > self.capacity() {
            return Err(PolicyError::OverdraftTooLarge {
                given: units,
                capacity: self.capacity(),
            });
        }
        // Above u32::MAX only the capacity 2^32 itself: the default.
        self.max_overdraft = u32::try_from(units).ok();
        Ok(self)
    }

    /// This policy's numbers with `base`'s overdraft setting: `base`'s
    /// explicit `max_overdraft` (at most this policy's capacity), or, when
    /// `base` keeps the default, this policy's own default (its capacity).
    /// For numbers that stand in for `base`, such as an override's.
    pub fn with_max_overdraft_of(mut self, base: &Policy) -> Policy {
        self.max_overdraft = base
            .max_overdraft
            .map(|units| units.min(u32::try_from(self.capacity()).unwrap_or(u32::MAX)));
        self
    }

    /// How far a settled reservation may overdraw this policy beyond what
    /// remains ([`with_max_overdraft`](Self::with_max_overdraft)).
    pub const fn max_overdraft(&self) -> u64 {
        match self.max_overdraft {
            Some(units) => units as u64,
            None => self.capacity(),
        }
    }

    /// This policy without leasing: what the store decides with. Two
    /// policies that differ only in leasing decide alike.
    pub const fn without_lease(mut self) -> Policy {
        self.lease = None;
        self
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.algorithm,
            self.limit,
            format_period(self.period_us)
        )?;
        if self.algorithm.has_burst() {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// Formats microseconds in the largest unit that divides them exactly.
fn format_period(us: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (86_400_000_000, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
        (1, "us"),
    ];
    for (size, name) in UNITS {
        if us % size == 0 {
            return format!("{}{}", us / size, name);
        }
    }
    unreachable!("every integer is a multiple of 1")
}

impl FromStr for Policy {
    type Err = PolicyError;

    /// Parses `[algorithm] <limit>/<period> [burst <n>]`, where the period is
    /// a unit (`s`) or a count and a unit (`1m`, `30s`, `250ms`). Units:
    /// `us`, `ms`, `s`, `m`, `h`, `d` (also `sec`, `min`, `hour`, `day`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = |reason: &str| PolicyError::Syntax {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (algorithm, rest) = match words.first() {
            None => return Err(syntax("empty policy")),
            Some(w) if w.contains('/') => (Algorithm::Gcra, &words[..]),
            Some(w) => (w.parse::<Algorithm>()?, &words[1..]),
        };
        let (rate, burst) = match rest {
            [rate] => (*rate, None),
            [rate, "burst", n] => (*rate, Some(parse_count(n, "burst", text)?)),
            [] => return Err(syntax("expected <limit>/<period>, e.g. 100/1m")),
            _ => {
                return Err(syntax(
                    "expected `<limit>/<period>` optionally followed by `burst <n>`",
                ));
            }
        };
        let (limit, period) = rate
            .split_once('/')
            .ok_or_else(|| syntax("expected <limit>/<period>, e.g. 100/1m"))?;
        let limit = parse_count(limit, "limit", text)?;
        let period = parse_duration(period).map_err(|reason| syntax(&reason))?;
        Policy::new(algorithm, limit, period, burst)
    }
}

fn parse_count(word: &str, what: &str, text: &str) -> Result<u64, PolicyError> {
    word.parse::<u64>().map_err(|e| PolicyError::Syntax {
        text: text.to_owned(),
        reason: match e.kind() {
            std::num::IntErrorKind::PosOverflow => format!("{what} `{word}` overflows"),
            _ => format!("{what} `{word}` is not a whole number"),
        },
    })
}

/// Parses a duration such as `1m`, `30s`, `250ms`, `s` (one second) or
/// `1h30m`-free simple forms. Returns a message naming the problem.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tollgate::policy::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(tollgate::policy::parse_duration("m"), Ok(Duration::from_secs(60)));
/// assert!(tollgate::policy::parse_duration("5 fortnights").is_err());
/// ```
///
/// # Errors
/// A message when the count is not a number, overflows, or the unit is unknown.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("period `{text}` has no unit (us, ms, s, m, h, d)"))?;
    let (count, unit) = text.split_at(split);
    let count: u64 = if count.is_empty() {
        1
    } else {
        count
            .parse()
            .map_err(|_| format!("period `{text}` overflows"))?
    };
    let unit_us: u64 = match unit {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" | "sec" | "second" | "seconds" => 1_000_000,
        "m" | "min" | "minute" | "minutes" => 60_000_000,
        "h" | "hour" | "hours" => 3_600_000_000,
        "d" | "day" | "days" => 86_400_000_000,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in period `{text}` (expected us, ms, s, m, h or d)"
            ));
        }
    };
    count
        .checked_mul(unit_us)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("period `{text}` overflows"))
}

const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Policy, PolicyError> {
        s.parse()
    }

    #[test]
    fn parses_the_documented_forms() {
        let p = parse("100/1m").unwrap();
        assert_eq!(
            (p.limit(), p.period_us(), p.burst()),
            (100, 60_000_000, 100)
        );
        let p = parse("10/s").unwrap();
        assert_eq!((p.limit(), p.period_us()), (10, 1_000_000));
        let p = parse("5000/1h burst 200").unwrap();
        assert_eq!((p.algorithm(), p.burst()), (Algorithm::Gcra, 200));
        let p = parse("token_bucket 10/s burst 20").unwrap();
        assert_eq!(
            (p.algorithm(), p.limit(), p.burst()),
            (Algorithm::TokenBucket, 10, 20)
        );
        let p = parse("sliding_log 3/250ms").unwrap();
        assert_eq!(
            (p.algorithm(), p.period_us()),
            (Algorithm::SlidingLog, 250_000)
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "fixed_window 100/1m",
            "sliding_window 7/90s",
            "token_bucket 10/1s burst 20",
            "gcra 3/1d burst 1",
            "leaky_bucket 5/250ms burst 9",
        ] {
            let p = parse(text).unwrap();
            assert_eq!(parse(&p.to_string()).unwrap(), p, "{text}");
        }
        assert_eq!(parse("10/90s").unwrap().to_string(), "gcra 10/90s burst 10");
    }

    #[test]
    fn errors_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("0/s", "limit must be at least 1"),
            ("10/0s", "period must be at least 1 microsecond"),
            ("10/s burst 0", "burst must be at least 1"),
            (
                "99999999999999999999999/s",
                "limit `99999999999999999999999` overflows",
            ),
            ("10/99999999999999999999d", "overflows"),
            ("10/5fortnights", "unknown unit `fortnights`"),
            ("10/5", "has no unit"),
            ("leaky 10/s", "unknown algorithm `leaky`"),
            (
                "fixed_window 10/s burst 3",
                "burst has no meaning for fixed_window",
            ),
            (
                "sliding_log 10/s burst 3",
                "burst has no meaning for sliding_log",
            ),
            ("ten/s", "limit `ten` is not a whole number"),
            ("", "empty policy"),
            ("10/s burst", "optionally followed by `burst <n>`"),
            ("10/400d", "too long"),
            ("sliding_log 2000000/s", "too large for sliding_log"),
            ("gcra 7/366d burst 4294967296", "too fine-grained"),
            ("sliding_window 4294967296/366d", "too fine-grained"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: `{err}` lacks `{expected}`");
        }
    }

    #[test]
    fn scaled_units_are_reduced() {
        let p = parse("token_bucket 3/s").unwrap();
        assert_eq!((p.scaled_unit(), p.scaled_rate()), (1_000_000, 3));
        let p = parse("token_bucket 100/1m").unwrap();
        assert_eq!((p.scaled_unit(), p.scaled_rate()), (600_000, 1));
        let p = parse("token_bucket 4000/2ms").unwrap();
        assert_eq!((p.scaled_unit(), p.scaled_rate()), (1, 2));
    }
}
