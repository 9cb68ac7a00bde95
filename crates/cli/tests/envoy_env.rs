//! `tollgate serve` started the way envoyproxy/ratelimit's container is:
//! no flags, no tollgate file, only its environment variables. The real
//! binary, a real redis-server, envoyproxy/ratelimit files under
//! `RUNTIME_ROOT`.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::tollgate;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::ports::free_port;
use tollgate_testkit::process::ServeProcess;
use tollgate_testkit::redis::RedisServer;
use tollgate_testkit::tls::Certificates;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An envoyproxy/ratelimit file of our own: 3 per minute per `client`.
const LIMITS: &str = "domain: shop
descriptors:
  - key: client
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: path
    value: /free
    rate_limit:
      unlimited: true
";

/// `RUNTIME_ROOT` with the file in its `config` directory.
fn runtime_root(name: &str) -> std::path::PathBuf {
    let root = temp_dir(name);
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::write(root.join("config").join("limits.yaml"), LIMITS).unwrap();
    root
}

/// The binary with only the given variables (and none inherited: a
/// variable of the test's own environment must not change what is tested).
fn command(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = tollgate();
    command.env_clear().env("NO_COLOR", "1").args(args);
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

fn json(serve: &ServeProcess, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = serve
        .request(
            "POST",
            "/json",
            &[("content-type", "application/json")],
            body,
            TIMEOUT,
        )
        .unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text}"));
    (status, value)
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    tollgate_testkit::http::request(addr, "GET", path, &[], "", TIMEOUT).unwrap()
}

