//! [`ConfigSource`]: where a configuration is read from (the tollgate file,
//! envoyproxy/ratelimit files or a directory of them), reading them within
//! the size caps, and listing them for change detection.
//!
//! A directory of envoyproxy/ratelimit files is read as its file provider
//! (lyft/goruntime's loader) reads its runtime directory: every file, at
//! any depth, whatever its name; symbolic links are read when they point
//! at a file and skipped otherwise (a walk never follows one into a
//! directory); entries whose name starts with `.` are read unless
//! [`ConfigSource::ignore_dot_files`] is set, which skips them and every
//! directory whose name starts with `.`. The files together are one
//! configuration: one that is refused refuses all of them.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, DEMO_CONFIG, limits};

/// How messages name the document generated from the environment.
pub const GENERATED_NAME: &str = "<environment>";

/// The most files read from an envoyproxy/ratelimit directory: far more
/// domains than any deployment has, few enough that listing them every
/// poll costs nothing.
pub const MAX_ENVOY_FILES: usize = 10_000;

/// Where a configuration comes from: reloading reads the same places again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// The tollgate YAML file; `None` for the built-in demo configuration
    /// (or, with `envoy` set, an empty one).
    pub config: Option<PathBuf>,
    /// envoyproxy/ratelimit configuration: one file, or a directory whose
    /// files (at any depth, see the module's documentation) each hold one
    /// domain.
    pub envoy: Option<PathBuf>,
    /// Skip files and directories of `envoy` whose name starts with `.`
    /// (envoyproxy/ratelimit's `RUNTIME_IGNOREDOTFILES`; default `false`, as
    /// there). A Kubernetes ConfigMap mounted as a directory holds each
    /// file twice, once in a hidden timestamped directory: set this for
    /// such a mount, or both copies are read and the domain is defined
    /// twice.
    pub ignore_dot_files: bool,
    /// Files of `envoy` that name the same domain are merged into one
    /// (envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`; default `false`, as
    /// there): their top-level descriptors join, and a descriptor with the
    /// key and value of one already in the domain is an error. Unset, a
    /// domain in two files is an error.
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
        if let Some(envoy) = &self.envoy {
            for file in envoy_files(envoy, self.ignore_dot_files)? {
                let text = limits::read_bounded(&file, &mut budget)?;
                config.add_envoy_file(&text, &file.display().to_string(), self.merge_domains)?;
            }
        }
        Ok(config)
    }

    /// [`load`](Self::load), except that envoyproxy/ratelimit files that
    /// are refused do not stop it, as they do not stop envoyproxy/ratelimit:
    /// the configuration is then the tollgate file's alone, without any
    /// Envoy domain, with [`Config::envoy_unloaded`] saying why (every
    /// `ShouldRateLimit` then fails until a reload succeeds). `serve` starts
    /// with this.
    ///
    /// # Errors
    /// A [`ConfigError`] of the tollgate file (which does stop `serve`), or
    /// the envoy path not being there.
    pub fn load_or_unloaded(&self) -> Result<Config, ConfigError> {
        // A path that is not there stops envoyproxy/ratelimit (its runtime
        // loader cannot watch it), so it stops `serve` too.
        if let Some(envoy) = &self.envoy {
            std::fs::metadata(envoy).map_err(|source| ConfigError::Io {
                path: envoy.clone(),
                source,
            })?;
        }
        match self.load() {
            Ok(config) => Ok(config),
            Err(error) if self.envoy.is_some() => {
                let mut budget = limits::MAX_CONFIG_BYTES;
                let mut config = self.load_base(&mut budget)?;
                config.domains.clear();
                config.envoy_unloaded = Some(error.to_string());
                Ok(config)
            }
            Err(error) => Err(error),
        }
    }

    /// The tollgate file, the generated document, an empty one (with
    /// `envoy` set) or the demo.
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
    /// files at this moment, and its directories), for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config.iter().cloned().collect();
        if let Some(envoy) = &self.envoy {
            match walk(envoy, self.ignore_dot_files, false) {
                Ok(found) => files.extend(found.files.into_iter().chain(found.dirs)),
                Err(_) => files.push(envoy.clone()),
            }
        }
        files
    }
}

/// What a walk of an envoy directory found.
struct Walk {
    /// Files to read, sorted.
    files: Vec<PathBuf>,
    /// Directories below the top one (their modification time changes when
    /// a file is added or removed).
    dirs: Vec<PathBuf>,
}

/// The envoy configuration files under `path`, sorted: `path` itself when
/// it is not a directory.
fn envoy_files(path: &Path, ignore_dot_files: bool) -> Result<Vec<PathBuf>, ConfigError> {
    walk(path, ignore_dot_files, true).map(|w| w.files)
}

/// Walks `path`; `warn`: log each entry skipped (when loading, not when
/// polling for changes).
fn walk(path: &Path, ignore_dot_files: bool, warn: bool) -> Result<Walk, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ConfigError::Io { path, source }
    };
    let mut found = Walk {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    if !std::fs::metadata(path).map_err(io(path))?.is_dir() {
        found.files.push(path.to_owned());
        return Ok(found);
    }
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden && ignore_dot_files {
                continue;
            }
            let entry_path = entry.path();
            // Without following links: a link to a directory is not
            // walked, as goruntime's walk does not.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                found.dirs.push(entry_path.clone());
                pending.push(entry_path);
            } else if std::fs::metadata(&entry_path).is_ok_and(|m| m.is_file()) {
                // A file, or a link to one; a link to a directory or to
                // nothing is skipped (goruntime logs it and reads on).
                found.files.push(entry_path);
            } else if warn {
                tracing::warn!(path = %entry_path.display(), "envoy configuration: not a readable file; skipped");
            }
            if found.files.len() + found.dirs.len() > MAX_ENVOY_FILES {
                return Err(ConfigError::invalid(
                    &path.display().to_string(),
                    format!(
                        "more than {MAX_ENVOY_FILES} files and directories; refused before reading them"
                    ),
                ));
            }
        }
    }
    found.files.sort();
    found.dirs.sort();
    Ok(found)
}
