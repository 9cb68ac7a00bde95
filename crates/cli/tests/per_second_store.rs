//! `tollgate serve` with `store.per_second` (a second Redis for every
//! policy whose period is one second) and `store.key_layout: envoy`, on
//! real redis-servers: each policy's counter lands in its own Redis (an
//! Envoy descriptor's under envoyproxy/ratelimit's name for it), and
//! when the per-second Redis dies only its policies are
//! decided by the failure mode, readiness saying which store fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use support::serve;
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::redis::RedisServer;

#[test]
fn serve_splits_policies_between_the_two_stores_and_survives_one_failing() {
    let (main, mut second) = (RedisServer::start(), RedisServer::start());
    let dir = temp_dir("per-second-serve");
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "store:
  kind: redis
  url: {}
  prefix: t
  timeout: 1s
  key_layout: envoy
  envoy_prefix: rl_
  on_failure: open
  per_second:
    kind: redis
    url: {}
    on_failure: closed
policies:
  - name: burst
    algorithm: fixed_window
    limit: 5
    period: 1s
  - name: daily
    algorithm: fixed_window
    limit: 5
    period: 1d
domains:
  - domain: edge
    descriptors:
      - key: client
        rate_limit: {{ unit: minute, requests_per_unit: 10 }}
",
            main.url(),
            second.url()
        ),
    )
    .unwrap();
    let serve = serve(&config);
    for policy in ["burst", "daily"] {
        let (status, body) = serve.check(&format!(r#"{{"policy":"{policy}","key":"u1"}}"#));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""allowed":true"#), "{body}");
    }
    let scan = |redis: &RedisServer| -> Vec<String> {
        let mut keys: Vec<String> = redis
            .cli(&["--scan", "--pattern", "t:{http:*"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(scan(&second), ["t:{http:u1}:burst:fixed_window"]);
    assert_eq!(scan(&main), ["t:{http:u1}:daily:fixed_window"]);
    let (status, body) = serve
        .request("GET", "/readyz", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // An Envoy descriptor of unit minute: counted in the main Redis, under
    // envoyproxy/ratelimit's name for it.
    assert_eq!(envoy_remaining(serve.grpc(), "alice"), 9);
    let counters = main.cli(&["--scan", "--pattern", "rl_edge_client_alice_*"]);
    let counter = counters
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no counter"));
    assert_eq!(main.cli(&["GET", counter]), "1");

    second.kill();
    // The per-second policy: closed while its Redis is gone (five failed
    // calls open its breaker, the default).
    for _ in 0..5 {
        let (_, body) = serve.check(r#"{"policy":"burst","key":"u1"}"#);
        assert!(body.contains(r#""allowed":false"#), "{body}");
    }
    // The other: decided by its Redis, exactly (4 left of 5).
    for _ in 0..4 {
        let (_, body) = serve.check(r#"{"policy":"daily","key":"u1"}"#);
        assert!(body.contains(r#""allowed":true"#), "{body}");
    }
    let (_, body) = serve.check(r#"{"policy":"daily","key":"u1"}"#);
    assert!(body.contains(r#""allowed":false"#), "{body}");
    let (status, body) = serve
        .request("GET", "/readyz", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("per_second store"), "{body}");
    let line = serve
        .wait_for_log(
            &["ERROR", "store failing", "per_second"],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "no ERROR for the per-second store:\n{}",
                serve.log().join("\n")
            )
        });
    assert!(line.contains("on_failure=Closed"), "{line}");
}

/// One `ShouldRateLimit` of `client=<client>` in domain `edge`: what remains.
fn envoy_remaining(grpc: SocketAddr, client: &str) -> u32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rls = RateLimitServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let response = rls
            .should_rate_limit(RateLimitRequest {
                domain: "edge".into(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "client".into(),
                        value: client.into(),
                    }],
                    ..RateLimitDescriptor::default()
                }],
                hits_addend: 1,
            })
            .await
            .unwrap()
            .into_inner();
        response.statuses[0].limit_remaining
    })
}
