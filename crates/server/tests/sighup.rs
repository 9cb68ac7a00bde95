//! SIGHUP reloads the configuration. In a test binary of its own: the
//! signal goes to this process, whose handler the server installs.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer, api_config};
use tollgate_server::{ConfigSource, ServerOptions};
use tollgate_testkit::files::temp_dir;

#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let dir = temp_dir("server-sighup");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, api_config(10)).unwrap();
    let source = ConfigSource {
        config: Some(file.clone()),
        envoy: None,
        ..ConfigSource::default()
    };
    // No file watching: only the signal can reload.
    let options = ServerOptions::default()
        .watch_interval(None)
        .reload_on_sighup(true);
    let mut server = TestServer::start_with(Backend::memory(), "", source, options).await;
    // The server answers, so `run` has installed its handler.
    assert_eq!(server.get_text("/healthz").await.0, 200);
    std::fs::write(&file, api_config(20)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.app.current().config.policies["api"].limit(), 10);

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.app.current().config.policies["api"].limit() != 20 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.app.metrics().reloads(), (1, 0));
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
