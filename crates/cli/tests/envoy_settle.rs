//! Costs known only once the response is done, behind a real Envoy: the
//! route's per-filter rate limits ask tollgate on the request path whether
//! a user's token budget has anything left (a descriptor without hits), and
//! again when the stream is done (`apply_on_stream_done: true`) with the
//! response's usage as `hits_addend` (a substitution format reading the
//! upstream's `x-usage-tokens`). tollgate's descriptor is `settle: true`:
//! the usage is charged after the fact, overdrawing at most the policy's
//! `max_overdraft`, and once the budget is spent the next request is
//! refused.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use http::HeaderMap;
use support::serve;
use tollgate_testkit::envoy::{Bootstrap, Envoy};
use tollgate_testkit::files::temp_dir;
use tollgate_testkit::process::ServeProcess;
use tollgate_testkit::redis::RedisServer;
use tollgate_testkit::serve::Served;

/// tollgate's configuration: a budget of 1000 tokens an hour per user,
/// overdrawn by at most 200, charged after the fact.
fn config(redis: &RedisServer) -> String {
    format!(
        r#"store:
  kind: redis
  url: {}
  timeout: 1s
policies:
  - name: tokens
    algorithm: fixed_window
    limit: 1000
    period: 1h
    max_overdraft: 200
domains:
  - domain: llm
    descriptors:
      - key: user
        settle: true
        policy: tokens
"#,
        redis.url()
    )
}

/// The route's rate limits (the filter's per-route configuration, where
/// Envoy takes `hits_addend`): on the request path, the user's descriptor
/// without hits (a look); when the stream is done, the same descriptor
/// with the response's usage.
const RATE_LIMITS: &str = r#"- actions:
    - request_headers: { header_name: x-user, descriptor_key: user }
- actions:
    - request_headers: { header_name: x-user, descriptor_key: user }
  apply_on_stream_done: true
  hits_addend: { format: "%RESP(x-usage-tokens)%" }
"#;

/// An upstream that answers `200` and reports as its usage what the
/// request's `x-usage` asks for (the test plays the model).
async fn upstream() -> Served {
    let app = Router::new().fallback(any(|headers: HeaderMap| async move {
        let usage = headers
            .get("x-usage")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        ([("x-usage-tokens", usage)], "completion")
    }));
    Served::router_without_connect_info(app).await
}

/// The value of `series` on tollgate's `/metrics` (0 when absent).
fn metric(serve: &ServeProcess, series: &str) -> u64 {
    let (status, body) = serve
        .request("GET", "/metrics", &[], "", Duration::from_secs(5))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits (bounded) until tollgate has counted `hits` hits of the user
/// descriptor: the stream-done call is Envoy's fire-and-forget, made after
/// the response reached the client.
fn wait_for_hits(serve: &ServeProcess, envoy: &Envoy, hits: u64) {
    let series = r#"ratelimit_service_rate_limit_total_hits{domain="llm",key1="user"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = metric(serve, series);
        if seen == hits {
            return;
        }
        assert!(
            seen < hits && Instant::now() < deadline,
            "{seen} hits counted, expected {hits}\n{}",
            envoy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_is_charged_when_the_stream_is_done() {
    let redis = RedisServer::start();
    let dir = temp_dir("envoy-settle");
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, config(&redis)).unwrap();
    let service = serve(&file);
    let upstream = upstream().await;
    let mut bootstrap = Bootstrap::new(upstream.address, service.grpc(), "llm");
    bootstrap.x_ratelimit_headers = true;
    bootstrap.timeout = Some(Duration::from_secs(1));
    bootstrap.route_per_filter("/", RATE_LIMITS);
    let envoy = Envoy::start(&bootstrap.yaml());
    let client = envoy.client();
    let alice = |usage: &'static str| [("x-user", "alice"), ("x-usage", usage)];

    // Each response's usage is charged after it: 400 of 1000, then 500.
    // The request path only looks: what remains before each response.
    let mut hits = 0;
    for (usage, remaining_before) in [("400", "1000"), ("500", "600")] {
        let reply = client.get_with("/", &alice(usage)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("x-ratelimit-remaining").as_deref(),
            Some(remaining_before),
            "{reply:?}"
        );
        hits += usage.parse::<u64>().unwrap();
        wait_for_hits(&service, &envoy, hits);
    }
    // 100 remain, the response uses 300: charged whole, 200 past the limit
    // (the overdraft), and the next request is refused.
    let reply = client.get_with("/", &alice("300")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    hits += 300;
    wait_for_hits(&service, &envoy, hits);
    let reply = client.get_with("/", &alice("10")).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.header("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(
        metric(
            &service,
            r#"tollgate_settle_units_total{policy="tokens",units="unpaid"}"#
        ),
        0
    );
    // Charged: 1200 (400, 500, 300), each in one atomic step (read before
    // another user's response, whose charge lands when Envoy sends it).
    assert_eq!(
        metric(
            &service,
            r#"tollgate_settle_units_total{policy="tokens",units="charged"}"#
        ),
        1200
    );
    // Another user has their own budget.
    let reply = client
        .get_with("/", &[("x-user", "bob"), ("x-usage", "1")])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("x-ratelimit-remaining").as_deref(),
        Some("1000")
    );
}
