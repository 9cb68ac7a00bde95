//! `store.key_layout: envoy` on a real redis-server: counters written as an
//! envoyproxy/ratelimit instance writes them (`SET <prefix><domain>_<k>_<v>_
//! <window start> <n> EX <unit>`) are continued exactly, tollgate's charges
//! are readable in that layout with envoyproxy/ratelimit's expiry, denials
//! write nothing, and everything else keeps tollgate's layout.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tollgate_server::grpc::RateLimitGrpc;
use tollgate_server::{App, ConfigSource};
use tollgate_testkit::files::temp_file;
use tollgate_testkit::redis::RedisServer;

fn config(redis: &RedisServer) -> String {
    format!(
        "store:
  kind: redis
  url: {}
  prefix: t
  timeout: 1s
  key_layout: envoy
  envoy_prefix: rl_
domains:
  - domain: edge
    descriptors:
      - key: client
        rate_limit: {{ unit: hour, requests_per_unit: 10 }}
      - key: team
        descriptors:
          - key: plan
            value: free
            rate_limit: {{ unit: hour, requests_per_unit: 5 }}
      - key: path
        value: /shared/*
        share_threshold: true
        rate_limit: {{ unit: hour, requests_per_unit: 4 }}
      - key: bucket
        algorithm: gcra
        rate_limit: {{ unit: hour, requests_per_unit: 10 }}
",
        redis.url()
    )
}

async fn start(redis: &RedisServer) -> Arc<App> {
    let file = temp_file("envoy-layout.yaml", &config(redis));
    let source = ConfigSource {
        config: Some(file),
        ..ConfigSource::default()
    };
    Arc::new(App::start(source).await.unwrap())
}

async fn envoy(app: &Arc<App>, entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitResponse {
    let request = RateLimitRequest {
        domain: "edge".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: (*key).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..RateLimitDescriptor::default()
        }],
        ..RateLimitRequest::default()
    };
    RateLimitGrpc::new(Arc::clone(app))
        .should_rate_limit(tonic::Request::new(request))
        .await
        .unwrap()
        .into_inner()
}

/// `(code, limit_remaining)` of a one-descriptor answer.
fn status(response: &RateLimitResponse) -> (Code, u32) {
    let status = &response.statuses[0];
    (Code::try_from(status.code).unwrap(), status.limit_remaining)
}

/// The start of the current hour on Redis's clock, in Unix seconds, once
/// at least `margin` remains of it (else after waiting for the next), so a
/// test does not straddle two windows.
async fn hour_start(redis: &RedisServer, margin: u64) -> u64 {
    loop {
        let time = redis.cli(&["TIME"]);
        let now: u64 = time.lines().next().unwrap().trim().parse().unwrap();
        let into = now % 3600;
        if 3600 - into >= margin {
            return now - into;
        }
        tokio::time::sleep(Duration::from_secs(3600 - into)).await;
    }
}

fn ttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cli(&["TTL", key]).parse().unwrap()
}

#[tokio::test]
async fn a_count_written_by_envoyproxy_ratelimit_is_continued_exactly() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    let start = hour_start(&redis, 60).await;
    // What an envoyproxy/ratelimit instance leaves after 7 hits.
    let key = format!("rl_edge_client_alice_{start}");
    assert_eq!(redis.cli(&["SET", &key, "7", "EX", "3600"]), "OK");
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(status(&envoy(&app, &[("client", "alice")], None).await));
    }
    assert_eq!(
        answers,
        [
            (Code::Ok, 2),
            (Code::Ok, 1),
            (Code::Ok, 0),
            (Code::OverLimit, 0),
            (Code::OverLimit, 0),
        ]
    );
    // Exactly 3 admitted; the denials wrote nothing (envoyproxy/ratelimit
    // would have counted them too).
    assert_eq!(redis.cli(&["GET", &key]), "10");
    // And no state of tollgate's own for it.
    let own = redis.cli(&["--scan", "--pattern", "t:*client*"]);
    assert_eq!(own, "");
}

#[tokio::test]
async fn a_count_over_the_limit_from_envoyproxy_ratelimit_is_denied_and_kept() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    let start = hour_start(&redis, 60).await;
    // envoyproxy/ratelimit counts its denials: a counter may pass the limit.
    let key = format!("rl_edge_client_bob_{start}");
    redis.cli(&["SET", &key, "14", "EX", "3600"]);
    assert_eq!(
        status(&envoy(&app, &[("client", "bob")], None).await),
        (Code::OverLimit, 0)
    );
    // A cost that fits nowhere is denied too, and charges nothing.
    assert_eq!(
        status(&envoy(&app, &[("client", "carol")], Some(11)).await),
        (Code::OverLimit, 10)
    );
    assert_eq!(redis.cli(&["GET", &key]), "14");
    assert_eq!(
        redis.cli(&["EXISTS", &format!("rl_edge_client_carol_{start}")]),
        "0"
    );
}

#[tokio::test]
async fn tollgate_counts_are_readable_in_envoyproxy_ratelimits_layout() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    let start = hour_start(&redis, 60).await;
    // Plain, nested and shared-wildcard descriptors, with hits_addend.
    assert_eq!(
        status(&envoy(&app, &[("client", "dave")], Some(4)).await),
        (Code::Ok, 6)
    );
    let nested = [("team", "t_1"), ("plan", "free")];
    assert_eq!(status(&envoy(&app, &nested, None).await), (Code::Ok, 4));
    for path in ["/shared/a", "/shared/b"] {
        envoy(&app, &[("path", path)], None).await;
    }
    // A peek (hits_addend 0) writes nothing.
    assert_eq!(
        status(&envoy(&app, &[("client", "erin")], Some(0)).await),
        (Code::Ok, 10)
    );
    let expected = [
        (format!("rl_edge_client_dave_{start}"), "4"),
        (format!("rl_edge_team_t_1_plan_free_{start}"), "1"),
        (format!("rl_edge_path_/shared/*_{start}"), "2"),
    ];
    for (key, count) in &expected {
        assert_eq!(redis.cli(&["GET", key]), *count, "{key}");
        // envoyproxy/ratelimit's expiry: the unit, from the last charge.
        let left = ttl(&redis, key);
        assert!((3590..=3600).contains(&left), "{key}: TTL {left}");
    }
    assert_eq!(
        redis.cli(&["EXISTS", &format!("rl_edge_client_erin_{start}")]),
        "0"
    );
    // What an envoyproxy/ratelimit instance reads next is tollgate's count.
    let next: u64 = redis
        .cli(&["INCRBY", &format!("rl_edge_client_dave_{start}"), "1"])
        .parse()
        .unwrap();
    assert_eq!(next, 5);
    assert_eq!(
        status(&envoy(&app, &[("client", "dave")], None).await),
        (Code::Ok, 4)
    );
}

#[tokio::test]
async fn descriptors_with_another_algorithm_keep_tollgates_layout() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    hour_start(&redis, 60).await;
    assert_eq!(
        status(&envoy(&app, &[("bucket", "x")], None).await),
        (Code::Ok, 9)
    );
    let keys = redis.cli(&["--scan", "--pattern", "*bucket*"]);
    assert_eq!(keys, "t:{envoy:4:edge6:bucket1:x}:envoy/edge/bucket:gcra");
}

#[tokio::test]
async fn refusals_at_load_name_the_reason() {
    let redis = RedisServer::start();
    let text = config(&redis).replace(
        &format!("kind: redis\n  url: {}", redis.url()),
        "kind: redis_cluster\n  urls: [redis://127.0.0.1:1]",
    );
    let file = temp_file("envoy-layout-cluster.yaml", &text);
    let source = ConfigSource {
        config: Some(file),
        ..ConfigSource::default()
    };
    let error = App::start(source).await.unwrap_err().to_string();
    assert!(
        error.contains("key_layout: envoy is not supported on redis_cluster"),
        "{error}"
    );
}
