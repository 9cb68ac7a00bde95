//! The validated sections of a configuration ([`ServerSettings`],
//! [`StoreSettings`] and theirs) and their documented defaults: what the
//! server runs on once `raw` has checked what was written.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tollgate::resilience;

/// The default HTTP address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// The default gRPC address.
pub const DEFAULT_GRPC: &str = "127.0.0.1:8081";
/// The default largest request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The default longest key, in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = tollgate::limiter::DEFAULT_MAX_KEY_LEN;
/// The longest policy name.
pub const MAX_POLICY_NAME: usize = 128;
/// The largest `store.max_keys`: a billion entries is ~90 GB of memory,
/// beyond any machine this runs on; a larger number is a typo.
pub const MAX_MAX_KEYS: u64 = 1_000_000_000;
/// The default most connections open at once, per port (HTTP, gRPC).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The default time a client has to send a request's headers, from its
/// first byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time a client has to send a request's body, from the end of
/// its headers.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a connection may stay open with no request in progress.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default time shutdown waits for connections to finish before it
/// closes them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The default most concurrent streams on one gRPC (HTTP/2) connection.
pub const DEFAULT_GRPC_MAX_STREAMS: u32 = 256;
/// The default bound on one gRPC call, its request message included.
pub const DEFAULT_GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server listens on and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// The HTTP JSON API and `/metrics`.
    pub http: SocketAddr,
    /// Envoy RLS v3 gRPC and gRPC health.
    pub grpc: SocketAddr,
    /// Larger request bodies get `413`.
    pub max_body_bytes: usize,
    /// Longer keys get `400`.
    pub max_key_bytes: usize,
    /// Admin endpoints (`POST /v1/reset`) are closed (`403`) unless this is set;
    /// then they need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// The most connections open at once on each port (HTTP and gRPC
    /// counted separately); at the cap the port stops accepting until one
    /// closes.
    pub max_connections: usize,
    /// An HTTP request's headers must be complete this long after their
    /// first byte, or the connection is closed.
    pub header_timeout: Duration,
    /// An HTTP request's body must be complete this long after its headers,
    /// or the request gets `408` and the connection is closed.
    pub body_timeout: Duration,
    /// A connection with no request in progress (HTTP), or that has sent
    /// nothing (gRPC), is closed after this long.
    pub idle_timeout: Duration,
    /// On shutdown, connections still open this long after the signal are
    /// closed.
    pub shutdown_timeout: Duration,
    /// The most concurrent streams on one gRPC connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub grpc_max_streams: u32,
    /// A gRPC call that takes longer, reading its request message included,
    /// ends with `CANCELLED` ("Timeout expired"); a shorter `grpc-timeout`
    /// from the client wins.
    pub grpc_request_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http: default_addr(DEFAULT_HTTP),
            grpc: default_addr(DEFAULT_GRPC),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            admin_token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            grpc_max_streams: DEFAULT_GRPC_MAX_STREAMS,
            grpc_request_timeout: DEFAULT_GRPC_REQUEST_TIMEOUT,
        }
    }
}

fn default_addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Where rate limiting state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The embedded memory store (per process).
    #[default]
    Memory,
    /// One Redis server.
    Redis,
    /// A Redis Cluster.
    RedisCluster,
    /// The master that Redis Sentinel names (`urls` are the sentinels').
    RedisSentinel,
}

/// What happens to a decision when the store fails: the resilience
/// layer's own type. Configuration accepts `open`, `closed` and `local`
/// (see `parse::FailureModeName`); `error` is the library's alone, since
/// the server always answers with a decision.
pub use tollgate::resilience::FailureMode;

/// The store section, validated.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoreSettings {
    /// Which store.
    pub kind: StoreKind,
    /// Redis URLs: one for `redis`, the seeds for `redis_cluster`, the
    /// sentinels for `redis_sentinel`, none for `memory`.
    pub urls: Vec<String>,
    /// For `redis_sentinel`: the master's name, credentials and TLS.
    pub sentinel: Option<SentinelSettings>,
    /// TLS files (`store.tls_ca_file`, `tls_cert_file`, `tls_key_file`),
    /// read when the configuration is loaded.
    pub tls: Option<TlsFiles>,
    /// The key prefix.
    pub prefix: String,
    /// The bound on one store call.
    pub timeout: Duration,
    /// What happens when the store fails (each policy may override it).
    pub on_failure: FailureMode,
    /// The share of each policy that `local` mode enforces in this process,
    /// in (0, 1]: typically 1 / the number of instances.
    pub local_share: f64,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
    /// The deny cache.
    pub deny_cache: DenyCacheSettings,
    /// The most entries the memory store holds (and, on Redis, the `local`
    /// fallback's in-memory state); past it the entries nearest to becoming
    /// fresh are evicted.
    pub max_keys: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::Memory,
            urls: Vec::new(),
            sentinel: None,
            tls: None,
            prefix: tollgate_redis::store::DEFAULT_PREFIX.to_owned(),
            timeout: tollgate::resilience::DEFAULT_TIMEOUT,
            on_failure: FailureMode::Open,
            local_share: 1.0,
            breaker: BreakerSettings::default(),
            deny_cache: DenyCacheSettings::default(),
            max_keys: tollgate::store::memory::DEFAULT_MAX_KEYS,
        }
    }
}

/// The master of a `redis_sentinel` store (`store.master_*`), validated.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelSettings {
    /// `store.master_name`: the name the sentinels monitor it under.
    pub master_name: String,
    /// `store.master_username`: the master's ACL user.
    pub master_username: Option<String>,
    /// `store.master_password`: the master's password.
    pub master_password: Option<String>,
    /// `store.master_tls`: whether the master speaks TLS (default: as the
    /// sentinels' URLs, `rediss://`).
    pub master_tls: bool,
}

/// The password is never printed.
impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("master_username", &self.master_username)
            .field(
                "master_password",
                &self.master_password.as_ref().map(|_| "***"),
            )
            .field("master_tls", &self.master_tls)
            .finish()
    }
}

/// The TLS files of a Redis store, read (PEM): a private CA to trust
/// instead of the public roots, and a client certificate for a Redis that
/// verifies its clients.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsFiles {
    /// `store.tls_ca_file`'s contents.
    pub ca: Option<Vec<u8>>,
    /// `store.tls_cert_file` and `store.tls_key_file`'s contents.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// The key is never printed.
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// The circuit breaker section (`store.breaker`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSettings {
    /// Consecutive failed store calls (timeouts included) that open it.
    pub failures: u32,
    /// How long it stays open before letting probes through.
    pub cooldown: Duration,
    /// Probes let through at once when half-open, and successes needed to
    /// close.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: resilience::DEFAULT_BREAKER_FAILURES,
            cooldown: resilience::DEFAULT_BREAKER_COOLDOWN,
            half_open_probes: resilience::DEFAULT_HALF_OPEN_PROBES,
        }
    }
}

/// The deny cache section (`store.deny_cache`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DenyCacheSettings {
    /// Whether denials are cached until the instant the store gave.
    pub enabled: bool,
    /// The most identities held.
    pub capacity: usize,
}

impl Default for DenyCacheSettings {
    fn default() -> Self {
        DenyCacheSettings {
            enabled: true,
            capacity: resilience::DEFAULT_DENY_CACHE_CAPACITY,
        }
    }
}
