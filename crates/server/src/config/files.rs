//! [`ConfigSource`]: where a configuration is read from (the tollgate file,
//! envoyproxy/ratelimit files or a directory of them), reading them within
//! the size caps, and listing them for change detection; and
//! `read_regular`, the one reader of every file a configuration names
//! (regular files only, opened without blocking, bounded).
//!
//! A directory of envoyproxy/ratelimit files is read as its file provider
//! (lyft/goruntime's loader) reads its runtime directory: every file, at
//! any depth, whatever its name; symbolic links are read when they point
//! at a file and skipped otherwise (a walk never follows one into a
//! directory); entries whose name starts with `.` are read unless
//! [`ConfigSource::ignore_dot_files`] is set, which skips them and every
//! directory whose name starts with `.`. The files together are one
//! configuration: one that is refused refuses all of them.

use std::fs::File;
use std::io::{self, Read};
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

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read, or is not a regular file (the
    /// error's kind is then `InvalidInput`, and its message says what the
    /// file is).
    Io(io::Error),
    /// The file is larger than the cap: its length (as the file says, or
    /// the cap plus one when it grew while read).
    TooLarge(u64),
}

/// Reads `path` whole if it is a regular file of at most `cap` bytes: how
/// every file the configuration names is read (the tollgate file,
/// envoyproxy/ratelimit files, the store's and the gRPC port's TLS files).
///
/// The file is opened without blocking (`O_NONBLOCK`): opening a FIFO to
/// read it otherwise waits for a writer, forever if none comes, and a
/// reload stuck there holds up every later one. Its type is then checked
/// on the opened file (`fstat`), not by a `stat` of the path first, which
/// a file swapped in between would get past: anything but a regular file
/// (a FIFO, a device such as `/dev/zero`, a socket, a directory) is
/// refused without reading a byte. Never reads more than `cap + 1` bytes,
/// whatever the file claims or becomes.
pub(crate) fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_without_blocking(path).map_err(ReadError::Io)?;
    let metadata = file.metadata().map_err(ReadError::Io)?;
    if !metadata.is_file() {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}, not a regular file: refused without reading it",
                not_regular(&metadata.file_type())
            ),
        )));
    }
    if metadata.len() > cap {
        return Err(ReadError::TooLarge(metadata.len()));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens `path` to read, without waiting for a FIFO's writer (for a
/// regular file `O_NONBLOCK` changes nothing), and without making a
/// terminal named by mistake this process's controlling one.
#[cfg(unix)]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::open(path, flags, Mode::empty())?))
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// What a file that is not a regular one is, for messages.
#[cfg(unix)]
fn not_regular(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn not_regular(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
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
                // A file, or a link to one; anything else is skipped
                // (goruntime logs it and reads on). What is read is
                // checked again once opened (`read_regular`).
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

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    use tollgate_testkit::files::temp_dir;

    use super::*;
    use crate::config::read_tls_file;

    /// `read` on a thread of its own, which must be done within 10 s: a read
    /// that blocks fails the test instead of hanging it.
    fn within<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(read());
        });
        result
            .recv_timeout(Duration::from_secs(10))
            .expect("the read blocked")
    }

    /// Regression: a FIFO put where a configuration file was blocked the
    /// reload thread in `open()` forever (and with it every later reload),
    /// and `/dev/zero` as a TLS file was read until memory ran out. Every
    /// reader refuses them, naming the file and what it is.
    #[test]
    fn files_that_are_not_regular_are_refused_without_blocking() {
        let dir = temp_dir("read-regular");
        let fifo = dir.join("t.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let cases = [
            (fifo.clone(), "a FIFO (named pipe)"),
            (PathBuf::from("/dev/zero"), "a character device"),
            (dir.clone(), "a directory"),
        ];
        for (path, what) in cases {
            let expected = format!(
                "{}: {what}, not a regular file: refused without reading it",
                path.display()
            );
            let tollgate = ConfigSource {
                config: Some(path.clone()),
                ..ConfigSource::default()
            };
            let message = within(move || tollgate.load().unwrap_err().to_string());
            assert_eq!(message, expected, "as the tollgate file");
            if !path.is_dir() {
                let envoy = ConfigSource {
                    envoy: Some(path.clone()),
                    ..ConfigSource::default()
                };
                let message = within(move || envoy.load().unwrap_err().to_string());
                assert_eq!(message, expected, "as an envoyproxy/ratelimit file");
            }
            let tls = path.clone();
            let message = within(move || read_tls_file(&tls).unwrap_err());
            assert!(message.starts_with(what), "as a TLS file: {message}");
            let text = format!(
                "store:\n  kind: redis\n  url: rediss://h:6380\n  tls_ca_file: \"{}\"\n",
                path.display()
            );
            let message = within(move || Config::parse(&text, "t.yaml").unwrap_err().to_string());
            assert!(
                message.contains(&format!(
                    "tls_ca_file `{}`: {what}, not a regular file",
                    path.display()
                )),
                "as the store's TLS file: {message}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = temp_dir("read-cap");
        let file = dir.join("f");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular(&file, 9),
            Err(ReadError::TooLarge(10))
        ));
        assert!(matches!(
            read_regular(&dir.join("missing"), 10),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
