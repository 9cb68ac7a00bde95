//! `GET /v1/stats` end to end over real sockets: its shape, the series and
//! the keys denied most after real traffic, `server.dashboard` (keys shown
//! or hashed, the dashboard turned off), the access rule it shares with
//! `/metrics`, the configuration's history, and its bounds under hostile
//! input.

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;

use common::{Backend, TestServer};
use serde_json::Value;
use tollgate_testkit::files::temp_dir;

const POLICIES: &str = "policies:
  - name: tiny
    algorithm: fixed_window
    limit: 2
    period: 1h
  - name: open
    algorithm: token_bucket
    limit: 1000
    period: 1s
    burst: 2000
  - name: leased
    algorithm: fixed_window
    limit: 100000
    period: 1h
    lease: { max: 10, ttl: 1s }
";

/// Takes a sample now (the background sampler takes one a second too;
/// each counts what happened since the one before, so sums are exact
/// whoever took them), then reads `/v1/stats`.
async fn stats(server: &TestServer) -> Value {
    server.app.dashboard().tick(&server.app);
    let reply = server.get("/v1/stats").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        reply.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    reply.json()
}

fn policy<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no policy {name} in {stats}"))
}

fn sum(series: &Value) -> u64 {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

async fn check(server: &TestServer, policy: &str, key: &str) -> bool {
    let body = serde_json::json!({"policy": policy, "key": key}).to_string();
    let (status, body) = server.post_json("/v1/check", &body).await;
    assert_eq!(status, 200, "{body}");
    body["allowed"].as_bool().unwrap()
}

#[tokio::test]
async fn stats_show_policies_series_top_keys_store_and_config() {
    let server = TestServer::start_text(Backend::Memory, POLICIES).await;
    let first = stats(&server).await;
    // The documented shape.
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["interval_ms"], 1000);
    let now = first["now_ms"].as_u64().unwrap();
    let started = first["started_ms"].as_u64().unwrap();
    assert!(started <= now && now - started < 600_000, "{first}");
    let names: Vec<&str> = first["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["leased", "open", "tiny"]);
    let tiny = policy(&first, "tiny");
    assert_eq!(tiny["algorithm"], "fixed_window");
    assert_eq!(tiny["limit"], 2);
    assert_eq!(tiny["period_ms"], 3_600_000);
    assert_eq!(tiny["burst"], Value::Null);
    assert_eq!(tiny["lease"], Value::Null);
    assert_eq!(tiny["shadow"], false);
    assert_eq!(policy(&first, "open")["burst"], 2000);
    assert_eq!(
        policy(&first, "leased")["lease"],
        serde_json::json!({"max": 10, "ttl_ms": 1000})
    );
    assert_eq!(first["policies_omitted"], 0);
    assert_eq!(first["store"]["kind"], "memory");
    assert_eq!(first["store"]["reachable"], true);
    assert_eq!(first["store"]["error"], Value::Null);
    assert_eq!(first["store"]["breaker"], "closed");
    assert_eq!(first["store"]["leases"], Value::Null);
    assert_eq!(first["per_second_store"], Value::Null);
    assert_eq!(first["config"]["source"], "built-in demo");
    assert_eq!(first["config"]["reloads"], 0);
    assert_eq!(first["config"]["last_error"], Value::Null);

    // Traffic: tiny allows 2 per key, then denies; "attacker" is denied
    // most, then "noisy"; "open" allows everything; "leased" leases.
    let mut denied = 0;
    for (key, tries) in [("attacker", 40), ("noisy", 12), ("quiet", 3)] {
        for _ in 0..tries {
            if !check(&server, "tiny", key).await {
                denied += 1;
            }
        }
    }
    assert_eq!(denied, 38 + 10 + 1);
    for i in 0..20 {
        assert!(check(&server, "open", &format!("user-{i}")).await);
        assert!(check(&server, "leased", "hot").await);
    }

    let after = stats(&server).await;
    let tiny = policy(&after, "tiny");
    assert_eq!(sum(&tiny["series"]["denied"]), denied);
    assert_eq!(sum(&tiny["series"]["allowed"]), 6);
    assert_eq!(sum(&policy(&after, "open")["series"]["allowed"]), 20);
    assert_eq!(sum(&tiny["series"]["degraded"]), 0);
    assert_eq!(sum(&tiny["series"]["shadow"]), 0);
    // Every series has the same length, at most five minutes of seconds.
    let len = tiny["series"]["allowed"].as_array().unwrap().len();
    assert!((2..=300).contains(&len), "{len}");
    for p in after["policies"].as_array().unwrap() {
        for outcome in ["allowed", "denied", "degraded", "shadow"] {
            assert_eq!(p["series"][outcome].as_array().unwrap().len(), len, "{p}");
        }
    }
    // The keys denied most, hashed (16 hex digits), largest first; exact
    // here, where fewer keys than slots were denied.
    let top = tiny["top_denied"].as_array().unwrap();
    assert_eq!(top.len(), 3, "{tiny}");
    assert_eq!(
        top.iter()
            .map(|k| k["denied"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [38, 10, 1]
    );
    for key in top {
        assert_eq!(key["hashed"], true);
        assert_eq!(key["error"], 0);
        let hash = key["key"].as_str().unwrap();
        assert!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hash}"
        );
        assert!(!hash.contains("attacker"));
    }
    assert!(
        policy(&after, "open")["top_denied"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Hashes are stable while the process runs.
    assert!(check(&server, "tiny", "attacker").await.eq(&false));
    let again = stats(&server).await;
    assert_eq!(
        policy(&again, "tiny")["top_denied"][0]["key"],
        top[0]["key"]
    );
    assert_eq!(policy(&again, "tiny")["top_denied"][0]["denied"], 39);

    // The store: the deny cache answered the repeated denials; latency
    // percentiles of the last minute; leases.
    let store = &again["store"];
    let hits = store["deny_cache"]["hits"].as_u64().unwrap();
    let lookups = store["deny_cache"]["lookups"].as_u64().unwrap();
    assert!(hits > 0 && lookups >= hits, "{store}");
    let ratio = store["deny_cache"]["hit_ratio"].as_f64().unwrap();
    assert!(
        (ratio - hits as f64 / lookups as f64).abs() < 1e-9,
        "{store}"
    );
    let p50 = store["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = store["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= 1000.0, "{store}");
    assert!(store["leases"]["taken"].as_u64().unwrap() > 0, "{store}");
}

#[tokio::test]
async fn envoy_limits_are_policies_under_their_metric_names() {
    let server = TestServer::start(Backend::Memory).await;
    // `user/tier` allows 2 an hour per user.
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"user","value":"u1"},{"key":"tier","value":"gold"}]}]}"#;
    for _ in 0..2 {
        assert_eq!(server.post_json("/json", body).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(server.post_json("/json", body).await.0, 429);
    }
    let stats = stats(&server).await;
    let metrics = server.get("/metrics").await.body;
    let per_user = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy/edge/user/tier")
        .unwrap_or_else(|| panic!("no user/tier limit in {stats}"));
    let name = per_user["name"].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "tollgate_decisions_total{{policy=\"{name}\",outcome=\"denied\"}} 3"
        )),
        "{name} not counted under that name in\n{metrics}"
    );
    assert_eq!(sum(&per_user["series"]["denied"]), 3);
    assert_eq!(sum(&per_user["series"]["allowed"]), 2);
    assert_eq!(per_user["top_denied"][0]["denied"], 3);
    // The descriptor in shadow_mode is marked.
    let shadow = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap().ends_with("/tier=shadow"))
        .unwrap_or_else(|| panic!("no shadow limit in {stats}"));
    assert_eq!(shadow["shadow"], true);
    assert_eq!(per_user["shadow"], false);
}

