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
        self.read()?.parse()
    }

    /// Reads every file of the configuration, within the caps, without
    /// parsing them: a reload compares two reads before it parses one (see
    /// [`crate::reload`]).
    ///
    /// # Errors
    /// A file that cannot be read, is not a regular file, or passes a cap.
    pub(crate) fn read(&self) -> Result<ConfigText, ConfigError> {
        // Bytes still allowed for all files together.
        let mut budget = limits::MAX_CONFIG_BYTES;
        let base = self.read_base(&mut budget)?;
        let mut envoy = Vec::new();
        let mut skipped = Vec::new();
        if let Some(path) = &self.envoy {
            let found = walk(path, self.ignore_dot_files)?;
            for file in found.files {
                let text = limits::read_bounded(&file, &mut budget)?;
                envoy.push((file.display().to_string(), text));
            }
            skipped = found.skipped;
        }
        Ok(ConfigText {
            base,
            envoy,
            skipped,
            merge_domains: self.merge_domains,
        })
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
                let mut config = self.read_base(&mut budget)?.parse()?;
                config.domains.clear();
                config.envoy_unloaded = Some(error.to_string());
                Ok(config)
            }
            Err(error) => Err(error),
        }
    }

    /// The tollgate document: the file, the generated document, an empty
    /// one (with `envoy` set) or the demo.
    fn read_base(&self, budget: &mut u64) -> Result<Document, ConfigError> {
        let (name, text, file) = match (&self.config, &self.generated) {
            (Some(path), _) => (
                path.display().to_string(),
                limits::read_bounded(path, budget)?,
                true,
            ),
            (None, Some(text)) => (GENERATED_NAME.to_owned(), text.clone(), false),
            // envoyproxy/ratelimit files alone: only their domains, on
            // the memory store, no demo policies.
            (None, None) if self.envoy.is_some() => ("<empty>".to_owned(), String::new(), false),
            (None, None) => ("<demo>".to_owned(), DEMO_CONFIG.to_owned(), false),
        };
        Ok(Document { name, text, file })
    }

    /// Every file the configuration is read from (the envoy directory's
    /// files at this moment, and its directories), for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config.iter().cloned().collect();
        if let Some(envoy) = &self.envoy {
            match walk(envoy, self.ignore_dot_files) {
                Ok(found) => files.extend(found.files.into_iter().chain(found.dirs)),
                Err(_) => files.push(envoy.clone()),
            }
        }
        files
    }
}

/// The text of every file of a configuration, read at one moment and not
/// yet parsed ([`ConfigSource::read`]). Two are equal when every file read
/// the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigText {
    base: Document,
    /// The envoyproxy/ratelimit files, by name, in the order read.
    envoy: Vec<(String, String)>,
    /// Entries of the envoy directory that are not files (logged when
    /// parsed, so once per load rather than once per read).
    skipped: Vec<PathBuf>,
    merge_domains: bool,
}

/// The tollgate document of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Document {
    /// How messages name it.
    name: String,
    text: String,
    /// Read from the `config` file (not generated, empty or the demo).
    file: bool,
}

impl Document {
    fn parse(&self) -> Result<Config, ConfigError> {
        Config::parse(&self.text, &self.name)
    }
}

impl ConfigText {
    /// Parses and validates what was read.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field.
    pub(crate) fn parse(&self) -> Result<Config, ConfigError> {
        // Each file is checked again as it is parsed; this also counts the
        // nodes of all of them together.
        limits::check_files(
            std::iter::once((self.base.name.as_str(), self.base.text.as_str())).chain(
                self.envoy
                    .iter()
                    .map(|(name, text)| (name.as_str(), text.as_str())),
            ),
        )?;
        let mut config = self.base.parse()?;
        if self.base.file && blank(&self.base.text) {
            // Accepted (a reload refuses it): said, so that a file emptied
            // by mistake is not served without a word.
            tracing::warn!(
                file = %self.base.name,
                "the configuration file is empty (nothing but whitespace and comments): no \
                 policy and no domain; write `{{}}` to say so (a reload refuses an empty file)"
            );
        }
        for path in &self.skipped {
            tracing::warn!(path = %path.display(), "envoy configuration: not a readable file; skipped");
        }
        for (name, text) in &self.envoy {
            config.add_envoy_file(text, name, self.merge_domains)?;
        }
        Ok(config)
    }

