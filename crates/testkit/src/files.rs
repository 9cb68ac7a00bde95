//! Scratch directories and files for tests that write configuration.
//!
//! ```
//! let dir = tollgate_testkit::files::temp_dir("doc-example");
//! std::fs::write(dir.join("tollgate.yaml"), "policies: []\n").unwrap();
//! assert!(dir.join("tollgate.yaml").is_file());
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Tells apart directories of one name made by one process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system's temporary directory, named
/// after `name`, this process and a counter, so parallel tests (and
/// processes) never share one. It is left behind for inspection: the
/// system cleans its temporary directory.
///
/// # Panics
/// When the directory cannot be created.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// A file `name` holding `text`, alone in a fresh [`temp_dir`] (so the
/// name, which messages quote, is exactly `name`).
///
/// # Panics
/// When the directory or the file cannot be written.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = temp_dir(name).join(name);
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    path
}
