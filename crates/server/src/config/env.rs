//! envoyproxy/ratelimit's environment variables, read as that service reads
//! them, and turned into a tollgate configuration.
//!
//! A deployment of envoyproxy/ratelimit is configured by its environment
//! (`RUNTIME_ROOT`, `REDIS_URL`, `CACHE_KEY_PREFIX`, ...). When any of the
//! variables in [`TRIGGERS`] is set, `tollgate serve` configures itself from
//! them ([`EnvoyEnvironment::from_vars`]) instead of running its demo.
//!
//! The mapping produces a tollgate YAML **document** (the text that
//! `tollgate check` prints), so it depends only on the names of tollgate's
//! configuration keys: every rule a value must obey lives where the key is
//! parsed, not here. What this module checks is what only it can: the
//! variables' own syntax (Go booleans, integers and durations, as
//! envoyproxy/ratelimit's `envconfig` parses them) and their combinations
//! (`REDIS_TYPE`, `REDIS_URL`'s list for a cluster or Sentinel). Its errors
//! name the variable.
//!
//! What is not honoured is a warning naming the variable
//! ([`EnvoyEnvironment::warnings`]); every variable, and what becomes of
//! it, is listed in docs/ENVOY.md ("Environment variables").

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::ConfigSource;

/// Variables whose presence switches `tollgate serve` to configuring itself
/// from envoyproxy/ratelimit's environment: all of its variables except the
/// generic names (`HOST`, `PORT`, `LOG_LEVEL`, `LOG_FORMAT`) that other
/// software sets too. Once switched on, those are read as well.
pub const TRIGGERS: &[&str] = &[
    "BACKEND_TYPE",
    "CACHE_KEY_PREFIX",
    "CONFIG_TYPE",
    "DEBUG_HOST",
    "DEBUG_PORT",
    "DISABLE_STATS",
    "EXPIRATION_JITTER_MAX_SECONDS",
    "FORCE_START_WITHOUT_INITIAL_CONFIG",
    "GRPC_CLIENT_TLS_CACERT",
    "GRPC_CLIENT_TLS_SAN",
    "GRPC_HOST",
    "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE",
    "GRPC_PORT",
    "GRPC_SERVER_TLS_CERT",
    "GRPC_SERVER_TLS_KEY",
    "GRPC_SERVER_USE_TLS",
    "GRPC_UDS",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
    "LIMIT_LIMIT_HEADER",
    "LIMIT_REMAINING_HEADER",
    "LIMIT_RESET_HEADER",
    "LIMIT_RESPONSE_HEADERS_ENABLED",
    "LOCAL_CACHE_SIZE_IN_BYTES",
    "MERGE_DOMAIN_CONFIG",
    "NEAR_LIMIT_RATIO",
    "PROMETHEUS_ADDR",
    "PROMETHEUS_MAPPER_YAML",
    "PROMETHEUS_PATH",
    "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
    "QUOTA_MODE",
    "REDIS_AUTH",
    "REDIS_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
    "REDIS_PERSECOND",
    "REDIS_PERSECOND_AUTH",
    "REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_PERSECOND_PIPELINE_LIMIT",
    "REDIS_PERSECOND_PIPELINE_WINDOW",
    "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR",
    "REDIS_PERSECOND_POOL_SIZE",
    "REDIS_PERSECOND_SENTINEL_AUTH",
    "REDIS_PERSECOND_SOCKET_TYPE",
    "REDIS_PERSECOND_TIMEOUT",
    "REDIS_PERSECOND_TLS",
    "REDIS_PERSECOND_TYPE",
    "REDIS_PERSECOND_URL",
    "REDIS_PIPELINE_LIMIT",
    "REDIS_PIPELINE_WINDOW",
    "REDIS_POOL_ON_EMPTY_BEHAVIOR",
    "REDIS_POOL_SIZE",
    "REDIS_SENTINEL_AUTH",
    "REDIS_SOCKET_TYPE",
    "REDIS_STARTUP_INITIAL_INTERVAL",
    "REDIS_STARTUP_MAX_ELAPSED_TIME",
    "REDIS_STARTUP_MAX_INTERVAL",
    "REDIS_TIMEOUT",
    "REDIS_TLS",
    "REDIS_TLS_CACERT",
    "REDIS_TLS_CLIENT_CERT",
    "REDIS_TLS_CLIENT_KEY",
    "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
    "REDIS_TYPE",
    "REDIS_URL",
    "RESPONSE_DYNAMIC_METADATA",
    "RUNTIME_APPDIRECTORY",
    "RUNTIME_IGNOREDOTFILES",
    "RUNTIME_ROOT",
    "RUNTIME_SUBDIRECTORY",
    "RUNTIME_WATCH_ROOT",
    "SHADOW_MODE",
    "STATSD_HOST",
    "STATSD_PORT",
    "STATS_FLUSH_INTERVAL",
    "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
    "USE_DOG_STATSD",
    "USE_DOG_STATSD_MOGRIFIERS",
    "USE_PROMETHEUS",
    "USE_STATSD",
    "EXTRA_TAGS",
    "MEMCACHE_HOST_PORT",
    "MEMCACHE_MAX_IDLE_CONNS",
    "MEMCACHE_SRV",
    "MEMCACHE_SRV_REFRESH",
    "MEMCACHE_TLS",
    "MEMCACHE_TLS_CACERT",
    "MEMCACHE_TLS_CLIENT_CERT",
    "MEMCACHE_TLS_CLIENT_KEY",
    "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION",
    "CONFIG_GRPC_XDS_NODE_ID",
    "CONFIG_GRPC_XDS_NODE_METADATA",
    "CONFIG_GRPC_XDS_SERVER_URL",
    "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
    "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
    "CONFIG_GRPC_XDS_SERVER_USE_TLS",
    "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
    "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
    "CONFIG_GRPC_XDS_SERVER_TLS_CACERT",
    "CONFIG_GRPC_XDS_SERVER_TLS_SAN",
    "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
    "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
    "XDS_CLIENT_BACKOFF_JITTER",
    "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES",
    "TRACING_ENABLED",
    "TRACING_SERVICE_NAME",
    "TRACING_SERVICE_NAMESPACE",
    "TRACING_SERVICE_INSTANCE_ID",
    "TRACING_EXPORTER_PROTOCOL",
    "TRACING_SAMPLING_RATE",
];

