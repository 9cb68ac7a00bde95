//! Test support for tollgate.
//!
//! - [`conformance`]: the suite every [`Store`](tollgate::Store) must pass,
//!   run against the memory store here and against Redis and Redis Cluster
//!   by the Redis store's tests.
//! - [`redis`]: real `redis-server` processes (standalone or a Redis
//!   Cluster) on free loopback ports, to kill, restart and hang in tests;
//!   killed on drop.

pub mod conformance;
pub mod redis;
