//! The binary, `tollgate serve`, on Redis Sentinel and on a unix socket as
//! its configuration file says: checks decided on Redis, and no password
//! (the sentinels' or the master's) in its banner or its log.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use support::serve;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::redis::{RedisSentinel, RedisServer, SentinelSetup};

const POLICIES: &str =
    "policies:\n  - name: api\n    algorithm: sliding_log\n    limit: 3\n    period: 1h\n";

/// Four checks of `api` for one key: allowed with remaining 2, 1, 0, then
/// denied. With `on_failure: closed` a check the store failed would be
/// denied, so the three admissions were decided on Redis.
fn three_then_denied(serve: &tollgate_testkit::process::ServeProcess) {
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = serve.check(r#"{"policy": "api", "key": "bin"}"#);
        assert_eq!(status, 200, "{body}");
        let allowed = body.contains(r#""allowed":true"#);
        let remaining = (0..=3).find(|n| body.contains(&format!(r#""remaining":{n},"#)));
        seen.push((allowed, remaining));
    }
    assert_eq!(
        seen,
        [
            (true, Some(2)),
            (true, Some(1)),
            (true, Some(0)),
            (false, Some(0))
        ]
    );
}

#[test]
fn serve_on_a_sentinel_master_with_passwords_it_never_prints() {
    let group = RedisSentinel::start_with(
        SentinelSetup::default()
            .nodes(1, 3)
            .master_password("master-pw-9")
            .sentinel_password("sentinel-pw-7"),
    );
    let urls: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let dir = temp_dir("serve-sentinel");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis_sentinel\n  urls: [{}]\n  master_name: {}\n  master_password: master-pw-9\n  timeout: 2s\n  on_failure: closed\n{POLICIES}",
            urls.join(", "),
            group.master_name()
        ),
    )
    .unwrap();
    let mut serve = serve(&config);
    three_then_denied(&serve);
    serve.terminate();
    let log = serve.log().join("\n");
    assert!(
        !log.contains("master-pw-9") && !log.contains("sentinel-pw-7"),
        "a password in the log:\n{log}"
    );

    // The banner (stdout) names the store, the master in use and the
    // sentinels, without their passwords.
    let mut child = support::serve_command(support::tollgate(), &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.trim_start().starts_with("config "))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let store = banner
        .iter()
        .find(|line| line.trim_start().starts_with("store "))
        .unwrap_or_else(|| panic!("no store line in the banner:\n{}", banner.join("\n")));
    let master = format!("127.0.0.1:{}", group.master_port());
    assert!(
        store.contains(r#"topology: "sentinel""#)
            && store.contains(&master)
            && store.contains("redis://***@127.0.0.1:"),
        "{store}"
    );
    assert!(
        !store.contains("master-pw-9") && !store.contains("sentinel-pw-7"),
        "{store}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_on_a_unix_socket() {
    let redis = RedisServer::start_with_unix_socket(&[]);
    let dir = temp_dir("serve-unix");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis\n  url: \"{}\"\n  prefix: unix-bin\n  timeout: 2s\n  on_failure: closed\n{POLICIES}",
            redis.unix_url()
        ),
    )
    .unwrap();
    let serve = serve(&config);
    three_then_denied(&serve);
    assert_eq!(
        redis.cli(&["ZCARD", "unix-bin:{http:bin}:api:sliding_log"]),
        "3"
    );
    std::fs::remove_dir_all(&dir).ok();
}
