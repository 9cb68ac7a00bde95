//! The HTTP API on a real three-master Redis Cluster, with the store
//! connected from the configuration (`store: {kind: redis_cluster, urls}`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestServer};
use tollgate_server::{ConfigSource, ServerOptions};

/// Policies of three algorithms; `on_failure: closed` and a generous
/// timeout so a store failure shows as a degraded denial, never as a
/// silently allowed check.
fn config(urls: &[String]) -> String {
    let urls = urls.join(", ");
    format!(
        r#"
server:
  admin_token: s3cret
store:
  kind: redis_cluster
  urls: [{urls}]
  prefix: cluster-test
  timeout: 5s
  on_failure: closed
policies:
  - name: api
    algorithm: sliding_log
    limit: 100
    period: 1m
  - name: hourly
    algorithm: fixed_window
    limit: 3
    period: 1h
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
    burst: 10
"#
    )
}

/// POSTs a check and returns its body, asserting a 200 decided on the
/// cluster itself (not degraded).
async fn check(server: &TestServer, path: &str, body: &str) -> serde_json::Value {
    let response = server.post(path, body).await;
    assert_eq!(response.status(), 200, "{path} {body}");
    assert!(
        response.headers().get("tollgate-degraded").is_none(),
        "{path} {body}: decided without the cluster"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn http_checks_on_a_redis_cluster() {
    let backend = Backend::redis_cluster();
    let Backend::RedisCluster(cluster) = &backend else {
        unreachable!()
    };
    let text = config(&cluster.urls());
    let options = ServerOptions::default()
        .watch_interval(None)
        .reload_on_sighup(false);
    let server = TestServer::start_with(backend, &text, ConfigSource::default(), options).await;
    let store = format!("{:?}", server.app.store());
    assert!(
        store.contains(r#"topology: "cluster""#) && store.contains("cluster-test"),
        "{store}"
    );
    assert_eq!(server.get_text("/readyz").await.0, 200);

    // Exact remaining counts, on keys spread over the cluster's slots.
    for key in ["user-1", "user-2", "user-3", "user-4", "user-5", "user-6"] {
        for remaining in [99, 98, 97] {
            let body = check(
                &server,
                "/v1/check",
                &format!(r#"{{"policy": "api", "key": "{key}"}}"#),
            )
            .await;
            assert_eq!(body["allowed"], true, "{key}: {body}");
            assert_eq!(body["limit"], 100, "{key}: {body}");
            assert_eq!(body["remaining"], remaining, "{key}: {body}");
        }
    }
    let body = check(
        &server,
        "/v1/check",
        r#"{"policy": "api", "key": "user-1", "cost": 7}"#,
    )
    .await;
    assert_eq!(body["remaining"], 90, "{body}");
    let body = check(&server, "/v1/peek", r#"{"policy": "api", "key": "user-1"}"#).await;
    assert_eq!(body["remaining"], 90, "peek consumes nothing: {body}");

    // A denial at the limit, with a retry_after.
    for remaining in [2, 1, 0] {
        let body = check(
            &server,
            "/v1/check",
            r#"{"policy": "hourly", "key": "edge"}"#,
        )
        .await;
        assert_eq!(
            (body["allowed"].as_bool(), body["remaining"].as_u64()),
            (Some(true), Some(remaining)),
            "{body}"
        );
    }
    let body = check(
        &server,
        "/v1/check",
        r#"{"policy": "hourly", "key": "edge"}"#,
    )
    .await;
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(body["remaining"], 0, "{body}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");

    // Several policies (three algorithms) on one key: one atomic decision,
    // which on a cluster needs every policy's state in one slot (no
    // CROSSSLOT error, which would surface as a degraded denial).
    let multi = r#"{"policies": ["api", "hourly", "login"], "key": "multi", "cost": 1}"#;
    for remaining in [2, 1, 0] {
        let body = check(&server, "/v1/check", multi).await;
        assert_eq!(body["allowed"], true, "{body}");
        assert_eq!(
            body["policies"][0]["remaining"],
            100 - 3 + remaining,
            "{body}"
        );
        assert_eq!(body["policies"][1]["remaining"], remaining, "{body}");
        assert_eq!(body["policies"][2]["remaining"], 7 + remaining, "{body}");
    }
    let body = check(&server, "/v1/check", multi).await;
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(
        (
            body["policies"][0]["allowed"].as_bool(),
            body["policies"][1]["allowed"].as_bool(),
            body["policies"][2]["allowed"].as_bool()
        ),
        (Some(true), Some(false), Some(true)),
        "{body}"
    );
    // All or nothing: the denial charged neither of the others.
    let body = check(&server, "/v1/peek", r#"{"policy": "api", "key": "multi"}"#).await;
    assert_eq!(body["remaining"], 97, "{body}");
    let body = check(
        &server,
        "/v1/peek",
        r#"{"policy": "login", "key": "multi"}"#,
    )
    .await;
    assert_eq!(body["remaining"], 7, "{body}");

    // Reset: the key is fresh again; other keys are untouched.
    let response = server
        .reset(r#"{"policy": "hourly", "key": "edge"}"#, "s3cret")
        .await;
    assert_eq!(response.status(), 204);
    let body = check(
        &server,
        "/v1/check",
        r#"{"policy": "hourly", "key": "edge"}"#,
    )
    .await;
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(true), Some(2)),
        "{body}"
    );
    let body = check(
        &server,
        "/v1/peek",
        r#"{"policy": "hourly", "key": "multi"}"#,
    )
    .await;
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(false), Some(0)),
        "{body}"
    );

    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_store_errors_total 0\n"),
        "{metrics}"
    );
}