#[tokio::test]
async fn show_keys_shows_the_first_bytes_escaped() {
    let config = format!("server:\n  dashboard:\n    show_keys: true\n{POLICIES}");
    let server = TestServer::start_text(Backend::Memory, &config).await;
    let hostile = "evil\"</script><b>\n\u{7}é";
    let long = "x".repeat(500);
    for key in [
        hostile,
        hostile,
        hostile,
        long.as_str(),
        long.as_str(),
        long.as_str(),
    ] {
        check(&server, "tiny", key).await;
    }
    let reply = server.get("/v1/stats").await;
    // The body is JSON: the key's quote and control characters escaped.
    assert!(!reply.body.contains('\u{7}'));
    let stats = reply.json();
    let top = policy(&stats, "tiny")["top_denied"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(top.len(), 2, "{stats}");
    let shown: Vec<&str> = top.iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert!(
        shown.contains(&format!("http:{hostile}").as_str()),
        "{shown:?}"
    );
    let long_shown = top.iter().find(|k| k["truncated"] == true).unwrap();
    assert_eq!(
        long_shown["key"].as_str().unwrap().len(),
        tollgate_server::stats::KEY_BYTES
    );
    assert_eq!(long_shown["hashed"], false);
    assert!(top.iter().all(|k| k["hashed"] == false));
}

#[tokio::test]
async fn a_disabled_dashboard_answers_404_and_tracks_nothing() {
    let config = format!("server:\n  dashboard:\n    enabled: false\n{POLICIES}");
    let server = TestServer::start_text(Backend::Memory, &config).await;
    for _ in 0..5 {
        check(&server, "tiny", "k").await;
    }
    server.app.dashboard().tick(&server.app);
    let reply = server.get("/v1/stats").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("server.dashboard.enabled")
    );
    assert!(server.app.dashboard().hitters().is_empty());
    // /metrics is not the dashboard's.
    assert_eq!(server.get("/metrics").await.status, 200);
}

