//! The validated sections of a configuration ([`ServerSettings`],
//! [`StoreSettings`] and theirs) and their documented defaults: what the
//! server runs on once `raw` has checked what was written.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tollgate::resilience;

use crate::listen::ListenAddr;

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
/// The largest `store.max_reservations`: a hundred million open
/// reservations is ~15 GB of memory; a larger number is a typo.
pub const MAX_MAX_RESERVATIONS: u64 = 100_000_000;
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
/// The default `server.grpc_max_calls`: far above the few hundred calls a
/// busy Envoy keeps in flight, and 30 to 130 MiB of calls that never send
/// their message (3 to 13 KiB each, by the size of their headers).
pub const DEFAULT_GRPC_MAX_CALLS: usize = 10_000;
/// The default `server.grpc_max_buffered_bytes`: 64 MiB, sixteen
/// connections' shares; a healthy Envoy's calls hold a few hundred bytes
/// each.
pub const DEFAULT_GRPC_MAX_BUFFERED_BYTES: usize = 64 << 20;
/// The default bound on one gRPC call, its request message included.
pub const DEFAULT_GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one store call (`store.timeout`): 10 ms, half of
/// Envoy's default rate limit filter timeout (20 ms), so that with a hung
/// store `on_failure` answers before Envoy gives up, with 10 ms left for
/// the gRPC hop and the answer. Shorter than the library's
/// [`resilience::DEFAULT_TIMEOUT`] (50 ms), which has no such caller to fit
/// (docs/SERVER.md, "Limits and timeouts").
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(10);

/// What the server listens on and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// The HTTP JSON API and `/metrics`.
    pub http: SocketAddr,
    /// Envoy RLS v3 gRPC and gRPC health: a TCP address or a unix socket
    /// (`unix:PATH`).
    pub grpc: ListenAddr,
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
    /// The most bytes of requests all gRPC calls in progress hold at once
    /// (received, not yet decoded); a call whose next bytes would
    /// pass it, or pass its connection's share
    /// ([`GRPC_CONNECTION_BUFFERED_BYTES`](crate::grpc_calls::GRPC_CONNECTION_BUFFERED_BYTES)),
    /// ends with `RESOURCE_EXHAUSTED`.
    pub grpc_max_buffered_bytes: usize,
    /// The most gRPC calls in progress at once on all connections (a call
    /// counts until its answer is handed to HTTP/2 whole); one more is
    /// answered `RESOURCE_EXHAUSTED` at once.
    pub grpc_max_calls: usize,
    /// A gRPC call that takes longer, reading its request message included,
    /// ends with `CANCELLED` ("Timeout expired"); a shorter `grpc-timeout`
    /// from the client wins.
    pub grpc_request_timeout: Duration,
    /// A gRPC connection older than this is sent `GOAWAY`, so clients
    /// reconnect and spread over instances (`server.grpc_max_connection_age`).
    pub grpc_max_connection_age: Duration,
    /// After `GOAWAY` for age, calls in flight get this long to finish
    /// before the connection is closed (`server.grpc_max_connection_age_grace`;
    /// default `grpc_request_timeout` + 1 s).
    pub grpc_max_connection_age_grace: Duration,
    /// TLS on the gRPC port (`server.grpc_tls`); `None`: plaintext.
    pub grpc_tls: Option<GrpcTlsSettings>,
    /// A second listener serving only the Prometheus text
    /// (`server.metrics`); `/metrics` on the HTTP port stays.
    pub metrics: Option<MetricsSettings>,
    /// Health (`/healthcheck`, `/readyz`, gRPC health) also requires at
    /// least one Envoy domain loaded (`server.healthy_needs_domains`,
    /// envoyproxy/ratelimit's `HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`).
    pub healthy_needs_domains: bool,
    /// `server.metrics_auth`: `/metrics` (on every listener) and `GET
    /// /v1/stats` need `Authorization: Bearer <admin_token>` (the page at
    /// `GET /` stays open: it holds no figures, and a browser cannot send
    /// the header when it opens a page; it asks for the token); `false`
    /// (the default): they are open, as `/metrics` always was. `true` needs
    /// `admin_token`.
    pub metrics_auth: bool,
    /// `server.dashboard`: the live dashboard and the statistics behind it.
    pub dashboard: DashboardSettings,
}

