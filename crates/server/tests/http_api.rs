//! The HTTP JSON API end to end over real sockets, on the memory store and
//! on a real Redis.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};
use serde_json::json;
use tollgate_server::{ConfigSource, ServerOptions};

/// The value of the series `series` (its name and labels, as written) in
/// the metrics text `metrics`.
fn series(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

async fn every_endpoint(backend: Backend) {
    let server = TestServer::start(backend).await;

    // check: the documented response and headers.
    let response = server
        .post(
            "/v1/check",
            r#"{"policy": "api", "key": "user-1", "cost": 1}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""api";q=100;w=60"#
    );
    assert_eq!(response.headers()["ratelimit"], r#""api";r=99;t=60"#);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["limit"], 100);
    assert_eq!(body["remaining"], 99);
    assert_eq!(body["retry_after_ms"], serde_json::Value::Null);
    let reset_after = body["reset_after_ms"].as_u64().unwrap();
    assert!((59_000..=60_000).contains(&reset_after), "{body}");

    // cost defaults to 1.
    let (status, body) = server
        .post_json("/v1/check", r#"{"policy": "api", "key": "user-1"}"#)
        .await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(98)));

    // peek consumes nothing.
    for _ in 0..3 {
        let (status, body) = server
            .post_json(
                "/v1/peek",
                r#"{"policy": "api", "key": "user-1", "cost": 5}"#,
            )
            .await;
        assert_eq!((status, body["allowed"].as_bool()), (200, Some(true)));
        assert_eq!(body["remaining"], 98);
    }

    // Denial: 200 with allowed false and a retry_after.
    for _ in 0..2 {
        let (_, body) = server
            .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
            .await;
        assert_eq!(body["allowed"], true);
    }
    let response = server
        .post("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1),
        Some("r=0")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
    // Beyond what the policy can ever grant: no retry_after.
    let (_, body) = server
        .post_json(
            "/v1/check",
            r#"{"policy": "tiny", "key": "other", "cost": 3}"#,
        )
        .await;
    assert_eq!(
        (body["allowed"].as_bool(), &body["retry_after_ms"]),
        (Some(false), &serde_json::Value::Null)
    );

    // reset needs the admin token, then the key is fresh.
    let (status, body) = server
        .post_json("/v1/reset", r#"{"policy": "tiny", "key": "k"}"#)
        .await;
    assert_eq!(status, 401, "{body}");
    let response = server
        .reset(r#"{"policy": "tiny", "key": "k"}"#, "wrong")
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = server
        .reset(r#"{"policy": "tiny", "key": "k"}"#, "s3cret")
        .await;
    assert_eq!(response.status(), 204);
    let (_, body) = server
        .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
        .await;
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(true), Some(1))
    );

    // policies.
    let (status, text) = server.get_text("/v1/policies").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "hourly", "login", "tiny"]);
    assert_eq!(
        body["policies"][2],
        json!({"name": "login", "algorithm": "token_bucket", "limit": 5, "period_ms": 60000, "burst": 10, "lease": null, "max_overdraft": 10, "policy": "token_bucket 5/1m burst 10"})
    );

    // health and readiness.
    assert_eq!(server.get_text("/healthz").await.0, 200);
    assert_eq!(server.get_text("/readyz").await.0, 200);

    // metrics count the decisions above.
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "tollgate_decisions_total{policy=\"api\",outcome=\"allowed\"} 5",
        "tollgate_decisions_total{policy=\"tiny\",outcome=\"denied\"} 2",
        "tollgate_decisions_total{policy=\"tiny\",outcome=\"allowed\"} 3",
        "tollgate_store_errors_total 0",
        "tollgate_config_reloads_total{result=\"success\"} 0",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(
        text.contains("tollgate_store_latency_seconds_count 10\n"),
        "{text}"
    );
}

#[tokio::test]
async fn every_endpoint_on_memory() {
    every_endpoint(Backend::memory()).await;
}

#[tokio::test]
async fn every_endpoint_on_redis() {
    every_endpoint(Backend::redis()).await;
}

async fn multi_policy_checks_are_all_or_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let check = r#"{"policies": ["api", "hourly"], "key": "u", "cost": 1}"#;
    for remaining in [2, 1, 0] {
        let response = server.post("/v1/check", check).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            r#""api";q=100;w=60, "hourly";q=3;w=3600"#
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["allowed"], true);
        assert_eq!(body["retry_after_ms"], serde_json::Value::Null);
        assert_eq!(body["policies"][0]["policy"], "api");
        assert_eq!(body["policies"][1]["remaining"], remaining);
    }
    let (_, body) = server.post_json("/v1/check", check).await;
    assert_eq!(body["allowed"], false);
    assert_eq!(body["policies"][0]["allowed"], true);
    assert_eq!(body["policies"][1]["allowed"], false);
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    // The denial charged neither policy: api still has 97 left.
    let (_, body) = server
        .post_json("/v1/peek", r#"{"policy": "api", "key": "u"}"#)
        .await;
    assert_eq!(body["remaining"], 97);
}

