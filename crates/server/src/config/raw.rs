//! The YAML schema of `server:`, `store:` and `policies:` as written, and
//! its validation into settings and named policies. Each section is
//! [`Checked`], so its errors carry its location; `domains:` is the Envoy
//! descriptor schema, in `envoy::schema`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate::{Algorithm, Lease, Policy};

use super::files::{ReadError, read_regular};
use super::parse::{
    self, AlgorithmName, Checked, DurationText, FailureModeName, ListenText, Validate,
};
use super::settings::{
    DEFAULT_METRICS_PATH, DEFAULT_NEAR_LIMIT_RATIO, DashboardSettings, EnvoySettings,
    GrpcTlsSettings, MAX_STATS_MAX_SERIES, MetricsSettings, ResponseHeaderSettings,
};
use super::{
    BreakerSettings, DenyCacheSettings, FailureMode, KeyLayout, MAX_MAX_KEYS, MAX_MAX_RESERVATIONS,
    MAX_POLICY_NAME, ServerSettings, StoreKind, StoreSettings,
};
use super::{SentinelSettings, TlsFiles};
use crate::envoy::{self, RawDomain};

/// The most `store.connections` (the library's own bound).
const MAX_CONNECTIONS: u64 = tollgate_redis::pool::MAX_CONNECTIONS as u64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: Option<Checked<RawServer>>,
    #[serde(default)]
    pub(super) store: Option<Checked<RawStore>>,
    #[serde(default)]
    pub(super) policies: Vec<Checked<RawPolicy>>,
    #[serde(default)]
    pub(super) domains: Vec<Checked<RawDomain>>,
    #[serde(default)]
    pub(super) envoy: Option<Checked<RawEnvoy>>,
    #[serde(default)]
    pub(super) overrides: Vec<Checked<RawOverride>>,
}

impl RawConfig {
    /// Every policy name the descriptors reference.
    pub(super) fn references(&self) -> impl Iterator<Item = &str> {
        self.domains
            .iter()
            .flat_map(|d| d.0.descriptors.iter())
            .flat_map(envoy::Descriptor::references)
    }
}

/// The largest `server.max_connections`.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// The largest `server.grpc_max_streams`.
const MAX_GRPC_STREAMS_LIMIT: u32 = 65_536;
/// The largest `server.grpc_max_calls`.
const MAX_GRPC_CALLS_LIMIT: usize = 10_000_000;
/// The largest `server.grpc_max_buffered_bytes`: 64 GiB; more is a typo.
const MAX_GRPC_BUFFERED_LIMIT: usize = 64 << 30;
/// The longest of the `server.*_timeout` durations.
const MAX_SERVER_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    http: Option<SocketAddr>,
    grpc: Option<ListenText>,
    max_body_bytes: Option<usize>,
    max_key_bytes: Option<usize>,
    admin_token: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<DurationText>,
    body_timeout: Option<DurationText>,
    idle_timeout: Option<DurationText>,
    shutdown_timeout: Option<DurationText>,
    grpc_max_streams: Option<u32>,
    grpc_max_buffered_bytes: Option<usize>,
    grpc_max_calls: Option<usize>,
    grpc_request_timeout: Option<DurationText>,
    grpc_max_connection_age: Option<DurationText>,
    grpc_max_connection_age_grace: Option<DurationText>,
    grpc_tls: Option<Checked<RawGrpcTls>>,
    metrics: Option<Checked<RawMetrics>>,
    healthy_needs_domains: Option<bool>,
    metrics_auth: Option<bool>,
    dashboard: Option<Checked<RawDashboard>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    enabled: Option<bool>,
    show_keys: Option<bool>,
}

impl Validate for RawDashboard {
    type Output = DashboardSettings;

    fn validate(self) -> Result<DashboardSettings, String> {
        let defaults = DashboardSettings::default();
        Ok(DashboardSettings {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            show_keys: self.show_keys.unwrap_or(defaults.show_keys),
        })
    }
}

/// The longest `server.grpc_max_connection_age` (and its grace): a year.
/// envoyproxy/ratelimit's defaults (24 h, and 1 h of grace) fit well within.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpcTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_san: Option<String>,
}

impl Validate for RawGrpcTls {
    type Output = GrpcTlsSettings;

