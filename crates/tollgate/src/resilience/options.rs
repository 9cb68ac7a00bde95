//! [`ResilienceOptions`] and [`FailureMode`]: what the wrapper does when the
//! inner store is slow or gone, and how quickly it gives up on it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;

use crate::{Clock, SystemClock};

/// The default bound on one call to the inner store.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The default number of consecutive failures that opens the breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// The default time the breaker stays open before probing.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(250);
/// The default number of probes let through (and needed to close) when
/// half-open.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 1;
/// The default number of identities the deny cache holds.
pub const DEFAULT_DENY_CACHE_CAPACITY: usize = 65_536;

/// The default cap on (policy, identity) pairs tracked for leasing
/// ([`ResilienceOptions::lease_max_keys`]).
pub const DEFAULT_LEASE_MAX_KEYS: usize = 65_536;

/// What a check decides when the inner store cannot (it failed, timed out,
/// or the circuit breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Allow, marked `degraded`: availability over protection.
    #[default]
    Open,
    /// Deny, marked `degraded`, with `retry_after` set to when the breaker
    /// will next try the store: protection over availability.
    Closed,
    /// Decide on an in-process store with a share of each policy's limit
    /// (see [`ResilienceOptions::local_share`]), marked `degraded`: every
    /// instance keeps enforcing its part of the limit.
    Local,
    /// Return the store's error to the caller (the limiter then returns
    /// `Err`), as without the wrapper; the timeout and breaker still apply.
    Error,
}

impl FailureMode {
    /// The mode's name as written in configuration: `open`, `closed`,
    /// `local` or `error`.
    pub const fn name(self) -> &'static str {
        match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
            FailureMode::Local => "local",
            FailureMode::Error => "error",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown failure mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure mode `{0}` (expected open, closed, local or error)")]
pub struct UnknownFailureMode(pub String);

impl std::str::FromStr for FailureMode {
    type Err = UnknownFailureMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            "local" => Ok(FailureMode::Local),
            "error" => Ok(FailureMode::Error),
            _ => Err(UnknownFailureMode(s.to_owned())),
        }
    }
}

/// How a [`Resilient`](super::Resilient) store behaves when its inner store
/// fails. Builder style; every option has a documented default:
///
/// | option | default |
/// |---|---|
/// | [`failure_mode`](Self::failure_mode) | [`FailureMode::Open`] |
/// | [`policy_mode`](Self::policy_mode) | none (every policy uses the wrapper's mode) |
/// | [`local_share`](Self::local_share) | 1.0 (the whole limit) |
/// | [`timeout`](Self::timeout) | 50 ms |
/// | [`breaker_failures`](Self::breaker_failures) | 5 consecutive failures |
/// | [`breaker_cooldown`](Self::breaker_cooldown) | 250 ms |
/// | [`half_open_probes`](Self::half_open_probes) | 1 |
/// | [`deny_cache`](Self::deny_cache) | on |
/// | [`deny_cache_capacity`](Self::deny_cache_capacity) | 65 536 identities |
/// | [`clock`](Self::clock) | [`SystemClock`] |
///
/// ```
/// use std::time::Duration;
/// use tollgate::resilience::{FailureMode, ResilienceOptions};
/// let options = ResilienceOptions::default()
///     .failure_mode(FailureMode::Local)
///     .local_share(1.0 / 4.0) // four instances share each limit
///     .policy_mode("login", FailureMode::Closed)
///     .timeout(Duration::from_millis(30));
/// assert_eq!(options.mode_for("login"), FailureMode::Closed);
/// assert_eq!(options.mode_for("api"), FailureMode::Local);
/// ```
#[derive(Clone)]
pub struct ResilienceOptions {
    pub(crate) failure_mode: FailureMode,
    pub(crate) policy_modes: HashMap<Box<str>, FailureMode>,
    pub(crate) local_share: f64,
    pub(crate) timeout: Duration,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) deny_cache: bool,
    pub(crate) deny_cache_capacity: usize,
    pub(crate) local_max_keys: usize,
    pub(crate) lease_max_keys: usize,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for ResilienceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceOptions")
            .field("failure_mode", &self.failure_mode)
            .field("policy_modes", &self.policy_modes)
            .field("local_share", &self.local_share)
            .field("timeout", &self.timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("half_open_probes", &self.half_open_probes)
            .field("deny_cache", &self.deny_cache)
            .field("deny_cache_capacity", &self.deny_cache_capacity)
            .field("local_max_keys", &self.local_max_keys)
            .field("lease_max_keys", &self.lease_max_keys)
            .finish_non_exhaustive()
    }
}

