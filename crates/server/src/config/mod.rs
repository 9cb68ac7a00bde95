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
//! - `error`: [`ConfigError`], with file, line and column;
//! - `files`: [`ConfigSource`], which files a configuration is read from;
//! - `limits`: size and nesting caps, checked before the parser runs;
//! - `parse`: the parse context and the serde helpers that validate a
//!   mapping where it is written;
//! - `raw`: the YAML schema of `server:`, `store:` and `policies:`, and
//!   its validation into settings. The Envoy descriptor schema (`domains:`
//!   and envoyproxy/ratelimit files) lives beside the matching code, in
//!   `envoy::schema`.

use std::collections::{BTreeMap, HashMap, HashSet};

use tollgate::Policy;

use crate::envoy::{Domain, DomainSpec, RawDomain};

mod error;
mod files;
mod limits;
pub(crate) mod parse;
mod raw;
mod settings;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use files::ConfigSource;
pub use limits::{MAX_CONFIG_BYTES, MAX_CONFIG_FILE_BYTES, MAX_NESTING_DEPTH};
pub use settings::{
    BreakerSettings, DEFAULT_BODY_TIMEOUT, DEFAULT_GRPC, DEFAULT_GRPC_MAX_STREAMS,
    DEFAULT_GRPC_REQUEST_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HTTP, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_KEY_BYTES,
    DEFAULT_SHUTDOWN_TIMEOUT, DenyCacheSettings, FailureMode, MAX_MAX_KEYS, MAX_POLICY_NAME,
    ServerSettings, StoreKind, StoreSettings,
};
pub use settings::{SentinelSettings, TlsFiles};

use parse::{Checked, parse_document};
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

/// Parses an envoyproxy/ratelimit file on its own (for fuzzing and tools):
/// returns the domain name.
///
/// # Errors
/// As [`Config::parse`].
pub fn parse_envoy_file(text: &str, file: &str) -> Result<String, ConfigError> {
    let raw: Checked<RawDomain> = parse_document(text, file, None)?;
    Ok(raw.0.domain)
}