/// The generic variables read once [`TRIGGERS`] switched the environment
/// mapping on.
pub const GENERIC: &[&str] = &["HOST", "PORT", "LOG_LEVEL", "LOG_FORMAT"];

/// Variables tollgate does not honour, with why: a startup warning names
/// each one that is set (except to the value that asks for nothing, see
/// [`HARMLESS`]).
const IGNORED: &[(&str, &str)] = &[
    (
        "DEBUG_HOST",
        "no debug listener: /rlconfig is served on the HTTP port; there is no pprof",
    ),
    (
        "DEBUG_PORT",
        "no debug listener: /rlconfig is served on the HTTP port; there is no pprof",
    ),
    (
        "DISABLE_STATS",
        "metrics are always kept and served at /metrics",
    ),
    (
        "USE_STATSD",
        "statsd is not supported; use Prometheus (/metrics)",
    ),
    (
        "USE_DOG_STATSD",
        "DogStatsD is not supported; use Prometheus (/metrics)",
    ),
    ("USE_DOG_STATSD_MOGRIFIERS", "DogStatsD is not supported"),
    ("STATSD_HOST", "statsd is not supported"),
    ("STATSD_PORT", "statsd is not supported"),
    ("EXTRA_TAGS", "statistics carry no extra tags"),
    (
        "STATS_FLUSH_INTERVAL",
        "Prometheus is scraped, nothing is flushed",
    ),
    (
        "PROMETHEUS_MAPPER_YAML",
        "metric names are fixed (envoyproxy/ratelimit's exporter names are served as they are)",
    ),
    (
        "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
        "latencies are in seconds, as Prometheus recommends",
    ),
    (
        "EXPIRATION_JITTER_MAX_SECONDS",
        "keys expire exactly when their state is fresh again; no jitter",
    ),
    (
        "REDIS_POOL_SIZE",
        "one multiplexed connection per Redis node, no pool",
    ),
    (
        "REDIS_PIPELINE_WINDOW",
        "commands are sent as they come, no flush window",
    ),
    ("REDIS_PIPELINE_LIMIT", "unused by envoyproxy/ratelimit too"),
    (
        "REDIS_CLUSTER_PIPELINE_PARALLELISM",
        "every decision is one script call; there is no pipeline to parallelise",
    ),
    ("REDIS_POOL_ON_EMPTY_BEHAVIOR", "no pool"),
    (
        "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
        "health always follows the store (a probe), as if it were true",
    ),
    (
        "REDIS_STARTUP_INITIAL_INTERVAL",
        "the server starts without waiting for Redis and reconnects in the background",
    ),
    (
        "REDIS_STARTUP_MAX_INTERVAL",
        "the server starts without waiting for Redis and reconnects in the background",
    ),
    (
        "REDIS_STARTUP_MAX_ELAPSED_TIME",
        "the server starts without waiting for Redis and reconnects in the background",
    ),
    (
        "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
        "Redis's certificate is always verified, host name included",
    ),
    ("REDIS_PERSECOND_POOL_SIZE", "no pool"),
    ("REDIS_PERSECOND_PIPELINE_WINDOW", "no flush window"),
    (
        "REDIS_PERSECOND_PIPELINE_LIMIT",
        "unused by envoyproxy/ratelimit too",
    ),
    (
        "REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM",
        "no pipeline",
    ),
    ("REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR", "no pool"),
    ("MEMCACHE_HOST_PORT", "memcache is not supported"),
    ("MEMCACHE_MAX_IDLE_CONNS", "memcache is not supported"),
    ("MEMCACHE_SRV", "memcache is not supported"),
    ("MEMCACHE_SRV_REFRESH", "memcache is not supported"),
    ("MEMCACHE_TLS", "memcache is not supported"),
    ("MEMCACHE_TLS_CACERT", "memcache is not supported"),
    ("MEMCACHE_TLS_CLIENT_CERT", "memcache is not supported"),
    ("MEMCACHE_TLS_CLIENT_KEY", "memcache is not supported"),
    (
        "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION",
        "memcache is not supported",
    ),
    ("CONFIG_GRPC_XDS_NODE_ID", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_NODE_METADATA", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_SERVER_URL", "xDS is not supported"),
    (
        "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
        "xDS is not supported",
    ),
    (
        "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
        "xDS is not supported",
    ),
    ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "xDS is not supported"),
    ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "xDS is not supported"),
    (
        "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
        "xDS is not supported",
    ),
    ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "xDS is not supported"),
    ("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "xDS is not supported"),
    ("XDS_CLIENT_BACKOFF_JITTER", "xDS is not supported"),
    ("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", "xDS is not supported"),
    ("TRACING_ENABLED", "OpenTelemetry tracing is not supported"),
    ("TRACING_SERVICE_NAME", "tracing is not supported"),
    ("TRACING_SERVICE_NAMESPACE", "tracing is not supported"),
    ("TRACING_SERVICE_INSTANCE_ID", "tracing is not supported"),
    ("TRACING_EXPORTER_PROTOCOL", "tracing is not supported"),
    ("TRACING_SAMPLING_RATE", "tracing is not supported"),
];