/// `server.dashboard`: the page at `GET /`, `GET /v1/stats` and what
/// feeds them (the per-second sampler, the heavy-hitters sketch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DashboardSettings {
    /// `false`: no sampler, no sketch, and `GET /` and `/v1/stats` are
    /// `404`.
    pub enabled: bool,
    /// Whether the keys denied most are shown as they are (their first
    /// bytes) instead of as keyed hashes.
    pub show_keys: bool,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            enabled: true,
            show_keys: false,
        }
    }
}

/// `server.grpc_tls`: the gRPC port's certificate, the CA that client
/// certificates must chain to (mutual TLS) when `client_ca` is set, and the
/// name they must be valid for when `client_san` is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcTlsSettings {
    /// The server's certificate chain (PEM file).
    pub cert: PathBuf,
    /// The server's private key (PEM file).
    pub key: PathBuf,
    /// Client certificates are required and verified against this CA (PEM
    /// file); `None`: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: the client certificate must also be valid for
    /// this name (a DNS name, wildcards in the certificate matching, or an
    /// IP address), as envoyproxy/ratelimit's `GRPC_CLIENT_TLS_SAN`, or the
    /// handshake fails.
    pub client_san: Option<String>,
}

/// `server.metrics`: a listener of its own for Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSettings {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The path the text is served at (any other path: 404).
    pub path: String,
}

