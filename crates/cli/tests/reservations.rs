//! Reservations through real `tollgate serve` processes: two servers on one
//! Redis and on a 3-master Redis Cluster; a reservation taken on one is
//! settled, replayed and refused a second actual on the other, a cancel
//! gives an estimate back across servers, and a forged id touches nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::serve;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::process::ServeProcess;
use tollgate_testkit::redis::{RedisCluster, RedisServer};

/// `POST path` with the JSON `body`: status and body.
fn post(serve: &ServeProcess, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = serve
        .request(
            "POST",
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn remaining(serve: &ServeProcess, key: &str) -> u64 {
    let (status, body) = post(serve, "/v1/peek", &json!({"policy": "tokens", "key": key}));
    assert_eq!(status, 200, "{body}");
    body["remaining"].as_u64().unwrap()
}

fn two_servers_share_reservations(store: &str) {
    let dir = temp_dir("reservations-serve");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{store}policies:
  - name: tokens
    algorithm: fixed_window
    limit: 10000
    period: 1h
    max_overdraft: 500
"
        ),
    )
    .unwrap();
    let (a, b) = (serve(&config), serve(&config));
    let (status, reserved) = post(
        &a,
        "/v1/reserve",
        &json!({"policy": "tokens", "key": "team", "estimate": 2000}),
    );
    assert_eq!(status, 200, "{reserved}");
    assert_eq!(reserved["remaining"], 8000, "{reserved}");
    let id = reserved["reservation"].as_str().unwrap().to_owned();
    // Settled on the other server: 800 back.
    let (status, settled) = post(
        &b,
        "/v1/settle",
        &json!({"reservation": id, "actual": 1200}),
    );
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["replayed"], false, "{settled}");
    assert_eq!(settled["policies"][0]["returned"], 800, "{settled}");
    // Retried on the first: replayed, nothing charged twice; another
    // actual: 409.
    let (status, replayed) = post(
        &a,
        "/v1/settle",
        &json!({"reservation": id, "actual": 1200}),
    );
    assert_eq!(
        (status, replayed["replayed"].as_bool()),
        (200, Some(true)),
        "{replayed}"
    );
    let (status, conflict) = post(
        &a,
        "/v1/settle",
        &json!({"reservation": id, "actual": 9000}),
    );
    assert_eq!(status, 409, "{conflict}");
    assert!(
        conflict["detail"]
            .as_str()
            .unwrap()
            .contains("an actual of 1200"),
        "{conflict}"
    );
    assert_eq!((remaining(&a, "team"), remaining(&b, "team")), (8800, 8800));
    // Above the estimate, overdrawn by at most max_overdraft.
    let (_, reserved) = post(
        &b,
        "/v1/reserve",
        &json!({"policy": "tokens", "key": "team", "estimate": 8000, "deadline_ms": 60000}),
    );
    let id = reserved["reservation"].as_str().unwrap().to_owned();
    let (status, settled) = post(
        &a,
        "/v1/settle",
        &json!({"reservation": id, "actual": 9500}),
    );
    assert_eq!(status, 200, "{settled}");
    let policy = &settled["policies"][0];
    assert_eq!(
        (policy["charged"].as_u64(), policy["unpaid"].as_u64()),
        (Some(1300), Some(200)),
        "{settled}"
    );
    assert!(policy["retry_after_ms"].as_u64().unwrap() > 0, "{settled}");
    // A cancel on the other server gives a whole estimate back.
    let (_, reserved) = post(
        &a,
        "/v1/reserve",
        &json!({"policy": "tokens", "key": "other", "estimate": 300}),
    );
    let id = reserved["reservation"].as_str().unwrap().to_owned();
    let (status, cancelled) = post(&b, "/v1/cancel", &json!({"reservation": id}));
    assert_eq!(
        (status, cancelled["policies"][0]["returned"].as_u64()),
        (200, Some(300)),
        "{cancelled}"
    );
    assert_eq!(remaining(&a, "other"), 10000);
    // A forged id (a real one's text with its nonce changed): 404.
    let forged = {
        let mut text = id.into_bytes();
        text[3] = if text[3] == b'A' { b'B' } else { b'A' };
        String::from_utf8(text).unwrap()
    };
    let (status, body) = post(
        &b,
        "/v1/settle",
        &json!({"reservation": forged, "actual": 1}),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(remaining(&b, "other"), 10000);
}

#[test]
fn two_servers_on_one_redis_share_reservations() {
    let redis = RedisServer::start();
    two_servers_share_reservations(&format!(
        "store:\n  kind: redis\n  url: {}\n  timeout: 2s\n  on_failure: closed\n",
        redis.url()
    ));
}

#[test]
fn two_servers_on_a_redis_cluster_share_reservations() {
    let cluster = RedisCluster::start(3, 0);
    two_servers_share_reservations(&format!(
        "store:\n  kind: redis_cluster\n  urls: [{}]\n  timeout: 2s\n  on_failure: closed\n",
        cluster.urls().join(", ")
    ));
}
