//! Per-key overrides through the admin API: three servers sharing one
//! Redis (and one Cluster) see an override set through any of them within
//! a second; the API's errors; the check response says when one applied.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

const TOKEN: &str = "Bearer s3cret";

/// `tiny` (fixed_window 2/1h) of the shared configuration, on the store of
/// `store` (a YAML `store:` section).
fn config(store: &str) -> String {
    format!(
        "server:\n  admin_token: s3cret\n  max_key_bytes: 64\n{store}policies:\n  - name: tiny\n    algorithm: fixed_window\n    limit: 2\n    period: 1h\n  - name: bucket\n    algorithm: token_bucket\n    limit: 10\n    period: 1m\n    burst: 20\n"
    )
}

async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = server.reqwest.request(method, server.url(path));
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn put(server: &TestServer, path: &str, body: &str) -> (u16, serde_json::Value) {
    send(server, reqwest::Method::PUT, path, Some(body), Some(TOKEN)).await
}

async fn get(server: &TestServer, path: &str) -> (u16, serde_json::Value) {
    send(server, reqwest::Method::GET, path, None, Some(TOKEN)).await
}

/// Waits until a GET of `path` on `server` answers `status`: at most 1 s
/// after `start` (when the change was made), the bound on propagation
/// between instances.
async fn propagated(server: &TestServer, path: &str, status: u16, start: Instant) {
    loop {
        if get(server, path).await.0 == status {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{path} did not answer {status} within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn check(server: &TestServer, key: &str) -> serde_json::Value {
    let body = format!(r#"{{"policy": "tiny", "key": "{key}"}}"#);
    let (status, body) = server.post_json("/v1/check", &body).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn three_servers_share_overrides(store: &str) {
    let text = config(store);
    let fleet = [
        TestServer::start_text(Backend::memory(), &text).await,
        TestServer::start_text(Backend::memory(), &text).await,
        TestServer::start_text(Backend::memory(), &text).await,
    ];
    let start = Instant::now();
    let (status, body) = put(&fleet[0], "/v1/overrides/tiny/vip", r#"{"limit": 5}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limit"], 5);
    assert_eq!(body["source"], "api");
    for server in &fleet[1..] {
        propagated(server, "/v1/overrides/tiny/vip", 200, start).await;
    }
    // One state, one limit of 5 for `vip`, across the fleet; 2 for others.
    let mut allowed = 0;
    for i in 0..9 {
        let body = check(&fleet[i % 3], "vip").await;
        assert_eq!(body["override"], true, "{body}");
        allowed += usize::from(body["allowed"] == true);
    }
    assert_eq!(allowed, 5);
    let body = check(&fleet[1], "someone").await;
    assert!(body.get("override").is_none(), "{body}");

    let start = Instant::now();
    let (status, _) = send(
        &fleet[2],
        reqwest::Method::DELETE,
        "/v1/overrides/tiny/vip",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 204);
    for server in &fleet {
        propagated(server, "/v1/overrides/tiny/vip", 404, start).await;
    }
    assert_eq!(
        check(&fleet[0], "vip").await["allowed"],
        false,
        "5 spent, 2 allowed now"
    );
}

#[tokio::test]
async fn three_servers_on_one_redis_enforce_an_override_within_a_second() {
    let redis = RedisServer::start();
    let store = format!(
        "store:\n  kind: redis\n  url: {}\n  prefix: {}\n  timeout: 1s\n",
        redis.url(),
        tollgate_testkit::redis::unique_prefix()
    );
    three_servers_share_overrides(&store).await;
}

#[tokio::test]
async fn three_servers_on_one_cluster_enforce_an_override_within_a_second() {
    let cluster = RedisCluster::start(3, 0);
    let urls: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| format!("    - {u}\n"))
        .collect();
    let store = format!(
        "store:\n  kind: redis_cluster\n  urls:\n{}  prefix: {}\n  timeout: 1s\n",
        urls.concat(),
        tollgate_testkit::redis::unique_prefix()
    );
    three_servers_share_overrides(&store).await;
}

#[tokio::test]
async fn the_admin_api_refuses_what_it_cannot_apply_and_says_why() {
    let server = TestServer::start_text(Backend::memory(), &config("")).await;
    let path = "/v1/overrides/tiny/k";
    // Admin rules: a token, JSON for a body.
    let (status, _) = send(
        &server,
        reqwest::Method::PUT,
        path,
        Some(r#"{"limit":5}"#),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(
        &server,
        reqwest::Method::GET,
        "/v1/overrides",
        None,
        Some("Bearer no"),
    )
    .await;
    assert_eq!(status, 401);
    let response = server
        .reqwest
        .put(server.url(path))
        .header("authorization", TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"limit":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // Bodies and targets.
    for (path, body, expected) in [
        (path, "{}", 400),
        (path, r#"{"limit": 5, "blocked": true}"#, 400),
        (path, r#"{"unlimited": false}"#, 400),
        (path, r#"{"limit": 0}"#, 400),
        (path, r#"{"limit": 5, "burst": 9}"#, 400),
        (path, r#"{"limit": 5, "period": "forever"}"#, 400),
        (path, r#"{"limit": 5, "expires_in": "0s"}"#, 400),
        (path, r#"{"limit": 5, "colour": "red"}"#, 400),
        (path, "not json", 400),
        ("/v1/overrides/nope/k", r#"{"limit": 5}"#, 404),
        ("/v1/overrides/tiny", r#"{"limit": 5}"#, 404),
        ("/v1/overrides/tiny/%zz", r#"{"limit": 5}"#, 400),
    ] {
        let (status, problem) = put(&server, path, body).await;
        assert_eq!(status, expected, "{path} {body}: {problem}");
        assert_eq!(problem["status"], expected, "problem+json: {problem}");
    }
    let long = "x".repeat(65);
    let (status, _) = put(
        &server,
        &format!("/v1/overrides/tiny/{long}"),
        r#"{"blocked": true}"#,
    )
    .await;
    assert_eq!(status, 400, "longer than max_key_bytes");
    let (status, _) = get(&server, "/v1/overrides/tiny/missing").await;
    assert_eq!(status, 404);
    let (status, _) = send(
        &server,
        reqwest::Method::DELETE,
        "/v1/overrides/tiny/missing",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get(&server, "/v1/overrides?limit=0").await;
    assert_eq!(status, 400);
    let (status, _) = get(&server, "/v1/overrides?colour=red").await;
    assert_eq!(status, 400);
    let (status, _) = get(&server, "/v1/overrides?cursor=zz").await;
    assert_eq!(status, 400);
    // A cursor that hex-decodes but names no (policy, key), such as one
    // cut short, is refused too: answering the first page again would send
    // a client paging through the list round forever.
    put(&server, path, r#"{"limit": 5}"#).await;
    let next = hex(b"\x00\x04tinyk");
    for cursor in [String::new(), "00".to_owned(), next[..8].to_owned()] {
        let (status, problem) = get(&server, &format!("/v1/overrides?cursor={cursor}")).await;
        assert_eq!(status, 400, "cursor {cursor:?}: {problem}");
        assert_eq!(problem["detail"], "invalid cursor", "{problem}");
    }
    let (status, page) = get(&server, &format!("/v1/overrides?cursor={next}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["overrides"], serde_json::json!([]), "after the last");
}

/// `bytes` as a listing's cursor: lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn overrides_block_expire_and_list_in_pages_on_the_memory_store() {
    let server = TestServer::start_text(Backend::memory(), &config("")).await;
    // A bucket's numbers with its own burst; keys of any bytes, percent-encoded.
    let (status, body) = put(
        &server,
        "/v1/overrides/bucket/caf%C3%A9%2Fx",
        r#"{"limit": 100, "period": "1m", "burst": 200, "expires_in": "1h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "café/x");
    assert_eq!(body["key_path"], "caf%C3%A9%2Fx");
    assert_eq!(body["burst"], 200);
    assert_eq!(body["period_ms"], 60_000);
    let expires = body["expires_in_ms"].as_u64().unwrap();
    assert!((3_599_000..=3_600_000).contains(&expires), "{body}");
    // Blocked: denied, charging nothing; it ends by itself.
    let (status, _) = put(
        &server,
        "/v1/overrides/tiny/bot",
        r#"{"blocked": true, "expires_in": "200ms"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let body = check(&server, "bot").await;
    assert_eq!(
        (body["allowed"].clone(), body["override"].clone()),
        (false.into(), true.into())
    );
    assert!(body["retry_after_ms"].as_u64().unwrap() <= 200, "{body}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let body = check(&server, "bot").await;
    assert_eq!(
        body["allowed"], true,
        "the block ended and charged nothing: {body}"
    );
    assert_eq!(body["remaining"], 1);
    // Unlimited: allowed, nothing charged.
    put(&server, "/v1/overrides/tiny/free", r#"{"unlimited": true}"#).await;
    for _ in 0..5 {
        assert_eq!(check(&server, "free").await["allowed"], true);
    }
    // Counted under the policy, in series of their own.
    let (_, metrics) = server.get_text("/metrics").await;
    for (series, n) in [
        (
            r#"tollgate_decisions_total{policy="tiny",outcome="allowed",override="true"}"#,
            5,
        ),
        (
            r#"tollgate_decisions_total{policy="tiny",outcome="denied",override="true"}"#,
            1,
        ),
        (
            r#"tollgate_decisions_total{policy="tiny",outcome="allowed"}"#,
            1,
        ),
    ] {
        let line = format!("{series} {n}\n");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"policy="bucket",outcome="allowed",override"#),
        "no series before an override decides"
    );
    // Pages: 25 more, listed 10 at a time, each once, in order.
    for i in 0..25 {
        put(
            &server,
            &format!("/v1/overrides/tiny/k{i:02}"),
            r#"{"limit": 3}"#,
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/overrides?policy=tiny&limit=10&cursor={c}"),
            None => "/v1/overrides?policy=tiny&limit=10".to_owned(),
        };
        let (status, page) = get(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["overrides"].as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(items.iter().map(|o| o["key"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    expected.push("free".to_owned());
    expected.sort();
    assert_eq!(seen, expected, "bot's ended block is not listed");
}

/// The `overrides:` section: checked like the rest of the file, reloaded
/// with it, and beneath the API's overrides of the same keys.
#[tokio::test]
async fn declared_overrides_reload_with_the_file_and_yield_to_the_api() {
    use tollgate_server::{App, ConfigSource, ServerStore};
    let with = |entries: &str| format!("{}overrides:\n{entries}", config(""));
    for (entries, error) in [
        (
            "  - policy: nope\n    key: k\n    limit: 5\n",
            "no such policy",
        ),
        ("  - policy: tiny\n    key: k\n", "an override is one of"),
        (
            "  - policy: tiny\n    key: k\n    limit: 5\n    blocked: true\n",
            "an override is one of",
        ),
        (
            "  - policy: tiny\n    key: k\n    burst: 5\n    limit: 5\n",
            "burst",
        ),
        (
            "  - policy: tiny\n    key: k\n    limit: 5\n  - policy: tiny\n    key: k\n    blocked: true\n",
            "declared twice",
        ),
        (
            "  - policy: tiny\n    key: k\n    limit: 5\n    colour: red\n",
            "colour",
        ),
        (
            &format!(
                "  - policy: tiny\n    key: {}\n    limit: 5\n",
                "x".repeat(65)
            ),
            "max_key_bytes",
        ),
    ] {
        let text = with(entries);
        let message = tollgate_server::Config::parse(&text, "t.yaml")
            .err()
            .unwrap_or_else(|| panic!("accepted: {entries}"))
            .to_string();
        assert!(message.contains(error), "{entries}: {message}");
    }

    let dir = tollgate_testkit::files::temp_dir("overrides");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, with("  - policy: tiny\n    key: gold\n    limit: 4\n  - policy: tiny\n    key: banned\n    blocked: true\n")).unwrap();
    let source = ConfigSource {
        config: Some(file.clone()),
        envoy: None,
        ..ConfigSource::default()
    };
    let app = App::new(
        source.clone(),
        source.load().unwrap(),
        ServerStore::Memory(tollgate::MemoryStore::new()),
    );
    let admitted = |key: &'static str, n: usize| {
        let app = &app;
        async move {
            let mut ok = 0;
            for _ in 0..n {
                let loaded = app.current();
                let key = tollgate::keyspace::KeySpace::HttpJson.key(key.as_bytes());
                let d = app
                    .decide(&loaded, &["tiny"], &key, 1, tollgate::Mode::Consume, false)
                    .await
                    .unwrap();
                ok += usize::from(d.allowed);
            }
            ok
        }
    };
    assert_eq!(admitted("gold", 10).await, 4);
    assert_eq!(admitted("banned", 3).await, 0);
    // An override set at run time wins over the declared one.
    let table = &app.overrides().table;
    let key = tollgate::keyspace::KeySpace::HttpJson.key(b"banned");
    table
        .set(
            "tiny",
            &key,
            tollgate::overrides::Override {
                limit: tollgate::overrides::OverrideLimit::Unlimited,
                expires_at_us: None,
            },
        )
        .unwrap();
    assert_eq!(admitted("banned", 3).await, 3);
    // A reload without them drops the declared ones, never the API's.
    std::fs::write(&file, config("")).unwrap();
    app.reload().unwrap();
    assert!(
        table
            .get(
                "tiny",
                &tollgate::keyspace::KeySpace::HttpJson.key(b"gold"),
                tollgate::overrides::Source::File
            )
            .is_none()
    );
    assert_eq!(admitted("gold", 1).await, 0, "4 spent, 2 allowed now");
    assert_eq!(admitted("banned", 3).await, 3, "the API's override stays");
}

/// The longest heads the admin API asks for fit the HTTP port's head cap
/// (`server::MAX_REQUEST_HEAD_BYTES`): an override of the longest key,
/// every byte percent-encoded in its path, and the listing's cursor past
/// such a key.
#[tokio::test]
async fn the_longest_keys_fit_in_a_request_head() {
    let text = "server:\n  admin_token: s3cret\n  max_key_bytes: 8192\n  max_body_bytes: 65536\npolicies:\n  - name: tiny\n    algorithm: fixed_window\n    limit: 2\n    period: 1h\n";
    let server = TestServer::start_text(Backend::memory(), text).await;
    let longest = tollgate_server::app::MAX_LIMITER_KEY - "http:".len();
    for byte in ["%FE", "%FF"] {
        let path = format!("/v1/overrides/tiny/{}", byte.repeat(longest));
        let (status, body) = put(&server, &path, r#"{"limit": 5}"#).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, page) = get(&server, "/v1/overrides?limit=1").await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    assert!(cursor.len() > 16_000, "{}", cursor.len());
    let (status, page) = get(&server, &format!("/v1/overrides?limit=1&cursor={cursor}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["overrides"].as_array().unwrap().len(), 1);
}

/// `server.max_key_bytes` above what the limiter takes (its 8 KiB, less
/// the `http:` tag) is held to that: a key one byte longer is refused
/// with its own length and the bound that applies, where a check once
/// answered "key of 8193 bytes is longer than the limit of 8192" for a
/// key of 8188, and an override of it was set though no check of the key
/// could ever reach it.
#[tokio::test]
async fn a_key_past_the_limiters_bound_is_refused_by_its_own_length() {
    let text = "server:\n  admin_token: s3cret\n  max_key_bytes: 8192\n  max_body_bytes: 65536\npolicies:\n  - name: tiny\n    algorithm: fixed_window\n    limit: 2\n    period: 1h\n";
    let server = TestServer::start_text(Backend::memory(), text).await;
    let bound = tollgate_server::app::MAX_LIMITER_KEY - "http:".len();
    let detail = format!(
        "`key` is {} bytes long, above the maximum of {bound}",
        bound + 1
    );
    let key = "k".repeat(bound + 1);
    for path in ["/v1/check", "/v1/peek"] {
        let body = serde_json::json!({"policy": "tiny", "key": key}).to_string();
        let (status, problem) = server.post_json(path, &body).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert_eq!(problem["detail"], detail.as_str(), "{path}");
    }
    let (status, problem) = put(
        &server,
        &format!("/v1/overrides/tiny/{key}"),
        r#"{"blocked": true}"#,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["detail"], detail.as_str());
    check(&server, &"k".repeat(bound)).await;
}

/// A declared override is held to the same bound as one set through the
/// API: with `max_key_bytes` above what the limiter takes, an override of
/// a longer key was loaded though no check of it could reach it, and one
/// long enough gave the listing a `next_cursor` that the listing itself
/// refused (`400 invalid cursor`), so no page past it could be read.
#[tokio::test]
async fn a_declared_override_past_the_limiters_bound_is_refused() {
    let bound = tollgate_server::app::MAX_LIMITER_KEY - "http:".len();
    let text = |key_len: usize| {
        format!(
            "server:\n  max_key_bytes: 16384\n  max_body_bytes: 65536\npolicies:\n  - name: tiny\n    algorithm: fixed_window\n    limit: 2\n    period: 1h\noverrides:\n  - policy: tiny\n    key: {}\n    limit: 5\n",
            "k".repeat(key_len)
        )
    };
    assert!(tollgate_server::Config::parse(&text(bound), "t.yaml").is_ok());
    for len in [bound + 1, 12_000] {
        let message = tollgate_server::Config::parse(&text(len), "t.yaml")
            .err()
            .unwrap_or_else(|| panic!("a key of {len} bytes accepted"))
            .to_string();
        assert!(message.contains(&format!("{bound}")), "{len}: {message}");
    }
}
