//! The Redis store for tollgate: the shared decision that makes limits hold
//! across every instance of a service.
//!
//! - [`store`]: [`RedisStore`], a [`tollgate::Store`] over one Redis (TCP
//!   or a unix socket), a Redis Cluster, or the master that Redis Sentinel
//!   names, one multiplexed connection for all callers;
//! - [`sentinel`]: finding the master through the sentinels and following
//!   it through a failover;
//! - [`script`]: the decision code (one Lua file per algorithm, the twin
//!   of each Rust step function, plus a dispatcher), called as a Redis
//!   function with one `FCALL` per decision on Redis's own clock (one
//!   `EVALSHA` of a script where functions cannot be used), and the lease
//!   and reservation code that makes a lease call (`Store::lease`) and
//!   each step of a reservation (`Store::reserve`, `Store::settle`) one
//!   such call too;
//! - [`keys`]: key names with escaped identities and a Cluster hash tag,
//!   for states and reservation records;
//! - [`invalidate`]: reset notices over pub/sub, so that every instance's
//!   deny cache ([`tollgate::resilience`]) forgets a key reset anywhere.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::Limiter;
//! use tollgate_redis::{RedisOptions, RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0", RedisOptions::default().prefix("myapp")).await?;
//! let limiter = Limiter::builder(store)
//!     .policy("api", "sliding_log 100/1m".parse()?)
//!     .build();
//! if !limiter.check("api", "203.0.113.7", 1).await?.allowed {
//!     // reply 429
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/REDIS.md` for URL forms, Cluster, TLS and how Redis's
//! `maxmemory-policy` affects limits.

pub mod invalidate;
pub mod keys;
pub mod overrides;
pub mod pool;
pub mod script;
pub mod sentinel;
pub mod store;

pub use sentinel::SentinelMaster;
pub use store::{ConnectError, RedisOptions, RedisStore};
