//! The YAML schema of `server:`, `store:` and `policies:` as written, and
//! its validation into settings and named policies. Each section is
//! [`Checked`], so its errors carry its location; `domains:` is the Envoy
//! descriptor schema, in `envoy::schema`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tollgate::{Algorithm, Policy};

use super::parse::{self, AlgorithmName, Checked, DurationText, FailureModeName, Validate};
use super::{
    BreakerSettings, DenyCacheSettings, FailureMode, MAX_MAX_KEYS, MAX_POLICY_NAME, ServerSettings,
    StoreKind, StoreSettings,
};
use super::{SentinelSettings, TlsFiles};
use crate::envoy::{self, RawDomain};

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
/// The longest of the `server.*_timeout` durations.
const MAX_SERVER_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    max_body_bytes: Option<usize>,
    max_key_bytes: Option<usize>,
    admin_token: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<DurationText>,
    body_timeout: Option<DurationText>,
    idle_timeout: Option<DurationText>,
    shutdown_timeout: Option<DurationText>,
    grpc_max_streams: Option<u32>,
    grpc_request_timeout: Option<DurationText>,
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
        Ok(ServerSettings {
            http: self.http.unwrap_or(defaults.http),
            grpc: self.grpc.unwrap_or(defaults.grpc),
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
            grpc_request_timeout: timeout(
                "grpc_request_timeout",
                self.grpc_request_timeout,
                defaults.grpc_request_timeout,
            )?,
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
    master_name: Option<String>,
    master_username: Option<String>,
    master_password: Option<String>,
    master_tls: Option<bool>,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
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
        Ok(StoreSettings {
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
        })
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
        let metadata = std::fs::metadata(path).map_err(|e| format!("{key} `{path}`: {e}"))?;
        if metadata.len() > MAX_TLS_FILE_BYTES {
            return Err(format!(
                "{key} `{path}` is over {MAX_TLS_FILE_BYTES} bytes: not a PEM file"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{key} `{path}`: {e}"))?;
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

/// The largest TLS file read (certificates and keys are a few KB).
const MAX_TLS_FILE_BYTES: u64 = 1 << 20;

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