#[test]
fn envoyproxy_variables_configure_the_server() {
    let redis = RedisServer::start();
    let root = runtime_root("envoy-env");
    let prometheus = free_port();
    let prometheus_addr = format!("127.0.0.1:{prometheus}");
    let redis_url = format!("127.0.0.1:{}", redis.port());
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("LOG_LEVEL", "info"),
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("RUNTIME_SUBDIRECTORY", ""),
        ("RUNTIME_WATCH_ROOT", "false"),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "SINGLE"),
        ("REDIS_URL", &redis_url),
        ("REDIS_TIMEOUT", "1s"), // exact counts on a loaded machine
        ("CACHE_KEY_PREFIX", "rl_"),
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_REMAINING_HEADER", "X-Left"),
        ("USE_PROMETHEUS", "true"),
        ("PROMETHEUS_ADDR", &prometheus_addr),
        ("PROMETHEUS_PATH", "/prom"),
        ("USE_STATSD", "true"),
        ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"),
    ];
    let mut serve = ServeProcess::start(command(&["serve"], &vars), true);

    // The unhonoured variable is named at start.
    serve
        .wait_for_log(&["WARN", "USE_STATSD is set but not honoured"], TIMEOUT)
        .unwrap_or_else(|| panic!("no warning:\n{}", serve.log().join("\n")));

    // The RUNTIME_ROOT file is served, exactly, on that Redis.
    let request =
        r#"{"domain":"shop","descriptors":[{"entries":[{"key":"client","value":"c1"}]}]}"#;
    for remaining in [2, 1, 0] {
        let (status, body) = json(&serve, request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["overallCode"], "OK", "{body}");
        let first = &body["statuses"][0];
        assert_eq!(first["currentLimit"]["requestsPerUnit"], 3, "{body}");
        assert_eq!(first["currentLimit"]["unit"], "MINUTE", "{body}");
        // protojson leaves a 0 out.
        let left = first
            .get("limitRemaining")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        assert_eq!(left, remaining, "{body}");
        // LIMIT_RESPONSE_HEADERS_ENABLED, with the configured name.
        let headers = body["responseHeadersToAdd"].as_array().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h["key"] == name)
                .map(|h| h["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(header("RateLimit-Limit").as_deref(), Some("3"), "{body}");
        assert_eq!(header("X-Left"), Some(remaining.to_string()), "{body}");
        let reset: u64 = header("RateLimit-Reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{body}");
    }
    let (status, body) = json(&serve, request);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["overallCode"], "OVER_LIMIT", "{body}");
    // Another client, and an unlimited descriptor, are not limited.
    let (status, _) = json(&serve, &request.replace("c1", "c2"));
    assert_eq!(status, 200);
    let (status, body) = json(
        &serve,
        r#"{"domain":"shop","descriptors":[{"entries":[{"key":"path","value":"/free"}]}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["statuses"][0]["limitRemaining"], u32::MAX, "{body}");
    // The counters are in that Redis, under CACHE_KEY_PREFIX.
    let keys = redis.cli(&["KEYS", "rl_*"]);
    assert!(!keys.trim().is_empty(), "no rl_ keys in Redis");

    // /healthcheck, /rlconfig, and Prometheus on its own listener.
    assert_eq!(get(serve.http, "/healthcheck"), (200, "OK".to_owned()));
    let (status, dump) = get(serve.http, "/rlconfig");
    assert_eq!(status, 200);
    assert!(
        dump.contains(
            "shop.client: unit=MINUTE requests_per_unit=3, shadow_mode: false, quota_mode: false"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("shop.path_/free: unit=UNKNOWN requests_per_unit=0, unlimited: true"),
        "{dump}"
    );
    let prometheus: std::net::SocketAddr = prometheus_addr.parse().unwrap();
    let (status, text) = get(prometheus, "/prom");
    assert_eq!(status, 200);
    assert!(text.contains("tollgate_decisions_total"), "{text}");
    assert_eq!(get(prometheus, "/v1/policies").0, 404);

    serve.terminate();
}

/// Waits for the process to exit (at most 10 s): its status and stderr.
fn exit_of(mut command: Command) -> (Option<i32>, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("still running after 10 s: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_value_stops_the_start_and_names_the_variable() {
    let root = runtime_root("envoy-env-bogus");
    let (code, stderr) = exit_of(command(
        &["serve"],
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", "0"),
            ("RUNTIME_ROOT", root.to_str().unwrap()),
            ("REDIS_TYPE", "bogus"),
        ],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            r#"environment variable REDIS_TYPE="bogus": expected SINGLE, CLUSTER or SENTINEL"#
        ),
        "{stderr}"
    );
    // `check` says the same, without starting anything.
    let (code, stderr) = exit_of(command(&["check"], &[("REDIS_TYPE", "bogus")]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("REDIS_TYPE"), "{stderr}");
}

#[test]
fn check_prints_the_configuration_the_environment_gives() {
    let root = runtime_root("envoy-env-check");
    let output = command(
        &["check"],
        &[
            ("RUNTIME_ROOT", root.to_str().unwrap()),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "127.0.0.1:6379"),
            ("CACHE_KEY_PREFIX", "rl_"),
            ("MEMCACHE_HOST_PORT", "127.0.0.1:11211"),
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("warning: MEMCACHE_HOST_PORT is set but not honoured"),
        "{stdout}"
    );
    assert!(stdout.contains("url: redis://127.0.0.1:6379"), "{stdout}");
    assert!(stdout.contains("prefix: rl_"), "{stdout}");
    assert!(
        stdout.contains("ok (0 policies, 1 envoy domains with 1 inline limits, store Redis)"),
        "{stdout}"
    );
}

/// A refused file in the runtime directory at start: the server starts
/// anyway, as envoyproxy/ratelimit does (FORCE_START_WITHOUT_INITIAL_CONFIG
/// changes nothing for files); with HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED
/// it is unhealthy (gRPC and /healthcheck) and every call fails until the
/// file is fixed, then healthy and limiting.
#[test]
fn a_refused_file_at_start_serves_unhealthy_until_it_is_fixed() {
    let redis = RedisServer::start();
    let root = temp_dir("envoy-env-refused");
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let refused = "domain: shop\ndescriptors:\n  - key: client\n    rate_limit: { unit: fortnight, requests_per_unit: 3 }\n";
    std::fs::write(config.join("limits.yaml"), refused).unwrap();
    let redis_url = format!("127.0.0.1:{}", redis.port());
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", &redis_url),
        ("REDIS_TIMEOUT", "1s"), // exact counts on a loaded machine
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"),
        ("LOG_FORMAT", "json"),
    ];
    let mut serve = ServeProcess::start(command(&["serve"], &vars), true);
    // LOG_FORMAT=json: JSON lines; no LOG_LEVEL: envoyproxy/ratelimit's
    // default, warn, so the start's error is there and its info lines not.
    let line = serve
        .wait_for_log(&["envoy configuration refused"], TIMEOUT)
        .unwrap_or_else(|| panic!("no start error:\n{}", serve.log().join("\n")));
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(event["level"], "ERROR", "{line}");
    assert!(
        event["error"].as_str().unwrap().contains("limits.yaml"),
        "{line}"
    );
    let (status, body) = get(serve.http, "/healthcheck");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("no rate limit configuration loaded"),
        "{body}"
    );
    // Calls fail meanwhile, as envoyproxy/ratelimit's do (400 over /json).
    let (status, body) = json(
        &serve,
        r#"{"domain":"shop","descriptors":[{"entries":[{"key":"client","value":"c"}]}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"], "no rate limit configuration loaded",
        "{body}"
    );

    // Fixed as a deployment tool fixes it: written aside, renamed in.
    std::fs::write(root.join("limits.yaml.new"), LIMITS).unwrap();
    std::fs::rename(root.join("limits.yaml.new"), config.join("limits.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(serve.http, "/healthcheck").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not healthy after the files arrived:\n{}",
            serve.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = json(
        &serve,
        r#"{"domain":"shop","descriptors":[{"entries":[{"key":"client","value":"c"}]}],"hitsAddend":3}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = json(
        &serve,
        r#"{"domain":"shop","descriptors":[{"entries":[{"key":"client","value":"c"}]}]}"#,
    );
    assert_eq!(status, 429, "{body}");
    serve.terminate();
    let log = serve.log();
    assert!(
        !log.iter()
            .any(|l| l.contains("configured from envoyproxy/ratelimit")),
        "an INFO line at the default level warn:\n{}",
        log.join("\n")
    );
    for line in &log {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // A missing runtime directory stops the start, naming it, as it stops
    // envoyproxy/ratelimit's.
    let missing = temp_dir("envoy-env-missing");
    let (code, stderr) = exit_of(command(
        &["serve"],
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", "0"),
            ("RUNTIME_ROOT", missing.to_str().unwrap()),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", &redis_url),
        ],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&*missing.join("config").to_string_lossy()),
        "{stderr}"
    );
}

/// REDIS_TLS, REDIS_TLS_CACERT and REDIS_AUTH (an ACL user whose password
/// needs escaping in a URL) on a real redis-server with TLS and a private
/// CA: the counters are written over TLS, as that user.
#[test]
fn redis_tls_and_auth_from_the_environment() {
    let certificates = Certificates::create(&temp_dir("envoy-env-redis-tls"));
    let tls_port = free_port();
    let args = certificates.redis_args(tls_port, false);
    let redis = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let password = "p@ss:w/rd %1";
    assert_eq!(
        redis.cli(&[
            "ACL",
            "SETUSER",
            "limiter",
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all"
        ]),
        "OK"
    );
    // From here on, only `limiter` can log in.
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "off"]), "OK");
    let as_limiter = |args: &[&str]| {
        let mut all = vec!["--user", "limiter", "--pass", password, "--no-auth-warning"];
        all.extend(args);
        redis.cli(&all)
    };
    let root = runtime_root("envoy-env-redis-tls-root");
    let redis_url = format!("127.0.0.1:{tls_port}");
    let auth = format!("limiter:{password}");
    let ca = certificates.ca.to_string_lossy().into_owned();
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", &redis_url),
        ("REDIS_TIMEOUT", "1s"), // exact counts on a loaded machine
        ("REDIS_TLS", "true"),
        ("REDIS_TLS_CACERT", &ca),
        ("REDIS_AUTH", &auth),
        ("CACHE_KEY_PREFIX", "tls_"),
    ];
    let mut serve = ServeProcess::start(command(&["serve"], &vars), true);
    let request = r#"{"domain":"shop","descriptors":[{"entries":[{"key":"client","value":"t"}]}]}"#;
    let (status, body) = json(&serve, request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["statuses"][0]["limitRemaining"], 2, "{body}");
    // Written as `limiter`, over TLS (the plain port is only the test's).
    let keys = as_limiter(&["KEYS", "tls_*"]);
    assert!(!keys.trim().is_empty(), "no tls_ keys");
    assert_eq!(get(serve.http, "/healthcheck").0, 200);
    serve.terminate();
}