    fn validate(self) -> Result<GrpcTlsSettings, String> {
        for (name, path) in [
            ("cert", Some(&self.cert)),
            ("key", Some(&self.key)),
            ("client_ca", self.client_ca.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("{name} must not be empty"));
            }
        }
        if let Some(san) = &self.client_san {
            if san.is_empty() {
                return Err("client_san must not be empty".into());
            }
            if self.client_ca.is_none() {
                return Err(
                    "client_san needs client_ca: without it no client certificate is asked for"
                        .into(),
                );
            }
            crate::grpc_tls::client_name(san)?;
        }
        Ok(GrpcTlsSettings {
            cert: self.cert,
            key: self.key,
            client_ca: self.client_ca,
            client_san: self.client_san,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    addr: SocketAddr,
    path: Option<String>,
}

impl Validate for RawMetrics {
    type Output = MetricsSettings;

    fn validate(self) -> Result<MetricsSettings, String> {
        let path = self.path.unwrap_or_else(|| DEFAULT_METRICS_PATH.to_owned());
        // The path is a literal route: `{`, `}` and `*` would make it a
        // pattern (or a refused one) in the router, and so would a segment
        // starting with `:`.
        if !path.starts_with('/')
            || path.len() > 256
            || path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*'))
            || path.split('/').any(|segment| segment.starts_with(':'))
        {
            return Err(format!(
                "path `{path}` must start with `/`, be at most 256 bytes, and hold no spaces, `{{`, `}}`, `*` or segment starting with `:`"
            ));
        }
        Ok(MetricsSettings {
            addr: self.addr,
            path,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponseHeaders {
    enabled: Option<bool>,
    limit: Option<String>,
    remaining: Option<String>,
    reset: Option<String>,
}

impl Validate for RawResponseHeaders {
    type Output = ResponseHeaderSettings;

    fn validate(self) -> Result<ResponseHeaderSettings, String> {
        let defaults = ResponseHeaderSettings::default();
        let name = |field: &str, value: Option<String>, default: String| match value {
            None => Ok(default),
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => Ok(name),
            Some(name) => Err(format!("{field}: `{name}` is not a valid header name")),
        };
        Ok(ResponseHeaderSettings {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            limit: name("limit", self.limit, defaults.limit)?,
            remaining: name("remaining", self.remaining, defaults.remaining)?,
            reset: name("reset", self.reset, defaults.reset)?,
        })
    }
}

impl Validate for RawServer {
    type Output = ServerSettings;

    fn validate(self) -> Result<ServerSettings, String> {
        let defaults = ServerSettings::default();
        let max_body_bytes = self.max_body_bytes.unwrap_or(defaults.max_body_bytes);
        if !(64..=16 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(format!(
                "max_body_bytes must be between 64 and 16777216, not {max_body_bytes}"
            ));
        }
        let max_key_bytes = self.max_key_bytes.unwrap_or(defaults.max_key_bytes);
        if max_key_bytes == 0 || max_key_bytes > max_body_bytes {
            return Err(format!(
                "max_key_bytes must be between 1 and max_body_bytes ({max_body_bytes}), not {max_key_bytes}"
            ));
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(
                "admin_token must not be empty (leave it out to keep admin endpoints such as `/v1/reset` closed)"
                    .into(),
            );
        }
        if self.admin_token.as_deref().is_some_and(|token| {
            token.trim_matches([' ', '\t']) != token || token.chars().any(char::is_control)
        }) {
            return Err(
                "admin_token must not start or end with a space or hold a control character: no \
                 `Authorization` header can carry it (HTTP drops the spaces around a value and \
                 refuses control characters in it), so it would never match"
                    .into(),
            );
        }
        let metrics_auth = self.metrics_auth.unwrap_or(defaults.metrics_auth);
        if metrics_auth && self.admin_token.is_none() {
            return Err(
                "metrics_auth: true needs admin_token (the token `/metrics` and `/v1/stats` then require)"
                    .into(),
            );
        }
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&max_connections) {
            return Err(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}, not {max_connections}"
            ));
        }
        let grpc_max_streams = self.grpc_max_streams.unwrap_or(defaults.grpc_max_streams);
        if !(1..=MAX_GRPC_STREAMS_LIMIT).contains(&grpc_max_streams) {
            return Err(format!(
                "grpc_max_streams must be between 1 and {MAX_GRPC_STREAMS_LIMIT}, not {grpc_max_streams}"
            ));
        }
        let grpc_max_calls = self.grpc_max_calls.unwrap_or(defaults.grpc_max_calls);
        if !(1..=MAX_GRPC_CALLS_LIMIT).contains(&grpc_max_calls) {
            return Err(format!(
                "grpc_max_calls must be between 1 and {MAX_GRPC_CALLS_LIMIT}, not {grpc_max_calls}"
            ));
        }
        let grpc_max_buffered_bytes = self
            .grpc_max_buffered_bytes
            .unwrap_or(defaults.grpc_max_buffered_bytes);
        // Below the longest request body, such a request could never be
        // received.
        let least = crate::grpc_calls::MAX_REQUEST_BODY_BYTES;
        if !(least..=MAX_GRPC_BUFFERED_LIMIT).contains(&grpc_max_buffered_bytes) {
            return Err(format!(
                "grpc_max_buffered_bytes must be between {least} (the longest request: one message and its prefix) and {MAX_GRPC_BUFFERED_LIMIT}, not {grpc_max_buffered_bytes}"
            ));
        }
        let timeout = |name: &str, value: Option<DurationText>, default: Duration| {
            let value = value.map_or(default, |d| d.0);
            if value.is_zero() || value > MAX_SERVER_TIMEOUT {
                Err(format!(
                    "{name} must be above zero and at most 1h, not {value:?}"
                ))
            } else {
                Ok(value)
            }
        };
        let grpc_request_timeout = timeout(
            "grpc_request_timeout",
            self.grpc_request_timeout,
            defaults.grpc_request_timeout,
        )?;
        let age = |name: &str, value: Option<DurationText>, default: Duration| {
            let value = value.map_or(default, |d| d.0);
            if value.is_zero() || value > MAX_CONNECTION_AGE {
                Err(format!(
                    "{name} must be above zero and at most 365 days, not {value:?}"
                ))
            } else {
                Ok(value)
            }
        };
        Ok(ServerSettings {
            http: self.http.unwrap_or(defaults.http),
            grpc: self.grpc.map_or(defaults.grpc, |g| g.0),
            max_body_bytes,
            max_key_bytes,
            admin_token: self.admin_token,
            max_connections,
            header_timeout: timeout(
                "header_timeout",
                self.header_timeout,
                defaults.header_timeout,
            )?,
            body_timeout: timeout("body_timeout", self.body_timeout, defaults.body_timeout)?,
            idle_timeout: timeout("idle_timeout", self.idle_timeout, defaults.idle_timeout)?,
            shutdown_timeout: timeout(
                "shutdown_timeout",
                self.shutdown_timeout,
                defaults.shutdown_timeout,
            )?,
            grpc_max_streams,
            grpc_max_buffered_bytes,
            grpc_max_calls,
            grpc_request_timeout,
            grpc_max_connection_age: age(
                "grpc_max_connection_age",
                self.grpc_max_connection_age,
                defaults.grpc_max_connection_age,
            )?,
            grpc_max_connection_age_grace: age(
                "grpc_max_connection_age_grace",
                self.grpc_max_connection_age_grace,
                grpc_request_timeout + Duration::from_secs(1),
            )?,
            grpc_tls: self.grpc_tls.map(|t| t.0),
            metrics: self.metrics.map(|m| m.0),
            healthy_needs_domains: self.healthy_needs_domains.unwrap_or(false),
            metrics_auth,
            dashboard: self.dashboard.map(|d| d.0).unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default)]
    kind: StoreKind,
    url: Option<String>,
    urls: Option<Vec<String>>,
    prefix: Option<String>,
    timeout: Option<DurationText>,
    on_failure: Option<FailureModeName>,
    local_share: Option<f64>,
    breaker: Option<Checked<RawBreaker>>,
    deny_cache: Option<Checked<RawDenyCache>>,
    max_keys: Option<u64>,
    max_reservations: Option<u64>,
    connections: Option<u64>,
    master_name: Option<String>,
    master_username: Option<String>,
    master_password: Option<String>,
    master_tls: Option<bool>,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    key_layout: Option<KeyLayout>,
    envoy_prefix: Option<String>,
    per_second: Option<PerSecondSection>,
}

/// A `store.per_second` section as parsed.
type PerSecondSection = Box<Checked<RawPerSecond>>;

/// `store.per_second`: a store section of its own (see [`PerSecond`] for
/// what it inherits from `store:`).
#[derive(Deserialize)]
#[serde(transparent)]
struct RawPerSecond(RawStore);

/// A `store.per_second` section, checked on its own, with what it wrote:
/// what it leaves out is `store:`'s.
struct PerSecond {
    settings: StoreSettings,
    prefix: bool,
    timeout: bool,
    on_failure: bool,
    local_share: bool,
    breaker: bool,
    deny_cache: bool,
    max_keys: bool,
    max_reservations: bool,
    connections: bool,
}

impl PerSecond {
    /// The per-second store's settings: its own where written, `main`'s
    /// otherwise. `key_layout` and `envoy_prefix` are always `main`'s,
    /// except that a per-second Redis Cluster keeps tollgate's layout.
    fn inherit(self, main: &StoreSettings) -> StoreSettings {
        let own = self.settings;
        StoreSettings {
            prefix: if self.prefix {
                own.prefix
            } else {
                main.prefix.clone()
            },
            timeout: if self.timeout {
                own.timeout
            } else {
                main.timeout
            },
            on_failure: if self.on_failure {
                own.on_failure
            } else {
                main.on_failure
            },
            local_share: if self.local_share {
                own.local_share
            } else {
                main.local_share
            },
            breaker: if self.breaker {
                own.breaker
            } else {
                main.breaker
            },
            deny_cache: if self.deny_cache {
                own.deny_cache
            } else {
                main.deny_cache
            },
            max_keys: if self.max_keys {
                own.max_keys
            } else {
                main.max_keys
            },
            max_reservations: if self.max_reservations {
                own.max_reservations
            } else {
                main.max_reservations
            },
            connections: if self.connections {
                own.connections
            } else {
                main.connections
            },
            // A Cluster cannot hold envoyproxy/ratelimit's layout (see
            // `check_layout`): a per-second Cluster keeps tollgate's.
            key_layout: if own.kind == StoreKind::RedisCluster {
                KeyLayout::Tollgate
            } else {
                main.key_layout
            },
            envoy_prefix: main.envoy_prefix.clone(),
            per_second: None,
            ..own
        }
    }
}

impl Validate for RawPerSecond {
    type Output = PerSecond;

    fn validate(self) -> Result<PerSecond, String> {
        let raw = self.0;
        if raw.per_second.is_some() {
            return Err("a per_second store has no per_second section of its own".into());
        }
        for (written, key) in [
            (raw.key_layout.is_some(), "key_layout"),
            (raw.envoy_prefix.is_some(), "envoy_prefix"),
        ] {
            if written {
                return Err(format!(
                    "`{key}` is one setting for both stores: write it in `store:`, and the per_second store follows it"
                ));
            }
        }
        Ok(PerSecond {
            prefix: raw.prefix.is_some(),
            timeout: raw.timeout.is_some(),
            on_failure: raw.on_failure.is_some(),
            local_share: raw.local_share.is_some(),
            breaker: raw.breaker.is_some(),
            deny_cache: raw.deny_cache.is_some(),
            max_keys: raw.max_keys.is_some(),
            max_reservations: raw.max_reservations.is_some(),
            connections: raw.connections.is_some(),
            settings: raw.section()?.0,
        })
    }
}

/// Whether `settings` can keep counters in its `key_layout`.
fn check_layout(settings: &StoreSettings) -> Result<(), String> {
    if settings.key_layout == KeyLayout::Tollgate {
        return Ok(());
    }
    match settings.kind {
        StoreKind::Memory => Err(
            "key_layout: envoy names Redis keys, and the memory store has none (use kind: redis)"
                .into(),
        ),
        StoreKind::RedisCluster => Err(
            "key_layout: envoy is not supported on redis_cluster: an envoyproxy/ratelimit counter's key ends with its window start, so its Cluster slot changes with every window, and the window is known only inside the script, from Redis's clock; use kind: redis, or key_layout: tollgate (counters then start fresh at the cutover)"
                .into(),
        ),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<u32>,
    cooldown: Option<DurationText>,
    half_open_probes: Option<u32>,
}

impl Validate for RawBreaker {
    type Output = BreakerSettings;

    fn validate(self) -> Result<BreakerSettings, String> {
        let defaults = BreakerSettings::default();
        let settings = BreakerSettings {
            failures: self.failures.unwrap_or(defaults.failures),
            cooldown: self.cooldown.map_or(defaults.cooldown, |c| c.0),
            half_open_probes: self.half_open_probes.unwrap_or(defaults.half_open_probes),
        };
        if settings.failures == 0 {
            return Err(
                "failures must be at least 1 (1 opens the breaker at the first failure)".into(),
            );
        }
        if settings.half_open_probes == 0 {
            return Err("half_open_probes must be at least 1".into());
        }
        if settings.cooldown.is_zero() {
            return Err("cooldown must be above zero".into());
        }
        Ok(settings)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDenyCache {
    enabled: Option<bool>,
    capacity: Option<usize>,
}

impl Validate for RawDenyCache {
    type Output = DenyCacheSettings;

    fn validate(self) -> Result<DenyCacheSettings, String> {
        let defaults = DenyCacheSettings::default();
        let settings = DenyCacheSettings {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            capacity: self.capacity.unwrap_or(defaults.capacity),
        };
        if settings.capacity == 0 {
            return Err(
                "capacity must be at least 1 (to turn the cache off: `enabled: false`)".into(),
            );
        }
        Ok(settings)
    }
}

impl Validate for RawStore {
    type Output = StoreSettings;

    fn validate(self) -> Result<StoreSettings, String> {
        let (mut settings, per_second) = self.section()?;
        check_layout(&settings)?;
        if settings.key_layout == KeyLayout::Tollgate && !settings.envoy_prefix.is_empty() {
            return Err(
                "envoy_prefix names counters in envoyproxy/ratelimit's layout: it needs key_layout: envoy"
                    .into(),
            );
        }
        if let Some(per_second) = per_second {
            let per_second = per_second.0.inherit(&settings);
            check_layout(&per_second).map_err(|e| format!("per_second: {e}"))?;
            settings.per_second = Some(Box::new(per_second));
        }
        Ok(settings)
    }
}

impl RawStore {
    /// This section's own settings, each value checked (unset: the
    /// default), and its `per_second` section as written.
    fn section(self) -> Result<(StoreSettings, Option<PerSecondSection>), String> {
        let urls = match (self.kind, self.url, self.urls) {
            (StoreKind::Memory, None, None) => Vec::new(),
            (StoreKind::Memory, _, _) => {
                return Err("the memory store takes no `url` or `urls`".into());
            }
            (StoreKind::Redis, Some(url), None) => vec![url],
            (StoreKind::Redis, None, None) => {
                return Err("`url` is required when kind is redis".into());
            }
            (StoreKind::Redis, _, Some(_)) => {
                return Err(
                    "kind redis takes `url`; `urls` is for redis_cluster and redis_sentinel".into(),
                );
            }
            (StoreKind::RedisCluster, None, Some(urls)) if !urls.is_empty() => urls,
            (StoreKind::RedisCluster, Some(_), _) => {
                return Err(
                    "kind redis_cluster takes `urls: [...]` (seed nodes), not `url`".into(),
                );
            }
            (StoreKind::RedisCluster, None, _) => {
                return Err(
                    "`urls` (at least one seed node) is required when kind is redis_cluster".into(),
                );
            }
            (StoreKind::RedisSentinel, None, Some(urls)) if !urls.is_empty() => urls,
            (StoreKind::RedisSentinel, Some(_), _) => {
                return Err(
                    "kind redis_sentinel takes `urls: [...]` (the sentinels), not `url`".into(),
                );
            }
            (StoreKind::RedisSentinel, None, _) => {
                return Err(
                    "`urls` (at least one sentinel) is required when kind is redis_sentinel".into(),
                );
            }
        };
        for url in &urls {
            check_store_url(self.kind, url)?;
        }
        let sentinel = sentinel_settings(
            self.kind,
            &urls,
            self.master_name,
            self.master_username,
            self.master_password,
            self.master_tls,
        )?;
        let tls = tls_files(
            self.kind,
            &urls,
            sentinel.as_ref(),
            self.tls_ca_file,
            self.tls_cert_file,
            self.tls_key_file,
        )?;
        let defaults = StoreSettings::default();
        let prefix = self.prefix.unwrap_or(defaults.prefix);
        if let Err(e) = tollgate_redis::keys::validate_prefix(&prefix) {
            return Err(format!("prefix: {e}"));
        }
        let timeout = self.timeout.map_or(defaults.timeout, |t| t.0);
        if timeout.is_zero() {
            return Err("timeout must be above zero".into());
        }
        let local_share = self.local_share.unwrap_or(defaults.local_share);
        // Written so that NaN fails too.
        if !(local_share > 0.0 && local_share <= 1.0) {
            return Err(format!(
                "local_share must be above 0 and at most 1 (e.g. 0.25 for four instances), got {local_share}"
            ));
        }
        let max_keys = match self.max_keys {
            None => defaults.max_keys,
            Some(n @ 1..=MAX_MAX_KEYS) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(format!(
                    "max_keys must be between 1 and {MAX_MAX_KEYS}, not {n}"
                ));
            }
        };
        let max_reservations = match self.max_reservations {
            None => defaults.max_reservations,
            Some(_) if self.kind != StoreKind::Memory => {
                return Err(
                    "max_reservations bounds the memory store's open reservations; on Redis each reservation is a key of its own that expires at its deadline (remove it, or use kind: memory)"
                        .into(),
                );
            }
            Some(n @ 1..=MAX_MAX_RESERVATIONS) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(format!(
                    "max_reservations must be between 1 and {MAX_MAX_RESERVATIONS}, not {n}"
                ));
            }
        };
        let connections = match self.connections {
            None => defaults.connections,
            Some(_) if !matches!(self.kind, StoreKind::Redis | StoreKind::RedisSentinel) => {
                return Err(format!(
                    "connections is {}",
                    tollgate_redis::pool::CONNECTIONS_APPLY_TO
                ));
            }
            Some(n @ 1..=MAX_CONNECTIONS) => usize::try_from(n).unwrap_or(1),
            Some(n) => {
                return Err(format!(
                    "connections must be between 1 and {MAX_CONNECTIONS}, not {n}"
                ));
            }
        };
        let settings = StoreSettings {
            kind: self.kind,
            urls,
            sentinel,
            tls,
            prefix,
            timeout,
            on_failure: self.on_failure.map_or(defaults.on_failure, |m| m.0),
            local_share,
            breaker: self.breaker.map_or(defaults.breaker, |b| b.0),
            deny_cache: self.deny_cache.map_or(defaults.deny_cache, |d| d.0),
            max_keys,
            max_reservations,
            connections,
            key_layout: self.key_layout.unwrap_or(defaults.key_layout),
            envoy_prefix: self.envoy_prefix.unwrap_or(defaults.envoy_prefix),
            per_second: None,
        };
        Ok((settings, self.per_second))
    }
}

/// A store URL's scheme: TCP (`redis://`, `rediss://`) for every kind,
/// and a unix socket (`unix:///path`, `redis+unix:///path`) for kind
/// `redis` only (a Cluster's nodes and the sentinels are reached over TCP).
fn check_store_url(kind: StoreKind, url: &str) -> Result<(), String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(());
    }
    let socket = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("redis+unix://"));
    match (socket, kind) {
        (Some(path), StoreKind::Redis) if path.starts_with('/') => Ok(()),
        (Some(_), StoreKind::Redis) => Err(format!(
            "store URL `{}`: a unix socket URL needs an absolute path, e.g. unix:///run/redis/redis.sock",
            tollgate_redis::store::redact(url)
        )),
        (Some(_), _) => Err(format!(
            "store URL `{}`: unix sockets are for kind redis; a {} is reached over redis:// or rediss://",
            tollgate_redis::store::redact(url),
            if kind == StoreKind::RedisSentinel {
                "sentinel"
            } else {
                "cluster node"
            }
        )),
        (None, StoreKind::Redis) => Err(format!(
            "store URL `{}` must start with redis://, rediss://, unix:// or redis+unix://",
            tollgate_redis::store::redact(url)
        )),
        (None, _) => Err(format!(
            "store URL `{}` must start with redis:// or rediss://",
            tollgate_redis::store::redact(url)
        )),
    }
}

/// `store.master_*`: required (`master_name`) for kind `redis_sentinel`,
/// refused for every other kind.
fn sentinel_settings(
    kind: StoreKind,
    urls: &[String],
    master_name: Option<String>,
    master_username: Option<String>,
    master_password: Option<String>,
    master_tls: Option<bool>,
) -> Result<Option<SentinelSettings>, String> {
    if kind != StoreKind::RedisSentinel {
        let given = [
            ("master_name", master_name.is_some()),
            ("master_username", master_username.is_some()),
            ("master_password", master_password.is_some()),
            ("master_tls", master_tls.is_some()),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(format!("`{key}` is only for kind redis_sentinel")),
            None => Ok(None),
        };
    }
    let Some(master_name) = master_name else {
        return Err(
            "`master_name` (the name the sentinels monitor the master under) is required when kind is redis_sentinel"
                .into(),
        );
    };
    if master_name.is_empty()
        || master_name.len() > MAX_MASTER_NAME
        || master_name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "master_name must be 1 to {MAX_MASTER_NAME} characters without spaces or control characters"
        ));
    }
    if master_username.is_some() && master_password.is_none() {
        return Err("`master_username` needs `master_password`".into());
    }
    if master_password.as_deref() == Some("") {
        return Err("master_password is empty (leave it out for a master without one)".into());
    }
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        return Err(
            "the sentinels' `urls` mix redis:// and rediss://: use one scheme for all".into(),
        );
    }
    Ok(Some(SentinelSettings {
        master_name,
        master_username,
        master_password,
        master_tls: master_tls.unwrap_or(tls != 0),
    }))
}

