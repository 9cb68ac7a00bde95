//! Hot reload: on SIGHUP, and when a configuration file changes.
//!
//! Changes are found by polling every file's metadata (through symlinks)
//! and canonical path every interval (500 ms by default) rather than with
//! inotify: an editor's write, an atomic rename onto the file and a
//! Kubernetes ConfigMap update (which swaps the `..data` symlink of the
//! directory) all change one of them, polling needs no platform-specific
//! watcher, and a few `stat` calls a second cost nothing.
//!
//! A change is taken whole (`Settle`): once the metadata changes, every
//! file is read at each poll, and what two polls in a row read the same is
//! parsed and reloaded, so a file caught half-written (truncated by an
//! editor and not yet written, a ConfigMap swapped while read) is never
//! swapped in. SIGHUP reloads at once. A change is reloaded once; a file
//! that fails validation leaves the running configuration in place
//! (logged, counted), and is tried again when it next changes. Files are
//! read and parsed on threads of their own ([`App::reload_off_runtime`]),
//! so requests never wait for a parse, and shutdown does not wait for one
//! either.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::App;
use crate::config::{ConfigError, ConfigSource, ConfigText};

/// Contents that changed, taken only once the next look finds them the
/// same: files caught half-written (truncated and not yet filled, a
/// certificate rotated before its key) are not taken, as long as their
/// writes land within one interval. The file watcher looks this way, and
/// so does the gRPC TLS certificate reload (`crate::grpc_tls`).
#[derive(Debug)]
pub(crate) struct Settle<T>(Option<T>);

impl<T> Default for Settle<T> {
    fn default() -> Self {
        Settle(None)
    }
}

impl<T: PartialEq> Settle<T> {
    /// This look's contents: returned when the previous look found the
    /// same (taken: the look after starts over), else kept for the next
    /// look to compare, and `None`.
    pub(crate) fn settled(&mut self, now: T) -> Option<T> {
        if self.0.as_ref() == Some(&now) {
            self.0 = None;
            Some(now)
        } else {
            self.0 = Some(now);
            None
        }
    }

    /// Forgets contents seen once.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }

    /// Whether contents seen once wait for the next look.
    pub(crate) fn waiting(&self) -> bool {
        self.0.is_some()
    }
}

/// One read of the configuration's files, to compare with the next: two
/// errors are the same when they say the same.
#[derive(Debug)]
struct Read(Result<ConfigText, ConfigError>);

