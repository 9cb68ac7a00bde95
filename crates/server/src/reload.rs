//! Hot reload: on SIGHUP, and when a configuration file changes.
//!
//! Changes are found by polling every file's metadata (through symlinks)
//! and canonical path every interval (500 ms by default) rather than with
//! inotify: an editor's write, an atomic rename onto the file and a
//! Kubernetes ConfigMap update (which swaps the `..data` symlink of the
//! directory) all change one of them, polling needs no platform-specific
//! watcher, and a few `stat` calls a second cost nothing.
//!
//! A change is reloaded once; a file that fails validation leaves the
//! running configuration in place (logged, counted), and is tried again
//! when it next changes. Files are read and parsed on a thread of their
//! own ([`App::reload_off_runtime`]), so requests never wait for a parse,
//! and shutdown does not wait for one either.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::App;
use crate::config::ConfigSource;

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
    let mut last = Fingerprint::of(app.source());
    async move {
        let mut ticks = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick(), if interval.is_some() => {
                    let now = Fingerprint::of(app.source());
                    if now == last {
                        continue;
                    }
                    last = now;
                    tracing::info!("configuration files changed; reloading");
                }
                () = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP; reloading the configuration");
                    last = Fingerprint::of(app.source());
                }
            }
            // Parsed off the runtime; shutdown does not wait for it.
            tokio::select! {
                () = &mut shutdown => return,
                _ = app.reload_off_runtime() => {}
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
