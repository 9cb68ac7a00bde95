//! Resilience: what a limiter does when its store is slow or gone.
//!
//! [`Resilient`] wraps any [`Store`] and is itself a [`Store`], so
//! `Limiter<Resilient<RedisStore>>` works with the limiter unchanged. It adds,
//! in the order a check meets them:
//! - a **deny cache** ([`ResilienceOptions::deny_cache`]): a check the store
//!   denied until instant `T` is denied locally until `T`, without a round
//!   trip — exact, because only a reset can make it pass sooner, and resets
//!   are broadcast to every instance through [`Invalidations`];
//! - a **circuit breaker** ([`BreakerState`]): after consecutive failures the
//!   store is not called for a cool-down, then probed back;
//! - a **timeout** on every call to the store;
//! - a **failure mode** ([`FailureMode`]) per wrapper, overridable per
//!   policy: when the store cannot decide, a check is allowed (`open`),
//!   denied (`closed`), decided on an in-process store with a share of the
//!   limit (`local`) — all marked [`Decision::degraded`](crate::Decision) —
//!   or the error is returned (`error`).
//!
//! [`Resilient::stats`] counts what happened, for metrics and readiness.
//! `docs/RESILIENCE.md` is the operator's guide.
//!
//! ```
//! use tollgate::resilience::{FailureMode, ResilienceOptions, Resilient};
//! use tollgate::{Limiter, MemoryStore};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let store = Resilient::new(
//!     MemoryStore::new(),
//!     ResilienceOptions::default().failure_mode(FailureMode::Closed),
//! );
//! let limiter = Limiter::builder(store).policy("api", "fixed_window 1/1h".parse()?).build();
//! assert!(limiter.check("api", "alice", 1).await?.allowed);
//! // That allow left nothing: the denials that follow come from the deny
//! // cache until the window ends, without a store call.
//! let denied = limiter.check("api", "alice", 1).await?;
//! assert!(!denied.allowed && !denied.degraded);
//! assert!(!limiter.check("api", "alice", 1).await?.allowed);
//! assert_eq!(limiter.store().stats().deny_cache_hits, 2);
//! assert_eq!(limiter.store().stats().calls, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod breaker;
mod deny_cache;
mod leases;
mod options;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use hashbrown::HashMap;
use smallvec::SmallVec;

pub use breaker::BreakerState;
pub use leases::LeaseStats;
pub use options::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_DENY_CACHE_CAPACITY,
    DEFAULT_HALF_OPEN_PROBES, DEFAULT_LEASE_MAX_KEYS, DEFAULT_TIMEOUT, FailureMode,
    ResilienceOptions, UnknownFailureMode,
};

use breaker::{Breaker, Permit};
use deny_cache::{DenyCache, Flight, FlightEnd, Landing, Lookup};
use leases::{Ask, Leases, Serve};

use crate::algorithm::decision_from_parts;
use crate::store::memory::Step;
use crate::store::{
    Check, Decisions, Invalidation, InvalidationReceiver, InvalidationSink, Invalidations,
    LeaseAsk, LeaseCall, Mode, PolicyRef, ReserveCall, SettleAnswer, SettleCall, Store,
};
use crate::{Clock, Decision, MemoryStore, Policy, StoreError};

/// A [`Store`] that survives its inner store failing: deny cache, circuit
/// breaker, timeout and failure mode (see the [module docs](self)).
///
/// `apply` returns `Ok` whenever the failure mode is not
/// [`FailureMode::Error`]: a store failure becomes a decision marked
/// `degraded`. Cheap to clone; clones share everything.
pub struct Resilient<S> {
    store: Arc<S>,
    shared: Arc<Shared>,
}