    /// [`parse`](Self::parse) for a reload, which refuses a tollgate file
    /// with nothing in it but whitespace and comments: an empty file is far
    /// more often one caught being rewritten (truncated, not yet written),
    /// or emptied by mistake, than a wish to drop every policy and domain,
    /// which `{}` still says. At start such a file is an empty
    /// configuration, with a warning.
    ///
    /// # Errors
    /// As [`parse`](Self::parse); also a blank tollgate file.
    pub(crate) fn parse_for_reload(&self) -> Result<Config, ConfigError> {
        if self.base.file && blank(&self.base.text) {
            return Err(ConfigError::invalid(
                &self.base.name,
                "the file is empty (nothing but whitespace and comments): refused on reload, \
                 as a file being rewritten or emptied by mistake would drop every policy and \
                 domain; write `{}` for a configuration without any",
            ));
        }
        self.parse()
    }
}

/// Whether `text` holds nothing but whitespace and comments (after a
/// byte-order mark, which an editor may leave in a file it emptied).
fn blank(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
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
    /// Entries that are neither: links to a directory or to nothing,
    /// FIFOs, sockets, devices.
    skipped: Vec<PathBuf>,
}

/// Walks `path`: the envoy configuration files under it, sorted (`path`
/// itself when it is not a directory).
fn walk(path: &Path, ignore_dot_files: bool) -> Result<Walk, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ConfigError::Io { path, source }
    };
    let mut found = Walk {
        files: Vec::new(),
        dirs: Vec::new(),
        skipped: Vec::new(),
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
            } else {
                found.skipped.push(entry_path);
            }
            if found.files.len() + found.dirs.len() + found.skipped.len() > MAX_ENVOY_FILES {
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
    found.skipped.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use tollgate_testkit::files::temp_dir;

    use super::*;
    use crate::config::read_tls_file;

    /// `read` on a thread of its own, which must be done within 10 s: a read
    /// that blocks fails the test instead of hanging it.
    #[cfg(unix)]
    fn within<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(read());
        });
        result
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the read blocked")
    }

    /// Regression: a FIFO put where a configuration file was blocked the
    /// reload thread in `open()` forever (and with it every later reload),
    /// and `/dev/zero` as a TLS file was read until memory ran out. Every
    /// reader refuses them, naming the file and what it is.
    #[cfg(unix)]
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

    /// Regression: an emptied tollgate file was reloaded as an empty
    /// configuration, every policy and domain gone. On reload it is
    /// refused; at start, and for `tollgate check`, it is still the empty
    /// configuration, and `{}` is one on reload too.
    #[test]
    fn a_blank_tollgate_file_is_refused_on_reload_only() {
        let dir = temp_dir("blank-config");
        let file = dir.join("t.yaml");
        let source = ConfigSource {
            config: Some(file.clone()),
            ..ConfigSource::default()
        };
        for blank in [
            "",
            "\n  \n\t\n",
            "# nothing yet\n",
            "  # a\n\n# b",
            "\u{feff}",
            "\u{feff}\n# b\n",
        ] {
            std::fs::write(&file, blank).unwrap();
            let error = source
                .read()
                .unwrap()
                .parse_for_reload()
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("{}: the file is empty", file.display())),
                "{blank:?}: {error}"
            );
            assert!(source.load().unwrap().policies.is_empty(), "{blank:?}");
        }
        std::fs::write(&file, "{}\n").unwrap();
        let config = source.read().unwrap().parse_for_reload().unwrap();
        assert!(config.policies.is_empty());
        // Only the file is checked: the empty document of envoyproxy/ratelimit
        // files alone is no file.
        std::fs::write(
            dir.join("a.yaml"),
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
        )
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        let envoy_only = ConfigSource {
            envoy: Some(dir.clone()),
            ..ConfigSource::default()
        };
        let config = envoy_only.read().unwrap().parse_for_reload().unwrap();
        assert_eq!(config.domains.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The node cap holds for a directory of envoyproxy/ratelimit files
    /// together: four files of about 300 000 nodes each (aliases in their
    /// `metadata`) are refused before any is parsed.
    #[test]
    fn a_directory_s_files_share_the_node_cap() {
        let dir = temp_dir("node-cap");
        let anchor = format!("[{}]", vec!["x"; 999].join(", "));
        let aliases = vec!["*a"; 299].join(", ");
        let file = |n: usize| {
            format!(
                "domain: d{n}\ndescriptors:\n  - key: k\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n    metadata:\n      a: &a {anchor}\n      b: [{aliases}]\n"
            )
        };
        let source = ConfigSource {
            envoy: Some(dir.clone()),
            ..ConfigSource::default()
        };
        // Each under the cap (`limits::tests` reads three together).
        for n in 0..4 {
            std::fs::write(dir.join(format!("{n}.yaml")), file(n)).unwrap();
        }
        let message = source.load().unwrap_err().to_string();
        assert!(
            message.contains("3.yaml:") && message.contains("files together"),
            "{message}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