/// Ignored variables set to the value that asks for nothing tollgate lacks
/// (`USE_STATSD=false`, `TRACING_ENABLED=false`, ...): no warning. A
/// boolean is compared after parsing, so `0`, `f`, `False` count.
const HARMLESS: &[(&str, bool)] = &[
    ("DISABLE_STATS", false),
    ("USE_STATSD", false),
    ("USE_DOG_STATSD", false),
    ("PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", false),
    ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", true),
    ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", false),
    ("MEMCACHE_TLS", false),
    ("MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION", false),
    ("CONFIG_GRPC_XDS_SERVER_USE_TLS", false),
    ("XDS_CLIENT_BACKOFF_JITTER", true),
    ("TRACING_ENABLED", false),
];

/// `REDIS_TLS_CACERT`, `REDIS_TLS_CLIENT_CERT` and `REDIS_TLS_CLIENT_KEY`
/// (one set for both of envoyproxy/ratelimit's Redis stores, as there) as
/// a store section's `tls_ca_file`, `tls_cert_file` and `tls_key_file`.
fn tls_files(vars: &Vars, store: &mut Mapping) {
    for (var, key) in [
        ("REDIS_TLS_CACERT", "tls_ca_file"),
        ("REDIS_TLS_CLIENT_CERT", "tls_cert_file"),
        ("REDIS_TLS_CLIENT_KEY", "tls_key_file"),
    ] {
        if let Some(path) = vars.get(var).filter(|p| !p.is_empty()) {
            store.insert(key.into(), path.into());
        }
    }
}

/// Bytes of envoyproxy/ratelimit's local cache (freecache) that one entry of
/// tollgate's deny cache stands for: `LOCAL_CACHE_SIZE_IN_BYTES / 128`
/// identities. A freecache entry is a 24-byte header plus its key
/// (`<prefix><domain>_<key>_<value>..._<window>`, typically 60 to 100
/// bytes); a deny cache entry holds the limiter key and an instant, about
/// the same. So the same byte budget holds about as many denials.
pub const DENY_CACHE_BYTES_PER_ENTRY: u64 = 128;

/// envoyproxy/ratelimit's logging, as tracing-subscriber settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSettings {
    /// The `EnvFilter` directive: `LOG_LEVEL` mapped to tracing's levels
    /// (`panic` and `fatal` are `error`; `warning` is `warn`). Default
    /// `warn`, envoyproxy/ratelimit's default `WARN`.
    pub level: &'static str,
    /// `LOG_FORMAT=json`: one JSON object per line.
    pub json: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "warn",
            json: false,
        }
    }
}

/// What envoyproxy/ratelimit's environment describes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnvoyEnvironment {
    /// The tollgate YAML document (also in `source.generated`).
    pub document: String,
    /// Where the configuration is read from: the document and the
    /// envoyproxy/ratelimit directory (`RUNTIME_*`).
    pub source: ConfigSource,
    /// `LOG_LEVEL` and `LOG_FORMAT`.
    pub log: LogSettings,
    /// One line per variable that is set but not honoured, naming it.
    pub warnings: Vec<String>,
    /// The envoyproxy/ratelimit variables that were set, sorted.
    pub variables: Vec<String>,
}