impl<S> Clone for Resilient<S> {
    fn clone(&self) -> Self {
        Resilient {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Resilient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("store", &self.store)
            .field("options", &self.shared.options)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Everything but the store: what the invalidation feed reaches (through a
/// weak reference, so a feed never keeps a dropped wrapper alive).
pub(crate) struct Shared {
    options: ResilienceOptions,
    /// Per-policy failure modes: first `options.policy_modes`, replaced
    /// whole by [`Resilient::set_policy_modes`] (a configuration reload).
    /// Read only when the store cannot decide, so a lock costs nothing on
    /// the path that matters.
    policy_modes: RwLock<HashMap<Box<str>, FailureMode>>,
    breaker: Breaker,
    /// `None` when turned off.
    pub(crate) deny_cache: Option<DenyCache>,
    /// Where `local` mode decides, with scaled policies under the same names.
    local: MemoryStore,
    /// Leases held by this instance.
    leases: Leases,
    pub(crate) counters: Counters,
    /// Whether an invalidation feed was subscribed at all.
    has_feed: bool,
    /// Whether that feed is connected.
    pub(crate) feed_live: AtomicBool,
    /// The error of the latest failed store call (calls are bounded by the
    /// breaker, so this is written rarely).
    last_error: Mutex<Option<StoreError>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    short_circuited: AtomicU64,
    degraded: AtomicU64,
    deny_cache_hits: AtomicU64,
    deny_cache_lookups: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

/// A snapshot of a [`Resilient`] store's state and counters (each counter
/// counts `apply` calls since the store was built, not policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResilienceStats {
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Times the breaker opened from closed (a failed half-open probe
    /// opening it again is not counted): how often the store started
    /// failing.
    pub breaker_opened: u64,
    /// Calls made to the inner store (probes included).
    pub calls: u64,
    /// Calls to the inner store that failed, timeouts included.
    pub failures: u64,
    /// Calls to the inner store abandoned after the timeout.
    pub timeouts: u64,
    /// Checks decided without calling the store because the breaker was open
    /// (or half-open with its probes in flight).
    pub short_circuited: u64,
    /// Checks decided by the failure mode (`open`, `closed`, `local`),
    /// marked `degraded`.
    pub degraded: u64,
    /// Checks denied by the deny cache without a store call.
    pub deny_cache_hits: u64,
    /// Checks that consulted the deny cache (`deny_cache_hits` of them
    /// were answered by it).
    pub deny_cache_lookups: u64,
    /// Identities held in the deny cache.
    pub deny_cache_len: usize,
    /// Reset notices received from the invalidation feed.
    pub invalidations: u64,
    /// Whether the invalidation feed is connected; `None` without a feed.
    pub invalidation_feed_live: Option<bool>,
    /// Entries the `local` fallback holds.
    pub local_keys: usize,
    /// What leasing did.
    pub leases: LeaseStats,
    /// Live entries the `local` fallback evicted to stay under its cap.
    pub local_evictions: u64,
}

/// Adapts the shared clock to the memory store's `impl Clock`.
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now_us(&self) -> u64 {
        self.0.now_us()
    }
}

/// Frees a half-open probe's slot if the call is dropped before it ends.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    permit: Permit,
    finished: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.abandon(self.permit);
        }
    }
}

/// What a store call through the breaker and the timeout came to
/// ([`Resilient::guarded`]).
enum Guarded<T> {
    /// The breaker kept the call in; it may let one through after this long.
    Short(Duration),
    /// The call ran (or timed out): its result, and the deny cache's epoch
    /// read before it was sent.
    Ran(Result<T, StoreError>, u64),
}

/// Leads a deny cache flight: lands it when the call ends, or as cancelled
/// if the caller is dropped first (another waiter then leads).
struct FlightGuard<'a> {
    cache: &'a DenyCache,
    key: &'a [u8],
    policies: &'a [PolicyRef<'a>],
    flight: Arc<Flight>,
    landed: bool,
}

impl FlightGuard<'_> {
    fn land(mut self, landing: Landing) {
        self.landed = true;
        self.cache
            .land(self.key, self.policies, &self.flight, landing);
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.cache
                .land(self.key, self.policies, &self.flight, Landing::Cancelled);
        }
    }
}