/// REDIS_TYPE=CLUSTER with envoyproxy/ratelimit's comma-separated
/// `REDIS_URL` on a real three-master Redis Cluster.
#[test]
fn redis_cluster_from_the_environment() {
    let cluster = tollgate_testkit::redis::RedisCluster::start(3, 0);
    let seeds: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| {
            url.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let redis_url = seeds.join(",");
    let root = runtime_root("envoy-env-cluster");
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "CLUSTER"),
        ("REDIS_URL", &redis_url),
        ("REDIS_TIMEOUT", "1s"), // exact counts on a loaded machine
    ];
    let mut serve = ServeProcess::start(command(&["serve"], &vars), true);
    // Clients spread over the slots; each gets exactly its 3.
    for client in ["a", "b", "c", "d", "e", "f"] {
        let request = format!(
            r#"{{"domain":"shop","descriptors":[{{"entries":[{{"key":"client","value":"{client}"}}]}}]}}"#
        );
        for _ in 0..3 {
            let (status, body) = json(&serve, &request);
            assert_eq!(status, 200, "{client}: {body}");
        }
        let (status, body) = json(&serve, &request);
        assert_eq!(status, 429, "{client}: {body}");
    }
    assert_eq!(get(serve.http, "/healthcheck").0, 200);
    serve.terminate();
}
