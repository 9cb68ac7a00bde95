//! [`ConfigSource`]: where a configuration is read from (the tollgate file,
//! envoyproxy/ratelimit files or a directory of them), reading them within
//! the size caps, and listing them for change detection.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, DEMO_CONFIG, limits};

/// How messages name the document generated from the environment.
pub const GENERATED_NAME: &str = "<environment>";

/// Where a configuration comes from: reloading reads the same places again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// The tollgate YAML file; `None` for the built-in demo configuration
    /// (or, with `envoy` set, an empty one).
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration: one file, or a directory whose
    /// `*.yaml`/`*.yml` files (not hidden ones) each hold one domain.
    pub envoy: Option<PathBuf>,
    /// In an envoyproxy/ratelimit directory, skip files and directories
    /// whose name starts with `.` (envoyproxy/ratelimit's
    /// `RUNTIME_IGNOREDOTFILES`).
    pub ignore_dot_files: bool,
    /// Merge files that define the same domain instead of refusing them
    /// (envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`).
    pub merge_domains: bool,
    /// A tollgate YAML document given as text, read in place of `config`
    /// when that is `None`: the configuration that envoyproxy/ratelimit's
    /// environment variables describe (see [`crate::config::env`]).
    pub generated: Option<String>,
}

impl ConfigSource {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field.
    pub fn load(&self) -> Result<Config, ConfigError> {
        // Bytes still allowed for all files together.
        let mut budget = limits::MAX_CONFIG_BYTES;
        let mut config = self.load_base(&mut budget)?;
        let mut read = |path: &Path| limits::read_bounded(path, &mut budget);
        if let Some(envoy) = &self.envoy {
            for file in envoy_files(envoy)? {
                config.add_envoy_file(&read(&file)?, &file.display().to_string())?;
            }
        }
        Ok(config)
    }

    /// The configuration without the envoyproxy/ratelimit files: the
    /// tollgate file, the generated document, an empty one (with `envoy`
    /// set) or the demo.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_base_document(&self) -> Result<Config, ConfigError> {
        let mut budget = limits::MAX_CONFIG_BYTES;
        self.load_base(&mut budget)
    }

    fn load_base(&self, budget: &mut u64) -> Result<Config, ConfigError> {
        Ok(match (&self.config, &self.generated) {
            (Some(path), _) => Config::parse(
                &limits::read_bounded(path, budget)?,
                &path.display().to_string(),
            )?,
            (None, Some(text)) => Config::parse(text, GENERATED_NAME)?,
            // envoyproxy/ratelimit files alone: only their domains, on
            // the memory store, no demo policies.
            (None, None) if self.envoy.is_some() => Config::parse("", "<empty>")?,
            (None, None) => Config::parse(DEMO_CONFIG, "<demo>")?,
        })
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