impl<S: Store> Resilient<S> {
    /// Wraps `store`. Resets made through *this* wrapper invalidate its deny
    /// cache; resets made through other processes are not seen, so with the
    /// deny cache on, use this for a store private to the process (the
    /// memory store) and [`with_invalidations`](Self::with_invalidations)
    /// for a shared one.
    pub fn new(store: S, options: ResilienceOptions) -> Self {
        Self::build(store, options, false)
    }

    /// Wraps a shared `store` and subscribes to its invalidation feed, so a
    /// reset through any instance drops the deny cache entries of every
    /// instance.
    ///
    /// # Panics
    /// As [`Invalidations::subscribe`]: the Redis store must be called
    /// within a tokio runtime.
    pub fn with_invalidations(store: S, options: ResilienceOptions) -> Self
    where
        S: Invalidations,
    {
        let resilient = Self::build(store, options, true);
        let shared: Weak<Shared> = Arc::downgrade(&resilient.shared);
        let receiver: Weak<dyn InvalidationReceiver> = shared;
        resilient.store.subscribe(InvalidationSink::new(receiver));
        resilient
    }

    fn build(store: S, options: ResilienceOptions, has_feed: bool) -> Self {
        let local = MemoryStore::builder()
            .clock(SharedClock(Arc::clone(&options.clock)))
            .max_keys(options.local_max_keys)
            .build();
        Resilient {
            store: Arc::new(store),
            shared: Arc::new(Shared {
                breaker: Breaker::new(
                    options.breaker_failures,
                    options.breaker_cooldown,
                    options.half_open_probes,
                ),
                deny_cache: options
                    .deny_cache
                    .then(|| DenyCache::new(options.deny_cache_capacity)),
                local,
                leases: Leases::new(options.lease_max_keys),
                policy_modes: RwLock::new(options.policy_modes.clone()),
                counters: Counters::default(),
                has_feed,
                feed_live: AtomicBool::new(false),
                last_error: Mutex::new(None),
                options,
            }),
        }
    }
}

impl<S> Resilient<S> {
    /// The inner store.
    pub fn get_ref(&self) -> &S {
        &self.store
    }

    /// The options it was built with (per-policy modes as built: see
    /// [`mode_for`](Self::mode_for) for the ones in force).
    pub fn options(&self) -> &ResilienceOptions {
        &self.shared.options
    }

    /// The failure mode the policy called `name` is decided in when the
    /// store cannot decide.
    pub fn mode_for(&self, name: &str) -> FailureMode {
        self.policy_modes()
            .get(name)
            .copied()
            .unwrap_or(self.shared.options.failure_mode)
    }

    /// Replaces every per-policy failure mode (those of
    /// [`ResilienceOptions::policy_mode`]) with `modes`; policies not named
    /// use the wrapper's mode. For a configuration reload: the breaker, the
    /// deny cache and the local fallback's state carry on.
    pub fn set_policy_modes<N: Into<String>>(
        &self,
        modes: impl IntoIterator<Item = (N, FailureMode)>,
    ) {
        let modes = modes
            .into_iter()
            .map(|(name, mode)| (name.into().into_boxed_str(), mode))
            .collect();
        *self
            .shared
            .policy_modes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = modes;
    }

    /// Forgets every cached denial. For a configuration reload that changed
    /// policies: a denial cached under a policy's old parameters must not
    /// answer for it if those parameters come back later, since the store's
    /// state may have moved on under the other ones meanwhile.
    pub fn clear_deny_cache(&self) {
        if let Some(cache) = &self.shared.deny_cache {
            cache.clear();
        }
    }