/// `store.tls_*_file`: read now (so a missing file is reported with its
/// line), only with TLS in use (a `rediss://` URL, or `master_tls`), the
/// certificate and its key together.
fn tls_files(
    kind: StoreKind,
    urls: &[String],
    sentinel: Option<&SentinelSettings>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<TlsFiles>, String> {
    let given = [
        ("tls_ca_file", &ca),
        ("tls_cert_file", &cert),
        ("tls_key_file", &key),
    ];
    let Some((first, _)) = given.iter().find(|(_, path)| path.is_some()) else {
        return Ok(None);
    };
    if kind == StoreKind::Memory {
        return Err(format!("`{first}` is for the Redis kinds"));
    }
    let tls =
        urls.iter().any(|u| u.starts_with("rediss://")) || sentinel.is_some_and(|s| s.master_tls);
    if !tls {
        return Err(format!(
            "`{first}` needs TLS: a rediss:// URL{}",
            if kind == StoreKind::RedisSentinel {
                " or `master_tls: true`"
            } else {
                ""
            }
        ));
    }
    let read = |key: &str, path: &str| -> Result<Vec<u8>, String> {
        let bytes = read_tls_file(Path::new(path)).map_err(|e| format!("{key} `{path}`: {e}"))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!("{key} `{path}` is not PEM (no `-----BEGIN `)"));
        }
        Ok(bytes)
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => {
            Some((read("tls_cert_file", &cert)?, read("tls_key_file", &key)?))
        }
        (None, None) => None,
        _ => return Err("`tls_cert_file` and `tls_key_file` go together".into()),
    };
    let ca = ca.map(|path| read("tls_ca_file", &path)).transpose()?;
    Ok(Some(TlsFiles { ca, client }))
}

