//! The server's YAML configuration: parsing with line numbers, validation,
//! and the compiled [`Config`] the server runs on.
//!
//! Every section is `deny_unknown_fields`, and every rule a value must obey
//! is checked while the document is parsed, inside the mapping it belongs
//! to, so the YAML parser attaches that mapping's line and column and the
//! field path (`policies[1]`, `domains[0].descriptors[2]`) to the message.
//! Policies are built with [`Policy::new`], whose errors name the problem.
//!
//! YAML comes from `serde_norway`, a maintained fork of the archived
//! `serde_yaml` with the same API and error locations (see docs/SERVER.md).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::value::MapAccessDeserializer};
use tollgate::policy::parse_duration;
use tollgate::{Algorithm, Policy, resilience};

use crate::envoy::{self, Domain};

mod limits;

pub use limits::{MAX_CONFIG_BYTES, MAX_CONFIG_FILE_BYTES, MAX_NESTING_DEPTH};

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

/// The built-in demo configuration used by `tollgate serve` without
/// `--config`: the embedded memory store and a few policies.
pub const DEMO_CONFIG: &str = r#"# tollgate's built-in demo configuration
server:
  http: 127.0.0.1:8080
  grpc: 127.0.0.1:8081
store:
  kind: memory
policies:
  - name: api
    algorithm: sliding_log
    limit: 100
    period: 1m
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
    burst: 10
  - name: burst
    algorithm: gcra
    limit: 10
    period: 1s
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: { unit: second, requests_per_unit: 10 }
      - key: path
        value: /login
        policy: login
"#;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A file is not valid YAML or breaks a rule; `line`/`column` are
    /// 1-based when known.
    #[error("{}", format_location(file, *line, *column, message))]
    Invalid {
        /// The file (or `<demo>` / `<text>`).
        file: String,
        /// The line, 1-based.
        line: Option<usize>,
        /// The column, 1-based.
        column: Option<usize>,
        /// What is wrong, prefixed with the field path.
        message: String,
    },
}

fn format_location(
    file: &str,
    line: Option<usize>,
    column: Option<usize>,
    message: &str,
) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {message}"),
        (Some(l), None) => format!("{file}:{l}: {message}"),
        _ => format!("{file}: {message}"),
    }
}

impl ConfigError {
    fn invalid(file: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn from_yaml(file: &str, err: &serde_norway::Error) -> Self {
        let text = err.to_string();
        let location = err.location();
        // serde_norway appends " at line L column C"; the location is
        // reported in front instead, compiler style.
        let message = match (&location, text.rfind(" at line ")) {
            (Some(_), Some(at)) => text[..at].to_owned(),
            _ => text,
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }
    }

    /// The line of the problem, when known (1-based).
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Io { .. } => None,
        }
    }
}

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
}

/// What happens to a decision when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Allow, marked degraded.
    #[default]
    Open,
    /// Deny.
    Closed,
    /// Decide on a local in-memory limiter with `local_share` of each
    /// policy, marked degraded.
    Local,
}

impl From<FailureMode> for resilience::FailureMode {
    fn from(mode: FailureMode) -> Self {
        match mode {
            FailureMode::Open => resilience::FailureMode::Open,
            FailureMode::Closed => resilience::FailureMode::Closed,
            FailureMode::Local => resilience::FailureMode::Local,
        }
    }
}

/// The store section, validated.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoreSettings {
    /// Which store.
    pub kind: StoreKind,
    /// Redis URLs: one for `redis`, the seeds for `redis_cluster`, none for
    /// `memory`.
    pub urls: Vec<String>,
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
            prefix: tollgate_redis::store::DEFAULT_PREFIX.to_owned(),
            timeout: tollgate_redis::store::DEFAULT_TIMEOUT,
            on_failure: FailureMode::Open,
            local_share: 1.0,
            breaker: BreakerSettings::default(),
            deny_cache: DenyCacheSettings::default(),
            max_keys: tollgate::store::memory::DEFAULT_MAX_KEYS,
        }
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

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Listeners and request bounds.
    pub server: ServerSettings,
    /// The store.
    pub store: StoreSettings,
    /// Named policies (the `policies:` section), by name.
    pub policies: BTreeMap<String, Policy>,
    /// Named policies whose `on_failure` overrides the store's.
    pub failure_modes: BTreeMap<String, FailureMode>,
    /// Envoy rate limit domains, by name.
    pub domains: HashMap<String, Domain>,
}