    fn policy_modes(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, FailureMode>> {
        // Replaced whole: a poisoned lock still holds a consistent map.
        self.shared
            .policy_modes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// The error of the latest store call that failed (timeouts included),
    /// if any has: why the store is failing, for logs and readiness.
    pub fn last_error(&self) -> Option<StoreError> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, error: &StoreError) {
        self.shared
            .counters
            .failures
            .fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
    }

    /// A snapshot of the state and counters.
    pub fn stats(&self) -> ResilienceStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResilienceStats {
            breaker: self.shared.breaker.state(),
            breaker_opened: self.shared.breaker.trips(),
            calls: load(&c.calls),
            failures: load(&c.failures),
            timeouts: load(&c.timeouts),
            short_circuited: load(&c.short_circuited),
            degraded: load(&c.degraded),
            deny_cache_hits: load(&c.deny_cache_hits),
            deny_cache_lookups: load(&c.deny_cache_lookups),
            deny_cache_len: self.shared.deny_cache.as_ref().map_or(0, DenyCache::len),
            invalidations: load(&c.invalidations),
            invalidation_feed_live: self
                .shared
                .has_feed
                .then(|| self.shared.feed_live.load(Ordering::Acquire)),
            local_keys: self.shared.local.len(),
            leases: self.shared.leases.stats(),
            local_evictions: self.shared.local.evictions(),
        }
    }
}