/// The largest TLS file read, the store's and the gRPC port's
/// (certificates and keys are a few KB).
pub(crate) const MAX_TLS_FILE_BYTES: u64 = 1 << 20;

/// Reads a TLS file, the store's or the gRPC port's, whole: a regular file
/// of at most [`MAX_TLS_FILE_BYTES`] ([`read_regular`]).
///
/// # Errors
/// What is wrong, without the path (callers name the file their way).
pub(crate) fn read_tls_file(path: &Path) -> Result<Vec<u8>, String> {
    read_regular(path, MAX_TLS_FILE_BYTES).map_err(|error| match error {
        ReadError::Io(error) => error.to_string(),
        ReadError::TooLarge(_) => format!("over {MAX_TLS_FILE_BYTES} bytes: not a PEM file"),
    })
}

/// The longest `store.master_name`.
const MAX_MASTER_NAME: usize = 256;

/// A named policy.
pub(super) struct NamedPolicy {
    pub(super) name: String,
    pub(super) policy: Policy,
    /// Overrides the store's `on_failure` for this policy.
    pub(super) on_failure: Option<FailureMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    name: String,
    algorithm: Option<AlgorithmName>,
    limit: u64,
    period: DurationText,
    burst: Option<u64>,
    on_failure: Option<FailureModeName>,
    lease: Option<Checked<RawLease>>,
    max_overdraft: Option<u64>,
}