/// Where a configuration comes from: reloading reads the same places again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// The tollgate YAML file; `None` for the built-in demo configuration
    /// (or, with `envoy` set, an empty one).
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration: one file, or a directory whose
    /// `*.yaml`/`*.yml` files (not hidden ones) each hold one domain.
    pub envoy: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field.
    pub fn load(&self) -> Result<Config, ConfigError> {
        // Bytes still allowed for all files together.
        let mut budget = MAX_CONFIG_BYTES;
        let mut read = |path: &Path| limits::read_bounded(path, &mut budget);
        let mut config = match &self.config {
            Some(path) => Config::parse(&read(path)?, &path.display().to_string())?,
            // envoyproxy/ratelimit files alone: only their domains, on
            // the memory store, no demo policies.
            None if self.envoy.is_some() => Config::parse("", "<empty>")?,
            None => Config::parse(DEMO_CONFIG, "<demo>")?,
        };
        if let Some(envoy) = &self.envoy {
            for file in envoy_files(envoy)? {
                config.add_envoy_file(&read(&file)?, &file.display().to_string())?;
            }
        }
        Ok(config)
    }

    /// Every file the configuration is read from (the envoy directory's
    /// files at this moment), for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config.iter().cloned().collect();
        if let Some(envoy) = &self.envoy {
            match envoy_files(envoy) {
                Ok(found) => files.extend(found),
                Err(_) => files.push(envoy.clone()),
            }
        }
        files
    }
}

/// The envoy configuration files under `path`, sorted: `path` itself when
/// it is a file. Hidden entries (Kubernetes' `..data` and timestamped
/// directories) are skipped; the visible names are symlinks into them.
fn envoy_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let file = entry.path();
        if std::fs::metadata(&file)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

impl Config {
    /// The built-in demo configuration.
    ///
    /// # Errors
    /// Never in practice (the demo is tested); typed for uniformity.
    pub fn demo() -> Result<Config, ConfigError> {
        Config::parse(DEMO_CONFIG, "<demo>")
    }

    /// Parses and validates a tollgate YAML document; `file` names it in
    /// messages.
    ///
    /// # Errors
    /// A [`ConfigError::Invalid`] with the line, column, field path and
    /// what is wrong.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_document(text, file, None)?;
        let names: HashSet<String> = raw.policies.iter().map(|p| p.0.name.clone()).collect();
        if raw.references().any(|r| !names.contains(r)) {
            // Parse again knowing the names, so the dangling reference is
            // reported where it is written.
            let _: RawConfig = parse_document(text, file, Some(names.clone()))?;
            return Err(ConfigError::invalid(
                file,
                "a descriptor names an unknown policy",
            ));
        }
        let failure_modes = raw
            .policies
            .iter()
            .filter_map(|p| Some((p.0.name.clone(), p.0.on_failure?)))
            .collect();
        let mut config = Config {
            server: raw.server.map(|s| s.0).unwrap_or_default(),
            store: raw.store.map(|s| s.0).unwrap_or_default(),
            policies: raw
                .policies
                .into_iter()
                .map(|p| (p.0.name, p.0.policy))
                .collect(),
            failure_modes,
            domains: HashMap::new(),
        };
        for domain in raw.domains {
            config.add_domain(domain.0, file)?;
        }
        Ok(config)
    }

    /// Adds one envoyproxy/ratelimit configuration file (top-level
    /// `domain:` and `descriptors:`), as that service reads it.
    ///
    /// # Errors
    /// As [`parse`](Self::parse); also a domain defined twice.
    pub fn add_envoy_file(&mut self, text: &str, file: &str) -> Result<(), ConfigError> {
        let names: HashSet<String> = self.policies.keys().cloned().collect();
        let raw: Checked<RawDomain> = parse_document(text, file, Some(names))?;
        self.add_domain(raw.0, file)
    }

    fn add_domain(&mut self, raw: DomainSpec, file: &str) -> Result<(), ConfigError> {
        if self.domains.contains_key(&raw.domain) {
            return Err(ConfigError::invalid(
                file,
                format!("domain `{}` is defined twice", raw.domain),
            ));
        }
        let domain = Domain::build(&raw.domain, raw.descriptors, &self.policies);
        self.domains.insert(raw.domain, domain);
        Ok(())
    }

    /// Every policy the limiter needs: the named ones and those written
    /// inline in Envoy descriptors (named `envoy/<domain>/<descriptor path>`).
    pub fn limiter_policies(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.policies
            .iter()
            .map(|(name, policy)| (name.as_str(), policy))
            .chain(self.domains.values().flat_map(Domain::inline_policies))
    }
}