/// The default `server.metrics.path`.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// The default `server.grpc_max_connection_age`.
pub const DEFAULT_GRPC_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http: default_addr(DEFAULT_HTTP),
            grpc: ListenAddr::Tcp(default_addr(DEFAULT_GRPC)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            admin_token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            grpc_max_streams: DEFAULT_GRPC_MAX_STREAMS,
            grpc_max_buffered_bytes: DEFAULT_GRPC_MAX_BUFFERED_BYTES,
            grpc_max_calls: DEFAULT_GRPC_MAX_CALLS,
            grpc_request_timeout: DEFAULT_GRPC_REQUEST_TIMEOUT,
            grpc_max_connection_age: DEFAULT_GRPC_MAX_CONNECTION_AGE,
            grpc_max_connection_age_grace: DEFAULT_GRPC_REQUEST_TIMEOUT + Duration::from_secs(1),
            grpc_tls: None,
            metrics: None,
            healthy_needs_domains: false,
            metrics_auth: false,
            dashboard: DashboardSettings::default(),
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

/// How counters are named in Redis (`store.key_layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLayout {
    /// tollgate's own names, `<prefix>:{<identity>}:<policy>:<algorithm>`,
    /// for every policy.
    #[default]
    Tollgate,
    /// envoyproxy/ratelimit's names for the fixed-window counters of inline
    /// Envoy descriptors (`<envoy_prefix><domain>_<key>_<value>_..._<window
    /// start>`), so a rolling replacement keeps every count; tollgate's
    /// names for everything else. Standalone Redis only (see docs/REDIS.md).
    Envoy,
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
    /// The most open reservations the memory store keeps; past it those
    /// nearest their deadline are settled at their estimate early. Memory
    /// store only (refused on Redis, where each reservation is a key that
    /// expires at its deadline).
    pub max_reservations: usize,
    /// Connections to the Redis server (`redis`, and the master of
    /// `redis_sentinel`), used in turn; see
    /// [`RedisOptions::connections`](tollgate_redis::RedisOptions::connections).
    pub connections: usize,
    /// How counters are named (`tollgate` or `envoy`); one value for both
    /// stores.
    pub key_layout: KeyLayout,
    /// envoyproxy/ratelimit's `CACHE_KEY_PREFIX`: written as it is in front
    /// of the counters in its layout (`key_layout: envoy` only; may be
    /// empty, its default). One value for both stores.
    pub envoy_prefix: String,
    /// The store for every policy whose period is exactly one second
    /// (envoyproxy/ratelimit's `REDIS_PERSECOND*`); `None`: the one store
    /// holds everything. Never has a `per_second` of its own.
    pub per_second: Option<Box<StoreSettings>>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::Memory,
            urls: Vec::new(),
            sentinel: None,
            tls: None,
            prefix: tollgate_redis::store::DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_STORE_TIMEOUT,
            on_failure: FailureMode::Open,
            local_share: 1.0,
            breaker: BreakerSettings::default(),
            deny_cache: DenyCacheSettings::default(),
            max_keys: tollgate::store::memory::DEFAULT_MAX_KEYS,
            max_reservations: tollgate::store::memory::DEFAULT_MAX_RESERVATIONS,
            connections: tollgate_redis::pool::default_connections(),
            key_layout: KeyLayout::Tollgate,
            envoy_prefix: String::new(),
            per_second: None,
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

/// envoyproxy/ratelimit's default `NEAR_LIMIT_RATIO`.
pub const DEFAULT_NEAR_LIMIT_RATIO: f64 = 0.8;
/// The default most series of envoyproxy/ratelimit's per-descriptor
/// statistics (`envoy.stats_max_series`).
pub const DEFAULT_STATS_MAX_SERIES: usize = 1000;
/// The largest `envoy.stats_max_series`: each series is five counters in
/// every scrape, so beyond this a scrape grows past what Prometheus takes
/// comfortably.
pub const MAX_STATS_MAX_SERIES: usize = 100_000;

/// The `envoy:` section, validated: envoyproxy/ratelimit's service-wide
/// switches (its `SHADOW_MODE`, `QUOTA_MODE`, `NEAR_LIMIT_RATIO`,
/// `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`, `RESPONSE_DYNAMIC_METADATA`)
/// and the bound on its statistics.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EnvoySettings {
    /// Every Envoy request is answered `OK` overall, whatever its
    /// descriptors say (each descriptor's status is unchanged), and counted
    /// in `ratelimit_service_global_shadow_mode`.
    pub shadow_mode: bool,
    /// Every descriptor is in quota mode, as if each had `quota_mode: true`.
    pub quota_mode: bool,
    /// A hit is "near the limit" in the statistics once the count it brings
    /// a limit to is above this share of it, in [0, 1].
    pub near_limit_ratio: f64,
    /// When any descriptor of a request is over its limit, none of the
    /// request's descriptors is charged (tollgate never charges the one
    /// over the limit anyway; this extends it to the others).
    pub stop_cache_key_increment_when_overlimit: bool,
    /// The most series of per-descriptor statistics kept; hits of further
    /// statistics keys are counted in one overflow series.
    pub stats_max_series: usize,
    /// `envoy.response_headers`: envoyproxy/ratelimit's
    /// `LIMIT_RESPONSE_HEADERS_ENABLED` headers.
    pub response_headers: ResponseHeaderSettings,
    /// `envoy.response_dynamic_metadata`: answers carry dynamic metadata
    /// (the request and the passed descriptors' configured `metadata`, see
    /// [`crate::envoy::metadata`]), as envoyproxy/ratelimit's with
    /// `RESPONSE_DYNAMIC_METADATA`.
    pub response_dynamic_metadata: bool,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            shadow_mode: false,
            quota_mode: false,
            near_limit_ratio: DEFAULT_NEAR_LIMIT_RATIO,
            stop_cache_key_increment_when_overlimit: false,
            stats_max_series: DEFAULT_STATS_MAX_SERIES,
            response_headers: ResponseHeaderSettings::default(),
            response_dynamic_metadata: false,
        }
    }
}

/// `envoy.response_headers`: when enabled, every `ShouldRateLimit` answer
/// that decided a limit carries three headers, as envoyproxy/ratelimit
/// writes them: the limit, what remains and the seconds until it resets,
/// of the descriptor with the least remaining.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseHeaderSettings {
    /// Whether the headers are written.
    pub enabled: bool,
    /// The name of the limit's header (default `RateLimit-Limit`).
    pub limit: String,
    /// The name of the remaining count's header (default `RateLimit-Remaining`).
    pub remaining: String,
    /// The name of the reset header, in seconds (default `RateLimit-Reset`).
    pub reset: String,
}

impl Default for ResponseHeaderSettings {
    fn default() -> Self {
        ResponseHeaderSettings {
            enabled: false,
            limit: "RateLimit-Limit".to_owned(),
            remaining: "RateLimit-Remaining".to_owned(),
            reset: "RateLimit-Reset".to_owned(),
        }
    }
}