impl<S: Store> Resilient<S> {
    /// Decides `check` through the deny cache (counting a lookup unless
    /// the caller already counted this check's), breaker and timeout.
    async fn apply_cached(
        &self,
        check: Check<'_>,
        lookup_counted: bool,
    ) -> Result<Decisions, StoreError> {
        let Check { key, policies, .. } = check;
        let shared = &*self.shared;
        let Some(cache) = &shared.deny_cache else {
            let sent_us = shared.options.clock.now_us();
            return self.call(check, sent_us, None).await;
        };
        if !lookup_counted {
            shared
                .counters
                .deny_cache_lookups
                .fetch_add(1, Ordering::Relaxed);
        }
        let timeout = shared.options.timeout;
        // Set once this caller waited for another's flight: waiting ends
        // there, then it calls the store itself.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            // Read before the call: a denial is cached from when the call
            // was sent, so it never outlives the store's own instant.
            let sent_us = shared.options.clock.now_us();
            let join = deadline.is_none_or(|d| tokio::time::Instant::now() < d);
            let flight = match cache.lookup_or_join(check, sent_us, join) {
                Lookup::Hit(decisions) => {
                    shared
                        .counters
                        .deny_cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(decisions);
                }
                Lookup::Miss => None,
                Lookup::Lead(flight) => Some(FlightGuard {
                    cache,
                    key,
                    policies,
                    flight,
                    landed: false,
                }),
                Lookup::Wait(flight) => {
                    let until =
                        *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
                    let bound = until.saturating_duration_since(tokio::time::Instant::now());
                    let error = match flight.wait(bound).await {
                        Some(FlightEnd::Decided) => continue,
                        Some(FlightEnd::Failed) => StoreError::Unavailable(
                            "the concurrent call for this key failed".into(),
                        ),
                        // The leader's call is bounded by the same timeout
                        // and started first: the store is hung.
                        None => StoreError::Timeout(timeout),
                    };
                    let retry = shared.options.breaker_cooldown;
                    return self.fallback(check, error, retry).await;
                }
            };
            return self.call(check, sent_us, flight).await;
        }
    }

    /// Calls the store (through the breaker and timeout), caches a denial,
    /// lands the flight if this caller leads one, and falls back on failure.
    async fn call(
        &self,
        check: Check<'_>,
        sent_us: u64,
        flight: Option<FlightGuard<'_>>,
    ) -> Result<Decisions, StoreError> {
        let cost = check.cost;
        let shared = &*self.shared;
        let (result, epoch) = match self.guarded(sent_us, self.store.apply(check)).await {
            Guarded::Short(probe_in) => {
                if let Some(flight) = flight {
                    flight.land(Landing::Failed);
                }
                let error = StoreError::Unavailable("circuit breaker open".into());
                return self.fallback(check, error, probe_in).await;
            }
            Guarded::Ran(result, epoch) => (result, epoch),
        };
        match result {
            Ok(decisions) => {
                if let Some(cache) = &shared.deny_cache {
                    cache.record(check, &decisions, sent_us, epoch);
                }
                if let Some(flight) = flight {
                    let room = decisions.iter().all(|d| d.allowed && d.remaining >= cost);
                    flight.land(if room {
                        Landing::AllowedWithRoom
                    } else {
                        Landing::Tight
                    });
                }
                Ok(decisions)
            }
            Err(error) => {
                if let Some(flight) = flight {
                    flight.land(Landing::Failed);
                }
                let retry = shared.options.breaker_cooldown;
                self.fallback(check, error, retry).await
            }
        }
    }

    /// Runs `call` (a store call) through the circuit breaker and the
    /// timeout, counting it: the one home of both, for checks and lease
    /// calls alike. The breaker learns the outcome; a failure is recorded
    /// ([`last_error`](Self::last_error)).
    async fn guarded<T>(
        &self,
        sent_us: u64,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Guarded<T> {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let permit = shared.breaker.admit(sent_us);
        if let Permit::ShortCircuit(probe_in) = permit {
            counters.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Guarded::Short(probe_in);
        }
        let epoch = shared.deny_cache.as_ref().map_or(0, DenyCache::epoch);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut guard = ProbeGuard {
            breaker: &shared.breaker,
            permit,
            finished: false,
        };
        let timeout = shared.options.timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Timeout(timeout))
            }
        };
        guard.finished = true;
        match &result {
            Ok(_) => shared.breaker.success(permit),
            Err(error) => {
                self.failed(error);
                shared
                    .breaker
                    .failure(permit, shared.options.clock.now_us());
            }
        }
        Guarded::Ran(result, epoch)
    }

    /// Calls the store once, as a check would, if the circuit breaker lets
    /// a call through now: a peek of `key` under `policies` (nothing is
    /// charged), bounded by the timeout, whose outcome the breaker counts
    /// like any call's. So a probe while the breaker is open and its
    /// cool-down has ended closes it (with `half_open_probes` successes) or
    /// opens it again, without waiting for a check to arrive. The deny
    /// cache is neither read nor written.
    ///
    /// Returns `None` when the breaker let no call through (cooling down,
    /// or its probes are already in flight), else the call's outcome.
    /// A background task calling this every cool-down while the breaker is
    /// not closed brings it back within about a cool-down of the store
    /// recovering, with no traffic at all (`tollgate serve` does).
    pub async fn probe(
        &self,
        key: &[u8],
        policies: &[PolicyRef<'_>],
    ) -> Option<Result<(), StoreError>> {
        let shared = &*self.shared;
        let permit = shared.breaker.admit(shared.options.clock.now_us());
        if let Permit::ShortCircuit(_) = permit {
            return None;
        }
        shared.counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut guard = ProbeGuard {
            breaker: &shared.breaker,
            permit,
            finished: false,
        };
        let timeout = shared.options.timeout;
        let call = self.store.apply(Check::new(key, policies, 1, Mode::Peek));
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map(drop),
            Err(_) => {
                shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Timeout(timeout))
            }
        };
        guard.finished = true;
        match &result {
            Ok(()) => shared.breaker.success(permit),
            Err(error) => {
                self.failed(error);
                shared
                    .breaker
                    .failure(permit, shared.options.clock.now_us());
            }
        }
        Some(result)
    }

    /// Whether new leases may be spent: with an invalidation feed, only
    /// while it is connected (a reset must reach every lease).
    fn may_lease(&self) -> bool {
        !self.shared.has_feed || self.shared.feed_live.load(Ordering::Acquire)
    }

    /// A check of leasing policies: served from leases held, else by one
    /// lease call (after the deny cache), waiting first for a lease call
    /// another caller has in flight for the same key.
    async fn apply_leased(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        let shared = &*self.shared;
        let timeout = shared.options.timeout;
        // A check counts one deny cache lookup however many rounds it waits.
        let mut looked_up = false;
        for round in 0..=leases::WAIT_ROUNDS {
            let now = shared.options.clock.now_us();
            match shared.leases.serve(check, now) {
                Serve::Served(decisions) => return Ok(decisions),
                Serve::Wait(flight) if round < leases::WAIT_ROUNDS => {
                    flight.wait(timeout).await;
                    continue;
                }
                Serve::Wait(_) | Serve::Miss => {}
            }
            if let Some(cache) = &shared.deny_cache {
                if !looked_up {
                    looked_up = true;
                    shared
                        .counters
                        .deny_cache_lookups
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Lookup::Hit(decisions) = cache.lookup_or_join(check, now, false) {
                    shared
                        .counters
                        .deny_cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(decisions);
                }
            }
            match shared.leases.ask(check, now) {
                Ask::Lease(asks, flight) => {
                    return self.call_lease(check, &asks, now, &flight).await;
                }
                Ask::Wait(flight) if round < leases::WAIT_ROUNDS => flight.wait(timeout).await,
                Ask::Wait(_) | Ask::Plain => break,
            }
        }
        self.apply_cached(check, looked_up).await
    }

    /// One lease call through the breaker and timeout, as [`call`] makes a
    /// check: its outcome lands in the lease table (also when this future
    /// is dropped mid-call), a denial in the deny cache, a failure in the
    /// failure mode.
    async fn call_lease(
        &self,
        check: Check<'_>,
        asks: &[LeaseAsk],
        sent_us: u64,
        flight: &Arc<leases::Flight>,
    ) -> Result<Decisions, StoreError> {
        /// Lands the flight as failed unless the call's outcome landed it.
        struct Landing<'a> {
            leases: &'a Leases,
            check: Check<'a>,
            asks: &'a [LeaseAsk],
            flight: &'a Arc<leases::Flight>,
            sent_us: u64,
            done: bool,
        }
        impl Drop for Landing<'_> {
            fn drop(&mut self) {
                if !self.done {
                    self.leases.land(
                        self.check,
                        self.asks,
                        self.flight,
                        self.sent_us,
                        leases::Landed::Failed,
                    );
                }
            }
        }
        let shared = &*self.shared;
        let mut landing = Landing {
            leases: &shared.leases,
            check,
            asks,
            flight,
            sent_us,
            done: false,
        };
        let call = async {
            let answer = self.store.lease(LeaseCall { check, asks }).await?;
            let n = check.policies.len();
            if answer.decisions.len() != n || answer.leased.len() != n {
                return Err(StoreError::Protocol(format!(
                    "store returned {} decisions and {} leases for {n} policies",
                    answer.decisions.len(),
                    answer.leased.len(),
                )));
            }
            Ok(answer)
        };
        let (result, epoch) = match self.guarded(sent_us, call).await {
            Guarded::Short(probe_in) => {
                // Never sent: the units held go back to their leases.
                shared
                    .leases
                    .land(check, asks, flight, sent_us, leases::Landed::NotSent);
                landing.done = true;
                let error = StoreError::Unavailable("circuit breaker open".into());
                return self.fallback(check, error, probe_in).await;
            }
            Guarded::Ran(result, epoch) => (result, epoch),
        };
        match result {
            Ok(answer) => {
                if let Some(cache) = &shared.deny_cache {
                    cache.record(check, &answer.decisions, sent_us, epoch);
                }
                let kept = shared.leases.land(
                    check,
                    asks,
                    flight,
                    sent_us,
                    leases::Landed::Answer(&answer),
                );
                landing.done = true;
                Ok(leases::with_leased(&answer, &kept))
            }
            Err(error) => {
                drop(landing);
                let retry = shared.options.breaker_cooldown;
                self.fallback(check, error, retry).await
            }
        }
    }

    /// Decides without the store, each policy in its failure mode.
    async fn fallback(
        &self,
        check: Check<'_>,
        error: StoreError,
        retry_after: Duration,
    ) -> Result<Decisions, StoreError> {
        let Check {
            key,
            policies,
            cost,
            mode,
        } = check;
        let options = &self.shared.options;
        let modes: SmallVec<[FailureMode; 2]> = {
            let overrides = self.policy_modes();
            policies
                .iter()
                .map(|p| {
                    overrides
                        .get(p.name)
                        .copied()
                        .unwrap_or(options.failure_mode)
                })
                .collect()
        };
        if modes.contains(&FailureMode::Error) {
            return Err(error);
        }
        self.shared
            .counters
            .degraded
            .fetch_add(1, Ordering::Relaxed);
        // Local policies, scaled to this instance's share; one that cannot be
        // scaled exactly is decided as `closed` instead.
        let scaled: SmallVec<[Option<Policy>; 2]> = policies
            .iter()
            .zip(&modes)
            .map(|(p, m)| {
                (*m == FailureMode::Local)
                    .then(|| local_policy(p.policy, options.local_share))
                    .flatten()
            })
            .collect();
        // Each policy by its mode: `local` on this instance's state (scaled
        // to its share), `closed` a denial until the breaker next probes,
        // `open` an allow as if the state were fresh; a `local` policy that
        // cannot be scaled exactly is decided as `closed`. All-or-nothing
        // across all of them, as on the store (`store::all_or_nothing`).
        let steps: SmallVec<[Step<'_>; 2]> = policies
            .iter()
            .zip(&modes)
            .zip(&scaled)
            .map(|((p, mode), scaled)| match (mode, scaled) {
                (FailureMode::Local, Some(policy)) => Step::Stored(PolicyRef {
                    name: p.name,
                    policy,
                }),
                (FailureMode::Open, _) => {
                    let remaining = p.policy.capacity().saturating_sub(cost);
                    Step::Decided(decision_from_parts(
                        p.policy, cost, true, remaining, 0, 0, 0,
                    ))
                }
                _ => Step::Decided(decision_from_parts(
                    p.policy,
                    cost,
                    false,
                    0,
                    0,
                    crate::clock::micros(retry_after),
                    0,
                )),
            })
            .collect();
        let decisions = self.shared.local.apply_steps(key, &steps, cost, mode);
        Ok(decisions
            .into_iter()
            .map(|decision| Decision {
                degraded: true,
                ..decision
            })
            .collect())
    }
}