thread_local! {
    /// What validation inside the parser needs to know beyond the mapping
    /// being read. Set only for the duration of one `parse_document`.
    static CONTEXT: RefCell<ParseContext> = RefCell::new(ParseContext::default());
}

#[derive(Default)]
struct ParseContext {
    /// The policy names descriptors may reference; `None`: not checked.
    known_policies: Option<HashSet<String>>,
    /// Names already defined in this document (duplicates are errors).
    seen_policies: HashSet<String>,
    /// Domains already defined in this document.
    seen_domains: HashSet<String>,
}

fn parse_document<T: de::DeserializeOwned>(
    text: &str,
    file: &str,
    known_policies: Option<HashSet<String>>,
) -> Result<T, ConfigError> {
    // Before the parser: its time grows with the square of the nesting.
    limits::check_text(text, file)?;
    CONTEXT.with(|c| {
        *c.borrow_mut() = ParseContext {
            known_policies,
            ..ParseContext::default()
        }
    });
    // An empty document is an empty configuration, not an error.
    let result = if text.trim().is_empty() {
        serde_norway::from_str::<T>("{}")
    } else {
        serde_norway::from_str::<T>(text)
    };
    CONTEXT.with(|c| *c.borrow_mut() = ParseContext::default());
    result.map_err(|e| ConfigError::from_yaml(file, &e))
}

/// A section validated as it is parsed, so its errors carry its location.
trait Validate: Sized {
    type Output;
    fn validate(self) -> Result<Self::Output, String>;
}

/// A mapping deserialized as `R`, then validated into `R::Output` inside
/// the mapping's visitor, where the parser attaches the mapping's location
/// to an error.
struct Checked<R: Validate>(R::Output);

impl<'de, R> Deserialize<'de> for Checked<R>
where
    R: Validate + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CheckedVisitor<R>(PhantomData<R>);

        impl<'de, R: Validate + Deserialize<'de>> Visitor<'de> for CheckedVisitor<R> {
            type Value = Checked<R>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = R::deserialize(MapAccessDeserializer::new(map))?;
                raw.validate().map(Checked).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_map(CheckedVisitor(PhantomData))
    }
}

/// A duration written like `50ms` or `1m`.
struct DurationText(Duration);

/// A string parsed inside the scalar's visitor, so the parser marks an
/// error with the scalar's own line and column.
struct ParsedStr<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for ParsedStr<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedStr {
            expecting: "a duration such as `50ms`, `1s` or `1m`",
            parse: |text| parse_duration(text).map(DurationText),
        })
    }
}

/// An algorithm name.
struct AlgorithmName(Algorithm);

impl<'de> Deserialize<'de> for AlgorithmName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedStr {
            expecting: "an algorithm name",
            parse: |text| {
                text.parse()
                    .map(AlgorithmName)
                    .map_err(|e: tollgate::PolicyError| e.to_string())
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: Option<Checked<RawServer>>,
    #[serde(default)]
    store: Option<Checked<RawStore>>,
    #[serde(default)]
    policies: Vec<Checked<RawPolicy>>,
    #[serde(default)]
    domains: Vec<Checked<RawDomain>>,
}

impl RawConfig {
    fn references(&self) -> impl Iterator<Item = &str> {
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
struct RawServer {
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
struct RawStore {
    #[serde(default)]
    kind: StoreKind,
    url: Option<String>,
    urls: Option<Vec<String>>,
    prefix: Option<String>,
    timeout: Option<DurationText>,
    #[serde(default)]
    on_failure: FailureMode,
    local_share: Option<f64>,
    breaker: Option<Checked<RawBreaker>>,
    deny_cache: Option<Checked<RawDenyCache>>,
    max_keys: Option<u64>,
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
                return Err("kind redis takes `url`; `urls` is for redis_cluster".into());
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
        };
        for url in &urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "store URL `{url}` must start with redis:// or rediss://"
                ));
            }
        }
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
            prefix,
            timeout,
            on_failure: self.on_failure,
            local_share,
            breaker: self.breaker.map_or(defaults.breaker, |b| b.0),
            deny_cache: self.deny_cache.map_or(defaults.deny_cache, |d| d.0),
            max_keys,
        })
    }
}