/// A policy's `lease:` section: `{ max: <units>, ttl: <duration> }`, both
/// required, bounded by [`Lease::new`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    max: u64,
    ttl: DurationText,
}

impl Validate for RawLease {
    type Output = Lease;

    fn validate(self) -> Result<Lease, String> {
        Lease::new(self.max, self.ttl.0).map_err(|e| e.to_string())
    }
}

/// Checks a policy name: it appears quoted in `RateLimit` header fields
/// and in metric labels, so it is short printable ASCII without quotes.
fn validate_policy_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("policy name must not be empty".into());
    }
    if name.len() > MAX_POLICY_NAME {
        return Err(format!(
            "policy name `{name}` is longer than {MAX_POLICY_NAME} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:/".contains(*c)))
    {
        return Err(format!(
            "policy name `{name}` contains `{c}`: use letters, digits and _ - . : /"
        ));
    }
    if name.starts_with("envoy/") {
        return Err(format!(
            "policy name `{name}`: names starting with `envoy/` are reserved for inline Envoy descriptors"
        ));
    }
    Ok(())
}

impl Validate for RawPolicy {
    type Output = NamedPolicy;

    fn validate(self) -> Result<NamedPolicy, String> {
        validate_policy_name(&self.name)?;
        let algorithm = self.algorithm.map_or(Algorithm::Gcra, |a| a.0);
        let policy = Policy::new(algorithm, self.limit, self.period.0, self.burst)
            .and_then(|policy| match self.lease {
                Some(lease) => policy.with_lease(lease.0),
                None => Ok(policy),
            })
            .and_then(|policy| match self.max_overdraft {
                Some(units) => policy.with_max_overdraft(units),
                None => Ok(policy),
            })
            .map_err(|e| format!("policy `{}`: {e}", self.name))?;
        if !parse::first_policy_definition(&self.name) {
            return Err(format!("policy `{}` is defined twice", self.name));
        }
        Ok(NamedPolicy {
            name: self.name,
            policy,
            on_failure: self.on_failure.map(|m| m.0),
        })
    }
}

