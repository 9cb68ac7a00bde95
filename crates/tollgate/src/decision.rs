//! The answer to "may this identity spend `cost` units now?".

use std::time::Duration;

/// A rate limiting decision. A denial is a decision, not an error.
///
/// The exact meaning of each field per algorithm is in `docs/ALGORITHMS.md`;
/// in short:
/// - `limit`: the most units the policy can grant at once (the burst of a
///   bucket algorithm, the limit of a window algorithm);
/// - `remaining`: units that could be granted right after this decision (a
///   peek charges nothing, so it reports what remains now);
/// - `reset_after`: time until the key's state is indistinguishable from
///   fresh (zero when it already is);
/// - `retry_after`: for a denial, the earliest time after which this same
///   request would be allowed if nothing else happens; `None` when allowed,
///   or when the cost exceeds what the policy can ever grant;
/// - `delay`: for `leaky_bucket`, how long the caller should wait before
///   proceeding (its place in the queue); zero for every other algorithm;
/// - `degraded`: the decision was made without the shared store, by the
///   failure mode (`open`, `closed` or `local`; see `tollgate::resilience`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The most units the policy can grant at once.
    pub limit: u64,
    /// Units that could still be granted after this decision.
    pub remaining: u64,
    /// Time until the key's state is fresh again.
    pub reset_after: Duration,
    /// For a denial: when the same request would be allowed; `None` if never.
    pub retry_after: Option<Duration>,
    /// For an allowed `leaky_bucket` request: how long to wait before proceeding.
    pub delay: Duration,
    /// Made without the shared store.
    pub degraded: bool,
}

impl Decision {
    /// Whether the request was denied.
    pub const fn denied(&self) -> bool {
        !self.allowed
    }
}