#[tokio::test]
async fn multi_policy_on_memory() {
    multi_policy_checks_are_all_or_nothing(Backend::memory()).await;
}

#[tokio::test]
async fn multi_policy_on_redis() {
    multi_policy_checks_are_all_or_nothing(Backend::redis()).await;
}

#[tokio::test]
async fn every_error_is_problem_json_with_its_status() {
    let server = TestServer::start(Backend::memory()).await;
    let long_key = "k".repeat(65);
    let too_big = format!(r#"{{"policy": "api", "key": "{}"}}"#, "k".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/check",
            r#"{"policy": "api", "key": "#.into(),
            400,
            "invalid request body",
        ),
        ("/v1/check", "not json".into(), 400, "invalid request body"),
        (
            "/v1/check",
            r#"{"policy": 5, "key": "a"}"#.into(),
            400,
            "invalid type",
        ),
        (
            "/v1/check",
            r#"{"policy": "api", "key": "a", "cost": "1"}"#.into(),
            400,
            "invalid",
        ),
        (
            "/v1/check",
            r#"{"policy": "nope", "key": "a"}"#.into(),
            404,
            "unknown policy `nope`",
        ),
        (
            "/v1/check",
            r#"{"policies": ["api", "nope"], "key": "a"}"#.into(),
            404,
            "unknown policy `nope`",
        ),
        // Inline Envoy policies are not addressable over HTTP.
        (
            "/v1/check",
            r#"{"policy": "envoy/edge/remote_address", "key": "a"}"#.into(),
            404,
            "unknown policy",
        ),
        ("/v1/check", too_big, 413, "larger than 4096 bytes"),
        (
            "/v1/check",
            r#"{"policy": "api", "key": "a", "cost": 0}"#.into(),
            400,
            "at least 1",
        ),
        (
            "/v1/check",
            r#"{"policy": "api", "key": "a", "cost": -2}"#.into(),
            400,
            "at least 1",
        ),
        (
            "/v1/check",
            r#"{"policy": "api", "key": "a", "cost": 4294967296}"#.into(),
            400,
            "above the maximum",
        ),
        (
            "/v1/peek",
            format!(r#"{{"policy": "api", "key": "{long_key}"}}"#),
            400,
            "above the maximum of 64",
        ),
        (
            "/v1/check",
            r#"{"policy": "api", "key": "a", "unknown": true}"#.into(),
            400,
            "unknown field",
        ),
        ("/v1/nowhere", "{}".into(), 404, "no such endpoint"),
        ("/healthz", "{}".into(), 405, "method not allowed"),
    ];
    for (path, body, status, detail) in cases {
        let response = server.post(path, &body).await;
        assert_eq!(response.status().as_u16(), status, "{path} {body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path} {body}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["type"], "about:blank");
        assert!(problem["title"].is_string());
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{path} {body}: {problem}"
        );
    }
    // A wrong method keeps the Allow header axum adds.
    let response = server.post("/healthz", "{}").await;
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    // reset errors, with the token.
    for (body, status) in [
        (r#"{"policy": "nope", "key": "a"}"#, 404),
        (r#"{"policy": "api"}"#, 400),
    ] {
        let response = server.reset(body, "s3cret").await;
        assert_eq!(response.status().as_u16(), status, "{body}");
    }
    // A chunked body over the limit is cut off, not buffered.
    assert_eq!(chunked_post(&server, 10, 1000).await, 413);
    assert_eq!(chunked_post(&server, 1, 10).await, 400);
    // The server is still fine.
    assert_eq!(server.get_text("/healthz").await.0, 200);
}

/// POSTs `count` chunks of `size` spaces with chunked transfer encoding
/// (no Content-Length) and returns the status.
async fn chunked_post(server: &TestServer, count: usize, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let mut request =
        b"POST /v1/check HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..count {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b' ', size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_failing_store_follows_the_failure_mode() {
    let mut redis = tollgate_testkit::redis::RedisServer::start();
    let store = tollgate_redis::RedisStore::connect(
        &redis.url(),
        tollgate_redis::RedisOptions::default().timeout(std::time::Duration::from_millis(100)),
    )
    .await
    .unwrap();
    for (mode, allowed) in [("open", true), ("closed", false), ("local", true)] {
        let text = format!(
            "store:\n  kind: redis\n  url: {}\n  timeout: 1s\n  on_failure: {mode}\npolicies:\n  - name: api\n    limit: 5\n    period: 1m\n",
            redis.url()
        );
        let config = tollgate_server::Config::parse(&text, "t.yaml").unwrap();
        let app = tollgate_server::App::new(
            Default::default(),
            config,
            tollgate_server::ServerStore::Redis(store.clone()),
        );
        let loaded = app.current();
        if mode == "open" {
            assert!(app.ready().await.is_ok());
            redis.kill();
        }
        let decision = app
            .decide(&loaded, &["api"], b"k", 1, tollgate::Mode::Consume, false)
            .await
            .unwrap();
        assert_eq!(decision.allowed, allowed, "{mode}");
        assert!(decision.decisions[0].degraded, "{mode}");
        if mode == "local" {
            assert_eq!(decision.decisions[0].remaining, 4);
        }
        assert!(app.ready().await.is_err());
        let metrics = app.render_metrics();
        assert!(
            metrics.contains("tollgate_store_errors_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("tollgate_decisions_total{policy=\"api\",outcome=\"degraded\"} 1\n"),
            "{metrics}"
        );
    }
}

/// The `store:` section's resilience settings (breaker, deny cache,
/// `local_share`) and a policy's own `on_failure` take effect, and a reload
/// changes the per-policy modes without a restart.
#[tokio::test]
async fn resilience_settings_and_per_policy_failure_modes_take_effect() {
    let mut redis = tollgate_testkit::redis::RedisServer::start();
    let url = redis.url();
    let text = |login_mode: &str| {
        format!(
            "store:
  kind: redis
  url: {}
  timeout: 100ms
  on_failure: open
  local_share: 0.5
  breaker: {{ failures: 1, cooldown: 1h, half_open_probes: 2 }}
  deny_cache: {{ enabled: false }}
policies:
  - name: api
    algorithm: fixed_window
    limit: 1
    period: 1h
  - name: login
    algorithm: fixed_window
    limit: 10
    period: 1h
    on_failure: {login_mode}
  - name: search
    algorithm: fixed_window
    limit: 10
    period: 1h
    on_failure: local
",
            url
        )
    };
    let dir = tollgate_testkit::files::temp_dir("resilience");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, text("closed")).unwrap();
    let source = tollgate_server::ConfigSource {
        config: Some(file.clone()),
        envoy: None,
        ..ConfigSource::default()
    };
    let config = source.load().unwrap();
    let store = tollgate_server::ServerStore::connect(&config.store)
        .await
        .unwrap();
    let app = tollgate_server::App::new(source, config, store);
    let decide = |name: &'static str| {
        let app = &app;
        async move {
            let loaded = app.current();
            let d = app
                .decide(&loaded, &[name], b"k", 1, tollgate::Mode::Consume, false)
                .await
                .unwrap();
            d.decisions[0]
        }
    };
    // Healthy: the deny cache is off, so every denial is a store call.
    assert!(decide("api").await.allowed);
    for _ in 0..3 {
        assert!(!decide("api").await.allowed);
    }
    let stats = app.store().stats();
    assert_eq!((stats.calls, stats.deny_cache_hits), (4, 0), "{stats:?}");

    redis.kill();
    // One failure opens the breaker (failures: 1), for an hour.
    let d = decide("api").await;
    assert!(d.allowed && d.degraded, "store default: open");
    assert_eq!(app.store().breaker_state().name(), "open");
    let calls = app.store().stats().calls;
    let d = decide("login").await;
    assert!(!d.allowed && d.degraded, "the policy's own mode: closed");
    // local: half of 10 in this process.
    let mut local = Vec::new();
    for _ in 0..7 {
        local.push(decide("search").await.allowed);
    }
    assert_eq!(local, [true, true, true, true, true, false, false]);
    assert_eq!(
        app.store().stats().calls,
        calls,
        "the breaker held every call back"
    );

    // A reload turns login's mode to open, with the same store and breaker.
    std::fs::write(&file, text("open")).unwrap();
    app.reload().unwrap();
    let d = decide("login").await;
    assert!(d.allowed && d.degraded, "reloaded: open");
    assert_eq!(app.store().breaker_state().name(), "open");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The body of `/v1/check` has exactly the five documented fields; a leaky
/// bucket's wait travels in `Tollgate-Delay-Ms`.
#[tokio::test]
async fn check_body_has_exactly_the_documented_fields() {
    // One per minute: the time between the two requests (the queue drains
    // meanwhile) is small against the wait, whatever the machine's load.
    let yaml = "policies:\n  - name: shaped\n    algorithm: leaky_bucket\n    limit: 1\n    period: 1m\n    burst: 5\n";
    let options = ServerOptions::default()
        .watch_interval(None)
        .reload_on_sighup(false);
    let server =
        TestServer::start_with(Backend::memory(), yaml, ConfigSource::default(), options).await;
    let mut delays = Vec::new();
    for _ in 0..2 {
        let response = server
            .post("/v1/check", r#"{"policy": "shaped", "key": "k"}"#)
            .await;
        delays.push(
            response
                .headers()
                .get("tollgate-delay-ms")
                .map(|v| v.to_str().expect("ascii").to_owned()),
        );
        let body: serde_json::Value = response.json().await.expect("json");
        let mut fields: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "allowed",
                "limit",
                "remaining",
                "reset_after_ms",
                "retry_after_ms"
            ]
        );
    }
    assert_eq!(delays[0], None, "an empty queue: no wait");
    let wait: u64 = delays[1]
        .as_deref()
        .expect("the second request waits")
        .parse()
        .expect("whole milliseconds");
    assert!(
        (50_000..=60_000).contains(&wait),
        "one emission interval (60 s) less the time between the requests: {wait} ms"
    );
}

/// Issue 13, finding 3: one-off keys under a long policy grew the memory
/// store without bound (1.49 M keys, 2 GB). With `store.max_keys` the store
/// holds at most that many entries, and `/metrics` counts the evictions.
#[tokio::test]
async fn one_off_keys_never_grow_the_memory_store_past_max_keys() {
    let yaml = "store:\n  max_keys: 100\npolicies:\n  - name: day\n    algorithm: fixed_window\n    limit: 1\n    period: 1h\n";
    let options = ServerOptions::default()
        .watch_interval(None)
        .reload_on_sighup(false);
    let mut server =
        TestServer::start_with(Backend::memory(), yaml, ConfigSource::default(), options).await;
    for i in 0..1_000 {
        let body = format!(r#"{{"policy":"day","key":"one-off-{i}"}}"#);
        let (status, json) = server.post_json("/v1/check", &body).await;
        assert_eq!((status, json["allowed"].as_bool()), (200, Some(true)));
    }
    let (_, metrics) = server.get_text("/metrics").await;
    let value = |name: &str| series(&metrics, name);
    let keys = value("tollgate_memory_store_keys{store=\"memory\"}");
    assert!(keys <= 100, "{keys} entries held");
    let evictions = value("tollgate_memory_store_evictions_total{store=\"memory\"}");
    assert!(evictions >= 900, "{evictions} evictions");
    server.stop().await.unwrap();
}

/// `/v1/reset` is an admin endpoint: closed unless `server.admin_token` is
/// set (403, saying how to open it), and with a token it takes only
/// `application/json` (a cross-origin `text/plain` POST is refused) and the
/// bearer scheme in any case (RFC 9110: schemes are case-insensitive).
#[tokio::test]
async fn admin_endpoints_are_closed_without_a_token_and_take_only_json() {
    let reset = r#"{"policy": "tiny", "key": "k"}"#;
    // No admin_token: refused whatever is sent, and nothing is reset.
    let open = common::CONFIG.replace("  admin_token: s3cret\n", "");
    assert_ne!(open, *common::CONFIG);
    let server = TestServer::start_text(Backend::memory(), &open).await;
    for _ in 0..2 {
        server
            .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
            .await;
    }
    for authorization in [None, Some("Bearer anything")] {
        let mut request = server
            .reqwest
            .post(server.url("/v1/reset"))
            .header("content-type", "application/json")
            .body(reset);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 403);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("server.admin_token") && detail.contains("Authorization: Bearer"),
            "{detail}"
        );
    }
    let (_, body) = server
        .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
        .await;
    assert_eq!(body["allowed"], false, "the refused resets reset nothing");

    // With a token: JSON only, the scheme in any case, a wrong token 401.
    let server = TestServer::start(Backend::memory()).await;
    let send = |authorization: &'static str, content_type: Option<&'static str>| {
        let mut request = server
            .reqwest
            .post(server.url("/v1/reset"))
            .header("authorization", authorization)
            .body(reset);
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, body) = send("Bearer s3cret", content_type).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    assert_eq!(send("Bearer wrong", Some("application/json")).await.0, 401);
    assert_eq!(send("Bearer wrong", Some("text/plain")).await.0, 401);
    for authorization in ["bearer s3cret", "BEARER s3cret", "Bearer s3cret"] {
        for _ in 0..2 {
            server
                .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
                .await;
        }
        let (status, body) = send(authorization, Some("application/json; charset=utf-8")).await;
        assert_eq!(status, 204, "{authorization}: {body}");
        let (_, body) = server
            .post_json("/v1/check", r#"{"policy": "tiny", "key": "k"}"#)
            .await;
        assert_eq!(body["remaining"], 1, "{authorization}: reset took effect");
    }
}

/// A leased policy is listed with its lease, its checks are served from
/// leases (as `/metrics` says) and keep its limit exactly.
#[tokio::test]
async fn a_leased_policy_is_listed_with_its_lease_and_keeps_its_limit() {
    let server = TestServer::start_text(
        Backend::memory(),
        "policies:
  - name: hot
    algorithm: fixed_window
    limit: 20
    period: 1h
    lease: { max: 50, ttl: 1h }
",
    )
    .await;
    let (status, text) = server.get_text("/v1/policies").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["policies"],
        json!([{"name": "hot", "algorithm": "fixed_window", "limit": 20, "period_ms": 3_600_000, "burst": null, "lease": {"max": 50, "ttl_ms": 3_600_000}, "max_overdraft": 20, "policy": "fixed_window 20/1h"}])
    );
    let mut allowed = 0;
    for i in 0..25 {
        let (status, body) = server
            .post_json("/v1/check", r#"{"policy": "hot", "key": "k"}"#)
            .await;
        assert_eq!(status, 200, "{body}");
        // Exactly the limit, the first twenty.
        assert_eq!(body["allowed"].as_bool(), Some(i < 20), "check {i}: {body}");
        allowed += u64::from(body["allowed"].as_bool().unwrap());
    }
    assert_eq!(allowed, 20);
    // A key checked this often holds a lease (a lease is asked for once
    // eight units were asked within one ttl).
    let (_, metrics) = server.get_text("/metrics").await;
    let value = |name: &str| series(&metrics, name);
    assert!(value("tollgate_leases_taken_total") >= 1, "{metrics}");
    assert!(value("tollgate_lease_units_total") >= 1, "{metrics}");
    assert_eq!(value("tollgate_lease_keys"), 1, "{metrics}");
}