/// A named policy.
struct NamedPolicy {
    name: String,
    policy: Policy,
    /// Overrides the store's `on_failure` for this policy.
    on_failure: Option<FailureMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    algorithm: Option<AlgorithmName>,
    limit: u64,
    period: DurationText,
    burst: Option<u64>,
    on_failure: Option<FailureMode>,
}

/// Checks a policy name: it appears quoted in `RateLimit` header fields
/// and in metric labels, so it is short printable ASCII without quotes.
pub(crate) fn validate_policy_name(name: &str) -> Result<(), String> {
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
        let fresh = CONTEXT.with(|c| c.borrow_mut().seen_policies.insert(self.name.clone()));
        if !fresh {
            return Err(format!("policy `{}` is defined twice", self.name));
        }
        Ok(NamedPolicy {
            name: self.name,
            policy,
            on_failure: self.on_failure,
        })
    }
}

/// One domain: its name and descriptors (also the whole of an
/// envoyproxy/ratelimit file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    #[serde(default)]
    descriptors: Vec<Checked<RawDescriptor>>,
}

/// A validated domain, before it is compiled into a [`Domain`].
struct DomainSpec {
    domain: String,
    descriptors: Vec<envoy::Descriptor>,
}

impl Validate for RawDomain {
    type Output = DomainSpec;

    fn validate(self) -> Result<DomainSpec, String> {
        if self.domain.is_empty() {
            return Err("domain must not be empty".into());
        }
        let descriptors: Vec<envoy::Descriptor> =
            self.descriptors.into_iter().map(|d| d.0).collect();
        envoy::check_siblings(descriptors.iter())?;
        let fresh = CONTEXT.with(|c| c.borrow_mut().seen_domains.insert(self.domain.clone()));
        if !fresh {
            return Err(format!("domain `{}` is defined twice", self.domain));
        }
        Ok(DomainSpec {
            domain: self.domain,
            descriptors,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<RawReplace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: String,
}

/// One descriptor entry as written (envoyproxy/ratelimit's schema plus
/// `policy` and `algorithm`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<Checked<RawDescriptor>>,
    #[serde(default)]
    shadow_mode: bool,
    /// Accepted for compatibility; tollgate's metrics are per policy.
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
    /// Accepted for compatibility; tollgate's metrics are per policy.
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    policy: Option<String>,
    algorithm: Option<AlgorithmName>,
}

impl Validate for RawDescriptor {
    type Output = envoy::Descriptor;

    fn validate(self) -> Result<envoy::Descriptor, String> {
        use envoy::{Descriptor, Limit, Rule};
        if self.key.is_empty() {
            return Err("descriptor `key` must not be empty".into());
        }
        let children: Vec<Descriptor> = self.descriptors.into_iter().map(|d| d.0).collect();
        envoy::check_siblings(children.iter())?;
        let what = match &self.value {
            Some(v) => format!("descriptor `{}={v}`", self.key),
            None => format!("descriptor `{}`", self.key),
        };
        if self.share_threshold && !self.value.as_deref().is_some_and(|v| v.ends_with('*')) {
            return Err(format!(
                "{what}: share_threshold needs a wildcard value ending in `*`"
            ));
        }
        let rule = match (self.rate_limit, self.policy) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{what}: give either `rate_limit` or `policy`, not both"
                ));
            }
            (None, None) => {
                if self.algorithm.is_some() {
                    return Err(format!("{what}: `algorithm` needs a `rate_limit`"));
                }
                None
            }
            (None, Some(policy)) => {
                if self.algorithm.is_some() {
                    return Err(format!(
                        "{what}: `algorithm` applies to `rate_limit`; policy `{policy}` has its own"
                    ));
                }
                let known = CONTEXT.with(|c| {
                    c.borrow()
                        .known_policies
                        .as_ref()
                        .is_none_or(|k| k.contains(&policy))
                });
                if !known {
                    return Err(format!("{what}: unknown policy `{policy}`"));
                }
                Some(Rule {
                    name: None,
                    replaces: Vec::new(),
                    limit: Limit::Named(policy),
                })
            }
            (Some(rate), None) => {
                let replaces = rate
                    .replaces
                    .into_iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>();
                if replaces.iter().any(String::is_empty) {
                    return Err(format!("{what}: `replaces` entries need a `name`"));
                }
                if rate.name.as_deref().is_some_and(str::is_empty) {
                    return Err(format!("{what}: rate_limit `name` must not be empty"));
                }
                let limit = if rate.unlimited {
                    if rate.unit.is_some() || rate.requests_per_unit.is_some() {
                        return Err(format!(
                            "{what}: an `unlimited` rate_limit takes no unit or requests_per_unit"
                        ));
                    }
                    if self.algorithm.is_some() {
                        return Err(format!(
                            "{what}: an `unlimited` rate_limit has no algorithm"
                        ));
                    }
                    Limit::Unlimited
                } else {
                    let unit = rate
                        .unit
                        .ok_or_else(|| format!("{what}: rate_limit needs a `unit`"))?;
                    let unit = envoy::Unit::parse(&unit).ok_or_else(|| {
                        format!(
                            "{what}: unknown unit `{unit}` (expected second, minute, hour, day, week, month or year)"
                        )
                    })?;
                    let requests = rate
                        .requests_per_unit
                        .ok_or_else(|| format!("{what}: rate_limit needs `requests_per_unit`"))?;
                    let algorithm = self.algorithm.map_or(Algorithm::FixedWindow, |a| a.0);
                    Limit::rate(unit, requests, algorithm).map_err(|e| format!("{what}: {e}"))?
                };
                Some(Rule {
                    name: rate.name,
                    replaces,
                    limit,
                })
            }
        };
        Ok(Descriptor {
            key: self.key,
            value: self.value,
            rule,
            children,
            shadow_mode: self.shadow_mode,
            share_threshold: self.share_threshold,
        })
    }
}