/// The deny cache receives the store's invalidation feed: a reset made
/// through any instance drops the identity; a (re)connected feed forgets
/// everything (notices may have been missed).
impl InvalidationReceiver for Shared {
    fn receive(&self, notice: Invalidation) {
        match notice {
            Invalidation::Live => {
                self.feed_live.store(true, Ordering::Release);
                if let Some(cache) = &self.deny_cache {
                    cache.clear();
                }
                self.leases.revoke_all();
            }
            Invalidation::Lost => {
                self.feed_live.store(false, Ordering::Release);
                // Resets may go unheard until the feed is back: a lease
                // taken before one must not be spent after it.
                self.leases.revoke_all();
            }
            Invalidation::Reset(identity) => {
                self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
                if let Some(cache) = &self.deny_cache {
                    cache.invalidate(&identity);
                }
                self.leases.revoke(&identity);
            }
        }
    }
}

/// `policy` with its limit and burst scaled by `share` (at least 1 each);
/// `None` if the scaled policy is invalid (not computable exactly).
fn local_policy(policy: &Policy, share: f64) -> Option<Policy> {
    if share >= 1.0 {
        return Some(*policy);
    }
    // Limits are below 2^53: exact as f64, and the product rounds down.
    let scale = |v: u64| ((v as f64 * share).floor() as u64).max(1);
    let burst = policy
        .algorithm()
        .has_burst()
        .then(|| scale(policy.burst()));
    Policy::new(
        policy.algorithm(),
        scale(policy.limit()),
        policy.period(),
        burst,
    )
    .ok()
}

