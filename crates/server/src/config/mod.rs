//! The server's YAML configuration: the compiled [`Config`] the server runs
//! on, and how a document becomes one.
//!
//! Every section is `deny_unknown_fields`, and every rule a value must obey
//! is checked while the document is parsed, inside the mapping it belongs
//! to, so the YAML parser attaches that mapping's line and column and the
//! field path (`policies[1]`, `domains[0].descriptors[2]`) to the message.
//! Policies are built with [`Policy::new`], whose errors name the problem.
//!
//! YAML comes from `serde_norway`, a maintained fork of the archived
//! `serde_yaml` with the same API and error locations (see docs/SERVER.md).
//!
//! The parts, one concern each:
//! - this file: [`Config`], parsing a document into it, and the demo;
//! - `settings`: the validated sections ([`ServerSettings`],
//!   [`StoreSettings`], ...) and their defaults;
//! - [`env`](mod@env): envoyproxy/ratelimit's environment variables, turned into a
//!   tollgate document;
//! - `error`: [`ConfigError`], with file, line and column;
//! - `files`: [`ConfigSource`], which files a configuration is read from;
//! - `limits`: caps on size, nesting and nodes (aliases expanded),
//!   checked before a document is deserialized;
//! - `parse`: the parse context and the serde helpers that validate a
//!   mapping where it is written;
//! - `raw`: the YAML schema of `server:`, `store:` and `policies:`, and
//!   its validation into settings. The Envoy descriptor schema (`domains:`
//!   and envoyproxy/ratelimit files) lives beside the matching code, in
//!   `envoy::schema`.

use std::collections::{BTreeMap, HashMap, HashSet};

use tollgate::Policy;

use crate::envoy::{Descriptor, Domain, DomainSpec, Leaves, RawDomain};

pub mod env;
mod error;
mod files;
mod limits;
pub(crate) mod parse;
mod raw;
pub(crate) use raw::read_tls_file;
mod settings;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub(crate) use files::ConfigText;
pub use files::{ConfigSource, GENERATED_NAME, MAX_ENVOY_FILES};
pub use limits::{MAX_CONFIG_BYTES, MAX_CONFIG_FILE_BYTES, MAX_CONFIG_NODES, MAX_NESTING_DEPTH};
pub use settings::{
    BreakerSettings, DEFAULT_BODY_TIMEOUT, DEFAULT_GRPC, DEFAULT_GRPC_MAX_STREAMS,
    DEFAULT_GRPC_REQUEST_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HTTP, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_KEY_BYTES,
    DEFAULT_NEAR_LIMIT_RATIO, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STATS_MAX_SERIES,
    DEFAULT_STORE_TIMEOUT, DenyCacheSettings, FailureMode, KeyLayout, MAX_MAX_KEYS,
    MAX_MAX_RESERVATIONS, MAX_POLICY_NAME, ServerSettings, StoreKind, StoreSettings,
};
pub use settings::{
    DEFAULT_GRPC_MAX_CONNECTION_AGE, DEFAULT_METRICS_PATH, DashboardSettings, EnvoySettings,
    GrpcTlsSettings, MetricsSettings, ResponseHeaderSettings,
};
pub use settings::{SentinelSettings, TlsFiles};

use parse::{Checked, parse_document, parse_envoy_document};
use raw::RawConfig;