impl PartialEq for Read {
    fn eq(&self, other: &Read) -> bool {
        match (&self.0, &other.0) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// What the file watcher knows between two polls.
#[derive(Debug)]
struct Poller {
    /// The files' state at the last poll.
    last: Fingerprint,
    /// Files read once since they changed, waiting for the next poll.
    changed: Settle<Read>,
    /// Polls in a row that read the files other than the poll before.
    unsettled: u32,
}

/// Polls in a row that read changed files without two agreeing before a
/// warning says the change is not applied (10 s at the default 500 ms
/// interval), and again after as many more each time.
const UNSETTLED_WARNING: u32 = 20;

impl Poller {
    fn new(source: &ConfigSource) -> Poller {
        Poller {
            last: Fingerprint::of(source),
            changed: Settle::default(),
            unsettled: 0,
        }
    }

    /// Whether this poll must read the files: their state changed since
    /// the last poll, or they were read once and wait for a second read.
    fn must_read(&mut self, source: &ConfigSource) -> bool {
        let now = Fingerprint::of(source);
        let changed = now != self.last;
        self.last = now;
        changed || self.changed.waiting()
    }

    /// This poll's read: what to reload, when the previous poll read the
    /// same.
    fn settled(
        &mut self,
        read: Result<ConfigText, ConfigError>,
    ) -> Option<Result<ConfigText, ConfigError>> {
        let settled = self.changed.settled(Read(read)).map(|read| read.0);
        if settled.is_some() {
            self.unsettled = 0;
        } else {
            self.unsettled += 1;
            if self.keeps_changing() {
                tracing::warn!(
                    polls = self.unsettled,
                    "configuration files read differently at every poll; not reloaded until two \
                     polls in a row read the same (a file being rewritten all the time?)"
                );
            }
        }
        settled
    }

    /// Whether the last [`UNSETTLED_WARNING`] polls (or a multiple) read
    /// the files differently each time, so that a warning is due.
    fn keeps_changing(&self) -> bool {
        self.unsettled > 0 && self.unsettled % UNSETTLED_WARNING == 0
    }

    /// A reload not of the watcher's making (SIGHUP) reads the files as
    /// they are now: what the watcher saw before is forgotten.
    fn reloading(&mut self, source: &ConfigSource) {
        self.last = Fingerprint::of(source);
        self.changed.forget();
        self.unsettled = 0;
    }
}

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    path: PathBuf,
    canonical: Option<PathBuf>,
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The state of every configuration file, to compare between polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<FileState>);

impl Fingerprint {
    /// Reads the metadata of every file of `source`.
    pub fn of(source: &ConfigSource) -> Fingerprint {
        let mut states: Vec<FileState> = source
            .files()
            .into_iter()
            .map(|path| {
                let canonical = std::fs::canonicalize(&path).ok();
                let metadata = std::fs::metadata(&path).ok();
                FileState {
                    canonical,
                    modified: metadata.as_ref().and_then(|m| m.modified().ok()),
                    len: metadata.as_ref().map_or(0, std::fs::Metadata::len),
                    inode: metadata.as_ref().map_or(0, inode),
                    path,
                }
            })
            .collect();
        if let Some(dir) = &source.envoy {
            // A directory's own modification time changes when a file is
            // added or removed.
            let metadata = std::fs::metadata(dir).ok();
            states.push(FileState {
                path: dir.clone(),
                canonical: std::fs::canonicalize(dir).ok(),
                modified: metadata.as_ref().and_then(|m| m.modified().ok()),
                len: 0,
                inode: metadata.as_ref().map_or(0, inode),
            });
        }
        Fingerprint(states)
    }
}

#[cfg(unix)]
fn inode(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Reloads `app` when its files change (polled every `interval`; `None`:
/// not watched) and, when `sighup` is set, on SIGHUP, until `shutdown`
/// completes.
///
/// The SIGHUP handler is installed and the files' state taken when this is
/// called, not when the future is first polled, so neither a SIGHUP nor a
/// change made once the server answers is missed. Must be called within a
/// tokio runtime.
pub fn watch(
    app: Arc<App>,
    interval: Option<Duration>,
    sighup: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = ()> {
    let mut hangup = hangup_stream(sighup);
    let mut poller = Poller::new(app.source());
    async move {
        let mut ticks = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let read = tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick(), if interval.is_some() => {
                    if !poller.must_read(app.source()) {
                        continue;
                    }
                    // Read off the runtime; shutdown does not wait for it.
                    let read = tokio::select! {
                        () = &mut shutdown => return,
                        read = app.read_off_runtime() => read,
                    };
                    let Some(read) = poller.settled(read) else {
                        continue;
                    };
                    tracing::info!("configuration files changed; reloading");
                    read
                }
                () = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP; reloading the configuration");
                    poller.reloading(app.source());
                    tokio::select! {
                        () = &mut shutdown => return,
                        read = app.read_off_runtime() => read,
                    }
                }
            };
            // Parsed off the runtime; shutdown does not wait for it.
            tokio::select! {
                () = &mut shutdown => return,
                _ = app.reload_read_off_runtime(read) => {}
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_stream(enabled: bool) -> Hangup {
    if !enabled {
        return None;
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_stream(_: bool) -> Hangup {
    None
}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use tollgate_testkit::files::temp_dir;

    use super::*;

    fn api(limit: u64) -> String {
        format!(
            "policies:\n  - name: api\n    algorithm: fixed_window\n    limit: {limit}\n    period: 1h\n"
        )
    }

    /// One poll of the watcher: the files read, when two polls in a row
    /// read them the same.
    fn poll(poller: &mut Poller, source: &ConfigSource) -> Option<Result<ConfigText, ConfigError>> {
        if !poller.must_read(source) {
            return None;
        }
        poller.settled(source.read())
    }

    #[test]
    fn contents_are_taken_when_two_looks_in_a_row_agree() {
        let mut settle = Settle::default();
        assert_eq!(settle.settled(1), None);
        assert!(settle.waiting());
        assert_eq!(settle.settled(2), None, "changed again: a first look");
        assert_eq!(settle.settled(2), Some(2));
        assert!(!settle.waiting());
        assert_eq!(settle.settled(2), None, "taken: the next look starts over");
        settle.forget();
        assert!(!settle.waiting());
    }

    /// Regression: the watcher reloaded on the first poll that saw a
    /// change, so a poll landing between an editor's truncate and its
    /// write swapped in half a file until the next poll.
    #[test]
    fn a_change_is_reloaded_once_two_polls_read_it_the_same() {
        let dir = temp_dir("poller");
        let file = dir.join("t.yaml");
        std::fs::write(&file, api(10)).unwrap();
        let source = ConfigSource {
            config: Some(file.clone()),
            ..ConfigSource::default()
        };
        let mut poller = Poller::new(&source);
        assert!(poll(&mut poller, &source).is_none(), "nothing changed");

        // Half written: the policy without its limit.
        std::fs::write(&file, "policies:\n  - name: api\n").unwrap();
        assert!(poll(&mut poller, &source).is_none(), "read once");
        std::fs::write(&file, api(20)).unwrap();
        assert!(poll(&mut poller, &source).is_none(), "changed: read once");
        let read = poll(&mut poller, &source).expect("read the same twice");
        let config = read.unwrap().parse_for_reload().unwrap();
        assert_eq!(config.policies["api"].limit(), 20);
        assert!(poll(&mut poller, &source).is_none(), "reloaded once");

        // A file that cannot be read is refused once two polls agree, then
        // left alone until it changes.
        std::fs::remove_file(&file).unwrap();
        assert!(poll(&mut poller, &source).is_none());
        assert!(poll(&mut poller, &source).expect("settled").is_err());
        assert!(poll(&mut poller, &source).is_none());

        // SIGHUP reads the files as they are: what the watcher saw before
        // is forgotten.
        std::fs::write(&file, api(30)).unwrap();
        assert!(poll(&mut poller, &source).is_none());
        poller.reloading(&source);
        assert!(poll(&mut poller, &source).is_none());

        // A file rewritten before every poll never settles, and says so.
        for n in 1..=UNSETTLED_WARNING {
            std::fs::write(&file, api(u64::from(n) + 100)).unwrap();
            assert!(poll(&mut poller, &source).is_none());
            assert_eq!(poller.keeps_changing(), n == UNSETTLED_WARNING, "poll {n}");
        }
        assert!(
            poll(&mut poller, &source).is_some(),
            "read the same at last"
        );
        assert!(!poller.keeps_changing());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same rule for a directory of envoyproxy/ratelimit files: a file
    /// added (or swapped in by a ConfigMap's `..data` link) is read by two
    /// polls before it is loaded.
    #[test]
    fn envoy_directories_settle_too() {
        let dir = temp_dir("poller-envoy");
        let domain = |name: &str| {
            format!(
                "domain: {name}\ndescriptors:\n  - key: k\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n"
            )
        };
        std::fs::write(dir.join("a.yaml"), domain("a")).unwrap();
        let source = ConfigSource {
            envoy: Some(dir.clone()),
            ..ConfigSource::default()
        };
        let mut poller = Poller::new(&source);
        std::fs::write(dir.join("b.yaml"), "domain: b\n").unwrap();
        assert!(poll(&mut poller, &source).is_none(), "read once");
        std::fs::write(dir.join("b.yaml"), domain("b")).unwrap();
        assert!(poll(&mut poller, &source).is_none(), "changed: read once");
        let config = poll(&mut poller, &source)
            .expect("read the same twice")
            .unwrap()
            .parse_for_reload()
            .unwrap();
        assert_eq!(config.domains.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