impl<S: Store> Store for Resilient<S> {
    /// Decides `check`: from leases held when every policy leases (see
    /// [`Policy::lease`]), else through the deny cache, breaker and
    /// timeout to the store.
    async fn apply(&self, check: Check<'_>) -> Result<Decisions, StoreError> {
        if check.mode == Mode::Consume
            && check.policies.iter().all(|p| p.policy.lease().is_some())
            && self.store.leases()
            && self.may_lease()
        {
            return self.apply_leased(check).await;
        }
        self.apply_cached(check, false).await
    }

    /// Reserves in the inner store, through the breaker and the timeout,
    /// after the deny cache: a denied reservation charges and records
    /// nothing, so a cached denial answers it as exactly as it answers a
    /// check (and a flood of reservations for a denied key costs the store
    /// nothing). Never from leases or the fallback: a reservation is a
    /// record in the shared store, and a settle on another instance must
    /// find it. A call that timed out may still have run: its estimate then
    /// stays charged until the deadline (settled at its estimate), exact.
    async fn reserve(&self, call: ReserveCall<'_>) -> Result<Decisions, StoreError> {
        let shared = &*self.shared;
        let sent_us = shared.options.clock.now_us();
        if let Some(cache) = &shared.deny_cache {
            if let Lookup::Hit(decisions) = cache.lookup_or_join(call.check, sent_us, false) {
                shared
                    .counters
                    .deny_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(decisions);
            }
        }
        match self.guarded(sent_us, self.store.reserve(call)).await {
            Guarded::Short(_) => Err(StoreError::Unavailable(
                "circuit breaker open: the store is failing".into(),
            )),
            Guarded::Ran(result, epoch) => {
                let decisions = result?;
                if let Some(cache) = &shared.deny_cache {
                    cache.record(call.check, &decisions, sent_us, epoch);
                }
                Ok(decisions)
            }
        }
    }