impl EnvoyEnvironment {
    /// The document without secrets, for printing: Redis URLs lose their
    /// credentials ([`tollgate_redis::store::redact`]) and
    /// `master_password` its value.
    pub fn redacted_document(&self) -> String {
        fn scrub(value: &mut Value) {
            match value {
                Value::Mapping(mapping) => {
                    for (key, value) in mapping.iter_mut() {
                        match (key.as_str(), &mut *value) {
                            (Some("master_password"), Value::String(text)) => {
                                *text = "***".to_owned();
                            }
                            (Some("url"), Value::String(text)) => {
                                *text = tollgate_redis::store::redact(text);
                            }
                            (Some("urls"), Value::Sequence(urls)) => {
                                for url in urls.iter_mut() {
                                    if let Value::String(text) = url {
                                        *text = tollgate_redis::store::redact(text);
                                    }
                                }
                            }
                            _ => scrub(value),
                        }
                    }
                }
                Value::Sequence(items) => items.iter_mut().for_each(scrub),
                _ => {}
            }
        }
        let Ok(mut value) = serde_norway::from_str::<Value>(&self.document) else {
            return "# (the document could not be read back to hide its secrets)\n".to_owned();
        };
        scrub(&mut value);
        let yaml = serde_norway::to_string(&value).unwrap_or_default();
        format!(
            "# tollgate's configuration from envoyproxy/ratelimit's environment variables (secrets hidden)\n{yaml}"
        )
    }
}

/// A variable with a value envoyproxy/ratelimit would refuse (or that
/// tollgate cannot honour safely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {variable}={value:?}: {problem}")]
#[non_exhaustive]
pub struct EnvError {
    /// The variable.
    pub variable: String,
    /// Its value (a password is never shown: `REDIS_*AUTH` report `***`).
    pub value: String,
    /// What is wrong.
    pub problem: String,
}

/// The variables as read: every lookup records the names read.
struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn error(&self, name: &str, problem: impl fmt::Display) -> EnvError {
        let value = if name.ends_with("AUTH") {
            "***".to_owned()
        } else if name.ends_with("URL") {
            // A URL may carry credentials (`redis://:secret@host`).
            self.get(name)
                .unwrap_or_default()
                .split(',')
                .map(tollgate_redis::store::redact)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            self.get(name).unwrap_or_default().to_owned()
        };
        EnvError {
            variable: name.to_owned(),
            value,
            problem: problem.to_string(),
        }
    }

    /// A string with envoyproxy/ratelimit's default.
    fn string<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// A boolean as Go's `strconv.ParseBool` reads it.
    fn bool(&self, name: &str, default: bool) -> Result<bool, EnvError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => parse_go_bool(text).ok_or_else(|| {
                self.error(
                    name,
                    "not a boolean (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)",
                )
            }),
        }
    }

    /// An integer (`envconfig` reads an empty value as the default).
    fn int<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, EnvError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| self.error(name, "not a whole number in range")),
        }
    }

    /// A Go duration (`10s`, `1h30m`, `250ms`), when set.
    fn duration(&self, name: &str) -> Result<Option<Duration>, EnvError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => parse_go_duration(text)
                .map(Some)
                .map_err(|problem| self.error(name, problem)),
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for non-negative durations, rounded up to the
/// microsecond: a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); `0` alone.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let problem = || "not a duration such as `10s`, `1h30m` or `250ms`".to_owned();
    let body = text.strip_prefix('+').unwrap_or(text);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() || body.starts_with('-') {
        return Err(problem());
    }
    let mut nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(problem)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(problem()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(problem());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| problem())?
        };
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(problem)?;
        let mut scale = unit_nanos;
        for digit in fraction.bytes().take(30) {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        nanos = nanos.checked_add(part).ok_or_else(problem)?;
        rest = tail;
    }
    let micros = nanos.div_ceil(1_000);
    u64::try_from(micros)
        .map(Duration::from_micros)
        .map_err(|_| problem())
}

/// A duration as tollgate's configuration writes it (microseconds, so
/// nothing is rounded again).
fn duration_text(duration: Duration) -> String {
    format!("{}us", duration.as_micros())
}

/// An address from a Go `host` and `port`: Go's `net.JoinHostPort`, then
/// `Listen` (an empty host is every interface; `localhost` is loopback).
fn listen_addr(
    vars: &Vars,
    host_var: &str,
    port_var: &str,
    port_default: u16,
) -> Result<SocketAddr, EnvError> {
    let host = vars.string(host_var, "0.0.0.0");
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                vars.error(
                    host_var,
                    "not an IP address (host names other than localhost are not resolved)",
                )
            })?,
    };
    let port: u16 = vars.int(port_var, port_default)?;
    Ok(SocketAddr::new(ip, port))
}