/// The `envoy:` section: envoyproxy/ratelimit's service-wide switches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvoy {
    shadow_mode: Option<bool>,
    quota_mode: Option<bool>,
    near_limit_ratio: Option<f64>,
    stop_cache_key_increment_when_overlimit: Option<bool>,
    stats_max_series: Option<usize>,
    response_headers: Option<Checked<RawResponseHeaders>>,
    response_dynamic_metadata: Option<bool>,
}

impl Validate for RawEnvoy {
    type Output = EnvoySettings;

    fn validate(self) -> Result<EnvoySettings, String> {
        let defaults = EnvoySettings::default();
        let near_limit_ratio = self.near_limit_ratio.unwrap_or(DEFAULT_NEAR_LIMIT_RATIO);
        // Written so that NaN fails too.
        if !(0.0..=1.0).contains(&near_limit_ratio) {
            return Err(format!(
                "near_limit_ratio must be between 0 and 1 (0.8: the last 20% of a limit is near it), not {near_limit_ratio}"
            ));
        }
        let stats_max_series = self.stats_max_series.unwrap_or(defaults.stats_max_series);
        if !(1..=MAX_STATS_MAX_SERIES).contains(&stats_max_series) {
            return Err(format!(
                "stats_max_series must be between 1 and {MAX_STATS_MAX_SERIES}, not {stats_max_series}"
            ));
        }
        Ok(EnvoySettings {
            shadow_mode: self.shadow_mode.unwrap_or(defaults.shadow_mode),
            quota_mode: self.quota_mode.unwrap_or(defaults.quota_mode),
            near_limit_ratio,
            stop_cache_key_increment_when_overlimit: self
                .stop_cache_key_increment_when_overlimit
                .unwrap_or(defaults.stop_cache_key_increment_when_overlimit),
            stats_max_series,
            response_headers: self.response_headers.map(|h| h.0).unwrap_or_default(),
            response_dynamic_metadata: self
                .response_dynamic_metadata
                .unwrap_or(defaults.response_dynamic_metadata),
        })
    }
}

/// One entry of the `overrides:` section: a (policy, key) and what it
/// sets, read as the admin API reads its body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverride {
    policy: String,
    key: String,
    limit: Option<u64>,
    period: Option<DurationText>,
    burst: Option<u64>,
    unlimited: Option<bool>,
    blocked: Option<bool>,
}

/// A declared override, checked against its policy later (when every
/// policy is known).
pub(super) struct DeclaredOverride {
    pub(super) policy: String,
    pub(super) key: String,
    pub(super) spec: crate::overrides::Spec,
}

impl Validate for RawOverride {
    type Output = DeclaredOverride;

    fn validate(self) -> Result<DeclaredOverride, String> {
        let spec = crate::overrides::Spec::from_fields(
            self.limit,
            self.period.map(|d| d.0),
            self.burst,
            self.unlimited,
            self.blocked,
        )
        .map_err(|e| format!("override of `{}` for `{}`: {e}", self.policy, self.key))?;
        Ok(DeclaredOverride {
            policy: self.policy,
            key: self.key,
            spec,
        })
    }
}
