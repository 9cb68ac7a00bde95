//! What `tollgate serve` logs about its store, read from the real binary's
//! stderr: a store that refuses it is named at ERROR from the start (and
//! the server keeps serving per `on_failure`), and a flapping store logs
//! the circuit breaker's changes, rate-limited, not one line per decision.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{metric, serve};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::redis::RedisServer;

/// Redis requires a password the configuration lacks: every call fails
/// with `NOAUTH`. The server starts anyway (no crash loop), says why at
/// ERROR at once, with no request needed, and decides by `on_failure`.
#[test]
fn a_store_that_refuses_the_server_is_named_at_error_from_the_start() {
    let redis = RedisServer::start();
    // A real password-protected redis-server (set after start, since the
    // test kit's readiness check pings without one).
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", "s3cret"]), "OK");
    let dir = temp_dir("store-auth");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis\n  url: {}\n  on_failure: open\npolicies:\n  - name: api\n    limit: 10\n    period: 1m\n  - name: login\n    limit: 10\n    period: 1m\n    on_failure: closed\n",
            redis.url()
        ),
    )
    .unwrap();
    let serve = serve(&config);
    let line = serve
        .wait_for_log(
            &["ERROR", "store failing", "NOAUTH"],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "no ERROR naming the auth failure:\n{}",
                serve.log().join("\n")
            )
        });
    assert!(line.contains("on_failure=Open"), "{line}");

    // Serving per on_failure: `api` open (allowed), `login` closed (denied).
    for _ in 0..20 {
        let (status, body) = serve.check(r#"{"policy":"api","key":"k"}"#);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""allowed":true"#), "{body}");
    }
    let (status, body) = serve.check(r#"{"policy":"login","key":"k"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""allowed":false"#), "{body}");
    let (status, body) = serve
        .request("GET", "/readyz", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NOAUTH"), "{body}");
    // Twenty-one failing decisions, one failing line: not one per decision.
    let failing = serve
        .log()
        .iter()
        .filter(|l| l.contains("store failing"))
        .count();
    assert_eq!(failing, 1, "{}", serve.log().join("\n"));
}

/// Redis hung and resumed every 150 ms for 3 s while a client keeps
/// asking: the breaker opens and closes many times, and the log says so in
/// a handful of lines (two at once, then one per 5 s), ending with the
/// state reached.
#[test]
fn a_flapping_store_logs_breaker_changes_rate_limited() {
    let redis = RedisServer::start();
    let dir = temp_dir("store-flapping");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis\n  url: {}\n  timeout: 50ms\n  breaker: {{ failures: 1, cooldown: 100ms }}\n  deny_cache: {{ enabled: false }}\npolicies:\n  - name: api\n    algorithm: sliding_log\n    limit: 1000000\n    period: 1h\n",
            redis.url()
        ),
    )
    .unwrap();
    let serve = serve(&config);
    let (status, body) = serve.check(r#"{"policy":"api","key":"k"}"#);
    assert_eq!(status, 200, "{body}");

    let mut decisions = 0;
    std::thread::scope(|scope| {
        let flapping = scope.spawn(|| {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                redis.stop_signal();
                std::thread::sleep(Duration::from_millis(150));
                redis.cont_signal();
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        while !flapping.is_finished() {
            let (status, body) = serve.check(r#"{"policy":"api","key":"k"}"#);
            assert_eq!(status, 200, "{body}");
            decisions += 1;
        }
    });
    let log = serve.log();
    let store_lines: Vec<&String> = log.iter().filter(|l| l.contains(" store ")).collect();
    let failing = store_lines
        .iter()
        .filter(|l| l.contains("store failing"))
        .count();
    assert!(
        (1..=2).contains(&failing) && store_lines.len() <= 4,
        "{decisions} decisions: {failing} failing lines, {} store lines:\n{}",
        store_lines.len(),
        log.join("\n")
    );
    // It did flap: the lines above stand for many changes.
    let opened = metric(&serve, "tollgate_circuit_breaker_opened_total");
    assert!(opened >= 4, "the breaker opened {opened} times");

    // Redis stays up now: within a line interval the log says so.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let log = serve.log();
        let last = log
            .iter()
            .rev()
            .find(|l| l.contains("store failing") || l.contains("store recovered"))
            .cloned()
            .unwrap_or_default();
        if last.contains("store recovered") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log does not end with the recovery:\n{}",
            log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
