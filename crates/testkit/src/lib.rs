//! Test support for tollgate.
//!
//! - [`conformance`]: the suite every [`Store`](tollgate::Store) must pass,
//!   run against the memory store here and against Redis and Redis Cluster
//!   by the Redis store's tests.

pub mod conformance;