/// The built-in demo configuration used by `tollgate serve` without
/// `--config`: the embedded memory store and a few policies (issue 6's
/// example configuration, on the memory store).
///
/// Test fixtures build on it: its `edge` domain's descriptors end the
/// text (the Envoy tests append theirs), and the server tests take its
/// policies before `burst` and those descriptors.
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
    /// envoyproxy/ratelimit's service-wide switches (the `envoy:` section).
    pub envoy: EnvoySettings,
    /// The `overrides:` section: (policy, key, what it sets), checked
    /// against the policies; keys are the HTTP API's.
    pub overrides: Vec<(String, String, tollgate::overrides::OverrideLimit)>,
    /// Why the envoyproxy/ratelimit files could not be loaded, when the
    /// server runs without them (see [`ConfigSource::load_or_unloaded`]):
    /// then every `ShouldRateLimit` fails, as in envoyproxy/ratelimit
    /// with no configuration loaded.
    pub envoy_unloaded: Option<String>,
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
        let declared: Vec<_> = raw.overrides.into_iter().map(|o| o.0).collect();
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
            envoy: raw.envoy.map(|e| e.0).unwrap_or_default(),
            overrides: Vec::new(),
            envoy_unloaded: None,
        };
        config.overrides = config.declared_overrides(declared, file)?;
        for domain in raw.domains {
            config.add_domain(domain.0, file)?;
        }
        Ok(config)
    }

    /// Adds one envoyproxy/ratelimit configuration file (top-level
    /// `domain:` and `descriptors:`), as that service reads it. A domain
    /// already defined is an error unless `merge` (envoyproxy/ratelimit's
    /// `MERGE_DOMAIN_CONFIG`): then this file's descriptors join it, and
    /// only a descriptor defined twice is an error.
    ///
    /// # Errors
    /// As [`parse`](Self::parse); also a domain defined twice (without
    /// `merge`) or a descriptor defined twice in a merged domain.
    pub fn add_envoy_file(
        &mut self,
        text: &str,
        file: &str,
        merge: bool,
    ) -> Result<(), ConfigError> {
        let names: HashSet<String> = self.policies.keys().cloned().collect();
        let _: Leaves = parse_envoy_document(text, file, None)?;
        let raw: Checked<RawDomain> = parse_envoy_document(text, file, Some(names))?;
        let located = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: domain_line(text),
            column: None,
            message,
        };
        let raw = raw.0;
        match self.domains.get(&raw.domain) {
            Some(existing) if merge => {
                if let Some(refused) = Descriptor::unsettleable(
                    &raw.descriptors,
                    &self.policies,
                    self.store.key_layout == KeyLayout::Envoy,
                ) {
                    return Err(located(format!("domain `{}`: {refused}", raw.domain)));
                }
                let merged = existing
                    .merged(raw.descriptors, &self.policies)
                    .map_err(|e| located(format!("merging into domain `{}`: {e}", raw.domain)))?;
                self.domains.insert(raw.domain, merged);
                Ok(())
            }
            Some(_) => Err(located(format!(
                "domain `{}` is defined in another file too (envoyproxy/ratelimit's MERGE_DOMAIN_CONFIG merges them)",
                raw.domain
            ))),
            None => self.add_domain(raw, file),
        }
    }

    /// Checks each declared override against its policy and the key bounds;
    /// a (policy, key) declared twice is an error.
    fn declared_overrides(
        &self,
        declared: Vec<raw::DeclaredOverride>,
        file: &str,
    ) -> Result<Vec<(String, String, tollgate::overrides::OverrideLimit)>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(declared.len());
        for entry in declared {
            let what = format!("overrides: `{}` for key `{}`", entry.policy, entry.key);
            let invalid =
                |message: String| ConfigError::invalid(file, format!("{what}: {message}"));
            let base = self
                .policies
                .get(&entry.policy)
                .ok_or_else(|| invalid("no such policy in `policies:`".into()))?;
            // The bound of the API's keys: an override of a longer key
            // could never apply (no check of it reaches the limiter).
            let max = crate::http::key_bound(self.server.max_key_bytes);
            if entry.key.len() > max {
                return Err(invalid(format!(
                    "the key is {} bytes long, above the maximum of {max} \
                     (server.max_key_bytes, at most 8 KiB less `http:`)",
                    entry.key.len()
                )));
            }
            if !seen.insert((entry.policy.clone(), entry.key.clone())) {
                return Err(invalid("declared twice".into()));
            }
            let limit = entry.spec.resolve(base).map_err(invalid)?;
            out.push((entry.policy, entry.key, limit));
        }
        Ok(out)
    }

    fn add_domain(&mut self, raw: DomainSpec, file: &str) -> Result<(), ConfigError> {
        if self.domains.contains_key(&raw.domain) {
            return Err(ConfigError::invalid(
                file,
                format!("domain `{}` is defined twice", raw.domain),
            ));
        }
        if let Some(refused) = Descriptor::unsettleable(
            &raw.descriptors,
            &self.policies,
            self.store.key_layout == KeyLayout::Envoy,
        ) {
            return Err(ConfigError::invalid(
                file,
                format!("domain `{}`: {refused}", raw.domain),
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

/// The line of an envoyproxy/ratelimit file's top-level `domain:` key, for
/// errors about the file's domain as a whole.
fn domain_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.strip_prefix("domain")
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|index| index + 1)
}

/// Parses an envoyproxy/ratelimit file on its own (for fuzzing and tools):
/// returns the domain name.
///
/// # Errors
/// As [`Config::parse`].
pub fn parse_envoy_file(text: &str, file: &str) -> Result<String, ConfigError> {
    let _: Leaves = parse_envoy_document(text, file, None)?;
    let raw: Checked<RawDomain> = parse_envoy_document(text, file, None)?;
    Ok(raw.0.domain)
}