/// `PROMETHEUS_ADDR` (`:9090`, `host:port`).
fn prometheus_addr(vars: &Vars) -> Result<SocketAddr, EnvError> {
    let text = vars.string("PROMETHEUS_ADDR", ":9090");
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| vars.error("PROMETHEUS_ADDR", "not `host:port` or `:port`"))?;
    let ip = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => other
            .parse()
            .map_err(|_| vars.error("PROMETHEUS_ADDR", "the host is not an IP address"))?,
    };
    let port = port.parse().map_err(|_| {
        vars.error(
            "PROMETHEUS_ADDR",
            "the port is not a number from 0 to 65535",
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Percent-encodes a URL's user or password (RFC 3986 unreserved kept).
fn encode_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `REDIS_AUTH`: `user:password`, or a password alone (as
/// envoyproxy/ratelimit splits it at the first `:`).
fn split_auth(auth: &str) -> (Option<&str>, &str) {
    match auth.split_once(':') {
        Some((user, password)) => (Some(user), password),
        None => (None, auth),
    }
}

/// `user:password@` for a URL, encoded; empty without auth.
fn userinfo(auth: &str) -> String {
    if auth.is_empty() {
        return String::new();
    }
    match split_auth(auth) {
        (Some(user), password) => {
            format!("{}:{}@", encode_userinfo(user), encode_userinfo(password))
        }
        (None, password) => format!(":{}@", encode_userinfo(password)),
    }
}

/// One Redis store section (`store:` or `store.per_second:`) from the
/// variables with the given prefix (`REDIS_` or `REDIS_PERSECOND_`).
fn redis_store(vars: &Vars, prefix: &str, default_url: &str) -> Result<Mapping, EnvError> {
    let name = |suffix: &str| format!("{prefix}{suffix}");
    let socket_var = name("SOCKET_TYPE");
    let type_var = name("TYPE");
    let url_var = name("URL");
    let auth = vars.string(&name("AUTH"), "");
    let sentinel_auth = vars.string(&name("SENTINEL_AUTH"), "");
    let tls = vars.bool(&name("TLS"), false)?;
    let socket = vars.string(&socket_var, "unix");
    let url = vars.string(&url_var, default_url);
    let scheme = if tls { "rediss" } else { "redis" };
    let mut store = Mapping::new();
    let tcp_url = |address: &str, auth: &str| -> String {
        if address.contains("://") {
            address.to_owned()
        } else {
            format!("{scheme}://{}{address}", userinfo(auth))
        }
    };
    match vars
        .string(&type_var, "SINGLE")
        .to_ascii_lowercase()
        .as_str()
    {
        "single" => {
            store.insert("kind".into(), "redis".into());
            let url = match socket {
                "tcp" => tcp_url(url, auth),
                "unix" => {
                    if url.contains("://") {
                        url.to_owned()
                    } else {
                        let mut query = Vec::new();
                        if !auth.is_empty() {
                            let (user, password) = split_auth(auth);
                            if let Some(user) = user {
                                query.push(format!("user={}", encode_userinfo(user)));
                            }
                            query.push(format!("pass={}", encode_userinfo(password)));
                        }
                        if query.is_empty() {
                            format!("unix://{url}")
                        } else {
                            format!("unix://{url}?{}", query.join("&"))
                        }
                    }
                }
                _ => return Err(vars.error(&socket_var, "expected `tcp` or `unix`")),
            };
            store.insert("url".into(), url.into());
        }
        // A cluster's nodes and sentinels are reached over TCP whatever
        // the socket type says, as in envoyproxy/ratelimit.
        "cluster" => {
            store.insert("kind".into(), "redis_cluster".into());
            let urls: Vec<Value> = url
                .split(',')
                .map(|address| Value::from(tcp_url(address.trim(), auth)))
                .collect();
            store.insert("urls".into(), Value::Sequence(urls));
        }
        "sentinel" => {
            let mut parts = url.split(',').map(str::trim);
            let master = parts.next().unwrap_or_default();
            let sentinels: Vec<Value> = parts
                .map(|address| Value::from(tcp_url(address, sentinel_auth)))
                .collect();
            if master.is_empty() || sentinels.is_empty() {
                return Err(vars.error(
                    &url_var,
                    format!(
                        "with {type_var}=SENTINEL, expected `<master name>,<sentinel host:port>,...`"
                    ),
                ));
            }
            store.insert("kind".into(), "redis_sentinel".into());
            store.insert("urls".into(), Value::Sequence(sentinels));
            store.insert("master_name".into(), master.into());
            if !auth.is_empty() {
                let (user, password) = split_auth(auth);
                if let Some(user) = user {
                    store.insert("master_username".into(), user.into());
                }
                store.insert("master_password".into(), password.into());
            }
            if tls {
                store.insert("master_tls".into(), true.into());
            }
        }
        _ => {
            return Err(vars.error(&type_var, "expected SINGLE, CLUSTER or SENTINEL"));
        }
    }
    if let Some(timeout) = vars.duration(&name("TIMEOUT"))? {
        if timeout.is_zero() {
            return Err(vars.error(&name("TIMEOUT"), "must be above zero"));
        }
        store.insert("timeout".into(), duration_text(timeout).into());
    }
    Ok(store)
}

impl EnvoyEnvironment {
    /// Reads the process's environment: `None` when none of [`TRIGGERS`]
    /// is set.
    ///
    /// # Errors
    /// [`EnvError`] naming the first variable with an invalid value.
    pub fn from_process() -> Result<Option<EnvoyEnvironment>, EnvError> {
        EnvoyEnvironment::from_vars(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    /// Reads the given variables (name, value): `None` when none of
    /// [`TRIGGERS`] is among them. Variables that are not
    /// envoyproxy/ratelimit's are not looked at.
    ///
    /// # Errors
    /// [`EnvError`] naming the first variable with an invalid value.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Option<EnvoyEnvironment>, EnvError> {
        let values: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, _)| {
                TRIGGERS.contains(&name.as_str()) || GENERIC.contains(&name.as_str())
            })
            .collect();
        if !values.keys().any(|name| TRIGGERS.contains(&name.as_str())) {
            return Ok(None);
        }
        let vars = Vars { values };
        let mut warnings = Vec::new();
        for (name, why) in IGNORED {
            let Some(value) = vars.get(name) else {
                continue;
            };
            let harmless = HARMLESS
                .iter()
                .any(|(h, wanted)| h == name && parse_go_bool(value) == Some(*wanted));
            if !harmless {
                warnings.push(format!("{name} is set but not honoured: {why}"));
            }
        }

        let log = LogSettings {
            level: match vars
                .string("LOG_LEVEL", "WARN")
                .to_ascii_lowercase()
                .as_str()
            {
                "panic" | "fatal" | "error" => "error",
                "warn" | "warning" => "warn",
                "info" => "info",
                "debug" => "debug",
                "trace" => "trace",
                _ => {
                    return Err(vars.error(
                        "LOG_LEVEL",
                        "not a level (panic, fatal, error, warn, warning, info, debug, trace)",
                    ));
                }
            },
            json: match vars
                .string("LOG_FORMAT", "text")
                .to_ascii_lowercase()
                .as_str()
            {
                "json" => true,
                // envoyproxy/ratelimit writes text for anything but json.
                _ => false,
            },
        };

        // server:
        let mut server = Mapping::new();
        server.insert(
            "http".into(),
            listen_addr(&vars, "HOST", "PORT", 8080)?.to_string().into(),
        );
        let grpc = match vars.string("GRPC_UDS", "") {
            "" => listen_addr(&vars, "GRPC_HOST", "GRPC_PORT", 8081)?.to_string(),
            // A unix socket instead of GRPC_HOST:GRPC_PORT, at the path as
            // Go's `net.Listen("unix", path)` takes it. `unix://` keeps a
            // path starting with `//` whole.
            path => {
                for var in ["GRPC_HOST", "GRPC_PORT"] {
                    if vars.get(var).is_some() {
                        warnings.push(format!(
                            "{var} is set but not used: gRPC listens on GRPC_UDS instead (as in envoyproxy/ratelimit)"
                        ));
                    }
                }
                if path.starts_with('/') {
                    format!("unix://{path}")
                } else {
                    format!("unix:{path}")
                }
            }
        };
        server.insert("grpc".into(), grpc.into());
        for (var, key) in [
            ("GRPC_MAX_CONNECTION_AGE", "grpc_max_connection_age"),
            (
                "GRPC_MAX_CONNECTION_AGE_GRACE",
                "grpc_max_connection_age_grace",
            ),
        ] {
            if let Some(age) = vars.duration(var)? {
                server.insert(key.into(), duration_text(age).into());
            }
        }
        if vars.bool("GRPC_SERVER_USE_TLS", false)? {
            let mut tls = Mapping::new();
            for (var, key) in [
                ("GRPC_SERVER_TLS_CERT", "cert"),
                ("GRPC_SERVER_TLS_KEY", "key"),
            ] {
                match vars.get(var) {
                    Some(path) if !path.is_empty() => {
                        tls.insert(key.into(), path.into());
                    }
                    _ => {
                        return Err(vars.error(var, "required with GRPC_SERVER_USE_TLS=true"));
                    }
                }
            }
            let ca = vars
                .get("GRPC_CLIENT_TLS_CACERT")
                .filter(|ca| !ca.is_empty());
            let san = vars
                .get("GRPC_CLIENT_TLS_SAN")
                .filter(|san| !san.is_empty());
            if let Some(ca) = ca {
                tls.insert("client_ca".into(), ca.into());
                if let Some(san) = san {
                    crate::grpc_tls::client_name(san)
                        .map_err(|e| vars.error("GRPC_CLIENT_TLS_SAN", &e))?;
                    tls.insert("client_san".into(), san.into());
                }
            } else if san.is_some() {
                // envoyproxy/ratelimit checks the SAN of the chains it
                // verified, and without a CA it verifies none.
                warnings.push(
                    "GRPC_CLIENT_TLS_SAN is set but not used: without GRPC_CLIENT_TLS_CACERT \
                     no client certificate is asked for (as in envoyproxy/ratelimit)"
                        .to_owned(),
                );
            }
            server.insert("grpc_tls".into(), Value::Mapping(tls));
        } else {
            for var in [
                "GRPC_SERVER_TLS_CERT",
                "GRPC_SERVER_TLS_KEY",
                "GRPC_CLIENT_TLS_CACERT",
                "GRPC_CLIENT_TLS_SAN",
            ] {
                if vars.get(var).is_some_and(|v| !v.is_empty()) {
                    warnings.push(format!(
                        "{var} is set but not used: GRPC_SERVER_USE_TLS is not true (as in envoyproxy/ratelimit)"
                    ));
                }
            }
        }
        if vars.bool("USE_PROMETHEUS", false)? {
            let mut metrics = Mapping::new();
            metrics.insert("addr".into(), prometheus_addr(&vars)?.to_string().into());
            metrics.insert(
                "path".into(),
                vars.string("PROMETHEUS_PATH", "/metrics").into(),
            );
            server.insert("metrics".into(), Value::Mapping(metrics));
        }
        // Checked, and nothing to set: envoyproxy/ratelimit's file provider
        // starts with refused files whatever it says (the switch only stops
        // an xDS start from waiting), and so does tollgate
        // (`ConfigSource::load_or_unloaded`).
        vars.bool("FORCE_START_WITHOUT_INITIAL_CONFIG", false)?;
        if vars.bool("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", false)? {
            server.insert("healthy_needs_domains".into(), true.into());
        }

        // store:
        let mut store = match vars.string("BACKEND_TYPE", "redis") {
            "redis" | "" => redis_store(&vars, "REDIS_", "/var/run/nutcracker/ratelimit.sock")?,
            "memcache" => {
                warnings.push(
                    "BACKEND_TYPE=memcache is not supported: the memory store is used, so every instance counts on its own; use Redis (BACKEND_TYPE=redis) to share limits"
                        .to_owned(),
                );
                let mut memory = Mapping::new();
                memory.insert("kind".into(), "memory".into());
                memory
            }
            _ => return Err(vars.error("BACKEND_TYPE", "expected `redis` or `memcache`")),
        };
        let redis = store.get("kind").and_then(Value::as_str) != Some("memory");
        if let Some(prefix) = vars.get("CACHE_KEY_PREFIX").filter(|p| !p.is_empty()) {
            store.insert("prefix".into(), prefix.into());
        }
        // Fixed-window counters stay where envoyproxy/ratelimit keeps them
        // (its key layout, after CACHE_KEY_PREFIX), so replacing its
        // instances one by one keeps every client's count. A Redis Cluster
        // cannot hold that layout (docs/REDIS.md): counts start afresh once.
        match store.get("kind").and_then(Value::as_str) {
            Some("memory") => {}
            Some("redis_cluster") => warnings.push(
                "REDIS_TYPE=CLUSTER: envoyproxy/ratelimit's counters are not continued (its key layout cannot be kept on a Redis Cluster); every count starts afresh once at the switch".to_owned(),
            ),
            _ => {
                store.insert("key_layout".into(), "envoy".into());
                store.insert(
                    "envoy_prefix".into(),
                    vars.string("CACHE_KEY_PREFIX", "").into(),
                );
            }
        }
        if redis && vars.bool("REDIS_TLS", false)? {
            tls_files(&vars, &mut store);
        }
        match vars.int::<u64>("LOCAL_CACHE_SIZE_IN_BYTES", 0)? {
            // Unset or 0: envoyproxy/ratelimit has no local cache. tollgate's
            // deny cache is exact, so it stays at its default.
            0 if vars.get("LOCAL_CACHE_SIZE_IN_BYTES").is_none() => {}
            0 => {
                let mut cache = Mapping::new();
                cache.insert("enabled".into(), false.into());
                store.insert("deny_cache".into(), Value::Mapping(cache));
            }
            bytes => {
                let mut cache = Mapping::new();
                cache.insert("enabled".into(), true.into());
                cache.insert(
                    "capacity".into(),
                    (bytes / DENY_CACHE_BYTES_PER_ENTRY).max(1).into(),
                );
                store.insert("deny_cache".into(), Value::Mapping(cache));
            }
        }
        if redis && vars.bool("REDIS_PERSECOND", false)? {
            let mut per_second = redis_store(
                &vars,
                "REDIS_PERSECOND_",
                "/var/run/nutcracker/ratelimitpersecond.sock",
            )?;
            if let Some(prefix) = store.get("prefix").cloned() {
                per_second.insert("prefix".into(), prefix);
            }
            if per_second.get("kind").and_then(Value::as_str) == Some("redis_cluster")
                && store.get("key_layout").is_some()
            {
                warnings.push(
                    "REDIS_PERSECOND_TYPE=CLUSTER: envoyproxy/ratelimit's per-second counters are not continued (its key layout cannot be kept on a Redis Cluster); they start afresh once at the switch".to_owned(),
                );
            }
            if vars.bool("REDIS_PERSECOND_TLS", false)? {
                tls_files(&vars, &mut per_second);
            }
            store.insert("per_second".into(), Value::Mapping(per_second));
        }

        // envoy:
        let mut envoy = Mapping::new();
        if vars.bool("SHADOW_MODE", false)? {
            envoy.insert("shadow_mode".into(), true.into());
        }
        if vars.bool("QUOTA_MODE", false)? {
            envoy.insert("quota_mode".into(), true.into());
        }
        if let Some(text) = vars.get("NEAR_LIMIT_RATIO").filter(|t| !t.is_empty()) {
            let ratio: f64 = text
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite())
                .ok_or_else(|| vars.error("NEAR_LIMIT_RATIO", "not a number"))?;
            envoy.insert("near_limit_ratio".into(), ratio.into());
        }
        if vars.bool("LIMIT_RESPONSE_HEADERS_ENABLED", false)? {
            let mut headers = Mapping::new();
            headers.insert("enabled".into(), true.into());
            for (var, key, default) in [
                ("LIMIT_LIMIT_HEADER", "limit", "RateLimit-Limit"),
                ("LIMIT_REMAINING_HEADER", "remaining", "RateLimit-Remaining"),
                ("LIMIT_RESET_HEADER", "reset", "RateLimit-Reset"),
            ] {
                headers.insert(key.into(), vars.string(var, default).into());
            }
            envoy.insert("response_headers".into(), Value::Mapping(headers));
        }
        if vars.bool("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", false)? {
            envoy.insert(
                "stop_cache_key_increment_when_overlimit".into(),
                true.into(),
            );
        }
        if vars.bool("RESPONSE_DYNAMIC_METADATA", false)? {
            envoy.insert("response_dynamic_metadata".into(), true.into());
        }

        // Where the envoyproxy/ratelimit files are.
        let config_type = vars.string("CONFIG_TYPE", "FILE");
        match config_type {
            "FILE" => {}
            "GRPC_XDS_SOTW" => warnings.push(
                "CONFIG_TYPE=GRPC_XDS_SOTW is not supported (no xDS): the configuration is read from the RUNTIME_* directory".to_owned(),
            ),
            _ => return Err(vars.error("CONFIG_TYPE", "expected FILE or GRPC_XDS_SOTW")),
        }
        // envoyproxy/ratelimit reads RUNTIME_ROOT/RUNTIME_SUBDIRECTORY and
        // keeps the keys under RUNTIME_APPDIRECTORY (RUNTIME_WATCH_ROOT=true),
        // or reads RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY
        // (false): the same files either way. Only what is watched differs,
        // and tollgate polls through symlinks, which covers both.
        let directory = PathBuf::from(vars.string("RUNTIME_ROOT", "/srv/runtime_data/current"))
            .join(vars.string("RUNTIME_SUBDIRECTORY", ""))
            .join(vars.string("RUNTIME_APPDIRECTORY", "config"));
        vars.bool("RUNTIME_WATCH_ROOT", true)?;

        let mut document = Mapping::new();
        document.insert("server".into(), Value::Mapping(server));
        document.insert("store".into(), Value::Mapping(store));
        if !envoy.is_empty() {
            document.insert("envoy".into(), Value::Mapping(envoy));
        }
        let yaml = serde_norway::to_string(&Value::Mapping(document)).map_err(|e| EnvError {
            variable: "(all)".to_owned(),
            value: String::new(),
            problem: format!("cannot write the configuration: {e}"),
        })?;
        let document = format!(
            "# tollgate's configuration from envoyproxy/ratelimit's environment variables\n{yaml}"
        );
        let source = ConfigSource {
            envoy: Some(directory),
            ignore_dot_files: vars.bool("RUNTIME_IGNOREDOTFILES", false)?,
            merge_domains: vars.bool("MERGE_DOMAIN_CONFIG", false)?,
            generated: Some(document.clone()),
            ..ConfigSource::default()
        };
        Ok(Some(EnvoyEnvironment {
            document,
            source,
            log,
            warnings,
            variables: vars.values.keys().cloned().collect(),
        }))
    }
}

#[cfg(test)]
mod tests;