/// Parses an envoyproxy/ratelimit file on its own (for fuzzing and tools):
/// returns the domain name.
///
/// # Errors
/// As [`Config::parse`].
pub fn parse_envoy_file(text: &str, file: &str) -> Result<String, ConfigError> {
    let raw: Checked<RawDomain> = parse_document(text, file, None)?;
    Ok(raw.0.domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ConfigError {
        Config::parse(text, "t.yaml").expect_err("should be rejected")
    }

    #[test]
    fn the_demo_configuration_is_valid() {
        let config = Config::demo().unwrap();
        assert_eq!(config.policies.len(), 3);
        assert_eq!(config.server.http, DEFAULT_HTTP.parse().unwrap());
        assert!(config.domains.contains_key("edge"));
    }

    #[test]
    fn the_issue_example_parses() {
        let text = r#"
server:
  http: 127.0.0.1:8080
  grpc: 127.0.0.1:8081
store:
  kind: redis
  url: redis://127.0.0.1:6379
  prefix: tollgate
  timeout: 50ms
  on_failure: open
policies:
  - name: api
    algorithm: sliding_log
    limit: 100
    period: 1m
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
    burst: 10
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: { unit: second, requests_per_unit: 10 }
      - key: path
        value: /login
        policy: login
"#;
        let config = Config::parse(text, "t.yaml").unwrap();
        assert_eq!(config.store.kind, StoreKind::Redis);
        assert_eq!(config.store.timeout, Duration::from_millis(50));
        assert_eq!(config.policies["login"].burst(), 10);
        let names: Vec<&str> = config.limiter_policies().map(|(n, _)| n).collect();
        assert!(names.contains(&"envoy/edge/remote_address"), "{names:?}");
    }

    #[test]
    fn resilience_settings_and_per_policy_modes_parse() {
        let config = Config::parse(
            "store:
  on_failure: local
  local_share: 0.25
  breaker: { failures: 3, cooldown: 2s, half_open_probes: 2 }
  deny_cache: { enabled: false, capacity: 100 }
policies:
  - name: api
    limit: 10
    period: 1s
  - name: login
    limit: 5
    period: 1m
    on_failure: closed
",
            "t.yaml",
        )
        .unwrap();
        let store = &config.store;
        assert_eq!(store.on_failure, FailureMode::Local);
        assert!((store.local_share - 0.25).abs() < f64::EPSILON);
        assert_eq!(
            (
                store.breaker.failures,
                store.breaker.cooldown,
                store.breaker.half_open_probes
            ),
            (3, Duration::from_secs(2), 2)
        );
        assert_eq!(
            (store.deny_cache.enabled, store.deny_cache.capacity),
            (false, 100)
        );
        assert_eq!(
            config.failure_modes.into_iter().collect::<Vec<_>>(),
            [("login".to_owned(), FailureMode::Closed)]
        );
        // Unset, everything is the library's default.
        let defaults = Config::parse("store:\n  kind: memory\n", "t.yaml")
            .unwrap()
            .store;
        assert_eq!(defaults.breaker, BreakerSettings::default());
        assert_eq!(
            defaults.breaker.failures,
            resilience::DEFAULT_BREAKER_FAILURES
        );
        assert!(defaults.deny_cache.enabled);
        assert!((defaults.local_share - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn errors_carry_file_line_and_field() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "policies:\n  - name: a\n    limit: 1\n    period: 1s\n    burts: 3\n",
                5,
                "unknown field `burts`",
            ),
            (
                "policies:\n  - name: a\n    limit: 0\n    period: 1s\n",
                2,
                "limit must be at least 1",
            ),
            (
                "policies:\n  - name: a\n    limit: 1\n    period: 5fortnights\n",
                4,
                "policies[0].period: unknown unit `fortnights`",
            ),
            (
                "policies:\n  - name: a\n    algorithm: fixed_window\n    limit: 1\n    period: 1s\n    burst: 3\n",
                2,
                "burst has no meaning for fixed_window",
            ),
            (
                "policies:\n  - name: a\n    limit: 1\n    period: 1s\n  - name: a\n    limit: 2\n    period: 1s\n",
                5,
                "policy `a` is defined twice",
            ),
            (
                "store:\n  kind: redis\n",
                2,
                "`url` is required when kind is redis",
            ),
            ("store:\n  kind: mongo\n", 2, "unknown variant `mongo`"),
            (
                "store:\n  on_failure: local\n  local_share: 0\n",
                2,
                "store: local_share must be above 0 and at most 1",
            ),
            (
                "store:\n  local_share: 1.5\n",
                2,
                "local_share must be above 0",
            ),
            (
                "store:\n  max_keys: 0\n",
                2,
                "store: max_keys must be between 1 and 1000000000, not 0",
            ),
            (
                "store:\n  max_keys: lots\n",
                2,
                "store.max_keys: invalid type",
            ),
            (
                "store:\n  breaker:\n    failures: 0\n",
                3,
                "store.breaker: failures must be at least 1",
            ),
            (
                "store:\n  breaker: { failures: 3, cooldown: 0s }\n",
                2,
                "store.breaker: cooldown must be above zero",
            ),
            (
                "store:\n  breaker:\n    failure: 3\n",
                3,
                "store.breaker: unknown field `failure`",
            ),
            (
                "store:\n  deny_cache:\n    capacity: 0\n",
                3,
                "store.deny_cache: capacity must be at least 1",
            ),
            (
                "policies:\n  - name: a\n    limit: 1\n    period: 1s\n    on_failure: maybe\n",
                5,
                "policies[0].on_failure: unknown variant `maybe`",
            ),
            (
                "policies:\n  - name: a\n    limit: -3\n    period: 1s\n",
                3,
                "policies[0].limit: invalid type: integer `-3`",
            ),
            (
                "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        policy: nope\n",
                4,
                "unknown policy `nope`",
            ),
            (
                "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
                4,
                "unknown unit `fortnight`",
            ),
            (
                "domains:\n  - domain: d\n    descriptors:\n      - key: k\n      - key: k\n",
                2,
                "duplicate descriptor `k`",
            ),
            ("server:\n  http: nowhere\n", 2, "invalid socket address"),
            (
                "server:\n  http: 127.0.0.1:1\n  max_connections: 0\n",
                2,
                "server: max_connections must be between 1 and 1000000, not 0",
            ),
            (
                "server:\n  max_connections: -1\n",
                2,
                "server.max_connections: invalid type: integer `-1`",
            ),
            (
                "server:\n  max_connections: 1000001\n",
                2,
                "max_connections must be between 1 and 1000000",
            ),
            (
                "server:\n  http: 127.0.0.1:1\n  header_timeout: 5 fortnights\n",
                3,
                "server.header_timeout: unknown unit",
            ),
            (
                "server:\n  header_timeout: 0s\n",
                2,
                "server: header_timeout must be above zero and at most 1h, not 0ns",
            ),
            (
                "server:\n  body_timeout: 2h\n",
                2,
                "server: body_timeout must be above zero and at most 1h",
            ),
            (
                "server:\n  max_body_bytes: 4096\n  idle_timeout: 0ms\n",
                2,
                "server: idle_timeout must be above zero",
            ),
            (
                "server:\n  http: 127.0.0.1:1\n  grpc: 127.0.0.1:2\n  idle_timeout: 10\n",
                4,
                "server.idle_timeout:",
            ),
            (
                "server:\n  shutdown_timeout: 0s\n",
                2,
                "server: shutdown_timeout must be above zero",
            ),
            (
                "server:\n  grpc_max_streams: 0\n",
                2,
                "server: grpc_max_streams must be between 1 and 65536, not 0",
            ),
            (
                "server:\n  grpc_max_streams: 5000000000\n",
                2,
                "server.grpc_max_streams: invalid value",
            ),
            (
                "server:\n  grpc_request_timeout: 0s\n",
                2,
                "server: grpc_request_timeout must be above zero",
            ),
            (
                "server:\n  grpc_request_timeout: soon\n",
                2,
                "server.grpc_request_timeout:",
            ),
            (
                "server:\n  idle_timeuot: 1s\n",
                2,
                "server: unknown field `idle_timeuot`",
            ),
            ("policies: [\n", 2, "did not find expected"),
        ];
        let mut wrong = Vec::new();
        for (text, line, expected) in cases {
            let message = error(text).to_string();
            if !message.contains(expected) || !message.starts_with(&format!("t.yaml:{line}:")) {
                wrong.push(format!(
                    "{text:?}: expected line {line} and `{expected}`, got `{message}`"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn connection_limits_parse_and_default() {
        let server = Config::parse(
            "server:
  max_connections: 500
  header_timeout: 2s
  body_timeout: 3s
  idle_timeout: 30s
  shutdown_timeout: 1500ms
  grpc_max_streams: 64
  grpc_request_timeout: 250ms
",
            "t.yaml",
        )
        .unwrap()
        .server;
        assert_eq!(server.max_connections, 500);
        assert_eq!(server.header_timeout, Duration::from_secs(2));
        assert_eq!(server.body_timeout, Duration::from_secs(3));
        assert_eq!(server.idle_timeout, Duration::from_secs(30));
        assert_eq!(server.shutdown_timeout, Duration::from_millis(1500));
        assert_eq!(server.grpc_max_streams, 64);
        assert_eq!(server.grpc_request_timeout, Duration::from_millis(250));
        // The documented defaults, with and without a `server:` section.
        for text in ["", "server:\n  max_body_bytes: 4096\n"] {
            let server = Config::parse(text, "t.yaml").unwrap().server;
            assert_eq!(server.max_connections, 10_000);
            assert_eq!(server.header_timeout, Duration::from_secs(5));
            assert_eq!(server.body_timeout, Duration::from_secs(10));
            assert_eq!(server.idle_timeout, Duration::from_secs(60));
            assert_eq!(server.shutdown_timeout, Duration::from_secs(10));
            assert_eq!(server.grpc_max_streams, 256);
            assert_eq!(server.grpc_request_timeout, Duration::from_secs(5));
        }
    }

    #[test]
    fn field_paths_are_named() {
        let message = error("policies:\n  - name: a\n    limit: 0\n    period: 1s\n").to_string();
        assert!(message.contains("policies[0]"), "{message}");
    }

    #[test]
    fn policy_names_are_checked() {
        let message =
            error("policies:\n  - name: 'a\"b'\n    limit: 1\n    period: 1s\n").to_string();
        assert!(message.contains("contains `\"`"), "{message}");
    }

    #[test]
    fn empty_documents_are_empty_configurations() {
        let config = Config::parse("", "t.yaml").unwrap();
        assert!(config.policies.is_empty());
        assert_eq!(config.store.kind, StoreKind::Memory);
    }
}