impl Default for ResilienceOptions {
    fn default() -> Self {
        ResilienceOptions {
            failure_mode: FailureMode::default(),
            policy_modes: HashMap::new(),
            local_share: 1.0,
            timeout: DEFAULT_TIMEOUT,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            deny_cache: true,
            deny_cache_capacity: DEFAULT_DENY_CACHE_CAPACITY,
            local_max_keys: crate::store::memory::DEFAULT_MAX_KEYS,
            lease_max_keys: DEFAULT_LEASE_MAX_KEYS,
            clock: Arc::new(SystemClock::new()),
        }
    }
}

impl ResilienceOptions {
    /// Sets what every policy decides when the store cannot (default
    /// [`FailureMode::Open`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Overrides the failure mode of the policy called `name`. When one check
    /// covers several policies of different modes, [`FailureMode::Error`]
    /// wins over everything, then [`FailureMode::Closed`] (the check is
    /// denied and nothing is charged locally); otherwise each policy is
    /// decided in its own mode and the check is allowed only if all allow.
    pub fn policy_mode(mut self, name: impl Into<String>, mode: FailureMode) -> Self {
        self.policy_modes.insert(name.into().into_boxed_str(), mode);
        self
    }

    /// The failure mode of the policy called `name`.
    pub fn mode_for(&self, name: &str) -> FailureMode {
        self.policy_modes
            .get(name)
            .copied()
            .unwrap_or(self.failure_mode)
    }

    /// Caps the entries of the in-memory state that [`FailureMode::Local`]
    /// decides on (default one million; see
    /// [`MemoryStoreBuilder::max_keys`](crate::MemoryStoreBuilder::max_keys)).
    pub fn local_max_keys(mut self, max_keys: usize) -> Self {
        self.local_max_keys = max_keys;
        self
    }

    /// Caps the (policy, identity) pairs whose leases this process tracks
    /// (default [`DEFAULT_LEASE_MAX_KEYS`]). Only pairs of leasing policies
    /// are tracked, and only hot ones hold a lease; when the table is full,
    /// slots holding no live lease are swept, and a new pair that still
    /// finds no room is decided in the store without a lease.
    pub fn lease_max_keys(mut self, max_keys: usize) -> Self {
        self.lease_max_keys = max_keys;
        self
    }

    /// Sets the share of each policy that [`FailureMode::Local`] enforces in
    /// this process, typically `1 / instances` (default 1.0, the whole
    /// limit). A policy of limit `L` (and burst `B`) becomes a local policy
    /// of limit `max(1, floor(L * share))` (and burst
    /// `max(1, floor(B * share))`) over the same period and algorithm.
    ///
    /// # Panics
    /// If `share` is not in `(0, 1]` (NaN included).
    pub fn local_share(mut self, share: f64) -> Self {
        assert!(
            share > 0.0 && share <= 1.0,
            "local_share must be in (0, 1], got {share}"
        );
        self.local_share = share;
        self
    }

    /// Bounds every call to the inner store (default 50 ms), in addition to
    /// any timeout of the store itself: a call that takes longer counts as a
    /// failure and is decided by the failure mode.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Opens the circuit breaker after this many consecutive failures
    /// (default 5; 0 is taken as 1).
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.breaker_failures = failures.max(1);
        self
    }

    /// How long the breaker stays open, short-circuiting every call, before
    /// it lets probes through (default 250 ms).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// How many probe calls a half-open breaker lets through at once, and
    /// how many must succeed for it to close (default 1; 0 is taken as 1).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }

    /// Turns the deny cache on or off (default on): a check the store denied
    /// until instant `T` is denied locally until `T`, without a round trip.
    pub fn deny_cache(mut self, enabled: bool) -> Self {
        self.deny_cache = enabled;
        self
    }

    /// The most identities the deny cache holds (default 65 536); when full,
    /// expired entries are dropped first, then those expiring soonest.
    pub fn deny_cache_capacity(mut self, capacity: usize) -> Self {
        self.deny_cache_capacity = capacity;
        self
    }

    /// The clock of the deny cache, the breaker and the local store (default
    /// [`SystemClock`]; tests pass a [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The per-call timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The breaker's cool-down.
    pub fn get_breaker_cooldown(&self) -> Duration {
        self.breaker_cooldown
    }
}
