//! `tollgate serve`'s app on Redis Sentinel, on a unix socket and on TLS
//! with a private CA and a client certificate, each connected from the
//! configuration as written (`store: {kind: redis_sentinel, urls,
//! master_name, master_password}`, `store: {kind: redis, url:
//! unix://...}`, `store: {url: rediss://..., tls_ca_file, tls_cert_file,
//! tls_key_file}`): HTTP and Envoy gRPC checks decided on Redis, through a
//! real `SENTINEL FAILOVER`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer, descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_testkit::redis::{RedisSentinel, RedisServer, SentinelSetup};

/// `api`: exact and nothing refills within a test; an `edge` domain for
/// Envoy; `on_failure: closed`, so a failed store call shows as a degraded
/// denial, never as an admission.
fn config(store: &str) -> String {
    format!(
        r#"
store:
{store}
  prefix: sentinel-test
  timeout: 2s
  on_failure: closed
policies:
  - name: api
    algorithm: sliding_log
    limit: 5
    period: 1h
domains:
  - domain: edge
    descriptors:
      - key: user
        rate_limit: {{ unit: hour, requests_per_unit: 2 }}
"#
    )
}

/// POSTs a check of `api` for `key`: `(allowed, remaining, degraded)`.
async fn check(server: &TestServer, key: &str) -> (bool, u64, bool) {
    let response = server
        .post(
            "/v1/check",
            &format!(r#"{{"policy": "api", "key": "{key}"}}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    let degraded = response.headers().get("tollgate-degraded").is_some();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        body["allowed"].as_bool().unwrap(),
        body["remaining"].as_u64().unwrap(),
        degraded,
    )
}

/// Two Envoy checks of one user in the `edge` domain: OK, then OK, then
/// OVER_LIMIT.
async fn envoy_checks(server: &TestServer, user: &str) {
    let mut client = server.rls_client().await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let response = client
            .should_rate_limit(RateLimitRequest {
                domain: "edge".to_owned(),
                descriptors: vec![descriptor(&[("user", user)], None)],
                hits_addend: 0,
            })
            .await
            .unwrap()
            .into_inner();
        codes.push(Code::try_from(response.overall_code).unwrap());
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit], "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_on_a_sentinel_master_through_a_failover() {
    let group = tokio::task::block_in_place(|| {
        RedisSentinel::start_with(
            SentinelSetup::default()
                .master_password("master-pw")
                .sentinel_password("sentinel-pw"),
        )
    });
    let urls: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let text = config(&format!(
        "  kind: redis_sentinel\n  urls: [{}]\n  master_name: {}\n  master_password: master-pw",
        urls.join(", "),
        group.master_name()
    ));
    let old = group.master_port();
    let server = TestServer::start_text(Backend::RedisSentinel(group), &text).await;
    let Backend::RedisSentinel(group) = &server.backend else {
        unreachable!()
    };
    let store = format!("{:?}", server.app.store());
    assert!(
        store.contains(r#"topology: "sentinel""#)
            && store.contains(&format!("127.0.0.1:{old}"))
            && !store.contains("pw"),
        "{store}"
    );
    assert_eq!(server.get_text("/readyz").await.0, 200);
    envoy_checks(&server, "before").await;
    for remaining in [4, 3] {
        assert_eq!(check(&server, "k").await, (true, remaining, false));
    }

    // Everything reached the replica; then the master is demoted.
    tokio::task::block_in_place(|| group.wait_replicated(Duration::from_secs(10)));
    let new = tokio::task::block_in_place(|| group.failover());
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (allowed, remaining, degraded) = check(&server, "k").await;
        if !degraded {
            break (allowed, remaining);
        }
        assert!(
            !allowed,
            "a degraded check under on_failure: closed is denied"
        );
        assert!(
            Instant::now() < deadline,
            "no decision on Redis within 30 s of the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first, (true, 2), "the third charge, on the new master");
    assert_eq!(check(&server, "k").await, (true, 1, false));
    assert_eq!(check(&server, "k").await, (true, 0, false));
    assert_eq!(
        check(&server, "k").await,
        (false, 0, false),
        "exact across the failover"
    );
    let store = format!("{:?}", server.app.store());
    assert!(store.contains(&format!("127.0.0.1:{new}")), "{store}");
    envoy_checks(&server, "after").await;
}

#[tokio::test]
async fn checks_on_a_unix_socket() {
    let redis = RedisServer::start_with_unix_socket(&[]);
    let text = config(&format!("  kind: redis\n  url: \"{}\"", redis.unix_url()));
    let server = TestServer::start_text(Backend::RedisFromConfig(redis), &text).await;
    let Backend::RedisFromConfig(redis) = &server.backend else {
        unreachable!()
    };
    assert_eq!(server.get_text("/readyz").await.0, 200);
    for remaining in [4, 3, 2] {
        assert_eq!(check(&server, "sock").await, (true, remaining, false));
    }
    // The state is in the Redis behind the socket, under the prefix.
    assert_eq!(
        redis.cli(&["ZCARD", "sentinel-test:{http:sock}:api:sliding_log"]),
        "3"
    );
    envoy_checks(&server, "unix").await;
}

#[tokio::test]
async fn checks_on_tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tollgate_testkit::files::temp_dir("server-mtls");
    let files = tollgate_testkit::tls::Certificates::create(&dir);
    let port = tollgate_testkit::ports::free_port();
    let args = files.redis_args(port, true);
    let redis = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let text = config(&format!(
        "  kind: redis\n  url: rediss://127.0.0.1:{port}\n  tls_ca_file: \"{}\"\n  tls_cert_file: \"{}\"\n  tls_key_file: \"{}\"",
        files.ca.display(),
        files.client_cert.display(),
        files.client_key.display()
    ));
    let server = TestServer::start_text(Backend::RedisFromConfig(redis), &text).await;
    let Backend::RedisFromConfig(redis) = &server.backend else {
        unreachable!()
    };
    for remaining in [4, 3] {
        assert_eq!(check(&server, "tls").await, (true, remaining, false));
    }
    assert_eq!(
        redis.cli(&["ZCARD", "sentinel-test:{http:tls}:api:sliding_log"]),
        "2"
    );
    envoy_checks(&server, "tls").await;
    std::fs::remove_dir_all(&dir).ok();
}