/// `/metrics` (on the HTTP port and on `server.metrics`' listener) and
/// `/v1/stats` share one rule: open by default (an admin token alone
/// changes nothing), the admin token with `metrics_auth`.
#[tokio::test]
async fn stats_and_metrics_follow_one_access_rule() {
    for (auth, needs_token) in [("", false), ("  metrics_auth: true\n", true)] {
        let port = tollgate_testkit::ports::free_port();
        let config = format!(
            "server:\n  admin_token: s3cret\n  metrics: {{ addr: \"127.0.0.1:{port}\", path: /prom }}\n{auth}{POLICIES}"
        );
        let server = TestServer::start_text(Backend::Memory, &config).await;
        let listener = tollgate_testkit::http::Client::new(([127, 0, 0, 1], port).into());
        for (client, path) in [
            (&server.client, "/metrics"),
            (&server.client, "/v1/stats"),
            (&listener, "/prom"),
        ] {
            let open = client.get(path).await;
            let wrong = client
                .get_with(path, &[("authorization", "Bearer nope")])
                .await;
            let right = client
                .get_with(path, &[("authorization", "bearer s3cret")])
                .await;
            assert_eq!(right.status, 200, "{path}: {}", right.body);
            if needs_token {
                for refused in [&open, &wrong] {
                    assert_eq!(refused.status, 401, "{path}: {}", refused.body);
                    assert_eq!(
                        refused.header("www-authenticate").as_deref(),
                        Some("Bearer")
                    );
                }
            } else {
                assert_eq!((open.status, wrong.status), (200, 200), "{path}");
            }
        }
    }
}

#[tokio::test]
async fn reloads_and_their_errors_are_shown() {
    let dir = temp_dir("dashboard-reload");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let server = TestServer::start_file(Backend::Memory, &file).await;
    let before = stats(&server).await;
    assert_eq!(before["config"]["source"], file.display().to_string());
    let loaded = before["config"]["loaded_ms"].as_u64().unwrap();

    std::fs::write(
        &file,
        "policies:\n  - name: x\n    limit: 0\n    period: 1s\n",
    )
    .unwrap();
    assert!(server.app.reload().is_err());
    let failed = stats(&server).await;
    assert_eq!(failed["config"]["reload_failures"], 1);
    let error = failed["config"]["last_error"].as_str().unwrap();
    assert!(error.contains("tollgate.yaml:2:"), "{error}");
    assert!(failed["config"]["last_error_ms"].as_u64().unwrap() >= loaded);
    assert_eq!(failed["config"]["loaded_ms"].as_u64().unwrap(), loaded);

    // A policy removed by a reload leaves the dashboard; one added joins.
    std::fs::write(
        &file,
        "policies:\n  - name: fresh\n    algorithm: gcra\n    limit: 5\n    period: 1s\n",
    )
    .unwrap();
    server.app.reload().unwrap();
    let reloaded = stats(&server).await;
    assert_eq!(reloaded["config"]["reloads"], 1);
    let names: Vec<&str> = reloaded["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fresh"]);
    assert!(reloaded["config"]["loaded_ms"].as_u64().unwrap() >= loaded);
    // The error stays on record, with its time.
    assert!(reloaded["config"]["last_error"].is_string());
}