    /// Settles in the inner store, through the breaker and the timeout
    /// (a settle is idempotent: the caller may retry it). Units given back
    /// drop the key's deny cache entries, which may deny what the store
    /// now allows.
    async fn settle(&self, call: SettleCall<'_>) -> Result<Option<SettleAnswer>, StoreError> {
        let sent_us = self.shared.options.clock.now_us();
        match self.guarded(sent_us, self.store.settle(call)).await {
            Guarded::Short(_) => Err(StoreError::Unavailable(
                "circuit breaker open: the store is failing".into(),
            )),
            Guarded::Ran(result, _) => {
                let answer = result?;
                if let (Some(cache), Some(answer)) = (&self.shared.deny_cache, &answer) {
                    if answer.settled.iter().any(|s| s.returned > 0) {
                        cache.invalidate(call.key);
                    }
                }
                Ok(answer)
            }
        }
    }

    fn reserves(&self) -> bool {
        self.store.reserves()
    }

    /// Resets the inner store (within the timeout) and the local fallback
    /// state, and drops the key's deny cache entries (before and after the
    /// call, so a check racing with the reset cannot leave a stale denial).
    /// A failure of the inner store is returned whatever the failure mode:
    /// a reset that did not happen must not look as if it had.
    async fn reset(&self, key: &[u8], policies: &[PolicyRef<'_>]) -> Result<(), StoreError> {
        let shared = &*self.shared;
        if let Some(cache) = &shared.deny_cache {
            cache.invalidate(key);
        }
        shared.leases.revoke(key);
        shared.local.reset(key, policies).await?;
        let timeout = shared.options.timeout;
        let result = tokio::time::timeout(timeout, self.store.reset(key, policies))
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)));
        // Again after: a lease taken while the reset was on its way may
        // come from the state before it.
        if let Some(cache) = &shared.deny_cache {
            cache.invalidate(key);
        }
        shared.leases.revoke(key);
        result
    }
}

#[cfg(test)]
mod tests;
