//! Reservations over the HTTP API (`/v1/reserve`, `/v1/settle`,
//! `/v1/cancel`), end to end over real sockets: every answer and every
//! error, replays, deadlines, forged ids, metrics and reloads on the memory
//! store; a settle on another server than the one that reserved, on one
//! Redis and on a 3-master Cluster; and a budget that holds under
//! concurrency (per window, at most its limit plus its `max_overdraft`) on
//! all three.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Backend, TestServer};
use serde_json::{Value, json};
use tollgate::keyspace::KeySpace;
use tollgate::reservation::MAX_AMOUNT;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

/// The policies of these tests; `store` is the `store:` section.
fn config(store: &str) -> String {
    format!(
        "server:
  max_body_bytes: 4096
  max_key_bytes: 64
{store}policies:
  - name: tokens
    algorithm: fixed_window
    limit: 1000
    period: 1h
    max_overdraft: 100
  - name: requests
    algorithm: fixed_window
    limit: 10
    period: 1h
  - name: log
    algorithm: sliding_log
    limit: 10
    period: 1m
  - name: leaky
    algorithm: leaky_bucket
    limit: 10
    period: 1m
"
    )
}

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

/// `remaining` of `policy` for `key`, by a peek.
async fn remaining(server: &TestServer, policy: &str, key: &str) -> u64 {
    let (status, body) = server
        .post_json(
            "/v1/peek",
            &json!({"policy": policy, "key": key}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["remaining"].as_u64().unwrap()
}

/// Reserves `estimate` of `policy` for `key`: the answer's body.
async fn reserve(server: &TestServer, policy: &str, key: &str, estimate: u64) -> Value {
    let (status, body) = server
        .post_json(
            "/v1/reserve",
            &json!({"policy": policy, "key": key, "estimate": estimate}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The reservation id of an allowed reservation's answer.
fn id(body: &Value) -> String {
    body["reservation"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation in {body}"))
        .to_owned()
}

/// Settles `id` at `actual`: status and body.
async fn settle(server: &TestServer, id: &str, actual: u64) -> (u16, Value) {
    server
        .post_json(
            "/v1/settle",
            &json!({"reservation": id, "actual": actual}).to_string(),
        )
        .await
}

/// A reservation id's text form, as the library writes it (version 1,
/// nonce, policy names, key), for ids no server made.
fn forged_id(nonce: u128, policies: &[&str], key: &[u8]) -> String {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&nonce.to_le_bytes());
    bytes.push(u8::try_from(policies.len()).unwrap());
    for name in policies {
        bytes.push(u8::try_from(name.len()).unwrap());
        bytes.extend_from_slice(name.as_bytes());
    }
    bytes.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Asserts that `(status, body)` is a problem+json of `status` whose
/// detail contains `detail`.
fn assert_problem(answer: &(u16, Value), status: u16, detail: &str, what: &str) {
    assert_eq!(answer.0, status, "{what}: {}", answer.1);
    assert_eq!(answer.1["status"], status, "{what}: {}", answer.1);
    let text = answer.1["detail"].as_str().unwrap_or_default();
    assert!(text.contains(detail), "{what}: `{detail}` not in {text}");
}

#[tokio::test]
async fn every_endpoint_and_every_error_on_the_memory_store() {
    let server = TestServer::start_text(Backend::memory(), &config("")).await;

    // Reserve: /v1/check's answer and headers, plus the reservation.
    let response = server
        .post(
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "alice", "estimate": 300}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""tokens";q=1000;w=3600"#
    );
    assert_eq!(
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1),
        Some("r=700")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["allowed"], true, "{body}");
    assert_eq!(
        (body["limit"].as_u64(), body["remaining"].as_u64()),
        (Some(1000), Some(700))
    );
    assert_eq!(body["retry_after_ms"], Value::Null);
    let alice = id(&body);
    assert!(
        alice
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{alice}"
    );

    // Settle below the estimate: the rest goes back.
    let (status, body) = settle(&server, &alice, 120).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"estimate": 300, "actual": 120, "replayed": false, "policies": [
            {"policy": "tokens", "returned": 180, "charged": 0, "unpaid": 0,
             "limit": 1000, "remaining": 880, "reset_after_ms": body["policies"][0]["reset_after_ms"],
             "retry_after_ms": null}
        ]})
    );
    // A retried settle answers what the first did and changes nothing.
    let (status, replay) = settle(&server, &alice, 120).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["policies"][0]["returned"], 180);
    assert_eq!(remaining(&server, "tokens", "alice").await, 880);
    // A replay with another actual: 409, saying the first; nothing changes.
    let answer = settle(&server, &alice, 500).await;
    assert_problem(
        &answer,
        409,
        "already settled at an actual of 120",
        "other actual",
    );
    let answer = server
        .post_json("/v1/cancel", &json!({"reservation": alice}).to_string())
        .await;
    assert_problem(
        &answer,
        409,
        "already settled at an actual of 120",
        "cancel after settle",
    );
    assert_eq!(remaining(&server, "tokens", "alice").await, 880);

    // Settle above the estimate: charged up to what remains plus
    // max_overdraft (100), the rest unpaid; the next request waits.
    let bob = id(&reserve(&server, "tokens", "bob", 200).await);
    let (status, body) = settle(&server, &bob, 1_200).await;
    assert_eq!(status, 200, "{body}");
    let settled = &body["policies"][0];
    assert_eq!(
        (
            settled["returned"].as_u64(),
            settled["charged"].as_u64(),
            settled["unpaid"].as_u64()
        ),
        (Some(0), Some(900), Some(100)),
        "{body}"
    );
    assert_eq!(settled["remaining"], 0);
    assert!(settled["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
    // Overdrawn: a reservation is denied, with nothing to settle.
    let denied = reserve(&server, "tokens", "bob", 1).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(denied["reservation"], Value::Null, "{denied}");
    assert!(denied["retry_after_ms"].as_u64().unwrap() > 0, "{denied}");

    // Cancel gives the whole estimate back and deletes the reservation: a
    // retried cancel finds nothing (404) and gives nothing back twice.
    let carol = id(&reserve(&server, "tokens", "carol", 50).await);
    assert_eq!(remaining(&server, "tokens", "carol").await, 950);
    let (status, body) = server
        .post_json("/v1/cancel", &json!({"reservation": carol}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["actual"].as_u64(), body["replayed"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(body["policies"][0]["returned"], 50, "{body}");
    assert_eq!(body["policies"][0]["remaining"], 1000, "{body}");
    let (status, body) = server
        .post_json("/v1/cancel", &json!({"reservation": carol}).to_string())
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(remaining(&server, "tokens", "carol").await, 1000);
    // A settle after a cancel finds nothing either.
    assert_problem(
        &settle(&server, &carol, 10).await,
        404,
        "unknown or expired reservation",
        "settle after cancel",
    );
    assert_eq!(remaining(&server, "tokens", "carol").await, 1000);

    // Several policies: the list answer of /v1/check, all or nothing.
    let (status, body) = server
        .post_json(
            "/v1/reserve",
            r#"{"policies": ["tokens", "requests"], "key": "dave", "estimate": 6, "deadline_ms": 60000}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["allowed"], true, "{body}");
    assert_eq!(body["policies"][0]["policy"], "tokens");
    assert_eq!(body["policies"][1]["remaining"], 4, "{body}");
    let dave = id(&body);
    let (status, body) = settle(&server, &dave, 2).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tokens", "requests"]);
    assert_eq!(body["policies"][1]["returned"], 4, "{body}");
    assert_eq!(body["policies"][1]["remaining"], 8, "{body}");
    // More than one policy allows: denied, nothing charged anywhere.
    let (_, body) = server
        .post_json(
            "/v1/reserve",
            r#"{"policies": ["tokens", "requests"], "key": "dave", "estimate": 9}"#,
        )
        .await;
    assert_eq!(
        (body["allowed"].as_bool(), &body["reservation"]),
        (Some(false), &Value::Null),
        "{body}"
    );
    assert_eq!(remaining(&server, "tokens", "dave").await, 998);

    // A deadline passed: the reservation is gone, its estimate spent.
    let (status, body) = server
        .post_json(
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "erin", "estimate": 40, "deadline_ms": 1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let erin = id(&body);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_problem(
        &settle(&server, &erin, 0).await,
        404,
        "unknown or expired reservation",
        "expired",
    );
    assert_eq!(remaining(&server, "tokens", "erin").await, 960);

    // Forged and foreign ids touch nothing: 404.
    let before = remaining(&server, "tokens", "alice").await;
    let alice_key = KeySpace::HttpJson.key(b"alice");
    for (forged, detail) in [
        (
            forged_id(7, &["tokens"], &alice_key),
            "unknown or expired reservation",
        ),
        (
            forged_id(7, &["requests"], &alice_key),
            "unknown or expired reservation",
        ),
        (
            forged_id(7, &["tokens"], &KeySpace::EnvoyGrpc.key(b"alice")),
            "unknown or expired reservation",
        ),
        (
            forged_id(7, &["tokens"], b"alice"),
            "unknown or expired reservation",
        ),
        (
            forged_id(7, &["nope"], &alice_key),
            "names policy `nope`, not configured",
        ),
        (
            forged_id(7, &["envoy/edge/path"], &alice_key),
            "not configured",
        ),
    ] {
        for path in ["/v1/settle", "/v1/cancel"] {
            let body = if path == "/v1/settle" {
                json!({"reservation": forged, "actual": 1_000_000})
            } else {
                json!({"reservation": forged})
            };
            let answer = server.post_json(path, &body.to_string()).await;
            assert_problem(&answer, 404, detail, &forged);
        }
    }
    // alice's own reservation, under another key or another policy list.
    let tampered = {
        let bytes = URL_SAFE_NO_PAD.decode(&alice).unwrap();
        let mut bytes = bytes.clone();
        *bytes.last_mut().unwrap() ^= 1;
        URL_SAFE_NO_PAD.encode(bytes)
    };
    assert_problem(
        &settle(&server, &tampered, 0).await,
        404,
        "unknown or expired",
        "tampered key",
    );
    assert_eq!(remaining(&server, "tokens", "alice").await, before);

    // Every malformed request: 400 (413 past the body limit).
    let big_key = "k".repeat(65);
    let max = MAX_AMOUNT;
    for (path, body, status, detail) in [
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k"}"#.to_owned(),
            400,
            "missing field `estimate`",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 0}"#.to_owned(),
            400,
            "`estimate` must be at least 1",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": -5}"#.to_owned(),
            400,
            "`estimate` must be at least 1, not -5",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 1.5}"#.to_owned(),
            400,
            "whole number",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": "5"}"#.to_owned(),
            400,
            "invalid type",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": null}"#.to_owned(),
            400,
            "invalid type",
        ),
        (
            "/v1/reserve",
            format!(
                r#"{{"policy": "tokens", "key": "k", "estimate": {}}}"#,
                max + 1
            ),
            400,
            &format!("above the maximum of {max}"),
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 1e30}"#.to_owned(),
            400,
            "whole number",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 5, "cost": 1}"#.to_owned(),
            400,
            "unknown field `cost`",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 5, "deadline_ms": 0}"#.to_owned(),
            400,
            "`deadline_ms` must be at least 1",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 5, "deadline_ms": 3600001}"#.to_owned(),
            400,
            "`deadline_ms` 3600001 is above the maximum of 3600000",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "key": "k", "estimate": 5, "deadline_ms": -1}"#.to_owned(),
            400,
            "deadline_ms",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "tokens", "policies": ["tokens"], "key": "k", "estimate": 5}"#.to_owned(),
            400,
            "not both",
        ),
        (
            "/v1/reserve",
            r#"{"policies": ["tokens", "tokens"], "key": "k", "estimate": 5}"#.to_owned(),
            400,
            "named twice",
        ),
        (
            "/v1/reserve",
            format!(r#"{{"policy": "tokens", "key": "{big_key}", "estimate": 5}}"#),
            400,
            "above the maximum of 64",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "nope", "key": "k", "estimate": 5}"#.to_owned(),
            404,
            "unknown policy `nope`",
        ),
        (
            "/v1/reserve",
            r#"{"policy": "log", "key": "k", "estimate": 5}"#.to_owned(),
            400,
            "sliding_log cannot be reserved",
        ),
        (
            "/v1/reserve",
            r#"{"policies": ["tokens", "leaky"], "key": "k", "estimate": 5}"#.to_owned(),
            400,
            "leaky_bucket cannot be reserved",
        ),
        (
            "/v1/reserve",
            "not json".to_owned(),
            400,
            "invalid request body",
        ),
        (
            "/v1/settle",
            r#"{"reservation": "!!!", "actual": 1}"#.to_owned(),
            400,
            "not a reservation id",
        ),
        (
            "/v1/settle",
            r#"{"reservation": "", "actual": 1}"#.to_owned(),
            400,
            "not a reservation id",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{alice}"}}"#),
            400,
            "missing field `actual`",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{alice}", "actual": -1}}"#),
            400,
            "`actual` must be at least 0, not -1",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{alice}", "actual": 2.5}}"#),
            400,
            "whole number",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{alice}", "actual": {}}}"#, max + 1),
            400,
            "above the maximum",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{alice}", "actual": 1, "key": "x"}}"#),
            400,
            "unknown field `key`",
        ),
        (
            "/v1/settle",
            r#"{"actual": 1}"#.to_owned(),
            400,
            "missing field `reservation`",
        ),
        (
            "/v1/cancel",
            format!(r#"{{"reservation": "{alice}", "actual": 1}}"#),
            400,
            "unknown field `actual`",
        ),
        (
            "/v1/cancel",
            r#"{"reservation": 5}"#.to_owned(),
            400,
            "invalid type",
        ),
        (
            "/v1/settle",
            format!(r#"{{"reservation": "{}", "actual": 1}}"#, "A".repeat(5000)),
            413,
            "larger than 4096 bytes",
        ),
    ] {
        let answer = server.post_json(path, &body).await;
        assert_problem(&answer, status, detail, &format!("{path} {body}"));
    }
    // None of it touched alice's state, and her settled reservation still
    // replays as it was.
    assert_eq!(remaining(&server, "tokens", "alice").await, before);
    assert_eq!(settle(&server, &alice, 120).await.1["replayed"], true);

    // The policies: max_overdraft, null where reservations are refused.
    let (_, text) = server.get_text("/v1/policies").await;
    let policies: Value = serde_json::from_str(&text).unwrap();
    let overdraft: BTreeMap<&str, &Value> = policies["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["max_overdraft"]))
        .collect();
    assert_eq!(
        overdraft,
        BTreeMap::from([
            ("leaky", &Value::Null),
            ("log", &Value::Null),
            ("requests", &json!(10)),
            ("tokens", &json!(100)),
        ])
    );

    // Metrics: reservations by policy and outcome, settles by result, units
    // by policy.
    let (_, metrics) = server.get_text("/metrics").await;
    for (name, expected) in [
        (
            r#"tollgate_reservations_total{policy="tokens",outcome="allowed"}"#,
            5,
        ),
        (
            r#"tollgate_reservations_total{policy="tokens",outcome="denied"}"#,
            2,
        ),
        (
            r#"tollgate_reservations_total{policy="requests",outcome="allowed"}"#,
            1,
        ),
        (
            r#"tollgate_reservations_total{policy="requests",outcome="denied"}"#,
            1,
        ),
        // alice, bob, carol, dave.
        (r#"tollgate_settles_total{result="settled"}"#, 4),
        // alice (409s included: nothing changed).
        (r#"tollgate_settles_total{result="replayed"}"#, 4),
        // erin, the forged ids (6, settled and cancelled), the tampered
        // one, carol's cancel and settle after her cancel.
        (
            r#"tollgate_settles_total{result="unknown"}"#,
            1 + 12 + 1 + 2,
        ),
        (
            r#"tollgate_settle_units_total{policy="tokens",units="returned"}"#,
            180 + 50 + 4,
        ),
        (
            r#"tollgate_settle_units_total{policy="tokens",units="charged"}"#,
            900,
        ),
        (
            r#"tollgate_settle_units_total{policy="tokens",units="unpaid"}"#,
            100,
        ),
        (
            r#"tollgate_settle_units_total{policy="requests",units="returned"}"#,
            4,
        ),
        // alice, bob, dave (settled, kept for replays); carol's cancel
        // deleted hers, erin's expired record was dropped when the settle
        // found it.
        (r#"tollgate_memory_store_reservations{store="memory"}"#, 3),
        (
            r#"tollgate_memory_store_reservation_evictions_total{store="memory"}"#,
            0,
        ),
    ] {
        assert_eq!(series(&metrics, name), expected, "{name}");
    }
}

/// `store.max_reservations` bounds the memory store's open reservations:
/// past it the oldest deadline is settled at its estimate early (a settle
/// then finds nothing), and the metrics say so.
#[tokio::test]
async fn the_memory_store_keeps_at_most_max_reservations() {
    let server = TestServer::start_text(
        Backend::memory(),
        &config("store:\n  max_reservations: 10\n"),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(id(&reserve(&server, "tokens", &format!("k{i}"), 1).await));
    }
    let (_, metrics) = server.get_text("/metrics").await;
    let held = series(
        &metrics,
        r#"tollgate_memory_store_reservations{store="memory"}"#,
    );
    let evicted = series(
        &metrics,
        r#"tollgate_memory_store_reservation_evictions_total{store="memory"}"#,
    );
    assert_eq!((held, evicted), (10, 40), "{metrics}");
    let mut unknown = 0;
    for (i, id) in ids.iter().enumerate() {
        let (status, _) = settle(&server, id, 0).await;
        if status == 404 {
            unknown += 1;
            // Forgotten early: its estimate stays spent, as at its deadline.
            assert_eq!(remaining(&server, "tokens", &format!("k{i}")).await, 999);
        } else {
            assert_eq!(status, 200);
        }
    }
    assert_eq!(unknown, evicted);
}

/// A changed `max_overdraft` applies to settles after the reload, of
/// reservations made before it too.
#[tokio::test]
async fn a_reloaded_max_overdraft_applies_to_later_settles() {
    let dir = temp_dir("reservations-reload");
    let file = dir.join("tollgate.yaml");
    let policy = |overdraft: u64| {
        format!(
            "policies:\n  - name: tokens\n    algorithm: fixed_window\n    limit: 10\n    period: 1h\n    max_overdraft: {overdraft}\n"
        )
    };
    std::fs::write(&file, policy(0)).unwrap();
    let server = TestServer::start_file(Backend::memory(), &file).await;
    let a = id(&reserve(&server, "tokens", "a", 10).await);
    let b = id(&reserve(&server, "tokens", "b", 10).await);
    let (_, body) = settle(&server, &a, 15).await;
    assert_eq!(
        (
            body["policies"][0]["charged"].as_u64(),
            body["policies"][0]["unpaid"].as_u64()
        ),
        (Some(0), Some(5)),
        "{body}"
    );
    std::fs::write(&file, policy(4)).unwrap();
    server.app.reload().unwrap();
    let (_, text) = server.get_text("/v1/policies").await;
    assert!(text.contains(r#""max_overdraft":4"#), "{text}");
    let (_, body) = settle(&server, &b, 15).await;
    assert_eq!(
        (
            body["policies"][0]["charged"].as_u64(),
            body["policies"][0]["unpaid"].as_u64()
        ),
        (Some(4), Some(1)),
        "{body}"
    );
}

/// A reservation naming policies of both stores (`store.per_second`)
/// cannot be one atomic step: 501, saying why, and nothing is charged.
#[tokio::test]
async fn a_reservation_across_the_per_second_and_main_stores_is_refused() {
    let (main, second) = (RedisServer::start(), RedisServer::start());
    let (app, server) = common::per_second_server(&main, &second).await;
    let split = r#"{"policies": ["second", "hour"], "key": "k", "estimate": 2}"#;
    for _ in 0..10 {
        let answer = server.post_json("/v1/reserve", split).await;
        assert_problem(
            &answer,
            501,
            "both the main and the per-second store",
            "split",
        );
    }
    for policy in ["second", "hour"] {
        let (_, body) = server
            .post_json(
                "/v1/peek",
                &json!({"policy": policy, "key": "k"}).to_string(),
            )
            .await;
        assert_eq!(body["remaining"], 5, "{policy}: {body}");
    }
    // The refusal is not a store failure: the breakers stay closed.
    for store in app.stores() {
        assert_eq!(store.stats().failures, 0);
        assert_eq!(
            store.breaker_state(),
            tollgate::resilience::BreakerState::Closed
        );
    }
    drop(server);
    drop((main, second));
}

/// The `store:` section of servers on `backend`'s Redis or Cluster.
fn shared_store(redis: &SharedRedis) -> String {
    let (kind, urls) = match redis {
        SharedRedis::One(server) => ("redis", format!("url: {}", server.url())),
        SharedRedis::Cluster(cluster) => (
            "redis_cluster",
            format!("urls: [{}]", cluster.urls().join(", ")),
        ),
    };
    format!(
        "store:\n  kind: {kind}\n  {urls}\n  prefix: res\n  timeout: 2s\n  on_failure: closed\n"
    )
}

/// A Redis or a Cluster several servers share.
enum SharedRedis {
    One(RedisServer),
    Cluster(RedisCluster),
}

/// `n` servers on `redis`, with [`config`]'s policies and `extra` ones.
async fn fleet(redis: &SharedRedis, n: usize, extra: &str) -> Vec<TestServer> {
    let text = format!("{}{extra}", config(&shared_store(redis)));
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start_text(Backend::Config, &text).await);
    }
    servers
}

/// Reserve on one server, settle, replay and cancel on the others.
async fn settle_on_another_server(redis: SharedRedis) {
    let servers = fleet(&redis, 3, "").await;
    let first = id(&reserve(&servers[0], "tokens", "alice", 300).await);
    let (status, body) = settle(&servers[1], &first, 100).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policies"][0]["returned"], 200, "{body}");
    assert_eq!(body["policies"][0]["remaining"], 900, "{body}");
    let (status, body) = settle(&servers[2], &first, 100).await;
    assert_eq!(
        (status, body["replayed"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_problem(
        &settle(&servers[0], &first, 7).await,
        409,
        "an actual of 100",
        "replay elsewhere",
    );
    for server in &servers {
        assert_eq!(remaining(server, "tokens", "alice").await, 900);
    }
    let second = id(&reserve(&servers[2], "tokens", "alice", 50).await);
    let (status, body) = servers[0]
        .post_json("/v1/cancel", &json!({"reservation": second}).to_string())
        .await;
    assert_eq!(
        (status, body["policies"][0]["returned"].as_u64()),
        (200, Some(50)),
        "{body}"
    );
    let forged = forged_id(42, &["tokens"], &KeySpace::HttpJson.key(b"alice"));
    assert_problem(
        &settle(&servers[1], &forged, 5).await,
        404,
        "unknown or expired",
        "forged",
    );
    assert_eq!(remaining(&servers[1], "tokens", "alice").await, 900);
    drop(servers);
    drop(redis);
}

#[tokio::test]
async fn a_settle_on_another_server_of_one_redis() {
    settle_on_another_server(SharedRedis::One(RedisServer::start())).await;
}

#[tokio::test]
async fn a_settle_on_another_server_of_a_redis_cluster() {
    settle_on_another_server(SharedRedis::Cluster(RedisCluster::start(3, 0))).await;
}

/// The concurrency test's budget: `LIMIT` units a `PERIOD`, of which a
/// settle may overdraw `MAX_OVERDRAFT` more.
const LIMIT: u64 = 1000;
const PERIOD: Duration = Duration::from_secs(1);
const MAX_OVERDRAFT: u64 = 100;
/// Clients at once, and the most reservations each asks for (a denied one
/// waits as its answer says, at most `DENIED_PAUSE`).
const CLIENTS: usize = 8;
const ROUNDS: usize = 400;
const DENIED_PAUSE: Duration = Duration::from_millis(50);
/// How long the clients run at most.
const RUN: Duration = Duration::from_secs(4);
/// How far a server's clock (and Redis's) may stray from this process's.
const CLOCK_SLACK_US: u64 = 2_000;

fn unix_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// SplitMix64: a seeded stream, so a run's choices can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The window (its index, `end / PERIOD`) a decision was made in: its
/// answer came with `reset_after_ms` (rounded up) between `send_us` and
/// `receive_us`, so the window's end lies within that span plus
/// `reset_after`; windows end at multiples of the period. Exactly one such
/// multiple, or the test fails rather than guess.
fn window(send_us: u64, receive_us: u64, reset_after_ms: u64) -> u64 {
    let period = u64::try_from(PERIOD.as_micros()).unwrap();
    let low = (send_us + reset_after_ms * 1000).saturating_sub(1000 + CLOCK_SLACK_US);
    let high = receive_us + reset_after_ms * 1000 + CLOCK_SLACK_US;
    let first = low.div_ceil(period);
    let last = high / period;
    assert_eq!(
        first, last,
        "no single window end in [{low}, {high}] µs (answer between {send_us} and {receive_us}, reset_after {reset_after_ms} ms)"
    );
    first
}

/// What the clients saw, per window: units charged by reservations,
/// returned by settles, charged beyond estimates; unpaid in all.
#[derive(Default)]
struct Ledger {
    windows: BTreeMap<u64, (u64, u64, u64)>,
    unpaid: u64,
    settles: u64,
}

/// Many clients reserve estimates and settle random actuals (on another
/// server than the one that reserved, when there are several) against one
/// key's `fixed_window` budget. Per window, what was charged and not given
/// back — estimates minus returned plus charged — never exceeds the limit
/// plus `max_overdraft`, and what could not be charged is reported unpaid.
async fn the_budget_holds_under_concurrency(servers: Vec<TestServer>) {
    let seed = unix_us();
    println!("seed {seed}");
    let servers = Arc::new(servers);
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let servers = Arc::clone(&servers);
        let ledger = Arc::clone(&ledger);
        let mut random = Random(seed ^ (client as u64 + 1).wrapping_mul(0x1234_5678_9ABC));
        tasks.push(tokio::spawn(async move {
            // Client 0 starts with a cost no window can hold.
            let mut overdrawn = client != 0;
            for round in 0..ROUNDS {
                if started.elapsed() > RUN {
                    break;
                }
                let n = servers.len();
                let estimate = 5 + random.below(40);
                let body = json!({"policy": "budget", "key": "llm", "estimate": estimate});
                let send = unix_us();
                let (status, reserved) = servers[(client + round) % n]
                    .post_json("/v1/reserve", &body.to_string())
                    .await;
                let receive = unix_us();
                assert_eq!(status, 200, "{reserved}");
                if reserved["allowed"] != true {
                    let retry = reserved["retry_after_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(retry).min(DENIED_PAUSE)).await;
                    continue;
                }
                let reserved_in =
                    window(send, receive, reserved["reset_after_ms"].as_u64().unwrap());
                let id = id(&reserved);
                // Costs known only afterwards: from nothing to three times
                // the estimate; some cancelled; and, once for client 0 and
                // then one time in twenty, more than any window can hold
                // (so some units are surely unpaid).
                tokio::time::sleep(Duration::from_millis(random.below(20))).await;
                let cancel = random.below(8) == 0;
                let actual = if cancel {
                    0
                } else if !overdrawn || random.below(20) == 0 {
                    overdrawn = true;
                    estimate + LIMIT + MAX_OVERDRAFT
                } else {
                    random.below(3 * estimate + 1)
                };
                let other = &servers[(client + round + 1) % n];
                let send = unix_us();
                let (status, settled) = if cancel {
                    other
                        .post_json("/v1/cancel", &json!({"reservation": id}).to_string())
                        .await
                } else {
                    settle(other, &id, actual).await
                };
                let receive = unix_us();
                assert_eq!(status, 200, "{settled}");
                assert_eq!(settled["replayed"], false, "{settled}");
                let policy = &settled["policies"][0];
                let (returned, charged, unpaid) = (
                    policy["returned"].as_u64().unwrap(),
                    policy["charged"].as_u64().unwrap(),
                    policy["unpaid"].as_u64().unwrap(),
                );
                let actual = settled["actual"].as_u64().unwrap();
                assert_eq!(
                    charged + unpaid,
                    actual.saturating_sub(estimate),
                    "{settled}"
                );
                assert!(returned <= estimate.saturating_sub(actual), "{settled}");
                // A repeated settle never charges twice (a cancel's
                // reservation is gone: nothing to replay).
                if random.below(4) == 0 && actual > 0 {
                    let (status, again) = settle(&servers[round % n], &id, actual).await;
                    assert_eq!(
                        (status, again["replayed"].as_bool()),
                        (200, Some(true)),
                        "{again}"
                    );
                    assert_eq!(again["policies"][0]["charged"], charged, "{again}");
                }
                let charged_in = (charged > 0)
                    .then(|| window(send, receive, policy["reset_after_ms"].as_u64().unwrap()));
                let mut ledger = ledger.lock().unwrap();
                ledger.windows.entry(reserved_in).or_default().0 += estimate;
                ledger.windows.entry(reserved_in).or_default().1 += returned;
                if let Some(w) = charged_in {
                    ledger.windows.entry(w).or_default().2 += charged;
                }
                ledger.unpaid += unpaid;
                ledger.settles += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut busiest = 0;
    for (w, (estimates, returned, charged)) in &ledger.windows {
        let spent = estimates - returned + charged;
        println!(
            "window {w}: reserved {estimates}, returned {returned}, charged {charged}: {spent}"
        );
        assert!(
            spent <= LIMIT + MAX_OVERDRAFT,
            "seed {seed}: window {w} spent {spent}, above {LIMIT} + {MAX_OVERDRAFT}"
        );
        busiest = busiest.max(spent);
    }
    assert!(ledger.settles > 20, "only {} settles", ledger.settles);
    // The budget was contended (else the bound proves little) and what an
    // overdraft could not cover was reported.
    assert!(busiest > LIMIT / 2, "busiest window spent only {busiest}");
    assert!(ledger.unpaid > 0, "seed {seed}: nothing unpaid");
    // The servers reported the same.
    let mut reported = 0;
    for server in servers.iter() {
        let (_, metrics) = server.get_text("/metrics").await;
        reported += series(
            &metrics,
            r#"tollgate_settle_units_total{policy="budget",units="unpaid"}"#,
        );
    }
    assert_eq!(reported, ledger.unpaid);
}

/// The concurrency tests' policy: `LIMIT` a `PERIOD`, `MAX_OVERDRAFT`.
fn budget() -> String {
    format!(
        "  - name: budget\n    algorithm: fixed_window\n    limit: {LIMIT}\n    period: {}ms\n    max_overdraft: {MAX_OVERDRAFT}\n",
        PERIOD.as_millis()
    )
}

#[tokio::test]
async fn the_budget_holds_under_concurrency_on_the_memory_store() {
    let text = format!("{}{}", config(""), budget());
    let server = TestServer::start_text(Backend::memory(), &text).await;
    the_budget_holds_under_concurrency(vec![server]).await;
}

#[tokio::test]
async fn the_budget_holds_under_concurrency_on_one_redis() {
    let redis = SharedRedis::One(RedisServer::start());
    let servers = fleet(&redis, 3, &budget()).await;
    the_budget_holds_under_concurrency(servers).await;
}

#[tokio::test]
async fn the_budget_holds_under_concurrency_on_a_redis_cluster() {
    let redis = SharedRedis::Cluster(RedisCluster::start(3, 0));
    let servers = fleet(&redis, 3, &budget()).await;
    the_budget_holds_under_concurrency(servers).await;
}

/// A reservation of the longest key the server takes (`max_key_bytes`
/// raised to the limiter's 8 KiB) settles: its id carries the key, and
/// once was refused by `/v1/settle` as "not a reservation id" (the text
/// form was capped for keys of 4 KiB), leaving the estimate charged until
/// the deadline.
#[tokio::test]
async fn a_reservation_of_the_longest_key_settles() {
    let server = TestServer::start_text(
        Backend::memory(),
        &config("")
            .replace("max_body_bytes: 4096", "max_body_bytes: 65536")
            .replace("max_key_bytes: 64", "max_key_bytes: 8192"),
    )
    .await;
    let key = "k".repeat(tollgate_server::app::MAX_LIMITER_KEY - "http:".len());
    let (status, body) = server
        .post_json(
            "/v1/reserve",
            &json!({"policies": ["tokens", "requests"], "key": key, "estimate": 5}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let long = id(&body);
    let (status, body) = settle(&server, &long, 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policies"][0]["returned"], 3, "{body}");
    assert_eq!(remaining(&server, "tokens", &key).await, 998);
}