/// Whatever clients send, the document stays bounded: the number of
/// policies (by the configuration, and at most `MAX_POLICIES`), the keys
/// per policy, and the bytes of each key.
#[tokio::test]
async fn the_document_is_bounded() {
    let max = tollgate_server::stats::MAX_POLICIES;
    let mut config = String::from("server:\n  max_key_bytes: 1024\npolicies:\n");
    for i in 0..max + 5 {
        let _ = write!(
            config,
            "  - name: p{i:05}\n    algorithm: fixed_window\n    limit: 1\n    period: 1h\n"
        );
    }
    let server = TestServer::start_text(Backend::Memory, &config).await;
    // 600 distinct keys, each denied once, and one heavy key denied 200
    // times among them: it must top the list, and the list stays short.
    for i in 0..600 {
        check(&server, "p00000", &format!("{i}-{}", "k".repeat(900))).await;
        check(&server, "p00000", &format!("{i}-{}", "k".repeat(900))).await;
        if i % 3 == 0 {
            check(&server, "p00000", "heavy").await;
        }
    }
    let reply = server.get("/v1/stats").await;
    let stats = reply.json();
    let policies = stats["policies"].as_array().unwrap();
    assert_eq!(policies.len(), max);
    assert_eq!(stats["policies_omitted"], 5);
    let top = policies[0]["top_denied"].as_array().unwrap();
    assert_eq!(top.len(), tollgate_server::stats::TOP_DENIED);
    assert_eq!(
        top[0]["denied"].as_u64().unwrap() - top[0]["error"].as_u64().unwrap(),
        199
    );
    for key in top {
        assert!(key["key"].as_str().unwrap().len() <= tollgate_server::stats::KEY_BYTES);
    }
    // 1000 policies of a few hundred samples each: bounded, well under
    // what 1000 policies x 4 series x 300 samples could take.
    assert!(reply.body.len() < 4 * 1024 * 1024, "{}", reply.body.len());
}

/// A reload turns the dashboard off (404, memory dropped) and on again;
/// back on, its series count from then, not the decisions made meanwhile.
#[tokio::test]
async fn a_reload_turns_the_dashboard_off_and_on() {
    let dir = temp_dir("dashboard-toggle");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let server = TestServer::start_file(Backend::Memory, &file).await;
    for _ in 0..5 {
        check(&server, "tiny", "k").await;
    }
    assert_eq!(
        sum(&policy(&stats(&server).await, "tiny")["series"]["denied"]),
        3
    );

    std::fs::write(
        &file,
        format!("server:\n  dashboard:\n    enabled: false\n{POLICIES}"),
    )
    .unwrap();
    server.app.reload().unwrap();
    for _ in 0..4 {
        check(&server, "tiny", "k").await;
    }
    server.app.dashboard().tick(&server.app);
    assert_eq!(server.get("/v1/stats").await.status, 404);
    assert!(server.app.dashboard().hitters().is_empty());

    std::fs::write(&file, POLICIES).unwrap();
    server.app.reload().unwrap();
    // The series start at this sample (or the sampler's, if it came
    // first): the decision below falls after either.
    server.app.dashboard().tick(&server.app);
    check(&server, "tiny", "k").await;
    let back = stats(&server).await;
    let tiny = policy(&back, "tiny");
    assert_eq!(sum(&tiny["series"]["denied"]), 1, "{tiny}");
    assert_eq!(tiny["top_denied"][0]["denied"], 1, "{tiny}");
}

/// On a real Redis: the store's kind, and when Redis goes away, not
/// reachable with the reason, the breaker's state, and the decisions that
/// `on_failure` made counted as degraded.
#[tokio::test]
async fn a_redis_store_that_goes_away_is_shown_unreachable_with_its_cause() {
    let backend = Backend::redis();
    let Backend::Redis(redis) = &backend else {
        unreachable!()
    };
    let text = format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 50ms\n{POLICIES}",
        redis.url()
    );
    let mut server = TestServer::start_text(backend, &text).await;
    assert!(check(&server, "tiny", "k").await);
    let healthy = stats(&server).await;
    assert_eq!(healthy["store"]["kind"], "redis");
    assert_eq!(healthy["store"]["reachable"], true, "{}", healthy["store"]);
    assert_eq!(healthy["store"]["error"], Value::Null);

    let Backend::Redis(redis) = &mut server.backend else {
        unreachable!()
    };
    redis.kill();
    for _ in 0..10 {
        // on_failure: open (the default): allowed, degraded.
        assert!(check(&server, "tiny", "k").await);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let down = loop {
        let stats = stats(&server).await;
        if stats["store"]["reachable"] == false {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never shown unreachable: {}",
            stats["store"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let store = &down["store"];
    assert!(
        store["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{store}"
    );
    assert_ne!(store["breaker"], "closed", "{store}");
    assert!(
        sum(&policy(&down, "tiny")["series"]["degraded"]) >= 5,
        "{down}"
    );
}
