//! Reload: the function itself, and the file watcher (write, atomic rename,
//! Kubernetes-style symlink swap, broken files kept out).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, api_config};
use tollgate_server::{App, ConfigSource, ServerOptions, ServerStore};
use tollgate_testkit::files::temp_dir;

const BROKEN: &str =
    "policies:\n  - name: api\n    algorithm: fixed_window\n    limit: 0\n    period: 1h\n";

/// A service on the memory store reading its configuration from `file`.
fn memory_app(file: &Path) -> App {
    let source = ConfigSource {
        config: Some(file.to_path_buf()),
        envoy: None,
        ..ConfigSource::default()
    };
    App::new(
        source.clone(),
        source.load().unwrap(),
        ServerStore::Memory(tollgate::MemoryStore::new()),
    )
}

fn limit(app: &App) -> u64 {
    app.current().config.policies["api"].limit()
}

#[tokio::test]
async fn reload_swaps_valid_configs_and_keeps_the_old_one_on_errors() {
    let dir = temp_dir("reload");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, api_config(10)).unwrap();
    let app = memory_app(&file);
    let before = app.current();
    let d = app
        .decide(&before, &["api"], b"k", 1, tollgate::Mode::Consume, false)
        .await
        .unwrap();
    assert_eq!(d.decisions[0].remaining, 9);

    std::fs::write(&file, api_config(20)).unwrap();
    app.reload().unwrap();
    assert_eq!(limit(&app), 20);
    // A request that started before the reload still sees its configuration.
    assert_eq!(before.config.policies["api"].limit(), 10);

    std::fs::write(&file, BROKEN).unwrap();
    let error = app.reload().unwrap_err().to_string();
    assert!(error.contains("tollgate.yaml:2:5"), "{error}");
    assert!(error.contains("limit must be at least 1"), "{error}");
    assert_eq!(limit(&app), 20, "the running configuration stays");

    std::fs::remove_file(&file).unwrap();
    assert!(app.reload().is_err());
    assert_eq!(limit(&app), 20);
    assert_eq!(app.metrics().reloads(), (1, 2));
    std::fs::remove_dir_all(dir).unwrap();
}

async fn wait_for_limit(server: &TestServer, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit(&server.app) != expected {
        assert!(
            Instant::now() < deadline,
            "the limit stayed {} instead of becoming {expected}",
            limit(&server.app)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_failures(server: &TestServer, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.app.metrics().reloads().1 < expected {
        assert!(Instant::now() < deadline, "no failed reload was counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn watching() -> ServerOptions {
    ServerOptions::default()
        .watch_interval(Some(Duration::from_millis(50)))
        .reload_on_sighup(false)
}

fn atomic_write(file: &Path, text: &str) {
    let temp = file.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, file).unwrap();
}

#[tokio::test]
async fn the_watcher_follows_writes_renames_and_keeps_broken_files_out() {
    let dir = temp_dir("watch");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, api_config(10)).unwrap();
    let source = ConfigSource {
        config: Some(file.clone()),
        envoy: None,
        ..ConfigSource::default()
    };
    let mut server = TestServer::start_with(Backend::memory(), "", source, watching()).await;
    assert_eq!(limit(&server.app), 10);

    // A plain write (the length changes, so even a coarse mtime cannot hide it).
    std::fs::write(&file, api_config(200)).unwrap();
    wait_for_limit(&server, 200).await;

    // An atomic rename onto the file.
    atomic_write(&file, &api_config(3000));
    wait_for_limit(&server, 3000).await;

    // A broken file is logged and counted; the running config stays, and
    // requests keep being answered.
    atomic_write(&file, BROKEN);
    wait_for_failures(&server, 1).await;
    assert_eq!(limit(&server.app), 3000);
    let (status, body) = server
        .post_json("/v1/check", r#"{"policy": "api", "key": "k"}"#)
        .await;
    assert_eq!((status, body["limit"].as_u64()), (200, Some(3000)));

    // Fixed: picked up again.
    atomic_write(&file, &api_config(4));
    wait_for_limit(&server, 4).await;
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"success\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"failure\"} 1\n"),
        "{metrics}"
    );
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn the_watcher_follows_a_kubernetes_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    // A ConfigMap volume: config.yaml -> ..data/config.yaml,
    // ..data -> ..2024_01 (a timestamped directory). An update writes a new
    // directory and renames a new ..data link over the old one.
    let dir = temp_dir("configmap");
    let v1 = dir.join("..2024_01");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), api_config(10)).unwrap();
    symlink("..2024_01", dir.join("..data")).unwrap();
    symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
    let source = ConfigSource {
        config: Some(dir.join("config.yaml")),
        envoy: None,
        ..ConfigSource::default()
    };
    let mut server = TestServer::start_with(Backend::memory(), "", source, watching()).await;
    assert_eq!(limit(&server.app), 10);

    let v2 = dir.join("..2024_02");
    std::fs::create_dir(&v2).unwrap();
    // Same length as before: only the canonical path tells them apart.
    std::fs::write(v2.join("config.yaml"), api_config(20)).unwrap();
    symlink("..2024_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for_limit(&server, 20).await;
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn envoy_directories_are_watched_too() {
    let dir = temp_dir("envoy-watch");
    std::fs::write(
        dir.join("a.yaml"),
        "domain: a\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let source = ConfigSource {
        config: None,
        envoy: Some(dir.clone()),
        ..ConfigSource::default()
    };
    let mut server = TestServer::start_with(Backend::memory(), "", source, watching()).await;
    assert_eq!(server.app.current().config.domains.len(), 1);
    std::fs::write(
        dir.join("b.yml"),
        "domain: b\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.app.current().config.domains.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the new domain file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Regression: denials cached under a policy's old parameters answered for
/// it again when a later reload brought those parameters back, though the
/// store had started the key afresh meanwhile. A reload that changes
/// policies now clears the deny cache.
#[tokio::test]
async fn a_reload_that_changes_policies_forgets_cached_denials() {
    let dir = temp_dir("reload-deny-cache");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, api_config(1)).unwrap();
    let app = memory_app(&file);
    let check = || async {
        let loaded = app.current();
        app.decide(&loaded, &["api"], b"k", 1, tollgate::Mode::Consume, false)
            .await
            .unwrap()
            .allowed
    };
    assert!(check().await);
    assert!(
        !check().await,
        "1/1h: the second is denied (from the cache)"
    );
    assert_eq!(app.store().stats().deny_cache_len, 1);
    std::fs::write(&file, api_config(5)).unwrap();
    app.reload().unwrap();
    assert_eq!(app.store().stats().deny_cache_len, 0);
    assert!(
        check().await,
        "5/1h: the window's count (1) carries over, and 4 remain"
    );
    // Another algorithm starts the key afresh; back to 1/1h (fixed window)
    // the store starts afresh again and allows: a denial cached under the
    // first 1/1h must not answer it.
    std::fs::write(
        &file,
        "policies:\n  - name: api\n    algorithm: sliding_log\n    limit: 1\n    period: 1h\n",
    )
    .unwrap();
    app.reload().unwrap();
    assert!(check().await, "sliding_log 1/1h: a fresh state");
    std::fs::write(&file, api_config(1)).unwrap();
    app.reload().unwrap();
    assert!(check().await);
    // A reload that changes no policy keeps the cache.
    assert!(!check().await);
    app.reload().unwrap();
    assert_eq!(app.store().stats().deny_cache_len, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
