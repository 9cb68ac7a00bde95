//! tollgate: one atomic rate limiting decision — "may this identity spend
//! `cost` units of this policy now?" — made the same way in process memory or
//! in a shared store.
//!
//! A tour, from the bottom up (data flows down, nothing flows back up):
//! - [`policy`]: what a limit is (algorithm, limit, period, burst), validated
//!   and parsed from text like `100/1m` or `token_bucket 10/s burst 20`;
//! - [`algorithm`]: the six algorithms as pure step functions over integer
//!   microseconds; no I/O, no clock of their own;
//! - [`Decision`]: the answer, a value (a denial is not an error);
//! - [`answer`]: what a check's decisions tell a client (verdict, deciding
//!   policy, `retry_after`, `RateLimit` header values), written once for
//!   every adapter;
//! - [`clock`]: time sources, the system's monotonic clock and a manual one;
//! - [`store`]: the [`Store`] trait ("apply these policies to this key,
//!   atomically") and the embedded [`MemoryStore`];
//! - [`limiter`]: [`Limiter`], named policies over any store, cheap to clone;
//! - [`resilience`]: [`Resilient`], a store wrapper for when the store is
//!   slow or gone: timeouts, circuit breaker, failure modes, deny cache.
//!
//! ```
//! use tollgate::{Limiter, MemoryStore};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Limiter::builder(MemoryStore::new())
//!     .policy("api", "sliding_log 2/1m".parse()?)
//!     .build();
//! assert!(limiter.check("api", "203.0.113.7", 1).await?.allowed);
//! assert!(limiter.check("api", "203.0.113.7", 1).await?.allowed);
//! let third = limiter.check("api", "203.0.113.7", 1).await?;
//! assert!(!third.allowed);
//! assert!(third.retry_after.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod algorithm;
pub mod answer;
pub mod clock;
mod decision;
mod error;
pub mod keyspace;
pub mod limiter;
pub mod overrides;
pub mod policy;
pub mod reservation;
pub mod resilience;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::Decision;
pub use error::{Error, StoreError};
pub use limiter::{Limiter, LimiterBuilder, MultiDecision};
pub use policy::{Algorithm, Lease, Policy, PolicyError};
pub use reservation::{Reservation, ReservationId};
pub use resilience::{FailureMode, ResilienceOptions, Resilient};
pub use store::memory::{MemoryStore, MemoryStoreBuilder};
pub use store::{
    Check, Decisions, Held, LeaseAnswer, LeaseAsk, LeaseCall, Leased, Mode, PolicyRef, ReserveCall,
    SettleAnswer, SettleCall, Settled, Store,
};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// docs/RESERVATIONS.md's example, compiled and run as a doc test.
#[doc = include_str!("../../../docs/RESERVATIONS.md")]
#[cfg(doctest)]
pub struct ReservationsDoctests;
